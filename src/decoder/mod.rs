//! The downsample-and-quantize decoder: one pixel per grid cell, a clean palette, crisp alpha.
//!
//! It is the last stage of every restorer in the engine. Given a grid (from
//! [`crate::grid`]), it:
//! 1. reduces each cell to one colour by a robust statistic of its interior
//!    ([`reduce_cells`]): only pixels whose centres lie at least [`CELL_MARGIN`] of the cell
//!    size inside the cell are used (soft edges and wobbling lines stay out), weighted by a
//!    tent that favours the centre, and each OKLab channel and alpha is the weighted median
//!    (outliers from noise and JPEG ringing do not move a median); when the image was
//!    upscaled by an interpolating kernel (bicubic and the like, often blurred too), no
//!    interior pixel shows its cell's colour, and [`deconvolve`] refits the cells by
//!    undoing that upscale and blur;
//! 2. snaps the colours of the opaque cells to a palette ([`crate::palette`]): chosen
//!    automatically by clustering in OKLab, limited to N colours, or given by the user.
//!    The automatic palette merges colours closer than [`NOISE_MERGE_FACTOR`] times the
//!    image's cell-colour noise (capped by the palette options' merge distance): on a clean
//!    image nothing but exact duplicates merges, so close shades of the art survive, while
//!    drifted and noisy cells of one colour still become one (when many neighbouring cells
//!    differ by small steps, which clipped drift shows even where the noise estimate is 0,
//!    or when almost every cell has a colour of its own, at least about one just-noticeable
//!    difference merges). Each automatic colour is then
//!    the per-channel median of its cells, not their mean, which clipped drift biases;
//!    where [`deconvolve`] fitted a blur model, the palette first clusters finer
//!    ([`FITTED_MERGE_SHARE`]), each cell then takes the palette colour that explains the
//!    image best, and the automatic colours and that choice are refitted to the image in
//!    turn ([`PALETTE_REFITS`] rounds); the model's blur and grid lines are refined
//!    against the image with the cells tied to the palette, colours the image does not
//!    tell apart merge ([`MERGE_PENALTY`]), and a cell the image shows in a shade of its
//!    own gets it ([`split_candidates`]);
//! 3. binarises alpha at a threshold, except cells on a translucent level the sprite
//!    draws with ([`alpha_levels`]; or keeps every cell's alpha), optionally turns a flat
//!    background into transparency and optionally removes isolated stray pixels.

pub mod deconvolve;

use crate::colour::{oklab_to_srgb8, srgb8_to_oklab, Oklab};
use crate::grid::Grid;
use crate::palette::{auto_palette, snap_to_palette, AutoPaletteOptions, Palette};
use image::{Rgba, RgbaImage};

/// Colours closer than this many times the cell-colour noise merge into one.
pub const NOISE_MERGE_FACTOR: f32 = 3.0;
/// Cells of one colour differ from each other (drift) at most about this many times as
/// much as pixels inside a cell do (noise, compression): the between-cell noise estimate is
/// capped by it, so an image whose cells are perfectly flat (clean art, however textured)
/// merges nothing.
const DRIFT_PER_INTERIOR_NOISE: f32 = 4.0;
/// The smallest merge distance: well under one 8-bit step of any channel.
const MIN_MERGE_DISTANCE: f32 = 0.002;
/// The merge distance is at least this (about one just-noticeable difference) when the
/// cells show colour drift (see [`merge_floor`]).
const DRIFT_MERGE_FLOOR: f32 = 0.02;
/// Drift shows when more than this share of the cells differ from their most similar
/// neighbour by a small step (less than [`DRIFT_MERGE_FLOOR`], more than
/// [`IDENTICAL_COLOURS`]). Clean art measured 0-15% on the validation pairs (neighbours of
/// one colour are identical, of two colours clearly apart), drifted output mostly 20-100%.
const DRIFTED_CELL_SHARE: f32 = 0.3;
/// Above this share of distinct colours among the visible cells, the cells are not
/// palettised (see [`is_unpalettised`]). Clean art measured at most 0.24 on the validation
/// pairs (median 0.02); generator-like output whose drifted cells are flat inside, 0.5-0.99.
const UNPALETTISED_SHARE: f32 = 0.3;
/// OKLab distance below which two cell colours count as the same.
const IDENTICAL_COLOURS: f32 = 1e-4;

/// Rounds of refitting an automatic palette's colours to the image and reassigning the
/// cells, when a blur model was fitted ([`deconvolve::BlurFit::refit_palette`]).
const PALETTE_REFITS: usize = 2;
/// When a blur model was fitted, the automatic palette first clusters at this share of
/// its merge distance, and [`deconvolve::BlurFit::merge_unsupported_colours`] then merges
/// the colours the image does not tell apart, at [`MERGE_PENALTY`]. Chosen on the tuning
/// pairs (val split, seed 2, 258 `seed` pairs; snap's exact sprites with the model
/// refinement): shares 0.15 / 0.25 / 0.35 / 0.5 at penalty 300 made 74.4% / 75.6% / 75.2%
/// / 70.2%, penalties 100 / 300 / 1000 at share 0.25 made 74.4% / 75.6% / 66.3% (the
/// residual then taken over the whole image, transparent margins included).
const FITTED_MERGE_SHARE: f32 = 0.25;
/// See [`FITTED_MERGE_SHARE`]: a merge may raise the image's squared residual by this many
/// times its residual per sample and channel where the sprite is opaque (about 3 under
/// noise alone: the rest is what the model does not explain). Chosen on two tuning sets
/// (val split, seeds 2 and 3, 258 `seed` pairs each; `spritedx eval`, snap's exact
/// sprites): 120 / 150 / 200 / 300 made 77.5% / 77.5% / 78.3% / 74.4% and 77.1% / 77.1% /
/// 76.7% / 74.4%, a plateau from 120 to 200 whose middle this is (the residual over the
/// whole image at 300, before: 76.4% and 75.6%). Swept again with [`MODEL_ROUNDS`]: 80 /
/// 110 / 150 / 200 made 81.8 / 82.6 / 81.0 / 80.6% and 79.1 / 80.6 / 81.4 / 80.6%; and
/// with the cost per cell of `deconvolve`'s `RARE_COLOUR_PENALTY_PER_CELL` as well, 110 /
/// 150 / 200 / 300 / 500 / 1000 made 82.9 / 82.6 / 82.6 / 82.6 / 82.2 / 81.8% and 82.2 /
/// 82.6 / 82.2 / 82.9 / 82.2 / 81.8%: a plateau from 110 to 300 (higher penalties raise
/// PSNR: 50.6 → 52.0 dB from 150 to 300), so it stays.
pub(crate) const MERGE_PENALTY: f64 = 150.0;
/// Most rounds of refining the blur model and merging colours in the palette stage; a
/// round after the first runs only when the one before merged colours, and each round
/// ends with a merge test, so that the colours chosen after a merge are tested too
/// (until session 19 a round whose model stayed ended the stage before its merge test;
/// with the test, 86.8 → 87.2% and 86.8 → 87.2% on the two tuning sets below,
/// validation unchanged). A shade that absorbs the model's misfit holds the model where
/// it is: a grid line 0.035 px off on a 2x sprite made the black cells left of a
/// gold outline come out at (10, 7, 2), a colour of their own, and with the line refined
/// after that shade merged the sprite came out exact. Measured on two tuning sets (val
/// split, seeds 2 and 3, 258 `seed` pairs each; snap's exact sprites): 1 / 2 / 3 / 4 / 7
/// rounds made 78.7% / 80.6% / 80.6% / 81.0% / 81.0% and 77.9% / 81.0% / 81.4% / 81.4% /
/// 81.4%, at a median of 69 → 102 ms per sprite (two at once); `ai` stayed at 21.3%.
const MODEL_ROUNDS: usize = 4;

/// A cell whose fitted colour lies more than this many 8-bit levels from its palette
/// colour in some channel is tested for a colour of its own
/// ([`deconvolve::BlurFit::split_supported_cells`]), the most distant
/// [`MAX_SPLIT_CANDIDATES`] of them. Chosen on two tuning sets (val split, seeds 2 and 3,
/// 258 `seed` pairs each; snap's exact sprites; 85.3% and 85.3% without splits): at 8
/// levels, a price per cell of 20 / 35 / 70 / 140 times the noise made 86.0 / 86.8 / 85.7
/// / 85.7% and 87.2 / 86.8 / 85.7 / 85.3%, so the merge test's own price (35) is the
/// split's too; at 35, 2 / 4 / 8 levels made 86.4 / 86.8 / 86.8% and 86.8% on both.
const SPLIT_CANDIDATE_LEVELS: u8 = 4;
/// See [`SPLIT_CANDIDATE_LEVELS`]: each test refits the palette once, so their number is
/// bounded.
const MAX_SPLIT_CANDIDATES: usize = 32;

/// Share of a cell's size, on each side, left out of its interior.
pub const CELL_MARGIN: f32 = 0.2;
/// Interiors larger than this many pixels are subsampled on a regular lattice: the median
/// of a few dozen pixels is as good as that of hundreds, at a fraction of the cost.
const MAX_SAMPLES_PER_CELL: usize = 96;

/// The robust colour and alpha of every cell, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct CellColours {
    pub cols: u32,
    pub rows: u32,
    pub colour: Vec<Oklab>,
    /// Alpha in 0-255.
    pub alpha: Vec<f32>,
    /// How much the cell's interior varies: the weighted median OKLab distance of its
    /// pixels from the cell's colour (0 for a flat cell).
    pub spread: Vec<f32>,
}

/// How the palette is chosen.
#[derive(Clone, Debug)]
pub enum PaletteChoice {
    /// Clustered from the image.
    Auto(AutoPaletteOptions),
    /// The user's palette: every opaque pixel becomes its nearest colour.
    Fixed(Palette),
}

/// How alpha is output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AlphaMode {
    /// Opaque where the cell's alpha is at least the threshold, transparent elsewhere.
    Binary { threshold: u8 },
    /// As [`AlphaMode::Binary`], except that cells on a translucent level the sprite
    /// draws with (a shadow or glow at one alpha, see [`alpha_levels`]) take that level.
    Levels { threshold: u8 },
    /// The cell's alpha as it is (colour is still snapped where alpha is above zero).
    Keep,
}

/// Translucent levels are looked for between these alphas: edges of an opaque sprite
/// leave cells within about 64 of transparent and opaque after a blurred upscale is undone
/// (37-65 and 204-222 on the tuning pairs), while the clean sprites' commonest levels
/// past that are 127, 76, 167, 84, 191 and 194.
const LEVEL_ALPHAS: std::ops::RangeInclusive<u16> = 64..=200;
/// A level's cells lie within this alpha of its centre...
const LEVEL_HALF_WIDTH: f32 = 8.0;
/// ...and there are at least this many of them...
const MIN_LEVEL_CELLS: usize = 8;
/// ...and at least this many times as many as the other translucent cells within
/// [`LEVEL_FLANK`] half-widths around them: the alpha ramps that soft edges leave cover
/// the range evenly, a level stands out of it. On the tuning pairs (val split, seed 2;
/// 258 `seed`, `ai` and `hard` images each) this found 4 / 5 / 2 of the 7 / 5 / 6
/// sprites with at least 8 translucent pixels, and no level in any other sprite.
const LEVEL_PROMINENCE: f32 = 2.0;
const LEVEL_FLANK: f32 = 5.0;

/// The translucent alpha levels in a sprite's cells, each as the alpha range of its cells
/// and the level they take (the median of their alphas): the densest windows of
/// [`LEVEL_HALF_WIDTH`] either side within [`LEVEL_ALPHAS`] that hold enough cells
/// ([`MIN_LEVEL_CELLS`]) and stand out of the translucent cells around them
/// ([`LEVEL_PROMINENCE`]), densest first, apart by at least two windows.
pub fn alpha_levels(alpha: &[f32]) -> Vec<(std::ops::RangeInclusive<f32>, u8)> {
    let mut translucent: Vec<f32> = alpha.iter().copied().filter(|&a| a > 0.5 && a < 254.5).collect();
    translucent.sort_unstable_by(f32::total_cmp);
    let count = |lo: f32, hi: f32| translucent.partition_point(|&a| a <= hi) - translucent.partition_point(|&a| a < lo);
    let mut levels: Vec<(std::ops::RangeInclusive<f32>, u8)> = Vec::new();
    let mut taken: Vec<f32> = Vec::new();
    loop {
        let free = |centre: f32| taken.iter().all(|&t| (t - centre).abs() > 2.0 * LEVEL_HALF_WIDTH);
        let densest = LEVEL_ALPHAS
            .map(f32::from)
            .filter(|&c| free(c))
            .map(|c| (c, count(c - LEVEL_HALF_WIDTH, c + LEVEL_HALF_WIDTH)))
            // The lowest of equally dense centres (`min_by_key` keeps the first).
            .min_by_key(|&(_, n)| std::cmp::Reverse(n));
        let Some((centre, n)) = densest.filter(|&(_, n)| n >= MIN_LEVEL_CELLS) else { return levels };
        taken.push(centre);
        let (lo, hi) = (centre - LEVEL_HALF_WIDTH, centre + LEVEL_HALF_WIDTH);
        let reach = LEVEL_FLANK * LEVEL_HALF_WIDTH;
        let flank = count(centre - reach, centre + reach) - n;
        if n as f32 >= LEVEL_PROMINENCE * flank as f32 {
            let start = translucent.partition_point(|&a| a < lo);
            let level = translucent[start + n / 2].round().clamp(1.0, 254.0) as u8;
            levels.push((lo..=hi, level));
        }
    }
}

/// Each cell's output alpha under `mode` (0: transparent).
fn output_alpha(alpha: &[f32], mode: AlphaMode) -> Vec<u8> {
    let binary = |a: f32, threshold: u8| if a >= f32::from(threshold) { 255 } else { 0 };
    match mode {
        AlphaMode::Binary { threshold } => alpha.iter().map(|&a| binary(a, threshold)).collect(),
        AlphaMode::Levels { threshold } => {
            let levels = alpha_levels(alpha);
            alpha.iter().map(|&a| levels.iter().find(|(range, _)| range.contains(&a)).map_or_else(|| binary(a, threshold), |l| l.1)).collect()
        }
        AlphaMode::Keep => alpha.iter().map(|&a| a.round().clamp(0.0, 255.0) as u8).collect(),
    }
}

/// Decoder settings.
#[derive(Clone, Debug)]
pub struct DecodeOptions {
    pub palette: PaletteChoice,
    pub alpha: AlphaMode,
    /// Turn the flat colour that touches the border into transparency.
    pub remove_background: bool,
    /// Replace pixels that differ from all four neighbours, which agree among themselves.
    pub remove_strays: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        Self {
            palette: PaletteChoice::Auto(AutoPaletteOptions::default()),
            alpha: AlphaMode::Levels { threshold: 128 },
            remove_background: false,
            remove_strays: false,
        }
    }
}

/// The decoder's result: the sprite and the palette it uses.
#[derive(Clone, Debug)]
pub struct Decoded {
    pub image: RgbaImage,
    pub palette: Vec<[u8; 3]>,
}

/// The interior pixel range of a cell along one axis, and each pixel's tent weight.
fn interior(lo: f32, hi: f32, len: u32) -> (u32, u32, f32, f32) {
    let size = hi - lo;
    let margin = CELL_MARGIN * size;
    // Pixel i's centre is i + 0.5; keep those inside [lo + margin, hi - margin].
    let mut first = (lo + margin - 0.5).ceil().max(0.0) as u32;
    let mut last = ((hi - margin - 0.5).floor() as i64).min(i64::from(len) - 1);
    if last < i64::from(first) {
        // The cell is too thin for an interior: use the pixel under its centre.
        let c = ((lo + hi) / 2.0).floor().clamp(0.0, (len - 1) as f32) as u32;
        first = c;
        last = i64::from(c);
    }
    (first, last.max(0) as u32, (lo + hi) / 2.0, (size / 2.0).max(0.5))
}

/// Reduces every cell of `img` under `grid` to one colour and alpha.
pub fn reduce_cells(img: &RgbaImage, grid: &Grid) -> CellColours {
    let (cols, rows) = (grid.cols(), grid.rows());
    let n = (cols * rows) as usize;
    let mut colour = Vec::with_capacity(n);
    let mut alpha = Vec::with_capacity(n);
    let mut spread = Vec::with_capacity(n);
    let xs: Vec<_> = grid.x_lines.windows(2).map(|w| interior(w[0], w[1], img.width())).collect();
    let ys: Vec<_> = grid.y_lines.windows(2).map(|w| interior(w[0], w[1], img.height())).collect();
    let mut samples: Vec<(Oklab, f32, f32)> = Vec::with_capacity(MAX_SAMPLES_PER_CELL * 2);
    for &(y0, y1, cy, hy) in &ys {
        for &(x0, x1, cx, hx) in &xs {
            samples.clear();
            let count = ((x1 - x0 + 1) * (y1 - y0 + 1)) as usize;
            let stride = ((count as f32 / MAX_SAMPLES_PER_CELL as f32).sqrt().ceil() as u32).max(1);
            for y in (y0..=y1).step_by(stride as usize) {
                let wy = 1.0 - 0.5 * ((y as f32 + 0.5 - cy) / hy).abs().min(1.0);
                for x in (x0..=x1).step_by(stride as usize) {
                    let wx = 1.0 - 0.5 * ((x as f32 + 0.5 - cx) / hx).abs().min(1.0);
                    let p = img.get_pixel(x, y).0;
                    samples.push((srgb8_to_oklab([p[0], p[1], p[2]]), f32::from(p[3]), wx * wy));
                }
            }
            let (c, a, s) = robust_colour(&samples);
            colour.push(c);
            alpha.push(a);
            spread.push(s);
        }
    }
    CellColours { cols, rows, colour, alpha, spread }
}

/// Weighted medians of alpha, and of each OKLab channel over the pixels at least half
/// opaque (all pixels when none is), so a transparent pixel's colour never leaks in; and
/// the weighted median distance of those pixels from that colour (the cell's spread).
fn robust_colour(samples: &[(Oklab, f32, f32)]) -> (Oklab, f32, f32) {
    let mut keyed: Vec<(u32, f32)> = Vec::with_capacity(samples.len());
    // Most cells are wholly opaque or wholly transparent: their median alpha needs no sort.
    let first_alpha = samples.first().map_or(0.0, |s| s.1);
    let alpha = if samples.iter().all(|s| s.1 == first_alpha) {
        first_alpha
    } else {
        keyed.extend(samples.iter().map(|s| (ordered_key(s.1), s.2)));
        weighted_median(&mut keyed)
    };
    let opaque_count = samples.iter().filter(|s| s.1 >= 128.0).count();
    let opaque: Vec<(Oklab, f32, f32)>;
    let pool: &[(Oklab, f32, f32)] = if opaque_count == 0 || opaque_count == samples.len() {
        samples
    } else {
        opaque = samples.iter().filter(|s| s.1 >= 128.0).copied().collect();
        &opaque
    };
    let mut channel = |f: fn(&Oklab) -> f32| {
        keyed.clear();
        keyed.extend(pool.iter().map(|s| (ordered_key(f(&s.0)), s.2)));
        weighted_median(&mut keyed)
    };
    let l = channel(|c| c.l);
    let a = channel(|c| c.a);
    let b = channel(|c| c.b);
    let colour = Oklab { l, a, b };
    keyed.clear();
    keyed.extend(pool.iter().map(|s| (ordered_key(s.0.dist(colour)), s.2)));
    let spread = weighted_median(&mut keyed);
    (colour, alpha, spread)
}

/// `v` as an integer that orders as [`f32::total_cmp`] orders the floats: the medians sort
/// these, as comparing integers is cheaper (and gives the same order, so the same result).
fn ordered_key(v: f32) -> u32 {
    let bits = v.to_bits();
    // Negative floats: every bit flipped; others: the sign bit set.
    bits ^ ((((bits as i32) >> 31) as u32) | 0x8000_0000)
}

/// The float of an [`ordered_key`].
fn from_ordered_key(key: u32) -> f32 {
    f32::from_bits(key ^ ((((!key as i32) >> 31) as u32) | 0x8000_0000))
}

/// The lower weighted median of (value as [`ordered_key`], weight) pairs.
fn weighted_median(values: &mut [(u32, f32)]) -> f32 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_unstable_by_key(|v| v.0);
    let half = values.iter().map(|v| v.1).sum::<f32>() / 2.0;
    let mut acc = 0.0;
    for &(v, w) in values.iter() {
        acc += w;
        if acc >= half {
            return from_ordered_key(v);
        }
    }
    from_ordered_key(values[values.len() - 1].0)
}

/// Turns reduced cells into the final sprite.
pub fn decode(cells: &CellColours, opts: &DecodeOptions) -> Decoded {
    decode_fitted(cells, opts, None)
}

/// [`decode`], where `fit` (the blur model [`deconvolve::refine`] fitted to the image, if
/// any) chooses each cell's palette colour by what explains the image best
/// ([`deconvolve::BlurFit::reassign`]) and, for an automatic palette, refits the colours
/// to the image ([`deconvolve::BlurFit::refit_palette`]), before strays and background are
/// cleared. A user's palette is never changed.
pub fn decode_fitted(cells: &CellColours, opts: &DecodeOptions, fit: Option<&mut deconvolve::BlurFit>) -> Decoded {
    let n = cells.colour.len();
    let alpha = output_alpha(&cells.alpha, opts.alpha);
    let visible: Vec<bool> = alpha.iter().map(|&a| a > 0).collect();
    let visible_idx: Vec<usize> = (0..n).filter(|&i| visible[i]).collect();
    let samples: Vec<Oklab> = visible_idx.iter().map(|&i| cells.colour[i]).collect();
    let (mut palette, assignment) = match &opts.palette {
        PaletteChoice::Auto(auto) => {
            let nearest = nearest_neighbour_distances(cells, &visible);
            let unpalettised = is_unpalettised(&samples);
            let floor = if unpalettised { DRIFT_MERGE_FLOOR } else { merge_floor(&nearest) };
            let noise = cell_noise(cells, &visible, &nearest, !unpalettised);
            let mut merge_distance = (NOISE_MERGE_FACTOR * noise).clamp(floor, auto.merge_distance.max(floor));
            if fit.is_some() {
                // The image, not the fitted values, decides which of these close colours
                // stay apart (see `deconvolve::BlurFit::merge_unsupported_colours`).
                merge_distance *= FITTED_MERGE_SHARE;
            }
            let auto = AutoPaletteOptions { merge_distance, ..*auto };
            let (mut palette, assignment) = auto_palette(&samples, &vec![1.0; samples.len()], &auto);
            set_to_channel_medians(&mut palette, &samples, &assignment);
            (palette, assignment)
        }
        PaletteChoice::Fixed(p) => {
            let a = snap_to_palette(&samples, p);
            (p.clone(), a)
        }
    };
    // Palette index of every cell; None where transparent.
    let mut index: Vec<Option<usize>> = vec![None; n];
    for (&i, &k) in visible_idx.iter().zip(&assignment) {
        index[i] = Some(k);
    }
    let draw = |index: &[Option<usize>], palette: &Palette| {
        RgbaImage::from_fn(cells.cols, cells.rows, |x, y| {
            let i = (y * cells.cols + x) as usize;
            match index[i] {
                None => Rgba([0, 0, 0, 0]),
                Some(k) => {
                    let [r, g, b] = palette.colours[k];
                    Rgba([r, g, b, alpha[i]])
                }
            }
        })
    };
    if let Some(fit) = fit {
        let automatic = matches!(opts.palette, PaletteChoice::Auto(_));
        // Colours and assignment each explain the image better given the other.
        let refit = |fit: &deconvolve::BlurFit, index: &mut Vec<Option<usize>>, palette: &mut Palette| {
            fit.reassign(&draw(index, palette), index, &palette.colours);
            if automatic {
                for _ in 0..PALETTE_REFITS {
                    fit.refit_palette(&draw(index, palette), index, &mut palette.colours);
                    fit.reassign(&draw(index, palette), index, &palette.colours);
                }
            }
        };
        refit(fit, &mut index, &mut palette);
        // The model is refined with every cell's colour tied to the palette; colours
        // that only absorbed the model's misfit then merge, and the model, now held by
        // fewer colours, is refined again (see [`MODEL_ROUNDS`]).
        for _ in 0..MODEL_ROUNDS {
            if fit.refine_model(&draw(&index, &palette), &index, &palette.colours) {
                refit(fit, &mut index, &mut palette);
            }
            if !(automatic && fit.merge_unsupported_colours(&draw(&index, &palette), &mut index, &mut palette.colours, MERGE_PENALTY) > 0) {
                break;
            }
            refit(fit, &mut index, &mut palette);
        }
        if automatic {
            let candidates = split_candidates(cells, &alpha, &index, &palette);
            if fit.split_supported_cells(&draw(&index, &palette), &mut index, &mut palette.colours, &candidates) > 0 {
                fit.reassign(&draw(&index, &palette), &mut index, &palette.colours);
            }
        }
    }
    if opts.remove_strays {
        remove_strays(&mut index, cells.cols as usize, cells.rows as usize);
    }
    if opts.remove_background {
        remove_background(&mut index, cells.cols as usize, cells.rows as usize);
    }
    let image = draw(&index, &palette);
    let used: Vec<[u8; 3]> = {
        let mut seen = vec![false; palette.colours.len()];
        index.iter().flatten().for_each(|&k| seen[k] = true);
        let mut used: Vec<[u8; 3]> = Vec::new();
        // Two clusters can share a median colour: list it once.
        for (c, _) in palette.colours.iter().zip(&seen).filter(|(_, &s)| s) {
            if !used.contains(c) {
                used.push(*c);
            }
        }
        used
    };
    Decoded { image, palette: used }
}

/// The opaque cells whose own fitted colour lies more than [`SPLIT_CANDIDATE_LEVELS`]
/// from their palette colour in some channel, farthest first, at most
/// [`MAX_SPLIT_CANDIDATES`]: the cells that [`deconvolve::BlurFit::split_supported_cells`]
/// tests for a colour of their own.
fn split_candidates(cells: &CellColours, alpha: &[u8], index: &[Option<usize>], palette: &Palette) -> Vec<usize> {
    let mut candidates: Vec<(u8, usize)> = (0..index.len())
        .filter_map(|i| {
            let k = index[i].filter(|_| alpha[i] == 255)?;
            let fitted = oklab_to_srgb8(cells.colour[i]);
            let off = (0..3).map(|c| fitted[c].abs_diff(palette.colours[k][c])).max().unwrap_or(0);
            (off > SPLIT_CANDIDATE_LEVELS).then_some((off, i))
        })
        .collect();
    // Farthest first; ties in cell order, so that the result never depends on the sort.
    candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    candidates.into_iter().take(MAX_SPLIT_CANDIDATES).map(|(_, i)| i).collect()
}

/// Sets every palette colour to the per-channel median, in sRGB, of the cell colours
/// assigned to it (colours with no cell stay). The clustering's colours are means, and
/// per-cell colour drift biases a mean wherever it clips: cells of a black drift up but
/// never below zero, so their mean comes out grey-ish while their median stays black. The
/// median of each channel is the same in sRGB and linear light, both being monotonic.
pub(crate) fn set_to_channel_medians(palette: &mut Palette, samples: &[Oklab], assignment: &[usize]) {
    let mut members: Vec<Vec<[u8; 3]>> = vec![Vec::new(); palette.colours.len()];
    for (&sample, &k) in samples.iter().zip(assignment) {
        members[k].push(oklab_to_srgb8(sample));
    }
    for (colour, cells) in palette.colours.iter_mut().zip(&mut members) {
        if cells.is_empty() {
            continue;
        }
        let n = cells.len();
        *colour = [0, 1, 2].map(|c| {
            // Even counts average the two middle values (two cells: their mean).
            let upper = cells.select_nth_unstable_by_key(n / 2, |rgb| rgb[c]).1[c];
            let lower = if n % 2 == 0 { cells[..n / 2].iter().map(|rgb| rgb[c]).max().expect("n >= 2") } else { upper };
            ((u16::from(lower) + u16::from(upper) + 1) / 2) as u8
        });
    }
}

/// The noise of cell colours: the median, over visible cells, of the OKLab distance
/// to the most similar visible 4-neighbour (`nearest`, from [`nearest_neighbour_distances`]).
/// Most cells of pixel art share their colour with a neighbour, so this is how far apart
/// cells of one colour came out; the median keeps dithered and detailed areas, where no
/// neighbour shares the colour, from inflating it. With `capped_by_spread`, capped at
/// [`DRIFT_PER_INTERIOR_NOISE`] times the median spread inside cells, which tells texture
/// (flat cells, different neighbours) from noise; [`decode`] lifts the cap where the cells
/// are not palettised ([`is_unpalettised`]), since drift leaves cells flat inside too.
fn cell_noise(cells: &CellColours, visible: &[bool], nearest: &[f32], capped_by_spread: bool) -> f32 {
    let median = |mut values: Vec<f32>| -> f32 {
        let mid = values.len() / 2;
        *values.select_nth_unstable_by(mid, f32::total_cmp).1
    };
    // No visible cell has no neighbour distance either: both cases give 0.
    let neighbour_distance = if nearest.is_empty() { 0.0 } else { median(nearest.to_vec()) };
    if !capped_by_spread {
        return neighbour_distance;
    }
    let spreads: Vec<f32> = (0..visible.len()).filter(|&i| visible[i]).map(|i| cells.spread[i]).collect();
    if spreads.is_empty() {
        return 0.0;
    }
    neighbour_distance.min(DRIFT_PER_INTERIOR_NOISE * median(spreads))
}

/// Whether the cells have more distinct colours (as sRGB8) than
/// [`UNPALETTISED_SHARE`] of their number: pixel art reuses a few colours, so almost
/// every cell having one of its own is drift, even where the cells are flat inside.
fn is_unpalettised(samples: &[Oklab]) -> bool {
    let distinct: std::collections::HashSet<[u8; 3]> = samples.iter().map(|&c| oklab_to_srgb8(c)).collect();
    distinct.len() as f32 > UNPALETTISED_SHARE * samples.len() as f32
}

/// For each visible cell with a visible 4-neighbour, the OKLab distance to the most similar one.
fn nearest_neighbour_distances(cells: &CellColours, visible: &[bool]) -> Vec<f32> {
    let (cols, rows) = (cells.cols as usize, cells.rows as usize);
    (0..cols * rows)
        .filter(|&i| visible[i])
        .filter_map(|i| {
            neighbours(i, cols, rows)
                .filter(|&j| visible[j])
                .map(|j| cells.colour[i].dist(cells.colour[j]))
                .min_by(f32::total_cmp)
        })
        .collect()
}

/// The smallest merge distance, from each cell's distance to its most similar neighbour.
/// Drift that clips (a channel at 0 or 255 drifting only one way) leaves many cells exactly
/// equal, so the median that [`cell_noise`] takes can be 0 on a drifted image, and the
/// cells' interiors (a pixel or two in small cells) can look flat too. What gives drift
/// away is the share of cells one small step from their nearest neighbour: above
/// [`DRIFTED_CELL_SHARE`], colours closer than [`DRIFT_MERGE_FLOOR`] merge; otherwise only
/// those closer than [`MIN_MERGE_DISTANCE`].
fn merge_floor(nearest: &[f32]) -> f32 {
    let small_steps = nearest.iter().filter(|&&d| d > IDENTICAL_COLOURS && d < DRIFT_MERGE_FLOOR).count();
    if !nearest.is_empty() && small_steps as f32 > DRIFTED_CELL_SHARE * nearest.len() as f32 {
        DRIFT_MERGE_FLOOR
    } else {
        MIN_MERGE_DISTANCE
    }
}

/// The colour a cell would have without palette snapping, as 8-bit sRGB.
pub fn cell_srgb(cells: &CellColours, i: usize) -> [u8; 3] {
    oklab_to_srgb8(cells.colour[i])
}

fn neighbours(i: usize, cols: usize, rows: usize) -> impl Iterator<Item = usize> {
    let (x, y) = (i % cols, i / cols);
    [(0isize, -1isize), (-1, 0), (1, 0), (0, 1)].into_iter().filter_map(move |(dx, dy)| {
        let (nx, ny) = (x as isize + dx, y as isize + dy);
        (nx >= 0 && ny >= 0 && (nx as usize) < cols && (ny as usize) < rows).then(|| ny as usize * cols + nx as usize)
    })
}

/// A stray is a pixel unlike each of its four neighbours while they all agree: it becomes
/// their colour. Decided on the input state, so the result does not depend on scan order.
fn remove_strays(index: &mut [Option<usize>], cols: usize, rows: usize) {
    let before = index.to_vec();
    for i in 0..before.len() {
        let ns: Vec<Option<usize>> = neighbours(i, cols, rows).map(|j| before[j]).collect();
        if ns.len() == 4 && ns.iter().all(|&v| v == ns[0]) && ns[0] != before[i] {
            index[i] = ns[0];
        }
    }
}

/// The background is the colour of most border cells, if it covers at least half of the
/// border; it is flood-filled from the border (4-connected) so the same colour inside the
/// sprite stays.
fn remove_background(index: &mut [Option<usize>], cols: usize, rows: usize) {
    let border: Vec<usize> = (0..index.len())
        .filter(|&i| i % cols == 0 || i % cols == cols - 1 || i / cols == 0 || i / cols == rows - 1)
        .collect();
    let mut counts = std::collections::HashMap::new();
    for &i in &border {
        if let Some(k) = index[i] {
            *counts.entry(k).or_insert(0usize) += 1;
        }
    }
    let Some((&bg, &count)) = counts.iter().max_by_key(|(&k, &c)| (c, std::cmp::Reverse(k))) else { return };
    if count * 2 < border.len() {
        return;
    }
    let mut stack: Vec<usize> = border.into_iter().filter(|&i| index[i] == Some(bg)).collect();
    while let Some(i) = stack.pop() {
        if index[i] != Some(bg) {
            continue;
        }
        index[i] = None;
        stack.extend(neighbours(i, cols, rows).filter(|&j| index[j] == Some(bg)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid_for(cols: u32, rows: u32, scale: f32) -> Grid {
        Grid {
            x_lines: (0..=cols).map(|i| i as f32 * scale).collect(),
            y_lines: (0..=rows).map(|i| i as f32 * scale).collect(),
            cell_width: scale,
            cell_height: scale,
            phase_x: 0.0,
            phase_y: 0.0,
            confidence_x: 1.0,
            confidence_y: 1.0,
        }
    }

    proptest::proptest! {
        /// The medians' integer keys order every float, NaNs and signed zeros included, as
        /// `total_cmp` does, and give the float back bit for bit.
        #[test]
        fn ordered_keys_order_as_total_cmp(x_bits: u32, y_bits: u32) {
            let (x, y) = (f32::from_bits(x_bits), f32::from_bits(y_bits));
            proptest::prop_assert_eq!(ordered_key(x).cmp(&ordered_key(y)), x.total_cmp(&y));
            proptest::prop_assert_eq!(from_ordered_key(ordered_key(x)).to_bits(), x_bits);
        }
    }

    #[test]
    fn weighted_median_resists_outliers() {
        let mut v: Vec<(u32, f32)> = [(1.0, 1.0), (1.1, 1.0), (0.9, 1.0), (100.0, 1.0), (-50.0, 0.5)].map(|(v, w)| (ordered_key(v), w)).to_vec();
        let m = weighted_median(&mut v);
        assert!((0.9..=1.1).contains(&m), "{m}");
    }

    #[test]
    fn soft_edges_do_not_leak_into_cells() {
        // Two 10-px cells, red and blue, with a 4-px blend across the boundary.
        let img = RgbaImage::from_fn(20, 10, |x, _| {
            let t = ((x as f32 + 0.5 - 8.0) / 4.0).clamp(0.0, 1.0);
            Rgba([(255.0 * (1.0 - t)) as u8, 0, (255.0 * t) as u8, 255])
        });
        let cells = reduce_cells(&img, &grid_for(2, 1, 10.0));
        assert_eq!(cell_srgb(&cells, 0), [255, 0, 0]);
        assert_eq!(cell_srgb(&cells, 1), [0, 0, 255]);
    }

    #[test]
    fn decode_binarises_alpha_and_removes_background_by_flood_fill() {
        // 5x5 cells: white background around a black ring with white inside.
        let art = |x: u32, y: u32| -> [u8; 4] {
            let ring = (1..=3).contains(&x) && (1..=3).contains(&y) && !(x == 2 && y == 2);
            if ring { [0, 0, 0, 255] } else { [255, 255, 255, 255] }
        };
        let img = RgbaImage::from_fn(20, 20, |x, y| Rgba(art(x / 4, y / 4)));
        let cells = reduce_cells(&img, &grid_for(5, 5, 4.0));
        let opts = DecodeOptions { remove_background: true, ..Default::default() };
        let out = decode(&cells, &opts).image;
        assert_eq!(out.get_pixel(0, 0).0[3], 0, "border background removed");
        assert_eq!(out.get_pixel(2, 2).0, [255, 255, 255, 255], "enclosed white stays");
        assert_eq!(out.get_pixel(1, 1).0, [0, 0, 0, 255]);
    }

    #[test]
    fn palette_colours_are_channel_medians_so_clipped_drift_keeps_white_white() {
        // Cells of one white that drifted by up to 8/255 per channel, clipped at 255 (as
        // drift on a generator's output is): their mean is 253, their median 255. A second
        // colour with an even count takes the mean of its two middle values; a colour no
        // cell uses stays.
        let drift = [0u8, 0, 0, 3, 8, 0, 5, 0, 0];
        let mut samples: Vec<Oklab> = drift.iter().map(|&d| srgb8_to_oklab([255 - d; 3])).collect();
        samples.extend([[10, 20, 30], [20, 40, 50]].map(srgb8_to_oklab));
        let assignment = [vec![0; drift.len()], vec![1, 1]].concat();
        let mut palette = Palette { colours: vec![[253, 253, 253], [15, 30, 40], [1, 2, 3]] };
        set_to_channel_medians(&mut palette, &samples, &assignment);
        assert_eq!(palette.colours, vec![[255, 255, 255], [15, 30, 40], [1, 2, 3]]);
    }

    #[test]
    fn drift_in_small_steps_raises_the_merge_floor_and_clean_art_does_not() {
        // Clean art: neighbours identical or far apart (a 0.05 step is a real shade).
        assert_eq!(merge_floor(&[0.0, 0.0, 0.0, 0.05, 0.2, 0.0]), MIN_MERGE_DISTANCE);
        // Drifted: half the cells one small step from their nearest neighbour.
        assert_eq!(merge_floor(&[0.0, 0.004, 0.01, 0.0, 0.015, 0.0]), DRIFT_MERGE_FLOOR);
        // At the share itself, not yet.
        assert_eq!(merge_floor(&[0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]), MIN_MERGE_DISTANCE);
        assert_eq!(merge_floor(&[]), MIN_MERGE_DISTANCE);
    }

    #[test]
    fn a_drifted_background_becomes_one_colour() {
        // 8x8 cells of one background whose cells drift by up to 4/255, clipped at 0 and 255
        // (many cells exactly equal, so the median neighbour distance is 0), and a 2x2 black
        // square. Without the drift floor the background splits into several colours.
        let drift = |i: usize| [0u8, 0, 3, 0, 2, 4, 0, 1][(i * 7 + i / 8) % 8];
        let colour: Vec<Oklab> = (0..64)
            .map(|i| {
                let (x, y) = (i % 8, i / 8);
                if (3..5).contains(&x) && (3..5).contains(&y) { srgb8_to_oklab([0, 0, 0]) } else { srgb8_to_oklab([255 - drift(i), drift(i), 255]) }
            })
            .collect();
        let cells = CellColours { cols: 8, rows: 8, colour, alpha: vec![255.0; 64], spread: vec![0.0; 64] };
        let mut palette = decode(&cells, &DecodeOptions::default()).palette;
        palette.sort();
        assert_eq!(palette.len(), 2, "{palette:?}");
        assert_eq!(palette[0], [0, 0, 0]);
    }

    #[test]
    fn cells_that_each_drifted_to_their_own_colour_merge_even_when_flat_inside() {
        // 16x16 cells of four colours in 4x4 blocks, each cell shifted by its own OKLab
        // offset (about 0.012 per component, unclipped) and flat inside (spread 0), as
        // generators draw: nearly every cell has a colour of its own. The spread cap alone
        // would read flat cells as clean texture and keep hundreds of colours.
        let truth = [[200, 60, 50], [60, 140, 70], [70, 80, 190], [220, 200, 90]].map(srgb8_to_oklab);
        let block_colour = |i: usize| truth[(i % 16) / 4 % 2 + 2 * ((i / 16) / 4 % 2)];
        let offset = |i: usize, k: u64| {
            let u = |j: u64| (crate::rng::splitmix64(i as u64 * 8 + k * 2 + j) % 10_000) as f32 / 10_000.0;
            (u(0) + u(1) - 1.0) * 0.03
        };
        let colour: Vec<Oklab> = (0..256)
            .map(|i| {
                let c = block_colour(i);
                Oklab { l: c.l + offset(i, 0), a: c.a + offset(i, 1), b: c.b + offset(i, 2) }
            })
            .collect();
        assert!(is_unpalettised(&colour));
        let cells = CellColours { cols: 16, rows: 16, colour, alpha: vec![255.0; 256], spread: vec![0.0; 256] };
        let mut palette = decode(&cells, &DecodeOptions::default()).palette;
        palette.sort();
        let mut expected = truth.map(oklab_to_srgb8).to_vec();
        expected.sort();
        assert_eq!(palette.len(), 4, "{palette:?}");
        for (got, want) in palette.iter().zip(&expected) {
            assert!(got.iter().zip(want).all(|(g, w)| g.abs_diff(*w) <= 8), "{got:?} against {want:?}");
        }
        // Clean art reuses its colours: the same layout undrifted is palettised.
        let clean: Vec<Oklab> = (0..256).map(block_colour).collect();
        assert!(!is_unpalettised(&clean));
    }

    #[test]
    fn strays_are_removed_only_when_asked() {
        let img = RgbaImage::from_fn(9, 9, |x, y| if x / 3 == 1 && y / 3 == 1 { Rgba([255, 0, 0, 255]) } else { Rgba([0, 0, 255, 255]) });
        let cells = reduce_cells(&img, &grid_for(3, 3, 3.0));
        assert_eq!(decode(&cells, &DecodeOptions::default()).image.get_pixel(1, 1).0, [255, 0, 0, 255]);
        let opts = DecodeOptions { remove_strays: true, ..Default::default() };
        assert_eq!(decode(&cells, &opts).image.get_pixel(1, 1).0, [0, 0, 255, 255]);
    }

    #[test]
    fn alpha_levels_find_a_drawn_level_but_not_soft_edge_ramps() {
        let ramp = |n: usize| (0..n).map(move |i| 1.0 + 253.0 * i as f32 / n as f32);
        // An opaque sprite whose soft edges left a thin ramp, with a shadow at 127 (±2).
        let mut alpha: Vec<f32> = [0.0; 200].into_iter().chain([255.0; 300]).chain(ramp(40)).collect();
        alpha.extend((0..24).map(|i| 125.0 + (i % 5) as f32));
        let levels = alpha_levels(&alpha);
        assert_eq!(levels.len(), 1, "{levels:?}");
        assert!(levels[0].0.contains(&127.0) && levels[0].1.abs_diff(127) <= 2, "{levels:?}");
        // Soft edges alone cover the range evenly: no level, however many cells.
        assert!(alpha_levels(&ramp(200).collect::<Vec<_>>()).is_empty());
        // Too few cells to tell a level from chance, or too close to opaque to tell it from
        // an edge: none.
        assert!(alpha_levels(&[127.0; MIN_LEVEL_CELLS - 1]).is_empty());
        assert!(alpha_levels(&[230.0; 30]).is_empty());
        // Cells on the level take it; others are binarised.
        let out = output_alpha(&[0.0, 60.0, 126.0, 130.0, 200.0], AlphaMode::Levels { threshold: 128 });
        assert_eq!(out, [0, 0, 0, 255, 255], "no level among five cells");
        let mut with_level = alpha.clone();
        with_level.extend([60.0, 120.0, 200.0]);
        let out = output_alpha(&with_level, AlphaMode::Levels { threshold: 128 });
        assert_eq!(&out[out.len() - 3..], &[0, levels[0].1, 255]);
    }
}

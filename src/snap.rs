//! The snap restorer: grid analysis followed by the downsample-and-quantize decoder.
//! The fastest restorer of the engine, and the last stage of every learned one.

use crate::decoder::deconvolve::{self, BlurFit, BlurModel, LinePlacement};
use crate::decoder::{decode_fitted, reduce_cells, CellColours, DecodeOptions, MERGE_PENALTY};
use crate::grid::{analyse, Grid, GridError, GridOptions};
use image::RgbaImage;
use rayon::prelude::*;
use serde::Serialize;

/// Everything the snap restorer can be told.
#[derive(Clone, Debug, Default)]
pub struct SnapOptions {
    pub grid: GridOptions,
    pub decode: DecodeOptions,
}

/// A restored sprite, with what was found on the way.
#[derive(Clone, Debug, Serialize)]
pub struct Restored {
    #[serde(skip)]
    pub image: RgbaImage,
    pub grid: Grid,
    /// The colours the sprite uses, as sRGB8.
    pub palette: Vec<[u8; 3]>,
    /// The interpolating upscale (and blur) the decoder found and undid, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blur: Option<BlurModel>,
}

/// Restores one image with the snap restorer.
pub fn restore(image: &RgbaImage, opts: &SnapOptions) -> Result<Restored, GridError> {
    let grid = analyse(image, &opts.grid)?;
    let mut cells = reduce_cells(image, &grid);
    let fitted = deconvolve::refine(image, &grid, &mut cells, line_placement(&opts.grid));
    Ok(finish(&cells, opts, grid, fitted))
}

/// Cells at least this many screen pixels on their smaller side are decoded from their
/// fitted colours alone, without the palette stage under the blur model
/// ([`crate::decoder::decode_fitted`]): their interiors show their own colour, which is
/// what that stage recovers for small cells that the blur mixes. Measured with snap,
/// against running it for every cell size (one run each): the tuning pairs (val split,
/// seed 2) lost nothing (`seed` 77.5% exact, `ai` 21.3%, `hard` 0.4% with pixel accuracy
/// 44.5% → 45.0% and its median time 94.5 → 41.9 ms); on the validation pairs `hard` went
/// 1.2% → 1.6% exact (pixel accuracy 43.8% → 44.1%, palette error 0.048 → 0.052, median
/// 113 → 45 ms) and `ai` stayed at 15.1% (95th percentile 87 → 68 ms). 8 instead: `hard`
/// tuning 44.6% at 70 ms; 4.5: `seed` tuning 69.4% (its cells are 2-5 px).
pub const PALETTE_STAGE_MAX_CELL: f32 = 6.0;

/// The decoder's palette and alpha stage on `cells` (one colour per cell of `grid`, the
/// decoder's own or a model's), under the blur model `fit` that [`deconvolve::refine`]
/// fitted to the image, if any and if the cells are smaller than
/// [`PALETTE_STAGE_MAX_CELL`]: the last stage of every restorer. The fit may move the
/// grid's lines to where the image says they are (unless the user gave their phase, see
/// [`line_placement`]), and the result reports them.
pub fn finish(cells: &CellColours, opts: &SnapOptions, grid: Grid, fit: Option<BlurFit>) -> Restored {
    finish_refined(cells, opts, grid, fit).0
}

/// [`finish`] of `first` and each set of cells in `others` (a model's prediction, the
/// decoder's own fit, ...), keeping the sprite that explains the image best under the blur model
/// its palette stage refined ([`BlurFit::explanation`]), each of its colours counting
/// the palette stage's merge penalty (`MERGE_PENALTY`, 150) times the image's noise: the
/// criterion by which that stage merges colours, so a colour must lower the residual by
/// that much to be worth keeping. The noise is the lowest the candidates measure; ties go
/// to the earlier, and candidates equal to an earlier one are finished once. Without a
/// palette stage (no blur model, or cells of [`PALETTE_STAGE_MAX_CELL`] or more) only
/// `first` is finished.
pub fn finish_best(first: &CellColours, others: &[&CellColours], opts: &SnapOptions, grid: Grid, fit: Option<BlurFit>) -> Restored {
    // A candidate equal to an earlier one would finish the same (a diffusion model's
    // sample is its base prediction wherever no correction passes its threshold).
    let mut candidates: Vec<&CellColours> = vec![first];
    for &cells in others {
        if !candidates.contains(&cells) {
            candidates.push(cells);
        }
    }
    if !has_palette_stage(&grid, fit.as_ref()) || candidates.len() == 1 {
        return finish(first, opts, grid, fit);
    }
    // Each candidate's palette stage on a thread of its own where the pool has one free
    // (one image restored on several cores); in a batch the images keep the pool busy.
    let finished: Vec<(Restored, Option<(f64, f64)>)> = candidates
        .par_iter()
        .map(|cells| {
            let (restored, refined) = finish_refined(cells, opts, grid.clone(), fit.clone());
            let explanation = refined.and_then(|f| f.explanation(&restored.image));
            (restored, explanation)
        })
        .collect();
    let noise = finished.iter().filter_map(|(_, e)| e.map(|e| e.1)).fold(f64::INFINITY, f64::min);
    let cost = |(restored, explanation): &(Restored, Option<(f64, f64)>)| explanation.map_or(f64::INFINITY, |(residual, _)| residual + MERGE_PENALTY * noise * restored.palette.len() as f64);
    // `min_by` keeps the first of equals.
    finished.into_iter().min_by(|a, b| cost(a).total_cmp(&cost(b))).expect("at least two candidates").0
}

/// Whether [`finish`] runs the palette stage under the blur model `fit` on `grid`'s cells.
pub fn has_palette_stage(grid: &Grid, fit: Option<&BlurFit>) -> bool {
    fit.is_some() && grid.cell_width.min(grid.cell_height) < PALETTE_STAGE_MAX_CELL
}

/// [`finish`], with the blur model as its palette stage left it (`None` without one).
fn finish_refined(cells: &CellColours, opts: &SnapOptions, mut grid: Grid, mut fit: Option<BlurFit>) -> (Restored, Option<BlurFit>) {
    let blur = fit.as_ref().map(|f| f.model);
    if !has_palette_stage(&grid, fit.as_ref()) {
        fit = None;
    }
    if let Some(fit) = fit.as_mut() {
        if line_placement(&opts.grid) == LinePlacement::AsGiven {
            fit.fix_lines();
        }
    }
    let decoded = decode_fitted(cells, &opts.decode, fit.as_mut());
    if let Some(fit) = &fit {
        let (x_lines, y_lines) = fit.lines();
        grid.x_lines = x_lines.to_vec();
        grid.y_lines = y_lines.to_vec();
    }
    let blur = fit.as_ref().map(|f| f.model).or(blur);
    (Restored { image: decoded.image, grid, palette: decoded.palette, blur }, fit)
}

/// Whether the decoder's blur model may move the grid's interior lines
/// ([`deconvolve::refine`], [`deconvolve::BlurFit::refine_model`]): not where the user
/// gave their phase. A cell size or count the user gives fixes how many cells there are,
/// not where their lines fall, and at two or three pixels per cell the phase the grid
/// analysis fits to a blurred image's edges is often a tenth of a cell off, which the blur
/// model finds (on 9 blurred 2x textures of the `seed` validation pairs given
/// `--cell-size 2`: 3 exact instead of none; see `docs/history.md`).
pub fn line_placement(opts: &GridOptions) -> LinePlacement {
    if opts.offset.is_some() {
        LinePlacement::AsGiven
    } else {
        LinePlacement::Refined
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decoder::deconvolve::test_grids::{noisy_bicubic, shifted_grid};
    use crate::degrade::{degrade, DegradeConfig, Kernel};
    use crate::rng::rng_from_seed;
    use rand::Rng;

    /// A `size` x `size` opaque sprite whose every pixel draws one of `colours`.
    fn random_sprite(size: u32, colours: &[[u8; 3]], seed: u64) -> RgbaImage {
        let mut rng = rng_from_seed(seed);
        RgbaImage::from_fn(size, size, |_, _| {
            let [r, g, b] = colours[rng.random_range(0..colours.len())];
            image::Rgba([r, g, b, 255])
        })
    }

    /// A 12x12 sprite of random colours upscaled by bicubic `scale` with blur, decoded
    /// through [`finish`] on a grid whose interior lines are 0.15 px off the drawn ones:
    /// small cells go through the palette stage, which moves the lines back (the result
    /// reports them), while cells of [`PALETTE_STAGE_MAX_CELL`] or more keep them; both
    /// report the blur model that was fitted.
    #[test]
    fn the_palette_stage_runs_for_small_cells_only() {
        let clean = random_sprite(12, &[[40, 60, 150], [200, 120, 60], [90, 170, 100], [230, 230, 230]], 3);
        for (scale, moves) in [(3.0f32, true), (PALETTE_STAGE_MAX_CELL + 1.0, false)] {
            let cfg = DegradeConfig {
                scale: [scale, scale],
                kernels: vec![Kernel::Bicubic],
                blur_probability: 1.0,
                blur_sigma: [0.7, 0.7],
                ..DegradeConfig::default()
            };
            let degraded = degrade(&clean, &cfg, 3);
            let grid = shifted_grid(&degraded.params.grid.to_grid(), 0.15, 0.15);
            let mut cells = reduce_cells(&degraded.image, &grid);
            let fit = deconvolve::refine(&degraded.image, &grid, &mut cells, LinePlacement::Refined);
            assert!(fit.is_some(), "scale {scale}: a bicubic image gets a blur model");
            let restored = finish(&cells, &SnapOptions::default(), grid.clone(), fit);
            assert!(restored.blur.is_some(), "scale {scale}: the blur model is reported");
            assert_eq!(restored.grid.x_lines != grid.x_lines, moves, "scale {scale}: lines {:?}", restored.grid.x_lines);
        }
    }

    /// A sprite with a shadow drawn at alpha 127, upscaled 3x by bicubic with blur and
    /// noise: by default the shadow keeps its level (to the eval's tolerance of 8) and
    /// its black, while binary alpha drops it.
    #[test]
    fn a_translucent_shadow_keeps_its_level_unless_alpha_is_binary() {
        let shadow = |x: u32, y: u32| (2..8).contains(&x) && (9..12).contains(&y);
        let clean = RgbaImage::from_fn(12, 12, |x, y| match (x, y) {
            _ if shadow(x, y) => image::Rgba([0, 0, 0, 127]),
            (2..=9, 1..=7) => image::Rgba(if (x + y) % 3 == 0 { [220, 180, 40, 255] } else { [60, 90, 170, 255] }),
            _ => image::Rgba([0, 0, 0, 0]),
        });
        let degraded = degrade(&clean, &noisy_bicubic(3.0, 0.5), 5);
        let grid = degraded.params.grid.to_grid();
        let mut cells = reduce_cells(&degraded.image, &grid);
        let fit = deconvolve::refine(&degraded.image, &grid, &mut cells, LinePlacement::Refined);
        let restore_with = |alpha| {
            let opts = SnapOptions { decode: DecodeOptions { alpha, ..DecodeOptions::default() }, ..SnapOptions::default() };
            finish(&cells, &opts, grid.clone(), fit.clone()).image
        };
        let levels = restore_with(crate::decoder::AlphaMode::Levels { threshold: 128 });
        let binary = restore_with(crate::decoder::AlphaMode::Binary { threshold: 128 });
        for (x, y, p) in levels.enumerate_pixels() {
            if shadow(x, y) {
                assert!(p[3].abs_diff(127) <= 8 && p[0].max(p[1]).max(p[2]) <= 8, "({x}, {y}): {p:?}");
            } else {
                assert!(p[3] == 0 || p[3] == 255, "({x}, {y}): {p:?}");
            }
        }
        assert!(binary.pixels().all(|p| p[3] == 0 || p[3] == 255));
        assert!(binary.enumerate_pixels().filter(|(x, y, _)| shadow(*x, *y)).all(|(_, _, p)| p[3] == 0));
    }

    /// A highlight of one cell, 10 levels above the shade around it, upscaled 3x by
    /// bicubic with a strong blur (σ 0.9) and noise: merging it into that shade costs less
    /// in all than a colour is worth, but far more per cell than the shades noise makes,
    /// so it keeps its own colour and every pixel comes out within the eval's tolerance
    /// (without the cost per cell, 3 of these 4 seeds lost it).
    #[test]
    fn a_one_cell_highlight_keeps_its_shade() {
        let base: [[u8; 3]; 3] = [[120, 60, 40], [60, 110, 150], [30, 30, 40]];
        let clean = RgbaImage::from_fn(16, 16, |x, y| {
            let [r, g, b] = match (x, y) {
                (7, 7) => [130, 70, 50],
                _ if x == 0 || y == 0 || x == 15 || y == 15 => base[2],
                _ => base[((x / 4 + y / 5) % 2) as usize],
            };
            image::Rgba([r, g, b, 255])
        });
        assert_eq!(clean.get_pixel(6, 7).0, [120, 60, 40, 255], "the highlight sits in the first shade");
        for seed in 0..4 {
            let degraded = degrade(&clean, &noisy_bicubic(3.0, 0.9), seed);
            let grid = degraded.params.grid.to_grid();
            let mut cells = reduce_cells(&degraded.image, &grid);
            let fit = deconvolve::refine(&degraded.image, &grid, &mut cells, LinePlacement::Refined);
            let restored = finish(&cells, &SnapOptions::default(), grid, fit).image;
            for (x, y, p) in restored.enumerate_pixels() {
                let want = clean.get_pixel(x, y);
                assert!(p.0.iter().zip(want.0).all(|(a, b)| a.abs_diff(b) <= 8), "seed {seed} ({x}, {y}): {p:?}, drawn {want:?}");
            }
        }
    }

    /// A learned model's cells compete with the decoder's own fit: a prediction that
    /// explains the image badly (every cell one grey, from which the palette stage
    /// recovers only the few colours it splits off single cells) loses to the fit,
    /// whichever comes first, and the winner is what [`finish`] makes of it.
    #[test]
    fn the_cells_that_explain_the_image_best_win() {
        let colours: [[u8; 3]; 5] = [[30, 30, 40], [200, 60, 50], [90, 170, 100], [240, 220, 120], [70, 90, 200]];
        let clean = random_sprite(12, &colours, 7);
        let degraded = degrade(&clean, &noisy_bicubic(3.0, 0.6), 7);
        let grid = degraded.params.grid.to_grid();
        let mut fitted = reduce_cells(&degraded.image, &grid);
        let fit = deconvolve::refine(&degraded.image, &grid, &mut fitted, LinePlacement::Refined).expect("a bicubic model");
        let mut grey = fitted.clone();
        grey.colour.iter_mut().for_each(|c| *c = crate::colour::srgb8_to_oklab([128, 128, 128]));
        let opts = SnapOptions::default();
        let own = finish(&fitted, &opts, grid.clone(), Some(fit.clone()));
        assert_eq!(own.palette.len(), colours.len(), "the fit alone finds the five colours");
        for (first, other) in [(&grey, &fitted), (&fitted, &grey)] {
            let best = finish_best(first, &[other], &opts, grid.clone(), Some(fit.clone()));
            assert_eq!(best.image, own.image);
        }
        // A candidate repeated is finished once, to the same choice.
        let repeated = finish_best(&grey, &[&grey, &fitted], &opts, grid.clone(), Some(fit.clone()));
        assert_eq!(repeated.image, own.image);
        // A single candidate is finished as it is, however badly it explains the image.
        let alone = finish_best(&grey, &[], &opts, grid.clone(), Some(fit.clone()));
        assert_eq!(alone.image, finish(&grey, &opts, grid, Some(fit)).image);
        assert!(alone.palette.len() < colours.len(), "{:?}", alone.palette);
    }

    /// A 16x16 sprite upscaled 2x by bicubic with blur and noise, its first cells cut by
    /// a tenth, restored with the cell size given: the blur model moves the lines to the
    /// drawn ones and every pixel comes out right (to the eval's 8 levels), while with the
    /// phase given at 0 the lines stay there and some pixels do not.
    #[test]
    fn a_given_cell_size_leaves_the_phase_to_the_blur_model() {
        let clean = random_sprite(16, &[[40, 60, 150], [200, 120, 60], [90, 170, 100], [230, 230, 230]], 5);
        let cfg = DegradeConfig { phase_probability: 1.0, phase: [0.1, 0.1], ..noisy_bicubic(2.0, 0.6) };
        let degraded = degrade(&clean, &cfg, 2);
        let drawn = degraded.params.grid.to_grid();
        let wrong_pixels = |grid: GridOptions| {
            let restored = restore(&degraded.image, &SnapOptions { grid, ..SnapOptions::default() }).expect("a grid");
            assert_eq!(restored.image.dimensions(), clean.dimensions());
            let wrong = restored.image.pixels().zip(clean.pixels()).filter(|(got, want)| got.0.iter().zip(want.0).any(|(a, b)| a.abs_diff(b) > 8)).count();
            (wrong, restored.grid)
        };
        let (wrong, grid) = wrong_pixels(GridOptions { cell_size: Some((2.0, 2.0)), ..GridOptions::default() });
        assert_eq!(wrong, 0);
        let interior = |lines: &[f32]| lines[1..lines.len() - 1].to_vec();
        for (got, want) in [(&grid.x_lines, &drawn.x_lines), (&grid.y_lines, &drawn.y_lines)] {
            assert_eq!(got.len(), want.len());
            for (got, want) in interior(got).into_iter().zip(interior(want)) {
                assert!((got - want).abs() <= 0.05, "line at {got}, drawn at {want}");
            }
        }
        let (wrong, grid) = wrong_pixels(GridOptions { cell_size: Some((2.0, 2.0)), offset: Some((0.0, 0.0)), ..GridOptions::default() });
        assert!(wrong > 0, "the lines as given already decode right: the test shows nothing");
        assert!(interior(&grid.x_lines).iter().chain(&interior(&grid.y_lines)).all(|l| l.fract() == 0.0), "lines kept where given: {grid:?}");
    }
}

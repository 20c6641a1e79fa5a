//! Training pairs made on the fly: a clean sprite, degraded by a preset, rectified with the
//! same grid analysis that inference uses, and cut into aligned patches of art pixels.
//!
//! Every sample is a pure function of `(seed, step, slot)`, so a resumed run sees exactly
//! the batches it would have seen without the interruption, and no random-generator state
//! needs saving.

use crate::decoder::reduce_cells;
use crate::degrade::{degrade, Preset};
use crate::grid::{analyse, GridOptions};
use crate::io::load_rgba;
use crate::pixel_restorer::{cells_image, fit_cells};
use crate::pairs::list_images;
use crate::rectify::rectify;
use crate::rng::{derive_seed, splitmix64};
use crate::split::{in_split, Split};
use anyhow::{bail, Context, Result};
use image::RgbaImage;
use std::path::{Path, PathBuf};

/// The category of a sprite from its file name: `dcss_mon_orc.png` -> `mon` (the second
/// `_`-separated word of the collection's names; the first word when there is one word).
pub fn category_of(path: &Path) -> String {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let mut words = stem.split('_');
    let first = words.next().unwrap_or_default();
    words.next().unwrap_or(first).to_string()
}

/// Which sprites of a folder to use.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct SpriteSelection {
    /// The part of the deterministic split; training always uses `train`.
    pub split: Option<Split>,
    /// Only these categories (all when empty).
    #[serde(default)]
    pub only_categories: Vec<String>,
    /// Leave these categories out (e.g. a style held out for fine-tuning).
    #[serde(default)]
    pub exclude_categories: Vec<String>,
}

impl SpriteSelection {
    fn keeps(&self, path: &Path) -> bool {
        let category = category_of(path);
        in_split(path, self.split.unwrap_or(Split::Train))
            && (self.only_categories.is_empty() || self.only_categories.contains(&category))
            && !self.exclude_categories.contains(&category)
    }
}

/// The sprites of `dir` that `selection` keeps, in name order.
pub fn select_sprites(dir: &Path, selection: &SpriteSelection) -> Result<Vec<PathBuf>> {
    let paths: Vec<PathBuf> = list_images(dir)?.into_iter().filter(|p| selection.keeps(p)).collect();
    if paths.is_empty() {
        bail!("no sprites in {} match the selection {selection:?}", dir.display());
    }
    Ok(paths)
}

/// What one training sample looks like.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct PatchSpec {
    /// Art pixels per side of a patch.
    pub cells: usize,
    /// Rectified pixels per art pixel per side: the rectified cells make `4 * factor^2`
    /// input channels.
    pub factor: u32,
    /// Four more input channels: the cells as the snap decoder fits them (see
    /// [`crate::pixel_restorer::PixelRestorerConfig::fitted_cells`]).
    #[serde(default)]
    pub fitted_cells: bool,
}

impl PatchSpec {
    /// Channels of a patch's input.
    pub fn input_channels(&self) -> usize {
        crate::pixel_restorer::input_channels(self.factor, self.fitted_cells)
    }
}

/// One aligned (degraded, clean) patch: `input` is (C, cells, cells), the pixel-unshuffled
/// rectified cells and optionally the fitted cells ([`PatchSpec::input_channels`]),
/// `target` (4, cells, cells), both channel-major f32 in [-1, 1].
#[derive(Clone, Debug)]
pub struct Patch {
    pub input: Vec<f32>,
    pub target: Vec<f32>,
}

/// Why a drawn sample was not usable.
#[derive(Debug, PartialEq, Eq)]
pub enum Skip {
    /// The grid analysis found no grid, or a grid with the wrong number of cells: at
    /// inference this image would be restored at the wrong size whatever the model does.
    WrongGrid,
}

/// Draws pairs from a set of clean sprites.
pub struct PairSource {
    sprites: Vec<RgbaImage>,
    presets: Vec<Preset>,
    grid: GridOptions,
    spec: PatchSpec,
    seed: u64,
}

impl PairSource {
    /// Loads the sprites (all into memory: the collection is ~10 MB).
    pub fn load(paths: &[PathBuf], presets: Vec<Preset>, spec: PatchSpec, seed: u64) -> Result<Self> {
        if presets.is_empty() {
            bail!("no degradation presets given");
        }
        let sprites = paths
            .iter()
            .map(|p| load_rgba(p).with_context(|| format!("loading training sprite {}", p.display())))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::new(sprites, presets, spec, seed))
    }

    pub fn new(sprites: Vec<RgbaImage>, presets: Vec<Preset>, spec: PatchSpec, seed: u64) -> Self {
        Self { sprites, presets, grid: GridOptions::default(), spec, seed }
    }

    pub fn spec(&self) -> &PatchSpec {
        &self.spec
    }

    /// Sample `slot` of step `step`: a pure function of the source's seed, `step` and `slot`.
    pub fn sample(&self, step: u64, slot: u64) -> Result<Patch, Skip> {
        let seed = derive_seed(self.seed, &[step, slot]);
        let sprite = &self.sprites[(splitmix64(seed) % self.sprites.len() as u64) as usize];
        let preset = self.presets[(splitmix64(seed ^ 1) % self.presets.len() as u64) as usize];
        let pair = degrade(sprite, &preset.config(), seed);
        let grid = analyse(&pair.image, &self.grid).map_err(|_| Skip::WrongGrid)?;
        let (cols, rows) = (pair.target.width(), pair.target.height());
        if grid.cols() != cols || grid.rows() != rows {
            return Err(Skip::WrongGrid);
        }
        let f = self.spec.factor;
        let rectified = rectify(&pair.image, &grid, f);
        let fitted = self.spec.fitted_cells.then(|| cells_image(&fit_cells(&pair.image, &grid, &reduce_cells(&pair.image, &grid), crate::snap::line_placement(&self.grid)).0));
        let n = self.spec.cells as u32;
        // A patch at a random cell offset; sprites smaller than a patch are padded by
        // repeating their last row and column (the loss sees those too: they are real
        // pixels of the sprite).
        let pick = |extent: u32, salt: u64| if extent > n { (splitmix64(seed ^ salt) % u64::from(extent - n + 1)) as u32 } else { 0 };
        let (ox, oy) = (pick(cols, 2), pick(rows, 3));
        let clamp_cell = |c: u32, extent: u32| (c).min(extent - 1);
        let cells = self.spec.cells;
        let ff = (f * f) as usize;
        let mut input = vec![0.0f32; self.spec.input_channels() * cells * cells];
        let mut target = vec![0.0f32; 4 * cells * cells];
        let unit = |v: u8| f32::from(v) / 127.5 - 1.0;
        for cy in 0..n {
            for cx in 0..n {
                let (sx, sy) = (clamp_cell(ox + cx, cols), clamp_cell(oy + cy, rows));
                let pos = (cy * n + cx) as usize;
                let t = pair.target.get_pixel(sx, sy).0;
                for c in 0..4 {
                    target[c * cells * cells + pos] = unit(t[c]);
                }
                for i in 0..f {
                    for j in 0..f {
                        let p = rectified.get_pixel(sx * f + j, sy * f + i).0;
                        let sub = (i * f + j) as usize;
                        for c in 0..4 {
                            input[(c * ff + sub) * cells * cells + pos] = unit(p[c]);
                        }
                    }
                }
                if let Some(fitted) = &fitted {
                    let p = fitted.get_pixel(sx, sy).0;
                    for c in 0..4 {
                        input[(4 * ff + c) * cells * cells + pos] = unit(p[c]);
                    }
                }
            }
        }
        Ok(Patch { input, target })
    }

    /// A batch of `batch` patches for `step`, drawn in parallel; slots whose sample is
    /// skipped are redrawn from further slots, so the batch is always full. Returns the
    /// patches and how many draws were skipped.
    pub fn batch(&self, step: u64, batch: usize) -> (Vec<Patch>, usize) {
        use rayon::prelude::*;
        let mut patches = Vec::with_capacity(batch);
        let mut skipped = 0;
        let mut next_slot = 0u64;
        while patches.len() < batch {
            let want = batch - patches.len();
            // Draw a few extra: about one in ten samples of the hard presets is skipped.
            let slots: Vec<u64> = (next_slot..next_slot + want as u64 + 2).collect();
            next_slot += slots.len() as u64;
            let drawn: Vec<Result<Patch, Skip>> = slots.par_iter().map(|&s| self.sample(step, s)).collect();
            for d in drawn {
                match d {
                    Ok(p) if patches.len() < batch => patches.push(p),
                    Ok(_) => {}
                    Err(_) => skipped += 1,
                }
            }
        }
        (patches, skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgba;

    fn sprite(seed: u64) -> RgbaImage {
        RgbaImage::from_fn(12, 12, |x, y| {
            let v = splitmix64(seed ^ u64::from(x / 2 * 7 + y / 3)) as u8;
            Rgba([v, v / 2, 255 - v, if x < 1 { 0 } else { 255 }])
        })
    }

    #[test]
    fn categories_come_from_the_collection_names() {
        assert_eq!(category_of(Path::new("a/dcss_mon_orc_warrior.png")), "mon");
        assert_eq!(category_of(Path::new("dcss_gui_x.png")), "gui");
        assert_eq!(category_of(Path::new("single.png")), "single");
    }

    #[test]
    fn clean_samples_are_aligned_and_deterministic() {
        let spec = PatchSpec { cells: 8, factor: 2, fitted_cells: false };
        let source = PairSource::new(vec![sprite(1), sprite(2)], vec![Preset::Clean], spec, 7);
        let a = source.sample(3, 0).expect("clean nearest upscales have a grid");
        let b = source.sample(3, 0).unwrap();
        assert_eq!(a.input, b.input);
        assert_eq!(a.target, b.target);
        assert_eq!(a.input.len(), 4 * 4 * 64);
        assert_eq!(a.target.len(), 4 * 64);
        // A clean nearest upscale: every sub-pixel of a cell equals the clean pixel.
        for c in 0..4 {
            for sub in 0..4 {
                for pos in 0..64 {
                    let got = a.input[(c * 4 + sub) * 64 + pos];
                    let want = a.target[c * 64 + pos];
                    assert!((got - want).abs() < 1e-6, "channel {c} sub {sub} pos {pos}: {got} vs {want}");
                }
            }
        }
        let other = source.sample(4, 0).unwrap();
        assert_ne!(a.target, other.target, "another step draws another sample");
    }

    #[test]
    fn fitted_cells_follow_the_rectified_ones() {
        let plain = PairSource::new(vec![sprite(1)], vec![Preset::Clean], PatchSpec { cells: 8, factor: 2, fitted_cells: false }, 7);
        let spec = PatchSpec { cells: 8, factor: 2, fitted_cells: true };
        assert_eq!(spec.input_channels(), 20);
        let fitted = PairSource::new(vec![sprite(1)], vec![Preset::Clean], spec, 7);
        let (a, b) = (plain.sample(3, 0).unwrap(), fitted.sample(3, 0).unwrap());
        assert_eq!(b.input.len(), 20 * 64);
        assert_eq!(&b.input[..16 * 64], &a.input[..], "the rectified channels come first, unchanged");
        // A clean nearest upscale fits to the clean sprite itself: same alpha, and the
        // same colour where opaque (within the 8-bit rounding of the OKLab round trip).
        let plane = |v: &[f32], c: usize| v[c * 64..(c + 1) * 64].to_vec();
        let alpha = plane(&b.input, 19);
        assert_eq!(alpha, plane(&b.target, 3));
        for c in 0..3 {
            for (pos, (got, want)) in plane(&b.input, 16 + c).iter().zip(plane(&b.target, c)).enumerate() {
                if alpha[pos] > 0.0 {
                    assert!((got - want).abs() <= 1.5 / 127.5, "channel {c} pos {pos}: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn batches_are_full_and_reproducible() {
        let spec = PatchSpec { cells: 8, factor: 2, fitted_cells: false };
        let source = PairSource::new(vec![sprite(1), sprite(2), sprite(3)], vec![Preset::Clean, Preset::Seed], spec, 9);
        let (a, _) = source.batch(5, 6);
        let (b, _) = source.batch(5, 6);
        assert_eq!(a.len(), 6);
        for (pa, pb) in a.iter().zip(&b) {
            assert_eq!(pa.target, pb.target);
            assert_eq!(pa.input, pb.input);
        }
    }
}

//! The restorers that `spritedx eval` and `spritedx restore` can run, behind one trait.

use crate::decoder::{reduce_cells, set_to_channel_medians};
use crate::degrade::GridTruth;
use crate::palette::Palette;
use crate::pixel_restorer::{default_model_dir, LoadedPixelRestorer, ModelKind};
use crate::snap::{restore, SnapOptions};
use anyhow::{bail, Result};
use image::RgbaImage;

/// What a restorer may know besides the image. Real inputs carry nothing; pair sets carry
/// the true grid and the clean sprite, which only deliberately-cheating baselines and
/// diagnostics use.
#[derive(Clone, Copy, Debug, Default)]
pub struct RestoreContext<'a> {
    /// The true grid of a synthetic sample.
    pub known_grid: Option<&'a GridTruth>,
    /// The clean sprite the sample was made from.
    pub target: Option<&'a RgbaImage>,
}

/// A restorer: degraded screen image in, sprite at true resolution out.
pub trait Restorer: Send + Sync {
    /// The name `--model` selects it by.
    fn name(&self) -> &str;
    fn restore(&self, image: &RgbaImage, ctx: &RestoreContext) -> Result<RgbaImage>;
}

/// Names accepted by [`restorer_by_name`]; `model:DIR` also loads the pixel restorer in
/// folder `DIR` (a training run's `model/`).
pub const RESTORER_NAMES: &[&str] = &["snap", "fast", "diffusion", "nearest-downscale", "oracle-clusters"];

/// Builds a restorer from its `--model` name: `fast` and `diffusion` load the shipped
/// models ([`default_model_dir`]); `adapters` (tensors of fine-tuning runs, see
/// [`LoadedPixelRestorer::load`]) apply to the learned ones.
pub fn restorer_by_name(name: &str, adapters: &[std::path::PathBuf]) -> Result<Box<dyn Restorer>> {
    let learned = |label: &str, dir: &std::path::Path| -> Result<Box<dyn Restorer>> {
        Ok(Box::new(Learned { name: label.to_string(), model: LoadedPixelRestorer::load(dir, adapters)?, options: SnapOptions::default() }))
    };
    match name {
        "snap" => Ok(Box::new(Snap(SnapOptions::default()))),
        "nearest-downscale" => Ok(Box::new(NearestDownscale)),
        "oracle-clusters" => Ok(Box::new(OracleClusters)),
        "fast" => learned("fast", &default_model_dir(ModelKind::Fast)),
        "diffusion" => learned("diffusion", &default_model_dir(ModelKind::Diffusion)),
        other => match other.strip_prefix("model:") {
            Some(dir) => learned(other, std::path::Path::new(dir)),
            None => bail!("unknown model {other:?}; known models: {}, or model:DIR", RESTORER_NAMES.join(", ")),
        },
    }
}

/// A learned pixel restorer (fast or diffusion) under a name.
pub struct Learned {
    pub name: String,
    pub model: LoadedPixelRestorer,
    pub options: SnapOptions,
}

impl Restorer for Learned {
    fn name(&self) -> &str {
        &self.name
    }

    fn restore(&self, image: &RgbaImage, _ctx: &RestoreContext) -> Result<RgbaImage> {
        Ok(self.model.restore(image, &self.options)?.image)
    }
}

/// A deliberately naive baseline for testing the harness: it takes the true grid's mean
/// scale and offset from the pair set and samples the screen pixel at each cell's centre.
/// It is exact on clean nearest upscales and fails where cells are non-uniform, blurred or
/// noisy. It refuses inputs without a known grid.
pub struct NearestDownscale;

impl Restorer for NearestDownscale {
    fn name(&self) -> &str {
        "nearest-downscale"
    }

    fn restore(&self, image: &RgbaImage, ctx: &RestoreContext) -> Result<RgbaImage> {
        let Some(grid) = ctx.known_grid else {
            bail!("nearest-downscale needs the true grid of a pair set; it cannot restore real images");
        };
        let centre = |offset: f32, scale: f32, i: u32, len: u32| -> u32 {
            ((offset + (i as f32 + 0.5) * scale).floor().max(0.0) as u32).min(len - 1)
        };
        Ok(RgbaImage::from_fn(grid.cols, grid.rows, |x, y| {
            let sx = centre(grid.offset_x, grid.scale_x, x, image.width());
            let sy = centre(grid.offset_y, grid.scale_y, y, image.height());
            *image.get_pixel(sx, sy)
        }))
    }
}

/// A diagnostic, not a restorer: how exact a sprite's colours can be when they are taken
/// from the image's cells, as snap takes them where it undoes no blur (cells of 6 px or
/// more, nearest-neighbour upscales such as the `ai` preset's), given everything else.
/// It reads the cells on the true grid ([`reduce_cells`], the decoder's robust colour of
/// each cell's interior), groups the opaque cells by their colour in the clean sprite (the
/// perfect clustering no restorer has), and gives each group the per-channel median of its
/// cells, as the decoder's palette does; alpha is the clean sprite's. Where per-cell colour
/// drift moves a rare colour's few cells, their median misses it, and no palette taken from
/// the image can do better. It refuses inputs without a known grid and clean sprite.
pub struct OracleClusters;

impl Restorer for OracleClusters {
    fn name(&self) -> &str {
        "oracle-clusters"
    }

    fn restore(&self, image: &RgbaImage, ctx: &RestoreContext) -> Result<RgbaImage> {
        let (Some(truth), Some(target)) = (ctx.known_grid, ctx.target) else {
            bail!("oracle-clusters needs the true grid and clean sprite of a pair set; it cannot restore real images");
        };
        if target.dimensions() != (truth.cols, truth.rows) {
            bail!("the clean sprite is {:?}, the true grid {}x{} cells", target.dimensions(), truth.cols, truth.rows);
        }
        if image.dimensions() != (truth.width, truth.height) {
            bail!("the image is {:?}, the true grid's {}x{} pixels", image.dimensions(), truth.width, truth.height);
        }
        let cells = reduce_cells(image, &truth.to_grid());
        let mut palette = Palette { colours: Vec::new() };
        let (mut samples, mut assignment) = (Vec::new(), Vec::new());
        let mut group_of = vec![None; target.pixels().len()];
        for (i, p) in target.pixels().enumerate() {
            if p[3] == 0 {
                continue;
            }
            let key = [p[0], p[1], p[2]];
            let group = palette.colours.iter().position(|&c| c == key).unwrap_or_else(|| {
                palette.colours.push(key);
                palette.colours.len() - 1
            });
            group_of[i] = Some(group);
            samples.push(cells.colour[i]);
            assignment.push(group);
        }
        set_to_channel_medians(&mut palette, &samples, &assignment);
        Ok(RgbaImage::from_fn(truth.cols, truth.rows, |x, y| {
            let i = (y * truth.cols + x) as usize;
            let alpha = target.get_pixel(x, y)[3];
            match group_of[i] {
                Some(group) => {
                    let [r, g, b] = palette.colours[group];
                    image::Rgba([r, g, b, alpha])
                }
                None => image::Rgba([0, 0, 0, 0]),
            }
        }))
    }
}

/// The snap restorer (grid analysis + decoder) with fixed options; it ignores the true grid.
pub struct Snap(pub SnapOptions);

impl Restorer for Snap {
    fn name(&self) -> &str {
        "snap"
    }

    fn restore(&self, image: &RgbaImage, _ctx: &RestoreContext) -> Result<RgbaImage> {
        Ok(restore(image, &self.0)?.image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::degrade::{degrade, DegradeConfig, Preset};
    use crate::metrics::{score, MetricOptions};

    /// A sprite of four colours in 2x3 blocks with a transparent border, and single
    /// pixels of a fifth colour.
    fn sprite() -> RgbaImage {
        RgbaImage::from_fn(12, 10, |x, y| match (x, y) {
            (0, _) | (_, 0) => image::Rgba([0, 0, 0, 0]),
            (5, 5) | (8, 2) => image::Rgba([250, 250, 250, 255]),
            _ => [image::Rgba([200, 40, 40, 255]), image::Rgba([40, 200, 40, 255]), image::Rgba([40, 40, 200, 255]), image::Rgba([20, 20, 20, 255])][((x / 2 + y / 3) % 4) as usize],
        })
    }

    /// On clean nearest upscales every cell's interior shows its colour: the oracle is
    /// exact, and it refuses images without a pair set's truth.
    #[test]
    fn oracle_clusters_are_exact_on_clean_upscales_and_need_the_truth() {
        let clean = sprite();
        for seed in 0..4 {
            let sample = degrade(&clean, &Preset::Clean.config(), seed);
            let ctx = RestoreContext { known_grid: Some(&sample.params.grid), target: Some(&sample.target) };
            let restored = OracleClusters.restore(&sample.image, &ctx).expect("the truth is given");
            assert!(score(&restored, &sample.target, &MetricOptions::default()).exact, "seed {seed}");
            assert!(OracleClusters.restore(&sample.image, &RestoreContext { target: None, ..ctx }).is_err());
            assert!(OracleClusters.restore(&sample.image, &RestoreContext::default()).is_err());
        }
    }

    /// Drift moves every cell's colour (σ 0.01 in OKLab, the `ai` preset's middle, moves
    /// the red of a saturated green by about 27 levels): the oracle gives each clean
    /// colour one colour, the median of its cells, which is right for more pixels than
    /// the drifted cells themselves (`nearest-downscale`, given the same grid).
    #[test]
    fn oracle_clusters_give_each_colour_the_median_of_its_drifted_cells() {
        let clean = sprite();
        let cfg = DegradeConfig { drift_probability: 1.0, drift_sigma: [0.01, 0.01], ..Preset::Clean.config() };
        for seed in 0..4 {
            let sample = degrade(&clean, &cfg, seed);
            let ctx = RestoreContext { known_grid: Some(&sample.params.grid), target: Some(&sample.target) };
            let restored = OracleClusters.restore(&sample.image, &ctx).expect("the truth is given");
            for colour in [[200u8, 40, 40], [40, 200, 40], [40, 40, 200], [20, 20, 20], [250, 250, 250]] {
                let got: Vec<[u8; 3]> = sample.target.pixels().zip(restored.pixels()).filter(|(t, _)| t[3] == 255 && [t[0], t[1], t[2]] == colour).map(|(_, p)| [p[0], p[1], p[2]]).collect();
                assert!(!got.is_empty() && got.iter().all(|&c| c == got[0]), "seed {seed}, {colour:?}: {got:?}");
            }
            let cells = NearestDownscale.restore(&sample.image, &ctx).expect("the grid is given");
            let accuracy = |img: &RgbaImage| score(img, &sample.target, &MetricOptions::default()).pixel_accuracy;
            assert!(accuracy(&restored) > accuracy(&cells), "seed {seed}: oracle {} <= cells {}", accuracy(&restored), accuracy(&cells));
        }
    }
}

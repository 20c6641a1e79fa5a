//! The restorers that `spritedx eval` and `spritedx restore` can run, behind one trait.

use crate::degrade::GridTruth;
use crate::pixel_restorer::{default_model_dir, LoadedPixelRestorer, ModelKind};
use crate::snap::{restore, SnapOptions};
use anyhow::{bail, Result};
use image::RgbaImage;

/// What a restorer may know besides the image. Real inputs carry nothing; pair sets carry
/// the true grid, which only deliberately-cheating baselines use.
#[derive(Clone, Copy, Debug, Default)]
pub struct RestoreContext<'a> {
    /// The true grid of a synthetic sample.
    pub known_grid: Option<&'a GridTruth>,
}

/// A restorer: degraded screen image in, sprite at true resolution out.
pub trait Restorer: Send + Sync {
    /// The name `--model` selects it by.
    fn name(&self) -> &str;
    fn restore(&self, image: &RgbaImage, ctx: &RestoreContext) -> Result<RgbaImage>;
}

/// Names accepted by [`restorer_by_name`]; `model:DIR` also loads the pixel restorer in
/// folder `DIR` (a training run's `model/`).
pub const RESTORER_NAMES: &[&str] = &["snap", "fast", "diffusion", "nearest-downscale"];

/// Builds a restorer from its `--model` name: `fast` and `diffusion` load the shipped
/// models ([`default_model_dir`]); `adapter` (tensors of a fine-tuning run) applies to the
/// learned ones.
pub fn restorer_by_name(name: &str, adapter: Option<&std::path::Path>) -> Result<Box<dyn Restorer>> {
    let learned = |label: &str, dir: &std::path::Path| -> Result<Box<dyn Restorer>> {
        Ok(Box::new(Learned { name: label.to_string(), model: LoadedPixelRestorer::load(dir, adapter)?, options: SnapOptions::default() }))
    };
    match name {
        "snap" => Ok(Box::new(Snap(SnapOptions::default()))),
        "nearest-downscale" => Ok(Box::new(NearestDownscale)),
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

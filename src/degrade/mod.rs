//! The degradation pipeline: makes (degraded, clean) pairs from clean sprites.
//!
//! A clean sprite of `cols` x `rows` art pixels is rendered onto a screen grid of cells a
//! few to a few dozen screen pixels wide and damaged the way image generators and lossy
//! pipelines damage pixel art. [`sample_params`] draws everything random from a
//! [`DegradeConfig`] and a seed into a [`DegradeParams`]; [`apply`] is a pure function of
//! (clean sprite, params); [`degrade`] does both. The params (compact JSON, seeds instead of
//! noise arrays) hold the exact ground-truth grid, [`GridTruth`], that grid detectors are
//! scored against.
//!
//! # Pipeline
//!
//! The steps run in this order, each switched on by its own probability in the config (a
//! preset is just a config). Colours are sRGB-encoded f32 in [0, 1] throughout, like the
//! resizers and editors that make such images; the image is 8-bit only for JPEG.
//!
//! 1. **Per-cell colour drift** (on the art): every visible art pixel gets its own OKLab
//!    offset, N(0, `drift_sigma`) per component, plus optionally a slow linear **gradient**
//!    across the sprite (mostly lightness, some tint), clipped to the sRGB gamut. Doing it
//!    on the art is the same as drifting each rendered cell.
//! 2. **Flattening** onto a solid background (from `flatten_colours` or a random colour):
//!    the art is composited over it and becomes opaque; the **target is flattened onto the
//!    same colour** (see [`flatten_onto`]). Doing it before rendering is the same as after
//!    for every kernel (premultiplied resampling is linear and its weights sum to 1), and
//!    keeps drift off the background, as generators paint it flat.
//! 3. **Geometry and kernel**. Mean cell size `scale_x` from the `scale` range (uniform,
//!    log-uniform or whole numbers), `scale_y` equal to it or, with aspect jitter, up to
//!    ±`aspect_jitter` relative off. With **cell jitter** each cell's width is drawn within
//!    ±j of the mean (then rescaled so the mean is exact) and the boundaries accumulate into
//!    `x_lines`/`y_lines`. The **phase** cuts a fraction (< 0.5) of the first cell off, so the
//!    image does not start on a cell edge (its fractional part is the sub-pixel shift), and
//!    likewise the last; every border cell keeps at least half its width, so the grid size
//!    is well defined. **Wobble** bends the lines of each axis: a vertical line is displaced
//!    by `amplitude * sin(2π (y / period + x / cross_period) + phase)` (see [`Wobble`];
//!    amplitude at most `wobble_max_cell_share` (≤ 1/4) of the narrowest cell, cross period long enough that lines
//!    never cross); the recorded lines are the unbent ones. Each screen pixel centre is
//!    unbent, mapped piecewise linearly through the boundaries to art coordinates, and the
//!    **kernel** (nearest, bilinear, Keys/Catmull-Rom bicubic, lanczos3; see [`Kernel`]) is
//!    evaluated there in art-pixel units. **Alpha is resampled premultiplied**, so a
//!    transparent pixel's colour never bleeds into a visible one; an output pixel whose alpha
//!    rounds to 0 is exactly transparent and keeps the colour of its nearest art pixel.
//! 4. **Soft cell edges** (part of rendering, nearest kernel only: the interpolating kernels
//!    are soft across the whole cell already): the colour changes across each cell boundary
//!    along a smoothstep `soft_edge` screen pixels wide instead of at once, the generator
//!    look, independent of blur. Capped at 0.8 of the narrowest cell so every cell centre
//!    keeps its own colour.
//! 5. **Gaussian blur**, `blur_sigma` screen pixels, separable, premultiplied.
//! 6. **Gamma and exposure**: `exposure * colour^gamma` on the colour of visible pixels.
//! 7. **Palette diffusion**: the visible colours are reduced to a wrong palette of
//!    `palette_colours` colours that NeuQuant learns from the degraded image, with or without
//!    Floyd-Steinberg dithering. Alpha is kept.
//! 8. **Gaussian noise**, `noise_sigma` in 0-255 units, per colour channel of visible pixels
//!    (never on alpha), from a seed in the params.
//! 9. Rounding to 8 bits, then a **JPEG** round trip at `jpeg_quality`. JPEG has no alpha:
//!    the straight RGB is compressed as is (invisible pixels included) and the alpha channel
//!    is kept exactly as it was.
//!
//! The degraded image is `width` x `height` screen pixels: `width` is the last boundary
//! minus the end cut, floored, but never cutting more than half of the last cell.
//!
//! # Presets
//!
//! | preset  | geometry | colour |
//! |---------|----------|--------|
//! | `clean` | nearest, whole-number scale 2-5 (same on both axes), no phase | nothing else |
//! | `seed`  | bicubic, whole-number scale 2-5; phase (p 0.5) up to 1/8 cell | blur σ 0.2-1.0 px, noise σ 3 |
//! | `hard`  | any kernel, scale 2-8 uniform; aspect jitter (p 0.3) ±15%; cell jitter (p 0.5) 2-15%; phase (p 0.9) 0-0.45 cell; wobble (p 0.3 per axis) 0.3-1.5 px; soft edges (p 0.5 with nearest) 0.5-2 px | drift (p 0.5) σ 0.01-0.03; gradient (p 0.3) 0.02-0.06; flatten (p 0.3); blur (p 0.7) σ 0.3-1.5; gamma (p 0.5) 0.8-1.25; exposure (p 0.5) 0.8-1.2; palette (p 0.4) 8-64 colours, dithered half the time; noise (p 0.8) σ 1-8; JPEG (p 0.6) q 30-90 |
//! | `ai`    | nearest, scale 3-40 log-uniform; aspect jitter (p 0.5) ±8%; cell jitter (p 0.8) 2-12%; phase always, 0-0.45 cell; wobble (p 0.7 per axis) 0.5-2 px but at most 1/10 of a cell, period 0.5-2x the image; soft edges (p 0.9) 0.5-3 px | drift (p 0.9) σ 0.005-0.02; gradient (p 0.3) 0.01-0.04; flatten (p 0.3); blur (p 0.3) σ 0.2-0.7; noise (p 0.8) σ 0.5-3; JPEG (p 0.4) q 70-95; no gamma, exposure or palette (a restorer could not know the true colours then) |
//!
//! Wobble and soft edges are additionally capped by the cell size as described above, so
//! on small cells they are weaker than the ranges say.

mod canvas;
mod colour_ops;
mod config;
mod filters;
mod params;
mod quantize;
mod resample;
#[cfg(test)]
mod tests;

use image::RgbaImage;

pub use colour_ops::flatten_onto;
pub use config::{DegradeConfig, Preset};
pub use params::{
    sample_params, ColourDrift, ColourGradient, DegradeParams, GridTruth, Noise, PaletteDiffusion, Wobble,
    MAX_BLUR_SIGMA, MAX_SCALE, MAX_SIDE,
};
pub use resample::Kernel;
pub(crate) use resample::{taps, Taps};
/// How a resampling step stores its premultiplied sums (the decoder models it).
pub(crate) use canvas::{premultiply, unpremultiply};

/// What can be wrong with a preset name, a config or params read back from a manifest.
#[derive(Debug, thiserror::Error)]
pub enum DegradeError {
    #[error("unknown preset '{0}' (expected one of: clean, seed, hard, ai)")]
    UnknownPreset(String),
    #[error("invalid degradation config: {0}")]
    InvalidConfig(String),
    #[error("invalid degradation params: {0}")]
    InvalidParams(String),
}

/// One training/evaluation pair.
#[derive(Clone, Debug, PartialEq)]
pub struct Degraded {
    /// The degraded image, `params.grid.width` x `params.grid.height`.
    pub image: RgbaImage,
    /// The clean sprite at true resolution (`cols` x `rows`), flattened onto
    /// `params.background` when that is set, otherwise identical to the clean input.
    pub target: RgbaImage,
    pub params: DegradeParams,
}

/// Degrades `clean` as `params` say; pure and deterministic.
///
/// # Panics
/// If the params do not fit the sprite ([`DegradeParams::validate`]); params from
/// [`sample_params`] for this sprite's size always do. Use [`try_apply`] for params read
/// from elsewhere.
pub fn apply(clean: &RgbaImage, params: &DegradeParams) -> Degraded {
    try_apply(clean, params).unwrap_or_else(|e| panic!("degrade::apply: {e}"))
}

/// [`apply`], reporting params that do not fit the sprite instead of panicking.
pub fn try_apply(clean: &RgbaImage, params: &DegradeParams) -> Result<Degraded, DegradeError> {
    params.validate(clean.width(), clean.height())?;
    let target = match params.background {
        Some(background) => flatten_onto(clean, background),
        None => clean.clone(),
    };
    let mut art = canvas::Canvas::from_rgba8(clean);
    colour_ops::drift(&mut art, params.drift.as_ref(), params.gradient.as_ref());
    if let Some(background) = params.background {
        colour_ops::flatten(&mut art, background);
    }
    let mut screen = resample::render(
        &art,
        &params.grid,
        params.kernel,
        params.soft_edge,
        params.wobble_x.as_ref(),
        params.wobble_y.as_ref(),
    );
    if params.blur_sigma > 0.0 {
        filters::gaussian_blur(&mut screen, params.blur_sigma);
    }
    if params.gamma != 1.0 || params.exposure != 1.0 {
        colour_ops::gamma_exposure(&mut screen, params.gamma, params.exposure);
    }
    if let Some(palette) = &params.palette {
        quantize::palette_diffusion(&mut screen, palette);
    }
    if let Some(noise) = &params.noise {
        filters::add_noise(&mut screen, noise);
    }
    let mut image = screen.to_rgba8();
    if let Some(quality) = params.jpeg_quality {
        quantize::jpeg_round_trip(&mut image, quality);
    }
    Ok(Degraded {
        image,
        target,
        params: params.clone(),
    })
}

/// `apply(clean, &sample_params(clean.width(), clean.height(), cfg, seed))`.
///
/// # Panics
/// If the sprite is wider or taller than [`MAX_SIDE`].
pub fn degrade(clean: &RgbaImage, cfg: &DegradeConfig, seed: u64) -> Degraded {
    apply(clean, &sample_params(clean.width(), clean.height(), cfg, seed))
}

//! SpriteDX Restore: turns pseudo pixel art into true pixel art.
//!
//! Image generators produce "pseudo pixel art": each art pixel is an irregular block of
//! screen pixels with soft edges, noise, colour drift and compression artefacts. This
//! library maps such images back to one pixel per art pixel with a small clean palette.
//!
//! Modules, one job each:
//! - [`alloc`]: allocator tuning for training and batch restoring.
//! - [`threads`]: thread-pool tuning (candle's pool beside rayon's) for the binary and benchmarks.
//! - [`batch`]: expanding inputs and planning outputs for batch restoration.
//! - [`io`]: reading every supported image format into RGBA8 with clear errors, and
//!   atomic PNG writing.
//! - [`colour`]: sRGB, linear RGB and OKLab conversions.
//! - [`grid`]: grid analysis, finding the cell grid of pseudo pixel art.
//! - [`decoder`]: the downsample-and-quantize decoder (cell reduction, palette, alpha).
//! - [`palette`]: automatic palettes (clustering in OKLab) and palette files.
//! - [`snap`]: the snap restorer, grid analysis plus the decoder: [`snap::restore`].
//! - [`degrade`]: the degradation pipeline that makes (degraded, clean) training pairs.
//! - [`metrics`]: how a restoration is scored against the clean sprite.
//! - [`pairs`]: pair sets on disk (degraded and clean images plus a JSON-lines manifest).
//! - [`eval`]: the evaluation harness behind `spritedx eval`.
//! - [`pixel_restorer`]: our own learned restorers (fast and diffusion) at true resolution.
//! - [`tiling`]: running a network over a large image in overlapping tiles.
//! - [`rectify`]: resampling to exactly f x f pixels per art pixel, and tensor layouts.
//! - [`restorers`]: the restorers `spritedx eval` and `spritedx restore` can run.
//! - [`nn`]: fast CPU building blocks for the learned restorers (candle custom ops).
//! - [`stablesr`]: the StableSR architecture (diffusion UNet with SPADE, structure encoder,
//!   CFW autoencoder, text tower) with the checkpoint's key names.
//! - [`weights`]: loading tensors from .ckpt, .safetensors, folders and the Hugging Face Hub.
//! - [`train`]: training the learned restorers (data on the fly, optimiser, checkpoints).
//! - [`split`]: the deterministic train/validation split of a sprite collection.
//! - [`rng`]: stable seed derivation, so every sample is reproducible.

pub mod alloc;
pub mod batch;
pub mod colour;
pub mod decoder;
pub mod degrade;
pub mod eval;
pub mod grid;
pub mod io;
pub mod metrics;
pub mod nn;
pub mod pairs;
pub mod palette;
pub mod pixel_restorer;
pub mod rectify;
pub mod restorers;
pub mod rng;
pub mod snap;
pub mod split;
pub mod stablesr;
pub mod threads;
pub mod tiling;
pub mod train;
pub mod weights;

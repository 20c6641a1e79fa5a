//! The snap restorer: grid analysis followed by the downsample-and-quantize decoder.
//! The fastest restorer of the engine, and the last stage of every learned one.

use crate::decoder::deconvolve::{self, BlurModel};
use crate::decoder::{decode_fitted, reduce_cells, DecodeOptions};
use crate::grid::{analyse, Grid, GridError, GridOptions};
use image::RgbaImage;
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
    let fitted = deconvolve::refine(image, &grid, &mut cells);
    let decoded = decode_fitted(&cells, &opts.decode, fitted.as_ref());
    Ok(Restored { image: decoded.image, grid, palette: decoded.palette, blur: fitted.map(|f| f.model) })
}

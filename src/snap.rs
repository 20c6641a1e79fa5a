//! The snap restorer: grid analysis followed by the downsample-and-quantize decoder.
//! The fastest restorer of the engine, and the last stage of every learned one.

use crate::decoder::deconvolve::{self, BlurFit, BlurModel};
use crate::decoder::{decode_fitted, reduce_cells, CellColours, DecodeOptions};
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
    Ok(finish(&cells, opts, grid, fitted))
}

/// The decoder's palette and alpha stage on `cells` (one colour per cell of `grid`, the
/// decoder's own or a model's), under the blur model `fit` that [`deconvolve::refine`]
/// fitted to the image, if any: the last stage of every restorer. The fit may move the
/// grid's lines to where the image says they are (unless the user gave the grid), and the
/// result reports them.
pub fn finish(cells: &CellColours, opts: &SnapOptions, mut grid: Grid, mut fit: Option<BlurFit>) -> Restored {
    if let Some(fit) = fit.as_mut() {
        if user_placed_lines(&opts.grid) {
            fit.fix_lines();
        }
    }
    let decoded = decode_fitted(cells, &opts.decode, fit.as_mut());
    if let Some(fit) = &fit {
        let (x_lines, y_lines) = fit.lines();
        grid.x_lines = x_lines.to_vec();
        grid.y_lines = y_lines.to_vec();
    }
    Restored { image: decoded.image, grid, palette: decoded.palette, blur: fit.map(|f| f.model) }
}

/// Whether the user gave the grid's cell size, cell count or phase: the decoder then
/// keeps the lines the grid analysis placed by them.
fn user_placed_lines(opts: &GridOptions) -> bool {
    opts.cell_size.is_some() || opts.cells.is_some() || opts.offset.is_some()
}

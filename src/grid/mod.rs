//! Grid analysis: finding the cell grid of pseudo pixel art.
//!
//! Each axis is analysed on its own, in three steps:
//! 1. [`profile`]: an edge profile, the colour change across every possible grid line,
//!    summed along the other axis, with the noise floor removed.
//! 2. [`period`]: the regular comb (cell size and phase) that best explains the profile;
//!    its contrast says how much of the change sits on grid lines and becomes the axis's
//!    confidence.
//! 3. [`lines`]: every grid line is then placed on its own near the comb's prediction,
//!    which follows non-uniform and drifting cells.
//!
//! Partial cells at the borders are kept when at least [`MIN_PARTIAL_CELL`] of a cell is
//! visible. When one axis shows no grid but the other does, cells are taken to be square
//! and only the phase is searched on the weak axis. When neither does, analysis fails with
//! [`GridError::NoGrid`] rather than guessing.

pub mod lines;
pub mod period;
pub mod profile;

use image::RgbaImage;
use period::{fit_period, fit_square_cells, CombFit};
use serde::{Deserialize, Serialize};

/// A border cell is part of the grid when at least this share of it is visible.
pub const MIN_PARTIAL_CELL: f32 = 0.35;
/// Default smallest comb contrast accepted as a grid.
pub const DEFAULT_MIN_CONFIDENCE: f32 = 0.2;

/// The cell grid of an image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Grid {
    /// Screen x of every vertical cell boundary, increasing: `cols + 1` entries, the first
    /// and last may be the image borders (partial cells).
    pub x_lines: Vec<f32>,
    /// Screen y of every horizontal cell boundary: `rows + 1` entries.
    pub y_lines: Vec<f32>,
    /// Mean screen pixels per cell, per axis.
    pub cell_width: f32,
    pub cell_height: f32,
    /// Position of a grid line in `[0, cell size)`: where the regular comb starts.
    pub phase_x: f32,
    pub phase_y: f32,
    /// Per-axis comb contrast in [0, 1]; see [`period`].
    pub confidence_x: f32,
    pub confidence_y: f32,
}

impl Grid {
    pub fn cols(&self) -> u32 {
        self.x_lines.len().saturating_sub(1) as u32
    }
    pub fn rows(&self) -> u32 {
        self.y_lines.len().saturating_sub(1) as u32
    }
    /// The weaker axis's confidence.
    pub fn confidence(&self) -> f32 {
        self.confidence_x.min(self.confidence_y)
    }
}

/// Settings and user overrides for grid analysis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GridOptions {
    /// Smallest and largest cell size searched, in screen pixels.
    pub min_cell: f32,
    pub max_cell: f32,
    /// Known cell size (width, height): only the phase and the lines are searched.
    pub cell_size: Option<(f32, f32)>,
    /// Known cell count (cols, rows): the cells divide the image evenly.
    pub cells: Option<(u32, u32)>,
    /// Known phase (x, y): screen position of a grid line.
    pub offset: Option<(f32, f32)>,
    /// Below this confidence on both axes, no grid is reported.
    pub min_confidence: f32,
}

impl Default for GridOptions {
    fn default() -> Self {
        Self { min_cell: 2.0, max_cell: 40.0, cell_size: None, cells: None, offset: None, min_confidence: DEFAULT_MIN_CONFIDENCE }
    }
}

/// Why no grid could be given.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GridError {
    #[error("no pixel grid found (confidence {confidence:.2}, below {min:.2}); if the image is already at true resolution there is nothing to restore, otherwise give the grid with --cell-size or --grid")]
    NoGrid { confidence: f32, min: f32 },
    #[error("the image ({width}x{height}) is too small for cells of {min_cell} pixels or more")]
    TooSmall { width: u32, height: u32, min_cell: f32 },
    #[error("invalid grid override: {0}")]
    BadOverride(String),
}

/// Finds the cell grid of an image.
pub fn analyse(img: &RgbaImage, opts: &GridOptions) -> Result<Grid, GridError> {
    let (w, h) = img.dimensions();
    if (w as f32) < opts.min_cell || (h as f32) < opts.min_cell {
        return Err(GridError::TooSmall { width: w, height: h, min_cell: opts.min_cell });
    }
    let fixed = fixed_periods(w, h, opts)?;
    let phase = |axis: usize| opts.offset.map(|o| if axis == 0 { o.0 } else { o.1 });
    let profiles = profile::edge_profiles(img);
    let (mut fx, mut fy) = match fixed {
        Some((px, py)) => {
            // The user's cell size stands; only the phase is fitted (cells under the
            // comb's smallest period, such as 1, are taken as they are).
            let fit = |prof: &[f32], p: f32, phase: Option<f32>| {
                let given = CombFit { period: p, phase: phase.unwrap_or(0.0), score: 0.0, contrast: 0.0 };
                Some(if p < period::MIN_PERIOD { given } else { fit_period(prof, p, phase).unwrap_or(given) })
            };
            (fit(&profiles.x, px, phase(0)), fit(&profiles.y, py, phase(1)))
        }
        None => fit_square_cells(&profiles.x, &profiles.y, opts.min_cell, opts.max_cell, opts.offset),
    };
    let ok = |f: &Option<CombFit>| fixed.is_some() || f.is_some_and(|f| f.contrast >= opts.min_confidence);
    // Square cells are the norm: a weak axis borrows the strong axis's cell size.
    match (ok(&fx), ok(&fy)) {
        (true, false) => fy = fit_period(&profiles.y, fx.expect("ok axis has a fit").period, phase(1)),
        (false, true) => fx = fit_period(&profiles.x, fy.expect("ok axis has a fit").period, phase(0)),
        (false, false) => {
            let confidence = fx.map_or(0.0, |f| f.contrast).max(fy.map_or(0.0, |f| f.contrast)).max(0.0);
            return Err(GridError::NoGrid { confidence, min: opts.min_confidence });
        }
        (true, true) => {}
    }
    let (Some(fx), Some(fy)) = (fx, fy) else {
        return Err(GridError::NoGrid { confidence: 0.0, min: opts.min_confidence });
    };
    Ok(Grid {
        x_lines: with_borders(lines::place_lines(&profiles.x, &fx), w as f32, fx.period),
        y_lines: with_borders(lines::place_lines(&profiles.y, &fy), h as f32, fy.period),
        cell_width: fx.period,
        cell_height: fy.period,
        phase_x: fx.phase,
        phase_y: fy.phase,
        confidence_x: fx.contrast.clamp(0.0, 1.0),
        confidence_y: fy.contrast.clamp(0.0, 1.0),
    })
}

/// The cell size fixed by the user's overrides, if any.
fn fixed_periods(w: u32, h: u32, opts: &GridOptions) -> Result<Option<(f32, f32)>, GridError> {
    match (opts.cell_size, opts.cells) {
        (Some(_), Some(_)) => Err(GridError::BadOverride("give either a cell size or a cell count, not both".into())),
        (Some((cw, ch)), None) => {
            if !(cw >= 1.0 && ch >= 1.0) {
                return Err(GridError::BadOverride(format!("cell size {cw}x{ch} must be at least 1x1")));
            }
            Ok(Some((cw, ch)))
        }
        (None, Some((cols, rows))) => {
            if cols == 0 || rows == 0 || cols > w || rows > h {
                return Err(GridError::BadOverride(format!("{cols}x{rows} cells do not fit a {w}x{h} image")));
            }
            Ok(Some((w as f32 / cols as f32, h as f32 / rows as f32)))
        }
        (None, None) => Ok(None),
    }
}

/// Adds the image borders as boundaries of partial cells that are visible enough.
fn with_borders(interior: Vec<f32>, len: f32, period: f32) -> Vec<f32> {
    let mut lines = Vec::with_capacity(interior.len() + 2);
    match interior.first() {
        Some(&first) if first < MIN_PARTIAL_CELL * period => {}
        _ => lines.push(0.0),
    }
    lines.extend_from_slice(&interior);
    match lines.last() {
        Some(&last) if len - last < MIN_PARTIAL_CELL * period => {}
        _ => lines.push(len),
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgba;

    /// A pseudo-random art image of `cols x rows` upscaled by `scale` with `phase`.
    fn nearest_upscale(cols: u32, rows: u32, scale: f32, phase: f32) -> (RgbaImage, Vec<Vec<[u8; 4]>>) {
        let art: Vec<Vec<[u8; 4]>> = (0..rows)
            .map(|y| (0..cols).map(|x| {
                let v = crate::rng::splitmix64(u64::from(x * 131 + y * 977)) as u8 & 0xC0;
                [v, 255 - v, v / 2, 255]
            }).collect())
            .collect();
        let w = ((cols as f32) * scale - phase).floor() as u32;
        let h = ((rows as f32) * scale - phase).floor() as u32;
        let img = RgbaImage::from_fn(w, h, |x, y| {
            let ax = ((x as f32 + 0.5 + phase) / scale) as usize;
            let ay = ((y as f32 + 0.5 + phase) / scale) as usize;
            Rgba(art[ay.min(rows as usize - 1)][ax.min(cols as usize - 1)])
        });
        (img, art)
    }

    #[test]
    fn finds_exact_cell_counts_of_nearest_upscales() {
        for &(cols, scale) in &[(8u32, 2.0f32), (8, 4.0), (16, 3.0), (32, 2.5), (32, 7.3), (24, 13.0), (8, 37.0)] {
            for &phase_share in &[0.0f32, 0.3] {
                let phase = phase_share * scale;
                let (img, _) = nearest_upscale(cols, cols, scale, phase);
                let g = analyse(&img, &GridOptions::default()).unwrap_or_else(|e| panic!("{cols}@{scale}: {e}"));
                assert_eq!((g.cols(), g.rows()), (cols, cols), "{cols}@{scale} phase {phase}: {g:?}");
                assert!((g.cell_width - scale).abs() < 0.02 * scale, "{g:?}");
            }
        }
    }

    #[test]
    fn flat_image_has_no_grid() {
        let img = RgbaImage::from_pixel(64, 64, Rgba([9, 9, 9, 255]));
        assert!(matches!(analyse(&img, &GridOptions::default()), Err(GridError::NoGrid { .. })));
    }

    #[test]
    fn overrides_fix_the_grid() {
        let (img, _) = nearest_upscale(10, 10, 5.0, 0.0);
        let g = analyse(&img, &GridOptions { cells: Some((10, 10)), ..Default::default() }).unwrap();
        assert_eq!((g.cols(), g.rows()), (10, 10));
        let g = analyse(&img, &GridOptions { cell_size: Some((5.0, 5.0)), ..Default::default() }).unwrap();
        assert_eq!((g.cols(), g.rows()), (10, 10));
        // Cells of one pixel: the image is already at true resolution.
        let g = analyse(&img, &GridOptions { cell_size: Some((1.0, 1.0)), ..Default::default() }).unwrap();
        assert_eq!((g.cols(), g.rows()), (50, 50));
        let bad = analyse(&img, &GridOptions { cells: Some((0, 10)), ..Default::default() });
        assert!(matches!(bad, Err(GridError::BadOverride(_))));
    }
}

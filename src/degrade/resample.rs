//! Geometry: renders the art onto the screen grid through the (non-uniform, wobbling)
//! screen-to-art mapping with a resampling kernel.
//!
//! For each screen pixel centre `(x + 0.5, y + 0.5)` the wobble is undone first
//! (`x' = x + 0.5 - Dx(x, y)`, see [`Wobble`]), then `x'` is mapped piecewise linearly
//! through the cell boundaries to a continuous art coordinate `u` (cell `i` spans
//! `[x_lines[i], x_lines[i + 1])` on screen and `[i, i + 1)` in art pixels). The kernel is
//! evaluated in art-pixel coordinates around `u`, separably per axis, on premultiplied
//! colour, with clamp-to-edge outside the sprite.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::canvas::{premultiply, unpremultiply, Canvas};
use super::params::{GridTruth, Wobble};

/// Resampling kernel, evaluated in art-pixel coordinates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernel {
    /// Each screen pixel takes its cell's colour (optionally with soft cell edges).
    Nearest,
    /// Linear interpolation between art pixel centres (a ramp across every whole cell).
    Bilinear,
    /// Keys cubic convolution with a = -0.5 (Catmull-Rom): slight overshoot at edges.
    Bicubic,
    /// Lanczos with 3 lobes, normalised: stronger ringing.
    Lanczos3,
}

impl Kernel {
    pub const ALL: [Kernel; 4] = [Kernel::Nearest, Kernel::Bilinear, Kernel::Bicubic, Kernel::Lanczos3];

    /// Half the support in art pixels for the interpolating kernels.
    fn radius(self) -> i32 {
        match self {
            Kernel::Nearest | Kernel::Bilinear => 1,
            Kernel::Bicubic => 2,
            Kernel::Lanczos3 => 3,
        }
    }

    /// Weight of an art pixel centre at distance `d` (art pixels) from the sample point.
    fn weight(self, d: f32) -> f32 {
        let d = d.abs();
        match self {
            Kernel::Nearest | Kernel::Bilinear => (1.0 - d).max(0.0),
            Kernel::Bicubic => {
                const A: f32 = -0.5;
                if d < 1.0 {
                    ((A + 2.0) * d - (A + 3.0)) * d * d + 1.0
                } else if d < 2.0 {
                    ((A * d - 5.0 * A) * d + 8.0 * A) * d - 4.0 * A
                } else {
                    0.0
                }
            }
            Kernel::Lanczos3 => {
                if d < 1e-6 {
                    1.0
                } else if d < 3.0 {
                    let x = std::f32::consts::PI * d;
                    3.0 * x.sin() * (x / 3.0).sin() / (x * x)
                } else {
                    0.0
                }
            }
        }
    }
}

/// At most 2 * 3 lanczos taps per axis.
const MAX_TAPS: usize = 6;

/// The art pixels one screen coordinate draws from along one axis, and their weights
/// (indices may fall outside the sprite; they are clamped when read).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Taps {
    pub(crate) first: i32,
    /// The art pixel the screen coordinate lies in, whose colour an invisible result keeps.
    nearest: i32,
    pub(crate) len: usize,
    pub(crate) weights: [f32; MAX_TAPS],
}

impl Taps {
    /// Taps from `first` on with `weights`, less the zero weights at either end (most
    /// screen pixels lie inside a cell, away from soft edges: one tap instead of three).
    fn new(first: i32, nearest: i32, weights: &[f32]) -> Self {
        let leading = weights.iter().take_while(|&&w| w == 0.0).count();
        let trailing = weights[leading..].iter().rev().take_while(|&&w| w == 0.0).count();
        let kept = &weights[leading..weights.len() - trailing];
        let mut all = [0.0; MAX_TAPS];
        all[..kept.len()].copy_from_slice(kept);
        Taps {
            first: first + leading as i32,
            nearest,
            len: kept.len(),
            weights: all,
        }
    }
}

/// `v.floor() as i32` without the libm call `floor` is on baseline x86-64.
fn floor_to_i32(v: f32) -> i32 {
    let truncated = v as i32;
    if (truncated as f32) > v {
        truncated - 1
    } else {
        truncated
    }
}

/// The continuous art coordinate of an unwarped screen coordinate, and the screen width of
/// the cell it falls in. Outside the grid the edge cell's width extrapolates. The search
/// walks from `guess`, the cell of a nearby coordinate, which wobble moves by at most one.
fn art_coordinate(lines: &[f32], screen: f32, guess: usize) -> (f32, f32) {
    let last_cell = lines.len() - 2;
    let mut cell = guess.min(last_cell);
    while cell > 0 && screen < lines[cell] {
        cell -= 1;
    }
    while cell < last_cell && screen >= lines[cell + 1] {
        cell += 1;
    }
    let width = lines[cell + 1] - lines[cell];
    (cell as f32 + (screen - lines[cell]) / width, width)
}

/// Weight of the neighbouring cell at screen distance `distance` inside a cell from their
/// shared boundary: a smoothstep over `[-half_width, half_width]` around the boundary, so
/// 0.5 at the boundary and 0 from `half_width` on.
fn neighbour_weight(distance: f32, half_width: f32) -> f32 {
    let t = (0.5 + 0.5 * distance / half_width).clamp(0.0, 1.0);
    1.0 - t * t * (3.0 - 2.0 * t)
}

pub(crate) fn taps(kernel: Kernel, soft_half_width: f32, u: f32, cell_width: f32) -> Taps {
    let nearest_index = floor_to_i32(u);
    match kernel {
        Kernel::Nearest if soft_half_width > 0.0 => {
            let frac = u - nearest_index as f32;
            let left = neighbour_weight(frac * cell_width, soft_half_width);
            let right = neighbour_weight((1.0 - frac) * cell_width, soft_half_width);
            Taps::new(nearest_index - 1, nearest_index, &[left, 1.0 - left - right, right])
        }
        Kernel::Nearest => Taps::new(nearest_index, nearest_index, &[1.0]),
        Kernel::Bilinear | Kernel::Bicubic | Kernel::Lanczos3 => {
            // Art pixel centres sit at i + 0.5.
            let centre = u - 0.5;
            let base = floor_to_i32(centre);
            let frac = centre - base as f32;
            let radius = kernel.radius();
            let mut weights = [0.0; MAX_TAPS];
            let len = 2 * radius as usize;
            for (k, w) in weights[..len].iter_mut().enumerate() {
                *w = kernel.weight(frac - (k as i32 - (radius - 1)) as f32);
            }
            // Lanczos weights do not sum to exactly 1.
            let total: f32 = weights[..len].iter().sum();
            weights[..len].iter_mut().for_each(|w| *w /= total);
            Taps::new(base - (radius - 1), nearest_index, &weights[..len])
        }
    }
}

/// The taps of unbent screen coordinate `screen` on an axis with boundaries `lines`
/// (`guess`: see [`art_coordinate`]).
fn screen_taps(kernel: Kernel, soft_half_width: f32, lines: &[f32], screen: f32, guess: usize) -> Taps {
    let (u, cell_width) = art_coordinate(lines, screen, guess);
    taps(kernel, soft_half_width, u, cell_width)
}

/// A [`Wobble`] tabulated on the pixel grid: `sin(a + b) = sin a cos b + cos a sin b` with
/// `a` from the coordinate along the lines and `b` from the one across them, so a pixel
/// costs two lookups instead of a `sin`.
struct WobbleField {
    amplitude: f32,
    along: Vec<(f32, f32)>,
    across: Vec<(f32, f32)>,
}

impl WobbleField {
    fn new(wobble: &Wobble, along_len: usize, across_len: usize) -> Self {
        let tau = std::f32::consts::TAU;
        let table = |len: usize, period: f32, phase: f32| {
            (0..len)
                .map(|i| (tau * (i as f32 + 0.5) / period + phase).sin_cos())
                .collect()
        };
        WobbleField {
            amplitude: wobble.amplitude,
            along: table(along_len, wobble.period, wobble.phase),
            across: table(across_len, wobble.cross_period, 0.0),
        }
    }

    fn displacement(&self, along: usize, across: usize) -> f32 {
        let (sin_a, cos_a) = self.along[along];
        let (sin_b, cos_b) = self.across[across];
        self.amplitude * (sin_a * cos_b + cos_a * sin_b)
    }
}

/// Where one axis' taps come from.
enum AxisTaps {
    /// Per screen coordinate of this axis (no wobble).
    Fixed(Vec<Taps>),
    /// Computed per pixel since the lines bend, except where `unaffected[i]`: the fixed
    /// taps of coordinate `i` hold however the lines bend (see [`wobble_unaffected`]).
    Wobbling {
        field: WobbleField,
        fixed: Vec<Taps>,
        unaffected: Vec<bool>,
    },
}

/// Which screen coordinates of an axis keep their taps under wobble: with the nearest
/// kernel, those further than the soft-edge half width plus the wobble amplitude from
/// every boundary stay a single tap on their own cell wherever the lines move. The other
/// kernels change continuously with position, so nothing is unaffected.
fn wobble_unaffected(kernel: Kernel, lines: &[f32], len: usize, reach: f32) -> Vec<bool> {
    (0..len)
        .map(|i| {
            let centre = i as f32 + 0.5;
            let next = lines.partition_point(|&l| l <= centre);
            let distance_to = |line: Option<&f32>| line.map_or(f32::INFINITY, |l| (l - centre).abs());
            let distance =
                distance_to(lines.get(next)).min(distance_to(next.checked_sub(1).and_then(|k| lines.get(k))));
            kernel == Kernel::Nearest && distance > reach
        })
        .collect()
}

/// Renders `art` (straight colour, `grid.cols` x `grid.rows`) to a `grid.width` x
/// `grid.height` canvas. `soft_edge` (screen pixels, nearest only) is the width of the
/// smooth transition centred on every cell boundary.
pub(super) fn render(
    art: &Canvas,
    grid: &GridTruth,
    kernel: Kernel,
    soft_edge: f32,
    wobble_x: Option<&Wobble>,
    wobble_y: Option<&Wobble>,
) -> Canvas {
    let (width, height) = (grid.width as usize, grid.height as usize);
    let (cols, rows) = (art.width, art.height);
    let mut out = Canvas::transparent(width, height);
    if width == 0 || height == 0 || cols == 0 || rows == 0 {
        return out;
    }
    let premultiplied: Vec<[f32; 4]> = art.pixels.iter().copied().map(premultiply).collect();
    let soft_half_width = 0.5 * soft_edge;
    let axis_taps =
        |lines: &[f32], screen: f32, guess: usize| screen_taps(kernel, soft_half_width, lines, screen, guess);
    // The cell of each unbent screen column and row, as the search's starting point.
    let cells_along = |lines: &[f32], len: usize| -> Vec<usize> {
        (0..len)
            .map(|i| lines.partition_point(|&l| l <= i as f32 + 0.5).saturating_sub(1))
            .collect()
    };
    let (column_cells, row_cells) = (cells_along(&grid.x_lines, width), cells_along(&grid.y_lines, height));
    // Vertical lines bend along y, horizontal ones along x. Without wobble an axis' taps
    // depend on that axis' coordinate only, so they are computed once.
    let axis = |lines: &[f32], cells: &[usize], wobble: Option<&Wobble>, along: usize| {
        let fixed: Vec<Taps> = cells
            .iter()
            .enumerate()
            .map(|(i, &cell)| axis_taps(lines, i as f32 + 0.5, cell))
            .collect();
        match wobble {
            None => AxisTaps::Fixed(fixed),
            Some(w) => AxisTaps::Wobbling {
                field: WobbleField::new(w, along, cells.len()),
                // A small margin for rounding in the displacement tables.
                unaffected: wobble_unaffected(kernel, lines, cells.len(), soft_half_width + w.amplitude + 1e-3),
                fixed,
            },
        }
    };
    let x_taps = axis(&grid.x_lines, &column_cells, wobble_x, height);
    let y_taps = axis(&grid.y_lines, &row_cells, wobble_y, width);
    let clamp_col = |i: i32| i.clamp(0, cols as i32 - 1) as usize;
    let clamp_row = |i: i32| i.clamp(0, rows as i32 - 1) as usize;

    out.pixels.par_chunks_mut(width).enumerate().for_each(|(y, out_row)| {
        for (x, out_pixel) in out_row.iter_mut().enumerate() {
            let tx = match &x_taps {
                AxisTaps::Fixed(fixed) => fixed[x],
                AxisTaps::Wobbling { fixed, unaffected, .. } if unaffected[x] => fixed[x],
                AxisTaps::Wobbling { field, .. } => axis_taps(
                    &grid.x_lines,
                    x as f32 + 0.5 - field.displacement(y, x),
                    column_cells[x],
                ),
            };
            let ty = match &y_taps {
                AxisTaps::Fixed(fixed) => fixed[y],
                AxisTaps::Wobbling { fixed, unaffected, .. } if unaffected[y] => fixed[y],
                AxisTaps::Wobbling { field, .. } => {
                    axis_taps(&grid.y_lines, y as f32 + 0.5 - field.displacement(x, y), row_cells[y])
                }
            };
            let mut sum = [0.0f32; 4];
            for (j, &wy) in ty.weights[..ty.len].iter().enumerate() {
                let art_row = &premultiplied[clamp_row(ty.first + j as i32) * cols..][..cols];
                for (i, &wx) in tx.weights[..tx.len].iter().enumerate() {
                    let w = wx * wy;
                    let p = art_row[clamp_col(tx.first + i as i32)];
                    for c in 0..4 {
                        sum[c] += w * p[c];
                    }
                }
            }
            let hidden = art.pixels[clamp_row(ty.nearest) * cols + clamp_col(tx.nearest)];
            *out_pixel = unpremultiply(sum, hidden);
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolating_kernels_are_partitions_of_unity_and_interpolate() {
        for kernel in [Kernel::Bilinear, Kernel::Bicubic, Kernel::Lanczos3] {
            for step in 0..=20 {
                let u = 3.0 + step as f32 / 20.0;
                let t = taps(kernel, 0.0, u, 4.0);
                let total: f32 = t.weights[..t.len].iter().sum();
                assert!((total - 1.0).abs() < 1e-5, "{kernel:?} at {u}: sum {total}");
            }
            // At an art pixel centre the kernel returns that pixel alone.
            let t = taps(kernel, 0.0, 5.5, 4.0);
            for (k, w) in t.weights[..t.len].iter().enumerate() {
                let expected = if t.first + k as i32 == 5 { 1.0 } else { 0.0 };
                assert!((w - expected).abs() < 1e-5, "{kernel:?}: tap {k} weight {w}");
            }
        }
    }

    /// The weight `t` gives art pixel `index` (0 when it is not among the taps).
    fn weight_of(t: &Taps, index: i32) -> f32 {
        let k = index - t.first;
        if (0..t.len as i32).contains(&k) {
            t.weights[k as usize]
        } else {
            0.0
        }
    }

    #[test]
    fn soft_edges_blend_half_at_the_boundary_and_not_at_the_centre() {
        // Cell width 10, soft edge 4 (half width 2).
        let at = |u: f32| taps(Kernel::Nearest, 2.0, u, 10.0);
        let centre = at(5.5);
        assert_eq!((centre.len, weight_of(&centre, 5)), (1, 1.0), "{centre:?}");
        let just_right_of_boundary = at(5.0 + 1e-4);
        assert!((weight_of(&just_right_of_boundary, 4) - 0.5).abs() < 1e-3);
        let just_left_of_boundary = at(5.0 - 1e-4);
        assert!((weight_of(&just_left_of_boundary, 5) - 0.5).abs() < 1e-3);
        let inside_the_transition = at(5.1);
        assert!((0.0..0.5).contains(&weight_of(&inside_the_transition, 4)));
        let beyond_half_width = at(5.25);
        assert_eq!((beyond_half_width.len, weight_of(&beyond_half_width, 5)), (1, 1.0));
    }

    #[test]
    fn columns_marked_unaffected_by_wobble_keep_their_taps_wherever_the_lines_move() {
        let lines: Vec<f32> = [-1.3f32, 9.0, 17.5, 30.0, 38.2].to_vec();
        let (soft_half_width, amplitude) = (1.2, 1.7);
        let reach = soft_half_width + amplitude + 1e-3;
        let unaffected = wobble_unaffected(Kernel::Nearest, &lines, 38, reach);
        assert!(unaffected.iter().any(|&u| u) && unaffected.iter().any(|&u| !u));
        for (x, _) in unaffected.iter().enumerate().filter(|(_, &u)| u) {
            let centre = x as f32 + 0.5;
            let fixed = screen_taps(Kernel::Nearest, soft_half_width, &lines, centre, 0);
            for step in -20..=20 {
                let moved = screen_taps(
                    Kernel::Nearest,
                    soft_half_width,
                    &lines,
                    centre + amplitude * step as f32 / 20.0,
                    0,
                );
                assert_eq!(
                    (moved.first, moved.nearest, moved.len),
                    (fixed.first, fixed.nearest, 1),
                    "column {x}"
                );
            }
        }
        assert!(wobble_unaffected(Kernel::Bilinear, &lines, 38, reach)
            .iter()
            .all(|&u| !u));
    }

    #[test]
    fn floor_matches_std() {
        for v in [-2.5f32, -2.0, -0.1, 0.0, 0.3, 1.0, 7.99] {
            assert_eq!(floor_to_i32(v), v.floor() as i32, "{v}");
        }
    }

    #[test]
    fn art_coordinate_follows_non_uniform_cells_and_extrapolates() {
        let lines = [-1.0, 3.0, 9.0, 11.0];
        assert_eq!(art_coordinate(&lines, -1.0, 0), (0.0, 4.0));
        assert_eq!(art_coordinate(&lines, 6.0, 0), (1.5, 6.0));
        assert_eq!(art_coordinate(&lines, 10.5, 2), (2.75, 2.0));
        assert_eq!(art_coordinate(&lines, 12.0, 1), (3.5, 2.0));
        assert_eq!(art_coordinate(&lines, -3.0, 2), (-0.5, 4.0));
    }
}

//! The decoder's hot path on a rectified image: the robust colour of every cell
//! ([`reduce_cells`]) and the nearest palette colour in OKLab ([`snap_to_palette`]).
//!
//! # The rectified-block reduction
//!
//! A rectified image (`spritedx::rectify`) has every cell exactly `f` x `f` pixels, so
//! cell `(cx, cy)` is the block `x ∈ [cx f, (cx + 1) f)`, `y ∈ [cy f, (cy + 1) f)`, and one
//! GPU thread reduces one block. The statistic is `spritedx::decoder::reduce_cells`'s:
//! only the pixels whose centres lie at least [`CELL_MARGIN`] of the cell inside it
//! (subsampled on a regular lattice when there are more than [`MAX_SAMPLES_PER_CELL`]),
//! weighted by a tent that is 1 at the centre and 1/2 at the edge, give
//!
//! - alpha (0-255): the weighted median of alpha over all of them;
//! - L, a, b: the weighted medians of each OKLab channel over those at least half opaque
//!   (alpha ≥ 128; all of them when none is), so transparent pixels' colours never leak in;
//! - spread: the weighted median OKLab distance of those pixels from (L, a, b).
//!
//! The input is the learned restorers' output tensor, (B, 4, H, W) RGBA in [-1, 1]
//! (straight alpha), and each value is first rounded to 8 bits exactly as
//! `spritedx::rectify::tensor_to_image` does; colours then go through the same sRGB table
//! and OKLab matrices as `spritedx::colour`. So for one image, [`reduce_cells`] equals
//! `decoder::reduce_cells(&tensor_to_image(t), &grid)` with the grid lines at multiples of
//! `f`. How it differs from the CPU decoder on a real image:
//!
//! - the CPU decoder reduces the *irregular* cells of the detected grid of the original
//!   image (fractional, wobbling lines); this one reduces the cells of the rectified image,
//!   which are already resampled to `f` x `f` (bilinear samples at `(i + 0.5)/f` of each
//!   cell), so its input pixels are resampled values, not the original ones;
//! - sorting for the medians is stable here and unstable in the CPU decoder: equal values
//!   can be summed in another order, which can move the median only when a float rounding
//!   of the running weight lands exactly on half the total.
//!
//! # Palette snap
//!
//! Each colour (the first three values, L a b, of each row) becomes the index of the
//! nearest palette colour in OKLab, the lowest index on a tie, with non-finite components
//! read as 0: `spritedx::palette::snap_to_palette` with the palette given in OKLab.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};

use crate::sampler::cpu_slice;

/// Share of a cell's size, on each side, left out of its interior (`decoder::CELL_MARGIN`).
pub const CELL_MARGIN: f32 = 0.2;
/// Interiors with more pixels than this are subsampled on a regular lattice.
pub const MAX_SAMPLES_PER_CELL: usize = 96;
/// Values per reduced cell: L, a, b, alpha (0-255), spread.
pub const CELL_VALUES: usize = 5;

/// sRGB-encoded component in [0, 1] to linear light (`colour::srgb_to_linear`).
pub fn srgb_to_linear(c: f32) -> f32 {
    if c <= 0.040_45 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf(2.4)
    }
}

/// `srgb_to_linear(v / 255)` for every 8-bit value (`colour::srgb8_to_linear_table`); the
/// kernel is given this table, so host and device agree bit for bit.
pub fn srgb8_to_linear_table() -> &'static [f32; 256] {
    use std::sync::OnceLock;
    static TABLE: OnceLock<[f32; 256]> = OnceLock::new();
    TABLE.get_or_init(|| std::array::from_fn(|i| srgb_to_linear(i as f32 / 255.0)))
}

/// Linear sRGB to OKLab `[L, a, b]` (Ottosson's matrices, `colour::linear_to_oklab`).
pub fn linear_to_oklab([r, g, b]: [f32; 3]) -> [f32; 3] {
    let l = 0.412_221_47 * r + 0.536_332_55 * g + 0.051_445_995 * b;
    let m = 0.211_903_5 * r + 0.680_699_5 * g + 0.107_396_96 * b;
    let s = 0.088_302_46 * r + 0.281_718_85 * g + 0.629_978_7 * b;
    let (l, m, s) = (l.cbrt(), m.cbrt(), s.cbrt());
    [
        0.210_454_26 * l + 0.793_617_8 * m - 0.004_072_047 * s,
        1.977_998_5 * l - 2.428_592_2 * m + 0.450_593_7 * s,
        0.025_904_037 * l + 0.782_771_77 * m - 0.808_675_77 * s,
    ]
}

/// 8-bit sRGB to OKLab `[L, a, b]` (`colour::srgb8_to_oklab`).
pub fn srgb8_to_oklab(rgb: [u8; 3]) -> [f32; 3] {
    let t = srgb8_to_linear_table();
    linear_to_oklab(rgb.map(|c| t[c as usize]))
}

/// The Rust reference of the kernels, on contiguous f32 slices.
pub mod reference {
    use super::{
        linear_to_oklab, srgb8_to_linear_table, CELL_MARGIN, CELL_VALUES, MAX_SAMPLES_PER_CELL,
    };
    use candle_core::{bail, Result};

    /// A [-1, 1] value as 8 bits, as `rectify::tensor_to_image` rounds it.
    pub fn to_u8(v: f32) -> u8 {
        ((v + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8
    }

    /// The interior pixel range `first..=last` of the cell `[lo, hi)` along an axis of
    /// `len` pixels, and its tent's centre and half-width (`decoder::interior`).
    fn interior(lo: f32, hi: f32, len: u32) -> (u32, u32, f32, f32) {
        let size = hi - lo;
        let margin = CELL_MARGIN * size;
        // Pixel i's centre is i + 0.5; keep those inside [lo + margin, hi - margin].
        let mut first = (lo + margin - 0.5).ceil().max(0.0) as u32;
        let mut last = ((hi - margin - 0.5).floor() as i64).min(i64::from(len) - 1);
        if last < i64::from(first) {
            // The cell is too thin for an interior: use the pixel under its centre.
            let c = ((lo + hi) / 2.0).floor().clamp(0.0, (len - 1) as f32) as u32;
            first = c;
            last = i64::from(c);
        }
        (
            first,
            last.max(0) as u32,
            (lo + hi) / 2.0,
            (size / 2.0).max(0.5),
        )
    }

    fn tent(i: u32, centre: f32, half: f32) -> f32 {
        1.0 - 0.5 * ((i as f32 + 0.5 - centre) / half).abs().min(1.0)
    }

    /// The lower weighted median of (value, weight) pairs: sorted by value (stably, in
    /// `total_cmp` order), the first value at which the running weight reaches half the
    /// total (`decoder::weighted_median`); 0 for no pairs.
    pub fn weighted_median(values: &mut [(f32, f32)]) -> f32 {
        if values.is_empty() {
            return 0.0;
        }
        values.sort_by(|x, y| x.0.total_cmp(&y.0));
        let mut total = 0.0f32;
        for v in values.iter() {
            total += v.1;
        }
        let half = total / 2.0;
        let mut acc = 0.0;
        for &(v, w) in values.iter() {
            acc += w;
            if acc >= half {
                return v;
            }
        }
        values[values.len() - 1].0
    }

    /// Reduces every `factor` x `factor` cell of `image`, (batch, 4, rows factor,
    /// cols factor) RGBA in [-1, 1], into `cells`, (batch, rows, cols, 5) of
    /// [L, a, b, alpha (0-255), spread].
    pub fn reduce_cells(
        image: &[f32],
        batch: usize,
        rows: usize,
        cols: usize,
        factor: usize,
        cells: &mut [f32],
    ) -> Result<()> {
        let (height, width) = (rows * factor, cols * factor);
        let plane = height * width;
        if image.len() != batch * 4 * plane {
            bail!(
                "the image has {} values, expected {batch} x 4 x {height} x {width}",
                image.len()
            );
        }
        if cells.len() != batch * rows * cols * CELL_VALUES {
            bail!(
                "the output has {} values, expected {batch} x {rows} x {cols} x {CELL_VALUES}",
                cells.len()
            );
        }
        let table = srgb8_to_linear_table();
        let axis = |count: usize, len: usize| -> Vec<(u32, u32, f32, f32)> {
            (0..count)
                .map(|k| interior((k * factor) as f32, ((k + 1) * factor) as f32, len as u32))
                .collect()
        };
        let (xs, ys) = (axis(cols, width), axis(rows, height));
        let mut samples: Vec<([f32; 3], f32, f32)> = Vec::with_capacity(2 * MAX_SAMPLES_PER_CELL);
        let mut keyed: Vec<(f32, f32)> = Vec::with_capacity(2 * MAX_SAMPLES_PER_CELL);
        for (b, rgba) in image.chunks_exact(4 * plane).enumerate() {
            for (cy, &(y0, y1, ycentre, yhalf)) in ys.iter().enumerate() {
                for (cx, &(x0, x1, xcentre, xhalf)) in xs.iter().enumerate() {
                    samples.clear();
                    let count = ((x1 - x0 + 1) * (y1 - y0 + 1)) as usize;
                    let stride = ((count as f32 / MAX_SAMPLES_PER_CELL as f32).sqrt().ceil() as u32)
                        .max(1) as usize;
                    for y in (y0..=y1).step_by(stride) {
                        let wy = tent(y, ycentre, yhalf);
                        for x in (x0..=x1).step_by(stride) {
                            let wx = tent(x, xcentre, xhalf);
                            let p = y as usize * width + x as usize;
                            let linear =
                                [0, 1, 2].map(|c| table[to_u8(rgba[c * plane + p]) as usize]);
                            let alpha = f32::from(to_u8(rgba[3 * plane + p]));
                            samples.push((linear_to_oklab(linear), alpha, wx * wy));
                        }
                    }
                    let out =
                        &mut cells[((b * rows + cy) * cols + cx) * CELL_VALUES..][..CELL_VALUES];
                    out.copy_from_slice(&robust_colour(&samples, &mut keyed));
                }
            }
        }
        Ok(())
    }

    /// [L, a, b, alpha, spread] of one cell's (OKLab, alpha, weight) samples
    /// (`decoder::robust_colour`).
    fn robust_colour(
        samples: &[([f32; 3], f32, f32)],
        keyed: &mut Vec<(f32, f32)>,
    ) -> [f32; CELL_VALUES] {
        keyed.clear();
        keyed.extend(samples.iter().map(|s| (s.1, s.2)));
        let alpha = weighted_median(keyed);
        let any_opaque = samples.iter().any(|s| s.1 >= 128.0);
        let pool = || samples.iter().filter(move |s| !any_opaque || s.1 >= 128.0);
        let mut colour = [0.0; 3];
        for (ch, value) in colour.iter_mut().enumerate() {
            keyed.clear();
            keyed.extend(pool().map(|s| (s.0[ch], s.2)));
            *value = weighted_median(keyed);
        }
        keyed.clear();
        keyed.extend(pool().map(|s| {
            let (dl, da, db) = (s.0[0] - colour[0], s.0[1] - colour[1], s.0[2] - colour[2]);
            ((dl * dl + da * da + db * db).sqrt(), s.2)
        }));
        let spread = weighted_median(keyed);
        [colour[0], colour[1], colour[2], alpha, spread]
    }

    /// For each row of `stride` values of `colours` (L a b first), the index of the nearest
    /// colour of `palette` (rows of L a b) in OKLab, the lowest index on a tie; non-finite
    /// components read as 0 (`palette::snap_to_palette`).
    pub fn snap_to_palette(
        colours: &[f32],
        stride: usize,
        palette: &[f32],
        out: &mut [u32],
    ) -> Result<()> {
        if stride < 3 || colours.len() != out.len() * stride {
            bail!(
                "{} colour values do not make {} rows of {stride} (at least 3: L, a, b)",
                colours.len(),
                out.len()
            );
        }
        if palette.is_empty() || palette.len() % 3 != 0 {
            bail!(
                "the palette must be a non-empty list of OKLab triples, got {} values",
                palette.len()
            );
        }
        let finite = |v: f32| if v.is_finite() { v } else { 0.0 };
        for (c, o) in colours.chunks_exact(stride).zip(out.iter_mut()) {
            let (l, a, b) = (finite(c[0]), finite(c[1]), finite(c[2]));
            let mut best = (f32::INFINITY, 0u32);
            for (j, p) in palette.chunks_exact(3).enumerate() {
                let (dl, da, db) = (l - p[0], a - p[1], b - p[2]);
                let d2 = dl * dl + da * da + db * db;
                if d2 < best.0 {
                    best = (d2, j as u32);
                }
            }
            *o = best.1;
        }
        Ok(())
    }
}

/// The robust colour of every `factor` x `factor` cell of rectified images.
///
/// `image`: (B, 4, rows·factor, cols·factor) f32 RGBA in [-1, 1] (straight alpha), as the
/// learned restorers output it. Returns (B, rows, cols, 5) f32: L, a, b, alpha (0-255),
/// spread.
pub fn reduce_cells(image: &Tensor, factor: usize) -> Result<Tensor> {
    let (_, channels, height, width) = image.dims4()?;
    if channels != 4 || image.dtype() != DType::F32 {
        bail!(
            "reduce_cells takes (B, 4, H, W) f32 RGBA, got {:?} {:?}",
            image.dtype(),
            image.dims()
        );
    }
    if factor == 0 || height % factor != 0 || width % factor != 0 {
        bail!("a {height}x{width} image is not made of {factor}x{factor} cells (rectify it with factor {factor})");
    }
    image
        .contiguous()?
        .apply_op1_no_bwd(&ReduceCells { factor })
}

/// The index of the nearest palette colour in OKLab of every colour, the lowest index on
/// a tie.
///
/// `colours`: (N, C) f32 with C ≥ 3, L a b first (so the output of [`reduce_cells`],
/// flattened to (N, 5), works as it is); `palette`: (K, 3) f32 OKLab, K ≥ 1 (see
/// [`srgb8_to_oklab`]). Returns (N,) u32.
pub fn snap_to_palette(colours: &Tensor, palette: &Tensor) -> Result<Tensor> {
    let (_, width) = colours.dims2()?;
    if width < 3 || colours.dtype() != DType::F32 {
        bail!(
            "snap_to_palette takes (N, C >= 3) f32 colours, got {:?} {:?}",
            colours.dtype(),
            colours.dims()
        );
    }
    match palette.dims() {
        [k, 3] if *k > 0 && palette.dtype() == DType::F32 => {}
        dims => bail!(
            "the palette must be (K >= 1, 3) f32 OKLab, got {:?} {dims:?}",
            palette.dtype()
        ),
    }
    if !palette.device().same_device(colours.device()) {
        bail!(
            "the palette is on {:?} but the colours are on {:?}",
            palette.device(),
            colours.device()
        );
    }
    colours
        .contiguous()?
        .apply_op2_no_bwd(&palette.contiguous()?, &SnapToPalette)
}

/// The custom op of [`reduce_cells`] on the image.
pub(crate) struct ReduceCells {
    pub factor: usize,
}

impl ReduceCells {
    /// (batch, rows, cols) of an image of `shape`.
    pub(crate) fn grid(&self, shape: &Shape) -> Result<(usize, usize, usize)> {
        let (batch, _, height, width) = shape.dims4()?;
        Ok((batch, height / self.factor, width / self.factor))
    }
}

impl CustomOp1 for ReduceCells {
    fn name(&self) -> &'static str {
        "spritedx-reduce-cells"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (batch, rows, cols) = self.grid(layout.shape())?;
        let mut cells = vec![0f32; batch * rows * cols * CELL_VALUES];
        reference::reduce_cells(
            cpu_slice(storage, layout)?,
            batch,
            rows,
            cols,
            self.factor,
            &mut cells,
        )?;
        Ok((
            CpuStorage::F32(cells),
            Shape::from((batch, rows, cols, CELL_VALUES)),
        ))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::reduce_cells(self, storage, layout)
    }
}

/// The custom op of [`snap_to_palette`] on (colours, palette).
pub(crate) struct SnapToPalette;

impl CustomOp2 for SnapToPalette {
    fn name(&self) -> &'static str {
        "spritedx-snap-to-palette"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, stride) = l1.shape().dims2()?;
        let mut out = vec![0u32; n];
        reference::snap_to_palette(cpu_slice(s1, l1)?, stride, cpu_slice(s2, l2)?, &mut out)?;
        Ok((CpuStorage::U32(out), Shape::from(n)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::snap_to_palette(s1, l1, s2, l2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Ottosson's published OKLab of sRGB red and white, to 2e-4 (f32 arithmetic, 4-5
    /// published digits), as spritedx::colour's test checks them.
    #[test]
    fn oklab_matches_ottosson_reference_values() {
        for (rgb, expected) in [
            ([255, 255, 255], [1.0, 0.0, 0.0]),
            ([255, 0, 0], [0.627_955, 0.224_863, 0.125_846]),
        ] {
            let c = srgb8_to_oklab(rgb);
            for (got, want) in c.iter().zip(expected) {
                assert!((got - want).abs() <= 2e-4, "{rgb:?} -> {c:?}");
            }
        }
    }

    /// A 2x1-cell image, f = 5: a red cell with a noisy border pixel and a transparent
    /// cell. Red comes out exactly (the border is outside the interior), alpha is the
    /// median, and the transparent cell's colour is the median of all its pixels.
    #[test]
    fn reduce_cells_keeps_medians_and_ignores_borders() {
        let (f, w, h) = (5usize, 10usize, 5usize);
        let mut image = vec![0f32; 4 * w * h];
        for y in 0..h {
            for x in 0..w {
                let red = x < f;
                // [-1, 1] values; the border column x = 0 is a stray green.
                let px = if x == 0 {
                    [-1.0, 1.0, -1.0, 1.0]
                } else if red {
                    [1.0, -1.0, -1.0, 1.0]
                } else {
                    [-1.0, -1.0, 1.0, -1.0]
                };
                for c in 0..4 {
                    image[c * w * h + y * w + x] = px[c];
                }
            }
        }
        let t = Tensor::from_vec(image, (1, 4, h, w), &Device::Cpu).unwrap();
        let cells = reduce_cells(&t, f)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let red = srgb8_to_oklab([255, 0, 0]);
        let blue = srgb8_to_oklab([0, 0, 255]);
        assert_eq!(&cells[0..5], &[red[0], red[1], red[2], 255.0, 0.0]);
        assert_eq!(&cells[5..10], &[blue[0], blue[1], blue[2], 0.0, 0.0]);
    }

    #[test]
    fn snap_picks_the_nearest_and_the_lowest_index_on_ties() {
        let palette: Vec<f32> = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [255, 0, 0]]
            .iter()
            .flat_map(|&c| srgb8_to_oklab(c))
            .collect();
        let palette = Tensor::from_vec(palette, (4, 3), &Device::Cpu).unwrap();
        let colours: Vec<f32> = [[20, 20, 20], [230, 240, 235], [200, 30, 20]]
            .iter()
            .flat_map(|&c| srgb8_to_oklab(c))
            .chain([f32::NAN, 0.0, 0.0])
            .collect();
        let colours = Tensor::from_vec(colours, (4, 3), &Device::Cpu).unwrap();
        let idx = snap_to_palette(&colours, &palette)
            .unwrap()
            .to_vec1::<u32>()
            .unwrap();
        assert_eq!(idx, [0, 1, 2, 0]);
    }
}

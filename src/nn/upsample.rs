//! Nearest-neighbour 2x upsampling of NCHW or NHWC tensors, with a 2x2 sum-pool backward.
//!
//! candle 0.11 differentiates `upsample_nearest2d` with a grouped convolution, and it
//! *replaces* the input's gradient instead of adding to it, so an input that also feeds
//! another branch loses that branch's gradient (the test below fails with candle's op). Here both passes are one
//! parallel loop over the planes (a sample's channel in NCHW, a sample in NHWC), and the
//! gradient accumulates as usual.

use candle_core::{backend::BackendStorage, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// Where the channels are: NCHW's planes are `(H, W)` of single values, NHWC's are
/// `(H, W)` of C-vectors.
#[derive(Clone, Copy, Debug)]
enum Channels {
    First,
    Last,
}

/// An NCHW or NHWC shape as planes of `(H, W)` pixels of `elem` values each.
#[derive(Clone, Copy, Debug)]
struct Planes {
    planes: usize,
    h: usize,
    w: usize,
    elem: usize,
}

impl Channels {
    fn planes(self, (b, d1, d2, d3): (usize, usize, usize, usize)) -> Planes {
        match self {
            Self::First => Planes { planes: b * d1, h: d2, w: d3, elem: 1 },
            Self::Last => Planes { planes: b, h: d1, w: d2, elem: d3 },
        }
    }

    /// The 4-D shape of `(planes, h, w)` scaled by `scale` ((numerator, denominator)).
    fn scaled(self, (b, d1, d2, d3): (usize, usize, usize, usize), (num, den): (usize, usize)) -> Shape {
        match self {
            Self::First => Shape::from((b, d1, d2 * num / den, d3 * num / den)),
            Self::Last => Shape::from((b, d1 * num / den, d2 * num / den, d3)),
        }
    }
}

/// Each pixel of an `(H, W)` plane becomes a 2x2 block.
struct Upsample2x(Channels);

/// Each 2x2 block of a `(2H, 2W)` plane is summed into one pixel.
struct SumPool2x(Channels);

fn upsample<T: WithDType>(x: &[T], p: Planes) -> Vec<T> {
    let (row, e) = (p.w * p.elem, p.elem);
    let mut out = super::zeroed(p.planes * 4 * p.h * row);
    out.par_chunks_mut(4 * p.h * row).zip(x.par_chunks(p.h * row)).for_each(|(o, x)| {
        for (rows, src) in o.chunks_mut(4 * row).zip(x.chunks(row)) {
            let (top, bottom) = rows.split_at_mut(2 * row);
            for (pair, px) in top.chunks_mut(2 * e).zip(src.chunks(e)) {
                pair[..e].copy_from_slice(px);
                pair[e..].copy_from_slice(px);
            }
            bottom.copy_from_slice(top);
        }
    });
    out
}

fn sum_pool<T: WithDType>(g: &[T], p: Planes) -> Vec<T> {
    let (row, e) = (p.w * p.elem, p.elem);
    let mut out = super::zeroed(p.planes * p.h * row);
    out.par_chunks_mut(p.h * row).zip(g.par_chunks(4 * p.h * row)).for_each(|(o, g)| {
        for (dst, rows) in o.chunks_mut(row).zip(g.chunks(4 * row)) {
            let (top, bottom) = rows.split_at(2 * row);
            for ((d, a), b) in dst.chunks_mut(e).zip(top.chunks(2 * e)).zip(bottom.chunks(2 * e)) {
                for (k, d) in d.iter_mut().enumerate() {
                    *d = a[k] + a[e + k] + b[k] + b[e + k];
                }
            }
        }
    });
    out
}

impl CustomOp1 for Upsample2x {
    fn name(&self) -> &'static str {
        "upsample_nearest_2x"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = layout.shape().dims4()?;
        let p = self.0.planes(dims);
        let out = with_float_slices!(self.name(), storage, [(storage, layout)], |x| upsample(x, p));
        Ok((out, self.0.scaled(dims, (2, 1))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&SumPool2x(self.0))?))
    }
}

impl CustomOp1 for SumPool2x {
    fn name(&self) -> &'static str {
        "sum_pool_2x"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = layout.shape().dims4()?;
        let doubled = self.0.planes(dims);
        if doubled.h % 2 != 0 || doubled.w % 2 != 0 {
            candle_core::bail!("sum_pool_2x: {}x{} is not a 2x upsampled size", doubled.h, doubled.w);
        }
        let p = Planes { h: doubled.h / 2, w: doubled.w / 2, ..doubled };
        let out = with_float_slices!(self.name(), storage, [(storage, layout)], |g| sum_pool(g, p));
        Ok((out, self.0.scaled(dims, (1, 2))))
    }
}

/// Nearest-neighbour 2x upsampling of `x` (B, C, H, W) (differentiable). On the CPU in f32
/// or f64 the op above; elsewhere candle's `upsample_nearest2d`.
pub fn upsample_nearest_2x(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if super::runs_on(x) {
        return x.contiguous()?.apply_op1(Upsample2x(Channels::First));
    }
    x.upsample_nearest2d(2 * h, 2 * w)
}

/// Nearest-neighbour 2x upsampling of channels-last `x` (B, H, W, C) (differentiable); CPU
/// only, f32 or f64.
pub fn upsample_nearest_2x_nhwc(x: &Tensor) -> Result<Tensor> {
    x.dims4()?;
    x.contiguous()?.apply_op1(Upsample2x(Channels::Last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testing::{max_abs_diff, randn};
    use candle_core::Var;

    #[test]
    fn forward_matches_candle_and_the_gradient_is_the_block_sum() {
        // Batch 1 and 2, one channel, odd sizes; f64, tolerance 1e-12.
        for &(b, c, h, w) in &[(1, 1, 1, 1), (2, 3, 5, 4), (1, 2, 3, 7)] {
            let x = Var::from_tensor(&randn((b, c, h, w), 1)).unwrap();
            let ours = upsample_nearest_2x(x.as_tensor()).unwrap();
            let reference = x.as_tensor().upsample_nearest2d(2 * h, 2 * w).unwrap();
            assert!(max_abs_diff(&ours, &reference) < 1e-12, "forward {b}x{c}x{h}x{w}");
            // f(x) = <up(x), r> + <x, s>: x feeds two branches, so its gradient is the 2x2
            // block sums of r plus s (candle's own upsample backward would drop s).
            let r = randn((b, c, 2 * h, 2 * w), 2);
            let s = randn((b, c, h, w), 3);
            let f = (ours.mul(&r).unwrap().sum_all().unwrap() + x.as_tensor().mul(&s).unwrap().sum_all().unwrap()).unwrap();
            let grad = f.backward().unwrap();
            let blocks = r.reshape((b, c, h, 2, w, 2)).unwrap().sum(5).unwrap().sum(3).unwrap();
            let d = max_abs_diff(grad.get(&x).unwrap(), &(blocks + &s).unwrap());
            assert!(d < 1e-12, "gradient {b}x{c}x{h}x{w}: {d}");
        }
    }

    #[test]
    fn channels_last_agrees_with_channels_first() {
        // The NHWC op is the NCHW op under a permutation, forward and gradient; f64,
        // tolerance 1e-12.
        for &(b, c, h, w) in &[(1, 1, 1, 1), (2, 3, 5, 4), (1, 5, 3, 7)] {
            let x = Var::from_tensor(&randn((b, h, w, c), 4)).unwrap();
            let ours = upsample_nearest_2x_nhwc(x.as_tensor()).unwrap();
            let first = upsample_nearest_2x(&x.as_tensor().permute((0, 3, 1, 2)).unwrap()).unwrap().permute((0, 2, 3, 1)).unwrap();
            assert!(max_abs_diff(&ours, &first) < 1e-12, "forward {b}x{h}x{w}x{c}");
            let r = randn((b, 2 * h, 2 * w, c), 5);
            let grad = ours.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
            let blocks = r.reshape((b, h, 2, w, 2, c)).unwrap().sum(4).unwrap().sum(2).unwrap();
            let d = max_abs_diff(grad.get(&x).unwrap(), &blocks);
            assert!(d < 1e-12, "gradient {b}x{h}x{w}x{c}: {d}");
        }
    }
}

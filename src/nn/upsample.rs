//! Nearest-neighbour 2x upsampling of NCHW tensors, with a 2x2 sum-pool backward.
//!
//! candle 0.11 differentiates `upsample_nearest2d` with a grouped convolution, and it
//! *replaces* the input's gradient instead of adding to it, so an input that also feeds
//! another branch loses that branch's gradient (the test below fails with candle's op). Here both passes are one
//! parallel loop over the (sample, channel) planes, and the gradient accumulates as usual.

use candle_core::{backend::BackendStorage, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// Each pixel of an `(H, W)` plane becomes a 2x2 block.
struct Upsample2x;

/// Each 2x2 block of a `(2H, 2W)` plane is summed into one pixel.
struct SumPool2x;

fn upsample<T: WithDType>(x: &[T], (planes, h, w): (usize, usize, usize)) -> Vec<T> {
    let mut out = super::zeroed(planes * 4 * h * w);
    out.par_chunks_mut(4 * h * w).zip(x.par_chunks(h * w)).for_each(|(o, x)| {
        for (rows, src) in o.chunks_mut(4 * w).zip(x.chunks(w)) {
            let (top, bottom) = rows.split_at_mut(2 * w);
            for ((pair, &v), below) in top.chunks_mut(2).zip(src).zip(bottom.chunks_mut(2)) {
                pair.fill(v);
                below.fill(v);
            }
        }
    });
    out
}

fn sum_pool<T: WithDType>(g: &[T], (planes, h, w): (usize, usize, usize)) -> Vec<T> {
    let mut out = super::zeroed(planes * h * w);
    out.par_chunks_mut(h * w).zip(g.par_chunks(4 * h * w)).for_each(|(o, g)| {
        for (dst, rows) in o.chunks_mut(w).zip(g.chunks(4 * w)) {
            let (top, bottom) = rows.split_at(2 * w);
            for ((d, a), b) in dst.iter_mut().zip(top.chunks(2)).zip(bottom.chunks(2)) {
                *d = a[0] + a[1] + b[0] + b[1];
            }
        }
    });
    out
}

/// The planes and the per-plane size of an NCHW layout's storage.
fn planes(layout: &Layout) -> Result<(usize, usize, usize)> {
    let (b, c, h, w) = layout.shape().dims4()?;
    Ok((b * c, h, w))
}

impl CustomOp1 for Upsample2x {
    fn name(&self) -> &'static str {
        "upsample_nearest_2x"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = layout.shape().dims4()?;
        let dims = planes(layout)?;
        let out = match storage.dtype() {
            DType::F32 => CpuStorage::F32(upsample(super::contiguous_slice::<f32>(storage, layout, self.name())?, dims)),
            DType::F64 => CpuStorage::F64(upsample(super::contiguous_slice::<f64>(storage, layout, self.name())?, dims)),
            other => candle_core::bail!("upsample_nearest_2x supports f32 and f64, not {other:?}"),
        };
        Ok((out, Shape::from((b, c, 2 * h, 2 * w))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&SumPool2x)?))
    }
}

impl CustomOp1 for SumPool2x {
    fn name(&self) -> &'static str {
        "sum_pool_2x"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h2, w2) = layout.shape().dims4()?;
        if h2 % 2 != 0 || w2 % 2 != 0 {
            candle_core::bail!("sum_pool_2x: {h2}x{w2} is not a 2x upsampled size");
        }
        let dims = (b * c, h2 / 2, w2 / 2);
        let out = match storage.dtype() {
            DType::F32 => CpuStorage::F32(sum_pool(super::contiguous_slice::<f32>(storage, layout, self.name())?, dims)),
            DType::F64 => CpuStorage::F64(sum_pool(super::contiguous_slice::<f64>(storage, layout, self.name())?, dims)),
            other => candle_core::bail!("sum_pool_2x supports f32 and f64, not {other:?}"),
        };
        Ok((out, Shape::from((b, c, h2 / 2, w2 / 2))))
    }
}

/// Nearest-neighbour 2x upsampling of `x` (B, C, H, W) (differentiable). On the CPU in f32
/// or f64 the op above; elsewhere candle's `upsample_nearest2d`.
pub fn upsample_nearest_2x(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        return x.contiguous()?.apply_op1(Upsample2x);
    }
    x.upsample_nearest2d(2 * h, 2 * w)
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
}

//! GroupNorm followed by SiLU, fused, on NHWC tensors, with a hand-written backward.
//!
//! `out = silu(gamma[c] * (x - mean_g) / sqrt(var_g + eps) + beta[c])`, the mean and the
//! (biased) variance taken over each sample's group of `C / groups` channels and all pixels,
//! as `torch.nn.GroupNorm` does. Composed from candle's small ops, the backward of this pair
//! is a chain of a dozen kernels and costs many times the forward; here the forward is one
//! statistics pass and one output pass, and the backward one statistics pass and one
//! gradient pass, each parallel. Statistics are accumulated in f64.

use candle_core::{backend::BackendStorage, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// The fused op; `x` is `(N, H, W, C)`, `gamma` and `beta` are `(C,)`.
#[derive(Clone, Copy, Debug)]
pub struct GroupNormSilu {
    pub groups: usize,
    pub eps: f64,
}

/// Per-(sample, group) mean and reciprocal standard deviation. Each sample is read once,
/// in memory order, into per-channel sums that are then pooled by group.
fn group_stats<T: WithDType>(x: &[T], n: usize, pixels: usize, c: usize, groups: usize, eps: f64) -> Vec<(f64, f64)> {
    let cg = c / groups;
    let count = (pixels * cg) as f64;
    (0..n)
        .into_par_iter()
        .flat_map_iter(|s| {
            let (mut sum, mut sq) = (vec![0.0f64; c], vec![0.0f64; c]);
            for pixel in x[s * pixels * c..(s + 1) * pixels * c].chunks(c) {
                for ((a, b), &v) in sum.iter_mut().zip(sq.iter_mut()).zip(pixel) {
                    let v = v.to_f64();
                    *a += v;
                    *b += v * v;
                }
            }
            (0..groups)
                .map(|g| {
                    let mean = sum[g * cg..(g + 1) * cg].iter().sum::<f64>() / count;
                    let var = (sq[g * cg..(g + 1) * cg].iter().sum::<f64>() / count - mean * mean).max(0.0);
                    (mean, 1.0 / (var + eps).sqrt())
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn sigmoid(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

/// Element arithmetic in the storage's own precision: f32 data gets f32 `exp`, which is
/// several times cheaper than f64's and as accurate as the data.
trait Element: WithDType {
    /// `silu(x * scale + shift)`.
    fn silu_affine(x: Self, scale: Self, shift: Self) -> Self;
    /// x-hat, and the gradient before SiLU given the gradient after it, with the group's
    /// mean and reciprocal standard deviation in the storage's precision.
    fn norm_silu_grad_t(x: Self, mean: Self, rstd: Self, gamma: Self, beta: Self, dout: Self) -> (Self, Self);
}

impl Element for f32 {
    fn silu_affine(x: f32, scale: f32, shift: f32) -> f32 {
        let y = x * scale + shift;
        y / (1.0 + (-y).exp())
    }

    fn norm_silu_grad_t(x: f32, mean: f32, rstd: f32, gamma: f32, beta: f32, dout: f32) -> (f32, f32) {
        let xhat = (x - mean) * rstd;
        let y = xhat * gamma + beta;
        let s = 1.0 / (1.0 + (-y).exp());
        (xhat, dout * (s + y * s * (1.0 - s)))
    }
}

impl Element for f64 {
    fn silu_affine(x: f64, scale: f64, shift: f64) -> f64 {
        let y = x * scale + shift;
        y * sigmoid(y)
    }

    fn norm_silu_grad_t(x: f64, mean: f64, rstd: f64, gamma: f64, beta: f64, dout: f64) -> (f64, f64) {
        let xhat = (x - mean) * rstd;
        let y = xhat * gamma + beta;
        let s = sigmoid(y);
        (xhat, dout * (s + y * s * (1.0 - s)))
    }
}

/// The forward pass in the storage's own precision (statistics in f64). Per sample in
/// parallel; normalisation and affine are folded into one scale and shift per channel, so
/// the per-pixel loop is a zip over contiguous channels.
fn forward<T: Element>(x: &[T], gamma: &[T], beta: &[T], (n, pixels, c): (usize, usize, usize), op: &GroupNormSilu) -> Vec<T> {
    let stats = group_stats(x, n, pixels, c, op.groups, op.eps);
    let cg = c / op.groups;
    let sample_len = pixels * c;
    let mut out = super::zeroed(x.len());
    out.par_chunks_mut(sample_len.max(1)).zip(x.par_chunks(sample_len.max(1))).enumerate().for_each(|(s, (o, xs))| {
        let (scale, shift): (Vec<T>, Vec<T>) = (0..c)
            .map(|ch| {
                let (mean, rstd) = stats[s * op.groups + ch / cg];
                let scale = rstd * gamma[ch].to_f64();
                (T::from_f64(scale), T::from_f64(beta[ch].to_f64() - mean * scale))
            })
            .unzip();
        for (op, xp) in o.chunks_mut(c).zip(xs.chunks(c)) {
            for (((out, &v), &a), &b) in op.iter_mut().zip(xp).zip(&scale).zip(&shift) {
                *out = T::silu_affine(v, a, b);
            }
        }
    });
    out
}

impl GroupNormSilu {
    fn check(&self, c: usize) -> Result<()> {
        if self.groups == 0 || c % self.groups != 0 {
            candle_core::bail!("group_norm_silu: {c} channels do not split into {} groups", self.groups);
        }
        Ok(())
    }
}

impl CustomOp3 for GroupNormSilu {
    fn name(&self) -> &'static str {
        "group_norm_silu"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, h, w, c) = xl.shape().dims4()?;
        self.check(c)?;
        if gl.shape().elem_count() != c || bl.shape().elem_count() != c {
            candle_core::bail!("group_norm_silu: gamma and beta need {c} entries");
        }
        let dims = (n, h * w, c);
        let out = match xs.dtype() {
            DType::F32 => CpuStorage::F32(forward(super::contiguous_slice::<f32>(xs, xl, self.name())?, super::contiguous_slice(gs, gl, self.name())?, super::contiguous_slice(bs, bl, self.name())?, dims, self)),
            DType::F64 => CpuStorage::F64(forward(super::contiguous_slice::<f64>(xs, xl, self.name())?, super::contiguous_slice(gs, gl, self.name())?, super::contiguous_slice(bs, bl, self.name())?, dims, self)),
            other => candle_core::bail!("group_norm_silu supports f32 and f64, not {other:?}"),
        };
        Ok((out, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // One op computes all three gradients, packed as [dx..., dgamma..., dbeta...].
        let c = gamma.elem_count();
        let params = Tensor::stack(&[gamma.flatten_all()?, beta.flatten_all()?], 0)?;
        let packed = x.contiguous()?.apply_op3_no_bwd(&params, &grad.contiguous()?, &GroupNormSiluGrad(*self))?;
        let len = x.elem_count();
        Ok((
            Some(packed.narrow(0, 0, len)?.reshape(x.shape())?),
            Some(packed.narrow(0, len, c)?.reshape(gamma.shape())?),
            Some(packed.narrow(0, len + c, c)?.reshape(beta.shape())?),
        ))
    }
}

/// The backward of [`GroupNormSilu`]: inputs `x`, `[gamma; beta]` as `(2, C)` and the
/// output gradient; output the input, gamma and beta gradients packed in one vector.
struct GroupNormSiluGrad(GroupNormSilu);

/// All three gradients: with `dy` the gradient before SiLU,
/// `dgamma = sum dy * xhat`, `dbeta = sum dy` (over samples and pixels), and
/// `dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))` per group, `dxhat = dy * gamma`.
///
/// Work is per sample (parallel), and everything that depends only on the (sample,
/// channel) is expanded into per-channel vectors first, so the per-pixel loops are plain
/// zips over contiguous channels without divisions or table lookups (the compiler
/// vectorises them, except the `exp`). Sums are accumulated in f64.
fn backward<T: Element>(x: &[T], params: &[T], dout: &[T], (n, pixels, c): (usize, usize, usize), op: &GroupNormSilu) -> Vec<T> {
    let (gamma, beta) = params.split_at(c);
    let groups = op.groups;
    let cg = c / groups;
    let stats = group_stats(x, n, pixels, c, groups, op.eps);
    let sample_len = pixels * c;
    let count = (pixels * cg) as f64;
    let mut out = super::zeroed(x.len() + 2 * c);
    let (dx, dparams) = out.split_at_mut(x.len());
    // Per sample: x-hat and dy into scratch, the per-channel sums of dy and dy * x-hat,
    // then dx from them; returns the sums for the parameter gradients.
    let sums: Vec<(Vec<f64>, Vec<f64>)> = dx
        .par_chunks_mut(sample_len)
        .enumerate()
        .map(|(s, dx)| {
            let base = s * sample_len;
            let (x, dout) = (&x[base..base + sample_len], &dout[base..base + sample_len]);
            let mean: Vec<T> = (0..c).map(|ch| T::from_f64(stats[s * groups + ch / cg].0)).collect();
            let rstd: Vec<f64> = (0..c).map(|ch| stats[s * groups + ch / cg].1).collect();
            let rstd_t: Vec<T> = rstd.iter().map(|&r| T::from_f64(r)).collect();
            let mut xhat: Vec<T> = super::zeroed(sample_len);
            let mut dy: Vec<T> = super::zeroed(sample_len);
            let (mut sum_dy, mut sum_dy_xhat) = (vec![0.0f64; c], vec![0.0f64; c]);
            for (((xp, dp), (xh, d)), _) in x.chunks(c).zip(dout.chunks(c)).zip(xhat.chunks_mut(c).zip(dy.chunks_mut(c))).zip(0..pixels) {
                for ch in 0..c {
                    let (h, g) = T::norm_silu_grad_t(xp[ch], mean[ch], rstd_t[ch], gamma[ch], beta[ch], dp[ch]);
                    xh[ch] = h;
                    d[ch] = g;
                }
                for ((sd, sdx), (&g, &h)) in sum_dy.iter_mut().zip(sum_dy_xhat.iter_mut()).zip(d.iter().zip(xh.iter())) {
                    let g = g.to_f64();
                    *sd += g;
                    *sdx += g * h.to_f64();
                }
            }
            // dx = k1 * dy - k0 - k2 * xhat per channel, with the group means of dxhat and
            // dxhat * xhat folded in.
            let mut group_means = vec![(0.0f64, 0.0f64); groups];
            for ch in 0..c {
                let g = &mut group_means[ch / cg];
                g.0 += gamma[ch].to_f64() * sum_dy[ch] / count;
                g.1 += gamma[ch].to_f64() * sum_dy_xhat[ch] / count;
            }
            let k1: Vec<T> = (0..c).map(|ch| T::from_f64(rstd[ch] * gamma[ch].to_f64())).collect();
            let k0: Vec<T> = (0..c).map(|ch| T::from_f64(rstd[ch] * group_means[ch / cg].0)).collect();
            let k2: Vec<T> = (0..c).map(|ch| T::from_f64(rstd[ch] * group_means[ch / cg].1)).collect();
            for ((o, d), xh) in dx.chunks_mut(c).zip(dy.chunks(c)).zip(xhat.chunks(c)) {
                for ch in 0..c {
                    o[ch] = k1[ch] * d[ch] - k0[ch] - k2[ch] * xh[ch];
                }
            }
            (sum_dy, sum_dy_xhat)
        })
        .collect();
    for ch in 0..c {
        dparams[ch] = T::from_f64(sums.iter().map(|(_, sum_dy_xhat)| sum_dy_xhat[ch]).sum());
        dparams[c + ch] = T::from_f64(sums.iter().map(|(sum_dy, _)| sum_dy[ch]).sum());
    }
    out
}

impl CustomOp3 for GroupNormSiluGrad {
    fn name(&self) -> &'static str {
        "group_norm_silu_grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ps: &CpuStorage,
        pl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, h, w, c) = xl.shape().dims4()?;
        let dims = (n, h * w, c);
        let len = n * h * w * c + 2 * c;
        let out = match xs.dtype() {
            DType::F32 => CpuStorage::F32(backward(super::contiguous_slice::<f32>(xs, xl, self.name())?, super::contiguous_slice(ps, pl, self.name())?, super::contiguous_slice(gs, gl, self.name())?, dims, &self.0)),
            DType::F64 => CpuStorage::F64(backward(super::contiguous_slice::<f64>(xs, xl, self.name())?, super::contiguous_slice(ps, pl, self.name())?, super::contiguous_slice(gs, gl, self.name())?, dims, &self.0)),
            other => candle_core::bail!("group_norm_silu supports f32 and f64, not {other:?}"),
        };
        Ok((out, Shape::from(len)))
    }
}

/// GroupNorm + SiLU on an NHWC tensor (differentiable). On CPU the fused op; elsewhere the
/// same arithmetic from candle's ops.
pub fn group_norm_silu(x: &Tensor, gamma: &Tensor, beta: &Tensor, groups: usize, eps: f64) -> Result<Tensor> {
    if x.device().is_cpu() {
        return x.contiguous()?.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, GroupNormSilu { groups, eps });
    }
    reference_group_norm_silu(x, gamma, beta, groups, eps)
}

/// GroupNorm + SiLU from candle's composed ops: the reference the fused op is tested
/// against, and the path on devices without the fused op.
pub fn reference_group_norm_silu(x: &Tensor, gamma: &Tensor, beta: &Tensor, groups: usize, eps: f64) -> Result<Tensor> {
    let (n, h, w, c) = x.dims4()?;
    let g = x.reshape((n, h * w, groups, c / groups))?;
    let mean = g.mean_keepdim(3)?.mean_keepdim(1)?;
    let centred = g.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(3)?.mean_keepdim(1)?;
    let xhat = centred.broadcast_div(&(var + eps)?.sqrt()?)?.reshape((n, h, w, c))?;
    let y = xhat.broadcast_mul(gamma)?.broadcast_add(beta)?;
    candle_nn::ops::silu(&y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testing::{check_input_gradient, max_abs_diff, randn};
    use candle_core::Var;

    #[test]
    fn forward_and_backward_match_the_composed_reference() {
        // Odd sizes, batch 1, one group and one channel per group; f64, tolerance 1e-9.
        for &(n, h, w, c, groups) in &[(1, 3, 5, 4, 2), (2, 4, 4, 8, 8), (3, 1, 7, 6, 1), (2, 5, 3, 12, 4)] {
            let x = Var::from_tensor(&(randn((n, h, w, c), 1) * 2.0).unwrap().affine(1.0, 0.5).unwrap()).unwrap();
            let gamma = Var::from_tensor(&randn(c, 2)).unwrap();
            let beta = Var::from_tensor(&randn(c, 3)).unwrap();
            let r = randn((n, h, w, c), 4);
            let ours = group_norm_silu(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), groups, 1e-5).unwrap();
            let reference = reference_group_norm_silu(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), groups, 1e-5).unwrap();
            assert!(max_abs_diff(&ours, &reference) < 1e-9, "forward {n}x{h}x{w}x{c}/{groups}");
            let g1 = ours.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = reference.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, v) in [("x", &x), ("gamma", &gamma), ("beta", &beta)] {
                let d = max_abs_diff(g1.get(v).unwrap(), g2.get(v).unwrap());
                assert!(d < 1e-9, "{name} gradient differs by {d} for {n}x{h}x{w}x{c}/{groups}");
            }
        }
    }

    #[test]
    fn input_gradient_matches_finite_differences() {
        // Central differences, step 1e-5, f64; tolerance 1e-6.
        let (n, h, w, c, groups) = (1, 2, 3, 4, 2);
        let (gamma, beta, r) = (randn(c, 6), randn(c, 7), randn((n, h, w, c), 8));
        let f = |x: &Tensor| group_norm_silu(x, &gamma, &beta, groups, 1e-5).unwrap().mul(&r).unwrap().sum_all().unwrap();
        check_input_gradient(&randn((n, h, w, c), 5), f, 1e-6);
    }

    #[test]
    fn f32_forward_matches_the_reference() {
        // The f32 path computes the activation in f32: tolerance 1e-5 absolute.
        let x = randn((2, 3, 5, 8), 9).to_dtype(DType::F32).unwrap();
        let (gamma, beta) = (randn(8, 10).to_dtype(DType::F32).unwrap(), randn(8, 11).to_dtype(DType::F32).unwrap());
        let ours = group_norm_silu(&x, &gamma, &beta, 4, 1e-5).unwrap().to_dtype(DType::F64).unwrap();
        let reference = reference_group_norm_silu(&x, &gamma, &beta, 4, 1e-5).unwrap().to_dtype(DType::F64).unwrap();
        let d = max_abs_diff(&ours, &reference);
        assert!(d < 1e-5, "{d}");
    }

    #[test]
    fn f32_backward_matches_the_f64_reference() {
        // f32 arithmetic with f64 sums: tolerance 1e-4 times the gradient's largest value,
        // on the benchmark's channel counts and a ragged one.
        for &(n, h, w, c, groups) in &[(2, 8, 8, 64, 8), (3, 5, 7, 12, 3)] {
            let x = (randn((n, h, w, c), 12) * 1.5).unwrap();
            let (gamma, beta, r) = (randn(c, 13), randn(c, 14), randn((n, h, w, c), 15));
            let grads = |dtype: DType| {
                let vars = [&x, &gamma, &beta].map(|t| Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap());
                let out = group_norm_silu(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor(), groups, 1e-5).unwrap();
                let g = out.mul(&r.to_dtype(dtype).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
                vars.map(|v| g.get(&v).unwrap().to_dtype(DType::F64).unwrap())
            };
            let (ours, reference) = (grads(DType::F32), grads(DType::F64));
            for (name, (a, b)) in ["x", "gamma", "beta"].iter().zip(ours.iter().zip(&reference)) {
                let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap().max(1.0);
                let d = max_abs_diff(a, b);
                assert!(d < 1e-4 * scale, "{name}: f32 gradient off by {d} (scale {scale}) for {n}x{h}x{w}x{c}/{groups}");
            }
        }
    }

    #[test]
    fn groups_must_divide_channels() {
        let x = randn((1, 2, 2, 6), 1);
        assert!(group_norm_silu(&x, &randn(6, 2), &randn(6, 3), 4, 1e-5).is_err());
    }
}

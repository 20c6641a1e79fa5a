//! GroupNorm, alone or followed by SiLU, fused, on NHWC tensors, with a hand-written backward.
//!
//! `out = silu(gamma[c] * (x - mean_g) / sqrt(var_g + eps) + beta[c])`, or the same without
//! `silu`, the mean and the (biased) variance taken over each sample's group of
//! `C / groups` channels and all pixels, as `torch.nn.GroupNorm` does. Composed from
//! candle's small ops, the backward costs many times the forward; here the forward is one
//! statistics pass and one output pass, and the backward one statistics pass and one
//! gradient pass, each parallel. Statistics are accumulated in f64.
//!
//! The per-pixel loops are compiled for AVX-512 and AVX2 as well as the baseline, and the
//! best one the CPU has is picked at run time (`multiversion`): the binary is built for
//! baseline x86-64, whose SSE2 lanes made this op 2-4x slower than PyTorch's.

use candle_core::{backend::BackendStorage, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};
use multiversion::multiversion;
use rayon::prelude::*;

/// The fused op; `x` is `(N, H, W, C)`, `gamma` and `beta` are `(C,)`.
#[derive(Clone, Copy, Debug)]
struct GroupNormOp {
    groups: usize,
    eps: f64,
    /// Whether SiLU follows the normalisation.
    silu: bool,
}

/// Per-(sample, group) mean and reciprocal standard deviation. Each sample is read once,
/// in memory order, into per-channel sums that are then pooled by group.
fn group_stats<T: WithDType>(x: &[T], n: usize, pixels: usize, c: usize, groups: usize, eps: f64) -> Vec<(f64, f64)> {
    let cg = c / groups;
    let count = (pixels * cg) as f64;
    (0..n)
        .into_par_iter()
        .flat_map_iter(|s| {
            let (sum, sq) = channel_sums(&x[s * pixels * c..(s + 1) * pixels * c], c);
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

/// Per-channel sums of the values and of their squares over one sample's pixels, in f64.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn channel_sums<T: WithDType>(sample: &[T], c: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut sum, mut sq) = (vec![0.0f64; c], vec![0.0f64; c]);
    for pixel in sample.chunks(c) {
        for ((a, b), &v) in sum.iter_mut().zip(sq.iter_mut()).zip(pixel) {
            let v = v.to_f64();
            *a += v;
            *b += v * v;
        }
    }
    (sum, sq)
}

#[inline(always)]
fn sigmoid(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

/// Element arithmetic in the storage's own precision: f32 data gets f32 `exp`, which is
/// several times cheaper than f64's and as accurate as the data.
trait Element: WithDType {
    /// `silu(x * scale + shift)`.
    fn silu_affine(x: Self, scale: Self, shift: Self) -> Self;
    /// x-hat, and the gradient before the affine map given the gradient after it (no SiLU).
    #[inline(always)]
    fn norm_grad_t(x: Self, mean: Self, rstd: Self, dout: Self) -> (Self, Self) {
        ((x - mean) * rstd, dout)
    }
    /// x-hat, and the gradient before SiLU given the gradient after it, with the group's
    /// mean and reciprocal standard deviation in the storage's precision.
    fn norm_silu_grad_t(x: Self, mean: Self, rstd: Self, gamma: Self, beta: Self, dout: Self) -> (Self, Self);
}

/// `e^x` in f32 from arithmetic alone, so that loops calling it vectorise (libm's `expf`
/// is a call per element; it was most of the fused op's time). Cody-Waite reduction to
/// `x = n ln 2 + r`, `|r| <= ln 2 / 2`, Cephes' degree-6 polynomial for `e^r`, and `2^n`
/// built in the exponent bits. Relative error below 3e-7 (tested); arguments are clamped
/// to [-87, 88], where the result stays a normal f32, which is all SiLU needs.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer, in SIMD lanes.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.max(-87.0).min(88.0);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1) * r + 5.000_000_1e-1;
    let e_r = p * r * r + r + 1.0;
    e_r * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

impl Element for f32 {
    #[inline(always)]
    fn silu_affine(x: f32, scale: f32, shift: f32) -> f32 {
        let y = x * scale + shift;
        y / (1.0 + exp_f32(-y))
    }

    #[inline(always)]
    fn norm_silu_grad_t(x: f32, mean: f32, rstd: f32, gamma: f32, beta: f32, dout: f32) -> (f32, f32) {
        let xhat = (x - mean) * rstd;
        let y = xhat * gamma + beta;
        let s = 1.0 / (1.0 + exp_f32(-y));
        (xhat, dout * (s + y * s * (1.0 - s)))
    }
}

impl Element for f64 {
    #[inline(always)]
    fn silu_affine(x: f64, scale: f64, shift: f64) -> f64 {
        let y = x * scale + shift;
        y * sigmoid(y)
    }

    #[inline(always)]
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
fn forward<T: Element>(x: &[T], gamma: &[T], beta: &[T], (n, pixels, c): (usize, usize, usize), op: &GroupNormOp) -> Vec<T> {
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
        if op.silu {
            affine_pixels::<T, true>(o, xs, &scale, &shift);
        } else {
            affine_pixels::<T, false>(o, xs, &scale, &shift);
        }
    });
    out
}

/// `out = x * scale + shift`, then SiLU when `SILU`, pixel by pixel, with per-channel
/// `scale` and `shift`.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn affine_pixels<T: Element, const SILU: bool>(out: &mut [T], x: &[T], scale: &[T], shift: &[T]) {
    let c = scale.len();
    for (op, xp) in out.chunks_mut(c).zip(x.chunks(c)) {
        for (((out, &v), &a), &b) in op.iter_mut().zip(xp).zip(scale).zip(shift) {
            *out = if SILU { T::silu_affine(v, a, b) } else { v * a + b };
        }
    }
}

impl GroupNormOp {
    fn check(&self, c: usize) -> Result<()> {
        if self.groups == 0 || c % self.groups != 0 {
            candle_core::bail!("group_norm: {c} channels do not split into {} groups", self.groups);
        }
        Ok(())
    }
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        if self.silu {
            "group_norm_silu"
        } else {
            "group_norm"
        }
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
            candle_core::bail!("{}: gamma and beta need {c} entries", self.name());
        }
        let dims = (n, h * w, c);
        let out = match xs.dtype() {
            DType::F32 => CpuStorage::F32(forward(super::contiguous_slice::<f32>(xs, xl, self.name())?, super::contiguous_slice(gs, gl, self.name())?, super::contiguous_slice(bs, bl, self.name())?, dims, self)),
            DType::F64 => CpuStorage::F64(forward(super::contiguous_slice::<f64>(xs, xl, self.name())?, super::contiguous_slice(gs, gl, self.name())?, super::contiguous_slice(bs, bl, self.name())?, dims, self)),
            other => candle_core::bail!("{} supports f32 and f64, not {other:?}", self.name()),
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
        let packed = x.contiguous()?.apply_op3_no_bwd(&params, &grad.contiguous()?, &GroupNormGrad(*self))?;
        let len = x.elem_count();
        Ok((
            Some(packed.narrow(0, 0, len)?.reshape(x.shape())?),
            Some(packed.narrow(0, len, c)?.reshape(gamma.shape())?),
            Some(packed.narrow(0, len + c, c)?.reshape(beta.shape())?),
        ))
    }
}

/// The backward of [`GroupNormOp`]: inputs `x`, `[gamma; beta]` as `(2, C)` and the
/// output gradient; output the input, gamma and beta gradients packed in one vector.
struct GroupNormGrad(GroupNormOp);

/// All three gradients: with `dy` the gradient before SiLU (the output gradient without it),
/// `dgamma = sum dy * xhat`, `dbeta = sum dy` (over samples and pixels), and
/// `dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))` per group, `dxhat = dy * gamma`.
///
/// Work is per sample (parallel), and everything that depends only on the (sample,
/// channel) is expanded into per-channel vectors first, so the per-pixel loops are plain
/// zips over contiguous channels without divisions or table lookups (the compiler
/// vectorises them, `exp` included). Sums are accumulated in f64.
fn backward<T: Element>(x: &[T], params: &[T], dout: &[T], (n, pixels, c): (usize, usize, usize), op: &GroupNormOp) -> Vec<T> {
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
            let params = (&mean[..], &rstd_t[..], gamma, beta);
            let (sum_dy, sum_dy_xhat) = if op.silu {
                pre_activation_gradient::<T, true>(x, dout, params, &mut xhat, &mut dy)
            } else {
                pre_activation_gradient::<T, false>(x, dout, params, &mut xhat, &mut dy)
            };
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
            input_gradient(dx, &dy, &xhat, (&k1, &k0, &k2));
            (sum_dy, sum_dy_xhat)
        })
        .collect();
    for ch in 0..c {
        dparams[ch] = T::from_f64(sums.iter().map(|(_, sum_dy_xhat)| sum_dy_xhat[ch]).sum());
        dparams[c + ch] = T::from_f64(sums.iter().map(|(sum_dy, _)| sum_dy[ch]).sum());
    }
    out
}

/// One sample's x-hat and gradient before the activation (`dy`; with `SILU` false, the
/// output gradient itself), pixel by pixel from `x` and the output gradient, with
/// per-channel `(mean, rstd, gamma, beta)`; returns the per-channel sums of `dy` and
/// `dy * x-hat` in f64.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn pre_activation_gradient<T: Element, const SILU: bool>(x: &[T], dout: &[T], (mean, rstd, gamma, beta): (&[T], &[T], &[T], &[T]), xhat: &mut [T], dy: &mut [T]) -> (Vec<f64>, Vec<f64>) {
    let c = mean.len();
    let (mut sum_dy, mut sum_dy_xhat) = (vec![0.0f64; c], vec![0.0f64; c]);
    // Zips, not indexing: bounds checks would keep the loops from vectorising.
    let params = mean.iter().zip(rstd).zip(gamma.iter().zip(beta));
    for ((xp, dp), (xh, d)) in x.chunks(c).zip(dout.chunks(c)).zip(xhat.chunks_mut(c).zip(dy.chunks_mut(c))) {
        for (((&xv, &dv), (h, g)), ((&m, &r), (&ga, &be))) in xp.iter().zip(dp).zip(xh.iter_mut().zip(d.iter_mut())).zip(params.clone()) {
            (*h, *g) = if SILU { T::norm_silu_grad_t(xv, m, r, ga, be, dv) } else { T::norm_grad_t(xv, m, r, dv) };
        }
        for ((sd, sdx), (&g, &h)) in sum_dy.iter_mut().zip(sum_dy_xhat.iter_mut()).zip(d.iter().zip(xh.iter())) {
            let g = g.to_f64();
            *sd += g;
            *sdx += g * h.to_f64();
        }
    }
    (sum_dy, sum_dy_xhat)
}

/// `dx = k1 * dy - k0 - k2 * x-hat`, pixel by pixel, with per-channel `(k1, k0, k2)`.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx512dq", "x86_64+avx2+fma"))]
fn input_gradient<T: Element>(dx: &mut [T], dy: &[T], xhat: &[T], (k1, k0, k2): (&[T], &[T], &[T])) {
    let c = k1.len();
    for ((o, d), xh) in dx.chunks_mut(c).zip(dy.chunks(c)).zip(xhat.chunks(c)) {
        for (((o, &d), &xh), ((&a, &b), &e)) in o.iter_mut().zip(d).zip(xh).zip(k1.iter().zip(k0).zip(k2)) {
            *o = a * d - b - e * xh;
        }
    }
}

impl CustomOp3 for GroupNormGrad {
    fn name(&self) -> &'static str {
        "group_norm_grad"
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
            other => candle_core::bail!("group_norm supports f32 and f64, not {other:?}"),
        };
        Ok((out, Shape::from(len)))
    }
}

/// GroupNorm + SiLU on an NHWC tensor (differentiable). On CPU the fused op; elsewhere the
/// same arithmetic from candle's ops.
pub fn group_norm_silu(x: &Tensor, gamma: &Tensor, beta: &Tensor, groups: usize, eps: f64) -> Result<Tensor> {
    if x.device().is_cpu() {
        return x.contiguous()?.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, GroupNormOp { groups, eps, silu: true });
    }
    reference_group_norm_silu(x, gamma, beta, groups, eps)
}

/// GroupNorm (with its affine map, no activation) on an NHWC tensor (differentiable). On
/// CPU the fused op; elsewhere candle's ops.
pub fn group_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, groups: usize, eps: f64) -> Result<Tensor> {
    if x.device().is_cpu() {
        return x.contiguous()?.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, GroupNormOp { groups, eps, silu: false });
    }
    reference_group_norm(x, gamma, beta, groups, eps)
}

/// GroupNorm + SiLU from candle's composed ops: the reference the fused op is tested
/// against, and the path on devices without the fused op.
pub fn reference_group_norm_silu(x: &Tensor, gamma: &Tensor, beta: &Tensor, groups: usize, eps: f64) -> Result<Tensor> {
    candle_nn::ops::silu(&reference_group_norm(x, gamma, beta, groups, eps)?)
}

/// GroupNorm from candle's composed ops, NHWC: the reference of [`group_norm`].
pub fn reference_group_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, groups: usize, eps: f64) -> Result<Tensor> {
    let (n, h, w, c) = x.dims4()?;
    let g = x.reshape((n, h * w, groups, c / groups))?;
    let mean = g.mean_keepdim(3)?.mean_keepdim(1)?;
    let centred = g.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(3)?.mean_keepdim(1)?;
    let xhat = centred.broadcast_div(&(var + eps)?.sqrt()?)?.reshape((n, h, w, c))?;
    xhat.broadcast_mul(gamma)?.broadcast_add(beta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testing::{check_input_gradient, max_abs_diff, randn};
    use candle_core::Var;

    #[test]
    fn forward_and_backward_match_the_composed_reference() {
        // Odd sizes, batch 1, one group and one channel per group, with and without SiLU;
        // f64, tolerance 1e-9.
        type Norm = fn(&Tensor, &Tensor, &Tensor, usize, f64) -> Result<Tensor>;
        let variants: [(Norm, Norm); 2] = [(group_norm_silu, reference_group_norm_silu), (group_norm, reference_group_norm)];
        for (&(n, h, w, c, groups), (fused, composed)) in [(1, 3, 5, 4, 2), (2, 4, 4, 8, 8), (3, 1, 7, 6, 1), (2, 5, 3, 12, 4)].iter().flat_map(|s| variants.iter().map(move |v| (s, v))) {
            let x = Var::from_tensor(&(randn((n, h, w, c), 1) * 2.0).unwrap().affine(1.0, 0.5).unwrap()).unwrap();
            let gamma = Var::from_tensor(&randn(c, 2)).unwrap();
            let beta = Var::from_tensor(&randn(c, 3)).unwrap();
            let r = randn((n, h, w, c), 4);
            let ours = fused(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), groups, 1e-5).unwrap();
            let reference = composed(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), groups, 1e-5).unwrap();
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
        let f = |x: &Tensor| group_norm(x, &gamma, &beta, groups, 1e-5).unwrap().mul(&r).unwrap().sum_all().unwrap();
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

    proptest::proptest! {
        /// The vectorisable exponential against libm's, relative error below 3e-7, over
        /// the whole range it keeps (and the clamp beyond it).
        #[test]
        fn exp_f32_matches_libm(x in -87.0f32..88.0) {
            let (ours, libm) = (exp_f32(x), x.exp());
            proptest::prop_assert!(((ours - libm) / libm).abs() < 3e-7, "e^{} = {} vs {}", x, ours, libm);
        }
    }

    #[test]
    fn exp_f32_clamps_and_hits_exact_points() {
        assert_eq!(exp_f32(0.0), 1.0);
        assert!((exp_f32(1.0) - std::f32::consts::E).abs() < 1e-6);
        assert_eq!(exp_f32(-1000.0), exp_f32(-87.0));
        assert!(exp_f32(1000.0).is_finite() && exp_f32(1000.0) == exp_f32(88.0));
    }

    #[test]
    fn groups_must_divide_channels() {
        let x = randn((1, 2, 2, 6), 1);
        assert!(group_norm_silu(&x, &randn(6, 2), &randn(6, 3), 4, 1e-5).is_err());
    }
}

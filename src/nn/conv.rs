//! 3x3 convolution (zero padding 1, stride 1 or more) on NHWC tensors as im2col + matmul.
//!
//! `im2col` turns an `(N, H, W, C)` input into `(N*H*W, 9*C)` columns, column
//! `(ky * 3 + kx) * C + c` of row `(n, y, x)` holding `input[n, y + ky - 1, x + kx - 1, c]`
//! (zero outside the image). The convolution is then `columns.matmul(weight)` with the
//! weight stored as `(9*C_in, C_out)`. The transpose of `im2col` is `col2im`, which sums
//! each column entry back onto the input pixel it came from (written as a gather, so it
//! parallelises without atomics).
//!
//! [`Conv3x3`] runs the whole convolution as one op with its own backward rather than
//! letting autograd differentiate `im2col` then `matmul`: autograd would store the
//! columns' gradient (9x the input) through a fresh zero tensor and an addition, which cost
//! as much as the matmuls. The weight gradient is `im2col(x)ᵀ · dy` (the columns are
//! recomputed, cheaper than keeping them); at stride 1 the input gradient is itself a 3x3
//! convolution of `dy` with the kernel flipped and its channel axes swapped, at larger
//! strides `col2im(dy · Wᵀ)`.

use candle_core::{backend::BackendStorage, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// Geometry of an NHWC input and the stride of the 3x3 window over it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geometry {
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    stride: usize,
}

impl Geometry {
    /// Output height and width: zero padding 1, so stride 1 keeps the size.
    fn out_hw(&self) -> (usize, usize) {
        ((self.h - 1) / self.stride + 1, (self.w - 1) / self.stride + 1)
    }

    fn out_pixels(&self) -> usize {
        let (oh, ow) = self.out_hw();
        self.n * oh * ow
    }
}

/// Unfolds 3x3 neighbourhoods: `(N, H, W, C)` to `(N*OH*OW, 9*C)`.
struct Im2Col3x3 {
    stride: usize,
}

/// Folds columns back onto the input: `(N*OH*OW, 9*C)` to `(N, H, W, C)`, summing
/// overlapping entries.
struct Col2Im3x3(Geometry);

/// Each output row is written once (no zero fill first): per kernel row `ky`, the three
/// taps `kx` read neighbouring input pixels, which NHWC stores contiguously, so a band is
/// one copy of up to `3 * C` values plus zeros where it leaves the image.
fn im2col<T: WithDType>(input: &[T], g: Geometry) -> Vec<T> {
    let (oh, ow) = g.out_hw();
    let row = 9 * g.c;
    let len = g.out_pixels() * row;
    let mut out: Vec<T> = Vec::with_capacity(len);
    let zero = std::mem::MaybeUninit::new(T::zero());
    out.spare_capacity_mut()[..len].par_chunks_mut(row).enumerate().for_each(|(p, cols)| {
        let (n, oy, ox) = (p / (oh * ow), (p / ow) % oh, p % ow);
        for (ky, band) in cols.chunks_mut(3 * g.c).enumerate() {
            let sy = (oy * g.stride + ky) as isize - 1;
            if sy < 0 || sy >= g.h as isize {
                band.fill(zero);
                continue;
            }
            // Taps kx read input column sx0 + kx; those inside the image are kx_lo..kx_hi
            // (sx0 >= -1 and sx0 <= w - 2, so the range is never empty).
            let sx0 = (ox * g.stride) as isize - 1;
            let kx_lo = usize::from(sx0 < 0);
            let kx_hi = (g.w as isize - sx0).min(3) as usize;
            let src = ((n * g.h + sy as usize) * g.w + (sx0 + kx_lo as isize) as usize) * g.c;
            let (before, rest) = band.split_at_mut(kx_lo * g.c);
            let (inside, after) = rest.split_at_mut((kx_hi - kx_lo) * g.c);
            before.fill(zero);
            // (`write_copy_of_slice` would say the same but needs Rust 1.93; the MSRV is 1.85.)
            let copied = &input[src..src + inside.len()];
            for (slot, &v) in inside.iter_mut().zip(copied) {
                slot.write(v);
            }
            after.fill(zero);
        }
    });
    // SAFETY: the loop above wrote all `len` elements: every row's three bands are each
    // filled with zeros, or split into zeros, a copy of the input and zeros.
    unsafe { out.set_len(len) };
    out
}

fn col2im<T: WithDType>(cols: &[T], g: Geometry) -> Vec<T> {
    let (oh, ow) = g.out_hw();
    let row = 9 * g.c;
    let mut out = super::zeroed(g.n * g.h * g.w * g.c);
    out.par_chunks_mut(g.c).enumerate().for_each(|(p, pixel)| {
        let (n, y, x) = (p / (g.h * g.w), (p / g.w) % g.h, p % g.w);
        // Input pixel (y, x) sits at offset (ky, kx) of output pixel (oy, ox) when
        // oy * stride + ky - 1 = y, and likewise for x.
        for ky in 0..3 {
            let ty = y as isize + 1 - ky as isize;
            if ty < 0 || ty % g.stride as isize != 0 || ty as usize / g.stride >= oh {
                continue;
            }
            let oy = ty as usize / g.stride;
            for kx in 0..3 {
                let tx = x as isize + 1 - kx as isize;
                if tx < 0 || tx % g.stride as isize != 0 || tx as usize / g.stride >= ow {
                    continue;
                }
                let ox = tx as usize / g.stride;
                let src = ((n * oh + oy) * ow + ox) * row + (ky * 3 + kx) * g.c;
                for (acc, &v) in pixel.iter_mut().zip(&cols[src..src + g.c]) {
                    *acc += v;
                }
            }
        }
    });
    out
}

/// The columns of an `(N, H, W, C)` input storage; `op` names the caller in errors.
fn im2col_storage(storage: &CpuStorage, layout: &Layout, g: Geometry, op: &str) -> Result<CpuStorage> {
    match storage.dtype() {
        DType::F32 => Ok(CpuStorage::F32(im2col(super::contiguous_slice::<f32>(storage, layout, op)?, g))),
        DType::F64 => Ok(CpuStorage::F64(im2col(super::contiguous_slice::<f64>(storage, layout, op)?, g))),
        other => candle_core::bail!("{op} supports f32 and f64, not {other:?}"),
    }
}

impl CustomOp1 for Im2Col3x3 {
    fn name(&self) -> &'static str {
        "im2col3x3"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, h, w, c) = layout.shape().dims4()?;
        let g = Geometry { n, h, w, c, stride: self.stride };
        Ok((im2col_storage(storage, layout, g, self.name())?, Shape::from((g.out_pixels(), 9 * c))))
    }
}

impl CustomOp1 for Col2Im3x3 {
    fn name(&self) -> &'static str {
        "col2im3x3"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.0;
        let (rows, cols) = layout.shape().dims2()?;
        if rows != g.out_pixels() || cols != 9 * g.c {
            candle_core::bail!("col2im3x3: columns {rows}x{cols} do not match {g:?}");
        }
        let shape = Shape::from((g.n, g.h, g.w, g.c));
        match storage.dtype() {
            DType::F32 => Ok((CpuStorage::F32(col2im(super::contiguous_slice::<f32>(storage, layout, self.name())?, g)), shape)),
            DType::F64 => Ok((CpuStorage::F64(col2im(super::contiguous_slice::<f64>(storage, layout, self.name())?, g)), shape)),
            other => candle_core::bail!("col2im3x3 supports f32 and f64, not {other:?}"),
        }
    }
}

/// The whole convolution `im2col(x) · W (+ bias)`, `x` `(N, H, W, C_in)`, `W`
/// `(9*C_in, C_out)` and the bias `(C_out,)` or `(N, C_out)`, with the backward of the module docs. A
/// [`CustomOp2`] without bias, a [`CustomOp3`] with it.
struct Conv3x3Op {
    stride: usize,
}

impl Conv3x3Op {
    const NAME: &'static str = "conv3x3";

    fn forward(&self, x: &CpuStorage, x_layout: &Layout, w: &CpuStorage, w_layout: &Layout, bias: Option<(&CpuStorage, &Layout)>) -> Result<(CpuStorage, Shape)> {
        let (n, h, wd, c) = x_layout.shape().dims4()?;
        let (k, c_out) = w_layout.shape().dims2()?;
        if k != 9 * c {
            candle_core::bail!("conv3x3: a weight of {k}x{c_out} does not fit {c} input channels (expected {}x{c_out})", 9 * c);
        }
        let g = Geometry { n, h, w: wd, c, stride: self.stride };
        let cols = im2col_storage(x, x_layout, g, Self::NAME)?;
        let rows = g.out_pixels();
        let mut y = cols.matmul(w, (1, rows, c_out, k), &Layout::contiguous((rows, k)), w_layout)?;
        let (oh, ow) = g.out_hw();
        if let Some((b, b_layout)) = bias {
            // One bias row for all pixels, or one per sample.
            let rows_per_bias_row = match b_layout.shape().elem_count() {
                len if len == c_out => rows,
                len if len == n * c_out => oh * ow,
                len => candle_core::bail!("conv3x3: {len} bias entries for {c_out} output channels (give {c_out}, or {c_out} per sample)"),
            };
            match &mut y {
                CpuStorage::F32(y) => super::bias::add_to_rows(y, super::contiguous_slice(b, b_layout, Self::NAME)?, c_out, rows_per_bias_row),
                CpuStorage::F64(y) => super::bias::add_to_rows(y, super::contiguous_slice(b, b_layout, Self::NAME)?, c_out, rows_per_bias_row),
                _ => unreachable!("the matmul of f32 or f64 columns"),
            }
        }
        Ok((y, Shape::from((n, oh, ow, c_out))))
    }

    /// The gradients of the input, the weight and (when there is one) the bias, `bias_rows`
    /// rows of it (1, or one per sample). An input or weight outside the graph (one that
    /// tracks no op: the network's input, a frozen weight) gets no gradient, which saves
    /// its matmul.
    fn backward(&self, x: &Tensor, w: &Tensor, grad_res: &Tensor, bias_rows: Option<usize>) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (want_x, want_w) = (x.track_op(), w.track_op());
        // Detached: these products are gradients, not part of the graph being differentiated.
        let (x, w) = (x.detach(), w.detach());
        let (n, h, wd, c) = x.dims4()?;
        let c_out = w.dim(1)?;
        let dy = grad_res.contiguous()?;
        let dy_rows = dy.reshape(((), c_out))?;
        let grad_w = if want_w { Some(im2col3x3(&x, self.stride)?.t()?.matmul(&dy_rows)?) } else { None };
        let grad_x = if !want_x {
            None
        } else if self.stride == 1 {
            // grad_x[y, x, i] = sum over (ky, kx, o) of dy[y + 1 - ky, x + 1 - kx, o] W[ky, kx, i, o]:
            // a convolution of dy whose offset (2 - ky, 2 - kx) carries W[ky, kx]ᵀ. Reversing
            // the nine offsets flips both axes.
            let reversed = Tensor::new(&[8u32, 7, 6, 5, 4, 3, 2, 1, 0], w.device())?;
            let flipped = w.reshape((9, c, c_out))?.index_select(&reversed, 0)?.transpose(1, 2)?.contiguous()?.reshape((9 * c_out, c))?;
            Some(im2col3x3(&dy, 1)?.matmul(&flipped)?.reshape((n, h, wd, c))?)
        } else {
            let g = Geometry { n, h, w: wd, c, stride: self.stride };
            Some(dy_rows.matmul(&w.t()?)?.apply_op1_no_bwd(&Col2Im3x3(g))?)
        };
        let grad_bias = bias_rows.map(|groups| super::bias::sum_rows(&dy_rows, groups)).transpose()?;
        Ok((grad_x, grad_w, grad_bias))
    }
}

impl CustomOp2 for Conv3x3Op {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_layout: &Layout, w: &CpuStorage, w_layout: &Layout) -> Result<(CpuStorage, Shape)> {
        self.forward(x, x_layout, w, w_layout, None)
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (grad_x, grad_w, _) = self.backward(x, w, grad_res, None)?;
        Ok((grad_x, grad_w))
    }
}

impl CustomOp3 for Conv3x3Op {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_layout: &Layout, w: &CpuStorage, w_layout: &Layout, b: &CpuStorage, b_layout: &Layout) -> Result<(CpuStorage, Shape)> {
        self.forward(x, x_layout, w, w_layout, Some((b, b_layout)))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, b: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let bias_rows = b.elem_count() / w.dim(1)?;
        let (grad_x, grad_w, grad_b) = self.backward(x, w, grad_res, Some(bias_rows))?;
        Ok((grad_x, grad_w, grad_b.map(|g| g.reshape(b.shape())).transpose()?))
    }
}

/// A 3x3 convolution (zero padding 1) of NHWC `x` `(N, H, W, C_in)` with `weight`
/// `(9*C_in, C_out)` (the layout of [`Conv3x3::weight_from_oihw`]) plus an optional `bias`,
/// `(C_out,)` or one row per sample `(N, C_out)`: `(N, OH, OW, C_out)`. Differentiable in
/// all three; CPU only, f32 or f64.
pub fn conv3x3(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, stride: usize) -> Result<Tensor> {
    if stride == 0 {
        candle_core::bail!("conv3x3: the stride must be at least 1");
    }
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    match bias {
        Some(b) => x.apply_op3(&weight, &b.contiguous()?, Conv3x3Op { stride }),
        None => x.apply_op2(&weight, Conv3x3Op { stride }),
    }
}

/// The 3x3 neighbourhoods (zero padding 1) of an NHWC tensor at the given stride, as
/// `(N*OH*OW, 9*C)` columns. Not differentiable: only [`Conv3x3Op`]'s backward uses them.
fn im2col3x3(x: &Tensor, stride: usize) -> Result<Tensor> {
    if stride == 0 {
        candle_core::bail!("im2col3x3: the stride must be at least 1");
    }
    x.contiguous()?.apply_op1_no_bwd(&Im2Col3x3 { stride })
}

/// A 3x3 convolution, zero padding 1, on NHWC activations.
#[derive(Clone, Debug)]
pub struct Conv3x3 {
    /// `(9 * C_in, C_out)`, row `(ky * 3 + kx) * C_in + c_in`.
    pub weight: Tensor,
    /// `(C_out,)`.
    pub bias: Option<Tensor>,
    /// 1 keeps the size; 2 halves it (rounding up).
    pub stride: usize,
}

impl Conv3x3 {
    /// Takes `weight` (`(9*C_in, C_out)`) and optional `bias` (`(C_out,)`) from a VarBuilder.
    pub fn new(vb: candle_nn::VarBuilder, c_in: usize, c_out: usize, bias: bool, stride: usize) -> Result<Self> {
        let bound = 1.0 / ((9 * c_in) as f64).sqrt();
        let init = candle_nn::Init::Uniform { lo: -bound, up: bound };
        let weight = vb.get_with_hints((9 * c_in, c_out), "weight", init)?;
        let bias = if bias { Some(vb.get_with_hints(c_out, "bias", init)?) } else { None };
        Ok(Self { weight, bias, stride })
    }

    /// Converts a PyTorch/candle `(C_out, C_in, 3, 3)` kernel to this layout.
    pub fn weight_from_oihw(oihw: &Tensor) -> Result<Tensor> {
        let (c_out, c_in, kh, kw) = oihw.dims4()?;
        if (kh, kw) != (3, 3) {
            candle_core::bail!("expected a 3x3 kernel, got {kh}x{kw}");
        }
        // (O, I, ky, kx) -> (ky, kx, I, O) -> (9*I, O)
        oihw.permute((2, 3, 1, 0))?.contiguous()?.reshape((9 * c_in, c_out))
    }

    /// `x`: `(N, H, W, C_in)` -> `(N, OH, OW, C_out)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        conv3x3(x, &self.weight, self.bias.as_ref(), self.stride)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testing::{check_input_gradient, max_abs_diff, randn};
    use candle_core::{Device, Var};

    fn case(n: usize, h: usize, w: usize, ci: usize, co: usize, seed: u64) -> (Tensor, Tensor, Tensor) {
        (randn((n, h, w, ci), seed), randn((co, ci, 3, 3), seed + 1), randn(co, seed + 2))
    }

    /// candle's own conv2d on NCHW, as the reference, returned in NHWC.
    fn reference(x: &Tensor, k: &Tensor, b: &Tensor, stride: usize) -> Tensor {
        let y = x.permute((0, 3, 1, 2)).unwrap().contiguous().unwrap().conv2d(k, 1, stride, 1, 1).unwrap();
        y.broadcast_add(&b.reshape((1, b.dim(0).unwrap(), 1, 1)).unwrap()).unwrap().permute((0, 2, 3, 1)).unwrap()
    }

    #[test]
    fn forward_matches_candle_conv2d() {
        // Odd sizes, batch 1 and 3, one channel; f64, tolerance 1e-10.
        for &(n, h, w, ci, co) in &[(1, 1, 1, 1, 1), (1, 5, 7, 3, 4), (3, 4, 3, 1, 2), (2, 6, 6, 8, 5)] {
            for stride in [1, 2] {
                let (x, k, b) = case(n, h, w, ci, co, 7);
                let conv = Conv3x3 { weight: Conv3x3::weight_from_oihw(&k).unwrap(), bias: Some(b.clone()), stride };
                let d = max_abs_diff(&conv.forward(&x).unwrap(), &reference(&x, &k, &b, stride));
                assert!(d < 1e-10, "{n}x{h}x{w}x{ci}->{co} stride {stride}: {d}");
            }
        }
    }

    #[test]
    fn backward_matches_candle_autograd() {
        // Gradients of <conv(x), r> for input, weight and bias, against candle's conv2d
        // autograd; f64, tolerance 1e-9.
        for &(n, h, w, ci, co, stride) in &[(1, 5, 7, 3, 4, 1), (2, 3, 4, 2, 3, 1), (1, 5, 7, 3, 4, 2), (2, 6, 4, 2, 3, 2)] {
            let (x, k, b) = case(n, h, w, ci, co, 11);
            let (xv, kv, bv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&k).unwrap(), Var::from_tensor(&b).unwrap());
            let ours = Conv3x3 { weight: Conv3x3::weight_from_oihw(kv.as_tensor()).unwrap(), bias: Some(bv.as_tensor().clone()), stride };
            let out = ours.forward(xv.as_tensor()).unwrap();
            let r = randn(out.shape(), 99);
            let g_ours = out.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
            let g_ref = reference(xv.as_tensor(), kv.as_tensor(), bv.as_tensor(), stride).mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, v) in [("input", &xv), ("weight", &kv), ("bias", &bv)] {
                let d = max_abs_diff(g_ours.get(v).unwrap(), g_ref.get(v).unwrap());
                assert!(d < 1e-9, "{name} gradient differs by {d}");
            }
        }
    }

    #[test]
    fn per_sample_bias_matches_a_broadcast_addition() {
        // A bias row per sample (as a ResBlock's timestep embedding adds), forward and the
        // gradients of input, weight and bias against candle's conv2d and broadcast_add
        // under autograd; f64, tolerance 1e-9. 300 pixels per sample straddle the bias
        // op's row blocks.
        for &(n, h, w, ci, co, stride) in &[(3, 4, 5, 2, 3, 1), (2, 15, 20, 2, 4, 1), (2, 5, 5, 3, 2, 2)] {
            let (x, k, _) = case(n, h, w, ci, co, 13);
            let b = randn((n, co), 14);
            let (xv, kv, bv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&k).unwrap(), Var::from_tensor(&b).unwrap());
            let out = conv3x3(xv.as_tensor(), &Conv3x3::weight_from_oihw(kv.as_tensor()).unwrap(), Some(bv.as_tensor()), stride).unwrap();
            let zero = Tensor::zeros(co, DType::F64, &Device::Cpu).unwrap();
            let reference = reference(xv.as_tensor(), kv.as_tensor(), &zero, stride).broadcast_add(&bv.as_tensor().reshape((n, 1, 1, co)).unwrap()).unwrap();
            assert!(max_abs_diff(&out, &reference) < 1e-9, "forward {n}x{h}x{w}x{ci}->{co} stride {stride}");
            let r = randn(out.shape(), 98);
            let g_ours = out.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
            let g_ref = reference.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, v) in [("input", &xv), ("weight", &kv), ("bias", &bv)] {
                let d = max_abs_diff(g_ours.get(v).unwrap(), g_ref.get(v).unwrap());
                assert!(d < 1e-9, "{name} gradient differs by {d}");
            }
        }
    }

    #[test]
    fn input_and_weight_gradients_match_finite_differences() {
        // Central differences, step 1e-5, f64; tolerance 1e-6.
        let (x, k, b) = case(1, 3, 4, 2, 2, 3);
        let conv = Conv3x3 { weight: Conv3x3::weight_from_oihw(&k).unwrap(), bias: Some(b), stride: 1 };
        let r = randn((1, 3, 4, 2), 98);
        check_input_gradient(&x, |x| conv.forward(x).unwrap().mul(&r).unwrap().sum_all().unwrap(), 1e-6);
        // The weight gradient too, at both strides (the op's own backward, not autograd's).
        for stride in [1, 2] {
            let r = randn(conv3x3(&x, &conv.weight, None, stride).unwrap().shape(), 97);
            check_input_gradient(&conv.weight, |w| conv3x3(&x, w, None, stride).unwrap().mul(&r).unwrap().sum_all().unwrap(), 1e-6);
        }
    }

    #[test]
    fn f32_is_supported_and_other_dtypes_and_shapes_are_refused() {
        let x = Tensor::ones((1, 2, 2, 1), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(im2col3x3(&x, 1).unwrap().dims(), &[4, 9]);
        assert_eq!(im2col3x3(&x, 2).unwrap().dims(), &[1, 9]);
        let weight = Tensor::ones((9, 3), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(conv3x3(&x, &weight, None, 1).unwrap().dims(), &[1, 2, 2, 3]);
        assert_eq!(conv3x3(&x, &weight, None, 2).unwrap().dims(), &[1, 1, 1, 3]);
        let bad = Tensor::ones((1, 2, 2, 1), DType::U8, &Device::Cpu).unwrap();
        assert!(im2col3x3(&bad, 1).is_err());
        assert!(im2col3x3(&x, 0).is_err());
        assert!(conv3x3(&bad, &weight.to_dtype(DType::U8).unwrap(), None, 1).is_err());
        assert!(conv3x3(&x, &weight, None, 0).is_err());
        let wrong_weight = Tensor::ones((18, 3), DType::F32, &Device::Cpu).unwrap();
        let err = conv3x3(&x, &wrong_weight, None, 1).unwrap_err().to_string();
        assert!(err.contains("does not fit 1 input channels"), "{err}");
        let wrong_bias = Tensor::ones(2, DType::F32, &Device::Cpu).unwrap();
        let err = conv3x3(&x, &weight, Some(&wrong_bias), 1).unwrap_err().to_string();
        assert!(err.contains("2 bias entries for 3 output channels"), "{err}");
    }
}

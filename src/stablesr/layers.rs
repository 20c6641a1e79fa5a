//! The building blocks shared by StableSR's diffusion UNet and its structure encoder
//! (IceClear/StableSR `ldm/modules/diffusionmodules/openaimodel.py`, `attention.py`,
//! `spade.py`), each taking its weights by the checkpoint's own key names.
//!
//! Every block runs its arithmetic through [`ops`], the one place where the
//! implementation of an op (convolution, normalisation, activation, linear map,
//! attention) and the layout of the feature maps are chosen: channels-last with the fast
//! custom ops of [`crate::nn`] on the CPU in f32, channels-first with candle's own ops
//! elsewhere. All of them have autograd.

use super::struct_encoder::StructFeatures;
use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

/// The ops every block uses. Each is composed from candle ops that have a backward pass, or
/// is one of [`crate::nn`]'s custom ops with its own: candle_nn's fused
/// `softmax_last_dim` and `layer_norm` have none and would silently cut gradients during
/// training, so they are not used.
///
/// Feature maps are 4-D in the layout [`channels_last`] gives for them; the networks'
/// entry points convert from and to channels-first ([`from_nchw`], [`to_nchw`]), and the
/// blocks in between touch a map's axes only through the functions here.
pub mod ops {
    use candle_core::{DType, Result, Tensor, D};

    /// Whether the networks keep `x`'s feature maps channels-last, (B, H, W, C): exactly
    /// when the fast CPU ops of [`crate::nn`] run them (f32 on the CPU), which work on
    /// NHWC so that a convolution is one matmul over pixels and no op between two of them
    /// transposes. Elsewhere channels-first, (B, C, H, W), candle's own layout: CUDA has
    /// fast convolutions of its own, and the custom ops are CPU-only.
    pub fn channels_last(x: &Tensor) -> bool {
        x.device().is_cpu() && x.dtype() == DType::F32
    }

    /// A channels-first map (B, C, H, W) in the networks' layout.
    pub fn from_nchw(x: &Tensor) -> Result<Tensor> {
        if channels_last(x) {
            x.permute((0, 2, 3, 1))?.contiguous()
        } else {
            Ok(x.clone())
        }
    }

    /// A map in the networks' layout as channels-first (B, C, H, W).
    pub fn to_nchw(x: &Tensor) -> Result<Tensor> {
        if channels_last(x) {
            x.permute((0, 3, 1, 2))?.contiguous()
        } else {
            Ok(x.clone())
        }
    }

    /// (height, width) of a map.
    pub fn spatial_size(x: &Tensor) -> Result<(usize, usize)> {
        let (_, d1, d2, d3) = x.dims4()?;
        Ok(if channels_last(x) { (d1, d2) } else { (d2, d3) })
    }

    /// Maps of the same size joined along their channels, in order.
    pub fn cat_channels(maps: &[&Tensor]) -> Result<Tensor> {
        let Some(first) = maps.first() else {
            candle_core::bail!("cat_channels needs at least one map");
        };
        Tensor::cat(maps, if channels_last(first) { 3 } else { 1 })
    }

    /// A map as its pixels' feature vectors, (B, H*W, C), row by row: the transformers'
    /// tokens. Channels-last this is a view.
    pub fn to_tokens(x: &Tensor) -> Result<Tensor> {
        if channels_last(x) {
            let (b, h, w, c) = x.dims4()?;
            x.reshape((b, h * w, c))
        } else {
            x.flatten_from(2)?.transpose(1, 2)?.contiguous()
        }
    }

    /// Tokens (B, height*width, C) back to a map.
    pub fn from_tokens(tokens: &Tensor, height: usize, width: usize) -> Result<Tensor> {
        let (b, _, c) = tokens.dims3()?;
        if channels_last(tokens) {
            tokens.reshape((b, height, width, c))
        } else {
            tokens.transpose(1, 2)?.reshape((b, c, height, width))
        }
    }

    /// 2-D convolution of the map `x` with `weight` (C_out, C_in, kH, kW), plus `bias`:
    /// (C_out) for every sample, or (B, C_out) one row per sample.
    ///
    /// Channels-last, 3x3 kernels with padding 1 run as im2col + one matmul with the bias
    /// added inside the op ([`crate::nn::conv::conv3x3`]), and 1x1 kernels as one matmul:
    /// candle's CPU convolution backward is a direct-loop transposed convolution, several
    /// times slower to train. Other kernels go through candle's convolution.
    pub fn conv2d(x: &Tensor, weight: &Tensor, bias: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
        let (c_out, c_in, kh, kw) = weight.dims4()?;
        if !channels_last(x) {
            return conv2d_nchw(x, weight, bias, stride, padding);
        }
        if (kh, kw, padding) == (3, 3, 1) {
            let w = crate::nn::conv::Conv3x3::weight_from_oihw(weight)?;
            return crate::nn::conv::conv3x3(x, &w, Some(bias), stride);
        }
        if (kh, kw, stride, padding) == (1, 1, 1, 0) {
            let (b, h, wd, _) = x.dims4()?;
            let y = x.reshape((b * h * wd, c_in))?.matmul(&weight.reshape((c_out, c_in))?.t()?)?;
            if bias.elem_count() == c_out {
                return crate::nn::bias::add_bias(&y, bias)?.reshape((b, h, wd, c_out));
            }
            return y.reshape((b, h * wd, c_out))?.broadcast_add(&bias.reshape((b, 1, c_out))?)?.reshape((b, h, wd, c_out));
        }
        from_nchw(&conv2d_nchw(&to_nchw(x)?, weight, bias, stride, padding)?)
    }

    /// [`conv2d`] on channels-first `x` with candle's convolution.
    fn conv2d_nchw(x: &Tensor, weight: &Tensor, bias: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
        let c_out = weight.dim(0)?;
        let y = x.conv2d(weight, padding, stride, 1, 1)?;
        y.broadcast_add(&bias.reshape((bias.elem_count() / c_out, c_out, 1, 1))?)
    }

    /// Group normalisation of the map `x` over `num_groups` groups of channels, computed
    /// in f32 (as StableSR's GroupNorm32), then a per-channel affine map.
    pub fn group_norm(x: &Tensor, num_groups: usize, eps: f64, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
        if channels_last(x) {
            // The fused op ([`crate::nn::norm`]): composed, the normalisation is a dozen
            // small ops forward and more backward.
            return crate::nn::norm::group_norm(x, weight, bias, num_groups, eps);
        }
        let (batch, channels, height, width) = x.dims4()?;
        if num_groups == 0 || channels % num_groups != 0 {
            candle_core::bail!("group norm: {channels} channels do not split into {num_groups} groups");
        }
        let x_dtype = x.dtype();
        let grouped = x.to_dtype(DType::F32)?.reshape((batch, num_groups, ()))?;
        let group_len = grouped.dim(2)? as f64;
        let mean = (grouped.sum_keepdim(2)? / group_len)?;
        let centred = grouped.broadcast_sub(&mean)?;
        let variance = (centred.sqr()?.sum_keepdim(2)? / group_len)?;
        let normed = centred
            .broadcast_div(&(variance + eps)?.sqrt()?)?
            .to_dtype(x_dtype)?
            .reshape((batch, channels, height, width))?;
        normed
            .broadcast_mul(&weight.reshape((1, channels, 1, 1))?)?
            .broadcast_add(&bias.reshape((1, channels, 1, 1))?)
    }

    /// [`group_norm`] followed by [`silu`], the pair at the head of every ResBlock layer
    /// stack (one op, so that a fused implementation can replace it).
    pub fn group_norm_silu(x: &Tensor, num_groups: usize, eps: f64, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
        if channels_last(x) {
            // The fused op: one pass forward, one backward.
            return crate::nn::norm::group_norm_silu(x, weight, bias, num_groups, eps);
        }
        silu(&group_norm(x, num_groups, eps, weight, bias)?)
    }

    /// Layer normalisation over the last dimension, then a per-feature affine map.
    pub fn layer_norm(x: &Tensor, eps: f64, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
        if crate::nn::runs_on(x) {
            return crate::nn::rowwise::layer_norm_last_dim(x, weight, bias, eps);
        }
        let x_dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let len = x.dim(D::Minus1)? as f64;
        let mean = (x.sum_keepdim(D::Minus1)? / len)?;
        let centred = x.broadcast_sub(&mean)?;
        let variance = (centred.sqr()?.sum_keepdim(D::Minus1)? / len)?;
        centred
            .broadcast_div(&(variance + eps)?.sqrt()?)?
            .to_dtype(x_dtype)?
            .broadcast_mul(weight)?
            .broadcast_add(bias)
    }

    /// `x * sigmoid(x)`.
    pub fn silu(x: &Tensor) -> Result<Tensor> {
        x.silu()
    }

    /// `max(x, 0)`.
    pub fn relu(x: &Tensor) -> Result<Tensor> {
        x.relu()
    }

    /// GEGLU over the last dimension of `x` (.., 2F), `[value | gate]`: `value *
    /// gelu(gate)` with the exact (erf-based) GELU, torch's `F.gelu` default.
    pub fn geglu(x: &Tensor) -> Result<Tensor> {
        if crate::nn::runs_on(x) {
            return crate::nn::rowwise::geglu_last_dim(x);
        }
        let half = x.dim(D::Minus1)? / 2;
        x.narrow(D::Minus1, 0, half)? * x.narrow(D::Minus1, half, half)?.gelu_erf()?
    }

    /// `x @ weight^T + bias` over the last dimension of `x` (any number of leading
    /// dimensions); `weight` is (out, in) as in torch's `nn.Linear`.
    pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let dims = x.dims();
        let (rows, features) = match dims {
            [] => candle_core::bail!("linear expects at least one dimension"),
            [leading @ .., last] => (leading.iter().product::<usize>(), *last),
        };
        let (out_features, _) = weight.dims2()?;
        let y = x.reshape((rows, features))?.matmul(&weight.t()?)?;
        let y = match bias {
            // Its gradient's column sums in parallel ([`crate::nn::bias`]).
            Some(bias) if crate::nn::runs_on(&y) => crate::nn::bias::add_bias(&y, bias)?,
            Some(bias) => y.broadcast_add(bias)?,
            None => y,
        };
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("checked non-empty") = out_features;
        y.reshape(out_dims)
    }

    /// Softmax attention `softmax(q k^T * scale) v` for `q` (N, Tq, d), `k` and `v`
    /// (N, Tk, d); returns (N, Tq, d). The softmax is taken in f32.
    pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
        let q = q.contiguous()?;
        let k = k.contiguous()?;
        let v = v.contiguous()?;
        let scores = (q.matmul(&k.t()?)? * scale)?;
        let weights = softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(v.dtype())?;
        weights.matmul(&v)
    }

    /// Softmax over the last dimension.
    fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
        if crate::nn::runs_on(x) {
            return crate::nn::rowwise::softmax_last_dim(x);
        }
        let shifted = x.broadcast_sub(&x.max_keepdim(D::Minus1)?)?;
        let exp = shifted.exp()?;
        exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)
    }

    /// Nearest-neighbour 2x upsampling of the map `x` ([`crate::nn::upsample`]: a parallel
    /// sum-pool backward that accumulates, where candle's replaces).
    pub fn upsample_nearest_2x(x: &Tensor) -> Result<Tensor> {
        if channels_last(x) {
            crate::nn::upsample::upsample_nearest_2x_nhwc(x)
        } else {
            crate::nn::upsample::upsample_nearest_2x(x)
        }
    }
}

/// GroupNorm32's settings: 32 groups, eps 1e-5 (`normalization()` in openaimodel).
const GROUP_NORM32_GROUPS: usize = 32;
const GROUP_NORM32_EPS: f64 = 1e-5;
/// The transformer's `Normalize`: 32 groups, eps 1e-6.
const TRANSFORMER_NORM_EPS: f64 = 1e-6;
/// torch's `nn.LayerNorm` default eps.
const LAYER_NORM_EPS: f64 = 1e-5;
/// SPADE's hidden width, hard-coded in StableSR's `spade.py`.
const SPADE_HIDDEN: usize = 128;
/// The timestep embedding's lowest frequency is 1 / MAX_PERIOD.
const TIMESTEP_MAX_PERIOD: f64 = 10000.0;

/// A 2-D convolution with bias (`weight`, `bias`).
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    /// A `kernel` x `kernel` convolution from `in_channels` to `out_channels`.
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        Ok(Self {
            weight: vb.get((out_channels, in_channels, kernel, kernel), "weight")?,
            bias: vb.get(out_channels, "bias")?,
            stride,
            padding,
        })
    }

    /// 3x3, stride 1, padding 1: the shape-preserving convolution.
    pub fn same3x3(vb: VarBuilder, in_channels: usize, out_channels: usize) -> Result<Self> {
        Self::new(vb, in_channels, out_channels, 3, 1, 1)
    }

    /// A map of C_in channels -> C_out channels, (H', W').
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::conv2d(x, &self.weight, &self.bias, self.stride, self.padding)
    }

    /// [`Self::forward`] with `shift` (B, C_out) added to each sample's channels: the
    /// addition rides on the convolution's own bias, with no pass of its own.
    pub fn forward_shifted(&self, x: &Tensor, shift: &Tensor) -> Result<Tensor> {
        ops::conv2d(x, &self.weight, &shift.broadcast_add(&self.bias)?, self.stride, self.padding)
    }
}

/// A 1-D convolution with kernel size 1 (openaimodel's `conv_nd(1, .., 1)`; weight
/// (C_out, C_in, 1)) over tokens: a linear map of each token's channels.
#[derive(Debug, Clone)]
pub struct PointwiseConv1d {
    weight: Tensor,
    bias: Tensor,
}

impl PointwiseConv1d {
    /// `vb` holds `weight` (out, in, 1) and `bias` (out).
    pub fn new(vb: VarBuilder, in_channels: usize, out_channels: usize) -> Result<Self> {
        Ok(Self {
            weight: vb.get((out_channels, in_channels, 1), "weight")?,
            bias: vb.get(out_channels, "bias")?,
        })
    }

    /// Tokens `x` (B, T, C_in) -> (B, T, C_out).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::linear(x, &self.weight.squeeze(2)?, Some(&self.bias))
    }
}

/// A linear map (torch `nn.Linear`: `weight` (out, in), optional `bias`).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// `vb` holds `weight` (out, in) and, when `bias` is set, `bias` (out).
    pub fn new(
        vb: VarBuilder,
        in_features: usize,
        out_features: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = vb.get((out_features, in_features), "weight")?;
        let bias = if bias {
            Some(vb.get(out_features, "bias")?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// Over the last dimension of `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::linear(x, &self.weight, self.bias.as_ref())
    }
}

/// Group normalisation with a learned affine map (`weight`, `bias`).
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    num_groups: usize,
    eps: f64,
}

impl GroupNorm {
    /// `num_groups` must divide `channels`.
    pub fn new(vb: VarBuilder, num_groups: usize, channels: usize, eps: f64) -> Result<Self> {
        if num_groups == 0 || channels % num_groups != 0 {
            candle_core::bail!(
                "group norm at {}: {channels} channels do not split into {num_groups} groups",
                vb.prefix()
            );
        }
        Ok(Self {
            weight: vb.get(channels, "weight")?,
            bias: vb.get(channels, "bias")?,
            num_groups,
            eps,
        })
    }

    /// StableSR's GroupNorm32: 32 groups, eps 1e-5.
    pub fn group_norm32(vb: VarBuilder, channels: usize) -> Result<Self> {
        Self::new(vb, GROUP_NORM32_GROUPS, channels, GROUP_NORM32_EPS)
    }

    /// `x` a map.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::group_norm(x, self.num_groups, self.eps, &self.weight, &self.bias)
    }

    /// The normalisation followed by SiLU.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        ops::group_norm_silu(x, self.num_groups, self.eps, &self.weight, &self.bias)
    }
}

/// Layer normalisation over the last dimension (eps 1e-5, torch's default).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    /// `vb` holds `weight` and `bias` (features).
    pub fn new(vb: VarBuilder, features: usize) -> Result<Self> {
        Ok(Self {
            weight: vb.get(features, "weight")?,
            bias: vb.get(features, "bias")?,
        })
    }

    /// Over the last dimension of `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::layer_norm(x, LAYER_NORM_EPS, &self.weight, &self.bias)
    }
}

/// Sinusoidal timestep embeddings (B, `dim`) for `timesteps` (B,) of any dtype:
/// `[cos(t f_i), sin(t f_i)]` with `f_i = exp(-ln(10000) i / (dim / 2))`, zero-padded
/// when `dim` is odd. The frequencies are computed step by step in f32, as torch does,
/// because at t = 999 a one-ulp difference in a frequency moves the phase by ~1e-4.
pub fn timestep_embedding(timesteps: &Tensor, dim: usize) -> Result<Tensor> {
    let batch = timesteps
        .dims1()
        .map_err(|e| e.context("timesteps must be a 1-D tensor with one entry per sample"))?;
    let half = dim / 2;
    let log_period = -(TIMESTEP_MAX_PERIOD.ln() as f32);
    let freqs: Vec<f32> = (0..half)
        .map(|i| (i as f32 * log_period / half as f32).exp())
        .collect();
    let device = timesteps.device();
    let freqs = Tensor::from_vec(freqs, (1, half), device)?;
    let args = timesteps
        .to_dtype(DType::F32)?
        .reshape((batch, 1))?
        .broadcast_mul(&freqs)?;
    let embedding = Tensor::cat(&[args.cos()?, args.sin()?], 1)?;
    if dim % 2 == 1 {
        Tensor::cat(
            &[embedding, Tensor::zeros((batch, 1), DType::F32, device)?],
            1,
        )
    } else {
        Ok(embedding)
    }
}

/// The number of attention heads and the width of each for `channels`: a fixed head
/// width when `num_head_channels` is given (heads = channels / width), else `num_heads`
/// heads. `what` names the block in errors.
pub fn attention_heads(
    channels: usize,
    num_heads: Option<usize>,
    num_head_channels: Option<usize>,
    what: &str,
) -> Result<(usize, usize)> {
    let (heads, head_width) = match (num_head_channels, num_heads) {
        (Some(width), _) => (channels / width, width),
        (None, Some(heads)) => (heads, channels / heads),
        (None, None) => {
            candle_core::bail!("{what}: set num_heads or num_head_channels in the config")
        }
    };
    if heads == 0 || heads * head_width != channels {
        candle_core::bail!(
            "{what}: {channels} channels do not split into heads \
             (num_heads {num_heads:?}, num_head_channels {num_head_channels:?})"
        );
    }
    Ok((heads, head_width))
}

/// Reads a head-count setting from a config, where StableSR writes -1 for "not set".
pub(crate) fn deserialize_unset_negative<'de, De: serde::Deserializer<'de>>(
    deserializer: De,
) -> std::result::Result<Option<usize>, De::Error> {
    let value: Option<i64> = serde::Deserialize::deserialize(deserializer)?;
    Ok(value.filter(|&n| n > 0).map(|n| n as usize))
}

/// The part of openaimodel's ResBlock shared with ResBlockDual: `in_layers` (norm, SiLU,
/// conv3x3), `emb_layers` (SiLU, linear) added per channel, `out_layers` (norm, SiLU,
/// dropout, conv3x3), and the skip connection (identity, or a 1x1 conv when the channel
/// count changes). Dropout is 0 in StableSR and is left out.
#[derive(Debug, Clone)]
struct ResBlockCore {
    in_norm: GroupNorm,
    in_conv: Conv2d,
    emb_proj: Linear,
    out_norm: GroupNorm,
    out_conv: Conv2d,
    skip: Option<Conv2d>,
}

impl ResBlockCore {
    fn new(
        vb: &VarBuilder,
        channels: usize,
        emb_channels: usize,
        out_channels: usize,
        out_norm_groups: usize,
    ) -> Result<Self> {
        let skip = if out_channels == channels {
            None
        } else {
            Some(Conv2d::new(
                vb.pp("skip_connection"),
                channels,
                out_channels,
                1,
                1,
                0,
            )?)
        };
        Ok(Self {
            in_norm: GroupNorm::group_norm32(vb.pp("in_layers.0"), channels)?,
            in_conv: Conv2d::same3x3(vb.pp("in_layers.2"), channels, out_channels)?,
            emb_proj: Linear::new(vb.pp("emb_layers.1"), emb_channels, out_channels, true)?,
            out_norm: GroupNorm::new(
                vb.pp("out_layers.0"),
                out_norm_groups,
                out_channels,
                GROUP_NORM32_EPS,
            )?,
            out_conv: Conv2d::same3x3(vb.pp("out_layers.3"), out_channels, out_channels)?,
            skip,
        })
    }

    /// The residual branch; the embedding's projection is added per sample and channel
    /// after `in_layers`, as the bias of its convolution.
    fn residual(&self, x: &Tensor, emb: &Tensor) -> Result<Tensor> {
        let emb_out = self.emb_proj.forward(&ops::silu(emb)?)?;
        let h = self.in_conv.forward_shifted(&self.in_norm.forward_silu(x)?, &emb_out)?;
        self.out_conv.forward(&self.out_norm.forward_silu(&h)?)
    }

    fn skip(&self, x: &Tensor) -> Result<Tensor> {
        match &self.skip {
            Some(conv) => conv.forward(x),
            None => Ok(x.clone()),
        }
    }
}

/// openaimodel's `ResBlock` (no scale-shift norm, no up/down sampling): a residual block
/// conditioned on the timestep embedding.
#[derive(Debug, Clone)]
pub struct ResBlock {
    core: ResBlockCore,
}

impl ResBlock {
    /// `out_layers.0` uses 32 groups, or one group per channel when `out_channels` is not
    /// a multiple of 32 (as openaimodel's ResBlock does).
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        emb_channels: usize,
        out_channels: usize,
    ) -> Result<Self> {
        let out_groups = if out_channels % GROUP_NORM32_GROUPS == 0 {
            GROUP_NORM32_GROUPS
        } else {
            out_channels
        };
        Ok(Self {
            core: ResBlockCore::new(&vb, channels, emb_channels, out_channels, out_groups)?,
        })
    }

    /// `x` a map, `emb` (B, emb_channels).
    pub fn forward(&self, x: &Tensor, emb: &Tensor) -> Result<Tensor> {
        self.core.skip(x)? + self.core.residual(x, emb)?
    }
}

/// StableSR's `ResBlockDual`: a ResBlock whose residual branch is then modulated by
/// [`Spade`] from the structure features of the same width.
#[derive(Debug, Clone)]
pub struct ResBlockDual {
    core: ResBlockCore,
    spade: Spade,
}

impl ResBlockDual {
    /// `semb_channels`: channels of the structure feature maps.
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        emb_channels: usize,
        semb_channels: usize,
        out_channels: usize,
    ) -> Result<Self> {
        Ok(Self {
            core: ResBlockCore::new(
                &vb,
                channels,
                emb_channels,
                out_channels,
                GROUP_NORM32_GROUPS,
            )?,
            spade: Spade::new(vb.pp("spade"), out_channels, semb_channels)?,
        })
    }

    /// `x` a map, `emb` (B, emb_channels), `struct_cond` the structure features, of which
    /// the one of `x`'s width is used. Without them the block is a plain ResBlock: the
    /// unconditional prior that SPADE later modulates.
    pub fn forward(
        &self,
        x: &Tensor,
        emb: &Tensor,
        struct_cond: Option<&StructFeatures>,
    ) -> Result<Tensor> {
        let h = self.core.residual(x, emb)?;
        let h = match struct_cond {
            Some(features) => self.spade.forward(&h, features)?,
            None => h,
        };
        self.core.skip(x)? + h
    }
}

/// SPADE (spatially-adaptive normalisation) as StableSR configures it: GroupNorm32 of `x`,
/// then `* (1 + gamma) + beta` with gamma and beta predicted by 3x3 convs from the
/// structure feature map of `x`'s width.
#[derive(Debug, Clone)]
pub struct Spade {
    param_free_norm: GroupNorm,
    mlp_shared: Conv2d,
    mlp_gamma: Conv2d,
    mlp_beta: Conv2d,
}

impl Spade {
    /// `norm_channels`: channels of `x`; `label_channels`: channels of the feature maps.
    pub fn new(vb: VarBuilder, norm_channels: usize, label_channels: usize) -> Result<Self> {
        Ok(Self {
            param_free_norm: GroupNorm::group_norm32(vb.pp("param_free_norm"), norm_channels)?,
            mlp_shared: Conv2d::same3x3(vb.pp("mlp_shared.0"), label_channels, SPADE_HIDDEN)?,
            mlp_gamma: Conv2d::same3x3(vb.pp("mlp_gamma"), SPADE_HIDDEN, norm_channels)?,
            mlp_beta: Conv2d::same3x3(vb.pp("mlp_beta"), SPADE_HIDDEN, norm_channels)?,
        })
    }

    /// `x` a map of norm_channels, modulated by the feature map of its width.
    pub fn forward(&self, x: &Tensor, struct_cond: &StructFeatures) -> Result<Tensor> {
        let segmap = struct_cond.map(ops::spatial_size(x)?.1)?;
        let normalized = self.param_free_norm.forward(x)?;
        let actv = ops::relu(&self.mlp_shared.forward(segmap)?)?;
        let gamma = self.mlp_gamma.forward(&actv)?;
        let beta = self.mlp_beta.forward(&actv)?;
        (normalized * (gamma + 1.0)?)? + beta
    }
}

/// openaimodel's `AttentionBlock` with the legacy QKV order (`QKVAttentionLegacy`: the
/// qkv channels are split into heads first, then each head into q, k, v): self-attention
/// over all positions, added to the input.
#[derive(Debug, Clone)]
pub struct AttentionBlock {
    norm: GroupNorm,
    qkv: PointwiseConv1d,
    proj_out: PointwiseConv1d,
    num_heads: usize,
}

impl AttentionBlock {
    /// `num_heads` heads of `channels / num_heads` channels each.
    pub fn new(vb: VarBuilder, channels: usize, num_heads: usize) -> Result<Self> {
        if num_heads == 0 || channels % num_heads != 0 {
            candle_core::bail!(
                "attention block at {}: {channels} channels do not split into {num_heads} heads",
                vb.prefix()
            );
        }
        Ok(Self {
            norm: GroupNorm::group_norm32(vb.pp("norm"), channels)?,
            qkv: PointwiseConv1d::new(vb.pp("qkv"), channels, 3 * channels)?,
            proj_out: PointwiseConv1d::new(vb.pp("proj_out"), channels, channels)?,
            num_heads,
        })
    }

    /// `x` a map.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (height, width) = ops::spatial_size(x)?;
        let qkv = self.qkv.forward(&ops::to_tokens(&self.norm.forward(x)?)?)?;
        let (batch, tokens, qkv_channels) = qkv.dims3()?;
        let head_width = qkv_channels / 3 / self.num_heads;
        // Each head's 3 x head_width channels hold its q, k and v in turn.
        let per_head = qkv.reshape((batch, tokens, self.num_heads, 3 * head_width))?;
        // (B, T, heads, head_width) -> (B*heads, T, head_width) for the shared attention op.
        let part = |i: usize| {
            per_head
                .narrow(3, i * head_width, head_width)?
                .transpose(1, 2)?
                .reshape((batch * self.num_heads, tokens, head_width))
        };
        let attended = ops::attention(
            &part(0)?,
            &part(1)?,
            &part(2)?,
            1.0 / (head_width as f64).sqrt(),
        )?;
        let h = attended
            .reshape((batch, self.num_heads, tokens, head_width))?
            .transpose(1, 2)?
            .reshape((batch, tokens, self.num_heads * head_width))?;
        x + ops::from_tokens(&self.proj_out.forward(&h)?, height, width)?
    }
}

/// LDM's `CrossAttention`: multi-head attention from `x` to a context (the text tokens),
/// or to `x` itself when there is none. Keys `to_q`, `to_k`, `to_v` (no bias), `to_out.0`.
#[derive(Debug, Clone)]
pub struct CrossAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    head_width: usize,
}

impl CrossAttention {
    /// `context_dim` None: attends to its own input, so `to_k`/`to_v` take `query_dim`.
    pub fn new(
        vb: VarBuilder,
        query_dim: usize,
        context_dim: Option<usize>,
        heads: usize,
        head_width: usize,
    ) -> Result<Self> {
        let inner = heads * head_width;
        let context_dim = context_dim.unwrap_or(query_dim);
        Ok(Self {
            to_q: Linear::new(vb.pp("to_q"), query_dim, inner, false)?,
            to_k: Linear::new(vb.pp("to_k"), context_dim, inner, false)?,
            to_v: Linear::new(vb.pp("to_v"), context_dim, inner, false)?,
            to_out: Linear::new(vb.pp("to_out.0"), inner, query_dim, true)?,
            heads,
            head_width,
        })
    }

    /// `x` (B, N, query_dim), `context` (B, M, context_dim) or None for self-attention.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let context = context.unwrap_or(x);
        let q = self.split_heads(&self.to_q.forward(x)?)?;
        let k = self.split_heads(&self.to_k.forward(context)?)?;
        let v = self.split_heads(&self.to_v.forward(context)?)?;
        let out = ops::attention(&q, &k, &v, 1.0 / (self.head_width as f64).sqrt())?;
        let (_, tokens, _) = out.dims3()?;
        let batch = x.dim(0)?;
        let out = out
            .reshape((batch, self.heads, tokens, self.head_width))?
            .transpose(1, 2)?
            .reshape((batch, tokens, self.heads * self.head_width))?;
        self.to_out.forward(&out)
    }

    /// (B, N, heads * width) -> (B * heads, N, width).
    fn split_heads(&self, t: &Tensor) -> Result<Tensor> {
        let (batch, tokens, _) = t.dims3()?;
        t.reshape((batch, tokens, self.heads, self.head_width))?
            .transpose(1, 2)?
            .reshape((batch * self.heads, tokens, self.head_width))
    }
}

/// LDM's gated feed-forward: GEGLU (`net.0.proj`, to 2 x 4 x dim, value * gelu(gate)),
/// then `net.2` back to dim.
#[derive(Debug, Clone)]
pub struct FeedForward {
    proj_in: Linear,
    proj_out: Linear,
}

impl FeedForward {
    /// `dim`: token width; the hidden width is 4 x `dim`.
    pub fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        let inner = 4 * dim;
        Ok(Self {
            proj_in: Linear::new(vb.pp("net.0.proj"), dim, 2 * inner, true)?,
            proj_out: Linear::new(vb.pp("net.2"), inner, dim, true)?,
        })
    }

    /// `x` (..., dim).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.proj_out.forward(&ops::geglu(&self.proj_in.forward(x)?)?)
    }
}

/// LDM's `BasicTransformerBlockV2` (self-attention enabled): pre-norm self-attention,
/// cross-attention, and feed-forward, each added to its input.
#[derive(Debug, Clone)]
pub struct BasicTransformerBlock {
    attn1: CrossAttention,
    attn2: CrossAttention,
    ff: FeedForward,
    norm1: LayerNorm,
    norm2: LayerNorm,
    norm3: LayerNorm,
}

impl BasicTransformerBlock {
    /// `dim` = `heads` x `head_width`; `context_dim` None: cross-attention to `x` itself.
    pub fn new(
        vb: VarBuilder,
        dim: usize,
        heads: usize,
        head_width: usize,
        context_dim: Option<usize>,
    ) -> Result<Self> {
        Ok(Self {
            attn1: CrossAttention::new(vb.pp("attn1"), dim, None, heads, head_width)?,
            attn2: CrossAttention::new(vb.pp("attn2"), dim, context_dim, heads, head_width)?,
            ff: FeedForward::new(vb.pp("ff"), dim)?,
            norm1: LayerNorm::new(vb.pp("norm1"), dim)?,
            norm2: LayerNorm::new(vb.pp("norm2"), dim)?,
            norm3: LayerNorm::new(vb.pp("norm3"), dim)?,
        })
    }

    /// `x` (B, N, dim); `context` (B, M, context_dim), None to attend to `x` itself.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let x = (self.attn1.forward(&self.norm1.forward(x)?, None)? + x)?;
        let x = (self.attn2.forward(&self.norm2.forward(&x)?, context)? + &x)?;
        self.ff.forward(&self.norm3.forward(&x)?)? + x
    }
}

/// How the spatial transformer maps between channels and tokens: `nn.Linear`
/// (`use_linear_in_transformer`, StableSR's setting) or a 1x1 conv, whose weight
/// (out, in, 1, 1) is the same linear map of each pixel's channels.
fn token_projection(vb: VarBuilder, in_dim: usize, out_dim: usize, use_linear: bool) -> Result<Linear> {
    if use_linear {
        return Linear::new(vb, in_dim, out_dim, true);
    }
    Ok(Linear {
        weight: vb.get((out_dim, in_dim, 1, 1), "weight")?.reshape((out_dim, in_dim))?,
        bias: Some(vb.get(out_dim, "bias")?),
    })
}

/// LDM's `SpatialTransformerV2`: Normalize (GroupNorm 32, eps 1e-6), `proj_in`, the
/// transformer blocks over the H*W tokens, `proj_out`, added to the input.
#[derive(Debug, Clone)]
pub struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Linear,
    transformer_blocks: Vec<BasicTransformerBlock>,
    proj_out: Linear,
}

impl SpatialTransformer {
    /// `depth` transformer blocks of `heads` x `head_width` channels over a `channels`
    /// map; `use_linear`: linear projections (else 1x1 convs).
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        heads: usize,
        head_width: usize,
        depth: usize,
        context_dim: Option<usize>,
        use_linear: bool,
    ) -> Result<Self> {
        let inner = heads * head_width;
        let transformer_blocks = (0..depth)
            .map(|i| {
                BasicTransformerBlock::new(
                    vb.pp("transformer_blocks").pp(i),
                    inner,
                    heads,
                    head_width,
                    context_dim,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: GroupNorm::new(
                vb.pp("norm"),
                GROUP_NORM32_GROUPS,
                channels,
                TRANSFORMER_NORM_EPS,
            )?,
            proj_in: token_projection(vb.pp("proj_in"), channels, inner, use_linear)?,
            transformer_blocks,
            proj_out: token_projection(vb.pp("proj_out"), inner, channels, use_linear)?,
        })
    }

    /// `x` a map; `context` (B, M, context_dim) or None for self-attention.
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let (height, width) = ops::spatial_size(x)?;
        let mut tokens = self.proj_in.forward(&ops::to_tokens(&self.norm.forward(x)?)?)?;
        for block in &self.transformer_blocks {
            tokens = block.forward(&tokens, context)?;
        }
        ops::from_tokens(&self.proj_out.forward(&tokens)?, height, width)? + x
    }
}

/// openaimodel's `Downsample` with a conv: 3x3, stride 2, padding 1 (key `op`).
#[derive(Debug, Clone)]
pub struct Downsample {
    op: Conv2d,
}

impl Downsample {
    /// `vb` at the block (the conv is at `op`).
    pub fn new(vb: VarBuilder, channels: usize, out_channels: usize) -> Result<Self> {
        Ok(Self {
            op: Conv2d::new(vb.pp("op"), channels, out_channels, 3, 2, 1)?,
        })
    }

    /// A map of C channels, (H, W) -> C_out channels, (ceil(H/2), ceil(W/2)).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.op.forward(x)
    }
}

/// openaimodel's `Upsample` with a conv: nearest 2x, then 3x3 padding 1 (key `conv`).
#[derive(Debug, Clone)]
pub struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    /// `vb` at the block (the conv is at `conv`).
    pub fn new(vb: VarBuilder, channels: usize, out_channels: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::same3x3(vb.pp("conv"), channels, out_channels)?,
        })
    }

    /// A map of C channels, (H, W) -> C_out channels, (2H, 2W).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(&ops::upsample_nearest_2x(x)?)
    }
}

/// The two-layer MLP (`time_embed.0`, SiLU, `time_embed.2`) that turns the sinusoidal
/// timestep embedding (model_channels) into the blocks' embedding (4 x model_channels).
#[derive(Debug, Clone)]
pub struct TimeEmbed {
    linear_1: Linear,
    linear_2: Linear,
    model_channels: usize,
}

impl TimeEmbed {
    /// `vb` at `time_embed`.
    pub fn new(vb: VarBuilder, model_channels: usize) -> Result<Self> {
        let embed_dim = 4 * model_channels;
        Ok(Self {
            linear_1: Linear::new(vb.pp("0"), model_channels, embed_dim, true)?,
            linear_2: Linear::new(vb.pp("2"), embed_dim, embed_dim, true)?,
            model_channels,
        })
    }

    /// `timesteps` (B,) -> (B, 4 x model_channels).
    pub fn forward(&self, timesteps: &Tensor) -> Result<Tensor> {
        // The embedding is computed in f32 and then takes the weights' dtype.
        let t_emb = timestep_embedding(timesteps, self.model_channels)?.to_dtype(self.linear_1.weight.dtype())?;
        self.linear_2
            .forward(&ops::silu(&self.linear_1.forward(&t_emb)?)?)
    }
}

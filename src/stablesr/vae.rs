//! StableSR's autoencoders: the plain `AutoencoderKL` (`first_stage_model` of the diffusion
//! checkpoint) and its CFW variant `AutoencoderKLResi` (the separate `vqgan_cfw` checkpoint),
//! whose decoder (`Decoder_Mix`) fuses encoder features into the decoder with a fidelity
//! weight `w` ("controllable feature wrapping").
//!
//! Ported from IceClear/StableSR (`ldm/models/autoencoder.py`,
//! `ldm/modules/diffusionmodules/model.py`, `ldm/modules/distributions/distributions.py`,
//! `basicsr/archs/rrdbnet_arch.py`). Tensors are NCHW; every op is a plain candle op, so the
//! modules run on any device and are differentiable (the CFW fusion layers are what
//! StableSR trains).
//!
//! Numerics that matter for parity: ldm's `Normalize` is GroupNorm with 32 groups and
//! eps 1e-6; the encoder's downsampling pads right and bottom by one and then applies a 3x3
//! convolution with stride 2 and no padding; upsampling is nearest-neighbour x2 followed by a
//! 3x3 convolution; the RRDBs use LeakyReLU(0.2) and scale their residuals by 0.2.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{Conv2d, Conv2dConfig, GroupNorm, VarBuilder};
use serde::{Deserialize, Serialize};

/// Groups of ldm's `Normalize` (GroupNorm).
const NORM_GROUPS: usize = 32;
/// Epsilon of ldm's `Normalize`.
const NORM_EPS: f64 = 1e-6;
/// Negative slope of the LeakyReLU inside basicsr's residual dense blocks.
const RRDB_LEAKY_SLOPE: f64 = 0.2;
/// basicsr scales the residual of every dense block and of every RRDB by this.
const RRDB_RESIDUAL_SCALE: f64 = 0.2;
/// Lower and upper clamp of the posterior's log-variance (ldm's DiagonalGaussianDistribution).
const LOGVAR_RANGE: (f64, f64) = (-30.0, 20.0);

/// The encoder/decoder hyperparameters (ldm's `ddconfig`; `dropout` is ignored, it is 0
/// and inference does not use it).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct DdConfig {
    /// Base channel count.
    pub ch: usize,
    /// Channel multiplier per resolution level; level `i` has `ch * ch_mult[i]` channels and
    /// every level but the last halves the resolution.
    pub ch_mult: Vec<usize>,
    /// Residual blocks per encoder level (the decoder has one more per level).
    pub num_res_blocks: usize,
    /// Channels of the latent `z` as the decoder sees it (after `post_quant_conv`).
    pub z_channels: usize,
    /// Image channels in.
    pub in_channels: usize,
    /// Image channels out.
    pub out_ch: usize,
    /// The nominal image side the model was configured for. It only decides where
    /// `attn_resolutions` put attention (as in ldm); inputs of other sizes are fine.
    pub resolution: usize,
    /// Nominal resolutions (see `resolution`) whose levels get an attention block after
    /// each residual block. The middle blocks always have attention.
    pub attn_resolutions: Vec<usize>,
    /// Whether the encoder outputs mean and log-variance (2 * `z_channels`); ldm's
    /// AutoencoderKL requires it.
    pub double_z: bool,
}

/// An AutoencoderKL configuration: the `ddconfig` plus the latent width and, for the CFW
/// variant, the fusion layers' size. Deserialises from ldm's config layout
/// (`{"embed_dim": 4, "ddconfig": {...}}`, other keys ignored).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct VaeConfig {
    /// Channels of the latent (the diffusion model's input channels).
    pub embed_dim: usize,
    /// Encoder/decoder hyperparameters.
    pub ddconfig: DdConfig,
    /// RRDBs per CFW fusion layer (Decoder_Mix's `num_fuse_block`); unused by the plain
    /// AutoencoderKL.
    #[serde(default = "default_num_fuse_block")]
    pub num_fuse_block: usize,
    /// Growth channels of the RRDBs' dense blocks (Fuse_sft_block_RRDB's `num_grow_ch`);
    /// unused by the plain AutoencoderKL.
    #[serde(default = "default_num_grow_ch")]
    pub num_grow_ch: usize,
}

fn default_num_fuse_block() -> usize {
    2
}

fn default_num_grow_ch() -> usize {
    32
}

impl VaeConfig {
    /// StableSR's `first_stage_model` (the SD 2 VAE): `configs/stableSRNew/v2-finetune_text_T_512.yaml`.
    pub fn stablesr_first_stage() -> Self {
        Self {
            embed_dim: 4,
            ddconfig: DdConfig {
                ch: 128,
                ch_mult: vec![1, 2, 4, 4],
                num_res_blocks: 2,
                z_channels: 4,
                in_channels: 3,
                out_ch: 3,
                resolution: 512,
                attn_resolutions: vec![],
                double_z: true,
            },
            num_fuse_block: default_num_fuse_block(),
            num_grow_ch: default_num_grow_ch(),
        }
    }

    /// StableSR's CFW autoencoder (`vqgan_cfw_00011.ckpt`,
    /// `configs/autoencoder/autoencoder_kl_64x64x4_resi.yaml`): the same encoder/decoder as
    /// [`VaeConfig::stablesr_first_stage`] plus fusion layers of 2 RRDBs with 32 growth
    /// channels.
    pub fn stablesr_cfw() -> Self {
        Self {
            num_fuse_block: 2,
            num_grow_ch: 32,
            ..Self::stablesr_first_stage()
        }
    }

    /// How much smaller the latent is than the image per side: 2^(levels - 1).
    pub fn downsampling_factor(&self) -> usize {
        1 << self.ddconfig.ch_mult.len().saturating_sub(1)
    }

    fn levels(&self) -> usize {
        self.ddconfig.ch_mult.len()
    }

    fn level_channels(&self, level: usize) -> usize {
        self.ddconfig.ch * self.ddconfig.ch_mult[level]
    }

    fn validate(&self) -> Result<()> {
        let dd = &self.ddconfig;
        if dd.ch_mult.is_empty() || dd.ch_mult.contains(&0) {
            candle_core::bail!(
                "VAE config: ch_mult must be non-empty and positive, got {:?}",
                dd.ch_mult
            );
        }
        if !dd.double_z {
            candle_core::bail!(
                "VAE config: double_z must be true (the encoder has to output mean and log-variance for quant_conv)"
            );
        }
        for level in 0..self.levels() {
            let c = self.level_channels(level);
            if c % NORM_GROUPS != 0 {
                candle_core::bail!(
                    "VAE config: level {level} has {c} channels, which GroupNorm's {NORM_GROUPS} groups do not divide"
                );
            }
        }
        Ok(())
    }
}

fn conv(
    c_in: usize,
    c_out: usize,
    kernel: usize,
    padding: usize,
    stride: usize,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    candle_nn::conv2d(c_in, c_out, kernel, cfg, vb)
}

/// 3x3 convolution that keeps the size.
fn conv3x3(c_in: usize, c_out: usize, vb: VarBuilder) -> Result<Conv2d> {
    conv(c_in, c_out, 3, 1, 1, vb)
}

fn conv1x1(c_in: usize, c_out: usize, vb: VarBuilder) -> Result<Conv2d> {
    conv(c_in, c_out, 1, 0, 1, vb)
}

/// ldm's `Normalize`.
fn normalize(channels: usize, vb: VarBuilder) -> Result<GroupNorm> {
    candle_nn::group_norm(NORM_GROUPS, channels, NORM_EPS, vb)
}

/// ldm's `nonlinearity` (swish) after a norm.
fn norm_swish(norm: &GroupNorm, x: &Tensor) -> Result<Tensor> {
    norm.forward(x)?.silu()
}

/// ldm's `ResnetBlock` without a timestep embedding (the autoencoder has none): two
/// norm-swish-conv stages plus a 1x1 projection of the input when the width changes.
#[derive(Debug, Clone)]
struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    nin_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    fn new(c_in: usize, c_out: usize, vb: VarBuilder) -> Result<Self> {
        Self::with_shortcut(c_in, c_out, vb, "nin_shortcut")
    }

    /// The block with its 1x1 shortcut (used when the width changes) under `shortcut`:
    /// ldm's `ResBlock` of the CFW fusion layers is this block with the shortcut named
    /// `conv_out`.
    fn with_shortcut(c_in: usize, c_out: usize, vb: VarBuilder, shortcut: &str) -> Result<Self> {
        let nin_shortcut = if c_in != c_out {
            Some(conv1x1(c_in, c_out, vb.pp(shortcut))?)
        } else {
            None
        };
        Ok(Self {
            norm1: normalize(c_in, vb.pp("norm1"))?,
            conv1: conv3x3(c_in, c_out, vb.pp("conv1"))?,
            norm2: normalize(c_out, vb.pp("norm2"))?,
            conv2: conv3x3(c_out, c_out, vb.pp("conv2"))?,
            nin_shortcut,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&norm_swish(&self.norm1, x)?)?;
        let h = self.conv2.forward(&norm_swish(&self.norm2, &h)?)?;
        match &self.nin_shortcut {
            Some(shortcut) => shortcut.forward(x)? + h,
            None => x + h,
        }
    }
}

/// ldm's vanilla `AttnBlock`: single-head self-attention over all pixels, with 1x1
/// convolutions for q, k, v and the output, scaled by channels^-0.5, added to the input.
#[derive(Debug, Clone)]
struct AttnBlock {
    norm: GroupNorm,
    q: Conv2d,
    k: Conv2d,
    v: Conv2d,
    proj_out: Conv2d,
}

impl AttnBlock {
    fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: normalize(channels, vb.pp("norm"))?,
            q: conv1x1(channels, channels, vb.pp("q"))?,
            k: conv1x1(channels, channels, vb.pp("k"))?,
            v: conv1x1(channels, channels, vb.pp("v"))?,
            proj_out: conv1x1(channels, channels, vb.pp("proj_out"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let normed = self.norm.forward(x)?;
        // (B, C, HW) each; queries as rows: (B, HW, C).
        let q = self
            .q
            .forward(&normed)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let k = self.k.forward(&normed)?.reshape((b, c, h * w))?;
        let v = self.v.forward(&normed)?.reshape((b, c, h * w))?;
        let scores = (q.matmul(&k)? * (c as f64).powf(-0.5))?;
        // The composed softmax (not the fused `softmax_last_dim`) because it has a backward.
        let weights = candle_nn::ops::softmax(&scores, D::Minus1)?;
        // out[b, c, i] = sum_j v[b, c, j] * weights[b, i, j]
        let out = v
            .matmul(&weights.transpose(1, 2)?.contiguous()?)?
            .reshape((b, c, h, w))?;
        x + self.proj_out.forward(&out)?
    }
}

/// ldm's VAE `Downsample`: zero-pad one column right and one row bottom, then a 3x3
/// convolution with stride 2 and no padding (an even side halves exactly).
#[derive(Debug, Clone)]
struct Downsample {
    conv: Conv2d,
}

impl Downsample {
    fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: conv(channels, channels, 3, 0, 2, vb.pp("conv"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let padded = x
            .pad_with_zeros(D::Minus1, 0, 1)?
            .pad_with_zeros(D::Minus2, 0, 1)?;
        self.conv.forward(&padded)
    }
}

/// ldm's `Upsample`: nearest-neighbour x2, then a 3x3 convolution.
#[derive(Debug, Clone)]
struct Upsample {
    conv: Conv2d,
}

impl Upsample {
    fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: conv3x3(channels, channels, vb.pp("conv"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        self.conv.forward(&x.upsample_nearest2d(2 * h, 2 * w)?)
    }
}

/// The middle of the encoder and of the decoder: ResnetBlock, attention, ResnetBlock.
#[derive(Debug, Clone)]
struct Mid {
    block_1: ResnetBlock,
    attn_1: AttnBlock,
    block_2: ResnetBlock,
}

impl Mid {
    fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            block_1: ResnetBlock::new(channels, channels, vb.pp("block_1"))?,
            attn_1: AttnBlock::new(channels, vb.pp("attn_1"))?,
            block_2: ResnetBlock::new(channels, channels, vb.pp("block_2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.block_1.forward(x)?;
        let h = self.attn_1.forward(&h)?;
        self.block_2.forward(&h)
    }
}

/// One resolution level: residual blocks, each followed by attention where the config asks
/// for it (`attns` is then as long as `blocks`, else empty).
#[derive(Debug, Clone)]
struct Blocks {
    blocks: Vec<ResnetBlock>,
    attns: Vec<AttnBlock>,
}

impl Blocks {
    /// `count` blocks from `c_in` to `c_out` channels, under `vb.pp("block")` and
    /// `vb.pp("attn")`.
    fn new(
        count: usize,
        c_in: usize,
        c_out: usize,
        with_attention: bool,
        vb: &VarBuilder,
    ) -> Result<Self> {
        let mut blocks = Vec::with_capacity(count);
        let mut attns = Vec::new();
        for i in 0..count {
            let block_in = if i == 0 { c_in } else { c_out };
            blocks.push(ResnetBlock::new(block_in, c_out, vb.pp("block").pp(i))?);
            if with_attention {
                attns.push(AttnBlock::new(c_out, vb.pp("attn").pp(i))?);
            }
        }
        Ok(Self { blocks, attns })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for (i, block) in self.blocks.iter().enumerate() {
            h = block.forward(&h)?;
            if let Some(attn) = self.attns.get(i) {
                h = attn.forward(&h)?;
            }
        }
        Ok(h)
    }
}

#[derive(Debug, Clone)]
struct DownLevel {
    blocks: Blocks,
    downsample: Option<Downsample>,
}

/// ldm's `Encoder`: image -> moments (2 * z_channels), plus the features the CFW decoder
/// fuses.
#[derive(Debug, Clone)]
struct Encoder {
    conv_in: Conv2d,
    down: Vec<DownLevel>,
    mid: Mid,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        let dd = &cfg.ddconfig;
        let conv_in = conv3x3(dd.in_channels, dd.ch, vb.pp("conv_in"))?;
        let mut down = Vec::with_capacity(cfg.levels());
        let mut block_in = dd.ch;
        let mut nominal_res = dd.resolution;
        for level in 0..cfg.levels() {
            let vb_level = vb.pp("down").pp(level);
            let block_out = cfg.level_channels(level);
            let with_attention = dd.attn_resolutions.contains(&nominal_res);
            let blocks = Blocks::new(
                dd.num_res_blocks,
                block_in,
                block_out,
                with_attention,
                &vb_level,
            )?;
            block_in = block_out;
            let downsample = if level + 1 != cfg.levels() {
                nominal_res /= 2;
                Some(Downsample::new(block_in, vb_level.pp("downsample"))?)
            } else {
                None
            };
            down.push(DownLevel { blocks, downsample });
        }
        Ok(Self {
            conv_in,
            down,
            mid: Mid::new(block_in, vb.pp("mid"))?,
            norm_out: normalize(block_in, vb.pp("norm_out"))?,
            conv_out: conv3x3(block_in, 2 * dd.z_channels, vb.pp("conv_out"))?,
        })
    }

    /// `(output, features)`: the features are the outputs of the residual blocks of levels
    /// 1 ..= levels - 2 (before their downsampling), one per CFW fusion layer. StableSR
    /// collects levels 1 and 2, which is the same list for its four levels.
    fn forward(&self, x: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let levels = self.down.len();
        let mut h = self.conv_in.forward(x)?;
        let mut features = Vec::new();
        for (level, down) in self.down.iter().enumerate() {
            h = down.blocks.forward(&h)?;
            if level >= 1 && level + 2 <= levels {
                features.push(h.clone());
            }
            if let Some(downsample) = &down.downsample {
                h = downsample.forward(&h)?;
            }
        }
        let h = self.mid.forward(&h)?;
        let h = self.conv_out.forward(&norm_swish(&self.norm_out, &h)?)?;
        Ok((h, features))
    }
}


/// basicsr's `ResidualDenseBlock`: five 3x3 convolutions, each seeing the input and all
/// earlier outputs; the last one's output, scaled by 0.2, is added to the input.
#[derive(Debug, Clone)]
struct ResidualDenseBlock {
    convs: [Conv2d; 5],
}

impl ResidualDenseBlock {
    fn new(features: usize, grow: usize, vb: VarBuilder) -> Result<Self> {
        let conv = |i: usize| {
            let c_out = if i == 4 { features } else { grow };
            conv3x3(features + i * grow, c_out, vb.pp(format!("conv{}", i + 1)))
        };
        Ok(Self {
            convs: [conv(0)?, conv(1)?, conv(2)?, conv(3)?, conv(4)?],
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut seen = vec![x.clone()];
        for conv in &self.convs[..4] {
            let input = Tensor::cat(&seen, 1)?;
            seen.push(candle_nn::ops::leaky_relu(
                &conv.forward(&input)?,
                RRDB_LEAKY_SLOPE,
            )?);
        }
        let last = self.convs[4].forward(&Tensor::cat(&seen, 1)?)?;
        (last * RRDB_RESIDUAL_SCALE)? + x
    }
}

/// basicsr's `RRDB`: three dense blocks, residual scaled by 0.2.
#[derive(Debug, Clone)]
struct Rrdb {
    rdbs: [ResidualDenseBlock; 3],
}

impl Rrdb {
    fn new(features: usize, grow: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            rdbs: [
                ResidualDenseBlock::new(features, grow, vb.pp("rdb1"))?,
                ResidualDenseBlock::new(features, grow, vb.pp("rdb2"))?,
                ResidualDenseBlock::new(features, grow, vb.pp("rdb3"))?,
            ],
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for rdb in &self.rdbs {
            h = rdb.forward(&h)?;
        }
        (h * RRDB_RESIDUAL_SCALE)? + x
    }
}

/// StableSR's `Fuse_sft_block_RRDB` (a CFW fusion layer): from the encoder feature and the
/// decoder feature, concatenated, a residual that is added to the decoder feature with
/// weight `w`.
#[derive(Debug, Clone)]
struct FusionLayer {
    encode_enc_1: ResnetBlock,
    encode_enc_2: Vec<Rrdb>,
    encode_enc_3: ResnetBlock,
}

impl FusionLayer {
    fn new(channels: usize, cfg: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        let encode_enc_2 = (0..cfg.num_fuse_block)
            .map(|i| Rrdb::new(channels, cfg.num_grow_ch, vb.pp("encode_enc_2").pp(i)))
            .collect::<Result<_>>()?;
        Ok(Self {
            encode_enc_1: ResnetBlock::with_shortcut(2 * channels, channels, vb.pp("encode_enc_1"), "conv_out")?,
            encode_enc_2,
            encode_enc_3: ResnetBlock::with_shortcut(channels, channels, vb.pp("encode_enc_3"), "conv_out")?,
        })
    }

    fn forward(&self, enc_feat: &Tensor, dec_feat: &Tensor, w: f64) -> Result<Tensor> {
        let mut h = self
            .encode_enc_1
            .forward(&Tensor::cat(&[enc_feat, dec_feat], 1)?)?;
        for rrdb in &self.encode_enc_2 {
            h = rrdb.forward(&h)?;
        }
        let residual = self.encode_enc_3.forward(&h)?;
        dec_feat + (residual * w)?
    }
}

#[derive(Debug, Clone)]
struct UpLevel {
    blocks: Blocks,
    /// `fusion_layer_{level}` of Decoder_Mix (levels 1 ..= levels - 2 only).
    fusion: Option<FusionLayer>,
    upsample: Option<Upsample>,
}

/// ldm's `Decoder`, or `Decoder_Mix` when built with fusion layers.
#[derive(Debug, Clone)]
struct Decoder {
    conv_in: Conv2d,
    mid: Mid,
    /// Indexed by level (0 = full resolution), run from the last to the first.
    up: Vec<UpLevel>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(vb: VarBuilder, cfg: &VaeConfig, with_fusion: bool) -> Result<Self> {
        let dd = &cfg.ddconfig;
        let levels = cfg.levels();
        let mut block_in = cfg.level_channels(levels - 1);
        let mut nominal_res = dd.resolution >> (levels - 1);
        let conv_in = conv3x3(dd.z_channels, block_in, vb.pp("conv_in"))?;
        let mid = Mid::new(block_in, vb.pp("mid"))?;
        let mut up = Vec::with_capacity(levels);
        for level in (0..levels).rev() {
            let vb_level = vb.pp("up").pp(level);
            let block_out = cfg.level_channels(level);
            let fusion = if with_fusion && level != 0 && level + 1 != levels {
                Some(FusionLayer::new(
                    block_out,
                    cfg,
                    vb.pp(format!("fusion_layer_{level}")),
                )?)
            } else {
                None
            };
            let with_attention = dd.attn_resolutions.contains(&nominal_res);
            let blocks = Blocks::new(
                dd.num_res_blocks + 1,
                block_in,
                block_out,
                with_attention,
                &vb_level,
            )?;
            block_in = block_out;
            let upsample = if level != 0 {
                nominal_res *= 2;
                Some(Upsample::new(block_in, vb_level.pp("upsample"))?)
            } else {
                None
            };
            up.push(UpLevel {
                blocks,
                fusion,
                upsample,
            });
        }
        up.reverse();
        Ok(Self {
            conv_in,
            mid,
            up,
            norm_out: normalize(block_in, vb.pp("norm_out"))?,
            conv_out: conv3x3(block_in, dd.out_ch, vb.pp("conv_out"))?,
        })
    }

    /// `z` (after post_quant_conv) -> image. `fusion`, when given, is the encoder features
    /// (one per fusion layer, from [`Encoder::forward`]) and the fidelity weight; fusion
    /// layer `i` uses feature `i - 1` after the blocks of level `i`, before its upsampling.
    fn forward(&self, z: &Tensor, fusion: Option<(&[Tensor], f64)>) -> Result<Tensor> {
        let mut h = self.mid.forward(&self.conv_in.forward(z)?)?;
        for (level, up) in self.up.iter().enumerate().rev() {
            h = up.blocks.forward(&h)?;
            if let (Some(layer), Some((features, w))) = (&up.fusion, fusion) {
                let enc_feat = features.get(level - 1).ok_or_else(|| {
                    candle_core::Error::Msg(format!(
                        "CFW decode: fusion layer {level} needs encoder feature {} but {} were given; pass the features that encode() returned",
                        level - 1,
                        features.len()
                    ))
                })?;
                let (enc_dims, dec_dims) = (enc_feat.dims(), h.dims());
                if enc_dims[0] != dec_dims[0] || enc_dims[2..] != dec_dims[2..] {
                    candle_core::bail!(
                        "CFW decode: encoder feature {} is {enc_dims:?} but the decoder is at {dec_dims:?} at level {level}; \
                         the latent must come from an image of the size the features came from, with sides that are multiples of the downsampling factor",
                        level - 1
                    );
                }
                h = layer.forward(enc_feat, &h, w)?;
            }
            if let Some(upsample) = &up.upsample {
                h = upsample.forward(&h)?;
            }
        }
        self.conv_out.forward(&norm_swish(&self.norm_out, &h)?)
    }
}

/// ldm's `DiagonalGaussianDistribution`: the encoder's posterior over the latent.
#[derive(Debug, Clone)]
pub struct DiagonalGaussian {
    /// `quant_conv`'s output: mean and log-variance concatenated on channels, `(B, 2*E, h, w)`.
    pub moments: Tensor,
    /// `(B, E, h, w)`.
    pub mean: Tensor,
    /// The log-variance clamped to [-30, 20], `(B, E, h, w)`.
    pub logvar: Tensor,
    /// `exp(0.5 * logvar)`, `(B, E, h, w)`.
    pub std: Tensor,
}

impl DiagonalGaussian {
    /// Splits `moments` `(B, 2*E, h, w)` into mean and log-variance.
    pub fn from_moments(moments: &Tensor) -> Result<Self> {
        let channels = moments.dim(1)?;
        if channels % 2 != 0 {
            candle_core::bail!("posterior moments need an even channel count (mean and log-variance), got {channels}");
        }
        let half = channels / 2;
        let mean = moments.narrow(1, 0, half)?;
        let logvar = moments
            .narrow(1, half, half)?
            .clamp(LOGVAR_RANGE.0, LOGVAR_RANGE.1)?;
        let std = (&logvar * 0.5)?.exp()?;
        Ok(Self {
            moments: moments.clone(),
            mean,
            logvar,
            std,
        })
    }

    /// `mean + std * noise` for a given standard-normal `noise` of the mean's shape.
    pub fn sample_with_noise(&self, noise: &Tensor) -> Result<Tensor> {
        &self.mean + (&self.std * noise)?
    }

    /// A draw from the posterior with the device's random generator (StableSR encodes the
    /// low-resolution image as `0.18215 * posterior.sample()`).
    pub fn sample(&self) -> Result<Tensor> {
        self.sample_with_noise(&self.mean.randn_like(0.0, 1.0)?)
    }
}

/// Encoder, decoder and the 1x1 convolutions around the latent, as both autoencoders have.
#[derive(Debug, Clone)]
struct Parts {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Conv2d,
    post_quant_conv: Conv2d,
    in_channels: usize,
}

impl Parts {
    fn new(vb: VarBuilder, cfg: &VaeConfig, with_fusion: bool) -> Result<Self> {
        cfg.validate()?;
        let dd = &cfg.ddconfig;
        Ok(Self {
            encoder: Encoder::new(vb.pp("encoder"), cfg)?,
            decoder: Decoder::new(vb.pp("decoder"), cfg, with_fusion)?,
            quant_conv: conv1x1(2 * dd.z_channels, 2 * cfg.embed_dim, vb.pp("quant_conv"))?,
            post_quant_conv: conv1x1(cfg.embed_dim, dd.z_channels, vb.pp("post_quant_conv"))?,
            in_channels: dd.in_channels,
        })
    }

    fn encode(&self, x: &Tensor) -> Result<(DiagonalGaussian, Vec<Tensor>)> {
        let dims = x.dims();
        if dims.len() != 4 || dims[1] != self.in_channels {
            candle_core::bail!(
                "VAE encode: expected an image batch (B, {}, H, W), got {dims:?}",
                self.in_channels
            );
        }
        let (h, features) = self.encoder.forward(x)?;
        let posterior = DiagonalGaussian::from_moments(&self.quant_conv.forward(&h)?)?;
        Ok((posterior, features))
    }

    fn decode(&self, z: &Tensor, fusion: Option<(&[Tensor], f64)>) -> Result<Tensor> {
        self.decoder
            .forward(&self.post_quant_conv.forward(z)?, fusion)
    }
}

/// ldm's `AutoencoderKL` (StableSR's `first_stage_model`). Images are in [-1, 1], NCHW.
#[derive(Debug, Clone)]
pub struct AutoencoderKL {
    parts: Parts,
}

impl AutoencoderKL {
    /// Takes the weights by the checkpoint's key names below `vb` (`encoder.*`,
    /// `decoder.*`, `quant_conv.*`, `post_quant_conv.*`): pass `vb.pp("first_stage_model")`
    /// for StableSR's diffusion checkpoint.
    pub fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        Ok(Self {
            parts: Parts::new(vb, cfg, false)?,
        })
    }

    /// Image `(B, in_channels, H, W)` -> posterior over the latent `(B, embed_dim, H/f, W/f)`
    /// with f = [`VaeConfig::downsampling_factor`] (sides that f divides).
    pub fn encode(&self, x: &Tensor) -> Result<DiagonalGaussian> {
        Ok(self.parts.encode(x)?.0)
    }

    /// Latent `(B, embed_dim, h, w)` -> image `(B, out_ch, h*f, w*f)`.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.parts.decode(z, None)
    }
}

/// StableSR's `AutoencoderKLResi`: the autoencoder whose decoder (Decoder_Mix) fuses the
/// encoder's features of the low-quality input through CFW fusion layers, with fidelity
/// weight `w` (0 = the plain decoder, 1 = full fusion; StableSR's scripts default to 0.5).
#[derive(Debug, Clone)]
pub struct AutoencoderKLResi {
    parts: Parts,
}

impl AutoencoderKLResi {
    /// Takes the weights by the `vqgan_cfw` checkpoint's key names, which have no prefix
    /// (`encoder.*`, `decoder.*` including `decoder.fusion_layer_{i}.*`, `quant_conv.*`,
    /// `post_quant_conv.*`).
    pub fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        Ok(Self {
            parts: Parts::new(vb, cfg, true)?,
        })
    }

    /// Image `(B, in_channels, H, W)` -> (posterior over the latent, encoder features for
    /// [`AutoencoderKLResi::decode`]), one feature per fusion layer: the outputs of encoder
    /// levels 1 ..= levels - 2.
    pub fn encode(&self, x: &Tensor) -> Result<(DiagonalGaussian, Vec<Tensor>)> {
        self.parts.encode(x)
    }

    /// Latent `(B, embed_dim, h, w)` -> image, fusing `enc_fea` (from
    /// [`AutoencoderKLResi::encode`] of the image the latent describes) with weight `w`.
    pub fn decode(&self, z: &Tensor, enc_fea: &[Tensor], w: f64) -> Result<Tensor> {
        self.parts.decode(z, Some((enc_fea, w)))
    }
}

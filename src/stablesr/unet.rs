//! StableSR's diffusion UNet (`model.diffusion_model`, `UNetModelDualcondV2` in
//! openaimodel.py): the Stable Diffusion 2 UNet whose ResBlocks are `ResBlockDual`s,
//! modulated by SPADE from the structure encoder's features, with SpatialTransformerV2
//! cross-attention to the text context. Predicts the noise (eps).

use super::layers::{
    attention_heads, deserialize_unset_negative, ops, Conv2d, Downsample, GroupNorm, ResBlockDual,
    SpatialTransformer, TimeEmbed, Upsample,
};
use super::struct_encoder::StructFeatures;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// `UNetModelDualcondV2`'s constructor arguments, as in StableSR's configs (unknown keys
/// such as `image_size` or `legacy` are ignored; -1 means "not set" for head counts).
/// Always a spatial-transformer UNet without scale-shift norm or resblock up/down, as
/// StableSR builds it.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub model_channels: usize,
    pub channel_mult: Vec<usize>,
    /// ResBlocks per level (the decoder has one more).
    pub num_res_blocks: usize,
    /// Downsampling factors (1, 2, 4, ...) at which a SpatialTransformer follows each
    /// ResBlock; the middle block always has one.
    pub attention_resolutions: Vec<usize>,
    #[serde(default, deserialize_with = "deserialize_unset_negative")]
    pub num_heads: Option<usize>,
    /// Channels per attention head; takes precedence over `num_heads`.
    #[serde(default, deserialize_with = "deserialize_unset_negative")]
    pub num_head_channels: Option<usize>,
    /// Width of the cross-attention context (the text embedding); None: no text, the
    /// cross-attention attends to the features themselves.
    #[serde(default)]
    pub context_dim: Option<usize>,
    /// Channels of the structure features that SPADE reads.
    pub semb_channels: usize,
    #[serde(default = "one_block")]
    pub transformer_depth: usize,
    /// Linear instead of 1x1-conv projections into and out of the transformer.
    #[serde(default)]
    pub use_linear_in_transformer: bool,
}

fn one_block() -> usize {
    1
}

impl UNetConfig {
    /// StableSR's UNet (`v2-finetune_text_T_512.yaml`, 918.9M parameters).
    pub fn stablesr_512() -> Self {
        Self {
            in_channels: 4,
            out_channels: 4,
            model_channels: 320,
            channel_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            attention_resolutions: vec![4, 2, 1],
            num_heads: None,
            num_head_channels: Some(64),
            context_dim: Some(1024),
            semb_channels: 256,
            transformer_depth: 1,
            use_linear_in_transformer: true,
        }
    }

    fn transformer(&self, vb: VarBuilder, channels: usize) -> Result<SpatialTransformer> {
        let (heads, head_width) = attention_heads(
            channels,
            self.num_heads,
            self.num_head_channels,
            "UNet attention",
        )?;
        SpatialTransformer::new(
            vb,
            channels,
            heads,
            head_width,
            self.transformer_depth,
            self.context_dim,
            self.use_linear_in_transformer,
        )
    }
}

/// One layer of a block (an element of a `TimestepEmbedSequential`).
#[derive(Debug, Clone)]
enum Layer {
    Conv(Conv2d),
    Res(ResBlockDual),
    Transformer(SpatialTransformer),
    Down(Downsample),
    Up(Upsample),
}

/// A `TimestepEmbedSequential`: layers applied in order, each with what it needs.
#[derive(Debug, Clone)]
struct Block {
    layers: Vec<Layer>,
}

impl Block {
    fn forward(
        &self,
        x: &Tensor,
        emb: &Tensor,
        context: Option<&Tensor>,
        struct_cond: Option<&StructFeatures>,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        for layer in &self.layers {
            h = match layer {
                Layer::Conv(conv) => conv.forward(&h)?,
                Layer::Res(block) => block.forward(&h, emb, struct_cond)?,
                Layer::Transformer(block) => block.forward(&h, context)?,
                Layer::Down(down) => down.forward(&h)?,
                Layer::Up(up) => up.forward(&h)?,
            };
        }
        Ok(h)
    }
}

/// The diffusion UNet.
#[derive(Debug, Clone)]
pub struct UNet {
    time_embed: TimeEmbed,
    input_blocks: Vec<Block>,
    middle_block: Block,
    output_blocks: Vec<Block>,
    out_norm: GroupNorm,
    out_conv: Conv2d,
    context_dim: Option<usize>,
}

impl UNet {
    /// `vb` at `model.diffusion_model`.
    pub fn new(vb: VarBuilder, cfg: &UNetConfig) -> Result<Self> {
        let emb_channels = 4 * cfg.model_channels;
        let res_block = |vb: VarBuilder, ch: usize, out_ch: usize| {
            ResBlockDual::new(vb, ch, emb_channels, cfg.semb_channels, out_ch)
        };

        let vb_in = vb.pp("input_blocks");
        let mut input_blocks = vec![Block {
            layers: vec![Layer::Conv(Conv2d::same3x3(
                vb_in.pp("0").pp("0"),
                cfg.in_channels,
                cfg.model_channels,
            )?)],
        }];
        // Channels of every input block's output, consumed by the skip connections.
        let mut skip_channels = vec![cfg.model_channels];
        let mut ch = cfg.model_channels;
        let mut ds = 1;
        for (level, mult) in cfg.channel_mult.iter().enumerate() {
            for _ in 0..cfg.num_res_blocks {
                let vb_block = vb_in.pp(input_blocks.len());
                let out_ch = mult * cfg.model_channels;
                let mut layers = vec![Layer::Res(res_block(vb_block.pp("0"), ch, out_ch)?)];
                ch = out_ch;
                if cfg.attention_resolutions.contains(&ds) {
                    layers.push(Layer::Transformer(cfg.transformer(vb_block.pp("1"), ch)?));
                }
                input_blocks.push(Block { layers });
                skip_channels.push(ch);
            }
            if level + 1 != cfg.channel_mult.len() {
                let vb_block = vb_in.pp(input_blocks.len());
                input_blocks.push(Block {
                    layers: vec![Layer::Down(Downsample::new(vb_block.pp("0"), ch, ch)?)],
                });
                skip_channels.push(ch);
                ds *= 2;
            }
        }

        let vb_mid = vb.pp("middle_block");
        let middle_block = Block {
            layers: vec![
                Layer::Res(res_block(vb_mid.pp("0"), ch, ch)?),
                Layer::Transformer(cfg.transformer(vb_mid.pp("1"), ch)?),
                Layer::Res(res_block(vb_mid.pp("2"), ch, ch)?),
            ],
        };

        let vb_out = vb.pp("output_blocks");
        let mut output_blocks = Vec::new();
        for (level, mult) in cfg.channel_mult.iter().enumerate().rev() {
            for i in 0..=cfg.num_res_blocks {
                let vb_block = vb_out.pp(output_blocks.len());
                let skip_ch = skip_channels.pop().expect("one skip per input block");
                let out_ch = mult * cfg.model_channels;
                let mut layers = vec![Layer::Res(res_block(
                    vb_block.pp("0"),
                    ch + skip_ch,
                    out_ch,
                )?)];
                ch = out_ch;
                if cfg.attention_resolutions.contains(&ds) {
                    layers.push(Layer::Transformer(cfg.transformer(vb_block.pp("1"), ch)?));
                }
                if level > 0 && i == cfg.num_res_blocks {
                    let vb_up = vb_block.pp(layers.len());
                    layers.push(Layer::Up(Upsample::new(vb_up, ch, ch)?));
                    ds /= 2;
                }
                output_blocks.push(Block { layers });
            }
        }

        Ok(Self {
            time_embed: TimeEmbed::new(vb.pp("time_embed"), cfg.model_channels)?,
            input_blocks,
            middle_block,
            output_blocks,
            out_norm: GroupNorm::group_norm32(vb.pp("out.0"), ch)?,
            out_conv: Conv2d::same3x3(vb.pp("out.2"), cfg.model_channels, cfg.out_channels)?,
            context_dim: cfg.context_dim,
        })
    }

    /// The predicted noise (B, out_channels, H, W) for the noisy latent `x`
    /// (B, in_channels, H, W) at `timesteps` (B,) of any dtype, one per sample, with the
    /// text `context` (B, M, context_dim) (None exactly when the config has no
    /// `context_dim`) and the structure features of the low-resolution latent (None: no
    /// SPADE modulation, the unconditional diffusion prior).
    pub fn forward(
        &self,
        x: &Tensor,
        timesteps: &Tensor,
        context: Option<&Tensor>,
        struct_cond: Option<&StructFeatures>,
    ) -> Result<Tensor> {
        match (self.context_dim, context) {
            (Some(dim), None) => candle_core::bail!(
                "this UNet was built with context_dim {dim}: pass the text context (B, M, {dim})"
            ),
            (None, Some(_)) => candle_core::bail!(
                "this UNet was built without context_dim (no text): pass no context"
            ),
            _ => {}
        }
        let emb = self.time_embed.forward(timesteps)?;
        let mut skips = Vec::with_capacity(self.input_blocks.len());
        let mut h = ops::from_nchw(x)?;
        for block in &self.input_blocks {
            h = block.forward(&h, &emb, context, struct_cond)?;
            skips.push(h.clone());
        }
        h = self.middle_block.forward(&h, &emb, context, struct_cond)?;
        for block in &self.output_blocks {
            let skip = skips.pop().expect("one skip per output block");
            h = block.forward(&ops::cat_channels(&[&h, &skip])?, &emb, context, struct_cond)?;
        }
        ops::to_nchw(&self.out_conv.forward(&self.out_norm.forward_silu(&h)?)?)
    }
}

//! StableSR's time-aware structure encoder (`structcond_stage_model`,
//! `EncoderUNetModelWT` in openaimodel.py): the encoder half of a UNet run on the
//! low-resolution latent at the diffusion timestep, returning one feature map per
//! resolution (the input of each downsampling step and the middle block's output), each
//! passed through its own ResBlock (`fea_tran`). The diffusion UNet's SPADE layers read
//! them by width.

use super::layers::{
    attention_heads, deserialize_unset_negative, ops, AttentionBlock, Conv2d, Downsample,
    ResBlock, TimeEmbed,
};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use std::collections::BTreeMap;

/// The structure features: feature maps of out_channels keyed by their width `w`
/// (StableSR's dict keyed by `str(width)`), kept in the networks' layout
/// ([`ops::channels_last`]) for the UNet's SPADE layers.
#[derive(Debug, Clone, Default)]
pub struct StructFeatures {
    by_width: BTreeMap<usize, Tensor>,
}

impl StructFeatures {
    /// No feature maps yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `map` (in the networks' layout) under its width; a second map of the same
    /// width is an error.
    pub fn insert(&mut self, map: Tensor) -> Result<()> {
        let width = ops::spatial_size(&map)?.1;
        if self.by_width.insert(width, map).is_some() {
            candle_core::bail!("two structure feature maps have width {width}");
        }
        Ok(())
    }

    /// The feature map of width `width` in the networks' layout.
    pub fn map(&self, width: usize) -> Result<&Tensor> {
        self.by_width.get(&width).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "no structure feature map of width {width} (have widths {:?}); the latent \
                 given to the structure encoder must have the size of the UNet's input",
                self.widths()
            ))
        })
    }

    /// The feature map of width `width`, (B, out_channels, h, width).
    pub fn get(&self, width: usize) -> Result<Tensor> {
        ops::to_nchw(self.map(width)?)
    }

    /// The widths present, smallest first.
    pub fn widths(&self) -> Vec<usize> {
        self.by_width.keys().copied().collect()
    }
}

/// `EncoderUNetModelWT`'s constructor arguments, as in StableSR's configs (unknown keys
/// such as `image_size` or `dropout` are ignored; -1 means "not set" for head counts).
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct StructEncoderConfig {
    pub in_channels: usize,
    pub model_channels: usize,
    /// Channels of every returned feature map (the UNet's `semb_channels`).
    pub out_channels: usize,
    pub num_res_blocks: usize,
    /// Downsampling factors (1, 2, 4, ...) at which an AttentionBlock follows each ResBlock.
    pub attention_resolutions: Vec<usize>,
    pub channel_mult: Vec<usize>,
    #[serde(default = "one_head", deserialize_with = "deserialize_unset_negative")]
    pub num_heads: Option<usize>,
    #[serde(default, deserialize_with = "deserialize_unset_negative")]
    pub num_head_channels: Option<usize>,
    /// Only the legacy QKV order (false) is implemented; StableSR uses it.
    #[serde(default)]
    pub use_new_attention_order: bool,
}

/// EncoderUNetModelWT's default `num_heads`.
fn one_head() -> Option<usize> {
    Some(1)
}

impl StructEncoderConfig {
    /// StableSR's structure encoder (`v2-finetune_text_T_512.yaml`, 52.5M parameters).
    pub fn stablesr_512() -> Self {
        Self {
            in_channels: 4,
            model_channels: 256,
            out_channels: 256,
            num_res_blocks: 2,
            attention_resolutions: vec![4, 2, 1],
            channel_mult: vec![1, 1, 2, 2],
            num_heads: Some(4),
            num_head_channels: None,
            use_new_attention_order: false,
        }
    }
}

/// One layer of a block (an element of a `TimestepEmbedSequential`).
#[derive(Debug, Clone)]
enum Layer {
    Conv(Conv2d),
    Res(ResBlock),
    Attention(AttentionBlock),
    Down(Downsample),
}

/// A `TimestepEmbedSequential`: layers applied in order, ResBlocks with the embedding.
#[derive(Debug, Clone)]
struct Block {
    layers: Vec<Layer>,
}

impl Block {
    fn forward(&self, x: &Tensor, emb: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for layer in &self.layers {
            h = match layer {
                Layer::Conv(conv) => conv.forward(&h)?,
                Layer::Res(block) => block.forward(&h, emb)?,
                Layer::Attention(block) => block.forward(&h)?,
                Layer::Down(down) => down.forward(&h)?,
            };
        }
        Ok(h)
    }

    fn is_downsample(&self) -> bool {
        matches!(self.layers.as_slice(), [Layer::Down(_)])
    }
}

/// The time-aware structure encoder.
#[derive(Debug, Clone)]
pub struct StructEncoder {
    time_embed: TimeEmbed,
    input_blocks: Vec<Block>,
    middle_block: Block,
    fea_tran: Vec<ResBlock>,
}

impl StructEncoder {
    /// `vb` at `structcond_stage_model`.
    pub fn new(vb: VarBuilder, cfg: &StructEncoderConfig) -> Result<Self> {
        if cfg.use_new_attention_order {
            candle_core::bail!(
                "structure encoder: use_new_attention_order is not supported (StableSR uses \
                 the legacy QKV order)"
            );
        }
        let emb_channels = 4 * cfg.model_channels;
        let heads_for = |ch: usize| {
            attention_heads(
                ch,
                cfg.num_heads,
                cfg.num_head_channels,
                "structure encoder attention",
            )
        };
        let vb_in = vb.pp("input_blocks");
        let mut input_blocks = vec![Block {
            layers: vec![Layer::Conv(Conv2d::same3x3(
                vb_in.pp("0").pp("0"),
                cfg.in_channels,
                cfg.model_channels,
            )?)],
        }];
        // Channels of each feature map handed to `fea_tran`, in order.
        let mut tapped_channels = Vec::new();
        let mut ch = cfg.model_channels;
        let mut ds = 1;
        for (level, mult) in cfg.channel_mult.iter().enumerate() {
            for _ in 0..cfg.num_res_blocks {
                let vb_block = vb_in.pp(input_blocks.len());
                let out_ch = mult * cfg.model_channels;
                let mut layers = vec![Layer::Res(ResBlock::new(
                    vb_block.pp("0"),
                    ch,
                    emb_channels,
                    out_ch,
                )?)];
                ch = out_ch;
                if cfg.attention_resolutions.contains(&ds) {
                    let (heads, _) = heads_for(ch)?;
                    layers.push(Layer::Attention(AttentionBlock::new(
                        vb_block.pp("1"),
                        ch,
                        heads,
                    )?));
                }
                input_blocks.push(Block { layers });
            }
            if level + 1 != cfg.channel_mult.len() {
                let vb_block = vb_in.pp(input_blocks.len());
                input_blocks.push(Block {
                    layers: vec![Layer::Down(Downsample::new(vb_block.pp("0"), ch, ch)?)],
                });
                tapped_channels.push(ch);
                ds *= 2;
            }
        }
        let vb_mid = vb.pp("middle_block");
        let (heads, _) = heads_for(ch)?;
        let middle_block = Block {
            layers: vec![
                Layer::Res(ResBlock::new(vb_mid.pp("0"), ch, emb_channels, ch)?),
                Layer::Attention(AttentionBlock::new(vb_mid.pp("1"), ch, heads)?),
                Layer::Res(ResBlock::new(vb_mid.pp("2"), ch, emb_channels, ch)?),
            ],
        };
        tapped_channels.push(ch);
        let fea_tran = tapped_channels
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                ResBlock::new(vb.pp("fea_tran").pp(i), c, emb_channels, cfg.out_channels)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            time_embed: TimeEmbed::new(vb.pp("time_embed"), cfg.model_channels)?,
            input_blocks,
            middle_block,
            fea_tran,
        })
    }

    /// `x` the low-resolution latent (B, in_channels, H, W), `timesteps` (B,) of any
    /// dtype, one per sample. Returns the feature maps of out_channels at widths
    /// W, W/2, ... (one per level).
    pub fn forward(&self, x: &Tensor, timesteps: &Tensor) -> Result<StructFeatures> {
        let emb = self.time_embed.forward(timesteps)?;
        // The input of every downsampling step, then the middle block's output.
        let mut tapped = Vec::with_capacity(self.fea_tran.len());
        let mut h = ops::from_nchw(x)?;
        for block in &self.input_blocks {
            if block.is_downsample() {
                tapped.push(h.clone());
            }
            h = block.forward(&h, &emb)?;
        }
        tapped.push(self.middle_block.forward(&h, &emb)?);
        let mut features = StructFeatures::new();
        for (map, transform) in tapped.iter().zip(&self.fea_tran) {
            features.insert(transform.forward(map, &emb)?)?;
        }
        Ok(features)
    }
}

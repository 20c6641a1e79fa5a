//! The OpenCLIP text tower that StableSR conditions on (`cond_stage_model`, ldm's
//! `FrozenOpenCLIPEmbedder` with `layer="penultimate"` around open_clip's ViT-H-14 CLIP).
//!
//! Tokens `(B, 77)` -> token embedding + positional embedding -> all residual attention
//! blocks but the last (causal self-attention, then an MLP with erf-GELU, each pre-normed)
//! -> `ln_final` -> `(B, 77, width)`. LayerNorm eps is 1e-5, attention scale dim_head^-0.5.
//! Ported from open_clip 2.0.2 (`model.py`: CLIP, Transformer, ResidualAttentionBlock) and
//! StableSR's `ldm/modules/encoders/modules.py`.
//!
//! Tokens: StableSR runs on the empty prompt, whose tokens need no tokenizer
//! ([`empty_prompt_tokens`]); other prompts go through [`tokenize`] with a tokenizer.json.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

/// open_clip's `<start_of_text>` token id.
pub const START_OF_TEXT: u32 = 49406;
/// open_clip's `<end_of_text>` token id.
pub const END_OF_TEXT: u32 = 49407;
/// open_clip pads token sequences with this id.
pub const PAD: u32 = 0;

/// LayerNorm epsilon (torch's default, which open_clip uses).
const LAYER_NORM_EPS: f64 = 1e-5;

/// Text tower hyperparameters (open_clip's `CLIPTextCfg` plus the joint embedding width of
/// `text_projection`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct TextConfig {
    /// Token vocabulary size.
    pub vocab_size: usize,
    /// Residual stream width (the output's last dimension).
    pub width: usize,
    /// Attention heads (width / heads per head).
    pub heads: usize,
    /// Residual attention blocks in the checkpoint (the last one is not run).
    pub layers: usize,
    /// Token sequence length (positional embeddings).
    pub context_length: usize,
    /// Output width of `text_projection` (CLIP's joint embedding), declared so a checkpoint
    /// loads completely; the penultimate-layer output does not use it.
    pub embed_dim: usize,
}

impl TextConfig {
    /// open_clip's ViT-H-14 text tower (StableSR's `cond_stage_model`).
    pub fn vit_h_14() -> Self {
        Self {
            vocab_size: 49408,
            width: 1024,
            heads: 16,
            layers: 24,
            context_length: 77,
            embed_dim: 1024,
        }
    }
}

/// torch's `nn.MultiheadAttention` as open_clip's text blocks use it: one packed input
/// projection (`in_proj_weight`/`in_proj_bias`, q then k then v) and `out_proj`.
#[derive(Debug, Clone)]
struct MultiheadAttention {
    in_proj: Linear,
    out_proj: Linear,
    heads: usize,
}

impl MultiheadAttention {
    fn new(width: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        let in_proj_weight = vb.get((3 * width, width), "in_proj_weight")?;
        let in_proj_bias = vb.get(3 * width, "in_proj_bias")?;
        Ok(Self {
            in_proj: Linear::new(in_proj_weight, Some(in_proj_bias)),
            out_proj: candle_nn::linear(width, width, vb.pp("out_proj"))?,
            heads,
        })
    }

    /// `x` `(B, L, W)`, `mask` `(L, L)` added to the scores (0 or -inf).
    fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, l, w) = x.dims3()?;
        let dim_head = w / self.heads;
        let qkv = self.in_proj.forward(x)?;
        // (B, L, W) slice -> (B, heads, L, dim_head)
        let split = |i: usize| -> Result<Tensor> {
            qkv.narrow(D::Minus1, i * w, w)?
                .reshape((b, l, self.heads, dim_head))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?);
        let scores = (q.matmul(&k.t()?)? * (dim_head as f64).powf(-0.5))?.broadcast_add(mask)?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = weights.matmul(&v)?.transpose(1, 2)?.reshape((b, l, w))?;
        self.out_proj.forward(&out)
    }
}

/// open_clip's `ResidualAttentionBlock`: `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))` with
/// `mlp = c_proj(gelu(c_fc(.)))`.
#[derive(Debug, Clone)]
struct ResidualAttentionBlock {
    ln_1: LayerNorm,
    attn: MultiheadAttention,
    ln_2: LayerNorm,
    c_fc: Linear,
    c_proj: Linear,
}

impl ResidualAttentionBlock {
    fn new(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let mlp_width = 4 * cfg.width;
        Ok(Self {
            ln_1: candle_nn::layer_norm(cfg.width, LAYER_NORM_EPS, vb.pp("ln_1"))?,
            attn: MultiheadAttention::new(cfg.width, cfg.heads, vb.pp("attn"))?,
            ln_2: candle_nn::layer_norm(cfg.width, LAYER_NORM_EPS, vb.pp("ln_2"))?,
            c_fc: candle_nn::linear(cfg.width, mlp_width, vb.pp("mlp").pp("c_fc"))?,
            c_proj: candle_nn::linear(mlp_width, cfg.width, vb.pp("mlp").pp("c_proj"))?,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.ln_1.forward(x)?, mask)?)?;
        let mlp = self
            .c_proj
            .forward(&self.c_fc.forward(&self.ln_2.forward(&x)?)?.gelu_erf()?)?;
        x + mlp
    }
}

/// The OpenCLIP text encoder as StableSR uses it: the penultimate block's output after
/// `ln_final`, for every token position.
#[derive(Debug, Clone)]
pub struct OpenClipText {
    token_embedding: Embedding,
    positional_embedding: Tensor,
    /// The blocks that run: all of the checkpoint's but the last.
    blocks: Vec<ResidualAttentionBlock>,
    ln_final: LayerNorm,
    context_length: usize,
}

impl OpenClipText {
    /// Takes the weights by open_clip's CLIP key names below `vb` (`token_embedding.weight`,
    /// `positional_embedding`, `transformer.resblocks.{i}.*`, `ln_final.*`,
    /// `text_projection`, `logit_scale`): pass `vb.pp("cond_stage_model").pp("model")` for
    /// StableSR's checkpoint, or the root of an open_clip checkpoint (its `visual.*` keys are
    /// not read). Every text-side key is requested, including the last block,
    /// `text_projection` and `logit_scale`, which this output does not use, so that the
    /// declared keys are exactly the checkpoint's.
    pub fn new(vb: VarBuilder, cfg: &TextConfig) -> Result<Self> {
        if cfg.layers < 2 {
            candle_core::bail!(
                "text tower: the penultimate-layer output needs at least 2 layers, config has {}",
                cfg.layers
            );
        }
        if cfg.heads == 0 || cfg.width % cfg.heads != 0 {
            candle_core::bail!(
                "text tower: width {} is not divisible into {} heads",
                cfg.width,
                cfg.heads
            );
        }
        let token_embedding =
            candle_nn::embedding(cfg.vocab_size, cfg.width, vb.pp("token_embedding"))?;
        let positional_embedding =
            vb.get((cfg.context_length, cfg.width), "positional_embedding")?;
        let vb_blocks = vb.pp("transformer").pp("resblocks");
        let mut blocks = (0..cfg.layers)
            .map(|i| ResidualAttentionBlock::new(cfg, vb_blocks.pp(i)))
            .collect::<Result<Vec<_>>>()?;
        // The last block is part of the checkpoint but "penultimate" stops before it.
        blocks.pop();
        // Unused by the penultimate-layer output; requested only so the declared keys match
        // the checkpoint's.
        vb.get((cfg.width, cfg.embed_dim), "text_projection")?;
        vb.get((), "logit_scale")?;
        Ok(Self {
            token_embedding,
            positional_embedding,
            blocks,
            ln_final: candle_nn::layer_norm(cfg.width, LAYER_NORM_EPS, vb.pp("ln_final"))?,
            context_length: cfg.context_length,
        })
    }

    /// Token ids `(B, context_length)` (u32) -> `(B, context_length, width)`.
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        let (_, l) = tokens.dims2()?;
        if l != self.context_length {
            candle_core::bail!(
                "text tower: expected token sequences of length {} (pad with {PAD}), got {l}",
                self.context_length
            );
        }
        let x = self
            .token_embedding
            .forward(tokens)?
            .broadcast_add(&self.positional_embedding)?;
        let mask = causal_mask(l, x.dtype(), x.device())?;
        let mut x = x;
        for block in &self.blocks {
            x = block.forward(&x, &mask)?;
        }
        self.ln_final.forward(&x)
    }
}

/// open_clip's additive attention mask: 0 on and below the diagonal, -inf above (a token
/// sees itself and the tokens before it).
fn causal_mask(len: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..len)
        .flat_map(|i| (0..len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(values, (len, len), device)?.to_dtype(dtype)
}

/// `[START_OF_TEXT, body..., END_OF_TEXT]` padded with [`PAD`] to `context_length`, as
/// open_clip's `tokenize` lays a sequence out; a body that does not fit is cut and the last
/// position becomes `end`.
fn frame_tokens(start: u32, body: &[u32], end: u32, context_length: usize) -> Vec<u32> {
    let mut tokens = Vec::with_capacity(context_length.max(body.len() + 2));
    tokens.push(start);
    tokens.extend_from_slice(body);
    tokens.push(end);
    if tokens.len() > context_length {
        tokens.truncate(context_length);
        if let Some(last) = tokens.last_mut() {
            *last = end;
        }
    }
    tokens.resize(context_length, PAD);
    tokens
}

/// open_clip's `tokenize("")`: start, end, then padding, `context_length` ids in all.
pub fn empty_prompt_tokens(context_length: usize) -> Vec<u32> {
    frame_tokens(START_OF_TEXT, &[], END_OF_TEXT, context_length)
}

/// Tokens of `text` laid out as open_clip's `tokenize` does (start, BPE tokens, end, zero
/// padding to `context_length`, cut to fit with the end token kept last).
///
/// `tokenizer` must be CLIP's BPE tokenizer in the `tokenizers` JSON format, for example
/// the `tokenizer.json` of `openai/clip-vit-large-patch14` on the Hugging Face hub, which has
/// the same 49408-token vocabulary as open_clip (load it with
/// `tokenizers::Tokenizer::from_file`). The start and end ids are looked up as
/// `<|startoftext|>` and `<|endoftext|>`, and the tokenizer's own special tokens, padding
/// and truncation are not applied. Its normaliser lower-cases and collapses whitespace as
/// open_clip does; open_clip also runs `ftfy.fix_text` and unescapes HTML, which this does
/// not, so text with mojibake or HTML entities can tokenise differently.
pub fn tokenize(
    tokenizer: &tokenizers::Tokenizer,
    text: &str,
    context_length: usize,
) -> anyhow::Result<Vec<u32>> {
    let special = |name: &str| {
        tokenizer.token_to_id(name).ok_or_else(|| {
            anyhow::anyhow!("the tokenizer has no {name} token; use CLIP's tokenizer.json (e.g. openai/clip-vit-large-patch14)")
        })
    };
    let (start, end) = (special("<|startoftext|>")?, special("<|endoftext|>")?);
    let encoding = tokenizer
        .encode(text, false)
        .map_err(|e| anyhow::anyhow!("tokenizing {text:?} failed: {e}"))?;
    Ok(frame_tokens(start, encoding.get_ids(), end, context_length))
}

/// `(batch, context_length)` u32 tensor of the same token sequence in every row.
pub fn tokens_tensor(tokens: &[u32], batch: usize, device: &Device) -> Result<Tensor> {
    Tensor::new(tokens, device)?
        .unsqueeze(0)?
        .repeat((batch, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_cuts_long_bodies_and_keeps_the_end_token() {
        let long: Vec<u32> = (1..=100).collect();
        let framed = frame_tokens(7, &long, 9, 10);
        assert_eq!(framed, vec![7, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let short = frame_tokens(7, &[3], 9, 6);
        assert_eq!(short, vec![7, 3, 9, 0, 0, 0]);
    }

    #[test]
    fn causal_mask_hides_later_tokens_only() {
        let mask = causal_mask(3, DType::F32, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (i, row) in mask.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                assert_eq!(v == f32::NEG_INFINITY, j > i, "mask[{i}][{j}] = {v}");
                assert!(v == 0.0 || v == f32::NEG_INFINITY);
            }
        }
    }
}

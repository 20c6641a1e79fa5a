//! Our own learned restorers, built from the StableSR modules and working at true
//! resolution: the art-pixel grid itself is the "latent".
//!
//! The codec: the grid analysis finds the cells, [`rectify`](crate::rectify) resamples each
//! to `factor` x `factor` pixels, and pixel-unshuffle folds those into channels, giving the
//! structure encoder's input (B, 4 f², rows, cols). The clean sprite is (B, 4, rows, cols)
//! RGBA in [-1, 1], four channels like an SD latent. The prediction goes through the
//! decoder's palette and alpha stage.
//!
//! - [`FastRestorer`]: the structure encoder (at timestep 0) and a small head predict the
//!   clean sprite in one pass, as a residual over the cells' mean colour.
//! - [`DiffusionRestorer`]: a UNet with SPADE modulation from the time-aware structure
//!   encoder denoises the sprite, driven by our samplers. With a `base` (a frozen fast
//!   restorer stored in the same weights file), the diffusion state is the residual
//!   between the clean sprite and the base's prediction, and the UNet sees that prediction
//!   beside the noisy state: sampling then only has to correct what the one-pass model
//!   got wrong.

use crate::decoder::{decode, reduce_cells, CellColours, DecodeOptions, Decoded};
use crate::decoder::deconvolve::{BlurFit, LinePlacement};
use crate::grid::{analyse, Grid, GridOptions};
use crate::rectify::{image_to_tensor, pixel_unshuffle, rectify};
use crate::stablesr::layers::{ops, Conv2d, GroupNorm};
use crate::stablesr::struct_encoder::{StructEncoder, StructEncoderConfig};
use crate::stablesr::unet::{UNet, UNetConfig};
use crate::tiling::{map_tiles, Tiling};
use crate::train::losses::{sprite_losses, BatchLoss, LossWeights};
use anyhow::{bail, Context};
use std::collections::HashMap;
use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::VarBuilder;
use image::RgbaImage;
use serde::{Deserialize, Serialize};
use spritedx_samplers::{FnDenoiser, Method, Prediction, Sampler, Schedule, Start};

/// Which of the two models.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Fast,
    Diffusion,
}

/// How the diffusion model samples.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplingConfig {
    /// Steps of the sampler (respaced from the training schedule's 1000).
    pub steps: usize,
    /// Where sampling starts: 1 = pure noise at the noisiest step; below 1, the cells'
    /// mean colours noised to that share of the schedule (img2img).
    pub strength: f64,
    /// `ddim` or `dpm++2m`.
    pub method: String,
    /// Samples drawn per input and averaged (1: one sample). A sample invents detail
    /// where the input is ambiguous; the average keeps what the samples agree on.
    #[serde(default = "one_sample")]
    pub samples: usize,
    /// Residual models: pixels whose sampled correction of the base changes no channel by
    /// this much (in [-1, 1] units) keep the base's value. 0 keeps every correction.
    #[serde(default)]
    pub min_correction: f64,
}

fn one_sample() -> usize {
    1
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self { steps: 20, strength: 1.0, method: "dpm++2m".into(), samples: one_sample(), min_correction: 0.0 }
    }
}

/// The configuration of a pixel restorer (what `config.json` of a checkpoint holds).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PixelRestorerConfig {
    pub kind: ModelKind,
    /// Rectified pixels per art pixel per side; the encoder input has 4 f² channels.
    pub factor: u32,
    pub encoder: StructEncoderConfig,
    /// The diffusion UNet (diffusion models only).
    #[serde(default)]
    pub unet: Option<UNetConfig>,
    /// The fast model's head width.
    #[serde(default = "default_head_channels")]
    pub head_channels: usize,
    /// `v` or `eps` (diffusion models).
    #[serde(default = "default_prediction")]
    pub prediction: String,
    /// Training schedule: `cosine` or `linear` (LDM's), 1000 steps.
    #[serde(default = "default_schedule")]
    pub schedule: String,
    #[serde(default)]
    pub sampling: SamplingConfig,
    /// Cells whose input interior varies less than this (OKLab distance, the decoder's
    /// `spread`) keep the decoder's own robust colour and alpha instead of the model's:
    /// where the input shows no degradation, there is nothing for the model to undo, and
    /// its small regression errors would only move exact colours. 0 disables it.
    #[serde(default)]
    pub trust_flat_cells_below: f32,
    /// Diffusion models only: the fast restorer (weights under `base.*`, frozen) whose
    /// prediction the diffusion refines. The state is then `clean - base(input)` and the
    /// UNet input is the state and the base prediction side by side (`unet.in_channels`
    /// 8). None: the state is the clean sprite itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Box<PixelRestorerConfig>>,
    /// With a base: the diffusion state is the residual times this. Residuals are small
    /// (most cells are already right), and unscaled they would drown in the unit noise of
    /// every step but the last few; scaled towards unit spread, the schedule covers them,
    /// and a network error in the state costs only 1/scale of it in the sprite.
    #[serde(default = "default_residual_scale", skip_serializing_if = "is_default_residual_scale")]
    pub residual_scale: f64,
    /// The encoder input carries 4 more channels: each cell's colour and alpha as the snap
    /// decoder fits them (deconvolved under the kernel and blur that best explain an
    /// interpolated upscale, the cells' robust colours otherwise), and the fast model
    /// predicts its residual over those instead of over the cells' mean colour. The
    /// decoder's fit sees the whole image, so it knows the blur better than the encoder's
    /// neighbourhood can; the network corrects what the fit gets wrong.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fitted_cells: bool,
}

fn default_head_channels() -> usize {
    64
}
fn default_prediction() -> String {
    "v".into()
}
fn default_schedule() -> String {
    "cosine".into()
}
fn default_residual_scale() -> f64 {
    1.0
}
fn is_default_residual_scale(scale: &f64) -> bool {
    *scale == default_residual_scale()
}

/// Timesteps of the training schedule.
pub const TRAIN_TIMESTEPS: usize = 1000;

impl PixelRestorerConfig {
    /// The small configs this project trains on 2 cores.
    pub fn small(kind: ModelKind) -> Self {
        let factor = 4;
        let encoder = StructEncoderConfig {
            in_channels: 4 * (factor * factor) as usize,
            model_channels: 64,
            out_channels: 64,
            num_res_blocks: 1,
            attention_resolutions: vec![2],
            channel_mult: vec![1, 2],
            num_heads: Some(4),
            num_head_channels: None,
            use_new_attention_order: false,
        };
        let unet = (kind == ModelKind::Diffusion).then(|| UNetConfig {
            in_channels: 4,
            out_channels: 4,
            model_channels: 64,
            channel_mult: vec![1, 2],
            num_res_blocks: 1,
            attention_resolutions: vec![2],
            num_heads: None,
            num_head_channels: Some(32),
            context_dim: None,
            semb_channels: 64,
            transformer_depth: 1,
            use_linear_in_transformer: true,
        });
        Self {
            kind,
            factor,
            encoder,
            unet,
            head_channels: default_head_channels(),
            prediction: default_prediction(),
            schedule: default_schedule(),
            sampling: SamplingConfig::default(),
            trust_flat_cells_below: 0.0,
            base: None,
            residual_scale: default_residual_scale(),
            fitted_cells: false,
        }
    }

    /// This config with the fitted cells as 4 more input channels (see
    /// [`PixelRestorerConfig::fitted_cells`]).
    pub fn with_fitted_cells(mut self) -> Self {
        self.fitted_cells = true;
        self.encoder.in_channels = self.input_channels();
        self
    }

    /// Channels of the encoder input: the `4 f²` of the rectified cells, plus 4 with the
    /// fitted cells.
    pub fn input_channels(&self) -> usize {
        input_channels(self.factor, self.fitted_cells)
    }

    /// This diffusion config turned into a residual one over the fast model `base`: the
    /// UNet takes the base prediction as 4 more input channels, the structure encoder
    /// takes the base's shape (so it can start from the base's trained encoder), and the
    /// decoder keeps the base's inference setting for flat cells.
    pub fn with_base(mut self, base: PixelRestorerConfig) -> anyhow::Result<Self> {
        if self.kind != ModelKind::Diffusion {
            bail!("only a diffusion model refines a base model");
        }
        if base.kind != ModelKind::Fast {
            bail!("the base of a diffusion model must be a fast model");
        }
        if base.factor != self.factor {
            bail!("the base model rectifies at factor {}, this model at {}", base.factor, self.factor);
        }
        let unet = self.unet.as_mut().context("a diffusion config needs `unet`")?;
        unet.in_channels = 2 * unet.out_channels;
        self.encoder = base.encoder.clone();
        self.fitted_cells = base.fitted_cells;
        self.trust_flat_cells_below = base.trust_flat_cells_below;
        self.base = Some(Box::new(base));
        Ok(self)
    }

    /// Art pixels per side must be a multiple of this (the networks halve the size once
    /// per level below the first).
    pub fn size_multiple(&self) -> usize {
        let levels = self.unet.as_ref().map_or(self.encoder.channel_mult.len(), |u| u.channel_mult.len().max(self.encoder.channel_mult.len()));
        let own = 1 << levels.saturating_sub(1);
        self.base.as_ref().map_or(own, |b| own.max(b.size_multiple()))
    }

    pub fn prediction(&self) -> anyhow::Result<Prediction> {
        match self.prediction.as_str() {
            "v" => Ok(Prediction::V),
            "eps" => Ok(Prediction::Eps),
            other => bail!("unknown prediction {other:?}: use v or eps"),
        }
    }

    pub fn training_schedule(&self) -> anyhow::Result<Schedule> {
        Ok(match self.schedule.as_str() {
            "cosine" => Schedule::cosine(TRAIN_TIMESTEPS, 0.008)?,
            "linear" => Schedule::ldm_linear()?,
            other => bail!("unknown schedule {other:?}: use cosine or linear"),
        })
    }

    pub fn method(&self) -> anyhow::Result<Method> {
        Ok(match self.sampling.method.as_str() {
            "ddim" => Method::Ddim { eta: 0.0 },
            "dpm++2m" => Method::DpmSolverPP2M { lower_order_final: true },
            "ddpm" => Method::Ddpm,
            other => bail!("unknown sampler {other:?}: use dpm++2m, ddim or ddpm"),
        })
    }
}

/// The colours a model's prediction starts from, (B, 4, H, W), read from the encoder
/// input: the fitted cells when the input carries them, else the mean over each cell's
/// `f²` rectified sub-pixels. The fast model's residual is over these, and the diffusion
/// model's img2img starts from them.
pub fn anchor_colours(input: &Tensor, factor: u32, fitted_cells: bool) -> Result<Tensor> {
    let (b, _, h, w) = input.dims4()?;
    let ff = (factor * factor) as usize;
    match fitted_cells {
        true => input.narrow(1, 4 * ff, 4),
        false => input.narrow(1, 0, 4 * ff)?.reshape((b, 4, ff, h, w))?.mean(2),
    }
}

/// Channels of the encoder input at `factor`: the pixel-unshuffled rectified cells, then
/// with `fitted_cells` the 4 of the fitted cells.
pub fn input_channels(factor: u32, fitted_cells: bool) -> usize {
    4 * (factor * factor) as usize + if fitted_cells { 4 } else { 0 }
}

/// The encoder must take what the codec makes.
fn check_input_channels(cfg: &PixelRestorerConfig) -> Result<()> {
    if cfg.encoder.in_channels != cfg.input_channels() {
        candle_core::bail!(
            "encoder.in_channels is {}, but factor {}{} makes {} input channels",
            cfg.encoder.in_channels,
            cfg.factor,
            if cfg.fitted_cells { " with fitted cells" } else { "" },
            cfg.input_channels()
        );
    }
    Ok(())
}

/// The one-pass restorer: structure encoder + head.
pub struct FastRestorer {
    encoder: StructEncoder,
    norm: GroupNorm,
    hidden: Conv2d,
    out: Conv2d,
    factor: u32,
    fitted_cells: bool,
}

impl FastRestorer {
    /// Weights under `encoder.*` and `head.*`.
    pub fn new(vb: VarBuilder, cfg: &PixelRestorerConfig) -> Result<Self> {
        check_input_channels(cfg)?;
        let encoder = StructEncoder::new(vb.pp("encoder"), &cfg.encoder)?;
        let c = cfg.encoder.out_channels;
        let head = vb.pp("head");
        Ok(Self {
            encoder,
            norm: GroupNorm::group_norm32(head.pp("norm"), c)?,
            hidden: Conv2d::same3x3(head.pp("hidden"), c, cfg.head_channels)?,
            out: Conv2d::same3x3(head.pp("out"), cfg.head_channels, 4)?,
            factor: cfg.factor,
            fitted_cells: cfg.fitted_cells,
        })
    }

    /// The clean sprite (B, 4, H, W) from the encoder input (B, C, H, W), C as
    /// [`PixelRestorerConfig::input_channels`].
    pub fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let (b, _, _, w) = input.dims4()?;
        let t = Tensor::zeros(b, DType::F32, input.device())?;
        let features = self.encoder.forward(input, &t)?;
        let finest = features.map(w)?;
        let h = self.hidden.forward(&self.norm.forward_silu(finest)?)?;
        let residual = self.out.forward(&ops::silu(&h)?)?;
        anchor_colours(input, self.factor, self.fitted_cells)? + ops::to_nchw(&residual)?
    }

    pub fn loss(&self, input: &Tensor, target: &Tensor, w: &LossWeights) -> Result<BatchLoss> {
        let predicted = self.forward(input)?;
        let (total, parts) = sprite_losses(&predicted, target, w)?;
        Ok(BatchLoss { total, parts, predicted })
    }
}

/// The diffusion restorer: UNet with SPADE from the time-aware structure encoder,
/// optionally refining a frozen fast model (see [`PixelRestorerConfig::base`]).
pub struct DiffusionRestorer {
    encoder: StructEncoder,
    unet: UNet,
    base: Option<FastRestorer>,
    prediction: Prediction,
    schedule: Schedule,
    cfg: PixelRestorerConfig,
}

impl DiffusionRestorer {
    /// Weights under `encoder.*`, `unet.*` and, with a base, `base.*`.
    pub fn new(vb: VarBuilder, cfg: &PixelRestorerConfig) -> anyhow::Result<Self> {
        check_input_channels(cfg)?;
        let unet_cfg = cfg.unet.as_ref().context("a diffusion restorer's config needs `unet`")?;
        let base = match &cfg.base {
            Some(base_cfg) => {
                if unet_cfg.in_channels != 2 * unet_cfg.out_channels {
                    bail!("a diffusion model with a base needs unet.in_channels = {}", 2 * unet_cfg.out_channels);
                }
                Some(FastRestorer::new(vb.pp("base"), base_cfg)?)
            }
            None => None,
        };
        Ok(Self {
            encoder: StructEncoder::new(vb.pp("encoder"), &cfg.encoder)?,
            unet: UNet::new(vb.pp("unet"), unet_cfg)?,
            base,
            prediction: cfg.prediction()?,
            schedule: cfg.training_schedule()?,
            cfg: cfg.clone(),
        })
    }

    /// What the diffusion state is relative to: the base model's prediction (detached: the
    /// base is frozen), or None when the state is the sprite itself.
    pub fn base_prediction(&self, input: &Tensor) -> Result<Option<Tensor>> {
        self.base.as_ref().map(|b| Ok(b.forward(input)?.detach())).transpose()
    }

    /// The network's output for `x_t` at per-sample `timesteps` (B,) given the encoder
    /// input and, for a residual model, the base prediction.
    pub fn predict(&self, x_t: &Tensor, timesteps: &Tensor, input: &Tensor, base: Option<&Tensor>) -> Result<Tensor> {
        let t = timesteps.to_dtype(DType::F32)?;
        let features = self.encoder.forward(input, &t)?;
        match base {
            Some(base) => self.unet.forward(&Tensor::cat(&[x_t, base], 1)?, &t, None, Some(&features)),
            None => self.unet.forward(x_t, &t, None, Some(&features)),
        }
    }

    /// The training loss at timesteps and noise drawn from `seed`: the diffusion loss on
    /// the network output, plus the sprite losses on the predicted clean sprite. Without
    /// an encoder `input`, the loss of the unconditional prior: the UNet alone, no SPADE,
    /// denoising clean sprites (a model without a base only).
    pub fn loss(&self, input: Option<&Tensor>, target: &Tensor, seed: u64, w: &LossWeights) -> Result<BatchLoss> {
        use rand::Rng;
        let base = match input {
            Some(input) => self.base_prediction(input)?,
            None if self.base.is_some() => candle_core::bail!("a residual diffusion model has no unconditional prior: its state depends on the input"),
            None => None,
        };
        let clean = target;
        let target = &match &base {
            Some(base) => ((clean - base)? * self.cfg.residual_scale)?,
            None => clean.clone(),
        };
        let (b, c, h, wd) = target.dims4()?;
        let mut rng = crate::rng::rng_from_seed(seed);
        let steps: Vec<usize> = (0..b).map(|_| rng.random_range(0..self.schedule.len())).collect();
        let noise: Vec<f32> = (0..b * c * h * wd).map(|_| rng.sample(rand_distr::StandardNormal)).collect();
        let noise = Tensor::from_vec(noise, target.shape(), target.device())?;
        let ac: Vec<f64> = steps.iter().map(|&s| self.schedule.alphas_cumprod()[s]).collect();
        let per_sample = |v: Vec<f32>| Tensor::from_vec(v, (b, 1, 1, 1), target.device());
        let alpha = per_sample(ac.iter().map(|a| a.sqrt() as f32).collect())?;
        let sigma = per_sample(ac.iter().map(|a| (1.0 - a).sqrt() as f32).collect())?;
        let x_t = (target.broadcast_mul(&alpha)? + noise.broadcast_mul(&sigma)?)?;
        let t = Tensor::from_vec(steps.iter().map(|&s| s as f32).collect::<Vec<_>>(), b, target.device())?;
        let out = match input {
            Some(input) => self.predict(&x_t, &t, input, base.as_ref())?,
            None => self.unet.forward(&x_t, &t, None, None)?,
        };
        let (wanted, x0) = match self.prediction {
            Prediction::Eps => (noise.clone(), ((&x_t - out.broadcast_mul(&sigma)?)?.broadcast_div(&alpha))?),
            Prediction::V => (
                (noise.broadcast_mul(&alpha)? - target.broadcast_mul(&sigma)?)?,
                (x_t.broadcast_mul(&alpha)? - out.broadcast_mul(&sigma)?)?,
            ),
        };
        let diffusion = (&out - &wanted)?.sqr()?.mean_all()?;
        let predicted = match &base {
            Some(base) => ((x0 / self.cfg.residual_scale)? + base)?,
            None => x0,
        };
        let predicted = predicted.clamp(-1.5, 1.5)?;
        let (sprite, mut parts) = sprite_losses(&predicted, clean, w)?;
        parts.insert(0, ("diffusion", diffusion.to_scalar::<f32>()?));
        Ok(BatchLoss { total: ((diffusion * w.diffusion)? + sprite)?, parts, predicted })
    }

    /// Changes how [`DiffusionRestorer::sample`] samples (steps, start, method).
    pub fn set_sampling(&mut self, sampling: SamplingConfig) {
        self.cfg.sampling = sampling;
    }

    /// Samples clean sprites for a batch of encoder inputs, seeded per sample. With
    /// `sampling.samples` K > 1, each input is sampled K times (seeds derived from its own)
    /// in one batch and the K results averaged.
    pub fn sample(&self, input: &Tensor, seeds: &[u64]) -> anyhow::Result<Tensor> {
        let k = self.cfg.sampling.samples.max(1);
        if k == 1 {
            return self.sample_once(input, seeds);
        }
        let (b, c, h, w) = input.dims4()?;
        let repeated = input.unsqueeze(1)?.broadcast_as((b, k, c, h, w))?.reshape((b * k, c, h, w))?;
        let seeds: Vec<u64> = seeds.iter().flat_map(|&s| (0..k as u64).map(move |i| crate::rng::derive_seed(s, &[i]))).collect();
        let sprites = self.sample_once(&repeated, &seeds)?;
        Ok(sprites.reshape((b, k, 4, h, w))?.mean(1)?)
    }

    fn sample_once(&self, input: &Tensor, seeds: &[u64]) -> anyhow::Result<Tensor> {
        let sampling = &self.cfg.sampling;
        let sampler = Sampler::new(&self.schedule, sampling.steps, self.cfg.method()?)?;
        let base = self.base_prediction(input)?;
        let mut denoiser = FnDenoiser::new(self.prediction, |x_t: &Tensor, t: &Tensor| self.predict(x_t, t, input, base.as_ref()));
        let (b, _, h, w) = input.dims4()?;
        let shape = [b, 4, h, w];
        // img2img starts from the best guess without sampling: the cells' mean colours,
        // or for a residual model a zero residual (the base prediction itself).
        let guess = match &base {
            Some(base) => base.zeros_like()?,
            None => anchor_colours(input, self.cfg.factor, self.cfg.fitted_cells)?,
        };
        let start = if sampling.strength >= 1.0 {
            Start::Noise { shape: &shape, dtype: DType::F32, device: input.device() }
        } else {
            Start::Latent { latent: &guess, strength: sampling.strength }
        };
        let state = sampler.sample(&mut denoiser, start, seeds, None)?;
        let sprite = match &base {
            Some(base) => (self.kept_correction(&(state / self.cfg.residual_scale)?)? + base)?,
            None => state,
        };
        Ok(sprite.clamp(-1.0, 1.0)?)
    }

    /// A residual model's correction (B, 4, H, W) of the base, with the pixels whose
    /// largest channel change is below `sampling.min_correction` set to zero: the sampler
    /// leaves a little noise everywhere, and a pixel the base got right should stay exact.
    fn kept_correction(&self, correction: &Tensor) -> Result<Tensor> {
        let threshold = self.cfg.sampling.min_correction;
        if threshold <= 0.0 {
            return Ok(correction.clone());
        }
        let keep = correction.abs()?.max_keepdim(1)?.ge(threshold)?.to_dtype(correction.dtype())?;
        correction.broadcast_mul(&keep)
    }
}

/// A loaded pixel restorer of either kind.
pub enum PixelRestorer {
    Fast(FastRestorer),
    Diffusion(DiffusionRestorer),
}

impl PixelRestorer {
    pub fn new(vb: VarBuilder, cfg: &PixelRestorerConfig) -> anyhow::Result<Self> {
        Ok(match cfg.kind {
            ModelKind::Fast => Self::Fast(FastRestorer::new(vb, cfg)?),
            ModelKind::Diffusion => Self::Diffusion(DiffusionRestorer::new(vb, cfg)?),
        })
    }

    /// The training loss of a batch.
    pub fn loss(&self, input: &Tensor, target: &Tensor, seed: u64, w: &LossWeights) -> Result<BatchLoss> {
        match self {
            Self::Fast(m) => m.loss(input, target, w),
            Self::Diffusion(m) => m.loss(Some(input), target, seed, w),
        }
    }

    /// The clean sprites predicted for a batch of encoder inputs, one seed per input (for
    /// the diffusion sampler). An input larger than a tile ([`Tiling::default`]) is
    /// predicted in overlapping tiles, each seeded from the input's seed and its index.
    pub fn predict(&self, input: &Tensor, seeds: &[u64]) -> anyhow::Result<Tensor> {
        tiled(input, seeds, |tiles, tile_seeds| self.predict_whole(tiles, tile_seeds))
    }

    /// A diffusion model's base prediction (the fast model its sampler refines) for a
    /// batch of encoder inputs, tiled as [`PixelRestorer::predict`] tiles; `None` for the
    /// fast model and for a diffusion model without a base.
    pub fn base_prediction(&self, input: &Tensor) -> anyhow::Result<Option<Tensor>> {
        let Self::Diffusion(m) = self else { return Ok(None) };
        if m.base.is_none() {
            return Ok(None);
        }
        let seeds = vec![0; input.dim(0)?];
        let base = tiled(input, &seeds, |tiles, _| Ok(m.base_prediction(tiles)?.expect("a base").clamp(-1.0, 1.0)?))?;
        Ok(Some(base))
    }

    fn predict_whole(&self, input: &Tensor, seeds: &[u64]) -> anyhow::Result<Tensor> {
        match self {
            Self::Fast(m) => Ok(m.forward(input)?.clamp(-1.0, 1.0)?),
            Self::Diffusion(m) => m.sample(input, seeds),
        }
    }
}

/// `net` on a batch of encoder inputs, one seed per input: in one piece, or for an input
/// larger than a tile ([`Tiling::default`]) in overlapping tiles, each seeded from the
/// input's seed and its index.
fn tiled(input: &Tensor, seeds: &[u64], net: impl Fn(&Tensor, &[u64]) -> anyhow::Result<Tensor>) -> anyhow::Result<Tensor> {
    let tiling = Tiling::default();
    let (b, _, h, w) = input.dims4()?;
    if h <= tiling.tile && w <= tiling.tile {
        return net(input, seeds);
    }
    if seeds.len() != b {
        bail!("{} seeds for a batch of {b} inputs", seeds.len());
    }
    let images = (0..b)
        .map(|i| {
            map_tiles(&input.narrow(0, i, 1)?, tiling, |tiles, first| {
                let tile_seeds: Vec<u64> = (first..first + tiles.dim(0)?).map(|t| crate::rng::derive_seed(seeds[i], &[t as u64])).collect();
                net(tiles, &tile_seeds)
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&images, 0)?)
}

/// The cells as the snap decoder fits them (see [`PixelRestorerConfig::fitted_cells`]):
/// `robust`, the cells' robust colours, refitted under the kernel and blur that best
/// explain the image when it was upscaled by an interpolating kernel; and that blur model,
/// if any, for the palette stage.
pub fn fit_cells(image: &RgbaImage, grid: &Grid, robust: &CellColours, placement: LinePlacement) -> (CellColours, Option<BlurFit>) {
    let mut cells = robust.clone();
    let fit = crate::decoder::deconvolve::refine(image, grid, &mut cells, placement);
    (cells, fit)
}

/// Cells as an image, one pixel per cell.
pub fn cells_image(cells: &CellColours) -> RgbaImage {
    RgbaImage::from_fn(cells.cols, cells.rows, |x, y| {
        let i = (y * cells.cols + x) as usize;
        let [r, g, b] = crate::decoder::cell_srgb(cells, i);
        image::Rgba([r, g, b, cells.alpha[i].round().clamp(0.0, 255.0) as u8])
    })
}

/// What the codec reads from an image for a model.
pub struct EncodedImage {
    pub grid: Grid,
    /// The cells' robust colours: their spreads tell how noisy each cell is.
    pub cells: CellColours,
    /// The fitted cells, for a model that reads them.
    pub fitted: Option<CellColours>,
    /// The cells the snap decoder decodes: fitted under the blur model where there is one.
    pub decoder_cells: CellColours,
    /// The blur model the decoder fitted to the image, if it was upscaled by an
    /// interpolating kernel: the palette stage chooses colours by it (see
    /// [`crate::snap::finish`]).
    pub fit: Option<BlurFit>,
    /// The encoder input (1, C, H', W').
    pub input: Tensor,
}

/// The codec's encoding of an image: grid analysis, the cells' robust (and for a model
/// that reads them, fitted) colours, rectification to `factor` pixels per cell, padding
/// (by repeating the last row and column of cells) to a multiple of the model's
/// [`PixelRestorerConfig::size_multiple`] cells, pixel-unshuffle and, with fitted cells,
/// those as 4 more channels.
pub fn encode_image(image: &RgbaImage, grid_opts: &GridOptions, cfg: &PixelRestorerConfig, device: &Device) -> anyhow::Result<EncodedImage> {
    let grid = analyse(image, grid_opts)?;
    let cells = reduce_cells(image, &grid);
    let (fitted_cells, fit) = fit_cells(image, &grid, &cells, crate::snap::line_placement(grid_opts));
    let fitted = cfg.fitted_cells.then(|| fitted_cells.clone());
    let factor = cfg.factor;
    let multiple = cfg.size_multiple() as u32;
    let (pad_cols, pad_rows) = (grid.cols().div_ceil(multiple) * multiple, grid.rows().div_ceil(multiple) * multiple);
    let padded = |img: &RgbaImage, scale: u32| RgbaImage::from_fn(pad_cols * scale, pad_rows * scale, |x, y| *img.get_pixel(x.min(img.width() - 1), y.min(img.height() - 1)));
    let rectified = rectify(image, &grid, factor);
    let mut input = pixel_unshuffle(&image_to_tensor(&padded(&rectified, factor), device)?, factor as usize)?;
    if let Some(fitted) = &fitted {
        input = Tensor::cat(&[&input, &image_to_tensor(&padded(&cells_image(fitted), 1), device)?], 1)?;
    }
    Ok(EncodedImage { grid, cells, fitted, decoder_cells: fitted_cells, fit, input })
}

/// The decoder's palette and alpha stage on a predicted sprite: the prediction (1, 4, H', W')
/// cropped to the grid's cells becomes the cells' colour and alpha; the cells' spread
/// (how noisy the input was) comes from their `robust` colours, so near-duplicate colours
/// merge as they do for the snap restorer.
/// Cells whose input spread is below `trust_flat_below` keep the decoder's own colour and
/// alpha, the `fitted` one where given (see
/// [`PixelRestorerConfig::trust_flat_cells_below`]; 0 uses the prediction everywhere).
pub fn decode_prediction(pred: &Tensor, robust: &CellColours, fitted: Option<&CellColours>, opts: &DecodeOptions, trust_flat_below: f32) -> anyhow::Result<Decoded> {
    Ok(decode(&predicted_cells(pred, robust, fitted, trust_flat_below)?, opts))
}

/// The cells of [`decode_prediction`], before the palette and alpha stage.
pub fn predicted_cells(pred: &Tensor, robust: &CellColours, fitted: Option<&CellColours>, trust_flat_below: f32) -> anyhow::Result<CellColours> {
    let cropped = pred.narrow(D::Minus2, 0, robust.rows as usize)?.narrow(D::Minus1, 0, robust.cols as usize)?;
    let predicted = crate::rectify::tensor_to_image(&cropped)?;
    let mut cells = fitted.unwrap_or(robust).clone();
    cells.spread.clone_from(&robust.spread);
    for (i, p) in predicted.pixels().enumerate() {
        if robust.spread[i] < trust_flat_below {
            continue;
        }
        cells.colour[i] = crate::colour::srgb8_to_oklab([p[0], p[1], p[2]]);
        cells.alpha[i] = f32::from(p[3]);
    }
    Ok(cells)
}

/// Where the trained models ship: `checkpoints/` of the source tree (the binary is built
/// from it), or `$SPRITEDX_CHECKPOINTS` when set.
pub fn checkpoints_dir() -> std::path::PathBuf {
    match std::env::var_os("SPRITEDX_CHECKPOINTS") {
        Some(dir) => dir.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("checkpoints"),
    }
}

/// The shipped model folder of a kind: `checkpoints/pixel-restorer` (diffusion) and
/// `checkpoints/pixel-restorer-fast`.
pub fn default_model_dir(kind: ModelKind) -> std::path::PathBuf {
    checkpoints_dir().join(match kind {
        ModelKind::Diffusion => "pixel-restorer",
        ModelKind::Fast => "pixel-restorer-fast",
    })
}

/// A pixel restorer loaded from a model folder, ready to restore images.
pub struct LoadedPixelRestorer {
    pub config: PixelRestorerConfig,
    pub model: PixelRestorer,
    /// Seed of the diffusion sampler (the same for every image, so results repeat).
    pub seed: u64,
}

impl LoadedPixelRestorer {
    /// Loads `dir` (`config.json` + `model.safetensors`); each of `adapters` is a file of
    /// tensors (from a fine-tuning run) that replace the same-named ones, in order. A fast
    /// model's adapter given to a diffusion model replaces the tensors of its base (see
    /// [`adapter_prefix`]), so a style learned by the fast model reaches the diffusion
    /// model's base prediction too.
    pub fn load(dir: &std::path::Path, adapters: &[std::path::PathBuf]) -> anyhow::Result<Self> {
        let (config, mut tensors) = crate::train::run::load_model_dir(dir)
            .with_context(|| format!("loading the model in {} (train one with `spritedx train`)", dir.display()))?;
        for path in adapters {
            let (adapter_tensors, _) = crate::train::checkpoint::load(path, &Device::Cpu)?;
            let prefix = adapter_prefix(&adapter_tensors, &tensors);
            for (name, t) in adapter_tensors {
                let name = format!("{prefix}{name}");
                match tensors.get(&name) {
                    Some(own) if own.dims() == t.dims() => {
                        tensors.insert(name, t);
                    }
                    Some(own) => bail!("adapter tensor {name} has shape {:?}, the model's {:?}", t.dims(), own.dims()),
                    None => bail!("adapter {} has {name}, which the model in {} lacks: was it trained from this model?", path.display(), dir.display()),
                }
            }
        }
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let model = PixelRestorer::new(vb, &config)?;
        Ok(Self { config, model, seed: 0 })
    }

    /// Sets the diffusion sampler's step count (the fast model has none).
    pub fn set_steps(&mut self, steps: usize) -> anyhow::Result<()> {
        if steps == 0 {
            bail!("the sampler needs at least 1 step");
        }
        self.config.sampling.steps = steps;
        if let PixelRestorer::Diffusion(m) = &mut self.model {
            m.set_sampling(self.config.sampling.clone());
        }
        Ok(())
    }

    /// Restores one image: grid analysis (with the options' overrides), the model, then
    /// the decoder's palette and alpha stage with the options' settings.
    pub fn restore(&self, image: &RgbaImage, opts: &crate::snap::SnapOptions) -> anyhow::Result<crate::snap::Restored> {
        restore_image(&self.model, &self.config, image, opts, self.seed)
    }
}

/// Where the tensors of `adapter` go in a model whose tensors are `model`: under `base.`
/// when the model lacks some of them but its base (a residual diffusion model's frozen fast
/// model) has them all, as for a fast model's adapter (its head exists only in the base);
/// otherwise under their own names.
fn adapter_prefix(adapter: &HashMap<String, Tensor>, model: &HashMap<String, Tensor>) -> &'static str {
    let fits_the_model = adapter.keys().all(|name| model.contains_key(name));
    if !fits_the_model && adapter.keys().all(|name| model.contains_key(&format!("base.{name}"))) {
        "base."
    } else {
        ""
    }
}

/// Restores one image with a model on the CPU: grid analysis (with the options'
/// overrides), rectification, the model, then the decoder's palette and alpha stage
/// ([`crate::snap::finish`]: where the decoder fitted a blur model, the palette colours
/// and each cell's choice among them are refitted to the image, starting from the
/// model's). Where that stage runs, it also runs from a diffusion model's base prediction
/// and from the decoder's own fit, and the sprite that explains the image best is kept
/// ([`crate::snap::finish_best`]).
pub fn restore_image(
    model: &PixelRestorer,
    config: &PixelRestorerConfig,
    image: &RgbaImage,
    opts: &crate::snap::SnapOptions,
    seed: u64,
) -> anyhow::Result<crate::snap::Restored> {
    let encoded = encode_image(image, &opts.grid, config, &Device::Cpu)?;
    let cells_of = |pred: &Tensor| predicted_cells(pred, &encoded.cells, encoded.fitted.as_ref(), config.trust_flat_cells_below);
    // The model's cells first (they win ties), then, for a diffusion model, its base
    // model's, then the decoder's own fit: each later candidate is one a simpler restorer
    // would have given.
    let predicted = cells_of(&model.predict(&encoded.input, &[seed])?)?;
    let mut others = Vec::new();
    if crate::snap::has_palette_stage(&encoded.grid, encoded.fit.as_ref()) {
        if let Some(base) = model.base_prediction(&encoded.input)? {
            others.push(cells_of(&base)?);
        }
    }
    others.push(encoded.decoder_cells);
    let others: Vec<&CellColours> = others.iter().collect();
    Ok(crate::snap::finish_best(&predicted, &others, opts, encoded.grid, encoded.fit))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::colour::srgb8_to_oklab;

    fn cells(colours: [[u8; 3]; 2], spread: [f32; 2]) -> CellColours {
        CellColours { cols: 2, rows: 1, colour: colours.iter().map(|&c| srgb8_to_oklab(c)).collect(), alpha: vec![255.0; 2], spread: spread.to_vec() }
    }

    #[test]
    fn flat_cells_keep_the_decoders_colour_the_fitted_one_where_given() {
        let (red, green, blue, white) = ([200u8, 30, 30], [30u8, 200, 30], [30u8, 30, 200], [250u8, 250, 250]);
        // The first cell is flat, the second noisy; the prediction says blue for both.
        let robust = cells([red, green], [0.0, 0.1]);
        let fitted = cells([white, green], [0.0, 0.1]);
        let unit = |v: u8| f32::from(v) / 127.5 - 1.0;
        let plane = |c: usize| [unit(blue[c]), unit(blue[c])];
        let data: Vec<f32> = (0..3).flat_map(plane).chain([1.0, 1.0]).collect();
        let pred = Tensor::from_vec(data, (1, 4, 1, 2), &Device::Cpu).unwrap();
        let pixels = |fitted: Option<&CellColours>, trust: f32| {
            let decoded = decode_prediction(&pred, &robust, fitted, &DecodeOptions::default(), trust).unwrap();
            decoded.image.pixels().map(|p| [p[0], p[1], p[2]]).collect::<Vec<_>>()
        };
        assert_eq!(pixels(None, 0.0005), vec![red, blue]);
        assert_eq!(pixels(Some(&fitted), 0.0005), vec![white, blue]);
        assert_eq!(pixels(Some(&fitted), 0.0), vec![blue, blue], "0 uses the prediction everywhere");
    }
}

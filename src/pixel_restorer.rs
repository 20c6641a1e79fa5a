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

use crate::decoder::{decode, reduce_cells, DecodeOptions, Decoded};
use crate::grid::{analyse, Grid, GridOptions};
use crate::rectify::{image_to_tensor, pixel_unshuffle, rectify};
use crate::stablesr::layers::{ops, Conv2d, GroupNorm};
use crate::stablesr::struct_encoder::{StructEncoder, StructEncoderConfig};
use crate::stablesr::unet::{UNet, UNetConfig};
use crate::train::losses::{sprite_losses, LossWeights};
use anyhow::{bail, Context};
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
        }
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

/// The mean over each cell's `f²` sub-pixels of the encoder input: the cells' plain mean
/// colour, (B, 4, H, W). The fast model's base and the diffusion model's img2img start.
pub fn cell_means(input: &Tensor, factor: u32) -> Result<Tensor> {
    let (b, c, h, w) = input.dims4()?;
    let ff = (factor * factor) as usize;
    input.reshape((b, c / ff, ff, h, w))?.mean(2)
}

/// The one-pass restorer: structure encoder + head.
pub struct FastRestorer {
    encoder: StructEncoder,
    norm: GroupNorm,
    hidden: Conv2d,
    out: Conv2d,
    factor: u32,
}

impl FastRestorer {
    /// Weights under `encoder.*` and `head.*`.
    pub fn new(vb: VarBuilder, cfg: &PixelRestorerConfig) -> Result<Self> {
        let encoder = StructEncoder::new(vb.pp("encoder"), &cfg.encoder)?;
        let c = cfg.encoder.out_channels;
        let head = vb.pp("head");
        Ok(Self {
            encoder,
            norm: GroupNorm::group_norm32(head.pp("norm"), c)?,
            hidden: Conv2d::same3x3(head.pp("hidden"), c, cfg.head_channels)?,
            out: Conv2d::same3x3(head.pp("out"), cfg.head_channels, 4)?,
            factor: cfg.factor,
        })
    }

    /// The clean sprite (B, 4, H, W) from the encoder input (B, 4 f², H, W).
    pub fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let (b, _, _, w) = input.dims4()?;
        let t = Tensor::zeros(b, DType::F32, input.device())?;
        let features = self.encoder.forward(input, &t)?;
        let finest = features.map(w)?;
        let h = self.hidden.forward(&self.norm.forward_silu(finest)?)?;
        let residual = self.out.forward(&ops::silu(&h)?)?;
        cell_means(input, self.factor)? + ops::to_nchw(&residual)?
    }

    pub fn loss(&self, input: &Tensor, target: &Tensor, w: &LossWeights) -> Result<(Tensor, Vec<(&'static str, f32)>)> {
        sprite_losses(&self.forward(input)?, target, w)
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
            Some(base) => self.unet.forward(&Tensor::cat(&[x_t, base], 1)?, &t, None, &features),
            None => self.unet.forward(x_t, &t, None, &features),
        }
    }

    /// The training loss at timesteps and noise drawn from `seed`: the diffusion loss on
    /// the network output, plus the sprite losses on the predicted clean sprite.
    pub fn loss(&self, input: &Tensor, target: &Tensor, seed: u64, w: &LossWeights) -> Result<(Tensor, Vec<(&'static str, f32)>)> {
        use rand::Rng;
        let base = self.base_prediction(input)?;
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
        let out = self.predict(&x_t, &t, input, base.as_ref())?;
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
        let (sprite, mut parts) = sprite_losses(&predicted.clamp(-1.5, 1.5)?, clean, w)?;
        parts.insert(0, ("diffusion", diffusion.to_scalar::<f32>()?));
        Ok((((diffusion * w.diffusion)? + sprite)?, parts))
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
            None => cell_means(input, self.cfg.factor)?,
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
    pub fn loss(&self, input: &Tensor, target: &Tensor, seed: u64, w: &LossWeights) -> Result<(Tensor, Vec<(&'static str, f32)>)> {
        match self {
            Self::Fast(m) => m.loss(input, target, w),
            Self::Diffusion(m) => m.loss(input, target, seed, w),
        }
    }

    /// The clean sprites predicted for a batch of encoder inputs.
    pub fn predict(&self, input: &Tensor, seeds: &[u64]) -> anyhow::Result<Tensor> {
        match self {
            Self::Fast(m) => Ok(m.forward(input)?.clamp(-1.0, 1.0)?),
            Self::Diffusion(m) => m.sample(input, seeds),
        }
    }
}

/// The encoder input for an image: grid analysis, rectification to `factor` pixels per
/// cell, padding (by repeating the last row and column of cells) to a multiple of
/// `multiple` cells, and pixel-unshuffle. Returns the grid and the (1, 4 f², H', W') input.
pub fn encoder_input(image: &RgbaImage, grid_opts: &GridOptions, factor: u32, multiple: usize, device: &Device) -> anyhow::Result<(Grid, Tensor)> {
    let grid = analyse(image, grid_opts)?;
    let rectified = rectify(image, &grid, factor);
    let (cols, rows) = (grid.cols() as usize, grid.rows() as usize);
    let pad = |n: usize| n.div_ceil(multiple) * multiple;
    let (pw, ph) = (pad(cols) as u32 * factor, pad(rows) as u32 * factor);
    let padded = RgbaImage::from_fn(pw, ph, |x, y| *rectified.get_pixel(x.min(rectified.width() - 1), y.min(rectified.height() - 1)));
    let input = pixel_unshuffle(&image_to_tensor(&padded, device)?, factor as usize)?;
    Ok((grid, input))
}

/// The decoder's palette and alpha stage on a predicted sprite: the prediction (1, 4, H', W')
/// cropped to the grid's cells becomes the cells' colour and alpha; the cells' spread
/// (how noisy the input was) comes from the input, so near-duplicate colours merge as
/// they do for the snap restorer.
/// Cells whose input spread is below `trust_flat_below` keep the decoder's own colour and
/// alpha (see [`PixelRestorerConfig::trust_flat_cells_below`]; 0 uses the prediction
/// everywhere).
pub fn decode_prediction(pred: &Tensor, image: &RgbaImage, grid: &Grid, opts: &DecodeOptions, trust_flat_below: f32) -> anyhow::Result<Decoded> {
    let (cols, rows) = (grid.cols() as usize, grid.rows() as usize);
    let cropped = pred.narrow(D::Minus2, 0, rows)?.narrow(D::Minus1, 0, cols)?;
    let predicted = crate::rectify::tensor_to_image(&cropped)?;
    let mut cells = reduce_cells(image, grid);
    for (i, p) in predicted.pixels().enumerate() {
        if cells.spread[i] < trust_flat_below {
            continue;
        }
        cells.colour[i] = crate::colour::srgb8_to_oklab([p[0], p[1], p[2]]);
        cells.alpha[i] = f32::from(p[3]);
    }
    Ok(decode(&cells, opts))
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
    /// Loads `dir` (`config.json` + `model.safetensors`); `adapter` is a file of tensors
    /// (from a fine-tuning run) that replace the same-named ones.
    pub fn load(dir: &std::path::Path, adapter: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let (config, mut tensors) = crate::train::run::load_model_dir(dir)
            .with_context(|| format!("loading the model in {} (train one with `spritedx train`)", dir.display()))?;
        if let Some(path) = adapter {
            let (adapter_tensors, _) = crate::train::checkpoint::load(path, &Device::Cpu)?;
            for (name, t) in adapter_tensors {
                match tensors.get(&name) {
                    Some(base) if base.dims() == t.dims() => {
                        tensors.insert(name, t);
                    }
                    Some(base) => bail!("adapter tensor {name} has shape {:?}, the model's {:?}", t.dims(), base.dims()),
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

/// Restores one image with a model on the CPU: grid analysis (with the options'
/// overrides), rectification, the model, then the decoder's palette and alpha stage.
pub fn restore_image(
    model: &PixelRestorer,
    config: &PixelRestorerConfig,
    image: &RgbaImage,
    opts: &crate::snap::SnapOptions,
    seed: u64,
) -> anyhow::Result<crate::snap::Restored> {
    let (grid, input) = encoder_input(image, &opts.grid, config.factor, config.size_multiple(), &Device::Cpu)?;
    let pred = model.predict(&input, &[seed])?;
    let decoded = decode_prediction(&pred, image, &grid, &opts.decode, config.trust_flat_cells_below)?;
    Ok(crate::snap::Restored { image: decoded.image, grid, palette: decoded.palette, blur: None })
}

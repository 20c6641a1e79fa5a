//! StableSR restoration end to end: pseudo pixel art in, a sprite at true resolution out.
//!
//! The pipeline follows StableSR's inference scripts
//! (`sr_val_ddpm_text_T_vqganfin_old.py` and its tiled variant
//! `sr_val_ddpm_text_T_vqganfin_oldcanvas_tile.py`), with the input first brought to the
//! art-pixel grid:
//!
//! 1. Grid analysis finds the cells; [`rectify`] resamples every cell to `f` x `f` pixels,
//!    `f` being the autoencoder's downsampling factor, so that **one latent pixel is one
//!    art pixel**. The rectified image is padded (edge cells repeated) to a multiple of
//!    the networks' size multiple. StableSR is RGB-only: the image is composited onto a
//!    neutral grey (0 in [-1, 1]) for the networks, and each cell's alpha (the mean over
//!    its block) is carried past them.
//! 2. The first-stage autoencoder encodes the RGB image; the low-resolution latent is
//!    `scale_factor` times a draw from its posterior.
//! 3. The text context is the text tower's output for the empty prompt, computed once at
//!    load.
//! 4. Sampling (DDPM by default, StableSR's sampler, over respaced steps) starts from the
//!    low-resolution latent noised to the first step (`q_sample`, as the tile script does)
//!    or from pure noise. At every step the structure encoder reads the low-resolution
//!    latent at the current timestep and the UNet predicts the noise; large latents are
//!    cut into overlapping tiles whose predictions are blended with weights that ramp
//!    smoothly across the overlaps ([`tiles`]).
//! 5. The CFW autoencoder decodes the latent, fusing its own encoder's features of the
//!    input image with fidelity weight `w`; an optional colour fix ([`ColourFix`]) follows.
//! 6. Each `f` x `f` block of the decoded image is averaged back to one pixel, the carried
//!    alpha is attached, and the decoder's palette and alpha stage
//!    ([`decode_prediction`]) makes the final sprite.
//!
//! Weights come from the real pair of checkpoints (the diffusion checkpoint with its
//! `model.diffusion_model`, `structcond_stage_model`, `first_stage_model` and
//! `cond_stage_model.model` groups, and the prefix-less `vqgan_cfw` checkpoint), or from a
//! model folder in our layout ([`CONFIG_FILE`], [`MODEL_FILE`], [`CFW_FILE`]) with the same
//! key names; every key is checked strictly ([`crate::weights::checked_var_builder`]).

pub mod colour_fix;
mod load;
pub mod tiles;
mod tiny;

pub use colour_fix::ColourFix;
pub use tiles::{Tile, TileLayout};
pub use tiny::{random_weights, write_model_folder, write_tiny_random_model};

use super::struct_encoder::{StructEncoder, StructEncoderConfig};
use super::text::{empty_prompt_tokens, tokens_tensor, OpenClipText, TextConfig};
use super::unet::{UNet, UNetConfig};
use super::vae::{AutoencoderKL, AutoencoderKLResi, DiagonalGaussian, VaeConfig};
use crate::colour::Oklab;
use crate::decoder::{reduce_cells, CellColours, DecodeOptions};
use crate::grid::{analyse, GridOptions};
use crate::nn::shapes::{ShapeMap, ShapeRecorder};
use crate::pixel_restorer::decode_prediction;
use crate::rectify::{image_to_tensor, rectify};
use crate::snap::Restored;
use crate::weights::{HubOptions, TensorFile, WeightSource};
use anyhow::{bail, ensure, Context};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use image::RgbaImage;
use serde::{Deserialize, Serialize};
use spritedx_samplers::{
    FnDenoiser, Method, NoiseSource, Prediction, Progress, Sampler, Schedule, Start,
};
use std::path::Path;

/// Key prefix of the diffusion UNet in the diffusion checkpoint.
pub const UNET_PREFIX: &str = "model.diffusion_model";
/// Key prefix of the structure encoder in the diffusion checkpoint.
pub const STRUCT_ENCODER_PREFIX: &str = "structcond_stage_model";
/// Key prefix of the first-stage autoencoder in the diffusion checkpoint.
pub const FIRST_STAGE_PREFIX: &str = "first_stage_model";
/// Key prefix of the OpenCLIP text tower in the diffusion checkpoint.
pub const TEXT_PREFIX: &str = "cond_stage_model.model";
/// The config of a model folder (a [`StableSrConfig`] as JSON).
pub const CONFIG_FILE: &str = "config.json";
/// The diffusion weights of a model folder, with the diffusion checkpoint's key names.
pub const MODEL_FILE: &str = "model.safetensors";
/// The CFW autoencoder weights of a model folder, with the `vqgan_cfw` key names.
pub const CFW_FILE: &str = "vqgan_cfw.safetensors";

/// The stream of a restore's seed that draws the posterior sample of the input latent
/// (the sampler's noise uses the seed itself).
const POSTERIOR_STREAM: u64 = 0x706f_7374_6572_696f;

/// The diffusion schedule the model was trained with (LDM's "linear": `β =
/// linspace(√start, √end, timesteps)²`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleConfig {
    pub linear_start: f64,
    pub linear_end: f64,
    pub timesteps: usize,
}

impl Default for ScheduleConfig {
    /// StableSR's (and Stable Diffusion's): 0.00085 to 0.012 over 1000 steps.
    fn default() -> Self {
        Self {
            linear_start: 0.00085,
            linear_end: 0.012,
            timesteps: 1000,
        }
    }
}

/// Sampling settings that belong to a model: what [`StableSrOptions::for_model`] starts
/// from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingDefaults {
    /// Sampler steps (respaced from the schedule's timesteps).
    pub steps: usize,
    /// Side of a latent tile, the size the UNet was trained at (64 for 512-pixel
    /// training); a multiple of [`StableSrConfig::size_multiple`].
    pub tile_size: usize,
    /// Latent pixels that neighbouring tiles share.
    pub tile_overlap: usize,
}

impl Default for SamplingDefaults {
    /// StableSR's scripts: 200 DDPM steps in the README's examples, 64-latent tiles (512
    /// pixels) overlapping by 32.
    fn default() -> Self {
        Self {
            steps: 200,
            tile_size: 64,
            tile_overlap: 32,
        }
    }
}

fn default_scale_factor() -> f64 {
    0.18215
}

/// Everything that defines a StableSR model: the configs of its five networks, the latent
/// scale, the training schedule and sampling defaults. A model folder's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StableSrConfig {
    /// The diffusion UNet (`model.diffusion_model`).
    pub unet: UNetConfig,
    /// The time-aware structure encoder (`structcond_stage_model`).
    pub struct_encoder: StructEncoderConfig,
    /// The autoencoder that encodes the input (`first_stage_model`).
    pub first_stage: VaeConfig,
    /// The CFW autoencoder that decodes the result (the `vqgan_cfw` checkpoint).
    pub cfw: VaeConfig,
    /// The text tower (`cond_stage_model`), run once on the empty prompt.
    pub text: TextConfig,
    /// Latents are the autoencoder's posterior times this.
    #[serde(default = "default_scale_factor")]
    pub scale_factor: f64,
    #[serde(default)]
    pub schedule: ScheduleConfig,
    #[serde(default)]
    pub sampling: SamplingDefaults,
}

impl StableSrConfig {
    /// StableSR's released model (`stablesr_000117.ckpt` from
    /// `configs/stableSRNew/v2-finetune_text_T_512.yaml`, and `vqgan_cfw_00011.ckpt`).
    pub fn stablesr_512() -> Self {
        Self {
            unet: UNetConfig::stablesr_512(),
            struct_encoder: StructEncoderConfig::stablesr_512(),
            first_stage: VaeConfig::stablesr_first_stage(),
            cfw: VaeConfig::stablesr_cfw(),
            text: TextConfig::vit_h_14(),
            scale_factor: default_scale_factor(),
            schedule: ScheduleConfig::default(),
            sampling: SamplingDefaults::default(),
        }
    }

    /// Screen pixels per art pixel per side after rectification: the autoencoders'
    /// downsampling factor, so that one latent pixel is one art pixel.
    pub fn latent_factor(&self) -> usize {
        self.first_stage.downsampling_factor()
    }

    /// Latent sides must be multiples of this: the UNet and the structure encoder halve
    /// the size once per level below the first.
    pub fn size_multiple(&self) -> usize {
        let levels = self
            .unet
            .channel_mult
            .len()
            .max(self.struct_encoder.channel_mult.len());
        1 << levels.saturating_sub(1)
    }

    /// The training schedule.
    pub fn training_schedule(&self) -> candle_core::Result<Schedule> {
        let s = &self.schedule;
        Schedule::linear(s.timesteps, s.linear_start, s.linear_end)
    }

    /// Checks that the networks fit together.
    pub fn validate(&self) -> anyhow::Result<()> {
        let latent = self.first_stage.embed_dim;
        ensure!(
            self.cfw.embed_dim == latent
                && self.unet.in_channels == latent
                && self.unet.out_channels == latent
                && self.struct_encoder.in_channels == latent,
            "StableSR config: the latent widths disagree (first stage {latent}, CFW {}, UNet in \
             {} / out {}, structure encoder {})",
            self.cfw.embed_dim,
            self.unet.in_channels,
            self.unet.out_channels,
            self.struct_encoder.in_channels
        );
        ensure!(
            self.cfw.downsampling_factor() == self.latent_factor(),
            "StableSR config: the first stage downsamples by {} but the CFW autoencoder by {}",
            self.latent_factor(),
            self.cfw.downsampling_factor()
        );
        ensure!(
            self.struct_encoder.out_channels == self.unet.semb_channels,
            "StableSR config: the structure encoder outputs {} channels but the UNet's SPADE \
             reads {}",
            self.struct_encoder.out_channels,
            self.unet.semb_channels
        );
        ensure!(
            self.struct_encoder.channel_mult.len() >= self.unet.channel_mult.len(),
            "StableSR config: the structure encoder has {} levels, fewer than the UNet's {} \
             (SPADE needs a feature map at every UNet resolution)",
            self.struct_encoder.channel_mult.len(),
            self.unet.channel_mult.len()
        );
        ensure!(
            self.unet.context_dim == Some(self.text.width),
            "StableSR config: the UNet's context_dim {:?} must be the text tower's width {}",
            self.unet.context_dim,
            self.text.width
        );
        ensure!(
            self.scale_factor.is_finite() && self.scale_factor > 0.0,
            "StableSR config: scale_factor must be positive, got {}",
            self.scale_factor
        );
        let (size, overlap) = (self.sampling.tile_size, self.sampling.tile_overlap);
        ensure!(
            size > 0 && size % self.size_multiple() == 0 && overlap < size,
            "StableSR config: tile_size {size} must be a positive multiple of {} and larger \
             than tile_overlap {overlap}",
            self.size_multiple()
        );
        self.training_schedule()?;
        Ok(())
    }

    /// Key -> shape of the text tower in the diffusion checkpoint.
    pub fn text_shapes(&self) -> anyhow::Result<ShapeMap> {
        let recorder = ShapeRecorder::new();
        build_text(recorder.var_builder(), self)?;
        Ok(recorder.shapes())
    }

    /// Key -> shape of the UNet, the structure encoder and the first stage in the
    /// diffusion checkpoint.
    pub fn denoiser_shapes(&self) -> anyhow::Result<ShapeMap> {
        let recorder = ShapeRecorder::new();
        Networks::new(recorder.var_builder(), self)?;
        Ok(recorder.shapes())
    }

    /// Key -> shape of every tensor of the diffusion checkpoint the model uses.
    pub fn model_shapes(&self) -> anyhow::Result<ShapeMap> {
        let mut shapes = self.denoiser_shapes()?;
        shapes.extend(self.text_shapes()?);
        Ok(shapes)
    }

    /// Key -> shape of every tensor of the CFW checkpoint the model uses.
    pub fn cfw_shapes(&self) -> anyhow::Result<ShapeMap> {
        let recorder = ShapeRecorder::new();
        AutoencoderKLResi::new(recorder.var_builder(), &self.cfw)?;
        Ok(recorder.shapes())
    }
}

fn build_text(vb: VarBuilder, cfg: &StableSrConfig) -> candle_core::Result<OpenClipText> {
    OpenClipText::new(vb.pp(TEXT_PREFIX), &cfg.text)
}

/// The networks of the diffusion checkpoint that run at every restore.
struct Networks {
    unet: UNet,
    struct_encoder: StructEncoder,
    first_stage: AutoencoderKL,
}

impl Networks {
    fn new(vb: VarBuilder, cfg: &StableSrConfig) -> candle_core::Result<Self> {
        Ok(Self {
            unet: UNet::new(vb.pp(UNET_PREFIX), &cfg.unet)?,
            struct_encoder: StructEncoder::new(vb.pp(STRUCT_ENCODER_PREFIX), &cfg.struct_encoder)?,
            first_stage: AutoencoderKL::new(vb.pp(FIRST_STAGE_PREFIX), &cfg.first_stage)?,
        })
    }
}

/// Where sampling starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplingStart {
    /// The low-resolution latent diffused to a step and denoised from there: `strength`
    /// in (0, 1] is the share of the steps that run; 1 starts at the noisiest step, as
    /// StableSR's tile script does.
    NoisedInput { strength: f64 },
    /// Pure noise at the noisiest step (StableSR's non-tiled script).
    Noise,
}

impl Default for SamplingStart {
    fn default() -> Self {
        Self::NoisedInput { strength: 1.0 }
    }
}

/// How a large latent is cut into tiles (in latent pixels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileOptions {
    /// Tile side, a multiple of [`StableSrConfig::size_multiple`]; a tile larger than the
    /// latent shrinks to it.
    pub size: usize,
    /// Latent pixels that neighbouring tiles share; smaller than `size`.
    pub overlap: usize,
    /// Tiles run through the networks at once.
    pub batch: usize,
}

/// How the latent is sampled.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingOptions {
    /// Sampler steps, respaced from the training schedule.
    pub steps: usize,
    /// The update rule ([`parse_method`] names them).
    pub method: Method,
    /// All randomness of a restore (posterior sample, start noise, DDPM noise) derives
    /// from it: equal seeds give identical results on a device.
    pub seed: u64,
    pub start: SamplingStart,
    /// Tiled sampling; `None` runs the whole latent at once.
    pub tiles: Option<TileOptions>,
}

/// Everything a restore can be told.
#[derive(Debug, Clone)]
pub struct StableSrOptions {
    pub grid: GridOptions,
    /// The final palette and alpha stage.
    pub decode: DecodeOptions,
    pub sampling: SamplingOptions,
    /// CFW fidelity weight `w` in [0, 1]: 0 is the plain decoder, 1 fuses the input's
    /// features fully (StableSR's default 0.5).
    pub fidelity: f64,
    pub colour_fix: ColourFix,
}

impl StableSrOptions {
    /// The defaults for a model: its sampling defaults, DDPM, seed 0, start from the noised
    /// input, tiles as configured (4 at once), fidelity 0.5, no colour fix, and the grid and
    /// decoder defaults.
    pub fn for_model(cfg: &StableSrConfig) -> Self {
        Self {
            grid: GridOptions::default(),
            decode: DecodeOptions::default(),
            sampling: SamplingOptions {
                steps: cfg.sampling.steps,
                method: Method::Ddpm,
                seed: 0,
                start: SamplingStart::default(),
                tiles: Some(TileOptions {
                    size: cfg.sampling.tile_size,
                    overlap: cfg.sampling.tile_overlap,
                    batch: 4,
                }),
            },
            fidelity: 0.5,
            colour_fix: ColourFix::None,
        }
    }
}

/// The sampler named `ddpm` (StableSR's), `ddim` (η = 0) or `dpm++2m`.
pub fn parse_method(name: &str) -> anyhow::Result<Method> {
    Ok(match name {
        "ddpm" => Method::Ddpm,
        "ddim" => Method::Ddim { eta: 0.0 },
        "dpm++2m" => Method::DpmSolverPP2M {
            lower_order_final: true,
        },
        other => bail!("unknown sampler {other:?}: use ddpm, ddim or dpm++2m"),
    })
}

/// The device named `cpu`, `cuda` (the first GPU) or `cuda:N`.
pub fn parse_device(name: &str) -> anyhow::Result<Device> {
    let name = name.trim();
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match name.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .with_context(|| format!("bad device {name:?}: use cpu, cuda or cuda:N"))?,
        None => bail!("unknown device {name:?}: use cpu, cuda or cuda:N"),
    };
    cuda_device(ordinal)
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> anyhow::Result<Device> {
    Device::new_cuda(ordinal).with_context(|| format!("cannot open CUDA device {ordinal}"))
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(ordinal: usize) -> anyhow::Result<Device> {
    bail!(
        "cuda:{ordinal} was asked for, but this build has no CUDA support; rebuild with \
         `cargo build --release --features cuda` (needs the CUDA toolkit) or use --device cpu"
    )
}

/// An input prepared for sampling.
#[derive(Debug, Clone)]
pub struct PreparedInput {
    /// The grid found in the input.
    pub grid: crate::grid::Grid,
    /// The rectified, padded RGB image composited onto grey, (1, 3, H f, W f) in [-1, 1].
    pub rgb: Tensor,
    /// Each cell's alpha, (1, 1, H, W) in [0, 1] (the mean over its rectified block).
    pub alpha: Tensor,
    /// The low-resolution latent, (1, latent channels, H, W): one latent pixel per art
    /// pixel. H and W are the grid's rows and columns padded to
    /// [`StableSrConfig::size_multiple`]; the art is the top-left `rows` x `cols`.
    pub latent: Tensor,
}

/// A loaded StableSR model.
pub struct StableSr {
    config: StableSrConfig,
    networks: Networks,
    cfw: AutoencoderKLResi,
    /// The text tower's output for the empty prompt, (1, context_length, width).
    context: Tensor,
    schedule: Schedule,
    device: Device,
}

impl StableSr {
    /// Loads a model from a weights source: a folder with [`CONFIG_FILE`] (our layout, any
    /// size), a folder or `hf://` repository with the real pair of checkpoints
    /// (`hf://Iceclear/StableSR` gives both; [`StableSrConfig::stablesr_512`]), or another
    /// Hub repository in our layout. The two weight files are told apart by their keys.
    pub fn load(source: &WeightSource, hub: &HubOptions, device: &Device) -> anyhow::Result<Self> {
        let (config, files) = load::locate(source, hub)?;
        let (model, cfw) = load::identify(&files)?;
        Self::from_tensor_files(config, &model, &cfw, device)
    }

    /// Loads a model folder in our layout ([`CONFIG_FILE`], [`MODEL_FILE`], [`CFW_FILE`]).
    pub fn load_folder(dir: &Path, device: &Device) -> anyhow::Result<Self> {
        let config = load::read_config(&dir.join(CONFIG_FILE))?;
        Self::load_files(config, &dir.join(MODEL_FILE), &dir.join(CFW_FILE), device)
    }

    /// Loads the diffusion weights from `model` and the CFW weights from `cfw`
    /// (`.safetensors` or PyTorch checkpoints), for `config`.
    pub fn load_files(
        config: StableSrConfig,
        model: &Path,
        cfw: &Path,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let model = TensorFile::open(model)?;
        let cfw = TensorFile::open(cfw)?;
        Self::from_tensor_files(config, &model, &cfw, device)
    }

    /// Builds the model from opened weight files, checking every key and shape strictly:
    /// missing, unexpected (inside the model's prefixes) and misshapen keys are refused
    /// and named. The text tower is loaded first, run on the empty prompt and dropped.
    pub fn from_tensor_files(
        config: StableSrConfig,
        model: &TensorFile,
        cfw: &TensorFile,
        device: &Device,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        let cfw_shapes = config.cfw_shapes()?;
        load::check(model, &config.model_shapes()?, "diffusion")?;
        load::check(cfw, &cfw_shapes, "CFW autoencoder")?;
        // The text tower (354M parameters in the real model) only computes the context.
        let context = {
            let vb = load::group(model, &config.text_shapes()?, &[TEXT_PREFIX], device)?;
            let text = build_text(vb, &config)?;
            let tokens =
                tokens_tensor(&empty_prompt_tokens(config.text.context_length), 1, device)?;
            text.forward(&tokens)
                .context("running the text tower on the empty prompt")?
        };
        let vb = load::group(
            model,
            &config.denoiser_shapes()?,
            &[UNET_PREFIX, STRUCT_ENCODER_PREFIX, FIRST_STAGE_PREFIX],
            device,
        )?;
        let networks = Networks::new(vb, &config)?;
        let vb = load::group(cfw, &cfw_shapes, &[], device)?;
        let cfw = AutoencoderKLResi::new(vb, &config.cfw)?;
        let schedule = config.training_schedule()?;
        Ok(Self {
            config,
            networks,
            cfw,
            context,
            schedule,
            device: device.clone(),
        })
    }

    /// The model's config.
    pub fn config(&self) -> &StableSrConfig {
        &self.config
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The cached text context: the text tower's output for the empty prompt,
    /// (1, context_length, width).
    pub fn text_context(&self) -> &Tensor {
        &self.context
    }

    /// Restores `image`: see the module documentation for the stages.
    pub fn restore(&self, image: &RgbaImage, opts: &StableSrOptions) -> anyhow::Result<Restored> {
        self.restore_with_progress(image, opts, None)
    }

    /// [`StableSr::restore`], calling `progress` after every sampler step.
    pub fn restore_with_progress(
        &self,
        image: &RgbaImage,
        opts: &StableSrOptions,
        progress: Option<&mut dyn FnMut(Progress<'_>)>,
    ) -> anyhow::Result<Restored> {
        let prepared = self.prepare(image, opts)?;
        let sampled = self.sample(&prepared.latent, &opts.sampling, progress)?;
        self.finish(image, &prepared, &sampled, opts)
    }

    /// Stages 1 and 2: grid, rectification, padding, compositing, encoding.
    pub fn prepare(
        &self,
        image: &RgbaImage,
        opts: &StableSrOptions,
    ) -> anyhow::Result<PreparedInput> {
        let grid = analyse(image, &opts.grid)?;
        let f = self.config.latent_factor();
        let rectified = rectify(image, &grid, f as u32);
        let m = self.config.size_multiple();
        let (cols, rows) = (grid.cols() as usize, grid.rows() as usize);
        let (padded_w, padded_h) = (cols.div_ceil(m) * m * f, rows.div_ceil(m) * m * f);
        let (last_x, last_y) = (rectified.width() - 1, rectified.height() - 1);
        let padded = RgbaImage::from_fn(padded_w as u32, padded_h as u32, |x, y| {
            *rectified.get_pixel(x.min(last_x), y.min(last_y))
        });
        let rgba = image_to_tensor(&padded, &self.device)?;
        let alpha = ((rgba.narrow(1, 3, 1)? + 1.0)? * 0.5)?;
        // Straight colour over grey 0: a * rgb + (1 - a) * 0.
        let rgb = rgba.narrow(1, 0, 3)?.broadcast_mul(&alpha)?;
        let cell_alpha = alpha.avg_pool2d(f)?;
        let latent = self.encode(&rgb, opts.sampling.seed)?;
        Ok(PreparedInput {
            grid,
            rgb,
            alpha: cell_alpha,
            latent,
        })
    }

    /// The first stage's posterior over the (unscaled) latent of an RGB image
    /// (1, 3, H, W) in [-1, 1].
    pub fn posterior(&self, rgb: &Tensor) -> candle_core::Result<DiagonalGaussian> {
        self.networks.first_stage.encode(rgb)
    }

    /// The low-resolution latent of an RGB image (1, 3, H, W) in [-1, 1] with sides that
    /// are multiples of the latent factor: `scale_factor` times a draw from the first
    /// stage's posterior, seeded by `seed`.
    pub fn encode(&self, rgb: &Tensor, seed: u64) -> anyhow::Result<Tensor> {
        let posterior = self.posterior(rgb)?;
        let seed = crate::rng::derive_seed(seed, &[POSTERIOR_STREAM]);
        let noise = NoiseSource::new(&vec![seed; posterior.mean.dim(0)?]).sample(
            posterior.mean.shape(),
            posterior.mean.dtype(),
            &self.device,
        )?;
        Ok((posterior.sample_with_noise(&noise)? * self.config.scale_factor)?)
    }

    /// The UNet's noise prediction for `x_t` (B, C, H, W) at `timesteps` (B,), with the
    /// structure features of `lr_latent` (B, C, H, W) at the same timesteps and the empty
    /// prompt's context, for the whole latent at once.
    pub fn predict_eps(
        &self,
        x_t: &Tensor,
        timesteps: &Tensor,
        lr_latent: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let b = x_t.dim(0)?;
        let context = self.context.repeat((b, 1, 1))?;
        let features = self.networks.struct_encoder.forward(lr_latent, timesteps)?;
        self.networks
            .unet
            .forward(x_t, timesteps, Some(&context), Some(&features))
    }

    /// [`StableSr::predict_eps`] tile by tile, blended by `layout`, `batch` tiles at once.
    pub fn predict_eps_tiled(
        &self,
        x_t: &Tensor,
        timesteps: &Tensor,
        lr_latent: &Tensor,
        layout: &TileLayout,
        batch: usize,
    ) -> candle_core::Result<Tensor> {
        let b = x_t.dim(0)?;
        let mut outputs = Vec::with_capacity(layout.tiles.len());
        for chunk in layout.tiles.chunks(batch.max(1)) {
            let crops = |t: &Tensor| -> candle_core::Result<Tensor> {
                let parts = chunk
                    .iter()
                    .map(|tile| layout.crop(t, tile))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::cat(&parts, 0)
            };
            let t = Tensor::cat(&vec![timesteps.clone(); chunk.len()], 0)?;
            let eps = self.predict_eps(&crops(x_t)?, &t, &crops(lr_latent)?)?;
            for i in 0..chunk.len() {
                outputs.push(eps.narrow(0, i * b, b)?);
            }
        }
        layout.blend(&outputs)
    }

    /// Stage 4: samples a latent from the low-resolution latent (1, C, H, W), H and W
    /// multiples of [`StableSrConfig::size_multiple`].
    pub fn sample(
        &self,
        lr_latent: &Tensor,
        opts: &SamplingOptions,
        progress: Option<&mut dyn FnMut(Progress<'_>)>,
    ) -> anyhow::Result<Tensor> {
        let (b, _, h, w) = lr_latent.dims4()?;
        let m = self.config.size_multiple();
        ensure!(
            h % m == 0 && w % m == 0,
            "the latent is {h}x{w}; its sides must be multiples of {m} (pad the input)"
        );
        let layout = match opts.tiles {
            Some(tiles) => {
                ensure!(
                    tiles.size % m == 0,
                    "tile size {} must be a multiple of {m}",
                    tiles.size
                );
                Some((
                    TileLayout::new(h, w, tiles.size, tiles.overlap, &self.device)?,
                    tiles.batch,
                ))
            }
            None => None,
        };
        let sampler = Sampler::new(&self.schedule, opts.steps, opts.method)?;
        let mut denoiser =
            FnDenoiser::new(Prediction::Eps, |x: &Tensor, t: &Tensor| match &layout {
                Some((layout, batch)) => self.predict_eps_tiled(x, t, lr_latent, layout, *batch),
                None => self.predict_eps(x, t, lr_latent),
            });
        let shape = lr_latent.dims().to_vec();
        let start = match opts.start {
            SamplingStart::NoisedInput { strength } => Start::Latent {
                latent: lr_latent,
                strength,
            },
            SamplingStart::Noise => Start::Noise {
                shape: &shape,
                dtype: lr_latent.dtype(),
                device: &self.device,
            },
        };
        let seeds = vec![opts.seed; b];
        Ok(sampler.sample(&mut denoiser, start, &seeds, progress)?)
    }

    /// Stage 5: the CFW decode of a sampled latent (1, C, H, W) (scaled by
    /// `scale_factor`), fusing the features of `lr_rgb` (1, 3, H f, W f) with weight
    /// `fidelity`. Returns (1, 3, H f, W f), not clamped.
    pub fn decode(
        &self,
        latent: &Tensor,
        lr_rgb: &Tensor,
        fidelity: f64,
    ) -> anyhow::Result<Tensor> {
        ensure!(
            (0.0..=1.0).contains(&fidelity),
            "the CFW fidelity weight must lie in [0, 1], got {fidelity}"
        );
        let (_, enc_fea) = self.cfw.encode(lr_rgb)?;
        let z = (latent / self.config.scale_factor)?;
        Ok(self.cfw.decode(&z, &enc_fea, fidelity)?)
    }

    /// Stages 5 and 6: decode, colour fix, one pixel per block, the carried alpha, and
    /// the decoder's palette and alpha stage.
    pub fn finish(
        &self,
        image: &RgbaImage,
        prepared: &PreparedInput,
        sampled: &Tensor,
        opts: &StableSrOptions,
    ) -> anyhow::Result<Restored> {
        let decoded = self.decode(sampled, &prepared.rgb, opts.fidelity)?;
        let decoded = opts.colour_fix.apply(&decoded, &prepared.rgb)?;
        let art_alpha = ((&prepared.alpha * 2.0)? - 1.0)?;
        if decoded.device().is_cuda() {
            // On a GPU the full-size decoded image stays there: the kernels reduce its
            // cells and only the per-cell results come back.
            let cells = self.cells_on_device(image, prepared, &decoded, &art_alpha)?;
            let decoded = crate::decoder::decode(&cells, &opts.decode);
            return Ok(Restored {
                image: decoded.image,
                grid: prepared.grid.clone(),
                palette: decoded.palette,
                blur: None,
            });
        }
        let art_rgb = decoded
            .avg_pool2d(self.config.latent_factor())?
            .clamp(-1.0, 1.0)?;
        let prediction = Tensor::cat(&[&art_rgb, &art_alpha.to_dtype(art_rgb.dtype())?], 1)?
            .to_dtype(DType::F32)?;
        let cells = crate::decoder::reduce_cells(image, &prepared.grid);
        let decoded = decode_prediction(&prediction, &cells, None, &opts.decode, 0.0)?;
        Ok(Restored {
            image: decoded.image,
            grid: prepared.grid.clone(),
            palette: decoded.palette,
            blur: None,
        })
    }

    /// The decoder's cells from the decoded image (1, 3, H f, W f) on a CUDA device:
    /// spritedx-kernels' `reduce_cells` takes each `f` x `f` block's robust colour (the
    /// weighted OKLab medians of its interior, where the CPU path averages the block) of
    /// the image with the carried per-cell alpha `art_alpha` (1, 1, H, W) in [-1, 1], so
    /// the alpha is that of the CPU path. The spread stays that of the original image's
    /// cells, as in `decode_prediction`: it measures the input's texture, not the
    /// network's.
    fn cells_on_device(
        &self,
        image: &RgbaImage,
        prepared: &PreparedInput,
        decoded: &Tensor,
        art_alpha: &Tensor,
    ) -> anyhow::Result<CellColours> {
        let f = self.config.latent_factor();
        let grid = &prepared.grid;
        let (cols, rows) = (grid.cols() as usize, grid.rows() as usize);
        // Crop the padding away: the cells of the grid, at full resolution.
        let rgb = decoded
            .narrow(2, 0, rows * f)?
            .narrow(3, 0, cols * f)?
            .clamp(-1.0, 1.0)?
            .to_dtype(DType::F32)?;
        let alpha = art_alpha
            .narrow(2, 0, rows)?
            .narrow(3, 0, cols)?
            .to_dtype(DType::F32)?
            .upsample_nearest2d(rows * f, cols * f)?;
        let rgba = Tensor::cat(&[&rgb, &alpha], 1)?;
        let reduced = spritedx_kernels::decoder::reduce_cells(&rgba, f)
            .context("reducing the decoded image's cells on the device")?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut cells = reduce_cells(image, grid);
        // Each cell's row is [L, a, b, alpha (0-255), spread].
        for (i, cell) in reduced.chunks_exact(5).enumerate() {
            cells.colour[i] = Oklab {
                l: cell[0],
                a: cell[1],
                b: cell[2],
            };
            cells.alpha[i] = cell[3];
        }
        Ok(cells)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_or_say_why_not() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        for bad in ["gpu", "cuda:x", "cuda0", "cuda:"] {
            let err = parse_device(bad).unwrap_err().to_string();
            assert!(err.contains("cpu, cuda or cuda:N"), "{bad}: {err}");
        }
        #[cfg(not(feature = "cuda"))]
        {
            let err = parse_device("cuda:1").unwrap_err().to_string();
            assert!(err.contains("--features cuda"), "{err}");
        }
    }

    #[test]
    fn a_model_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<StableSr>();
    }

    #[test]
    fn methods_parse() {
        assert_eq!(parse_method("ddpm").unwrap(), Method::Ddpm);
        assert_eq!(parse_method("ddim").unwrap(), Method::Ddim { eta: 0.0 });
        assert!(matches!(
            parse_method("dpm++2m").unwrap(),
            Method::DpmSolverPP2M { .. }
        ));
        assert!(parse_method("euler").is_err());
    }

    #[test]
    fn the_real_config_fits_together() {
        let cfg = StableSrConfig::stablesr_512();
        cfg.validate().unwrap();
        assert_eq!(cfg.latent_factor(), 8);
        assert_eq!(cfg.size_multiple(), 8);
        let json = serde_json::to_string(&cfg).unwrap();
        assert_eq!(serde_json::from_str::<StableSrConfig>(&json).unwrap(), cfg);
    }

    #[test]
    fn mismatched_networks_are_refused() {
        let mut cfg = StableSrConfig::stablesr_512();
        cfg.unet.semb_channels = 128;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("SPADE"), "{err}");
    }
}

//! `spritedx train`: trains the fast or the diffusion restorer on clean sprites, or
//! fine-tunes a trained model's adapter on a style.

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use spritedx::degrade::Preset;
use spritedx::pixel_restorer::{ModelKind, PixelRestorerConfig};
use spritedx::train::run::{load_model_dir, train, LrDecay, TrainConfig, TrainPart};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Which model to train (ignored with --init, which fixes the model).
    #[arg(long, value_enum, default_value = "fast")]
    model: ModelKind,
    /// Folder of clean sprites (its `train` split is used; `val` validates).
    #[arg(long, default_value = "../shared/data/sprites")]
    data: PathBuf,
    /// Output folder: checkpoint, logs, plot and the exported model. A run started on a
    /// folder with a checkpoint of the same config resumes from it.
    #[arg(long)]
    out: PathBuf,
    /// Training steps in all (a resumed run continues up to this).
    #[arg(long, default_value_t = 2000)]
    steps: u64,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Art pixels per side of a training patch.
    #[arg(long, default_value_t = 16)]
    patch_cells: usize,
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    /// After the warm-up, decay the learning rate along a cosine to --lr-final-ratio of it at
    /// this step (fixed by the run: extending --steps on resume does not stretch it).
    #[arg(long, value_name = "STEP")]
    lr_decay_until: Option<u64>,
    /// Start the decay at this step instead of at the end of the warm-up. A run resumed at or
    /// before this step may add the decay then (a cool-down of a run that trained at a
    /// constant rate).
    #[arg(long, value_name = "STEP", requires = "lr_decay_until")]
    lr_decay_from: Option<u64>,
    /// Where the cosine decay ends, as a share of --lr.
    #[arg(long, default_value_t = 0.1, requires = "lr_decay_until")]
    lr_final_ratio: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Decay of the exponential moving average of the weights (the exported model).
    #[arg(long, default_value_t = 0.999)]
    ema_decay: f64,
    /// Degradation presets mixed in training.
    #[arg(long, value_delimiter = ',', default_value = "clean,seed,hard,ai")]
    preset: Vec<Preset>,
    /// Start from a trained model folder (config.json + model.safetensors).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Diffusion only: refine this fast model (a model folder). The diffusion state becomes
    /// the residual over its prediction; its weights are stored, frozen, in the new model.
    /// With --init (a residual diffusion model): re-base it, replacing its frozen fast model
    /// by this one (same configuration) and training on from its other weights.
    #[arg(long)]
    base: Option<PathBuf>,
    /// With --base: the residual is scaled by this before diffusion (see the model
    /// config's `residual_scale`) [default: 8; a re-based model keeps its own].
    #[arg(long, requires = "base")]
    residual_scale: Option<f64>,
    /// Train everything, only the conditioning adapter (with --init: fine-tuning), or the
    /// unconditional prior (StableSR's first stage).
    #[arg(long, value_enum, default_value = "all")]
    train: TrainPart,
    /// A new model's encoder also reads the cells as the snap decoder fits them
    /// (deconvolved where the image was upscaled by an interpolating kernel), and the fast
    /// model predicts its residual over those. A model with --base takes its base's input.
    #[arg(long, conflicts_with_all = ["init", "base"])]
    fitted_cells: bool,
    /// Weight of the PatchGAN adversarial term on the predicted sprite (0: none; the other
    /// loss weights are set with --config).
    #[arg(long, default_value_t = 0.0)]
    adversarial: f64,
    /// Only sprites of these categories (file names dcss_CATEGORY_...).
    #[arg(long, value_delimiter = ',')]
    only_category: Vec<String>,
    /// Leave these categories out (e.g. a style held out for fine-tuning).
    #[arg(long, value_delimiter = ',')]
    exclude_category: Vec<String>,
    /// Steps between checkpoints.
    #[arg(long, default_value_t = 100)]
    checkpoint_every: u64,
    /// Steps between validations (a multiple of --checkpoint-every validates the EMA weights).
    #[arg(long, default_value_t = 500)]
    validate_every: u64,
    /// Validation sprites per preset (0: no validation).
    #[arg(long, default_value_t = 32)]
    validate_sprites: usize,
    /// Also write the trained tensors alone to this .safetensors file (the adapter file of
    /// a fine-tuning run, for `spritedx restore --adapter`).
    #[arg(long, value_name = "FILE.safetensors")]
    adapter_out: Option<PathBuf>,
    /// A JSON file with a full training config (as the run's config.json); the other
    /// options are then ignored except --out.
    #[arg(long)]
    config: Option<PathBuf>,
}

pub fn run(args: TrainArgs) -> Result<ExitCode> {
    // Checked before training rather than after it.
    if args.adapter_out.as_ref().is_some_and(|a| a.extension().is_none_or(|e| e != "safetensors")) {
        bail!("--adapter-out must end in .safetensors");
    }
    let cfg = match &args.config {
        Some(path) => serde_json::from_slice(&std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
            .with_context(|| format!("{} is not a training config", path.display()))?,
        None => config_from_args(&args)?,
    };
    let bar = ProgressBar::new(cfg.steps);
    bar.set_style(
        ProgressStyle::with_template("train {bar:40} {pos}/{len} steps, {msg} [{elapsed_precise}, ETA {eta}]")
            .expect("progress template is valid"),
    );
    let summary = train(&cfg, &args.out, &mut |step, rate| {
        bar.set_position(step);
        bar.set_message(format!("{rate:.1} samples/s"));
    })?;
    bar.finish();
    if let Some(from) = summary.resumed_from {
        eprintln!("resumed from step {from}");
    }
    eprintln!(
        "trained to step {} in {:.0} s; model in {}",
        summary.steps_done,
        summary.seconds,
        args.out.join("model").display()
    );
    if let Some(adapter) = &args.adapter_out {
        let tensors = std::fs::read(args.out.join("model/model.safetensors")).context("reading the trained tensors")?;
        spritedx::io::write_atomic(adapter, &tensors).with_context(|| format!("writing {}", adapter.display()))?;
        eprintln!("adapter tensors in {}", adapter.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn config_from_args(args: &TrainArgs) -> Result<TrainConfig> {
    let mut model = match &args.init {
        Some(dir) => load_model_dir(dir)?.0,
        None if args.fitted_cells => PixelRestorerConfig::small(args.model).with_fitted_cells(),
        None => PixelRestorerConfig::small(args.model),
    };
    if let (Some(init), Some(base)) = (&args.init, &args.base) {
        let base_cfg = load_model_dir(base)?.0;
        if model.base.as_deref() != Some(&base_cfg) {
            bail!(
                "--init {} with --base re-bases a residual diffusion model, whose frozen fast model must have the configuration of {}",
                init.display(),
                base.display()
            );
        }
        if args.residual_scale.is_some_and(|scale| scale != model.residual_scale) {
            bail!("re-basing keeps the model's residual scale ({}); leave --residual-scale out", model.residual_scale);
        }
    } else if let Some(base) = &args.base {
        if args.model != ModelKind::Diffusion {
            bail!("--base gives the fast model a diffusion model refines: use it with --model diffusion");
        }
        model = model.with_base(load_model_dir(base)?.0)?;
        let residual_scale = args.residual_scale.unwrap_or(8.0);
        if !(residual_scale > 0.0 && residual_scale.is_finite()) {
            bail!("--residual-scale must be a positive number");
        }
        model.residual_scale = residual_scale;
    }
    if args.train == TrainPart::Adapter && args.init.is_none() {
        bail!("--train adapter fine-tunes a trained model: give it with --init");
    }
    let mut cfg = TrainConfig::new(model, args.data.clone());
    cfg.steps = args.steps;
    cfg.batch = args.batch;
    cfg.patch_cells = args.patch_cells;
    cfg.optim.lr = args.lr;
    if !(0.0..=1.0).contains(&args.lr_final_ratio) {
        bail!("--lr-final-ratio must be between 0 and 1, got {}", args.lr_final_ratio);
    }
    cfg.lr_decay = args.lr_decay_until.map(|until_step| LrDecay {
        from_step: args.lr_decay_from.unwrap_or(0),
        until_step,
        final_ratio: args.lr_final_ratio,
    });
    cfg.seed = args.seed;
    cfg.ema_decay = args.ema_decay;
    cfg.presets = args.preset.clone();
    cfg.init = args.init.clone();
    cfg.base = args.base.clone();
    cfg.train = args.train;
    if !(args.adversarial >= 0.0 && args.adversarial.is_finite()) {
        bail!("--adversarial must be a weight of 0 or more");
    }
    cfg.losses.adversarial = args.adversarial;
    cfg.selection.only_categories = args.only_category.clone();
    cfg.selection.exclude_categories = args.exclude_category.clone();
    cfg.checkpoint_every = args.checkpoint_every;
    cfg.validate_every = args.validate_every;
    cfg.validate_sprites = args.validate_sprites;
    Ok(cfg)
}

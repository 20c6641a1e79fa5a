//! The training loop behind `spritedx train`: resumable, logged, validated.
//!
//! The output folder holds:
//! - `checkpoint.safetensors`: the training state (weights, EMA, AdamW moments) with the
//!   step and the full config in its metadata, rewritten atomically every
//!   `checkpoint_every` steps and at the end. A run started again on the same folder
//!   resumes from it and, since every batch and every noise draw is a function of the
//!   seed and the step, continues exactly as if it had not stopped.
//! - `log.jsonl`: one line per `log_every` steps (losses, gradient norm, samples/s).
//! - `val.jsonl`: one line per validation (metrics per preset on held-out sprites).
//! - `plot.png`: loss and validation metrics.
//! - `model/`: the EMA weights in Hugging Face layout (`config.json`,
//!   `model.safetensors`), written at the end (and at every checkpoint), or only the
//!   trained tensors when training an adapter.

use crate::degrade::{degrade, Preset};
use crate::metrics::{score, MetricOptions};
use crate::pixel_restorer::{restore_image, ModelKind, PixelRestorer, PixelRestorerConfig};
use crate::train::checkpoint;
use crate::train::data::{select_sprites, Patch, PairSource, PatchSpec, SpriteSelection};
use crate::train::adversarial::Critic;
use crate::train::losses::{BatchLoss, LossWeights};
use crate::train::optim::{AdamW, AdamWConfig, Ema};
use crate::train::plot::{plot, Series};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use image::RgbaImage;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Which variables a run trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TrainPart {
    /// Every variable.
    All,
    /// The conditioning adapter only (the structure encoder and the SPADE layers, plus
    /// the fast model's head); the rest stays frozen. The output holds only these.
    Adapter,
    /// StableSR's first stage, for a diffusion model without a base: the UNet alone (no
    /// SPADE) learns to denoise clean sprites, unconditionally. The output holds every
    /// tensor, the adapter's untrained; `--init` it with `--train adapter` next.
    Prior,
}

impl TrainPart {
    /// Whether this part trains the variable `name` (frozen ones aside).
    fn trains(self, name: &str) -> bool {
        match self {
            Self::All => true,
            Self::Adapter => is_adapter_var(name),
            Self::Prior => name.starts_with("unet.") && !name.contains("spade"),
        }
    }

    /// Whether the exported model holds every tensor (a whole model) rather than only the
    /// trained ones (an adapter file, applied over its `--init` model).
    fn exports_whole_model(self) -> bool {
        self != Self::Adapter
    }
}

/// A cosine decay of the learning rate from `from_step` (or the end of the warm-up, if later)
/// to `until_step`, where it reaches `final_ratio` times the peak and stays. Fixed in the
/// run's config (not tied to `steps`, which a resumed run may extend), so a resumed run
/// follows the same schedule; a decay that starts at or after the step a run resumes from
/// leaves its past unchanged and may be added then (see [`train`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrDecay {
    /// 0 (the default of configs written before it existed): from the end of the warm-up.
    #[serde(default)]
    pub from_step: u64,
    pub until_step: u64,
    pub final_ratio: f64,
}

/// The learning rate of `step` (0-based) as a share of the peak: a linear warm-up over
/// `warmup` steps, then constant or the cosine `decay`.
pub fn lr_scale(step: u64, warmup: u64, decay: Option<LrDecay>) -> f64 {
    if step < warmup {
        return (step + 1) as f64 / warmup as f64;
    }
    let Some(LrDecay { from_step, until_step, final_ratio }) = decay else {
        return 1.0;
    };
    let start = from_step.max(warmup);
    if step < start {
        1.0
    } else if until_step > start {
        let progress = ((step - start) as f64 / (until_step - start) as f64).min(1.0);
        final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    } else {
        final_ratio
    }
}

/// Everything a run is, saved in its checkpoint and `config.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainConfig {
    pub model: PixelRestorerConfig,
    /// Folder of clean sprites.
    pub data: PathBuf,
    /// Which sprites train (the split is always `train`; validation uses `val`).
    pub selection: SpriteSelection,
    pub presets: Vec<Preset>,
    /// Art pixels per side of a training patch.
    pub patch_cells: usize,
    pub batch: usize,
    pub steps: u64,
    pub seed: u64,
    pub optim: AdamWConfig,
    /// Linear learning-rate warm-up over this many steps.
    pub warmup_steps: u64,
    /// After the warm-up, a cosine decay of the learning rate (None: constant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_decay: Option<LrDecay>,
    pub ema_decay: f64,
    pub losses: LossWeights,
    pub train: TrainPart,
    /// A model folder (`config.json` + `model.safetensors`) to start from.
    pub init: Option<PathBuf>,
    /// The fast model folder a residual diffusion model refines (see
    /// [`PixelRestorerConfig::base`]): its weights become the frozen `base.*` tensors and
    /// the starting point of the structure encoder.
    #[serde(default)]
    pub base: Option<PathBuf>,
    pub log_every: u64,
    pub checkpoint_every: u64,
    pub validate_every: u64,
    /// Validation sprites per preset (0 switches validation off).
    pub validate_sprites: usize,
    pub validate_presets: Vec<Preset>,
}

impl TrainConfig {
    /// Defaults for a model kind; the CLI overrides fields.
    pub fn new(model: PixelRestorerConfig, data: PathBuf) -> Self {
        Self {
            model,
            data,
            selection: SpriteSelection::default(),
            presets: vec![Preset::Clean, Preset::Seed, Preset::Hard, Preset::Ai],
            patch_cells: 16,
            batch: 16,
            steps: 2000,
            seed: 0,
            optim: AdamWConfig::default(),
            warmup_steps: 100,
            lr_decay: None,
            ema_decay: 0.999,
            losses: LossWeights::default(),
            train: TrainPart::All,
            init: None,
            base: None,
            log_every: 10,
            checkpoint_every: 100,
            validate_every: 250,
            validate_sprites: 32,
            validate_presets: vec![Preset::Seed, Preset::Ai],
        }
    }
}

/// Whether a variable belongs to the conditioning adapter.
pub fn is_adapter_var(name: &str) -> bool {
    name.starts_with("encoder.") || name.starts_with("head.") || name.contains("spade")
}

/// Whether a variable is never trained: the base model of a residual diffusion model.
pub fn is_frozen_var(name: &str) -> bool {
    name.starts_with("base.")
}

/// Sets every variable to its initial value, deterministically from `seed`: weights of two
/// or more dimensions N(0, 1/fan_in), 1-D `weight`s (norm scales) 1, biases 0, and the
/// variables named in `zero` to 0 (output layers, so a residual model starts as its base).
pub fn init_vars(vars: &[(String, Var)], seed: u64, zero: &[&str]) -> Result<()> {
    use rand::Rng;
    for (i, (name, var)) in vars.iter().enumerate() {
        let dims = var.dims().to_vec();
        let value = if zero.iter().any(|z| name == z) || name.ends_with("bias") {
            Tensor::zeros(dims.as_slice(), DType::F32, var.device())?
        } else if dims.len() == 1 {
            Tensor::ones(dims.as_slice(), DType::F32, var.device())?
        } else {
            let fan_in: usize = dims[1..].iter().product();
            let std = (1.0 / fan_in.max(1) as f64).sqrt();
            let mut rng = crate::rng::rng_from_seed(crate::rng::derive_seed(seed, &[i as u64]));
            let n: usize = dims.iter().product();
            let data: Vec<f32> = (0..n).map(|_| (rng.sample::<f64, _>(rand_distr::StandardNormal) * std) as f32).collect();
            Tensor::from_vec(data, dims.as_slice(), var.device())?
        };
        var.set(&value)?;
    }
    Ok(())
}

/// The variables of a VarMap sorted by name.
pub(crate) fn sorted_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let mut vars: Vec<(String, Var)> = varmap.data().lock().expect("varmap poisoned").iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// A model folder: `config.json` + `model.safetensors`.
pub fn load_model_dir(dir: &Path) -> Result<(PixelRestorerConfig, HashMap<String, Tensor>)> {
    let cfg_path = dir.join("config.json");
    let cfg: PixelRestorerConfig = serde_json::from_slice(&std::fs::read(&cfg_path).with_context(|| format!("reading {}", cfg_path.display()))?)
        .with_context(|| format!("{} is not a pixel-restorer config", cfg_path.display()))?;
    let (tensors, _) = checkpoint::load(&dir.join("model.safetensors"), &Device::Cpu)?;
    Ok((cfg, tensors))
}

/// Writes a model folder atomically file by file (`model.safetensors` first, so a folder
/// with a `config.json` always has matching weights).
pub fn save_model_dir(dir: &Path, cfg: &PixelRestorerConfig, tensors: &HashMap<String, Tensor>, meta: &HashMap<String, String>) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    checkpoint::save(&dir.join("model.safetensors"), tensors, meta)?;
    crate::io::write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(cfg)?.as_bytes())?;
    Ok(())
}

/// A held-out validation pair.
struct ValPair {
    preset: Preset,
    degraded: RgbaImage,
    clean: RgbaImage,
}

fn validation_pairs(cfg: &TrainConfig) -> Result<Vec<ValPair>> {
    if cfg.validate_sprites == 0 {
        return Ok(Vec::new());
    }
    let selection = SpriteSelection { split: Some(crate::split::Split::Val), ..cfg.selection.clone() };
    let paths = select_sprites(&cfg.data, &selection)?;
    // Spread over the sorted list, so every category is represented.
    let step = (paths.len() / cfg.validate_sprites).max(1);
    let chosen: Vec<&PathBuf> = paths.iter().step_by(step).take(cfg.validate_sprites).collect();
    let mut pairs = Vec::new();
    for &preset in &cfg.validate_presets {
        for (i, path) in chosen.iter().enumerate() {
            let sprite = crate::io::load_rgba(path)?;
            let seed = crate::rng::derive_seed(cfg.seed ^ 0x7661_6c00, &[i as u64, preset as u64]);
            let pair = degrade(&sprite, &preset.config(), seed);
            pairs.push(ValPair { preset, degraded: pair.image, clean: pair.target });
        }
    }
    Ok(pairs)
}

#[derive(Serialize)]
struct ValLine {
    step: u64,
    preset: String,
    images: usize,
    exact: f64,
    size_match: f64,
    pixel_accuracy: f64,
    psnr: f64,
    millis_per_image: f64,
}

fn validate(model: &PixelRestorer, cfg: &TrainConfig, pairs: &[ValPair], step: u64) -> Result<Vec<ValLine>> {
    use rayon::prelude::*;
    let metric = MetricOptions::default();
    let opts = crate::snap::SnapOptions::default();
    let mut lines = Vec::new();
    for &preset in &cfg.validate_presets {
        let subset: Vec<&ValPair> = pairs.iter().filter(|p| p.preset == preset).collect();
        let start = Instant::now();
        let scores: Vec<Option<crate::metrics::Scores>> = subset
            .par_iter()
            .enumerate()
            .map(|(i, p)| restore_image(model, &cfg.model, &p.degraded, &opts, i as u64).ok().map(|r| score(&r.image, &p.clean, &metric)))
            .collect();
        let n = subset.len().max(1) as f64;
        let ok: Vec<&crate::metrics::Scores> = scores.iter().flatten().collect();
        let mean = |f: &dyn Fn(&crate::metrics::Scores) -> f64| if ok.is_empty() { 0.0 } else { ok.iter().map(|s| f(s)).sum::<f64>() / ok.len() as f64 };
        lines.push(ValLine {
            step,
            preset: preset.name().to_string(),
            images: subset.len(),
            exact: ok.iter().filter(|s| s.exact).count() as f64 / n,
            size_match: ok.iter().filter(|s| s.size_match).count() as f64 / n,
            pixel_accuracy: mean(&|s| s.pixel_accuracy),
            psnr: mean(&|s| s.psnr),
            millis_per_image: start.elapsed().as_secs_f64() * 1000.0 / n,
        });
    }
    Ok(lines)
}

fn append_line(path: &Path, line: &impl Serialize) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("opening {}", path.display()))?;
    writeln!(f, "{}", serde_json::to_string(line)?)?;
    Ok(())
}

/// Reads the JSON lines of a log, skipping a torn last line.
fn read_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Keeps only log lines of steps before `step` (a resumed run rewrites what came after
/// its checkpoint), atomically.
fn truncate_log(path: &Path, step: u64) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let kept: Vec<String> = read_lines(path)
        .into_iter()
        .filter(|v| v["step"].as_u64().is_some_and(|s| s <= step))
        .map(|v| v.to_string())
        .collect();
    let mut text = kept.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    crate::io::write_atomic(path, text.as_bytes())?;
    Ok(())
}

fn write_plot(out: &Path) -> Result<()> {
    let log = read_lines(&out.join("log.jsonl"));
    let val = read_lines(&out.join("val.jsonl"));
    let series_of = |lines: &[serde_json::Value], key: &str, filter: Option<&str>, log_scale: bool, name: String| Series {
        name,
        points: lines
            .iter()
            .filter(|v| filter.is_none_or(|f| v["preset"] == f))
            .filter_map(|v| Some((v["step"].as_f64()?, v[key].as_f64()?)))
            .collect(),
        log: log_scale,
    };
    let mut series = vec![series_of(&log, "loss", None, true, "loss".into())];
    let presets: Vec<String> = {
        let mut p: Vec<String> = val.iter().filter_map(|v| v["preset"].as_str().map(String::from)).collect();
        p.dedup();
        p.sort();
        p.dedup();
        p
    };
    for p in &presets {
        series.push(series_of(&val, "exact", Some(p), false, format!("exact {p}")));
        series.push(series_of(&val, "pixel_accuracy", Some(p), false, format!("pixel acc {p}")));
    }
    crate::io::save_png_atomic(&plot(&series), &out.join("plot.png"))?;
    Ok(())
}

/// Whether a checkpoint that `saved` trained up to step `done` can continue as `cfg`:
/// everything that shapes the model, the data and the optimisation must agree; how long the
/// run is and how often it logs, checkpoints and validates may change (so a run can be
/// extended), and so may the learning-rate decay where the run has not been yet (every step
/// before `done` keeps its rate).
fn same_run(saved: &TrainConfig, cfg: &TrainConfig, done: u64) -> Result<bool> {
    let schedule_free = |c: &TrainConfig| -> Result<String> {
        let mut c = c.clone();
        c.steps = 0;
        c.log_every = 0;
        c.checkpoint_every = 0;
        c.validate_every = 0;
        c.lr_decay = None;
        Ok(serde_json::to_string(&c)?)
    };
    let same_past_rates =
        (0..done).all(|step| lr_scale(step, saved.warmup_steps, saved.lr_decay) == lr_scale(step, cfg.warmup_steps, cfg.lr_decay));
    Ok(same_past_rates && schedule_free(saved)? == schedule_free(cfg)?)
}

/// Outcome of a run.
#[derive(Debug)]
pub struct RunSummary {
    pub steps_done: u64,
    pub resumed_from: Option<u64>,
    pub seconds: f64,
}

/// Trains as `cfg` says into `out`; resumes from `out/checkpoint.safetensors` when it is
/// there and was made by the same config. `on_step` is called after every step with the
/// step and the samples per second.
pub fn train(cfg: &TrainConfig, out: &Path, on_step: &mut dyn FnMut(u64, f64)) -> Result<RunSummary> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let device = Device::Cpu;
    let started = Instant::now();
    let spec = PatchSpec { cells: cfg.patch_cells, factor: cfg.model.factor, fitted_cells: cfg.model.fitted_cells };
    if cfg.patch_cells % cfg.model.size_multiple() != 0 {
        bail!("patch size {} must be a multiple of {}", cfg.patch_cells, cfg.model.size_multiple());
    }
    if cfg.train == TrainPart::Prior && (cfg.model.kind != ModelKind::Diffusion || cfg.model.base.is_some()) {
        bail!("--train prior trains the UNet of a diffusion model without a base (--model diffusion, no --base)");
    }
    let train_paths = select_sprites(&cfg.data, &cfg.selection)?;
    let source = PairSource::load(&train_paths, cfg.presets.clone(), spec, cfg.seed)?;
    // A prior cannot restore until its adapter is trained: nothing to validate.
    let val_pairs = if cfg.train == TrainPart::Prior { Vec::new() } else { validation_pairs(cfg)? };

    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let model = PixelRestorer::new(vb, &cfg.model)?;
    let vars = sorted_vars(&varmap);
    init_vars(&vars, cfg.seed, &["head.out.weight", "unet.out.2.weight"])?;
    if let Some(init) = &cfg.init {
        let (init_cfg, tensors) = load_model_dir(init)?;
        if init_cfg != cfg.model {
            bail!("{} holds a model of another configuration than this run's", init.display());
        }
        for (name, var) in &vars {
            let t = tensors.get(name).with_context(|| format!("{} lacks {name}", init.display()))?;
            var.set(t)?;
        }
    }
    if let Some(base_dir) = &cfg.base {
        let (base_cfg, tensors) = load_model_dir(base_dir)?;
        if cfg.model.base.as_deref() != Some(&base_cfg) {
            bail!("{} holds another base model than this run's config names", base_dir.display());
        }
        for (name, var) in &vars {
            // A new model's structure encoder starts from the base's; a re-based one
            // (`init` given) keeps its own trained encoder.
            let base_name = match (name.strip_prefix("base."), name.starts_with("encoder.") && cfg.init.is_none()) {
                (Some(own), _) => own,
                (None, true) => name.as_str(),
                (None, false) => continue,
            };
            var.set(tensors.get(base_name).with_context(|| format!("{} lacks {base_name}", base_dir.display()))?)?;
        }
    }
    let trained: Vec<(String, Var)> = vars
        .iter()
        .filter(|(n, _)| !is_frozen_var(n))
        .filter(|(n, _)| cfg.train.trains(n))
        .cloned()
        .collect();
    if trained.is_empty() {
        bail!("nothing to train: no variable belongs to the adapter");
    }
    let mut opt = AdamW::new(trained.clone(), cfg.optim.clone())?;
    let mut ema = Ema::new(&trained, cfg.ema_decay)?;
    let mut critic = match cfg.losses.adversarial > 0.0 {
        true => Some(Critic::new(cfg.seed, cfg.optim.clone(), &device)?),
        false => None,
    };
    let config_json = serde_json::to_string(cfg)?;
    let ckpt_path = out.join("checkpoint.safetensors");
    let mut step = 0u64;
    let mut resumed_from = None;
    if ckpt_path.exists() {
        let (tensors, meta) = checkpoint::load(&ckpt_path, &device)?;
        let saved: TrainConfig = serde_json::from_str(meta.get("config").context("checkpoint without config")?)?;
        step = meta.get("step").context("checkpoint without step")?.parse()?;
        if !same_run(&saved, cfg, step)? {
            bail!(
                "{} was made by another configuration (a resumed run may change only --steps, the intervals, \
                 and a learning-rate decay that starts at or after its step {step}); use another --out folder, \
                 or delete the checkpoint to start over",
                ckpt_path.display()
            );
        }
        for (name, var) in &vars {
            var.set(tensors.get(&format!("model.{name}")).with_context(|| format!("checkpoint lacks model.{name}"))?)?;
        }
        for (name, shadow) in ema.shadow.iter_mut() {
            *shadow = tensors.get(&format!("ema.{name}")).with_context(|| format!("checkpoint lacks ema.{name}"))?.clone();
        }
        opt.load_state(&tensors, step)?;
        if let Some(critic) = critic.as_mut() {
            critic.load_state(&tensors, step)?;
        }
        resumed_from = Some(step);
        truncate_log(&out.join("log.jsonl"), step)?;
        truncate_log(&out.join("val.jsonl"), step)?;
    }
    crate::io::write_atomic(&out.join("config.json"), serde_json::to_string_pretty(cfg)?.as_bytes())?;

    // The exported model: EMA weights of what was trained, the rest as loaded (all of it
    // when everything trains, only the trained tensors for an adapter).
    let export_tensors = |ema: &Ema| -> HashMap<String, Tensor> {
        let ema_of: HashMap<&str, &Tensor> = ema.shadow.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let mut export = HashMap::new();
        for (name, var) in &vars {
            match ema_of.get(name.as_str()) {
                Some(t) => export.insert(name.clone(), (*t).clone()),
                None if cfg.train.exports_whole_model() => export.insert(name.clone(), var.as_tensor().clone()),
                None => None,
            };
        }
        export
    };
    let save_all = |step: u64, opt: &AdamW, ema: &Ema, critic: Option<&Critic>| -> Result<()> {
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (name, var) in &vars {
            tensors.insert(format!("model.{name}"), var.as_tensor().clone());
        }
        for (name, t) in &ema.shadow {
            tensors.insert(format!("ema.{name}"), t.clone());
        }
        tensors.extend(opt.state());
        tensors.extend(critic.map(Critic::state).unwrap_or_default());
        let meta: HashMap<String, String> = [("step".to_string(), step.to_string()), ("config".to_string(), config_json.clone())].into();
        checkpoint::save_sharded(&ckpt_path, &tensors, &meta, checkpoint::MAX_FILE_BYTES)?;
        let export = export_tensors(ema);
        let meta: HashMap<String, String> = [("step".to_string(), step.to_string()), ("train".to_string(), format!("{:?}", cfg.train))].into();
        save_model_dir(&out.join("model"), &cfg.model, &export, &meta)
    };

    // Batches are made on a helper thread one step ahead of training.
    let (tx, rx) = std::sync::mpsc::sync_channel::<(u64, Vec<Patch>, usize)>(1);
    let source = std::sync::Arc::new(source);
    let producer = {
        let source = source.clone();
        let (first, last, batch) = (step, cfg.steps, cfg.batch);
        std::thread::spawn(move || {
            for s in first..last {
                let (patches, skipped) = source.batch(s, batch);
                if tx.send((s, patches, skipped)).is_err() {
                    break;
                }
            }
        })
    };
    let cells = cfg.patch_cells;
    let mut last_log = Instant::now();
    let mut samples_since_log = 0usize;
    while step < cfg.steps {
        let (s, patches, skipped) = rx.recv().context("the batch thread stopped")?;
        debug_assert_eq!(s, step);
        let b = patches.len();
        let input: Vec<f32> = patches.iter().flat_map(|p| p.input.iter().copied()).collect();
        let target: Vec<f32> = patches.iter().flat_map(|p| p.target.iter().copied()).collect();
        let input = Tensor::from_vec(input, (b, cfg.model.input_channels(), cells, cells), &device)?;
        let target = Tensor::from_vec(target, (b, 4, cells, cells), &device)?;
        let lr_scale = lr_scale(step, cfg.warmup_steps, cfg.lr_decay);
        opt.config.lr = cfg.optim.lr * lr_scale;
        let noise_seed = crate::rng::derive_seed(cfg.seed, &[step, 0x6e6f697365]);
        let BatchLoss { total: mut loss, mut parts, predicted } = match (&model, cfg.train) {
            (PixelRestorer::Diffusion(diffusion), TrainPart::Prior) => diffusion.loss(None, &target, noise_seed, &cfg.losses)?,
            _ => model.loss(&input, &target, noise_seed, &cfg.losses)?,
        };
        if let Some(critic) = &critic {
            let adversarial = critic.net.generator_loss(&predicted)?;
            parts.push(("adversarial", adversarial.to_scalar::<f32>()?));
            loss = (loss + (adversarial * cfg.losses.adversarial)?)?;
        }
        let loss_value = loss.to_scalar::<f32>()?;
        if !loss_value.is_finite() {
            bail!("the loss became {loss_value} at step {step}; lower the learning rate (--lr) and resume from the last checkpoint");
        }
        let grads = loss.backward()?;
        let grad_norm = opt.step(&grads)?;
        if let Some(critic) = critic.as_mut() {
            parts.push(("critic", critic.step(&target, &predicted, opt.config.lr)?));
        }
        ema.update(&trained)?;
        step += 1;
        samples_since_log += b;
        let rate = samples_since_log as f64 / last_log.elapsed().as_secs_f64().max(1e-9);
        on_step(step, rate);
        if step % cfg.log_every == 0 || step == cfg.steps {
            let mut line = serde_json::json!({
                "step": step, "loss": loss_value, "grad_norm": grad_norm, "lr": opt.config.lr,
                "samples_per_s": rate, "skipped_draws": skipped, "elapsed_s": started.elapsed().as_secs_f64(),
            });
            for (name, v) in &parts {
                line[*name] = serde_json::json!(v);
            }
            append_line(&out.join("log.jsonl"), &line)?;
            last_log = Instant::now();
            samples_since_log = 0;
        }
        if step % cfg.checkpoint_every == 0 || step == cfg.steps {
            save_all(step, &opt, &ema, critic.as_ref())?;
        }
        if !val_pairs.is_empty() && (step % cfg.validate_every == 0 || step == cfg.steps) {
            // The EMA weights just exported (every validation step is a checkpoint step
            // or the last step when validate_every is a multiple of checkpoint_every),
            // built from memory rather than read back from the file just written.
            let exported = cfg.train.exports_whole_model() && (step % cfg.checkpoint_every == 0 || step == cfg.steps);
            let eval_model = match exported {
                true => Some(PixelRestorer::new(VarBuilder::from_tensors(export_tensors(&ema), DType::F32, &device), &cfg.model)?),
                false => None,
            };
            let lines = validate(eval_model.as_ref().unwrap_or(&model), cfg, &val_pairs, step)?;
            for l in &lines {
                append_line(&out.join("val.jsonl"), l)?;
            }
            write_plot(out)?;
        }
    }
    drop(rx);
    let _ = producer.join();
    write_plot(out)?;
    Ok(RunSummary { steps_done: step, resumed_from, seconds: started.elapsed().as_secs_f64() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Until the decay starts the rate is the undecayed one, exactly; then the decay
        /// never rises, stays within [final_ratio, 1] and ends at final_ratio (tolerance
        /// 1e-12, rounding of cos).
        #[test]
        fn the_cosine_decay_falls_from_the_peak_to_its_floor(warmup in 0u64..200, delay in 0u64..300, length in 1u64..5000, final_ratio in 0.0f64..1.0) {
            let start = warmup + delay;
            let decay = Some(LrDecay { from_step: start, until_step: start + length, final_ratio });
            for step in 0..start {
                prop_assert_eq!(lr_scale(step, warmup, decay), lr_scale(step, warmup, None));
            }
            prop_assert!((lr_scale(start, warmup, decay) - 1.0).abs() < 1e-12);
            if warmup > 0 {
                prop_assert!((lr_scale(warmup - 1, warmup, decay) - 1.0).abs() < 1e-12);
                prop_assert!(lr_scale(0, warmup, decay) <= 1.0 / warmup as f64 + 1e-12);
            }
            let mut previous = f64::INFINITY;
            for step in (start..start + length + 10).step_by(((length / 50) as usize).max(1)) {
                let scale = lr_scale(step, warmup, decay);
                prop_assert!(scale <= previous + 1e-12 && scale >= final_ratio - 1e-12 && scale <= 1.0 + 1e-12);
                previous = scale;
            }
            prop_assert!((lr_scale(start + length, warmup, decay) - final_ratio).abs() < 1e-12);
            prop_assert!((lr_scale(start + length + 1000, warmup, decay) - final_ratio).abs() < 1e-12);
        }
    }

    #[test]
    fn without_decay_the_rate_stays_at_its_peak_after_the_warm_up() {
        assert_eq!(lr_scale(0, 4, None), 0.25);
        assert_eq!(lr_scale(3, 4, None), 1.0);
        assert_eq!(lr_scale(10_000, 4, None), 1.0);
        assert_eq!(lr_scale(0, 0, None), 1.0);
    }
}

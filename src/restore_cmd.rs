//! `spritedx restore`: batch restoration with a progress bar, a summary and a report.

use crate::progress_bar;
use anyhow::{bail, Context, Result};
use image::imageops;
use rayon::prelude::*;
use serde::Serialize;
use spritedx::batch::{expand_inputs, plan_outputs, preview_path, snap_jobs};
use spritedx::decoder::{AlphaMode, DecodeOptions, PaletteChoice};
use spritedx::grid::GridOptions;
use spritedx::io::{load_rgba_with, save_png_atomic, ReadLimits, DEFAULT_MAX_PIXELS};
use spritedx::palette::{AutoPaletteOptions, Palette};
use spritedx::pixel_restorer::{default_model_dir, LoadedPixelRestorer, ModelKind, PixelRestorerConfig};
use spritedx::stablesr::pipeline::{parse_device, parse_method, ColourFix, StableSr, StableSrOptions};
use spritedx::weights::{HubOptions, WeightSource};
use spritedx::snap::{restore, SnapOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Args)]
pub struct RestoreArgs {
    /// Input images: files, folders (their images) or glob patterns.
    #[arg(required = true)]
    inputs: Vec<String>,
    /// Output: a .png file for a single input, otherwise a folder (created if missing).
    #[arg(short, long)]
    output: PathBuf,
    /// Restorer to use: snap (grid analysis + decoder), fast (one-pass learned model),
    /// diffusion (learned diffusion model; with --weights naming StableSR checkpoints, the
    /// StableSR port) or stablesr (the StableSR port, default weights hf://Iceclear/StableSR).
    #[arg(long, default_value = "snap", value_parser = ["snap", "fast", "diffusion", "stablesr"])]
    model: String,
    /// Weights of a learned restorer: one of our model folders (config.json +
    /// model.safetensors, e.g. a training run's `model/`; default: the shipped one in
    /// checkpoints/), or for StableSR a folder with both checkpoints, a folder in our
    /// StableSR layout, or hf://OWNER/REPO[@REV] (HF_HOME, HF_HUB_OFFLINE and HF_TOKEN apply).
    #[arg(long, value_name = "SOURCE")]
    weights: Option<String>,
    /// Device for StableSR: cpu, cuda or cuda:N (CUDA needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// StableSR sampler: ddpm (as StableSR), ddim or dpm++2m.
    #[arg(long, default_value = "ddpm", value_parser = ["ddpm", "ddim", "dpm++2m"])]
    sampler: String,
    /// StableSR's CFW fidelity weight w in [0, 1]: higher keeps closer to the input.
    #[arg(long, default_value_t = 0.5)]
    fidelity: f64,
    /// StableSR colour fix: none, adain or wavelet.
    #[arg(long, default_value = "none", value_parser = ["none", "adain", "wavelet"])]
    colour_fix: String,
    /// StableSR latent tile size and overlap (large inputs are sampled in blended tiles).
    #[arg(long)]
    tile_size: Option<usize>,
    #[arg(long)]
    tile_overlap: Option<usize>,
    /// Tensors from a fine-tuning run (`spritedx train --train adapter`) that replace the
    /// model's own; repeat for several (a diffusion model's own adapter and its base fast
    /// model's: a fast model's adapter goes to the diffusion model's base).
    #[arg(long, value_name = "FILE.safetensors")]
    adapter: Vec<PathBuf>,
    /// Diffusion sampler steps (default: the model's).
    #[arg(long)]
    steps: Option<usize>,
    /// Seed of the diffusion sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write an N-times nearest-neighbour upscale beside each output.
    #[arg(long, value_name = "N")]
    preview: Option<u32>,
    /// Write a JSON report: per image the grid, confidence, palette, time or error.
    #[arg(long, value_name = "FILE.json")]
    report: Option<PathBuf>,
    /// Known cell size in screen pixels: W or WxH (fractions allowed); the lines' phase is still fitted (give --offset to fix it).
    #[arg(long, value_name = "W[xH]", value_parser = parse_cell_size)]
    cell_size: Option<(f32, f32)>,
    /// Known number of cells: COLSxROWS; the lines' phase is still fitted (give --offset to fix it).
    #[arg(long, value_name = "COLSxROWS", value_parser = parse_cells, conflicts_with = "cell_size")]
    grid: Option<(u32, u32)>,
    /// Known grid phase: screen position X,Y of a grid line; the lines stay where it puts them.
    #[arg(long, value_name = "X,Y", value_parser = parse_offset)]
    offset: Option<(f32, f32)>,
    /// Use at most N colours.
    #[arg(long, value_name = "N", conflicts_with = "palette")]
    colors: Option<usize>,
    /// Snap to this palette: Lospec .hex, GIMP .gpl, JASC .pal, or an image of the colours.
    #[arg(long, value_name = "FILE")]
    palette: Option<PathBuf>,
    /// Keep every cell's alpha as it is instead of binarising it.
    #[arg(long, conflicts_with = "binary_alpha")]
    keep_alpha: bool,
    /// Only opaque and transparent, even where the sprite has a translucent level (a
    /// shadow or glow drawn at one alpha), which is otherwise kept.
    #[arg(long)]
    binary_alpha: bool,
    /// Alpha at or above this is opaque when binarising.
    #[arg(long, default_value_t = 128)]
    alpha_threshold: u8,
    /// Turn the flat background colour touching the border into transparency.
    #[arg(long)]
    remove_background: bool,
    /// Replace isolated stray pixels by their neighbours' colour.
    #[arg(long)]
    remove_strays: bool,
    /// Refuse images with more pixels than this.
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    /// Images restored at once (default: twice the cores for snap, whose restores would
    /// otherwise wait on disk writes; one per core for the learned models).
    #[arg(long)]
    jobs: Option<usize>,
}

/// Parses `A` (meaning `A` on both axes) or `A<sep>B`.
fn parse_pair<T: std::str::FromStr + Copy>(s: &str, sep: char, what: &str) -> Result<(T, T), String> {
    let parse = |p: &str| p.trim().parse::<T>().map_err(|_| format!("{s:?} is not {what}"));
    match s.split(sep).collect::<Vec<_>>().as_slice() {
        [a] => parse(a).map(|v| (v, v)),
        [a, b] => Ok((parse(a)?, parse(b)?)),
        _ => Err(format!("{s:?} is not {what}")),
    }
}

fn parse_cell_size(s: &str) -> Result<(f32, f32), String> {
    parse_pair(s, 'x', "a cell size like 8 or 8x6.5")
}

fn parse_cells(s: &str) -> Result<(u32, u32), String> {
    parse_pair(s, 'x', "a cell count like 32x32")
}

fn parse_offset(s: &str) -> Result<(f32, f32), String> {
    parse_pair(s, ',', "an offset like 3,1.5")
}

/// One line of the report.
#[derive(Serialize)]
struct ReportEntry {
    input: PathBuf,
    output: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restored: Option<spritedx::snap::Restored>,
    size: Option<(u32, u32)>,
    millis: f64,
    error: Option<String>,
}

/// The restorer a run uses.
enum Engine {
    Snap,
    Pixel(LoadedPixelRestorer),
    StableSr(Box<StableSr>, Box<StableSrOptions>),
}

/// Whether `weights` is one of our pixel-restorer folders (its config.json says so).
fn is_pixel_restorer_folder(weights: &str) -> bool {
    let config = std::path::Path::new(weights).join("config.json");
    std::fs::read(config).ok().and_then(|b| serde_json::from_slice::<PixelRestorerConfig>(&b).ok()).is_some()
}

impl Engine {
    fn new(args: &RestoreArgs, opts: &SnapOptions) -> Result<Self> {
        let kind = match args.model.as_str() {
            "snap" => {
                if args.weights.is_some() || !args.adapter.is_empty() {
                    bail!("--weights and --adapter are for the learned models (--model fast, diffusion or stablesr)");
                }
                return Ok(Engine::Snap);
            }
            "fast" => ModelKind::Fast,
            "diffusion" if args.weights.as_deref().is_none_or(is_pixel_restorer_folder) => ModelKind::Diffusion,
            _ => return Self::stablesr(args, opts),
        };
        let dir = args.weights.as_ref().map(PathBuf::from).unwrap_or_else(|| default_model_dir(kind));
        let mut model = LoadedPixelRestorer::load(&dir, &args.adapter)?;
        if model.config.kind != kind {
            bail!("{} holds a {:?} model, not a {kind:?} one", dir.display(), model.config.kind);
        }
        if let Some(steps) = args.steps {
            model.set_steps(steps)?;
        }
        model.seed = args.seed;
        Ok(Engine::Pixel(model))
    }

    fn stablesr(args: &RestoreArgs, opts: &SnapOptions) -> Result<Self> {
        if !args.adapter.is_empty() {
            bail!("--adapter is for our own models; StableSR takes its weights whole with --weights");
        }
        let device = parse_device(&args.device)?;
        let source = WeightSource::parse(args.weights.as_deref().unwrap_or("hf://Iceclear/StableSR"))?;
        let model = StableSr::load(&source, &HubOptions::from_env()?, &device).context("loading the StableSR model")?;
        let mut sr = StableSrOptions::for_model(model.config());
        sr.grid = opts.grid.clone();
        sr.decode = opts.decode.clone();
        if let Some(steps) = args.steps {
            if steps == 0 {
                bail!("--steps needs at least 1");
            }
            sr.sampling.steps = steps;
        }
        sr.sampling.method = parse_method(&args.sampler)?;
        sr.sampling.seed = args.seed;
        if !(0.0..=1.0).contains(&args.fidelity) {
            bail!("--fidelity must be between 0 and 1");
        }
        sr.fidelity = args.fidelity;
        sr.colour_fix = ColourFix::parse(&args.colour_fix)?;
        if let Some(tiles) = sr.sampling.tiles.as_mut() {
            tiles.size = args.tile_size.unwrap_or(tiles.size);
            tiles.overlap = args.tile_overlap.unwrap_or(tiles.overlap);
        }
        Ok(Engine::StableSr(Box::new(model), Box::new(sr)))
    }

    fn restore(&self, img: &image::RgbaImage, opts: &SnapOptions) -> Result<spritedx::snap::Restored> {
        match self {
            Engine::Snap => Ok(restore(img, opts)?),
            Engine::Pixel(m) => m.restore(img, opts),
            Engine::StableSr(m, sr) => m.restore(img, sr),
        }
    }
}

pub fn run(args: RestoreArgs) -> Result<ExitCode> {
    let opts = snap_options(&args)?;
    let engine = Engine::new(&args, &opts)?;
    let inputs = expand_inputs(&args.inputs)?;
    let outputs = plan_outputs(&inputs, &args.output);
    if let Some(0) = args.preview {
        bail!("--preview needs a factor of at least 1");
    }
    let limits = ReadLimits { max_pixels: args.max_pixels };
    let bar = progress_bar(inputs.len() as u64, "restore");
    // 0: rayon's default, one worker per core.
    let jobs = args.jobs.unwrap_or(if matches!(engine, Engine::Snap) { snap_jobs() } else { 0 });
    let pool = rayon::ThreadPoolBuilder::new().num_threads(jobs).build()?;
    let started = Instant::now();
    let entries: Vec<ReportEntry> = pool.install(|| {
        inputs
            .par_iter()
            .zip(outputs.into_par_iter())
            .map(|(input, output)| {
                let start = Instant::now();
                let result = output.and_then(|out| {
                    let img = load_rgba_with(input, limits)?;
                    let restored = engine.restore(&img, &opts).with_context(|| input.display().to_string())?;
                    save_png_atomic(&restored.image, &out)?;
                    if let Some(k) = args.preview {
                        let (w, h) = restored.image.dimensions();
                        let big = imageops::resize(&restored.image, w * k, h * k, imageops::FilterType::Nearest);
                        save_png_atomic(&big, &preview_path(&out, k))?;
                    }
                    Ok((out, restored))
                });
                let millis = start.elapsed().as_secs_f64() * 1e3;
                bar.inc(1);
                match result {
                    Ok((out, restored)) => ReportEntry {
                        input: input.clone(),
                        output: Some(out),
                        size: Some(restored.image.dimensions()),
                        restored: Some(restored),
                        millis,
                        error: None,
                    },
                    Err(e) => {
                        bar.suspend(|| eprintln!("error: {e:#}"));
                        ReportEntry { input: input.clone(), output: None, restored: None, size: None, millis, error: Some(format!("{e:#}")) }
                    }
                }
            })
            .collect()
    });
    bar.finish_and_clear();
    let failed = entries.iter().filter(|e| e.error.is_some()).count();
    for e in entries.iter().filter(|e| e.error.is_none()) {
        if let (Some(out), Some(r)) = (&e.output, &e.restored) {
            println!(
                "{} -> {} ({}x{} cells of {:.2}x{:.2} px, {} colours, confidence {:.2})",
                e.input.display(),
                out.display(),
                r.grid.cols(),
                r.grid.rows(),
                r.grid.cell_width,
                r.grid.cell_height,
                r.palette.len(),
                r.grid.confidence()
            );
        }
    }
    println!(
        "restored {} of {} images in {:.2} s{}",
        entries.len() - failed,
        entries.len(),
        started.elapsed().as_secs_f64(),
        if failed > 0 { format!("; {failed} failed (see the errors above)") } else { String::new() }
    );
    if let Some(path) = &args.report {
        spritedx::pairs::write_json_atomic(path, &entries)?;
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn snap_options(args: &RestoreArgs) -> Result<SnapOptions> {
    let palette = match (&args.palette, args.colors) {
        (Some(path), _) => PaletteChoice::Fixed(Palette::from_file(path)?),
        (None, Some(0)) => bail!("--colors needs at least 1"),
        (None, n) => PaletteChoice::Auto(AutoPaletteOptions { max_colours: n, ..AutoPaletteOptions::default() }),
    };
    Ok(SnapOptions {
        grid: GridOptions { cell_size: args.cell_size, cells: args.grid, offset: args.offset, ..GridOptions::default() },
        decode: DecodeOptions {
            palette,
            alpha: match (args.keep_alpha, args.binary_alpha) {
                (true, _) => AlphaMode::Keep,
                (false, true) => AlphaMode::Binary { threshold: args.alpha_threshold },
                (false, false) => AlphaMode::Levels { threshold: args.alpha_threshold },
            },
            remove_background: args.remove_background,
            remove_strays: args.remove_strays,
        },
    })
}

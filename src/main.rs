//! `spritedx`: the command-line interface. A thin layer over the `spritedx` library.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use spritedx::degrade::{DegradeConfig, Preset};
use spritedx::eval::{contact_sheet, evaluate, format_table, EvalOptions};
use spritedx::io::save_png_atomic;
use spritedx::metrics::MetricOptions;
use spritedx::pairs::{write_json_atomic, write_pair_set, PairSetSpec};
use spritedx::restorers::restorer_by_name;
use spritedx::split::Split;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

mod convert_cmd;
mod restore_cmd;
mod train_cmd;

// The training and restoring paths allocate many large short-lived buffers; glibc's malloc
// returns them to the kernel and page-faults them back in, mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "spritedx", version, about = "SpriteDX Restore: turns pseudo pixel art into true pixel art")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make (degraded, clean) pairs from clean sprites, with a JSON-lines manifest.
    Degrade(DegradeArgs),
    /// Score restorers on a pair set: a table per preset, optional JSON and contact sheet.
    Eval(EvalArgs),
    /// Restore pseudo pixel art to true pixel art: one output per input at true resolution.
    Restore(restore_cmd::RestoreArgs),
    /// Write a checkpoint's tensors (.ckpt/.pt/.pth, .safetensors or hf://) as .safetensors.
    Convert(convert_cmd::ConvertArgs),
    /// Train the fast or diffusion restorer on clean sprites, or fine-tune its adapter on a style.
    Train(train_cmd::TrainArgs),
}

#[derive(clap::Args)]
struct DegradeArgs {
    /// Folder of clean sprites.
    #[arg(long, required_unless_present = "print_config")]
    input: Option<PathBuf>,
    /// Folder to write the pair set into (created if missing).
    #[arg(long, required_unless_present = "print_config")]
    output: Option<PathBuf>,
    /// Degraded samples per sprite and preset.
    #[arg(long, default_value_t = 1)]
    per_image: u32,
    /// Presets, comma-separated: clean, seed, hard, ai.
    #[arg(long, value_delimiter = ',', default_value = "seed")]
    preset: Vec<Preset>,
    /// A JSON config file setting the ranges (fields left out keep the defaults);
    /// used instead of --preset, under the name of the file's stem.
    #[arg(long, conflicts_with = "preset")]
    config: Option<PathBuf>,
    /// Master seed; every sample's seed derives from it, the preset, the file name and the index.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Which part of the deterministic train/validation split to use.
    #[arg(long, value_enum, default_value_t = Split::All)]
    split: Split,
    /// Use at most this many sprites (after the split, in name order).
    #[arg(long)]
    limit: Option<usize>,
    /// Print the first preset's full config as JSON (a starting point for --config) and exit.
    #[arg(long)]
    print_config: bool,
}

#[derive(clap::Args)]
struct EvalArgs {
    /// A pair set made by `spritedx degrade`.
    #[arg(long)]
    pairs: PathBuf,
    /// Restorers to run, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    model: Vec<String>,
    /// Write per-image results and aggregates as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a contact sheet PNG: degraded | each model | clean.
    #[arg(long)]
    sheet: Option<PathBuf>,
    /// Rows of the contact sheet per preset.
    #[arg(long, default_value_t = 6)]
    sheet_rows: usize,
    /// Evaluate at most this many pairs per preset.
    #[arg(long)]
    limit: Option<usize>,
    /// Pairs evaluated at once (1 gives undisturbed timings).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Threads the pairs in flight share (default: --jobs): more lets a single image's
    /// restore use the free cores, as `spritedx restore` of one image does.
    #[arg(long)]
    threads: Option<usize>,
    /// Largest per-channel difference (0-255) for a pixel to count as right.
    #[arg(long, default_value_t = MetricOptions::default().exact_tolerance)]
    tolerance: u8,
    /// Tensors of a fine-tuning run applied to the learned models (fast, diffusion,
    /// model:DIR); repeat for several (a fast model's adapter goes to a diffusion model's base).
    #[arg(long, value_name = "FILE.safetensors")]
    adapter: Vec<PathBuf>,
}

fn main() -> ExitCode {
    spritedx::alloc::keep_freed_memory();
    spritedx::threads::keep_candle_ops_on_the_calling_thread();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Degrade(args) => run_degrade(args),
        Command::Eval(args) => run_eval(args),
        Command::Restore(args) => restore_cmd::run(args),
        Command::Convert(args) => convert_cmd::run(args),
        Command::Train(args) => train_cmd::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!("{what} {{bar:40}} {{pos}}/{{len}} [{{elapsed_precise}}, ETA {{eta}}]"))
            .expect("progress template is valid"),
    );
    bar
}

fn run_degrade(args: DegradeArgs) -> Result<ExitCode> {
    if args.print_config {
        let preset = args.preset.first().copied().unwrap_or(Preset::Seed);
        println!("{}", serde_json::to_string_pretty(&preset.config())?);
        return Ok(ExitCode::SUCCESS);
    }
    let (Some(input), Some(output)) = (args.input, args.output) else {
        bail!("--input and --output are required");
    };
    let configs = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            let cfg: DegradeConfig =
                serde_json::from_str(&text).with_context(|| format!("{} is not a valid degrade config", path.display()))?;
            let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "custom".into());
            vec![(name, cfg)]
        }
        None => args.preset.iter().map(|p| (p.name().to_owned(), p.config())).collect(),
    };
    let spec = PairSetSpec { configs, per_image: args.per_image, seed: args.seed, split: args.split, limit: args.limit };
    let sprites = spritedx::pairs::list_images(&input)?
        .iter()
        .filter(|p| spritedx::split::in_split(p, args.split))
        .count();
    let bar = progress_bar(args.limit.map_or(sprites, |l| l.min(sprites)) as u64, "degrade");
    let start = Instant::now();
    let summary = write_pair_set(&input, &output, &spec, &|| bar.inc(1))?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "wrote {} pairs to {} in {:.1} s ({:.2} s per 1000 pairs)",
        summary.pairs,
        output.display(),
        secs,
        secs * 1000.0 / summary.pairs.max(1) as f64
    );
    for f in &summary.failed {
        eprintln!("skipped {f}");
    }
    Ok(if summary.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn run_eval(args: EvalArgs) -> Result<ExitCode> {
    let restorers = args.model.iter().map(|m| restorer_by_name(m, &args.adapter)).collect::<Result<Vec<_>>>()?;
    let opts = EvalOptions {
        metrics: MetricOptions { exact_tolerance: args.tolerance, ..MetricOptions::default() },
        jobs: args.jobs,
        threads: args.threads.unwrap_or(args.jobs),
        sheet_rows: if args.sheet.is_some() { args.sheet_rows } else { 0 },
        limit_per_preset: args.limit,
    };
    let total = spritedx::pairs::read_manifest(&args.pairs)?.len();
    let bar = progress_bar(total as u64, "eval");
    let report = evaluate(&args.pairs, &restorers, &opts, &|| bar.inc(1))?;
    bar.finish_and_clear();
    print!("{}", format_table(&report.aggregates));
    if let Some(path) = &args.json {
        write_json_atomic(path, &report)?;
        println!("\nwrote {}", path.display());
    }
    if let Some(path) = &args.sheet {
        save_png_atomic(&contact_sheet(&report.sheet), path)?;
        println!("wrote {} (columns: degraded | {} | clean)", path.display(), args.model.join(" | "));
    }
    Ok(ExitCode::SUCCESS)
}

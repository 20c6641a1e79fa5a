//! `spritedx convert`: a checkpoint's tensors as `.safetensors`.

use anyhow::{bail, Result};
use spritedx::weights::{convert, resolve, ConvertOptions, HubOptions, OutputDType, WeightSource};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ConvertArgs {
    /// The checkpoint: a .ckpt/.pt/.pth or .safetensors file, a folder with one weight file,
    /// or hf://OWNER/REPO/FILE[@REVISION].
    input: String,
    /// The .safetensors file to write (never the input).
    #[arg(short, long, value_name = "OUT.safetensors")]
    output: PathBuf,
    /// Store floating-point tensors as f16 (half the size) instead of f32.
    #[arg(long)]
    f16: bool,
    /// Keep only the tensors under this key prefix; repeat for several
    /// (e.g. --prefix model.diffusion_model --prefix structcond_stage_model).
    #[arg(long = "prefix", value_name = "P")]
    prefixes: Vec<String>,
}

pub fn run(args: ConvertArgs) -> Result<ExitCode> {
    let source = WeightSource::parse(&args.input)?;
    let hub = HubOptions::from_env()?;
    let files = resolve(&source, &hub)?;
    let [input] = files.as_slice() else {
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        bail!(
            "{source} gives {} weight files ({}); convert them one at a time",
            files.len(),
            names.join(", ")
        );
    };
    let options = ConvertOptions {
        dtype: if args.f16 {
            OutputDType::F16
        } else {
            OutputDType::F32
        },
        keep_prefixes: args.prefixes,
    };
    let summary = convert(input, &args.output, &options)?;
    println!(
        "wrote {} tensors ({:.1}M parameters, {}) to {}{}",
        summary.written,
        summary.parameters as f64 / 1e6,
        if args.f16 { "f16" } else { "f32" },
        args.output.display(),
        if summary.skipped > 0 {
            format!("; left out {} tensors outside --prefix", summary.skipped)
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}

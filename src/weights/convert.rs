//! Writing the tensors of a checkpoint as `.safetensors`.

use super::{key_under_prefix, list_some, TensorFile};
use crate::io::persist_atomic;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// The floating-point type a conversion stores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutputDType {
    /// 32-bit floats: exact for f32, f16 and bf16 checkpoints.
    #[default]
    F32,
    /// 16-bit floats: half the size, values rounded to the nearest f16.
    F16,
}

impl OutputDType {
    fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
        }
    }
}

/// What [`convert`] writes.
#[derive(Clone, Debug, Default)]
pub struct ConvertOptions {
    /// The type of floating-point tensors; other tensors (integer buffers) keep theirs.
    pub dtype: OutputDType,
    /// Keep only the tensors under these key prefixes (e.g. `model.diffusion_model`);
    /// empty keeps every tensor.
    pub keep_prefixes: Vec<String>,
}

/// What [`convert`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvertSummary {
    /// Tensors written.
    pub written: usize,
    /// Elements in the written tensors.
    pub parameters: usize,
    /// Tensors of the input left out by the prefixes.
    pub skipped: usize,
}

/// Writes the tensors of `input` (a PyTorch checkpoint or a `.safetensors` file) that the
/// prefixes keep to `output` as `.safetensors`, atomically: a temporary file in the output
/// folder renamed over `output` once complete. Refuses to write over `input`.
pub fn convert(input: &Path, output: &Path, options: &ConvertOptions) -> Result<ConvertSummary> {
    if output.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        bail!(
            "the output {} must be a .safetensors file (name it OUT.safetensors)",
            output.display()
        );
    }
    if same_file(input, output)? {
        bail!(
            "the output {} is the input file; choose another output name",
            output.display()
        );
    }
    let file = TensorFile::open(input)?;
    let names = file.shapes()?;
    let keep = |name: &str| {
        options.keep_prefixes.is_empty()
            || options
                .keep_prefixes
                .iter()
                .any(|p| key_under_prefix(name, p))
    };
    let kept = names.keys().filter(|name| keep(name)).count();
    if kept == 0 {
        let groups: BTreeSet<String> = names
            .keys()
            .map(|k| k.split('.').next().unwrap_or(k).to_string())
            .collect();
        bail!(
            "no tensor of {} is under the prefixes {}; its keys start with: {}",
            input.display(),
            options.keep_prefixes.join(", "),
            list_some(&groups.into_iter().collect::<Vec<_>>(), 20)
        );
    }
    let tensors = file.load_where(keep)?;
    let dtype = options.dtype.dtype();
    let converted = tensors
        .into_iter()
        .map(|(name, t)| {
            let t = if t.dtype().is_float() && t.dtype() != dtype {
                t.to_dtype(dtype)
                    .with_context(|| format!("cannot convert {name} to {dtype:?}"))?
            } else {
                t
            };
            Ok((name, t))
        })
        .collect::<Result<HashMap<String, Tensor>>>()?;
    let parameters = converted.values().map(Tensor::elem_count).sum();
    write_safetensors_atomic(&converted, output)?;
    Ok(ConvertSummary {
        written: converted.len(),
        parameters,
        skipped: names.len() - converted.len(),
    })
}

/// Writes tensors as `.safetensors` through a temporary file in the destination folder,
/// renamed over `path` when complete.
fn write_safetensors_atomic(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let write = || -> Result<()> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir)?;
        let tmp = tempfile::Builder::new()
            .prefix(".spritedx-")
            .suffix(".tmp")
            .tempfile_in(&dir)?;
        // Streams each tensor to the file instead of building the whole file in memory.
        candle_core::safetensors::save(tensors, tmp.path())?;
        persist_atomic(tmp, path)?;
        Ok(())
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

/// True when `output` names the same file as `input`, through links or not.
fn same_file(input: &Path, output: &Path) -> Result<bool> {
    let input_real = input
        .canonicalize()
        .with_context(|| format!("cannot read {}", input.display()))?;
    let output_real = match output.canonicalize() {
        Ok(real) => real,
        Err(_) => {
            let parent = match output.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            match (parent.canonicalize(), output.file_name()) {
                (Ok(dir), Some(name)) => dir.join(name),
                _ => return Ok(false),
            }
        }
    };
    if input_real == output_real {
        return Ok(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(a), Ok(b)) = (std::fs::metadata(input), std::fs::metadata(output)) {
            return Ok(a.dev() == b.dev() && a.ino() == b.ino());
        }
    }
    Ok(false)
}

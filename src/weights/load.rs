//! Reading the tensors of a `.safetensors` file or a PyTorch zip checkpoint.

use crate::nn::shapes::ShapeMap;
use anyhow::{anyhow, bail, Context, Result};
use candle_core::pickle::PthTensors;
use candle_core::safetensors::Load;
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A weight file opened for reading: its tensor names and shapes are known, the tensors
/// themselves are read on demand. The format is told by the content, not the extension.
pub struct TensorFile {
    path: PathBuf,
    content: Content,
}

enum Content {
    /// The whole file; its header is parsed again for each use, which is cheap.
    Safetensors(Vec<u8>),
    /// Candle's lazy reader: it walks the pickle into plain data (no code is run and no
    /// global is resolved) and reads each tensor's storage from the zip on demand.
    Pickle(PthTensors),
}

impl TensorFile {
    /// Opens a `.safetensors` file or a PyTorch zip checkpoint. For a checkpoint, the tensors
    /// are those of its `state_dict` entry when it has one (PyTorch Lightning), else those
    /// at its top level (a plain `torch.save(model.state_dict())`).
    pub fn open(path: &Path) -> Result<Self> {
        let mut magic = [0u8; 9];
        let read = std::fs::File::open(path)
            .and_then(|mut f| read_up_to(&mut f, &mut magic))
            .with_context(|| format!("cannot read weights file {}", path.display()))?;
        let magic = &magic[..read];
        let content = if magic.starts_with(b"PK\x03\x04") || magic.starts_with(b"PK\x05\x06") {
            Content::Pickle(open_pickle(path)?)
        } else if magic.first() == Some(&0x80) && magic.get(1).is_some_and(|p| *p <= 5) {
            bail!(
                "{} is a PyTorch checkpoint in the legacy (pre-1.6) format, which cannot be read; \
                 re-save it with torch.save(obj, path) from a current PyTorch (zip format), or \
                 convert it to .safetensors",
                path.display()
            );
        } else if looks_like_safetensors(magic) {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read weights file {}", path.display()))?;
            safetensors::SafeTensors::deserialize(&bytes)
                .map_err(|e| anyhow!("{} is not a valid .safetensors file: {e}", path.display()))?;
            Content::Safetensors(bytes)
        } else {
            bail!(
                "{} is neither a .safetensors file nor a PyTorch zip checkpoint (.ckpt/.pt/.pth); \
                 it may be truncated or not a weight file",
                path.display()
            );
        };
        let file = Self {
            path: path.to_path_buf(),
            content,
        };
        if file.shapes()?.is_empty() {
            bail!("{} holds no tensors", path.display());
        }
        Ok(file)
    }

    /// The file this was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor's name and shape, without reading any tensor data.
    pub fn shapes(&self) -> Result<ShapeMap> {
        Ok(match &self.content {
            Content::Safetensors(bytes) => safetensors::SafeTensors::deserialize(bytes)?
                .tensors()
                .into_iter()
                .map(|(name, view)| (name, view.shape().to_vec()))
                .collect(),
            Content::Pickle(pth) => pth
                .tensor_infos()
                .iter()
                .map(|(name, info)| (name.clone(), info.layout.dims().to_vec()))
                .collect(),
        })
    }

    /// Reads the tensors whose names `keep` accepts, as stored (dtype unchanged), on the CPU.
    pub fn load_where(&self, keep: impl Fn(&str) -> bool) -> Result<HashMap<String, Tensor>> {
        let context =
            |name: &str| format!("cannot read tensor {name} from {}", self.path.display());
        match &self.content {
            Content::Safetensors(bytes) => safetensors::SafeTensors::deserialize(bytes)?
                .tensors()
                .into_iter()
                .filter(|(name, _)| keep(name))
                .map(|(name, view)| {
                    let tensor = view.load(&Device::Cpu).with_context(|| context(&name))?;
                    Ok((name, tensor))
                })
                .collect(),
            Content::Pickle(pth) => {
                let mut names: Vec<&String> =
                    pth.tensor_infos().keys().filter(|n| keep(n)).collect();
                names.sort();
                names
                    .into_iter()
                    .map(|name| {
                        let tensor = pth
                            .get(name)
                            .with_context(|| context(name))?
                            .ok_or_else(|| anyhow!("{}", context(name)))?;
                        Ok((name.clone(), tensor))
                    })
                    .collect()
            }
        }
    }

    /// Reads every tensor.
    pub fn load_all(&self) -> Result<HashMap<String, Tensor>> {
        self.load_where(|_| true)
    }
}

/// Reads every tensor of a `.safetensors` file or a PyTorch zip checkpoint (see
/// [`TensorFile::open`]), as stored, on the CPU.
pub fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    TensorFile::open(path)?.load_all()
}

fn read_up_to(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// A safetensors file starts with the header's length (u64, little endian) and the
/// header's opening brace.
fn looks_like_safetensors(magic: &[u8]) -> bool {
    magic.len() == 9 && magic[8] == b'{'
}

/// Opens a PyTorch zip checkpoint on its `state_dict` if it has one with tensors, else on
/// its top level.
fn open_pickle(path: &Path) -> Result<PthTensors> {
    if let Ok(pth) = PthTensors::new(path, Some("state_dict")) {
        if !pth.tensor_infos().is_empty() {
            return Ok(pth);
        }
    }
    // No `state_dict` entry (or an empty one): a plain state dict, tensors at the top level.
    let pth = PthTensors::new(path, None)
        .with_context(|| format!("cannot read the PyTorch checkpoint {}", path.display()))?;
    if pth.tensor_infos().is_empty() {
        bail!(
            "{} holds no tensors: it has neither a `state_dict` entry with tensors (a PyTorch \
             Lightning checkpoint) nor tensors at its top level (a plain state dict)",
            path.display()
        );
    }
    Ok(pth)
}

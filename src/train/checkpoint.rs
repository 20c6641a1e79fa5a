//! Checkpoint files: named tensors plus string metadata in one safetensors file, written
//! atomically (a temporary file in the same folder, then a rename), so a run killed at any
//! moment leaves either the previous checkpoint or the new one, never a torn file.

use crate::io::write_atomic;
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Writes `tensors` and `metadata` to `path` atomically.
pub fn save(path: &Path, tensors: &HashMap<String, Tensor>, metadata: &HashMap<String, String>) -> Result<()> {
    let mut sorted: Vec<(&String, &Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let bytes = safetensors::serialize(sorted, Some(metadata.clone()))
        .with_context(|| format!("serialising checkpoint {}", path.display()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_atomic(path, &bytes).with_context(|| format!("writing checkpoint {}", path.display()))
}

/// Reads a file written by [`save`] (or any safetensors file: its metadata may be empty).
pub fn load(path: &Path, device: &Device) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .with_context(|| format!("reading the tensors of {}", path.display()))?;
    Ok((tensors, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_tensors_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/ckpt.safetensors");
        let t = Tensor::arange(0f32, 6.0, &Device::Cpu).unwrap().reshape((2, 3)).unwrap();
        let tensors: HashMap<String, Tensor> = [("a.b".to_string(), t.t().unwrap())].into();
        let meta: HashMap<String, String> = [("step".to_string(), "12".to_string())].into();
        save(&path, &tensors, &meta).unwrap();
        let (back, back_meta) = load(&path, &Device::Cpu).unwrap();
        assert_eq!(back_meta["step"], "12");
        // The transposed (non-contiguous) tensor is stored as its logical values.
        assert_eq!(back["a.b"].to_vec2::<f32>().unwrap(), vec![vec![0.0, 3.0], vec![1.0, 4.0], vec![2.0, 5.0]]);
        // Nothing but the checkpoint is left in the folder (no temporary files).
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn a_torn_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.safetensors");
        std::fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
        let err = load(&path, &Device::Cpu).unwrap_err();
        assert!(format!("{err:#}").contains("bad.safetensors"), "{err:#}");
    }
}

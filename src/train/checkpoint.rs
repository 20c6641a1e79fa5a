//! Checkpoint files: named tensors plus string metadata in safetensors files, written
//! atomically (a temporary file in the same folder, then a rename), so a run killed at any
//! moment leaves either the previous checkpoint or the new one, never a torn file.
//!
//! A training checkpoint larger than [`MAX_FILE_BYTES`] is split: the file at its path
//! holds the metadata, the first tensors and the names of shard files beside it
//! (`<stem>.shard-<id>-<i>.safetensors`) that hold the rest. The shards are written first
//! under names no earlier checkpoint uses, then the head file (the commit point), then the
//! shards no longer named are removed: a kill at any moment still leaves one whole
//! checkpoint. Every file stays under the repository's 50 MB limit, so a run can be
//! committed and resumed from a clone.

use crate::io::write_atomic;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Most tensor bytes in one file of a sharded checkpoint (the safetensors header, a few KB,
/// comes on top): under the 50 MB a committed file may have.
pub const MAX_FILE_BYTES: usize = 45_000_000;

/// The metadata key of a sharded checkpoint's head file that lists its shards (JSON array
/// of file names in the same folder); [`load`] consumes it.
const SHARDS_KEY: &str = "shards";

/// Writes `tensors` and `metadata` to `path` atomically, as one file.
pub fn save(path: &Path, tensors: &HashMap<String, Tensor>, metadata: &HashMap<String, String>) -> Result<()> {
    let sorted = sorted_by_name(tensors);
    write_file(path, &sorted, metadata)
}

/// Writes `tensors` and `metadata` to `path` as one file when their data fits in
/// `max_file_bytes`, else split over shard files beside it (see the module docs); either
/// way, shards of earlier checkpoints at `path` are removed once the new one is complete.
/// A tensor larger than `max_file_bytes` gets a file of its own.
pub fn save_sharded(path: &Path, tensors: &HashMap<String, Tensor>, metadata: &HashMap<String, String>, max_file_bytes: usize) -> Result<()> {
    let sorted = sorted_by_name(tensors);
    let mut groups: Vec<Vec<(&String, &Tensor)>> = vec![Vec::new()];
    let mut bytes_in_last = 0;
    for (name, tensor) in sorted {
        let bytes = tensor.elem_count() * tensor.dtype().size_in_bytes();
        if bytes_in_last > 0 && bytes_in_last + bytes > max_file_bytes {
            groups.push(Vec::new());
            bytes_in_last = 0;
        }
        groups.last_mut().expect("one group at least").push((name, tensor));
        bytes_in_last += bytes;
    }
    let (stem, dir) = stem_and_dir(path)?;
    let mut head_metadata = metadata.clone();
    let mut shard_names = Vec::new();
    if groups.len() > 1 {
        // Unique per save, so that no shard the current head names is ever overwritten.
        let id = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
        for (i, group) in groups.iter().enumerate().skip(1) {
            let name = format!("{stem}.shard-{id:x}-{i}.safetensors");
            write_file(&dir.join(&name), group, &HashMap::new())?;
            shard_names.push(name);
        }
        head_metadata.insert(SHARDS_KEY.to_string(), serde_json::to_string(&shard_names)?);
    }
    write_file(path, &groups[0], &head_metadata)?;
    remove_stale_shards(dir, &stem, &shard_names)
}

/// Reads a file written by [`save`] or [`save_sharded`] (with its shards), or any
/// safetensors file (its metadata may be empty).
pub fn load(path: &Path, device: &Device) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let (mut tensors, mut metadata) = load_file(path, device)?;
    if let Some(list) = metadata.remove(SHARDS_KEY) {
        let names: Vec<String> = serde_json::from_str(&list).with_context(|| format!("{} lists its shards wrongly", path.display()))?;
        let (_, dir) = stem_and_dir(path)?;
        for name in names {
            let shard = dir.join(&name);
            if !shard.exists() {
                bail!("{} names the shard {name}, which is missing beside it; copy the checkpoint's folder whole", path.display());
            }
            tensors.extend(load_file(&shard, device)?.0);
        }
    }
    Ok((tensors, metadata))
}

fn sorted_by_name(tensors: &HashMap<String, Tensor>) -> Vec<(&String, &Tensor)> {
    let mut sorted: Vec<(&String, &Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    sorted
}

fn write_file(path: &Path, tensors: &[(&String, &Tensor)], metadata: &HashMap<String, String>) -> Result<()> {
    let bytes = safetensors::serialize(tensors.iter().copied(), Some(metadata.clone()))
        .with_context(|| format!("serialising checkpoint {}", path.display()))?;
    let dir = folder_of(path);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomic(path, &bytes).with_context(|| format!("writing checkpoint {}", path.display()))
}

fn load_file(path: &Path, device: &Device) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .with_context(|| format!("reading the tensors of {}", path.display()))?;
    Ok((tensors, metadata))
}

/// The folder a file is in (`.` for a bare file name).
fn folder_of(path: &Path) -> &Path {
    path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// The file name without `.safetensors`, and the folder.
fn stem_and_dir(path: &Path) -> Result<(String, &Path)> {
    let stem = path.file_stem().and_then(|s| s.to_str()).with_context(|| format!("{} has no file name", path.display()))?;
    Ok((stem.to_string(), folder_of(path)))
}

/// Removes `<stem>.shard-*.safetensors` files in `dir` other than `keep`: shards of earlier
/// checkpoints, and those of a save killed before its head file was written.
fn remove_stale_shards(dir: &Path, stem: &str, keep: &[String]) -> Result<()> {
    let prefix = format!("{stem}.shard-");
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".safetensors") && !keep.contains(&name) {
            let stale = dir.join(&name);
            std::fs::remove_file(&stale).with_context(|| format!("removing the old shard {}", stale.display()))?;
        }
    }
    Ok(())
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

    fn values(tensors: &HashMap<String, Tensor>) -> Vec<(String, Vec<f32>)> {
        let mut v: Vec<(String, Vec<f32>)> =
            tensors.iter().map(|(k, t)| (k.clone(), t.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn files_in(dir: &Path) -> Vec<(String, u64)> {
        let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
            .collect();
        files.sort();
        files
    }

    /// Ten tensors of 100 f32 (400 bytes each) under a 1,000-byte limit: two per file, five
    /// files, each under the limit plus its header; read back whole; a later save leaves
    /// only its own shards; a checkpoint that fits is one file again and removes them.
    #[test]
    fn a_large_checkpoint_is_split_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint.safetensors");
        let make = |offset: f32| -> HashMap<String, Tensor> {
            (0..10)
                .map(|i| (format!("t{i}"), Tensor::arange(offset + i as f32 * 100.0, offset + (i + 1) as f32 * 100.0, &Device::Cpu).unwrap()))
                .collect()
        };
        let meta: HashMap<String, String> = [("step".to_string(), "3".to_string())].into();
        save_sharded(&path, &make(0.0), &meta, 1000).unwrap();
        let files = files_in(dir.path());
        assert_eq!(files.len(), 5, "{files:?}");
        assert!(files.iter().all(|(_, len)| *len < 1000 + 1000), "{files:?}");
        let (back, back_meta) = load(&path, &Device::Cpu).unwrap();
        assert_eq!(values(&back), values(&make(0.0)));
        assert_eq!(back_meta, meta, "the shard list is not part of the caller's metadata");

        save_sharded(&path, &make(5.0), &meta, 1000).unwrap();
        assert_eq!(files_in(dir.path()).len(), 5, "the first save's shards are gone");
        assert_eq!(values(&load(&path, &Device::Cpu).unwrap().0), values(&make(5.0)));

        save_sharded(&path, &make(7.0), &meta, usize::MAX).unwrap();
        assert_eq!(files_in(dir.path()).iter().map(|f| f.0.as_str()).collect::<Vec<_>>(), ["checkpoint.safetensors"]);
        assert_eq!(values(&load(&path, &Device::Cpu).unwrap().0), values(&make(7.0)));
    }

    /// A save killed after writing some shards but before its head file leaves the previous
    /// checkpoint readable, and a missing shard is a clear error.
    #[test]
    fn stray_shards_do_not_disturb_the_checkpoint_and_a_missing_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint.safetensors");
        let tensors: HashMap<String, Tensor> =
            (0..4).map(|i| (format!("t{i}"), Tensor::full(i as f32, 100, &Device::Cpu).unwrap())).collect();
        save_sharded(&path, &tensors, &HashMap::new(), 400).unwrap();
        std::fs::write(dir.path().join("checkpoint.shard-dead-1.safetensors"), b"torn").unwrap();
        assert_eq!(values(&load(&path, &Device::Cpu).unwrap().0), values(&tensors));

        let shard = files_in(dir.path()).into_iter().find(|f| f.0.contains("shard") && !f.0.contains("dead")).unwrap().0;
        std::fs::remove_file(dir.path().join(&shard)).unwrap();
        let err = format!("{:#}", load(&path, &Device::Cpu).unwrap_err());
        assert!(err.contains(&shard) && err.contains("missing"), "{err}");
    }
}

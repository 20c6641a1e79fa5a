//! Pair sets: folders of (degraded, clean) pairs with a JSON-lines manifest.
//!
//! `spritedx degrade` writes one, `spritedx eval` reads one. Layout of a pair set:
//!
//! ```text
//! OUT/manifest.jsonl                      one PairRecord per line, in a fixed order
//! OUT/<preset>/degraded/<stem>_<k>.png    the degraded image
//! OUT/<preset>/clean/<stem>_<k>.png       the target: the clean sprite at true resolution
//!                                         (flattened when the sample was flattened)
//! ```
//!
//! Every sample is a pure function of (clean sprite, preset config, seed): the seed of
//! sample `k` of sprite `name` under preset `p` is `derive_seed(seed, [fnv1a(p), fnv1a(name), k])`,
//! so a pair set is identical whatever the number of threads or the order of the files.
//! Files are processed in chunks, so memory stays constant in the number of sprites.

use crate::degrade::{self, DegradeConfig, DegradeParams};
use crate::io::{load_rgba, persist_atomic, save_png_atomic, write_atomic};
use crate::rng::{derive_seed, fnv1a};
use crate::split::{in_split, Split};
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// File name of a pair set's manifest.
pub const MANIFEST: &str = "manifest.jsonl";

/// One line of the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairRecord {
    /// Preset (or config) name the sample was made with.
    pub preset: String,
    /// File name of the clean source sprite.
    pub source: String,
    /// Index of this sample among the samples of its source.
    pub index: u32,
    /// The sample's seed.
    pub seed: u64,
    /// Degraded image, relative to the pair set's folder.
    pub degraded: String,
    /// Target image, relative to the pair set's folder.
    pub clean: String,
    pub degraded_width: u32,
    pub degraded_height: u32,
    pub clean_width: u32,
    pub clean_height: u32,
    /// Every parameter of the degradation, including the true grid.
    pub params: DegradeParams,
}

/// What to make.
#[derive(Clone, Debug)]
pub struct PairSetSpec {
    /// Named configs to apply to every sprite: (name, config).
    pub configs: Vec<(String, DegradeConfig)>,
    pub per_image: u32,
    pub seed: u64,
    pub split: Split,
    /// Use at most this many sprites (after the split, in name order).
    pub limit: Option<usize>,
}

/// Summary of a finished `write_pair_set`.
#[derive(Debug, Default)]
pub struct PairSetSummary {
    pub pairs: usize,
    /// Sprites that could not be read, with the reason; the rest were still written.
    pub failed: Vec<String>,
}

/// The image files directly inside `dir` (PNG, JPEG, WebP, GIF, BMP by extension), sorted by name.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list the folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && has_image_extension(p))
        .collect();
    files.sort();
    Ok(files)
}

/// Whether a path ends in an image extension the engine reads.
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg" | "webp" | "gif" | "bmp"))
        .unwrap_or(false)
}

/// The seed of one sample.
pub fn sample_seed(seed: u64, preset: &str, source: &str, index: u32) -> u64 {
    derive_seed(seed, &[fnv1a(preset.as_bytes()), fnv1a(source.as_bytes()), u64::from(index)])
}

/// Sprites are degraded this many at a time; bounds memory whatever the folder's size.
const CHUNK: usize = 64;

/// Degrades every selected sprite of `input` into a pair set at `output`.
/// `on_sprite` is called once per sprite done (for a progress bar).
pub fn write_pair_set(
    input: &Path,
    output: &Path,
    spec: &PairSetSpec,
    on_sprite: &(dyn Fn() + Sync),
) -> Result<PairSetSummary> {
    if spec.configs.is_empty() {
        bail!("no preset or config given");
    }
    let mut files: Vec<PathBuf> = list_images(input)?.into_iter().filter(|p| in_split(p, spec.split)).collect();
    if let Some(limit) = spec.limit {
        files.truncate(limit);
    }
    if files.is_empty() {
        bail!("no images found in {} (split {:?})", input.display(), spec.split);
    }
    std::fs::create_dir_all(output).with_context(|| format!("cannot create {}", output.display()))?;
    // The manifest is written to a temporary file and renamed at the end, so an interrupted
    // run never leaves a manifest that names missing files.
    let manifest_path = output.join(MANIFEST);
    let mut manifest = tempfile::Builder::new().prefix(".manifest-").tempfile_in(output)?;
    let mut summary = PairSetSummary::default();
    for chunk in files.chunks(CHUNK) {
        let results: Vec<Result<Vec<PairRecord>>> = chunk
            .par_iter()
            .map(|path| {
                let r = degrade_one(path, output, spec);
                on_sprite();
                r
            })
            .collect();
        for (path, result) in chunk.iter().zip(results) {
            match result {
                Ok(records) => {
                    for rec in &records {
                        serde_json::to_writer(&mut manifest, rec)?;
                        manifest.write_all(b"\n")?;
                    }
                    summary.pairs += records.len();
                }
                Err(e) => summary.failed.push(format!("{}: {e:#}", path.display())),
            }
        }
    }
    persist_atomic(manifest, &manifest_path)?;
    Ok(summary)
}

fn degrade_one(path: &Path, output: &Path, spec: &PairSetSpec) -> Result<Vec<PairRecord>> {
    let clean = load_rgba(path)?;
    let source = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let stem = path.file_stem().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut records = Vec::new();
    for (preset, cfg) in &spec.configs {
        for index in 0..spec.per_image {
            let seed = sample_seed(spec.seed, preset, &source, index);
            let sample = degrade::degrade(&clean, cfg, seed);
            let degraded = format!("{preset}/degraded/{stem}_{index}.png");
            let clean_rel = format!("{preset}/clean/{stem}_{index}.png");
            save_png_atomic(&sample.image, &output.join(&degraded))?;
            save_png_atomic(&sample.target, &output.join(&clean_rel))?;
            records.push(PairRecord {
                preset: preset.clone(),
                source: source.clone(),
                index,
                seed,
                degraded,
                clean: clean_rel,
                degraded_width: sample.image.width(),
                degraded_height: sample.image.height(),
                clean_width: sample.target.width(),
                clean_height: sample.target.height(),
                params: sample.params,
            });
        }
    }
    Ok(records)
}

/// Reads a pair set's manifest.
pub fn read_manifest(pairs_dir: &Path) -> Result<Vec<PairRecord>> {
    let path = pairs_dir.join(MANIFEST);
    let file = std::fs::File::open(&path).with_context(|| {
        format!("cannot open {}: is {} a pair set made by `spritedx degrade`?", path.display(), pairs_dir.display())
    })?;
    let mut records = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}: cannot read line {}", path.display(), n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        records.push(
            serde_json::from_str(&line).with_context(|| format!("{}: line {} is not a pair record", path.display(), n + 1))?,
        );
    }
    Ok(records)
}

/// Writes a JSON value atomically (pretty-printed).
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value)?;
    write_atomic(path, &bytes).with_context(|| format!("cannot write {}", path.display()))
}

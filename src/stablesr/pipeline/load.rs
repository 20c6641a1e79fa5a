//! Finding a StableSR model's config and weight files, and checking its weights.

use super::{StableSrConfig, CONFIG_FILE, UNET_PREFIX};
use crate::nn::shapes::ShapeMap;
use crate::weights::{
    check_shapes, resolve, HubOptions, HubRef, KeyRules, TensorFile, WeightSource, DEFAULT_REPO,
    STABLESR_CKPT, VQGAN_CFW_CKPT,
};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use std::path::{Path, PathBuf};

/// Keys that only the CFW autoencoder's decoder has (`Decoder_Mix`'s fusion layers).
const CFW_MARKER: &str = "decoder.fusion_layer_";

/// Reads a model folder's config.
pub(super) fn read_config(path: &Path) -> Result<StableSrConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the StableSR config {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a StableSR config (a JSON StableSrConfig with unet, struct_encoder, \
             first_stage, cfw and text)",
            path.display()
        )
    })
}

fn needs_two_files(what: &str) -> anyhow::Error {
    anyhow!(
        "{what} is a single weight file, but StableSR needs two: the diffusion checkpoint \
         ({STABLESR_CKPT}) and the CFW autoencoder ({VQGAN_CFW_CKPT}). Pass the folder that \
         holds both, a model folder ({CONFIG_FILE}, model.safetensors, vqgan_cfw.safetensors), \
         or hf://{DEFAULT_REPO}"
    )
}

/// The config of a source and its local weight files: a folder's own [`CONFIG_FILE`] or,
/// without one, the released model's config; `hf://Iceclear/StableSR` is the released
/// model, other Hub repositories must hold a [`CONFIG_FILE`].
pub(super) fn locate(
    source: &WeightSource,
    hub: &HubOptions,
) -> Result<(StableSrConfig, Vec<PathBuf>)> {
    let config = match source {
        WeightSource::File(path) => return Err(needs_two_files(&path.display().to_string())),
        WeightSource::Folder(dir) => {
            let path = dir.join(CONFIG_FILE);
            if path.is_file() {
                read_config(&path)?
            } else {
                StableSrConfig::stablesr_512()
            }
        }
        WeightSource::Hub(hub_ref) => {
            if let Some(file) = &hub_ref.file {
                return Err(needs_two_files(&format!("hf://{}/{file}", hub_ref.repo)));
            }
            if hub_ref.repo.eq_ignore_ascii_case(DEFAULT_REPO) {
                StableSrConfig::stablesr_512()
            } else {
                let config_ref = WeightSource::Hub(HubRef {
                    file: Some(CONFIG_FILE.to_string()),
                    ..hub_ref.clone()
                });
                let paths = resolve(&config_ref, hub).with_context(|| {
                    format!(
                        "a StableSR model on the Hub other than {DEFAULT_REPO} must hold \
                         {CONFIG_FILE} (a StableSrConfig); fetching it from {} failed",
                        hub_ref.repo
                    )
                })?;
                read_config(&paths[0])?
            }
        }
    };
    Ok((config, resolve(source, hub)?))
}

/// Opens the weight files and tells the diffusion checkpoint (keys under
/// `model.diffusion_model`) from the CFW checkpoint (keys under `decoder.fusion_layer_*`).
pub(super) fn identify(files: &[PathBuf]) -> Result<(TensorFile, TensorFile)> {
    let mut models = Vec::new();
    let mut cfws = Vec::new();
    let mut others = Vec::new();
    for path in files {
        let file = TensorFile::open(path)?;
        let shapes = file.shapes()?;
        if shapes
            .keys()
            .any(|k| crate::weights::key_under_prefix(k, UNET_PREFIX))
        {
            models.push(file);
        } else if shapes.keys().any(|k| k.starts_with(CFW_MARKER)) {
            cfws.push(file);
        } else {
            others.push(path.display().to_string());
        }
    }
    let names = |found: &[TensorFile]| {
        found
            .iter()
            .map(|f| f.path().display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let listed = files
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let other_note = if others.is_empty() {
        String::new()
    } else {
        format!(" ({} hold neither)", others.join(", "))
    };
    if models.len() > 1 || cfws.len() > 1 {
        bail!(
            "several StableSR checkpoints of one kind: diffusion {}; CFW {}. Keep one of \
             each in the folder",
            names(&models),
            names(&cfws)
        );
    }
    let model = models.pop().ok_or_else(|| {
        anyhow!(
            "no StableSR diffusion checkpoint (keys under {UNET_PREFIX}) among {listed}{other_note}; \
             it is {STABLESR_CKPT} in hf://{DEFAULT_REPO}"
        )
    })?;
    let cfw = cfws.pop().ok_or_else(|| {
        anyhow!(
            "no CFW autoencoder checkpoint (keys {CFW_MARKER}*) among {listed}{other_note}; \
             it is {VQGAN_CFW_CKPT} in hf://{DEFAULT_REPO}"
        )
    })?;
    Ok((model, cfw))
}

/// Checks every key of `file` against `expected` at once, so that one error names all
/// the problems. Keys outside the expected keys' first components (`model_ema`, `loss`,
/// schedule buffers) are ignored.
pub(super) fn check(file: &TensorFile, expected: &ShapeMap, what: &str) -> Result<()> {
    check_shapes(&file.shapes()?, expected, &KeyRules::default()).with_context(|| {
        format!(
            "the {what} weights {} do not fit the StableSR config",
            file.path().display()
        )
    })?;
    Ok(())
}

/// A `VarBuilder` over the tensors of `expected` read from `file` (f32 on `device`),
/// checked within `scopes` (all keys' first components when empty).
pub(super) fn group(
    file: &TensorFile,
    expected: &ShapeMap,
    scopes: &[&str],
    device: &Device,
) -> Result<VarBuilder<'static>> {
    let rules = KeyRules::scoped(scopes.iter().copied());
    let (vb, _) = file.checked_var_builder(expected, &rules, DType::F32, device)?;
    Ok(vb)
}

//! Tiny random-weight StableSR models for tests and demos, and writing model folders.

use super::{StableSrConfig, CFW_FILE, CONFIG_FILE, MODEL_FILE};
use crate::nn::shapes::ShapeMap;
use crate::stablesr::struct_encoder::StructEncoderConfig;
use crate::stablesr::text::TextConfig;
use crate::stablesr::unet::UNetConfig;
use crate::stablesr::vae::{DdConfig, VaeConfig};
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use rand::Rng;
use rand_distr::StandardNormal;
use std::collections::HashMap;
use std::path::Path;

impl StableSrConfig {
    /// The tiny configs of the parity fixtures (`../shared/fixtures/stablesr/tiny_config.json`:
    /// UNet, structure encoder and CFW autoencoder, the first stage being the CFW
    /// autoencoder without fusion) plus a two-layer text tower as wide as the UNet's
    /// context (16), with open_clip's vocabulary so the empty prompt's tokens exist.
    /// Downsampling factor 8, size multiple 2, 16-latent tiles overlapping by 8.
    pub fn tiny() -> Self {
        let vae = VaeConfig {
            embed_dim: 4,
            ddconfig: DdConfig {
                ch: 32,
                ch_mult: vec![2, 1, 1, 1],
                num_res_blocks: 1,
                z_channels: 4,
                in_channels: 3,
                out_ch: 3,
                resolution: 64,
                attn_resolutions: vec![],
                double_z: true,
            },
            num_fuse_block: 2,
            num_grow_ch: 32,
        };
        Self {
            unet: UNetConfig {
                in_channels: 4,
                out_channels: 4,
                model_channels: 32,
                channel_mult: vec![1, 2],
                num_res_blocks: 1,
                attention_resolutions: vec![1],
                num_heads: None,
                num_head_channels: Some(8),
                context_dim: Some(16),
                semb_channels: 16,
                transformer_depth: 1,
                use_linear_in_transformer: true,
            },
            struct_encoder: StructEncoderConfig {
                in_channels: 4,
                model_channels: 32,
                out_channels: 16,
                num_res_blocks: 1,
                attention_resolutions: vec![1],
                channel_mult: vec![1, 2],
                num_heads: Some(4),
                num_head_channels: None,
                use_new_attention_order: false,
            },
            first_stage: vae.clone(),
            cfw: vae,
            text: TextConfig {
                vocab_size: TextConfig::vit_h_14().vocab_size,
                width: 16,
                heads: 2,
                layers: 2,
                context_length: 77,
                embed_dim: 16,
            },
            scale_factor: 0.18215,
            schedule: Default::default(),
            sampling: super::SamplingDefaults {
                steps: 10,
                tile_size: 16,
                tile_overlap: 8,
            },
        }
    }
}

/// Random tensors (f32, CPU) for every key of `shapes`, initialised as the parity
/// fixtures were, so that no layer is trivial: tensors of two or more dimensions
/// `N(0, 1) / √fan_in` (fan_in = the product of all but the first dimension), 1-D
/// `*weight` (norm scales) `1 + 0.1 N(0, 1)`, everything else `0.1 N(0, 1)`. Drawn from
/// one ChaCha8 stream in key order, so a seed always gives the same weights.
pub fn random_weights(shapes: &ShapeMap, seed: u64) -> Result<HashMap<String, Tensor>> {
    let mut rng = crate::rng::rng_from_seed(seed);
    let mut tensors = HashMap::with_capacity(shapes.len());
    for (key, shape) in shapes {
        let count: usize = shape.iter().product();
        let (scale, offset) = if shape.len() >= 2 {
            let fan_in: usize = shape[1..].iter().product();
            (1.0 / (fan_in.max(1) as f32).sqrt(), 0.0)
        } else if shape.len() == 1 && key.ends_with("weight") {
            (0.1, 1.0)
        } else {
            (0.1, 0.0)
        };
        let values: Vec<f32> = (0..count)
            .map(|_| offset + scale * rng.sample::<f32, _>(StandardNormal))
            .collect();
        let tensor = Tensor::from_vec(values, shape.as_slice(), &Device::Cpu)?;
        tensors.insert(key.clone(), tensor);
    }
    Ok(tensors)
}

/// Writes a model folder: `config.json`, the diffusion tensors as `model.safetensors` and
/// the CFW tensors as `vqgan_cfw.safetensors` (the folder is created if missing).
pub fn write_model_folder(
    dir: &Path,
    config: &StableSrConfig,
    model: &HashMap<String, Tensor>,
    cfw: &HashMap<String, Tensor>,
) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the model folder {}", dir.display()))?;
    let json = serde_json::to_string_pretty(config)?;
    std::fs::write(dir.join(CONFIG_FILE), json)
        .with_context(|| format!("cannot write {}", dir.join(CONFIG_FILE).display()))?;
    for (name, tensors) in [(MODEL_FILE, model), (CFW_FILE, cfw)] {
        let path = dir.join(name);
        candle_core::safetensors::save(tensors, &path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// Writes a [`StableSrConfig::tiny`] model with [`random_weights`] from `seed` into `dir`
/// (a few megabytes, mostly the text tower's token table and the CFW layers) and returns
/// its config.
pub fn write_tiny_random_model(dir: &Path, seed: u64) -> Result<StableSrConfig> {
    let config = StableSrConfig::tiny();
    let model = random_weights(&config.model_shapes()?, seed)?;
    let cfw = random_weights(&config.cfw_shapes()?, crate::rng::derive_seed(seed, &[1]))?;
    write_model_folder(dir, &config, &model, &cfw)?;
    Ok(config)
}

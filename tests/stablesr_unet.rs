//! The StableSR diffusion UNet and structure encoder against StableSR itself: the
//! full-size key/shape layout against the real checkpoint's manifest, outputs against
//! PyTorch on tiny random weights (../shared/fixtures/stablesr, see PROVENANCE.md), and
//! gradients reaching every weight.

mod stablesr_common;
use stablesr_common::{fixture_tensors, fixtures, max_abs, read_json};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::SeedableRng;
use rand_distr::Distribution;
use spritedx::nn::shapes::{diff_shapes, ShapeMap, ShapeRecorder};
use spritedx::stablesr::struct_encoder::{StructEncoder, StructEncoderConfig, StructFeatures};
use spritedx::stablesr::unet::{UNet, UNetConfig};
use std::collections::HashMap;

const UNET_PREFIX: &str = "model.diffusion_model";
const ENCODER_PREFIX: &str = "structcond_stage_model";

fn tiny_configs() -> (UNetConfig, StructEncoderConfig) {
    let config = read_json("tiny_config.json");
    (
        serde_json::from_value(config["unet"].clone()).expect("tiny unet config"),
        serde_json::from_value(config["structcond"].clone()).expect("tiny structcond config"),
    )
}

/// The shapes of every tensor whose key starts with `prefix.`.
fn shapes_under(tensors: &HashMap<String, Tensor>, prefix: &str) -> ShapeMap {
    tensors
        .iter()
        .filter(|(key, _)| key.starts_with(&format!("{prefix}.")))
        .map(|(key, t)| (key.clone(), t.dims().to_vec()))
        .collect()
}

/// Builds both networks on a `ShapeRecorder` and returns the keys and shapes each asked for.
fn declared_shapes(unet: &UNetConfig, encoder: &StructEncoderConfig) -> (ShapeMap, ShapeMap) {
    let unet_recorder = ShapeRecorder::new();
    UNet::new(unet_recorder.var_builder().pp(UNET_PREFIX), unet).expect("building the UNet");
    let encoder_recorder = ShapeRecorder::new();
    StructEncoder::new(encoder_recorder.var_builder().pp(ENCODER_PREFIX), encoder)
        .expect("building the structure encoder");
    (unet_recorder.shapes(), encoder_recorder.shapes())
}

fn assert_same_shapes(what: &str, declared: &ShapeMap, expected: &ShapeMap) {
    let diff = diff_shapes(declared, expected);
    assert!(
        diff.is_empty(),
        "{what}: {} differences:\n{}",
        diff.len(),
        diff.join("\n")
    );
}

#[test]
fn full_size_keys_and_shapes_match_the_stablesr_checkpoint() {
    let manifest = read_json("manifest_512.json");
    let group = |name: &str| -> ShapeMap {
        serde_json::from_value(manifest[name].clone()).expect("manifest group of key -> shape")
    };
    let (unet_manifest, encoder_manifest) = (group(UNET_PREFIX), group(ENCODER_PREFIX));
    assert_eq!((unet_manifest.len(), encoder_manifest.len()), (862, 200));

    // The built-in configs are the ones the manifest was made from.
    let unet_cfg: UNetConfig =
        serde_json::from_value(manifest["config"]["unet"].clone()).expect("manifest unet config");
    let encoder_cfg: StructEncoderConfig =
        serde_json::from_value(manifest["config"]["structcond"].clone())
            .expect("manifest structcond config");
    assert_eq!(unet_cfg, UNetConfig::stablesr_512());
    assert_eq!(encoder_cfg, StructEncoderConfig::stablesr_512());

    let (unet, encoder) = declared_shapes(
        &UNetConfig::stablesr_512(),
        &StructEncoderConfig::stablesr_512(),
    );
    assert_same_shapes("UNet vs manifest", &unet, &unet_manifest);
    assert_same_shapes("structure encoder vs manifest", &encoder, &encoder_manifest);
}

/// Every weight in the tiny fixture is asked for by the tiny networks, with its shape,
/// and nothing else is.
#[test]
fn tiny_networks_use_exactly_the_fixture_weights() {
    let weights = fixture_tensors("tiny_weights.safetensors");
    let (unet_cfg, encoder_cfg) = tiny_configs();
    let (unet, encoder) = declared_shapes(&unet_cfg, &encoder_cfg);
    let (unet_file, encoder_file) = (
        shapes_under(&weights, UNET_PREFIX),
        shapes_under(&weights, ENCODER_PREFIX),
    );
    println!(
        "fixture tensors: UNet {}, structure encoder {}",
        unet_file.len(),
        encoder_file.len()
    );
    assert_same_shapes("tiny UNet vs fixture", &unet, &unet_file);
    assert_same_shapes("tiny structure encoder vs fixture", &encoder, &encoder_file);
}

/// Asserts `ours` matches `reference` within 1e-4 * max(1, max |reference|) and returns
/// the max abs error.
fn check_close(name: &str, ours: &Tensor, reference: &Tensor) -> f64 {
    assert_eq!(ours.dims(), reference.dims(), "{name}: shape");
    let error = max_abs(&(ours - reference).unwrap());
    let tolerance = 1e-4 * max_abs(reference).max(1.0);
    println!("{name}: max abs error {error:.3e} (tolerance {tolerance:.3e})");
    assert!(
        error <= tolerance,
        "{name}: max abs error {error:e} > tolerance {tolerance:e}"
    );
    error
}

fn tiny_networks(vb: VarBuilder) -> (UNet, StructEncoder) {
    let (unet_cfg, encoder_cfg) = tiny_configs();
    (
        UNet::new(vb.pp(UNET_PREFIX), &unet_cfg).expect("tiny UNet"),
        StructEncoder::new(vb.pp(ENCODER_PREFIX), &encoder_cfg).expect("tiny structure encoder"),
    )
}

#[test]
fn tiny_networks_reproduce_stablesr_outputs() {
    let io = fixture_tensors("tiny_io.safetensors");
    let mut names: Vec<_> = io
        .iter()
        .map(|(k, t)| format!("{k} {:?} {:?}", t.dims(), t.dtype()))
        .collect();
    names.sort();
    println!("tiny_io tensors:\n  {}", names.join("\n  "));
    let get = |name: &str| {
        io.get(name)
            .unwrap_or_else(|| panic!("{name} missing from tiny_io"))
    };

    // f32 runs the networks channels-last on the fast CPU ops; f64 runs them
    // channels-first on candle's own ops, the path CUDA takes.
    for dtype in [DType::F32, DType::F64] {
        let weights = fixtures().join("tiny_weights.safetensors");
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], dtype, &Device::Cpu) }
            .expect("mapping tiny_weights.safetensors");
        let (unet, encoder) = tiny_networks(vb);
        let get = |name: &str| get(name).to_dtype(dtype).unwrap();
        for case in ["", "b2."] {
            let timesteps = get(&format!("{case}unet.timesteps"));
            let features = encoder
                .forward(&get(&format!("{case}enc.lr_latent")), &timesteps)
                .expect("structure encoder forward");
            assert_eq!(features.widths(), vec![8, 16]);
            for width in [16, 8] {
                let name = format!("{case}enc.out.{width}");
                let ours = features.get(width).unwrap().to_dtype(DType::F32).unwrap();
                check_close(&format!("{dtype:?} {name}"), &ours, &get(&name).to_dtype(DType::F32).unwrap());
            }
            let eps = unet
                .forward(
                    &get(&format!("{case}unet.x_t")),
                    &timesteps,
                    Some(&get(&format!("{case}unet.context"))),
                    Some(&features),
                )
                .expect("UNet forward");
            let name = format!("{case}unet.eps");
            check_close(&format!("{dtype:?} {name}"), &eps.to_dtype(DType::F32).unwrap(), &get(&name).to_dtype(DType::F32).unwrap());
        }
    }
}

fn random_normal(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let values: Vec<f32> = (0..shape.iter().product())
        .map(|_| rand_distr::StandardNormal.sample(&mut rng))
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// A loss on eps reaches every weight of both networks: a weight without a gradient, or
/// with an all-zero one, means an op on its path has no backward pass (or is miswired).
#[test]
fn every_weight_gets_a_gradient() {
    let mut varmap = VarMap::new();
    let (unet, encoder) = tiny_networks(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu));
    varmap
        .load(fixtures().join("tiny_weights.safetensors"))
        .expect("loading the fixture weights");

    let io = fixture_tensors("tiny_io.safetensors");
    let timesteps = &io["b2.unet.timesteps"];
    let features = encoder.forward(&io["b2.enc.lr_latent"], timesteps).unwrap();
    let eps = unet
        .forward(
            &io["b2.unet.x_t"],
            timesteps,
            Some(&io["b2.unet.context"]),
            Some(&features),
        )
        .unwrap();
    let loss = (eps.clone() * random_normal(eps.dims(), 7))
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().expect("backward");

    let vars = varmap.data().lock().unwrap();
    assert_eq!(
        vars.len(),
        358,
        "variables created for the two tiny networks"
    );
    let mut failures: Vec<String> = vars
        .iter()
        .filter_map(|(name, var)| match grads.get(var.as_tensor()) {
            None => Some(format!("{name}: no gradient")),
            Some(g) if max_abs(g) == 0.0 => Some(format!("{name}: zero gradient")),
            Some(_) => None,
        })
        .collect();
    failures.sort();
    assert!(
        failures.is_empty(),
        "{} of {} weights:\n{}",
        failures.len(),
        vars.len(),
        failures.join("\n")
    );
}

/// With `context_dim` None the cross-attention attends to the features themselves (its
/// keys and values take the feature width); the model runs at a non-square size and
/// rejects a text context it was not built for.
#[test]
fn unet_without_text_attends_to_itself_at_any_size() {
    let (mut unet_cfg, encoder_cfg) = tiny_configs();
    unet_cfg.context_dim = None;
    let (unet_shapes, _) = declared_shapes(&unet_cfg, &encoder_cfg);
    let key = format!("{UNET_PREFIX}.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight");
    assert_eq!(unet_shapes[&key], vec![32, 32]);

    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let unet = UNet::new(vb.pp(UNET_PREFIX), &unet_cfg).unwrap();
    let encoder = StructEncoder::new(vb.pp(ENCODER_PREFIX), &encoder_cfg).unwrap();
    // The VarMap starts at zero, which would make eps trivially zero.
    for (i, var) in varmap.all_vars().iter().enumerate() {
        var.set(&(random_normal(var.dims(), 100 + i as u64) * 0.2).unwrap())
            .unwrap();
    }
    let timesteps = Tensor::new(&[3u32, 250, 999], &Device::Cpu).unwrap();
    let latent = random_normal(&[3, 4, 8, 12], 1);
    let features: StructFeatures = encoder.forward(&latent, &timesteps).unwrap();
    assert_eq!(features.widths(), vec![6, 12]);
    assert_eq!(features.get(6).unwrap().dims(), &[3, 16, 4, 6]);
    let x_t = random_normal(&[3, 4, 8, 12], 2);
    let eps = unet.forward(&x_t, &timesteps, None, Some(&features)).unwrap();
    assert_eq!(eps.dims(), &[3, 4, 8, 12]);
    assert!(max_abs(&eps) > 0.0);
    let context = random_normal(&[3, 5, 32], 3);
    assert!(unet
        .forward(&x_t, &timesteps, Some(&context), Some(&features))
        .is_err());
}

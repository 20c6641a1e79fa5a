//! StableSR's autoencoders (`spritedx::stablesr::vae`) against the PyTorch originals:
//! full-size keys and shapes against the checkpoints' manifests, numerics against the tiny
//! CFW fixture computed by StableSR's own modules (../shared/fixtures/stablesr, see its
//! PROVENANCE.md), and gradients reaching every weight.

mod stablesr_common;
use stablesr_common::{fixture_tensors, fixtures, max_abs, read_json};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use spritedx::nn::shapes::{diff_shapes, ShapeMap, ShapeRecorder};
use spritedx::stablesr::vae::{AutoencoderKL, AutoencoderKLResi, VaeConfig};

/// A manifest group (`{key: shape}`) as a ShapeMap.
fn shape_map(group: &serde_json::Value) -> ShapeMap {
    serde_json::from_value(group.clone()).expect("manifest group is {key: [dims]}")
}

fn tiny_config() -> VaeConfig {
    serde_json::from_value(read_json("tiny_config.json")["vqgan_cfw"].clone())
        .expect("tiny vqgan_cfw config")
}

/// Asserts `max |ours - reference| <= 1e-4 * max(1, max |reference|)` and returns the error.
fn assert_close(name: &str, ours: &Tensor, reference: &Tensor) -> f64 {
    assert_eq!(ours.dims(), reference.dims(), "{name}: shape");
    let err = max_abs(&(ours - reference).unwrap());
    let tolerance = 1e-4 * max_abs(reference).max(1.0);
    println!("{name}: max abs err {err:.3e} (tolerance {tolerance:.3e})");
    assert!(err <= tolerance, "{name}: max abs err {err} > {tolerance}");
    err
}

#[test]
fn first_stage_declares_exactly_the_checkpoint_keys() {
    let manifest = read_json("manifest_512.json");
    let from_manifest: VaeConfig =
        serde_json::from_value(manifest["config"]["first_stage"].clone())
            .expect("first_stage config");
    assert_eq!(from_manifest, VaeConfig::stablesr_first_stage());

    let recorder = ShapeRecorder::new();
    AutoencoderKL::new(
        recorder.var_builder().pp("first_stage_model"),
        &VaeConfig::stablesr_first_stage(),
    )
    .unwrap();
    let expected = shape_map(&manifest["first_stage_model"]);
    assert_eq!(expected.len(), 248);
    let diff = diff_shapes(&recorder.shapes(), &expected);
    assert!(
        diff.is_empty(),
        "first_stage_model keys differ:\n{}",
        diff.join("\n")
    );
}

#[test]
fn cfw_declares_exactly_the_checkpoint_keys() {
    let manifest = read_json("manifest_vqgan_cfw.json");
    let config = &manifest["config"];
    let cfw = VaeConfig::stablesr_cfw();
    assert_eq!(serde_json::to_value(&cfw.ddconfig).unwrap(), {
        let mut dd = config["ddconfig"].clone();
        dd.as_object_mut().unwrap().remove("dropout");
        dd
    });
    assert_eq!(config["embed_dim"], cfw.embed_dim);
    assert_eq!(config["Decoder_Mix"]["num_fuse_block"], cfw.num_fuse_block);
    assert_eq!(
        config["Decoder_Mix"]["Fuse_sft_block_RRDB.num_grow_ch"],
        cfw.num_grow_ch
    );

    let recorder = ShapeRecorder::new();
    AutoencoderKLResi::new(recorder.var_builder(), &cfw).unwrap();
    let expected = shape_map(&manifest["model"]);
    assert_eq!(expected.len(), 404);
    // The loss keys (LPIPS, discriminator) are training-only and not part of the model.
    let diff = diff_shapes(&recorder.shapes(), &expected);
    assert!(
        diff.is_empty(),
        "vqgan_cfw keys differ:\n{}",
        diff.join("\n")
    );
    let fusion = recorder
        .shapes()
        .keys()
        .filter(|k| k.starts_with("decoder.fusion_layer_"))
        .count();
    assert_eq!(fusion, 156);
}

#[test]
fn tiny_cfw_uses_every_fixture_weight() {
    let weights = fixture_tensors("tiny_vqgan_cfw_weights.safetensors");
    let fixture_shapes: ShapeMap = weights
        .iter()
        .map(|(k, t)| (k.clone(), t.dims().to_vec()))
        .collect();
    let recorder = ShapeRecorder::new();
    AutoencoderKLResi::new(recorder.var_builder(), &tiny_config()).unwrap();
    let diff = diff_shapes(&recorder.shapes(), &fixture_shapes);
    assert!(
        diff.is_empty(),
        "tiny CFW keys differ from the fixture:\n{}",
        diff.join("\n")
    );
}

/// Tolerance for every comparison: max abs err <= 1e-4 * max(1, max |reference|).
#[test]
fn tiny_cfw_matches_pytorch() {
    let io = fixture_tensors("tiny_io.safetensors");
    let mut vae_io: Vec<&String> = io.keys().filter(|k| k.starts_with("vae.")).collect();
    vae_io.sort();
    println!("fixture io tensors: {vae_io:?}");
    let cfg = tiny_config();
    let vb = VarBuilder::from_tensors(
        fixture_tensors("tiny_vqgan_cfw_weights.safetensors"),
        DType::F32,
        &Device::Cpu,
    );
    let vae = AutoencoderKLResi::new(vb, &cfg).unwrap();

    let (posterior, enc_fea) = vae.encode(&io["vae.image"]).unwrap();
    assert_close("vae.moments", &posterior.moments, &io["vae.moments"]);
    assert_close(
        "vae.posterior_mean",
        &posterior.mean,
        &io["vae.posterior_mean"],
    );
    assert_close(
        "vae.posterior_std",
        &posterior.std,
        &io["vae.posterior_std"],
    );
    assert_eq!(enc_fea.len(), 2);
    assert_close("vae.enc_fea.0", &enc_fea[0], &io["vae.enc_fea.0"]);
    assert_close("vae.enc_fea.1", &enc_fea[1], &io["vae.enc_fea.1"]);
    for (w, name) in [
        (0.0, "vae.dec_w0.0"),
        (0.5, "vae.dec_w0.5"),
        (1.0, "vae.dec_w1.0"),
    ] {
        let dec = vae.decode(&posterior.mean, &enc_fea, w).unwrap();
        assert_close(name, &dec, &io[name]);
    }
}

/// The plain AutoencoderKL from the same weights (it ignores the fusion layers): its
/// encoder is the same, and at w = 0 Decoder_Mix adds nothing, so the plain decoder must
/// give the reference's `dec_w0.0`.
#[test]
fn plain_autoencoder_matches_pytorch_at_zero_fidelity_weight() {
    let io = fixture_tensors("tiny_io.safetensors");
    let vb = VarBuilder::from_tensors(
        fixture_tensors("tiny_vqgan_cfw_weights.safetensors"),
        DType::F32,
        &Device::Cpu,
    );
    let vae = AutoencoderKL::new(vb, &tiny_config()).unwrap();
    let posterior = vae.encode(&io["vae.image"]).unwrap();
    assert_close("plain moments", &posterior.moments, &io["vae.moments"]);
    assert_close(
        "plain decode",
        &vae.decode(&posterior.mean).unwrap(),
        &io["vae.dec_w0.0"],
    );
}

/// Batch of two (the fixture image and its mirror image): the first sample must still
/// match the single-image reference, and the two must differ.
#[test]
fn tiny_cfw_batch_of_two_matches_pytorch_per_sample() {
    let io = fixture_tensors("tiny_io.safetensors");
    let vb = VarBuilder::from_tensors(
        fixture_tensors("tiny_vqgan_cfw_weights.safetensors"),
        DType::F32,
        &Device::Cpu,
    );
    let vae = AutoencoderKLResi::new(vb, &tiny_config()).unwrap();
    let image = &io["vae.image"];
    let mirrored = image.flip(&[3]).unwrap();
    let batch = Tensor::cat(&[image, &mirrored], 0).unwrap();
    let (posterior, enc_fea) = vae.encode(&batch).unwrap();
    let dec = vae.decode(&posterior.mean, &enc_fea, 0.5).unwrap();
    assert_eq!(dec.dims(), &[2, 3, 64, 64]);
    assert_close(
        "batch[0] moments",
        &posterior.moments.narrow(0, 0, 1).unwrap(),
        &io["vae.moments"],
    );
    assert_close(
        "batch[0] dec_w0.5",
        &dec.narrow(0, 0, 1).unwrap(),
        &io["vae.dec_w0.5"],
    );
    let between = max_abs(&(dec.narrow(0, 0, 1).unwrap() - dec.narrow(0, 1, 1).unwrap()).unwrap());
    assert!(between > 1e-2, "the two samples decode alike ({between})");
}

#[test]
fn decode_rejects_features_of_another_size() {
    let io = fixture_tensors("tiny_io.safetensors");
    let vb = VarBuilder::from_tensors(
        fixture_tensors("tiny_vqgan_cfw_weights.safetensors"),
        DType::F32,
        &Device::Cpu,
    );
    let vae = AutoencoderKLResi::new(vb, &tiny_config()).unwrap();
    let (posterior, enc_fea) = vae.encode(&io["vae.image"]).unwrap();
    let smaller_latent = posterior
        .mean
        .narrow(2, 0, 4)
        .unwrap()
        .narrow(3, 0, 4)
        .unwrap();
    let err = vae
        .decode(&smaller_latent, &enc_fea, 0.5)
        .unwrap_err()
        .to_string();
    assert!(err.contains("encoder feature"), "unexpected error: {err}");
    let err = vae
        .decode(&posterior.mean, &enc_fea[..1], 0.5)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("needs encoder feature 1"),
        "unexpected error: {err}"
    );
}

/// Every weight, the CFW fusion layers (which StableSR trains) and all others, gets a
/// non-zero gradient from a scalar loss on the decoder output at w = 0.5. The latent is a
/// posterior sample with fixed noise so that the log-variance half of `quant_conv` is on
/// the path too.
#[test]
fn every_weight_gets_a_gradient() {
    let device = Device::Cpu;
    let mut varmap = VarMap::new();
    let vae = AutoencoderKLResi::new(
        VarBuilder::from_varmap(&varmap, DType::F32, &device),
        &tiny_config(),
    )
    .unwrap();
    varmap
        .load(fixtures().join("tiny_vqgan_cfw_weights.safetensors"))
        .unwrap();

    let image = &fixture_tensors("tiny_io.safetensors")["vae.image"];
    let (posterior, enc_fea) = vae.encode(image).unwrap();
    let count = posterior.mean.elem_count();
    let noise = (Tensor::arange(0u32, count as u32, &device)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        * 0.37)
        .unwrap()
        .sin()
        .unwrap()
        .reshape(posterior.mean.shape())
        .unwrap();
    let z = posterior.sample_with_noise(&noise).unwrap();
    let out = vae.decode(&z, &enc_fea, 0.5).unwrap();
    let loss = out.sqr().unwrap().mean_all().unwrap();
    let grads = loss.backward().unwrap();

    let vars = varmap.data().lock().unwrap();
    assert_eq!(vars.len(), 338, "variables in the tiny CFW model");
    let mut without: Vec<&String> = vars
        .iter()
        .filter(|(_, var)| grads.get(var.as_tensor()).is_none_or(|g| max_abs(g) == 0.0))
        .map(|(name, _)| name)
        .collect();
    without.sort();
    assert!(
        without.is_empty(),
        "no gradient for {} variables: {without:?}",
        without.len()
    );
    let fusion = vars.keys().filter(|k| k.contains("fusion_layer")).count();
    println!(
        "{} variables with non-zero gradients, {fusion} of them in fusion layers",
        vars.len()
    );
}

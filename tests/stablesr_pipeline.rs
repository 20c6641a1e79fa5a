//! The StableSR pipeline (`spritedx::stablesr::pipeline`): the real config's keys and
//! prefixes against the checkpoints' manifests, loading model folders (tiny random ones
//! and one assembled from the parity fixtures) with strict key errors, restoring a sprite
//! end to end with a tiny random model, and tiled sampling.
//!
//! The per-network key layouts and numerics are tested in stablesr_unet.rs,
//! stablesr_vae.rs and stablesr_text.rs; this file tests how they are combined.

mod stablesr_common;
use stablesr_common::{fixture_tensors, max_abs, read_json};

use candle_core::{Device, Tensor};
use image::{imageops, Rgba, RgbaImage};
use spritedx::nn::shapes::{diff_shapes, ShapeMap};
use spritedx::stablesr::pipeline::{
    random_weights, write_model_folder, write_tiny_random_model, SamplingOptions, SamplingStart,
    StableSr, StableSrConfig, StableSrOptions, TileLayout, TileOptions, CFW_FILE, MODEL_FILE,
};
use spritedx::stablesr::struct_encoder::{StructEncoder, StructEncoderConfig};
use spritedx::stablesr::text::{empty_prompt_tokens, tokens_tensor, OpenClipText};
use spritedx::stablesr::unet::{UNet, UNetConfig};
use spritedx::stablesr::vae::VaeConfig;
use spritedx::weights::{check_shapes, HubOptions, KeyRules, WeightSource};
use spritedx_samplers::Method;
use std::collections::HashMap;
use std::path::Path;

/// Hub options that never reach the network (folder sources do not use them).
fn offline_hub(dir: &Path) -> HubOptions {
    HubOptions {
        cache_dir: dir.join("hub-cache"),
        offline: true,
        token: None,
        endpoint: "http://127.0.0.1:9".into(),
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    max_abs(&(a - b).unwrap())
}

/// A true-resolution sprite: hashed colours from a small palette inside an ellipse,
/// transparent outside it.
fn sprite(cols: u32, rows: u32) -> RgbaImage {
    const PALETTE: [[u8; 3]; 6] = [
        [24, 20, 37],
        [190, 38, 51],
        [68, 137, 26],
        [49, 162, 242],
        [247, 226, 107],
        [235, 137, 49],
    ];
    RgbaImage::from_fn(cols, rows, |x, y| {
        let (dx, dy) = (
            (x as f32 + 0.5) / cols as f32 - 0.5,
            (y as f32 + 0.5) / rows as f32 - 0.5,
        );
        if dx * dx + dy * dy > 0.2 {
            return Rgba([0, 0, 0, 0]);
        }
        let h = spritedx::rng::splitmix64(u64::from(x * 97 + y * 31)) % 6;
        let [r, g, b] = PALETTE[h as usize];
        Rgba([r, g, b, 255])
    })
}

fn upscale(img: &RgbaImage, k: u32) -> RgbaImage {
    imageops::resize(
        img,
        img.width() * k,
        img.height() * k,
        imageops::FilterType::Nearest,
    )
}

/// A tiny random model written to a temporary folder and loaded from it.
fn tiny_model(seed: u64) -> (tempfile::TempDir, StableSr) {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_random_model(dir.path(), seed).unwrap();
    let model = StableSr::load_folder(dir.path(), &Device::Cpu).unwrap();
    (dir, model)
}

/// Few steps, so that the tests stay fast.
fn quick_options(model: &StableSr, seed: u64) -> StableSrOptions {
    let mut opts = StableSrOptions::for_model(model.config());
    opts.sampling.steps = 4;
    opts.sampling.seed = seed;
    opts
}

#[test]
fn tiny_config_is_the_fixtures_config() {
    let json = read_json("tiny_config.json");
    let cfg = StableSrConfig::tiny();
    cfg.validate().unwrap();
    let unet: UNetConfig = serde_json::from_value(json["unet"].clone()).unwrap();
    let encoder: StructEncoderConfig = serde_json::from_value(json["structcond"].clone()).unwrap();
    let cfw: VaeConfig = serde_json::from_value(json["vqgan_cfw"].clone()).unwrap();
    assert_eq!(cfg.unet, unet);
    assert_eq!(cfg.struct_encoder, encoder);
    assert_eq!(cfg.cfw, cfw);
    assert_eq!(cfg.first_stage.ddconfig, cfw.ddconfig);
    assert_eq!(cfg.text.width, unet.context_dim.unwrap());
    assert_eq!((cfg.latent_factor(), cfg.size_multiple()), (8, 2));
}

/// The real config declares exactly the manifest's keys, each group under its prefix,
/// and the strict check passes over the keys the checkpoints also carry (schedule buffers,
/// the CFW training loss) without complaint.
#[test]
fn real_config_declares_exactly_the_checkpoint_keys() {
    let cfg = StableSrConfig::stablesr_512();
    let manifest = read_json("manifest_512.json");
    let group =
        |name: &str| -> ShapeMap { serde_json::from_value(manifest[name].clone()).unwrap() };
    let mut expected = ShapeMap::new();
    for name in [
        "model.diffusion_model",
        "structcond_stage_model",
        "first_stage_model",
        "cond_stage_model",
    ] {
        expected.extend(group(name));
    }
    assert_eq!(expected.len(), 862 + 200 + 248 + 294);
    let declared = cfg.model_shapes().unwrap();
    let diff = diff_shapes(&declared, &expected);
    assert!(
        diff.is_empty(),
        "diffusion checkpoint keys differ:\n{}",
        diff.join("\n")
    );
    let text = cfg.text_shapes().unwrap();
    assert_eq!(text.len(), 294);
    assert!(text
        .keys()
        .all(|k| k.starts_with("cond_stage_model.model.")));

    let mut in_checkpoint = expected.clone();
    let other = group("_other");
    assert_eq!(other.len(), 12);
    in_checkpoint.extend(other);
    let report = check_shapes(&in_checkpoint, &declared, &KeyRules::default()).unwrap();
    assert_eq!(report.used, expected.len());
    assert_eq!(report.ignored.len(), 12, "the schedule buffers are ignored");

    let cfw_manifest = read_json("manifest_vqgan_cfw.json");
    let cfw_model: ShapeMap = serde_json::from_value(cfw_manifest["model"].clone()).unwrap();
    let cfw_loss: ShapeMap =
        serde_json::from_value(cfw_manifest["loss_training_only"].clone()).unwrap();
    let cfw_declared = cfg.cfw_shapes().unwrap();
    let diff = diff_shapes(&cfw_declared, &cfw_model);
    assert!(
        diff.is_empty(),
        "CFW checkpoint keys differ:\n{}",
        diff.join("\n")
    );
    let mut cfw_in_checkpoint = cfw_model.clone();
    cfw_in_checkpoint.extend(cfw_loss);
    let report = check_shapes(&cfw_in_checkpoint, &cfw_declared, &KeyRules::default()).unwrap();
    assert_eq!(
        report.ignored.len(),
        56,
        "the training loss keys are ignored"
    );
}

/// A model folder assembled from the parity fixtures (UNet and structure encoder from
/// tiny_weights, the CFW autoencoder from tiny_vqgan_cfw_weights and, without its fusion
/// layers, as the first stage; a random text tower) loads, and each network computes
/// what it computes when built directly from the fixture files, or what PyTorch computed.
#[test]
fn fixture_weights_load_into_the_right_networks() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StableSrConfig::tiny();
    let cfw = fixture_tensors("tiny_vqgan_cfw_weights.safetensors");
    let mut model = fixture_tensors("tiny_weights.safetensors");
    for (key, tensor) in &cfw {
        if !key.starts_with("decoder.fusion_layer_") {
            model.insert(format!("first_stage_model.{key}"), tensor.clone());
        }
    }
    let text_weights = random_weights(&cfg.text_shapes().unwrap(), 5).unwrap();
    model.extend(text_weights.clone());
    write_model_folder(dir.path(), &cfg, &model, &cfw).unwrap();

    let source = WeightSource::parse(dir.path().to_str().unwrap()).unwrap();
    let sr = StableSr::load(&source, &offline_hub(dir.path()), &Device::Cpu).unwrap();
    assert_eq!(sr.config(), &cfg);

    // The cached context is the text tower's output for the empty prompt.
    let vb =
        candle_nn::VarBuilder::from_tensors(text_weights, candle_core::DType::F32, &Device::Cpu);
    let text = OpenClipText::new(vb.pp("cond_stage_model.model"), &cfg.text).unwrap();
    let tokens = tokens_tensor(&empty_prompt_tokens(77), 1, &Device::Cpu).unwrap();
    let context = text.forward(&tokens).unwrap();
    assert_eq!(context.dims(), &[1, 77, 16]);
    assert_eq!(max_diff(sr.text_context(), &context), 0.0);

    // The denoiser is the fixture's UNet and structure encoder with that context.
    let io = fixture_tensors("tiny_io.safetensors");
    let vb = candle_nn::VarBuilder::from_tensors(
        fixture_tensors("tiny_weights.safetensors"),
        candle_core::DType::F32,
        &Device::Cpu,
    );
    let unet = UNet::new(vb.pp("model.diffusion_model"), &cfg.unet).unwrap();
    let encoder = StructEncoder::new(vb.pp("structcond_stage_model"), &cfg.struct_encoder).unwrap();
    let (x_t, t, lr) = (&io["unet.x_t"], &io["unet.timesteps"], &io["enc.lr_latent"]);
    let reference = unet
        .forward(x_t, t, Some(&context), Some(&encoder.forward(lr, t).unwrap()))
        .unwrap();
    let eps = sr.predict_eps(x_t, t, lr).unwrap();
    let err = max_diff(&eps, &reference);
    println!("denoiser vs fixture networks: max abs err {err:.3e} (tolerance 1e-6)");
    assert!(err <= 1e-6);

    // First stage and CFW decoder against PyTorch (tolerance as in stablesr_vae.rs:
    // 1e-4 * max(1, max |reference|)).
    let image = &io["vae.image"];
    let posterior = sr.posterior(image).unwrap();
    let reference = &io["vae.posterior_mean"];
    let err = max_diff(&posterior.mean, reference);
    let tolerance = 1e-4 * max_abs(reference).max(1.0);
    println!("first-stage posterior mean: max abs err {err:.3e} (tolerance {tolerance:.3e})");
    assert!(err <= tolerance);
    let latent = (reference * cfg.scale_factor).unwrap();
    let decoded = sr.decode(&latent, image, 0.5).unwrap();
    let reference = &io["vae.dec_w0.5"];
    let err = max_diff(&decoded, reference);
    let tolerance = 1e-4 * max_abs(reference).max(1.0);
    println!("CFW decode (w = 0.5): max abs err {err:.3e} (tolerance {tolerance:.3e})");
    assert!(err <= tolerance);
}

/// Loads `dir` after `edit` changed the tensors of `file`, returning the error text.
fn load_error_after(
    dir: &Path,
    file: &str,
    edit: impl FnOnce(&mut HashMap<String, Tensor>),
) -> String {
    let path = dir.join(file);
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let original = tensors.clone();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let result = StableSr::load_folder(dir, &Device::Cpu);
    candle_core::safetensors::save(&original, &path).unwrap();
    match result {
        Ok(_) => panic!("loading succeeded after editing {file}"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn strict_loading_names_the_offending_keys() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_random_model(dir.path(), 3).unwrap();
    StableSr::load_folder(dir.path(), &Device::Cpu).unwrap();

    for key in [
        "model.diffusion_model.out.2.weight",
        "structcond_stage_model.fea_tran.1.out_layers.3.bias",
        "first_stage_model.encoder.conv_in.weight",
        "cond_stage_model.model.ln_final.weight",
    ] {
        let err = load_error_after(dir.path(), MODEL_FILE, |t| {
            t.remove(key).expect("key present");
        });
        assert!(
            err.contains("1 missing") && err.contains(key),
            "{key}: {err}"
        );
    }
    let key = "decoder.fusion_layer_2.encode_enc_3.conv2.weight";
    let err = load_error_after(dir.path(), CFW_FILE, |t| {
        t.remove(key).expect("key present");
    });
    assert!(err.contains("1 missing") && err.contains(key), "{err}");

    let extra = "structcond_stage_model.extra.weight";
    let err = load_error_after(dir.path(), MODEL_FILE, |t| {
        t.insert(
            extra.into(),
            Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    });
    assert!(err.contains("1 unexpected") && err.contains(extra), "{err}");

    let key = "model.diffusion_model.time_embed.0.bias";
    let err = load_error_after(dir.path(), MODEL_FILE, |t| {
        t.insert(
            key.into(),
            Tensor::zeros(5, candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    });
    assert!(err.contains("wrong shape") && err.contains(key), "{err}");

    // Keys beside the model's prefixes (EMA copies, schedule buffers) are ignored.
    let path = dir.path().join(MODEL_FILE);
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let buffer = Tensor::zeros(1000, candle_core::DType::F32, &Device::Cpu).unwrap();
    tensors.insert("alphas_cumprod".into(), buffer.clone());
    tensors.insert("model_ema.decay".into(), buffer);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    StableSr::load_folder(dir.path(), &Device::Cpu).unwrap();
}

#[test]
fn sources_without_both_checkpoints_are_refused_with_advice() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_random_model(dir.path(), 4).unwrap();
    let hub = offline_hub(dir.path());
    let file = WeightSource::parse(dir.path().join(MODEL_FILE).to_str().unwrap()).unwrap();
    let err = format!(
        "{:#}",
        StableSr::load(&file, &hub, &Device::Cpu).err().unwrap()
    );
    assert!(
        err.contains("stablesr_000117.ckpt") && err.contains("vqgan_cfw_00011.ckpt"),
        "{err}"
    );

    std::fs::remove_file(dir.path().join(CFW_FILE)).unwrap();
    let folder = WeightSource::parse(dir.path().to_str().unwrap()).unwrap();
    let err = format!(
        "{:#}",
        StableSr::load(&folder, &hub, &Device::Cpu).err().unwrap()
    );
    assert!(err.contains("no CFW autoencoder checkpoint"), "{err}");
}

/// One latent pixel per art pixel: the latent's sides are the grid's rows and columns,
/// padded to the networks' multiple (2 for the tiny model).
#[test]
fn the_latent_has_one_pixel_per_art_pixel() {
    let (_dir, sr) = tiny_model(7);
    let opts = quick_options(&sr, 0);
    let even = sr.prepare(&upscale(&sprite(16, 12), 3), &opts).unwrap();
    assert_eq!((even.grid.cols(), even.grid.rows()), (16, 12));
    assert_eq!(even.latent.dims(), &[1, 4, 12, 16]);
    assert_eq!(even.rgb.dims(), &[1, 3, 12 * 8, 16 * 8]);
    assert_eq!(even.alpha.dims(), &[1, 1, 12, 16]);

    let odd = sr.prepare(&upscale(&sprite(15, 13), 4), &opts).unwrap();
    assert_eq!((odd.grid.cols(), odd.grid.rows()), (15, 13));
    assert_eq!(odd.latent.dims(), &[1, 4, 14, 16]);
    // The carried alpha is the sprite's, cell for cell, up to what rectification's
    // bilinear samples near a cell's border take from its neighbours (at most 1/4 of the
    // outermost of 8 samples per side here: under 0.25 in all).
    let alpha = odd.alpha.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (x, y, p) in sprite(15, 13).enumerate_pixels() {
        let a = alpha[(y * 16 + x) as usize];
        assert!(
            (a - f32::from(p[3]) / 255.0).abs() < 0.25,
            "({x},{y}) alpha {a}"
        );
    }
}

#[test]
fn a_tiny_model_restores_a_sprite_end_to_end() {
    let (_dir, sr) = tiny_model(11);
    let input = upscale(&sprite(16, 16), 3);
    let restore = |seed: u64| sr.restore(&input, &quick_options(&sr, seed)).unwrap();
    let first = restore(1);
    assert_eq!(first.image.dimensions(), (16, 16));
    assert_eq!((first.grid.cols(), first.grid.rows()), (16, 16));
    assert!(
        (first.grid.cell_width - 3.0).abs() < 0.1,
        "{:?}",
        first.grid
    );
    assert!(
        first.image.pixels().all(|p| p[3] == 0 || p[3] == 255),
        "alpha is binary"
    );
    // Alpha comes from the input: the sprite's transparent cells stay transparent.
    for (x, y, p) in sprite(16, 16).enumerate_pixels() {
        assert_eq!(first.image.get_pixel(x, y)[3], p[3], "alpha at ({x},{y})");
    }
    assert!(!first.palette.is_empty());

    let again = restore(1);
    assert_eq!(first.image, again.image, "same seed, same sprite");
    let other = restore(2);
    assert_ne!(first.image, other.image, "another seed, another sprite");

    // The other options run through: start from noise, DPM-Solver++, full CFW fusion, the
    // wavelet colour fix.
    let mut opts = quick_options(&sr, 1);
    opts.sampling.start = SamplingStart::Noise;
    opts.sampling.method = spritedx::stablesr::pipeline::parse_method("dpm++2m").unwrap();
    opts.fidelity = 1.0;
    opts.colour_fix = spritedx::stablesr::pipeline::ColourFix::Wavelet;
    let varied = sr.restore(&input, &opts).unwrap();
    assert_eq!(varied.image.dimensions(), (16, 16));
    assert!(varied.image.pixels().all(|p| p[3] == 0 || p[3] == 255));
    assert_ne!(first.image, varied.image);
}

/// A random low-resolution latent on the tiny model's 2-multiple.
fn random_latent(h: usize, w: usize, seed: u64) -> Tensor {
    spritedx_samplers::NoiseSource::new(&[seed])
        .sample(&(1, 4, h, w).into(), candle_core::DType::F32, &Device::Cpu)
        .unwrap()
}

fn sampling(tiles: Option<TileOptions>) -> SamplingOptions {
    SamplingOptions {
        steps: 4,
        method: Method::Ddpm,
        seed: 9,
        start: SamplingStart::NoisedInput { strength: 1.0 },
        tiles,
    }
}

#[test]
fn one_tile_covering_the_latent_is_untiled_sampling() {
    let (_dir, sr) = tiny_model(13);
    let lr = random_latent(12, 20, 1);
    let untiled = sr.sample(&lr, &sampling(None), None).unwrap();
    // A 32-tile shrinks to the 12x20 latent: one tile, whose weight is exactly 1.
    let tiles = TileOptions {
        size: 32,
        overlap: 8,
        batch: 4,
    };
    let tiled = sr.sample(&lr, &sampling(Some(tiles)), None).unwrap();
    assert_eq!(max_diff(&tiled, &untiled), 0.0);
}

/// Mean |difference| between neighbouring columns (`axis` 3) or rows (`axis` 2) of a
/// (1, C, H, W) tensor, for each of the W - 1 (or H - 1) boundaries.
fn neighbour_jumps(t: &Tensor, axis: usize) -> Vec<f32> {
    let n = t.dim(axis).unwrap();
    let a = t.narrow(axis, 1, n - 1).unwrap();
    let b = t.narrow(axis, 0, n - 1).unwrap();
    let other = if axis == 3 { 2 } else { 3 };
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .mean(other)
        .unwrap()
        .mean(1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Seams come from tiles that disagree, e.g. by an offset (each tile normalises its own
/// statistics). Blending tiles whose outputs are constants drawn from [0, 1] gives a
/// field that moves by at most `π / (2 overlap)` times the constants' range between
/// neighbouring latent pixels (0.196 for overlap 8), where stitching the tiles side by
/// side would jump by the full difference of two constants.
#[test]
fn tile_offsets_blend_into_gentle_ramps() {
    let (h, w, size, overlap) = (24, 40, 16, 8);
    let layout = TileLayout::new(h, w, size, overlap, &Device::Cpu).unwrap();
    assert_eq!(layout.tiles.len(), 2 * 4);
    let constants: Vec<f32> = (0..layout.tiles.len() as u64)
        .map(|i| (spritedx::rng::splitmix64(i + 1) % 1000) as f32 / 999.0)
        .collect();
    let range = constants.iter().cloned().fold(f32::MIN, f32::max)
        - constants.iter().cloned().fold(f32::MAX, f32::min);
    let outputs: Vec<Tensor> = constants
        .iter()
        .map(|&c| Tensor::full(c, (1, 4, size, size), &Device::Cpu).unwrap())
        .collect();
    let blended = layout.blend(&outputs).unwrap();
    let bound = range * std::f32::consts::PI / (2.0 * overlap as f32);
    for axis in [2, 3] {
        let worst = neighbour_jumps(&blended, axis)
            .into_iter()
            .fold(0.0f32, f32::max);
        println!("axis {axis}: largest step {worst:.4}, bound {bound:.4} (tile constants span {range:.3})");
        assert!(
            worst <= bound * 1.0001,
            "a seam on axis {axis}: step {worst} > {bound}"
        );
    }
}

/// Tiled sampling of a latent cut into 8 tiles, against untiled sampling. A random tiny
/// model's outputs are high-frequency texture, and tiles see less context than the whole
/// latent, so the two results differ everywhere; what is compared is where they differ:
/// the difference D = tiled - untiled must not step at the tile edges, i.e. the mean
/// |D| jump across each boundary where a tile starts or ends is at most 1.5 times the
/// median jump of D over all boundaries of that axis. Sampling is deterministic with tiles.
#[test]
fn tiled_sampling_has_no_seams_at_tile_edges() {
    let (_dir, sr) = tiny_model(17);
    let (h, w) = (24, 40);
    let lr = random_latent(h, w, 2);
    let mut opts = sampling(None);
    // A short run from a low noise level keeps the random model's latents in range.
    opts.start = SamplingStart::NoisedInput { strength: 0.5 };
    let untiled = sr.sample(&lr, &opts, None).unwrap();
    let tiles = TileOptions {
        size: 16,
        overlap: 8,
        batch: 8,
    };
    opts.tiles = Some(tiles);
    let tiled = sr.sample(&lr, &opts, None).unwrap();
    assert_eq!(max_diff(&tiled, &sr.sample(&lr, &opts, None).unwrap()), 0.0);
    let layout = TileLayout::new(h, w, tiles.size, tiles.overlap, &Device::Cpu).unwrap();
    assert_eq!(layout.tiles.len(), 8);
    let difference = (&tiled - &untiled).unwrap();
    println!(
        "max |untiled| {:.3}, max |tiled - untiled| {:.3}",
        max_abs(&untiled),
        max_abs(&difference)
    );
    for (axis, len, tile, starts) in [
        (
            3,
            w,
            layout.tile_width,
            layout.tiles.iter().map(|t| t.x).collect::<Vec<_>>(),
        ),
        (
            2,
            h,
            layout.tile_height,
            layout.tiles.iter().map(|t| t.y).collect::<Vec<_>>(),
        ),
    ] {
        let mut edges: Vec<usize> = starts
            .iter()
            .flat_map(|&s| [s, s + tile])
            .filter(|&e| e > 0 && e < len)
            .collect();
        edges.sort_unstable();
        edges.dedup();
        let jumps = neighbour_jumps(&difference, axis);
        let mut sorted = jumps.clone();
        sorted.sort_by(f32::total_cmp);
        let median = sorted[sorted.len() / 2];
        // Boundary e lies between index e - 1 and e.
        let worst_edge = edges.iter().map(|&e| jumps[e - 1]).fold(0.0f32, f32::max);
        println!(
            "axis {axis}: tile edges {edges:?}, largest D jump at an edge {worst_edge:.4}, \
             median D jump {median:.4}"
        );
        assert!(
            worst_edge <= 1.5 * median,
            "a seam on axis {axis}: D jumps by {worst_edge} at a tile edge, median {median}"
        );
    }
}

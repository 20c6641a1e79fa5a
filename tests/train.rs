//! `spritedx train` and the learned restorers, on tiny models and sprites the tests make:
//! exact resumption, adapter fine-tuning, and restoring with the trained folders.

use image::{imageops, Rgba, RgbaImage};
use spritedx::pixel_restorer::{LoadedPixelRestorer, ModelKind, PixelRestorerConfig};
use spritedx::train::run::{lr_scale, train, LrDecay, TrainConfig, TrainPart};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A temporary folder with the test sprites in its `sprites/`; it lives as long as the guard.
fn temp_sprites() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("sprites");
    write_sprites(&data);
    (tmp, data)
}

/// A few 16x16 sprites in two categories (`dcss_mon_*`, `dcss_gui_*`), enough of them that
/// both splits have some.
fn write_sprites(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let palette = [[30u8, 30, 50], [200, 60, 40], [240, 200, 60], [60, 160, 90]];
    for i in 0..40u32 {
        let img = RgbaImage::from_fn(16, 16, |x, y| {
            if (x + i) % 7 == 0 && y < 3 {
                return Rgba([0, 0, 0, 0]);
            }
            let [r, g, b] = palette[((x / 3 + y / 4 + i) % 4) as usize];
            Rgba([r, g, b, 255])
        });
        let category = if i % 2 == 0 { "mon" } else { "gui" };
        img.save(dir.join(format!("dcss_{category}_{i:02}.png"))).unwrap();
    }
}

/// A tiny model of either kind: one level of 32 channels.
fn tiny(kind: ModelKind) -> PixelRestorerConfig {
    let mut cfg = PixelRestorerConfig::small(kind);
    cfg.factor = 2;
    cfg.encoder.in_channels = 16;
    cfg.encoder.model_channels = 32;
    cfg.encoder.out_channels = 32;
    cfg.encoder.channel_mult = vec![1, 2];
    cfg.head_channels = 32;
    if let Some(unet) = cfg.unet.as_mut() {
        unet.model_channels = 32;
        unet.semb_channels = 32;
        unet.num_head_channels = Some(16);
    }
    cfg.sampling.steps = 3;
    cfg
}

fn tiny_run(kind: ModelKind, data: &Path, steps: u64) -> TrainConfig {
    let mut cfg = TrainConfig::new(tiny(kind), data.to_path_buf());
    cfg.batch = 2;
    cfg.patch_cells = 8;
    cfg.steps = steps;
    cfg.seed = 5;
    cfg.log_every = 1;
    cfg.checkpoint_every = 2;
    cfg.validate_every = 4;
    cfg.validate_sprites = 2;
    cfg.presets = vec![spritedx::degrade::Preset::Clean, spritedx::degrade::Preset::Seed];
    cfg.warmup_steps = 2;
    cfg
}

/// The exported model's tensors as (name, values), sorted by name.
fn model_values(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let (tensors, _) = spritedx::train::checkpoint::load(&dir.join("model/model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let mut values: Vec<(String, Vec<f32>)> =
        tensors.into_iter().map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect();
    values.sort_by(|a, b| a.0.cmp(&b.0));
    values
}

#[test]
fn an_interrupted_run_resumes_exactly() {
    let (tmp, data) = temp_sprites();
    for kind in [ModelKind::Fast, ModelKind::Diffusion] {
        let straight = tmp.path().join(format!("{kind:?}-straight"));
        let split = tmp.path().join(format!("{kind:?}-split"));
        train(&tiny_run(kind, &data, 4), &straight, &mut |_, _| {}).unwrap();
        // Stopped after the checkpoint of step 2, then started again with the full length.
        let first = train(&tiny_run(kind, &data, 2), &split, &mut |_, _| {}).unwrap();
        assert_eq!(first.resumed_from, None);
        let second = train(&tiny_run(kind, &data, 4), &split, &mut |_, _| {}).unwrap();
        assert_eq!(second.resumed_from, Some(2), "{kind:?}");
        // Bit for bit: every batch and noise draw is a function of the seed and the step.
        assert!(model_values(&straight) == model_values(&split), "{kind:?}: resumed weights differ");
        // The logs cover every step once, and validation and the plot were written.
        let log = std::fs::read_to_string(split.join("log.jsonl")).unwrap();
        assert_eq!(log.lines().count(), 4, "{log}");
        assert!(split.join("val.jsonl").exists() && split.join("plot.png").exists());
        // A different configuration refuses the checkpoint instead of mixing runs.
        let mut other = tiny_run(kind, &data, 6);
        other.optim.lr *= 2.0;
        let err = train(&other, &split, &mut |_, _| {}).unwrap_err();
        assert!(format!("{err:#}").contains("another configuration"), "{err:#}");
    }
}

/// A tiny fast-model run of `steps` without validation, with the learning-rate `decay`.
fn run_with_decay(data: &Path, steps: u64, decay: Option<LrDecay>) -> TrainConfig {
    let mut cfg = tiny_run(ModelKind::Fast, data, steps);
    cfg.validate_sprites = 0;
    cfg.lr_decay = decay;
    cfg
}

/// Asserts that `out/log.jsonl` logs every step of `cfg` with the learning rate its schedule
/// gives (tolerance 1e-12).
fn assert_logged_rates_follow(out: &Path, cfg: &TrainConfig) {
    let logged: Vec<(u64, f64)> = std::fs::read_to_string(out.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            (v["step"].as_u64().unwrap(), v["lr"].as_f64().unwrap())
        })
        .collect();
    assert_eq!(logged.iter().map(|l| l.0).collect::<Vec<_>>(), (1..=cfg.steps).collect::<Vec<_>>());
    for (step, lr) in logged {
        // Step n is logged after its update, which ran at the rate of 0-based step n - 1.
        let want = cfg.optim.lr * lr_scale(step - 1, cfg.warmup_steps, cfg.lr_decay);
        assert!((lr - want).abs() < 1e-12, "step {step}: lr {lr}, want {want}");
    }
}

/// The logged learning rate follows the warm-up and the cosine decay, also across a
/// resumed run that extends --steps (the decay's end is fixed by the config, not by it).
#[test]
fn the_learning_rate_decays_as_configured_across_a_resume() {
    let (tmp, data) = temp_sprites();
    let out = tmp.path().join("run");
    let run = |steps| run_with_decay(&data, steps, Some(LrDecay { from_step: 0, until_step: 5, final_ratio: 0.2 }));
    train(&run(4), &out, &mut |_, _| {}).unwrap();
    assert_eq!(train(&run(7), &out, &mut |_, _| {}).unwrap().resumed_from, Some(4));
    let cfg = run(7);
    assert_logged_rates_follow(&out, &cfg);
    assert!((cfg.optim.lr * 0.2 - cfg.optim.lr * lr_scale(6, cfg.warmup_steps, cfg.lr_decay)).abs() < 1e-15, "the last steps run at the floor");
}

/// A run trained at a constant rate may be resumed with a decay that starts at or after the
/// step it resumes from (its past rates are unchanged), and the decay then applies; a decay
/// that would have changed a step already trained is refused.
#[test]
fn a_resumed_run_may_add_a_decay_only_where_it_has_not_been() {
    let (tmp, data) = temp_sprites();
    let out = tmp.path().join("run");
    let run = |steps, decay| run_with_decay(&data, steps, decay);
    train(&run(4, None), &out, &mut |_, _| {}).unwrap();
    let too_early = Some(LrDecay { from_step: 2, until_step: 6, final_ratio: 0.2 });
    let err = train(&run(6, too_early), &out, &mut |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("another configuration"), "{err}");
    let cool_down = Some(LrDecay { from_step: 4, until_step: 6, final_ratio: 0.2 });
    assert_eq!(train(&run(6, cool_down), &out, &mut |_, _| {}).unwrap().resumed_from, Some(4));
    let cfg = run(6, cool_down);
    assert_logged_rates_follow(&out, &cfg);
    assert!(lr_scale(5, cfg.warmup_steps, cool_down) < 1.0, "the cool-down lowered the last step's rate");
}

#[test]
fn the_adversarial_term_trains_a_critic_and_resumes_exactly() {
    let (tmp, data) = temp_sprites();
    let run = |steps| {
        let mut cfg = tiny_run(ModelKind::Fast, &data, steps);
        cfg.losses.adversarial = 0.1;
        cfg
    };
    let straight = tmp.path().join("straight");
    let split = tmp.path().join("split");
    train(&run(4), &straight, &mut |_, _| {}).unwrap();
    train(&run(2), &split, &mut |_, _| {}).unwrap();
    let second = train(&run(4), &split, &mut |_, _| {}).unwrap();
    assert_eq!(second.resumed_from, Some(2));
    // The critic's weights and moments are in the checkpoint, so the resumed run is the
    // same run bit for bit.
    assert!(model_values(&straight) == model_values(&split), "resumed weights differ");
    let checkpoint = |dir: &Path| spritedx::train::checkpoint::load(&dir.join("checkpoint.safetensors"), &candle_core::Device::Cpu).unwrap().0;
    let (a, b) = (checkpoint(&straight), checkpoint(&split));
    let critic_names: Vec<&String> = a.keys().filter(|k| k.starts_with("critic.")).collect();
    assert!(!critic_names.is_empty() && a.keys().any(|k| k.starts_with("adam.m.critic.")));
    for name in critic_names {
        let values = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(values(&a[name]) == values(&b[name]), "{name} differs after resuming");
    }
    // Both terms are logged, and the exported model holds no critic.
    let log = std::fs::read_to_string(split.join("log.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert!(last["adversarial"].is_number() && last["critic"].as_f64().is_some_and(|v| v >= 0.0), "{last}");
    assert!(model_values(&split).iter().all(|(k, _)| !k.starts_with("critic.")));
}

#[test]
fn fine_tuning_trains_and_saves_only_the_adapter() {
    let (tmp, data) = temp_sprites();
    let base = tmp.path().join("base");
    let mut base_cfg = tiny_run(ModelKind::Diffusion, &data, 2);
    base_cfg.selection.exclude_categories = vec!["gui".into()];
    train(&base_cfg, &base, &mut |_, _| {}).unwrap();

    let tuned = tmp.path().join("tuned");
    let mut tune_cfg = tiny_run(ModelKind::Diffusion, &data, 2);
    tune_cfg.selection.only_categories = vec!["gui".into()];
    tune_cfg.init = Some(base.join("model"));
    tune_cfg.train = TrainPart::Adapter;
    train(&tune_cfg, &tuned, &mut |_, _| {}).unwrap();
    let (adapter, _) = spritedx::train::checkpoint::load(&tuned.join("model/model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let (full, _) = spritedx::train::checkpoint::load(&base.join("model/model.safetensors"), &candle_core::Device::Cpu).unwrap();
    assert!(!adapter.is_empty() && adapter.len() < full.len(), "{} of {}", adapter.len(), full.len());
    assert!(adapter.keys().all(|k| spritedx::train::run::is_adapter_var(k)), "{:?}", adapter.keys().collect::<Vec<_>>());
    assert!(adapter.keys().any(|k| k.starts_with("encoder.")) && adapter.keys().any(|k| k.contains("spade")));
    // The adapter changed what it trained.
    let name = adapter.keys().find(|k| k.starts_with("encoder.")).unwrap();
    let diff = (&adapter[name] - &full[name]).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff > 0.0, "{name} unchanged");

    // The CLI restores with the base model plus the adapter, and names a foreign adapter.
    let sprite = image::open(data.join("dcss_gui_01.png")).unwrap().to_rgba8();
    let big = imageops::resize(&sprite, 48, 48, imageops::FilterType::Nearest);
    let input = tmp.path().join("in.png");
    big.save(&input).unwrap();
    let out = tmp.path().join("out.png");
    let status = Command::new(env!("CARGO_BIN_EXE_spritedx"))
        .args(["restore", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "--model", "diffusion", "--weights"])
        .arg(base.join("model"))
        .arg("--adapter")
        .arg(tuned.join("model/model.safetensors"))
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert_eq!(image::open(&out).unwrap().to_rgba8().dimensions(), (16, 16));
    let fast = tmp.path().join("fast");
    train(&tiny_run(ModelKind::Fast, &data, 1), &fast, &mut |_, _| {}).unwrap();
    let err = LoadedPixelRestorer::load(&fast.join("model"), &[tuned.join("model/model.safetensors")]).err().expect("a diffusion adapter does not fit a fast model");
    assert!(format!("{err:#}").contains("adapter"), "{err:#}");
}

#[test]
fn a_fast_models_adapter_reaches_a_diffusion_models_base() {
    let (tmp, data) = temp_sprites();
    let fast = tmp.path().join("fast");
    train(&tiny_run(ModelKind::Fast, &data, 1), &fast, &mut |_, _| {}).unwrap();
    let (fast_cfg, _) = spritedx::train::run::load_model_dir(&fast.join("model")).unwrap();
    let mut residual = tiny_run(ModelKind::Diffusion, &data, 1);
    residual.model = residual.model.clone().with_base(fast_cfg).unwrap();
    residual.base = Some(fast.join("model"));
    let diffusion = tmp.path().join("diffusion");
    train(&residual, &diffusion, &mut |_, _| {}).unwrap();
    // The fast model fine-tuned on a style: its adapter holds its head, which the
    // diffusion model has only in its base.
    let mut tune = tiny_run(ModelKind::Fast, &data, 2);
    tune.init = Some(fast.join("model"));
    tune.train = TrainPart::Adapter;
    tune.selection.only_categories = vec!["gui".into()];
    let tuned = tmp.path().join("tuned");
    train(&tune, &tuned, &mut |_, _| {}).unwrap();
    let adapter = tuned.join("model/model.safetensors");

    let input = candle_core::Tensor::randn(0f32, 1.0, (1, 16, 8, 8), &candle_core::Device::Cpu).unwrap();
    let values = |t: candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let tuned_fast = LoadedPixelRestorer::load(&fast.join("model"), std::slice::from_ref(&adapter)).unwrap();
    let expected = values(tuned_fast.model.predict(&input, &[0]).unwrap());
    let base_of = |adapters: &[std::path::PathBuf]| {
        let model = LoadedPixelRestorer::load(&diffusion.join("model"), adapters).unwrap();
        values(model.model.base_prediction(&input).unwrap().expect("a base"))
    };
    assert!(base_of(&[]) != expected, "the adapter changed nothing to test");
    assert!(base_of(std::slice::from_ref(&adapter)) == expected, "the base did not take the fast model's adapter");
    // With the diffusion model's own adapter beside it, each goes where it belongs.
    let mut own = tiny_run(ModelKind::Diffusion, &data, 1);
    own.model = residual.model.clone();
    own.init = Some(diffusion.join("model"));
    own.train = TrainPart::Adapter;
    let own_dir = tmp.path().join("own");
    train(&own, &own_dir, &mut |_, _| {}).unwrap();
    let own_adapter = own_dir.join("model/model.safetensors");
    assert!(base_of(std::slice::from_ref(&own_adapter)) == base_of(&[]), "the diffusion model's own adapter reached its base");
    assert!(base_of(&[own_adapter, adapter]) == expected);
}

#[test]
fn the_prior_trains_the_unet_alone_and_the_adapter_then_conditions_it() {
    let (tmp, data) = temp_sprites();
    let mut prior_cfg = tiny_run(ModelKind::Diffusion, &data, 2);
    prior_cfg.train = TrainPart::Prior;
    let prior = tmp.path().join("prior");
    train(&prior_cfg, &prior, &mut |_, _| {}).unwrap();
    let mut one_step = prior_cfg.clone();
    one_step.steps = 1;
    let early = tmp.path().join("prior-1");
    train(&one_step, &early, &mut |_, _| {}).unwrap();
    // Between step 1 and 2 only the UNet outside SPADE moved; the rest kept its initial
    // values, and every tensor is exported.
    let (after_two, after_one) = (model_values(&prior), model_values(&early));
    assert_eq!(after_two.len(), after_one.len());
    assert!(after_two.iter().any(|(k, _)| k.starts_with("encoder.")) && after_two.iter().any(|(k, _)| k.contains("spade")));
    let mut moved_unet = 0;
    for ((name, a), (_, b)) in after_two.iter().zip(&after_one) {
        let trained = name.starts_with("unet.") && !name.contains("spade");
        if !trained {
            assert!(a == b, "{name} changed while training the prior");
        } else if a != b {
            moved_unet += 1;
        }
    }
    assert!(moved_unet > 0, "the prior trained nothing");
    assert!(!prior.join("val.jsonl").exists(), "a prior cannot restore, so it is not validated");

    // Second stage: the adapter on pairs, UNet frozen.
    let mut adapter_cfg = tiny_run(ModelKind::Diffusion, &data, 1);
    adapter_cfg.init = Some(prior.join("model"));
    adapter_cfg.train = TrainPart::Adapter;
    let adapter = tmp.path().join("adapter");
    train(&adapter_cfg, &adapter, &mut |_, _| {}).unwrap();
    let tuned: std::collections::HashMap<String, Vec<f32>> = model_values(&adapter).into_iter().collect();
    assert!(tuned.keys().all(|k| spritedx::train::run::is_adapter_var(k)));
    let spade = after_two.iter().find(|(k, _)| k.contains("spade") && k.ends_with("weight")).unwrap();
    assert!(tuned[&spade.0] != spade.1, "{} did not train in the adapter stage", spade.0);

    // Only a diffusion model without a base has a prior.
    let mut fast_prior = tiny_run(ModelKind::Fast, &data, 1);
    fast_prior.train = TrainPart::Prior;
    let err = train(&fast_prior, &tmp.path().join("fast-prior"), &mut |_, _| {}).unwrap_err();
    assert!(format!("{err:#}").contains("prior"), "{err:#}");
}

#[test]
fn trained_models_restore_at_true_resolution_and_repeat() {
    let (tmp, data) = temp_sprites();
    for kind in [ModelKind::Fast, ModelKind::Diffusion] {
        let run = tmp.path().join(format!("{kind:?}"));
        train(&tiny_run(kind, &data, 1), &run, &mut |_, _| {}).unwrap();
        let model = LoadedPixelRestorer::load(&run.join("model"), &[]).unwrap();
        let sprite = image::open(data.join("dcss_mon_00.png")).unwrap().to_rgba8();
        // 13x13 cells at 3 px: not a multiple of the networks' size step, so padding is used.
        let crop = imageops::crop_imm(&sprite, 0, 0, 13, 13).to_image();
        let big = imageops::resize(&crop, 39, 39, imageops::FilterType::Nearest);
        let a = model.restore(&big, &Default::default()).unwrap();
        let b = model.restore(&big, &Default::default()).unwrap();
        assert_eq!(a.image.dimensions(), (13, 13), "{kind:?}");
        assert_eq!(a.image, b.image, "{kind:?}: same seed, same result");
        assert!(a.image.pixels().all(|p| p[3] == 0 || p[3] == 255), "alpha is binarised");
    }
}


#[test]
fn a_residual_diffusion_model_keeps_its_base_frozen_and_starts_from_its_encoder() {
    let (tmp, data) = temp_sprites();
    let base = tmp.path().join("base");
    train(&tiny_run(ModelKind::Fast, &data, 2), &base, &mut |_, _| {}).unwrap();
    let base_model = base.join("model");
    let (base_cfg, base_tensors) = spritedx::train::run::load_model_dir(&base_model).unwrap();

    let mut cfg = tiny_run(ModelKind::Diffusion, &data, 2);
    cfg.model = cfg.model.clone().with_base(base_cfg.clone()).unwrap();
    cfg.model.residual_scale = 4.0;
    cfg.base = Some(base_model.clone());
    // Stopped after step 1 and resumed, then compared with a straight run below.
    let mut first = cfg.clone();
    first.steps = 1;
    first.checkpoint_every = 1;
    let split = tmp.path().join("split");
    train(&first, &split, &mut |_, _| {}).unwrap();
    // Starting the encoder from the base: before any step it is the base's encoder.
    let (after_one, _) = spritedx::train::checkpoint::load(&split.join("checkpoint.safetensors"), &candle_core::Device::Cpu).unwrap();
    train(&cfg, &split, &mut |_, _| {}).unwrap();
    let run = tmp.path().join("residual");
    train(&cfg, &run, &mut |_, _| {}).unwrap();
    assert!(model_values(&split) == model_values(&run), "resumed residual run differs");

    let (tensors, _) = spritedx::train::checkpoint::load(&run.join("model/model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let values = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (name, t) in &base_tensors {
        let own = tensors.get(&format!("base.{name}")).unwrap_or_else(|| panic!("base.{name} missing"));
        assert!(values(own) == values(t), "base.{name} changed in training");
    }
    // The encoder trained away from the base's, which it started from (checked one step in,
    // where it can differ only by one AdamW step of at most about lr per weight).
    let name = base_tensors.keys().find(|k| k.starts_with("encoder.") && k.ends_with("weight")).unwrap();
    let moved: Vec<f32> = values(&tensors[name.as_str()]).iter().zip(values(&base_tensors[name])).map(|(a, b)| (a - b).abs()).collect();
    assert!(moved.iter().any(|&d| d > 0.0), "{name} did not train");
    let one_step = values(&after_one[&format!("model.{name}")]);
    let lr = cfg.optim.lr as f32;
    let start_gap = one_step.iter().zip(values(&base_tensors[name])).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(start_gap <= 1.5 * lr, "{name} did not start from the base: {start_gap} after one step of lr {lr}");

    // It restores at true resolution through the CLI's loader.
    let model = LoadedPixelRestorer::load(&run.join("model"), &[]).unwrap();
    assert_eq!(model.config.base.as_deref(), Some(&base_cfg));
    let sprite = image::open(data.join("dcss_mon_00.png")).unwrap().to_rgba8();
    let big = imageops::resize(&sprite, 48, 48, imageops::FilterType::Nearest);
    assert_eq!(model.restore(&big, &Default::default()).unwrap().image.dimensions(), (16, 16));

    // Corrections below min_correction are dropped: above every possible change, the
    // sample is the base's prediction itself.
    let mut model = model;
    let spritedx::pixel_restorer::PixelRestorer::Diffusion(diffusion) = &mut model.model else { panic!("a diffusion model") };
    let input = candle_core::Tensor::randn(0f32, 1.0, (1, 16, 8, 8), &candle_core::Device::Cpu).unwrap();
    let mut sampling = model.config.sampling.clone();
    sampling.min_correction = 10.0;
    diffusion.set_sampling(sampling);
    let sampled = diffusion.sample(&input, &[3]).unwrap();
    let base_only = diffusion.base_prediction(&input).unwrap().unwrap().clamp(-1.0, 1.0).unwrap();
    let d = (sampled - base_only).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(d, 0.0, "corrections below the threshold changed the base");

    // A base of the wrong kind is refused.
    let err = tiny(ModelKind::Diffusion).with_base(tiny(ModelKind::Diffusion)).unwrap_err();
    assert!(format!("{err:#}").contains("fast"), "{err:#}");

    // Re-basing (`init` and `base` together): the frozen fast model becomes the new base,
    // while the encoder trains on from the residual model's own, not the new base's.
    let other_base = tmp.path().join("other-base");
    let mut other_run = tiny_run(ModelKind::Fast, &data, 2);
    other_run.seed = 6;
    train(&other_run, &other_base, &mut |_, _| {}).unwrap();
    let (_, other_tensors) = spritedx::train::run::load_model_dir(&other_base.join("model")).unwrap();
    let mut rebase = cfg.clone();
    rebase.steps = 1;
    rebase.init = Some(run.join("model"));
    rebase.base = Some(other_base.join("model"));
    let rebased = tmp.path().join("rebased");
    train(&rebase, &rebased, &mut |_, _| {}).unwrap();
    let (rebased_tensors, _) = spritedx::train::checkpoint::load(&rebased.join("model/model.safetensors"), &candle_core::Device::Cpu).unwrap();
    for (name, t) in &other_tensors {
        assert!(values(&rebased_tensors[&format!("base.{name}")]) == values(t), "base.{name} is not the new base's");
    }
    let from_init = values(&tensors[name.as_str()]);
    assert!(from_init != values(&other_tensors[name]), "the two bases must differ for this check");
    let gap = values(&rebased_tensors[name.as_str()]).iter().zip(&from_init).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(gap <= 1.5 * lr, "{name} did not start from the re-based model's own encoder: {gap} after one step of lr {lr}");
}

#[test]
fn several_samples_per_input_are_averaged() {
    use spritedx::pixel_restorer::PixelRestorer;
    let (tmp, data) = temp_sprites();
    let run = tmp.path().join("run");
    train(&tiny_run(ModelKind::Diffusion, &data, 1), &run, &mut |_, _| {}).unwrap();
    let mut model = LoadedPixelRestorer::load(&run.join("model"), &[]).unwrap();
    let PixelRestorer::Diffusion(diffusion) = &mut model.model else { panic!("a diffusion model") };
    let input = candle_core::Tensor::randn(0f32, 1.0, (1, 16, 8, 8), &candle_core::Device::Cpu).unwrap();
    let mut sampling = model.config.sampling.clone();
    // Two inputs sampled once each with the seeds that two samples of one input get.
    let seeds = [spritedx::rng::derive_seed(9, &[0]), spritedx::rng::derive_seed(9, &[1])];
    let twice = candle_core::Tensor::cat(&[&input, &input], 0).unwrap();
    let singles = diffusion.sample(&twice, &seeds).unwrap().mean_keepdim(0).unwrap();
    sampling.samples = 2;
    diffusion.set_sampling(sampling);
    let averaged = diffusion.sample(&input, &[9]).unwrap();
    let d = (averaged - singles).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d < 1e-5, "the average of two samples differs by {d}");
}

#[test]
fn fitted_cells_are_the_fast_models_anchor_and_train_end_to_end() {
    use spritedx::pixel_restorer::{anchor_colours, FastRestorer};
    let cfg = tiny(ModelKind::Fast).with_fitted_cells();
    assert_eq!(cfg.encoder.in_channels, 20);
    // With all weights zero the residual is zero: the prediction is the fitted cells.
    let device = candle_core::Device::Cpu;
    let zero = FastRestorer::new(candle_nn::VarBuilder::zeros(candle_core::DType::F32, &device), &cfg).unwrap();
    let input = candle_core::Tensor::randn(0f32, 1.0, (2, 20, 8, 8), &device).unwrap();
    let out = zero.forward(&input).unwrap();
    let fitted = input.narrow(1, 16, 4).unwrap();
    let anchor = (anchor_colours(&input, 2, true).unwrap() - &fitted).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(anchor, 0.0, "the anchor is the fitted channels");
    let gap = (out - &fitted).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(gap, 0.0);
    // An encoder that does not take the fitted channels is refused.
    let mut wrong = cfg.clone();
    wrong.encoder.in_channels = 16;
    let err = FastRestorer::new(candle_nn::VarBuilder::zeros(candle_core::DType::F32, &device), &wrong).err().unwrap();
    assert!(format!("{err}").contains("fitted cells"), "{err}");

    // Trained, and refined by a residual diffusion model, which takes its base's input.
    let (tmp, data) = temp_sprites();
    let mut run = tiny_run(ModelKind::Fast, &data, 2);
    run.model = cfg.clone();
    let fast = tmp.path().join("fast");
    train(&run, &fast, &mut |_, _| {}).unwrap();
    let mut diffusion = tiny_run(ModelKind::Diffusion, &data, 1);
    diffusion.model = diffusion.model.clone().with_base(cfg.clone()).unwrap();
    assert!(diffusion.model.fitted_cells && diffusion.model.encoder.in_channels == 20);
    diffusion.base = Some(fast.join("model"));
    let refined = tmp.path().join("diffusion");
    train(&diffusion, &refined, &mut |_, _| {}).unwrap();
    // Both restore a bicubic upscale, whose cells the decoder deconvolves, at true size.
    let sprite = image::open(data.join("dcss_mon_00.png")).unwrap().to_rgba8();
    let big = imageops::resize(&sprite, 48, 48, imageops::FilterType::CatmullRom);
    for dir in [&fast, &refined] {
        let model = LoadedPixelRestorer::load(&dir.join("model"), &[]).unwrap();
        assert!(model.config.fitted_cells);
        assert_eq!(model.restore(&big, &Default::default()).unwrap().image.dimensions(), (16, 16), "{}", dir.display());
    }
}

//! Integration tests of the `spritedx` binary on files the tests make.

use image::{Rgba, RgbaImage};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn spritedx(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spritedx")).args(args).output().expect("the binary runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A 16x16 sprite with a transparent margin, a few colours and an outline.
fn sprite(seed: u32) -> RgbaImage {
    let colours = [[30u8, 30, 40], [200, 60, 50], [240, 220, 90], [60, 140, 220], [90, 200, 110]];
    RgbaImage::from_fn(16, 16, |x, y| {
        if !(2..14).contains(&x) || !(2..14).contains(&y) {
            return Rgba([0, 0, 0, 0]);
        }
        if x == 2 || y == 2 || x == 13 || y == 13 {
            let [r, g, b] = colours[0];
            return Rgba([r, g, b, 255]);
        }
        let k = (spritedx::rng::splitmix64(u64::from(seed * 1000 + (x / 2) * 17 + (y / 2) * 131)) % 4 + 1) as usize;
        let [r, g, b] = colours[k];
        Rgba([r, g, b, 255])
    })
}

fn write_sprites(dir: &Path, n: u32) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        sprite(i).save(dir.join(format!("sprite_{i}.png"))).unwrap();
    }
}

fn upscale(img: &RgbaImage, k: u32) -> RgbaImage {
    image::imageops::resize(img, img.width() * k, img.height() * k, image::imageops::FilterType::Nearest)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn degrade_is_deterministic_and_eval_scores_the_baseline() {
    let tmp = tempfile::tempdir().unwrap();
    let sprites = tmp.path().join("sprites");
    write_sprites(&sprites, 3);
    let run = |out: &Path| {
        let o = spritedx(&[
            "degrade", "--input", sprites.to_str().unwrap(), "--output", out.to_str().unwrap(),
            "--per-image", "2", "--preset", "clean,seed,ai", "--seed", "7",
        ]);
        assert!(o.status.success(), "{}", text(&o));
    };
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    run(&a);
    run(&b);
    let manifest = std::fs::read_to_string(a.join("manifest.jsonl")).unwrap();
    assert_eq!(manifest.lines().count(), 3 * 2 * 3);
    let (fa, fb) = (files_under(&a), files_under(&b));
    assert_eq!(fa.len(), 1 + 2 * 18, "manifest + degraded + clean");
    for (x, y) in fa.iter().zip(&fb) {
        assert_eq!(std::fs::read(x).unwrap(), std::fs::read(y).unwrap(), "{} differs between runs", x.display());
    }

    let sheet = tmp.path().join("sheet.png");
    let json = tmp.path().join("eval.json");
    let o = spritedx(&[
        "eval", "--pairs", a.to_str().unwrap(), "--model", "nearest-downscale",
        "--json", json.to_str().unwrap(), "--sheet", sheet.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    for preset in ["clean", "seed", "ai"] {
        assert!(out.contains(&format!("preset {preset}")), "{out}");
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let exact = |preset: &str| {
        report["aggregates"].as_array().unwrap().iter().find(|a| a["preset"] == preset).unwrap()["exact_rate"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(exact("clean"), 1.0, "nearest-downscale is exact on clean nearest upscales");
    assert!(exact("seed") < 1.0, "and not on blurred, noisy ones");
    let sheet_img = image::open(&sheet).unwrap();
    assert!(sheet_img.width() > 100 && sheet_img.height() > 100);

    // Spare threads speed one restore up (the decoder scores its candidates on them) and
    // change none of its results.
    let scores = |extra: &[&str]| {
        let json = tmp.path().join(format!("snap{}.json", extra.join("")));
        let mut args = vec!["eval", "--pairs", a.to_str().unwrap(), "--model", "snap", "--json", json.to_str().unwrap()];
        args.extend(extra);
        let o = spritedx(&args);
        assert!(o.status.success(), "{}", text(&o));
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        report["images"].as_array().unwrap().iter().map(|i| (i["degraded"].to_string(), i["scores"].to_string())).collect::<Vec<_>>()
    };
    let alone = scores(&[]);
    assert_eq!(alone.len(), 18);
    assert_eq!(scores(&["--threads", "2"]), alone);
    assert_eq!(scores(&["--jobs", "2"]), alone);
}

#[test]
fn restore_recovers_a_nearest_upscale_and_keeps_going_past_bad_files() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = tmp.path().join("in");
    std::fs::create_dir_all(&inputs).unwrap();
    let clean = sprite(3);
    upscale(&clean, 5).save(inputs.join("good.png")).unwrap();
    std::fs::write(inputs.join("broken.png"), b"not a png at all").unwrap();
    let out = tmp.path().join("out");
    let report = tmp.path().join("report.json");
    let o = spritedx(&[
        "restore", inputs.to_str().unwrap(), "-o", out.to_str().unwrap(), "--preview", "4",
        "--report", report.to_str().unwrap(),
    ]);
    assert!(!o.status.success(), "a bad file makes the exit status non-zero");
    assert!(text(&o).contains("broken.png"), "{}", text(&o));
    let restored = image::open(out.join("good.png")).unwrap().to_rgba8();
    assert_eq!(restored, clean, "5x nearest upscale restores exactly");
    assert!(out.join("good.preview4x.png").exists());
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r.as_array().unwrap().len(), 2);
}

#[test]
fn restore_refuses_to_overwrite_its_input() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("a.png");
    upscale(&sprite(1), 4).save(&input).unwrap();
    let before = std::fs::read(&input).unwrap();
    let o = spritedx(&["restore", input.to_str().unwrap(), "-o", input.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("overwrite"), "{}", text(&o));
    assert_eq!(std::fs::read(&input).unwrap(), before);
}

#[test]
fn bad_arguments_fail_with_a_clear_message() {
    let o = spritedx(&["eval", "--pairs", "/nonexistent/pairs", "--model", "nearest-downscale"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("manifest.jsonl"), "{}", text(&o));
    let o = spritedx(&["eval", "--pairs", ".", "--model", "no-such-model"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("unknown model"), "{}", text(&o));
    // A wrong adapter file name is refused before any training, not after it.
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let o = spritedx(&["train", "--model", "fast", "--out", run.to_str().unwrap(), "--data", "/nonexistent/sprites", "--adapter-out", "style.bin"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--adapter-out must end in .safetensors"), "{}", text(&o));
    assert!(!run.exists(), "a run was started");
}

#[test]
fn restore_options_palette_colours_background_and_grid_overrides() {
    let tmp = tempfile::tempdir().unwrap();
    let clean = sprite(5);
    let input = tmp.path().join("in.png");
    upscale(&clean, 4).save(&input).unwrap();
    let out = |name: &str| tmp.path().join(name);
    let run = |args: &[&str]| {
        let o = spritedx(args);
        assert!(o.status.success(), "{:?}: {}", args, text(&o));
    };
    let colours = |p: &Path| {
        let img = image::open(p).unwrap().to_rgba8();
        let mut set: Vec<[u8; 4]> = img.pixels().filter(|p| p[3] > 0).map(|p| p.0).collect();
        set.sort();
        set.dedup();
        set
    };

    // --colors 2: at most two opaque colours.
    run(&["restore", input.to_str().unwrap(), "-o", out("two.png").to_str().unwrap(), "--colors", "2"]);
    assert!(colours(&out("two.png")).len() <= 2);

    // --palette: every opaque pixel is one of the palette's colours.
    let hex = tmp.path().join("p.hex");
    std::fs::write(&hex, "000000\nffffff\nff0000\n").unwrap();
    run(&["restore", input.to_str().unwrap(), "-o", out("pal.png").to_str().unwrap(), "--palette", hex.to_str().unwrap()]);
    for c in colours(&out("pal.png")) {
        assert!([[0, 0, 0, 255], [255, 255, 255, 255], [255, 0, 0, 255]].contains(&c), "{c:?}");
    }

    // --cell-size and --grid give the same exact result as detection.
    run(&["restore", input.to_str().unwrap(), "-o", out("cs.png").to_str().unwrap(), "--cell-size", "4"]);
    run(&["restore", input.to_str().unwrap(), "-o", out("g.png").to_str().unwrap(), "--grid", "16x16"]);
    assert_eq!(image::open(out("cs.png")).unwrap().to_rgba8(), clean);
    assert_eq!(image::open(out("g.png")).unwrap().to_rgba8(), clean);

    // --remove-background: a sprite flattened onto white gets its transparency back.
    let flat = RgbaImage::from_fn(16, 16, |x, y| {
        let p = clean.get_pixel(x, y);
        if p[3] == 0 { Rgba([255, 255, 255, 255]) } else { *p }
    });
    let flat_in = tmp.path().join("flat.png");
    upscale(&flat, 4).save(&flat_in).unwrap();
    run(&["restore", flat_in.to_str().unwrap(), "-o", out("nobg.png").to_str().unwrap(), "--remove-background"]);
    assert_eq!(image::open(out("nobg.png")).unwrap().to_rgba8(), clean);

    // The report records the grid and palette.
    let report = tmp.path().join("r.json");
    run(&["restore", input.to_str().unwrap(), "-o", out("rep.png").to_str().unwrap(), "--report", report.to_str().unwrap()]);
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let entry = &r[0]["restored"];
    assert_eq!(entry["grid"]["x_lines"].as_array().unwrap().len(), 17);
    assert!((entry["grid"]["cell_width"].as_f64().unwrap() - 4.0).abs() < 0.05);
    assert!(!entry["palette"].as_array().unwrap().is_empty());

    // Bad option values fail with a message.
    let o = spritedx(&["restore", input.to_str().unwrap(), "-o", out("x.png").to_str().unwrap(), "--grid", "ax3"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("cell count"), "{}", text(&o));
}

#[test]
fn restore_runs_a_tiny_random_stablesr_model_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny-stablesr");
    spritedx::stablesr::pipeline::write_tiny_random_model(&model, 0).unwrap();
    let input = tmp.path().join("in.png");
    upscale(&sprite(3), 3).save(&input).unwrap();
    let out = tmp.path().join("out.png");
    let o = spritedx(&[
        "restore",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--model",
        "diffusion",
        "--weights",
        model.to_str().unwrap(),
        "--steps",
        "2",
        "--sampler",
        "dpm++2m",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let restored = image::open(&out).unwrap().to_rgba8();
    assert_eq!(restored.dimensions(), sprite(3).dimensions());
    // The random model's colours are arbitrary; alpha comes through the decoder binarised
    // and equals the sprite's.
    for (r, s) in restored.pixels().zip(sprite(3).pixels()) {
        assert!(r[3] == 0 || r[3] == 255);
        assert_eq!(r[3] == 0, s[3] < 128);
    }
    // A missing key in the weights is named, and nothing is written.
    let broken = tmp.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    for f in ["config.json", "vqgan_cfw.safetensors"] {
        std::fs::copy(model.join(f), broken.join(f)).unwrap();
    }
    let (mut tensors, _) = spritedx::train::checkpoint::load(&model.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let key = tensors.keys().find(|k| k.starts_with("model.diffusion_model.out.")).unwrap().clone();
    tensors.remove(&key);
    candle_core::safetensors::save(&tensors, broken.join("model.safetensors")).unwrap();
    let out2 = tmp.path().join("out2.png");
    let o = spritedx(&["restore", input.to_str().unwrap(), "-o", out2.to_str().unwrap(), "--model", "diffusion", "--weights", broken.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains(&key), "{}", text(&o));
    assert!(!out2.exists());
}

#[test]
fn restore_undoes_another_tools_bicubic_upscale() {
    // An opaque sprite resized 4x by the `image` crate's Catmull-Rom filter (a bicubic made
    // by another tool than ours): no screen pixel shows its cell's colour, yet every cell
    // comes back within 8 of 255, and the report names the kernel that was undone.
    let tmp = tempfile::tempdir().unwrap();
    let background = Rgba([120, 90, 160, 255]);
    let clean = RgbaImage::from_fn(16, 16, |x, y| match sprite(5).get_pixel(x, y) {
        p if p[3] == 0 => background,
        p => *p,
    });
    let input = tmp.path().join("bicubic.png");
    image::imageops::resize(&clean, 64, 64, image::imageops::FilterType::CatmullRom).save(&input).unwrap();
    let (out, report) = (tmp.path().join("out.png"), tmp.path().join("r.json"));
    let o = spritedx(&["restore", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "--report", report.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let restored = image::open(&out).unwrap().to_rgba8();
    assert_eq!(restored.dimensions(), (16, 16));
    for (x, y, p) in restored.enumerate_pixels() {
        let want = clean.get_pixel(x, y);
        assert!((0..4).all(|c| p[c].abs_diff(want[c]) <= 8), "({x}, {y}): {p:?}, want {want:?}");
    }
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r[0]["restored"]["blur"]["kernel"], "bicubic", "{}", r[0]["restored"]["blur"]);
}

//! Weight loading from every source: the StableSR fixture checkpoint against its
//! safetensors twin, conversion, strict key checks and the Hugging Face cache offline.
//! Nothing here touches the network: hub tests are offline over a cache the test lays out,
//! with an endpoint on a closed local port besides.

use candle_core::{DType, Device, Module, Tensor};
use spritedx::nn::shapes::{ShapeMap, ShapeRecorder};
use spritedx::weights::{
    check_shapes, checked_var_builder, convert, load_tensors, resolve, ConvertOptions, HubOptions,
    KeyMismatch, KeyRules, OutputDType, TensorFile, WeightSource, DEFAULT_FILES,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/stablesr")
        .join(name)
}

/// A tensor's elements as little-endian bytes, for bit-exact comparisons.
fn raw_bytes(t: &Tensor) -> Vec<u8> {
    let t = t.flatten_all().unwrap();
    match t.dtype() {
        DType::F32 => t
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F16 => t
            .to_vec1::<half::f16>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::BF16 => t
            .to_vec1::<half::bf16>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F64 => t
            .to_vec1::<f64>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::I64 => t
            .to_vec1::<i64>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::U8 => t.to_vec1::<u8>().unwrap(),
        other => panic!("unexpected dtype {other:?}"),
    }
}

/// Same keys, and per key the same dtype, shape and bits.
fn assert_identical(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) {
    let mut keys_a: Vec<&String> = a.keys().collect();
    let mut keys_b: Vec<&String> = b.keys().collect();
    keys_a.sort();
    keys_b.sort();
    assert_eq!(keys_a, keys_b);
    for (key, ta) in a {
        let tb = &b[key];
        assert_eq!(ta.dtype(), tb.dtype(), "{key}");
        assert_eq!(ta.dims(), tb.dims(), "{key}");
        assert!(raw_bytes(ta) == raw_bytes(tb), "{key}: values differ");
    }
}

fn offline_hub(cache_dir: &Path) -> HubOptions {
    HubOptions {
        cache_dir: cache_dir.to_path_buf(),
        offline: true,
        token: None,
        // Port 9 (discard) on loopback: were anything to go online, it would fail here.
        endpoint: "http://127.0.0.1:9".into(),
    }
}

fn err_text(e: anyhow::Error) -> String {
    format!("{e:#}")
}

// ----- loading -----------------------------------------------------------------------

#[test]
fn lightning_ckpt_loads_bit_identical_to_the_safetensors() {
    let from_ckpt = load_tensors(&fixture("tiny_stablesr.ckpt")).unwrap();
    let from_safetensors = load_tensors(&fixture("tiny_weights.safetensors")).unwrap();
    assert!(from_ckpt.len() > 100, "{} tensors", from_ckpt.len());
    assert!(from_ckpt
        .keys()
        .any(|k| k.starts_with("model.diffusion_model.")));
    assert!(from_ckpt
        .keys()
        .any(|k| k.starts_with("structcond_stage_model.")));
    // Only `state_dict` is read: epoch, callbacks, optimizer states are not tensors here.
    assert_identical(&from_ckpt, &from_safetensors);
    let shapes = TensorFile::open(&fixture("tiny_stablesr.ckpt"))
        .unwrap()
        .shapes()
        .unwrap();
    assert_eq!(shapes.len(), from_ckpt.len());
}

/// Bitwise CRC-32 (IEEE), as zip stores it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A zip archive holding the given files uncompressed, as `torch.save` lays them out.
fn stored_zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in files {
        let offset = out.len() as u32;
        let fields = |sig: u32, central: bool| {
            let mut h = sig.to_le_bytes().to_vec();
            if central {
                h.extend(20u16.to_le_bytes()); // version made by
            }
            h.extend(20u16.to_le_bytes()); // version needed
            h.extend([0u8; 6]); // flags, method (stored), time
            h.extend(0u16.to_le_bytes()); // date
            h.extend(crc32(data).to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((name.len() as u16).to_le_bytes());
            h.extend(0u16.to_le_bytes()); // extra
            if central {
                h.extend([0u8; 8]); // comment, disk, internal attributes
                h.extend(0u32.to_le_bytes()); // external attributes
                h.extend(offset.to_le_bytes());
            }
            h.extend(name.as_bytes());
            h
        };
        out.extend(fields(0x0403_4b50, false));
        out.extend(*data);
        central.extend(fields(0x0201_4b50, true));
    }
    let central_offset = out.len() as u32;
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend((files.len() as u16).to_le_bytes());
    out.extend((files.len() as u16).to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(central_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

#[test]
fn a_pickle_that_would_run_a_command_is_only_read() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("executed");
    // Unpickled by Python this calls os.system("touch <marker>"); our reader must not.
    let command = format!("touch {}", marker.display());
    let mut pickle = b"\x80\x02cos\nsystem\nX".to_vec();
    pickle.extend((command.len() as u32).to_le_bytes());
    pickle.extend(command.as_bytes());
    pickle.extend(b"\x85R.");
    let ckpt = dir.path().join("evil.ckpt");
    std::fs::write(&ckpt, stored_zip(&[("evil/data.pkl", &pickle)])).unwrap();
    let err = err_text(load_tensors(&ckpt).unwrap_err());
    assert!(err.contains("holds no tensors"), "{err}");
    assert!(!marker.exists(), "the pickle was executed");
}

#[test]
fn unreadable_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.ckpt");
    std::fs::write(&text, "these are not weights").unwrap();
    let err = err_text(load_tensors(&text).unwrap_err());
    assert!(
        err.contains("notes.ckpt") && err.contains("neither a .safetensors"),
        "{err}"
    );

    let legacy = dir.path().join("old.pth");
    std::fs::write(&legacy, b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.").unwrap();
    let err = err_text(load_tensors(&legacy).unwrap_err());
    assert!(err.contains("legacy"), "{err}");

    let bytes = std::fs::read(fixture("tiny_weights.safetensors")).unwrap();
    let truncated = dir.path().join("cut.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = err_text(load_tensors(&truncated).unwrap_err());
    assert!(
        err.contains("cut.safetensors") && err.contains("not a valid .safetensors"),
        "{err}"
    );

    let empty_zip = dir.path().join("empty.ckpt");
    std::fs::write(&empty_zip, stored_zip(&[])).unwrap();
    let err = err_text(load_tensors(&empty_zip).unwrap_err());
    assert!(err.contains("holds no tensors"), "{err}");

    let err = err_text(load_tensors(&dir.path().join("missing.ckpt")).unwrap_err());
    assert!(err.contains("missing.ckpt"), "{err}");
}

// ----- conversion --------------------------------------------------------------------

#[test]
fn convert_to_f32_round_trips_bit_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sub/out.safetensors");
    let summary = convert(
        &fixture("tiny_stablesr.ckpt"),
        &out,
        &ConvertOptions::default(),
    )
    .unwrap();
    let original = load_tensors(&fixture("tiny_weights.safetensors")).unwrap();
    assert_eq!(summary.written, original.len());
    assert_eq!(summary.skipped, 0);
    assert_eq!(
        summary.parameters,
        original.values().map(Tensor::elem_count).sum::<usize>()
    );
    assert_identical(&load_tensors(&out).unwrap(), &original);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("sub")).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
}

#[test]
fn convert_to_f16_is_within_f16_rounding() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("half.safetensors");
    let options = ConvertOptions {
        dtype: OutputDType::F16,
        keep_prefixes: vec![],
    };
    convert(&fixture("tiny_stablesr.ckpt"), &out, &options).unwrap();
    let half = load_tensors(&out).unwrap();
    let original = load_tensors(&fixture("tiny_weights.safetensors")).unwrap();
    assert_eq!(half.len(), original.len());
    // Round to nearest f16: error at most half a unit in the last place, 2^-11 relative
    // for normal values, and half the subnormal spacing (2^-25) near zero.
    let mut max_relative = 0f64;
    for (key, t) in &original {
        let h = &half[key];
        assert_eq!(h.dtype(), DType::F16, "{key}");
        assert_eq!(h.dims(), t.dims(), "{key}");
        let exact = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let rounded = h
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (x, r) in exact.iter().zip(&rounded) {
            let err = f64::from((x - r).abs());
            let bound = (f64::from(x.abs()) * 2f64.powi(-11)).max(2f64.powi(-25));
            assert!(err <= bound, "{key}: {x} -> {r}");
            if x.abs() > 1e-4 {
                max_relative = max_relative.max(err / f64::from(x.abs()));
            }
        }
    }
    eprintln!("f16 conversion: max relative error {max_relative:.3e} (bound 4.883e-4)");
    assert!(max_relative > 0.0, "some values must have been rounded");
}

#[test]
fn convert_keeps_only_the_given_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("enc.safetensors");
    let options = ConvertOptions {
        dtype: OutputDType::F32,
        keep_prefixes: vec!["structcond_stage_model.".into()],
    };
    let summary = convert(&fixture("tiny_stablesr.ckpt"), &out, &options).unwrap();
    let written = load_tensors(&out).unwrap();
    let original = load_tensors(&fixture("tiny_weights.safetensors")).unwrap();
    let expected = original
        .keys()
        .filter(|k| k.starts_with("structcond_stage_model."))
        .count();
    assert_eq!(written.len(), expected);
    assert!(written
        .keys()
        .all(|k| k.starts_with("structcond_stage_model.")));
    assert_eq!(summary.skipped, original.len() - expected);

    let nothing = ConvertOptions {
        dtype: OutputDType::F32,
        keep_prefixes: vec!["nope".into()],
    };
    let err = err_text(convert(&fixture("tiny_stablesr.ckpt"), &out, &nothing).unwrap_err());
    assert!(err.contains("nope") && err.contains("model"), "{err}");
}

#[test]
fn convert_refuses_to_overwrite_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("w.safetensors");
    std::fs::copy(fixture("tiny_weights.safetensors"), &input).unwrap();
    let before = std::fs::read(&input).unwrap();
    let err = err_text(convert(&input, &input, &ConvertOptions::default()).unwrap_err());
    assert!(err.contains("is the input"), "{err}");
    // The same file through another spelling of its path.
    let dotted = dir.path().join(".").join("w.safetensors");
    assert!(convert(&input, &dotted, &ConvertOptions::default()).is_err());
    #[cfg(unix)]
    {
        let link = dir.path().join("link.safetensors");
        std::os::unix::fs::symlink(&input, &link).unwrap();
        let err = err_text(convert(&input, &link, &ConvertOptions::default()).unwrap_err());
        assert!(err.contains("is the input"), "{err}");
    }
    assert!(
        std::fs::read(&input).unwrap() == before,
        "the input is untouched"
    );
    let err = err_text(
        convert(
            &input,
            &dir.path().join("out.ckpt"),
            &ConvertOptions::default(),
        )
        .unwrap_err(),
    );
    assert!(err.contains(".safetensors"), "{err}");
}

fn spritedx(args: &[&str], hf_home: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_spritedx"))
        .args(args)
        .env("HF_HOME", hf_home)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .output()
        .expect("the binary runs")
}

#[test]
fn convert_command_writes_f16_subset_and_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("copy.ckpt");
    std::fs::copy(fixture("tiny_stablesr.ckpt"), &input).unwrap();
    let out = dir.path().join("unet.safetensors");
    let (input_s, out_s) = (input.to_str().unwrap(), out.to_str().unwrap());
    let run = spritedx(
        &[
            "convert",
            input_s,
            "-o",
            out_s,
            "--f16",
            "--prefix",
            "model.diffusion_model",
        ],
        dir.path(),
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("wrote") && stdout.contains("f16"),
        "{stdout}"
    );
    let written = load_tensors(&out).unwrap();
    assert!(!written.is_empty());
    assert!(written
        .keys()
        .all(|k| k.starts_with("model.diffusion_model.")));
    assert!(written.values().all(|t| t.dtype() == DType::F16));

    let onto_itself = spritedx(&["convert", out_s, "-o", out_s], dir.path());
    assert!(!onto_itself.status.success());
    assert!(String::from_utf8_lossy(&onto_itself.stderr).contains("is the input"));

    let missing = dir.path().join("missing.ckpt");
    let run = spritedx(
        &["convert", missing.to_str().unwrap(), "-o", out_s],
        dir.path(),
    );
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("missing.ckpt"));
}

// ----- strict checks -----------------------------------------------------------------

/// The keys and shapes `candle_nn::linear(3, 2)` under `proj` asks for.
fn linear_expected() -> ShapeMap {
    let recorder = ShapeRecorder::new();
    candle_nn::linear(3, 2, recorder.var_builder().pp("proj")).unwrap();
    recorder.shapes()
}

fn linear_tensors() -> HashMap<String, Tensor> {
    let w = Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &Device::Cpu).unwrap();
    let b = Tensor::new(&[0.5f32, -0.5], &Device::Cpu).unwrap();
    [("proj.weight".to_string(), w), ("proj.bias".to_string(), b)].into()
}

fn mismatch(tensors: HashMap<String, Tensor>, rules: &KeyRules) -> (KeyMismatch, String) {
    let err = checked_var_builder(tensors, &linear_expected(), rules, DType::F32, &Device::Cpu)
        .err()
        .expect("the check fails");
    let text = err.to_string();
    (err.downcast::<KeyMismatch>().expect("a KeyMismatch"), text)
}

#[test]
fn matching_weights_build_a_working_module_and_report_what_is_ignored() {
    let mut tensors = linear_tensors();
    tensors.insert(
        "loss.logvar".into(),
        Tensor::new(&[0f32], &Device::Cpu).unwrap(),
    );
    tensors.insert(
        "model_ema.decay".into(),
        Tensor::new(&[0f32], &Device::Cpu).unwrap(),
    );
    // f16 weights come out as f32.
    let tensors: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, t)| (k, t.to_dtype(DType::F16).unwrap()))
        .collect();
    let (vb, report) = checked_var_builder(
        tensors,
        &linear_expected(),
        &KeyRules::default(),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(report.used, 2);
    assert_eq!(report.ignored, vec!["loss.logvar", "model_ema.decay"]);
    assert_eq!(report.ignored_summary(), "loss (1), model_ema (1)");
    let lin = candle_nn::linear(3, 2, vb.pp("proj")).unwrap();
    assert_eq!(lin.weight().dtype(), DType::F32);
    let x = Tensor::new(&[[1f32, 1., 1.]], &Device::Cpu).unwrap();
    // Small integers and halves are exact in f16: [1+2+3+0.5, 4+5+6-0.5].
    assert_eq!(
        lin.forward(&x).unwrap().to_vec2::<f32>().unwrap(),
        vec![vec![6.5, 14.5]]
    );
}

#[test]
fn a_missing_key_is_named() {
    let mut tensors = linear_tensors();
    tensors.remove("proj.bias");
    let (m, text) = mismatch(tensors, &KeyRules::default());
    assert_eq!(m.missing, vec!["proj.bias"]);
    assert!(m.unexpected.is_empty() && m.wrong_shape.is_empty());
    assert!(text.contains("1 missing: proj.bias"), "{text}");
}

#[test]
fn an_unexpected_key_inside_the_model_is_named() {
    let mut tensors = linear_tensors();
    tensors.insert(
        "proj.scale".into(),
        Tensor::new(&[1f32], &Device::Cpu).unwrap(),
    );
    let (m, text) = mismatch(tensors.clone(), &KeyRules::default());
    assert_eq!(m.unexpected, vec!["proj.scale"]);
    assert!(text.contains("1 unexpected: proj.scale"), "{text}");
    // An ignore rule lets it through, and it is reported.
    let rules = KeyRules {
        scopes: vec![],
        ignore: vec!["proj.scale".into()],
    };
    let report = check_shapes(
        &tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.dims().to_vec()))
            .collect(),
        &linear_expected(),
        &rules,
    )
    .unwrap();
    assert_eq!(report.ignored, vec!["proj.scale"]);
}

#[test]
fn a_wrong_shape_is_named_with_both_shapes() {
    let mut tensors = linear_tensors();
    tensors.insert(
        "proj.weight".into(),
        Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap(),
    );
    let (m, text) = mismatch(tensors, &KeyRules::default());
    assert_eq!(m.wrong_shape.len(), 1);
    assert_eq!(m.wrong_shape[0].key, "proj.weight");
    assert_eq!(
        (
            m.wrong_shape[0].expected.clone(),
            m.wrong_shape[0].found.clone()
        ),
        (vec![2, 3], vec![3, 2])
    );
    assert!(
        text.contains("proj.weight (model [2, 3], weights [3, 2])"),
        "{text}"
    );
}

#[test]
fn explicit_scopes_decide_what_counts_as_unexpected_and_long_lists_are_cut() {
    let expected: ShapeMap = (0..25).map(|i| (format!("net.k{i:02}"), vec![1])).collect();
    let found: ShapeMap = [
        ("net.extra".to_string(), vec![1]),
        ("aux.extra".to_string(), vec![1]),
        ("other.x".to_string(), vec![1]),
    ]
    .into();
    let m = check_shapes(&found, &expected, &KeyRules::scoped(["net", "aux"])).unwrap_err();
    assert_eq!(m.missing.len(), 25);
    assert_eq!(m.unexpected, vec!["aux.extra", "net.extra"]);
    let text = m.to_string();
    assert!(text.contains("25 missing: net.k00, net.k01"), "{text}");
    assert!(text.contains("net.k19 and 5 more"), "{text}");
    assert!(!text.contains("net.k20"), "{text}");
    assert!(!text.contains("other.x"), "{text}");
}

// ----- sources: folders and the hub cache --------------------------------------------

const MAIN_HASH: &str = "0123456789abcdef0123456789abcdef01234567";
const V2_HASH: &str = "fedcba9876543210fedcba9876543210fedcba98";

/// Lays out a hub cache as hf-hub and huggingface_hub write it: refs/NAME holds a commit
/// hash, snapshots/HASH/FILE links to blobs/ETAG.
fn add_cached_file(
    cache: &Path,
    repo: &str,
    reference: Option<&str>,
    hash: &str,
    file: &str,
    content: &[u8],
) {
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    if let Some(reference) = reference {
        std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
        std::fs::write(repo_dir.join("refs").join(reference), hash).unwrap();
    }
    let etag = format!("{:08x}{}", crc32(content), file.len());
    std::fs::create_dir_all(repo_dir.join("blobs")).unwrap();
    std::fs::write(repo_dir.join("blobs").join(&etag), content).unwrap();
    let snapshot = repo_dir.join("snapshots").join(hash);
    std::fs::create_dir_all(&snapshot).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(Path::new("../../blobs").join(&etag), snapshot.join(file)).unwrap();
    #[cfg(not(unix))]
    std::fs::write(snapshot.join(file), content).unwrap();
}

fn hub(text: &str, cache: &Path) -> anyhow::Result<Vec<PathBuf>> {
    resolve(&WeightSource::parse(text)?, &offline_hub(cache))
}

#[test]
fn hub_files_resolve_from_the_cache_offline() {
    let cache = tempfile::tempdir().unwrap();
    let ckpt = std::fs::read(fixture("tiny_stablesr.ckpt")).unwrap();
    let repo = "Iceclear/StableSR";
    add_cached_file(
        cache.path(),
        repo,
        Some("main"),
        MAIN_HASH,
        "stablesr_000117.ckpt",
        &ckpt,
    );
    add_cached_file(
        cache.path(),
        repo,
        Some("main"),
        MAIN_HASH,
        "vqgan_cfw_00011.ckpt",
        b"vq",
    );
    add_cached_file(
        cache.path(),
        repo,
        Some("v2"),
        V2_HASH,
        "stablesr_000117.ckpt",
        b"v2",
    );
    let snapshots = cache.path().join("models--Iceclear--StableSR/snapshots");

    let main = hub("hf://Iceclear/StableSR/stablesr_000117.ckpt", cache.path()).unwrap();
    assert_eq!(
        main,
        vec![snapshots.join(MAIN_HASH).join("stablesr_000117.ckpt")]
    );
    // The resolved file is the checkpoint itself, through the snapshot's link.
    assert_identical(
        &load_tensors(&main[0]).unwrap(),
        &load_tensors(&fixture("tiny_weights.safetensors")).unwrap(),
    );

    let v2 = hub(
        "hf://Iceclear/StableSR/stablesr_000117.ckpt@v2",
        cache.path(),
    )
    .unwrap();
    assert_eq!(
        v2,
        vec![snapshots.join(V2_HASH).join("stablesr_000117.ckpt")]
    );
    assert_eq!(std::fs::read(&v2[0]).unwrap(), b"v2");
    let by_hash = format!("hf://Iceclear/StableSR/stablesr_000117.ckpt@{V2_HASH}");
    assert_eq!(hub(&by_hash, cache.path()).unwrap(), v2);

    let defaults = hub("hf://Iceclear/StableSR", cache.path()).unwrap();
    let expected: Vec<PathBuf> = DEFAULT_FILES
        .iter()
        .map(|f| snapshots.join(MAIN_HASH).join(f))
        .collect();
    assert_eq!(defaults, expected);
}

#[test]
fn a_file_missing_from_the_cache_offline_says_how_to_get_it() {
    let cache = tempfile::tempdir().unwrap();
    add_cached_file(
        cache.path(),
        "Iceclear/StableSR",
        Some("main"),
        MAIN_HASH,
        "stablesr_000117.ckpt",
        b"x",
    );
    let err =
        err_text(hub("hf://Iceclear/StableSR/vqgan_cfw_00011.ckpt", cache.path()).unwrap_err());
    for part in [
        "vqgan_cfw_00011.ckpt",
        "Iceclear/StableSR",
        "revision main",
        cache.path().to_str().unwrap(),
        "HF_HUB_OFFLINE",
        "huggingface-cli download Iceclear/StableSR vqgan_cfw_00011.ckpt --revision main",
        MAIN_HASH,
    ] {
        assert!(err.contains(part), "missing {part:?} in: {err}");
    }
    let err = err_text(
        hub(
            "hf://Iceclear/StableSR/stablesr_000117.ckpt@v9",
            cache.path(),
        )
        .unwrap_err(),
    );
    assert!(
        err.contains("revision v9") && err.contains("refs/v9"),
        "{err}"
    );
    let err = err_text(hub("hf://someone/else/w.safetensors", cache.path()).unwrap_err());
    assert!(err.contains("models--someone--else"), "{err}");
}

#[test]
fn a_hub_repo_without_a_file_gives_its_cached_weight_files() {
    let cache = tempfile::tempdir().unwrap();
    for file in ["config.json", "model.safetensors", "README.md"] {
        add_cached_file(
            cache.path(),
            "owner/tiny",
            Some("main"),
            MAIN_HASH,
            file,
            file.as_bytes(),
        );
    }
    let files = hub("hf://owner/tiny", cache.path()).unwrap();
    let snapshot = cache
        .path()
        .join("models--owner--tiny/snapshots")
        .join(MAIN_HASH);
    assert_eq!(files, vec![snapshot.join("model.safetensors")]);
}

#[test]
fn folders_in_hugging_face_layout_resolve_their_weight_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    std::fs::copy(
        fixture("tiny_weights.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let source = WeightSource::parse(dir.path().to_str().unwrap()).unwrap();
    assert_eq!(source, WeightSource::Folder(dir.path().to_path_buf()));
    let unused_hub = offline_hub(&dir.path().join("no-cache"));
    let files = resolve(&source, &unused_hub).unwrap();
    assert_eq!(files, vec![dir.path().join("model.safetensors")]);
    assert_eq!(
        load_tensors(&files[0]).unwrap().len(),
        load_tensors(&fixture("tiny_weights.safetensors"))
            .unwrap()
            .len()
    );

    let two = tempfile::tempdir().unwrap();
    for name in DEFAULT_FILES {
        std::fs::write(two.path().join(name), b"").unwrap();
    }
    let files = resolve(&WeightSource::Folder(two.path().to_path_buf()), &unused_hub).unwrap();
    assert_eq!(
        files,
        DEFAULT_FILES
            .iter()
            .map(|f| two.path().join(f))
            .collect::<Vec<_>>()
    );

    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("config.json"), "{}").unwrap();
    let err = err_text(
        resolve(
            &WeightSource::Folder(empty.path().to_path_buf()),
            &unused_hub,
        )
        .unwrap_err(),
    );
    assert!(err.contains("no weight files"), "{err}");
}

/// A stand-in for the Hub's file server on a loopback port, answering as the Hub does for
/// `OWNER/REPO/resolve/main/FILE` (commit and etag headers, ranges) and 404 otherwise.
/// It records each request's Authorization header and stops by itself after a few
/// connections or ten seconds.
fn serve_hub_file(
    path: &'static str,
    commit: &'static str,
    body: Vec<u8>,
) -> (String, std::sync::mpsc::Receiver<Option<String>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (seen_auth, auth_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut served = 0;
        while served < 8 && std::time::Instant::now() < deadline {
            let Ok((stream, _)) = listener.accept() else {
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            };
            served += 1;
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap_or(0);
            let (mut range, mut auth) = ((0usize, None), None);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').unwrap_or(("", ""));
                match name.to_ascii_lowercase().as_str() {
                    "range" => {
                        let spec = value.trim().trim_start_matches("bytes=");
                        let (start, end) = spec.split_once('-').unwrap_or(("0", ""));
                        range = (start.parse().unwrap_or(0), end.parse::<usize>().ok());
                    }
                    "authorization" => auth = Some(value.trim().to_string()),
                    _ => {}
                }
            }
            seen_auth.send(auth).ok();
            let mut stream = stream;
            let target = request_line.split_whitespace().nth(1).unwrap_or("");
            if target != path {
                let _ = stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            }
            // The metadata probe asks for bytes=0-0, the download for bytes=START-.
            let (range_start, end) = (range.0, range.1.unwrap_or(body.len() - 1));
            let part = &body[range_start..=end];
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\n\
                 Content-Range: bytes {range_start}-{end}/{}\r\nX-Repo-Commit: {commit}\r\n\
                 ETag: \"0a1b2c3d\"\r\nConnection: close\r\n\r\n",
                part.len(),
                body.len()
            );
            let _ = stream
                .write_all(head.as_bytes())
                .and_then(|_| stream.write_all(part));
        }
    });
    (endpoint, auth_rx)
}

/// `spritedx convert` with a clean Hugging Face environment: no proxy (the client would
/// send even loopback requests to one), the given cache, endpoint and token.
fn spritedx_online(args: &[&str], hf_home: &Path, endpoint: &str) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_spritedx"));
    for var in [
        "ALL_PROXY",
        "all_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
    ] {
        command.env_remove(var);
    }
    command
        .args(args)
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_HUB_CACHE")
        .env("HF_HOME", hf_home)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_TOKEN", "hf_test_token")
        .output()
        .expect("the binary runs")
}

#[test]
fn hub_files_download_into_the_cache_and_are_found_there_offline() {
    let dir = tempfile::tempdir().unwrap();
    let hf_home = dir.path().join("hf");
    let body = std::fs::read(fixture("tiny_weights.safetensors")).unwrap();
    let (endpoint, auth) = serve_hub_file(
        "/owner/tiny/resolve/main/model.safetensors",
        MAIN_HASH,
        body,
    );
    let out = dir.path().join("out.safetensors");
    let out_s = out.to_str().unwrap();
    let run = spritedx_online(
        &["convert", "hf://owner/tiny/model.safetensors", "-o", out_s],
        &hf_home,
        &endpoint,
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_identical(
        &load_tensors(&out).unwrap(),
        &load_tensors(&fixture("tiny_weights.safetensors")).unwrap(),
    );
    let first_auth = auth
        .recv_timeout(std::time::Duration::from_secs(1))
        .unwrap();
    assert_eq!(first_auth.as_deref(), Some("Bearer hf_test_token"));

    // The download landed in the cache in hf-hub's layout, so offline finds it.
    let repo_dir = hf_home.join("hub/models--owner--tiny");
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        MAIN_HASH
    );
    let cached = hub("hf://owner/tiny/model.safetensors", &hf_home.join("hub")).unwrap();
    assert_eq!(
        cached,
        vec![repo_dir
            .join("snapshots")
            .join(MAIN_HASH)
            .join("model.safetensors")]
    );

    // A file the server does not have: the error names it and says what to check.
    let run = spritedx_online(
        &["convert", "hf://owner/tiny/other.safetensors", "-o", out_s],
        &hf_home,
        &endpoint,
    );
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("other.safetensors") && stderr.contains("owner/tiny"),
        "{stderr}"
    );
    assert!(
        stderr.contains("404") && stderr.contains("HF_TOKEN"),
        "{stderr}"
    );
}

#[test]
fn a_checkpoint_file_is_checked_before_its_tensors_are_read() {
    let file = TensorFile::open(&fixture("tiny_stablesr.ckpt")).unwrap();
    let all = load_tensors(&fixture("tiny_weights.safetensors")).unwrap();
    // What a structure-encoder module would ask for: its part of the checkpoint.
    let expected: ShapeMap = all
        .iter()
        .filter(|(k, _)| k.starts_with("structcond_stage_model."))
        .map(|(k, t)| (k.clone(), t.dims().to_vec()))
        .collect();
    let (vb, report) = file
        .checked_var_builder(&expected, &KeyRules::default(), DType::F32, &Device::Cpu)
        .unwrap();
    assert_eq!(report.used, expected.len());
    assert_eq!(report.ignored.len(), all.len() - expected.len());
    assert!(report
        .ignored
        .iter()
        .all(|k| k.starts_with("model.diffusion_model.")));
    let (key, shape) = expected.iter().next().unwrap();
    let got = vb.get(shape.as_slice(), key).unwrap();
    assert!(raw_bytes(&got) == raw_bytes(&all[key]), "{key}");

    let mut wrong = expected.clone();
    let first = wrong.keys().next().unwrap().clone();
    wrong.get_mut(&first).unwrap().push(1);
    let err = file
        .checked_var_builder(&wrong, &KeyRules::default(), DType::F32, &Device::Cpu)
        .err()
        .expect("a wrong shape fails");
    let text = format!("{err:#}");
    assert!(
        text.contains(&first) && text.contains("tiny_stablesr.ckpt"),
        "{text}"
    );
}

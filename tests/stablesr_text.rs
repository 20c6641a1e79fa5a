//! The OpenCLIP text tower (`spritedx::stablesr::text`): full-size keys against StableSR's
//! checkpoint manifest, numerics against a tiny random tower computed by open_clip 2.0.2
//! (tests/fixtures/openclip_text_tiny.safetensors, made by
//! tests/fixtures/make_openclip_text_fixture.py), and the token layout against
//! open_clip's `tokenize`.

mod stablesr_common;
use stablesr_common::max_abs;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use spritedx::nn::shapes::{diff_shapes, ShapeMap, ShapeRecorder};
use spritedx::stablesr::text::{
    empty_prompt_tokens, tokenize, tokens_tensor, OpenClipText, TextConfig, END_OF_TEXT,
    START_OF_TEXT,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const PREFIX: &str = "cond_stage_model.model";

fn tiny_fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/openclip_text_tiny.safetensors")
}

/// The tiny fixture's tensors and its config (from the file's metadata).
fn tiny_fixture() -> (HashMap<String, Tensor>, TextConfig) {
    let path = tiny_fixture_path();
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {path:?}: {e}"));
    let (_, metadata) =
        safetensors::SafeTensors::read_metadata(&bytes).expect("safetensors header");
    let config = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get("config"))
        .expect("config in the fixture's metadata");
    let config: TextConfig = serde_json::from_str(config).expect("fixture config is a TextConfig");
    let tensors =
        candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).expect("fixture tensors");
    (tensors, config)
}

/// A fixture tensor of int64 token ids as a u32 vector.
fn ids(tensors: &HashMap<String, Tensor>, name: &str) -> Vec<u32> {
    tensors[name]
        .flatten_all()
        .unwrap()
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn vit_h_declares_exactly_the_checkpoint_keys() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/stablesr/manifest_512.json");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let expected: ShapeMap = serde_json::from_value(manifest["cond_stage_model"].clone()).unwrap();
    assert_eq!(expected.len(), 294);

    let recorder = ShapeRecorder::new();
    OpenClipText::new(recorder.var_builder().pp(PREFIX), &TextConfig::vit_h_14()).unwrap();
    let diff = diff_shapes(&recorder.shapes(), &expected);
    assert!(
        diff.is_empty(),
        "cond_stage_model keys differ:\n{}",
        diff.join("\n")
    );
}

#[test]
fn tiny_tower_uses_every_fixture_weight() {
    let (tensors, cfg) = tiny_fixture();
    let weights: ShapeMap = tensors
        .iter()
        .filter(|(k, _)| k.starts_with(PREFIX))
        .map(|(k, t)| (k.clone(), t.dims().to_vec()))
        .collect();
    let recorder = ShapeRecorder::new();
    OpenClipText::new(recorder.var_builder().pp(PREFIX), &cfg).unwrap();
    let diff = diff_shapes(&recorder.shapes(), &weights);
    assert!(
        diff.is_empty(),
        "tiny tower keys differ from the fixture:\n{}",
        diff.join("\n")
    );
}

/// Batch of two token rows; tolerance max abs err <= 1e-4 * max(1, max |reference|).
#[test]
fn tiny_tower_matches_open_clip() {
    let (tensors, cfg) = tiny_fixture();
    let tokens = tensors["io.tokens"].to_dtype(DType::U32).unwrap();
    let reference = tensors["io.penultimate"].clone();
    let model = OpenClipText::new(
        VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu).pp(PREFIX),
        &cfg,
    )
    .unwrap();
    let out = model.forward(&tokens).unwrap();
    assert_eq!(out.dims(), &[2, cfg.context_length, cfg.width]);
    let err = max_abs(&(&out - &reference).unwrap());
    let tolerance = 1e-4 * max_abs(&reference).max(1.0);
    println!("penultimate + ln_final: max abs err {err:.3e} (tolerance {tolerance:.3e})");
    assert!(err <= tolerance, "max abs err {err} > {tolerance}");
}

#[test]
fn forward_rejects_sequences_of_another_length() {
    let (tensors, cfg) = tiny_fixture();
    let model = OpenClipText::new(
        VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu).pp(PREFIX),
        &cfg,
    )
    .unwrap();
    let short = Tensor::zeros((1, 10), DType::U32, &Device::Cpu).unwrap();
    let err = model.forward(&short).unwrap_err().to_string();
    assert!(err.contains("length 77"), "unexpected error: {err}");
}

#[test]
fn empty_prompt_matches_open_clip_tokenize() {
    let (tensors, _) = tiny_fixture();
    let reference = ids(&tensors, "tokenize.empty");
    assert_eq!(empty_prompt_tokens(77), reference);
    assert_eq!(reference[..2], [START_OF_TEXT, END_OF_TEXT]);
    let batch = tokens_tensor(&empty_prompt_tokens(77), 3, &Device::Cpu).unwrap();
    assert_eq!(batch.dims(), &[3, 77]);
    assert_eq!(batch.to_vec2::<u32>().unwrap()[2], reference);
}

/// A word-level stand-in for CLIP's tokenizer.json, with open_clip's ids for the words of
/// "a photo of a cat" (read from open_clip's own tokenization in the fixture) and CLIP's
/// special tokens: checks `tokenize`'s framing (start, end, padding, truncation), not BPE.
fn word_tokenizer(tensors: &HashMap<String, Tensor>) -> tokenizers::Tokenizer {
    let photo = ids(tensors, "tokenize.photo");
    let words = ["a", "photo", "of", "a", "cat"];
    let mut vocab: serde_json::Map<String, serde_json::Value> = words
        .iter()
        .zip(&photo[1..=words.len()])
        .map(|(w, id)| (w.to_string(), (*id).into()))
        .collect();
    vocab.insert("<|startoftext|>".into(), START_OF_TEXT.into());
    vocab.insert("<|endoftext|>".into(), END_OF_TEXT.into());
    vocab.insert("<unk>".into(), 1.into());
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    json.to_string().parse().expect("word-level tokenizer json")
}

#[test]
fn tokenize_lays_out_tokens_as_open_clip() {
    let (tensors, _) = tiny_fixture();
    let tokenizer = word_tokenizer(&tensors);
    assert_eq!(
        tokenize(&tokenizer, "a photo of a cat", 77).unwrap(),
        ids(&tensors, "tokenize.photo")
    );
    // 100 words into 77 positions: cut, with the end token last.
    assert_eq!(
        tokenize(&tokenizer, &"a ".repeat(100), 77).unwrap(),
        ids(&tensors, "tokenize.long")
    );
    assert_eq!(
        tokenize(&tokenizer, "", 77).unwrap(),
        ids(&tensors, "tokenize.empty")
    );
}

#[test]
fn tokenize_needs_clip_special_tokens() {
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"a": 0, "<unk>": 1}, "unk_token": "<unk>"}
    });
    let tokenizer: tokenizers::Tokenizer = json.to_string().parse().unwrap();
    let err = tokenize(&tokenizer, "a", 77).unwrap_err().to_string();
    assert!(err.contains("<|startoftext|>"), "unexpected error: {err}");
}

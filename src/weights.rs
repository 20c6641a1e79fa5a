//! Loading weights from every source, strictly checked.
//!
//! A `--weights` value is a [`WeightSource`]: a local `.ckpt`/`.pt`/`.pth` (PyTorch zip
//! pickle, e.g. a PyTorch Lightning checkpoint), a `.safetensors` file, a folder in Hugging
//! Face layout, or `hf://OWNER/REPO[/FILE][@REVISION]`. [`resolve`] turns it into local
//! files, downloading through `hf-hub` into the Hugging Face cache unless
//! [`HubOptions::offline`] is set, in which case only the cache is read.
//!
//! [`TensorFile`] reads either file format without executing anything: pickles go through
//! candle's pickle reader, which interprets the opcodes into plain data and resolves no
//! globals, so a checkpoint that references Python classes (Lightning callbacks) loads
//! safely. A Lightning checkpoint's `state_dict` is used when present.
//!
//! [`checked_var_builder`] compares the tensors with the keys and shapes a module asks for
//! (recorded with [`crate::nn::shapes::ShapeRecorder`]) and refuses missing keys, wrong
//! shapes and unexpected keys inside the model's prefixes, naming them. [`convert`] writes
//! the tensors of a checkpoint as `.safetensors`, atomically.

mod check;
mod convert;
mod load;
mod source;

pub use check::{
    check_shapes, checked_var_builder, CheckReport, KeyMismatch, KeyRules, ShapeMismatch,
};
pub use convert::{convert, ConvertOptions, ConvertSummary, OutputDType};
pub use load::{load_tensors, TensorFile};
pub use source::{
    resolve, HubOptions, HubRef, WeightFormat, WeightSource, DEFAULT_ENDPOINT, DEFAULT_FILES,
    DEFAULT_REPO, DEFAULT_REVISION, STABLESR_CKPT, VQGAN_CFW_CKPT,
};

/// True when `key` is `prefix` itself or lies under it (`prefix.` followed by more).
/// A trailing `.` on the prefix is ignored, so `model.` and `model` mean the same.
pub fn key_under_prefix(key: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('.');
    match key.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('.') || prefix.is_empty(),
        None => false,
    }
}

/// Joins the first `limit` items with ", " and says how many more there are.
fn list_some(items: &[String], limit: usize) -> String {
    let shown = items
        .iter()
        .take(limit)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > limit {
        format!("{shown} and {} more", items.len() - limit)
    } else {
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_key_components() {
        assert!(key_under_prefix("model.diffusion_model.x", "model"));
        assert!(key_under_prefix("model.diffusion_model.x", "model."));
        assert!(key_under_prefix("model", "model"));
        assert!(!key_under_prefix("model_ema.x", "model"));
        assert!(!key_under_prefix("mod", "model"));
    }

    #[test]
    fn long_lists_are_cut() {
        let items: Vec<String> = (0..25).map(|i| format!("k{i}")).collect();
        let text = list_some(&items, 20);
        assert!(text.starts_with("k0, k1,"));
        assert!(text.ends_with("k19 and 5 more"), "{text}");
        assert_eq!(list_some(&items[..2], 20), "k0, k1");
    }
}

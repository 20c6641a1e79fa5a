//! Helpers shared by the StableSR integration tests: the parity fixtures in
//! ../shared/fixtures/stablesr (see its PROVENANCE.md) and a max-abs measure.

#![allow(dead_code)] // each test binary uses its own subset

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The fixture folder.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/stablesr")
}

/// A JSON file of the fixture folder.
pub fn read_json(name: &str) -> serde_json::Value {
    let path = fixtures().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {path:?}: {e}"))
}

/// A safetensors file of the fixture folder.
pub fn fixture_tensors(name: &str) -> HashMap<String, Tensor> {
    let path = fixtures().join(name);
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap_or_else(|e| panic!("loading {path:?}: {e}"))
}

/// The largest absolute value of a float tensor.
pub fn max_abs(t: &Tensor) -> f64 {
    t.abs().unwrap().max_all().unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

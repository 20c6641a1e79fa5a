//! Recording which tensors, with which shapes, a module asks its `VarBuilder` for, without
//! allocating them: how a full-size config is checked against a checkpoint's key -> shape
//! manifest (the real StableSR UNet alone is 919M parameters).

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Key -> shape, ordered by key.
pub type ShapeMap = BTreeMap<String, Vec<usize>>;

/// A `VarBuilder` backend that answers every request with a zero tensor of the requested
/// shape, broadcast from a single element (so nothing of that size is allocated), and
/// records the key and shape.
#[derive(Clone, Default)]
pub struct ShapeRecorder {
    shapes: Arc<Mutex<ShapeMap>>,
}

impl ShapeRecorder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A `VarBuilder` over this recorder (f32, CPU).
    pub fn var_builder(&self) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), DType::F32, Device::Cpu)
    }

    /// Every key requested so far with its shape.
    pub fn shapes(&self) -> ShapeMap {
        self.shapes.lock().expect("shape recorder poisoned").clone()
    }
}

impl SimpleBackend for ShapeRecorder {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _init: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let mut shapes = self.shapes.lock().expect("shape recorder poisoned");
        if let Some(previous) = shapes.get(name) {
            if previous.as_slice() != shape.dims() {
                candle_core::bail!(
                    "{name} requested twice with different shapes: {previous:?} and {:?}",
                    shape.dims()
                );
            }
        }
        shapes.insert(name.to_string(), shape.dims().to_vec());
        Tensor::zeros((), dtype, dev)?.broadcast_as(shape)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("shape recorder: {name} requested without a shape")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// Differences between the shapes a module declares and a manifest, as readable lines:
/// keys missing from the module, keys the manifest lacks, and shape mismatches. Empty
/// when they agree exactly.
pub fn diff_shapes(declared: &ShapeMap, manifest: &ShapeMap) -> Vec<String> {
    let mut lines = Vec::new();
    for (key, shape) in manifest {
        match declared.get(key) {
            None => lines.push(format!("not declared: {key} {shape:?}")),
            Some(ours) if ours != shape => {
                lines.push(format!("shape mismatch: {key} manifest {shape:?}, declared {ours:?}"))
            }
            Some(_) => {}
        }
    }
    for (key, shape) in declared {
        if !manifest.contains_key(key) {
            lines.push(format!("not in manifest: {key} {shape:?}"));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_keys_and_shapes_without_allocating() {
        let recorder = ShapeRecorder::new();
        let vb = recorder.var_builder();
        let lin = candle_nn::linear(1000, 2000, vb.pp("proj")).unwrap();
        // One element backs the whole broadcast weight.
        assert_eq!(lin.weight().dims(), &[2000, 1000]);
        assert_eq!(lin.weight().stride(), &[0, 0]);
        let shapes = recorder.shapes();
        assert_eq!(shapes["proj.weight"], vec![2000, 1000]);
        assert_eq!(shapes["proj.bias"], vec![2000]);
        assert_eq!(shapes.len(), 2);
    }

    #[test]
    fn diff_names_every_kind_of_difference() {
        let declared: ShapeMap =
            [("a".into(), vec![1]), ("b".into(), vec![2]), ("c".into(), vec![3])].into();
        let manifest: ShapeMap =
            [("a".into(), vec![1]), ("b".into(), vec![5]), ("d".into(), vec![4])].into();
        let diff = diff_shapes(&declared, &manifest);
        assert_eq!(
            diff,
            vec![
                "shape mismatch: b manifest [5], declared [2]".to_string(),
                "not declared: d [4]".to_string(),
                "not in manifest: c [3]".to_string(),
            ]
        );
        assert!(diff_shapes(&manifest, &manifest).is_empty());
    }
}

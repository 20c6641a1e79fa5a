//! Strict checking of checkpoint tensors against the keys and shapes a module asks for.

use super::{key_under_prefix, list_some, TensorFile};
use crate::nn::shapes::ShapeMap;
use anyhow::{anyhow, Context, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// How many keys of each kind an error names before saying how many more there are.
const NAMED_KEYS: usize = 20;

/// Which checkpoint keys a strict check looks at.
#[derive(Clone, Debug, Default)]
pub struct KeyRules {
    /// Key prefixes that belong to the model: every key under one of them must be
    /// expected. Empty: the first component of every expected key (`model` for
    /// `model.diffusion_model.*`), so `model_ema.*`, `loss.*` or other sub-models of the
    /// checkpoint are outside and ignored.
    pub scopes: Vec<String>,
    /// Prefixes of keys that are ignored even inside a scope (e.g. buffers the module
    /// computes itself). Expected keys are never ignored.
    pub ignore: Vec<String>,
}

impl KeyRules {
    /// Rules with the given scopes and nothing else ignored.
    pub fn scoped<S: Into<String>>(scopes: impl IntoIterator<Item = S>) -> Self {
        Self {
            scopes: scopes.into_iter().map(Into::into).collect(),
            ignore: Vec::new(),
        }
    }
}

/// A key whose tensor has another shape than the module expects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShapeMismatch {
    /// The checkpoint key.
    pub key: String,
    /// The shape the module asks for.
    pub expected: Vec<usize>,
    /// The shape in the weights.
    pub found: Vec<usize>,
}

/// The weights do not fit the module: the keys that are missing, unexpected or of the
/// wrong shape, each list sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq, thiserror::Error)]
pub struct KeyMismatch {
    /// Keys the module asks for that the weights lack.
    pub missing: Vec<String>,
    /// Keys of the weights inside the model's scopes that the module does not ask for.
    pub unexpected: Vec<String>,
    /// Keys present in both with different shapes.
    pub wrong_shape: Vec<ShapeMismatch>,
}

impl fmt::Display for KeyMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the weights do not match the model:")?;
        if !self.missing.is_empty() {
            let n = self.missing.len();
            write!(
                f,
                "\n  {n} missing: {}",
                list_some(&self.missing, NAMED_KEYS)
            )?;
        }
        if !self.unexpected.is_empty() {
            let n = self.unexpected.len();
            let keys = list_some(&self.unexpected, NAMED_KEYS);
            write!(f, "\n  {n} unexpected: {keys}")?;
        }
        if !self.wrong_shape.is_empty() {
            let lines: Vec<String> = self
                .wrong_shape
                .iter()
                .map(|m| format!("{} (model {:?}, weights {:?})", m.key, m.expected, m.found))
                .collect();
            let n = lines.len();
            write!(
                f,
                "\n  {n} with the wrong shape: {}",
                list_some(&lines, NAMED_KEYS)
            )?;
        }
        write!(
            f,
            "\ncheck that the weights belong to this model and that its config matches them"
        )
    }
}

/// What a successful check found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// How many tensors the module gets.
    pub used: usize,
    /// Keys of the weights outside the model's scopes or ignored by rule, sorted.
    pub ignored: Vec<String>,
}

impl CheckReport {
    /// The ignored keys counted by their first component, e.g. `loss (56), model_ema (862)`;
    /// empty when nothing was ignored.
    pub fn ignored_summary(&self) -> String {
        let mut groups: BTreeMap<&str, usize> = BTreeMap::new();
        for key in &self.ignored {
            *groups
                .entry(key.split('.').next().unwrap_or(key))
                .or_default() += 1;
        }
        groups
            .iter()
            .map(|(group, n)| format!("{group} ({n})"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Compares the shapes found in the weights with those the module expects, under `rules`.
pub fn check_shapes(
    found: &ShapeMap,
    expected: &ShapeMap,
    rules: &KeyRules,
) -> std::result::Result<CheckReport, KeyMismatch> {
    let derived: Vec<String>;
    let scopes: &[String] = if rules.scopes.is_empty() {
        let mut firsts: Vec<String> = expected
            .keys()
            .map(|k| k.split('.').next().unwrap_or(k).to_string())
            .collect();
        firsts.sort_unstable();
        firsts.dedup();
        derived = firsts;
        &derived
    } else {
        &rules.scopes
    };
    let mut mismatch = KeyMismatch::default();
    let mut report = CheckReport::default();
    for (key, shape) in expected {
        match found.get(key) {
            None => mismatch.missing.push(key.clone()),
            Some(have) if have != shape => mismatch.wrong_shape.push(ShapeMismatch {
                key: key.clone(),
                expected: shape.clone(),
                found: have.clone(),
            }),
            Some(_) => report.used += 1,
        }
    }
    for key in found.keys().filter(|k| !expected.contains_key(*k)) {
        let in_scope = scopes.iter().any(|s| key_under_prefix(key, s));
        let ignored = rules.ignore.iter().any(|p| key_under_prefix(key, p));
        if in_scope && !ignored {
            mismatch.unexpected.push(key.clone());
        } else {
            report.ignored.push(key.clone());
        }
    }
    if mismatch.missing.is_empty()
        && mismatch.unexpected.is_empty()
        && mismatch.wrong_shape.is_empty()
    {
        Ok(report)
    } else {
        Err(mismatch)
    }
}

/// The key -> shape map of a set of tensors.
fn shapes_of(tensors: &HashMap<String, Tensor>) -> ShapeMap {
    tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.dims().to_vec()))
        .collect()
}

/// Checks `tensors` against what the module expects (see [`check_shapes`]) and gives a
/// `VarBuilder` holding exactly the expected tensors, floating-point ones converted to
/// `dtype` (e.g. f16/bf16 checkpoints to f32 for the CPU) and moved to `device`; other
/// tensors are dropped. A failed check is a [`KeyMismatch`] (downcast the error to get
/// the lists). [`TensorFile::checked_var_builder`] does the same reading only what the
/// module uses.
pub fn checked_var_builder(
    tensors: HashMap<String, Tensor>,
    expected: &ShapeMap,
    rules: &KeyRules,
    dtype: DType,
    device: &Device,
) -> Result<(VarBuilder<'static>, CheckReport)> {
    let report = check_shapes(&shapes_of(&tensors), expected, rules)?;
    Ok((var_builder_of(tensors, expected, dtype, device)?, report))
}

impl TensorFile {
    /// [`checked_var_builder`] over this file: the shapes are checked from the file's index
    /// before any tensor is read, then only the expected tensors are read.
    pub fn checked_var_builder(
        &self,
        expected: &ShapeMap,
        rules: &KeyRules,
        dtype: DType,
        device: &Device,
    ) -> Result<(VarBuilder<'static>, CheckReport)> {
        let report = check_shapes(&self.shapes()?, expected, rules)
            .with_context(|| format!("checking {}", self.path().display()))?;
        let tensors = self.load_where(|key| expected.contains_key(key))?;
        Ok((var_builder_of(tensors, expected, dtype, device)?, report))
    }
}

/// A `VarBuilder` over the expected tensors, converted; `tensors` must hold every
/// expected key (checked before).
fn var_builder_of(
    mut tensors: HashMap<String, Tensor>,
    expected: &ShapeMap,
    dtype: DType,
    device: &Device,
) -> Result<VarBuilder<'static>> {
    let mut kept = HashMap::with_capacity(expected.len());
    for key in expected.keys() {
        let tensor = tensors
            .remove(key)
            .ok_or_else(|| anyhow!("{key} vanished after the check"))?;
        let tensor = if tensor.dtype().is_float() && tensor.dtype() != dtype {
            tensor.to_dtype(dtype)?
        } else {
            tensor
        };
        kept.insert(key.clone(), tensor.to_device(device)?);
    }
    Ok(VarBuilder::from_tensors(kept, dtype, device))
}

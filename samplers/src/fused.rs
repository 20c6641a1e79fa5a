//! The sampler's fused path: the updates of [`crate::steps`] taken with spritedx-kernels'
//! fused ops, one pass over the latents per step (CUDA kernels on a CUDA device, their
//! Rust reference on the CPU).
//!
//! The coefficients are those of the composed steps, computed by the same constructors
//! ([`NoiseLevel`], [`DdimCoefficients`], [`DpmSolverCoefficients`]) in f64 and rounded to
//! f32, but for every schedule index at once: the tables are built once per sampling run
//! and stay on the device, and each step only uploads the per-sample row indices.

use candle_core::{DType, Device, Result, Tensor};
use spritedx_kernels::sampler::{
    self as kernels, coefficient_table, DdimRow, DpmSolverRow, NoiseRow,
};

use crate::schedule::Schedule;
use crate::steps::{DdimCoefficients, DpmSolverCoefficients, NoiseLevel, Prediction};

/// The kernels' name for a prediction type.
pub(crate) fn kernel_prediction(prediction: Prediction) -> kernels::Prediction {
    match prediction {
        Prediction::Eps => kernels::Prediction::Eps,
        Prediction::V => kernels::Prediction::V,
    }
}

/// The per-sample row indices (B,) u32 that point every sample at `row`.
pub(crate) fn rows(row: usize, batch: usize, device: &Device) -> Result<Tensor> {
    Tensor::from_vec(vec![row as u32; batch], batch, device)
}

/// A (B,) coefficient tensor's values, computed on the CPU in f32.
fn values(t: &Tensor) -> Result<Vec<f32>> {
    t.to_vec1::<f32>()
}

/// `α_t` and `σ_t` at every index of `schedule`, rounded to f32.
fn levels(schedule: &Schedule) -> Result<(Vec<f32>, Vec<f32>)> {
    let all: Vec<usize> = (0..schedule.len()).collect();
    let level = NoiseLevel::at(schedule, &all, DType::F32, &Device::Cpu)?;
    Ok((values(&level.alpha)?, values(&level.sigma)?))
}

/// `q_sample` of the whole batch to schedule index `index` (the img2img start).
pub(crate) fn q_sample(
    x0: &Tensor,
    noise: &Tensor,
    schedule: &Schedule,
    index: usize,
) -> Result<Tensor> {
    let level = NoiseLevel::at(schedule, &[index], DType::F32, &Device::Cpu)?;
    let row = NoiseRow {
        alpha: values(&level.alpha)?[0],
        sigma: values(&level.sigma)?[0],
    };
    let table = coefficient_table(&[row], x0.device())?;
    kernels::q_sample(x0, noise, &table, &rows(0, x0.dim(0)?, x0.device())?)
}

/// The DDIM table: row `i` is the step from index `i` to `i - 1` (to clean data for 0).
pub(crate) fn ddim_table(schedule: &Schedule, eta: f64, device: &Device) -> Result<Tensor> {
    let all: Vec<usize> = (0..schedule.len()).collect();
    let (alpha, sigma) = levels(schedule)?;
    let c = DdimCoefficients::new(schedule, &all, eta, DType::F32, &Device::Cpu)?;
    let (alpha_prev, direction, noise_std) = (
        values(&c.alpha_prev)?,
        values(&c.direction)?,
        values(&c.noise_std)?,
    );
    let table: Vec<DdimRow> = all
        .iter()
        .map(|&i| DdimRow {
            alpha: alpha[i],
            sigma: sigma[i],
            alpha_prev: alpha_prev[i],
            direction: direction[i],
            noise_std: noise_std[i],
        })
        .collect();
    coefficient_table(&table, device)
}

/// The DPM-Solver++(2M) table of a schedule of `n` steps: row `i` is the first-order step
/// from index `i`, row `n + i` the second-order one (see [`dpm_row`]).
pub(crate) fn dpm_table(schedule: &Schedule, device: &Device) -> Result<Tensor> {
    let all: Vec<usize> = (0..schedule.len()).collect();
    let (alpha, sigma) = levels(schedule)?;
    let mut table = Vec::with_capacity(2 * all.len());
    for second in [false, true] {
        // Second order exists only between the first and the last index; elsewhere the
        // second half keeps the first-order row, which `dpm_row` never selects.
        let flags: Vec<bool> = all
            .iter()
            .map(|&i| second && i > 0 && i + 1 < all.len())
            .collect();
        let c = DpmSolverCoefficients::new(schedule, &all, &flags, DType::F32, &Device::Cpu)?;
        let (ratio, data, correction) = (
            values(&c.sigma_ratio)?,
            values(&c.data_coef)?,
            values(&c.correction)?,
        );
        table.extend(all.iter().map(|&i| DpmSolverRow {
            alpha: alpha[i],
            sigma: sigma[i],
            sigma_ratio: ratio[i],
            data_coef: data[i],
            correction: correction[i],
        }));
    }
    coefficient_table(&table, device)
}

/// The row of [`dpm_table`] for the step from `index` of a schedule of `len` steps.
pub(crate) fn dpm_row(index: usize, second_order: bool, len: usize) -> usize {
    if second_order {
        len + index
    } else {
        index
    }
}

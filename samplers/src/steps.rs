//! The per-step updates as pure functions on tensors.
//!
//! These are the reference implementations: the samplers in [`crate::sampler`] are loops
//! over them, and fused kernels are tested against them. Each takes the current sample
//! `x_t` (B, ...), the network's output for it, and per-sample coefficient tensors of
//! shape (B,) that are broadcast over the other dimensions, so every batch element may be
//! at its own step. The coefficients are computed in `f64` from a [`Schedule`] by the
//! `new` constructors and only then rounded to the dtype of `x_t`.
//!
//! Notation: `α_t = √ᾱ_t`, `σ_t = √(1 - ᾱ_t)`, so that `x_t = α_t x_0 + σ_t ε`; `s` is
//! the step being moved to (the next one of the sampler, an earlier one of the process),
//! with `ᾱ = 1` (clean data) after the last step.

use candle_core::{bail, DType, Device, Result, Tensor};

use crate::schedule::Schedule;

/// What a network predicts from `x_t = α_t x_0 + σ_t ε`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// The noise `ε` (LDM, Stable Diffusion 1.x/2.x-base, StableSR).
    Eps,
    /// The velocity `v = α_t ε - σ_t x_0` (Stable Diffusion 2.x-v, Salimans & Ho).
    V,
}

/// The noise level of `x_t`, per sample: `alpha = α_t = √ᾱ_t` and
/// `sigma = σ_t = √(1 - ᾱ_t)`, each of shape (B,).
#[derive(Debug, Clone)]
pub struct NoiseLevel {
    /// `√ᾱ_t`, shape (B,).
    pub alpha: Tensor,
    /// `√(1 - ᾱ_t)`, shape (B,).
    pub sigma: Tensor,
}

impl NoiseLevel {
    /// The levels of the given per-sample `ᾱ` values.
    pub fn from_alphas_cumprod(
        alphas_cumprod: &[f64],
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let alpha: Vec<f64> = alphas_cumprod.iter().map(|a| a.sqrt()).collect();
        let sigma: Vec<f64> = alphas_cumprod.iter().map(|a| (1.0 - a).sqrt()).collect();
        Ok(Self {
            alpha: per_sample(&alpha, dtype, device)?,
            sigma: per_sample(&sigma, dtype, device)?,
        })
    }

    /// The levels at per-sample step indices of `schedule`.
    pub fn at(
        schedule: &Schedule,
        indices: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        check_indices(schedule, indices)?;
        let a: Vec<f64> = indices
            .iter()
            .map(|&i| schedule.alphas_cumprod()[i])
            .collect();
        Self::from_alphas_cumprod(&a, dtype, device)
    }
}

/// Diffuses clean data to level `t` (the forward process):
/// `x_t = α_t x_0 + σ_t ε`, with `noise = ε ~ N(0, I)`.
pub fn q_sample(x0: &Tensor, noise: &Tensor, level: &NoiseLevel) -> Result<Tensor> {
    scale(&level.alpha, x0)?.add(&scale(&level.sigma, noise)?)
}

/// The network's estimate of the clean data:
/// `x_0 = (x_t - σ_t ε̂)/α_t` for ε-prediction, `x_0 = α_t x_t - σ_t v̂` for v-prediction.
pub fn predict_x0(
    x_t: &Tensor,
    model_output: &Tensor,
    prediction: Prediction,
    level: &NoiseLevel,
) -> Result<Tensor> {
    match prediction {
        Prediction::Eps => {
            let x = x_t.sub(&scale(&level.sigma, model_output)?)?;
            divide(&x, &level.alpha)
        }
        Prediction::V => scale(&level.alpha, x_t)?.sub(&scale(&level.sigma, model_output)?),
    }
}

/// The network's estimate of the noise:
/// `ε = ε̂` for ε-prediction, `ε = σ_t x_t + α_t v̂` for v-prediction.
pub fn predict_eps(
    x_t: &Tensor,
    model_output: &Tensor,
    prediction: Prediction,
    level: &NoiseLevel,
) -> Result<Tensor> {
    match prediction {
        Prediction::Eps => Ok(model_output.clone()),
        Prediction::V => scale(&level.sigma, x_t)?.add(&scale(&level.alpha, model_output)?),
    }
}

/// Per-sample coefficients of a DDIM step from `t` to `s` (Song et al., eq. 12).
#[derive(Debug, Clone)]
pub struct DdimCoefficients {
    /// `√ᾱ_s`, shape (B,).
    pub alpha_prev: Tensor,
    /// `√(1 - ᾱ_s - σ²)`, the weight of the predicted noise, shape (B,).
    pub direction: Tensor,
    /// `σ = η √((1 - ᾱ_s)/(1 - ᾱ_t)) √(1 - ᾱ_t/ᾱ_s)`, shape (B,).
    pub noise_std: Tensor,
}

impl DdimCoefficients {
    /// The coefficients of the step from index `i` to `i - 1` of `schedule` for each
    /// sample (from the last index to clean data, `ᾱ_s = 1`, for `i = 0`), with
    /// stochasticity `eta` (0: deterministic DDIM; 1: the variance of DDPM's posterior).
    pub fn new(
        schedule: &Schedule,
        indices: &[usize],
        eta: f64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        check_indices(schedule, indices)?;
        if eta.is_nan() || eta < 0.0 {
            bail!("DDIM's eta must be at least 0, got {eta}");
        }
        let mut alpha_prev = Vec::with_capacity(indices.len());
        let mut direction = Vec::with_capacity(indices.len());
        let mut noise_std = Vec::with_capacity(indices.len());
        for &i in indices {
            let a_t = schedule.alphas_cumprod()[i];
            let a_s = schedule.alphas_cumprod_prev(i);
            let sigma = eta * ((1.0 - a_s) / (1.0 - a_t) * (1.0 - a_t / a_s)).sqrt();
            alpha_prev.push(a_s.sqrt());
            // Rounding can push 1 - ᾱ_s - σ² a hair below 0 when ᾱ_s = 1.
            direction.push((1.0 - a_s - sigma * sigma).max(0.0).sqrt());
            noise_std.push(sigma);
        }
        Ok(Self {
            alpha_prev: per_sample(&alpha_prev, dtype, device)?,
            direction: per_sample(&direction, dtype, device)?,
            noise_std: per_sample(&noise_std, dtype, device)?,
        })
    }
}

/// One DDIM step:
/// `x_s = √ᾱ_s x̂_0 + √(1 - ᾱ_s - σ²) ε̂ + σ z`,
/// with `x̂_0` and `ε̂` from [`predict_x0`] and [`predict_eps`] at `level` (that of
/// `x_t`) and `z = noise ~ N(0, I)`. `noise = None` drops the last term (for `η = 0`).
pub fn ddim_step(
    x_t: &Tensor,
    model_output: &Tensor,
    prediction: Prediction,
    level: &NoiseLevel,
    coefs: &DdimCoefficients,
    noise: Option<&Tensor>,
) -> Result<Tensor> {
    let x0 = predict_x0(x_t, model_output, prediction, level)?;
    let eps = predict_eps(x_t, model_output, prediction, level)?;
    let x = scale(&coefs.alpha_prev, &x0)?.add(&scale(&coefs.direction, &eps)?)?;
    add_noise(x, &coefs.noise_std, noise)
}

/// Per-sample coefficients of an ancestral DDPM step: the posterior
/// `q(x_{i-1} | x_i, x_0) = N(c₁ x_0 + c₂ x_i, β̃_i)` of the (respaced) schedule.
#[derive(Debug, Clone)]
pub struct DdpmCoefficients {
    /// `c₁ = β_i √ᾱ_{i-1} / (1 - ᾱ_i)` (LDM's `posterior_mean_coef1`), shape (B,).
    pub mean_coef_x0: Tensor,
    /// `c₂ = (1 - ᾱ_{i-1}) √(1 - β_i) / (1 - ᾱ_i)` (`posterior_mean_coef2`), shape (B,).
    pub mean_coef_xt: Tensor,
    /// `exp(½ ln max(β̃_i, 1e-20))` (LDM's fixed-small, clipped log-variance), and 0 at
    /// step 0, where LDM masks the noise out; shape (B,).
    pub noise_std: Tensor,
}

impl DdpmCoefficients {
    /// The coefficients of the step from index `i` to `i - 1` of `schedule` for each sample.
    pub fn new(
        schedule: &Schedule,
        indices: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        check_indices(schedule, indices)?;
        let c1: Vec<f64> = indices
            .iter()
            .map(|&i| schedule.posterior_mean_coef1(i))
            .collect();
        let c2: Vec<f64> = indices
            .iter()
            .map(|&i| schedule.posterior_mean_coef2(i))
            .collect();
        let std: Vec<f64> = indices
            .iter()
            .map(|&i| {
                if i == 0 {
                    0.0
                } else {
                    (0.5 * schedule.posterior_log_variance_clipped(i)).exp()
                }
            })
            .collect();
        Ok(Self {
            mean_coef_x0: per_sample(&c1, dtype, device)?,
            mean_coef_xt: per_sample(&c2, dtype, device)?,
            noise_std: per_sample(&std, dtype, device)?,
        })
    }
}

/// One ancestral DDPM step as LDM's `p_sample`:
/// `x_{i-1} = c₁ x̂_0 + c₂ x_i + exp(½ log β̃_i) z`, with `x̂_0` from [`predict_x0`] (not
/// clipped: StableSR sets `clip_denoised = False`) and `z = noise ~ N(0, I)`.
/// `noise = None` drops the last term.
pub fn ddpm_step(
    x_t: &Tensor,
    model_output: &Tensor,
    prediction: Prediction,
    level: &NoiseLevel,
    coefs: &DdpmCoefficients,
    noise: Option<&Tensor>,
) -> Result<Tensor> {
    let x0 = predict_x0(x_t, model_output, prediction, level)?;
    let mean = scale(&coefs.mean_coef_x0, &x0)?.add(&scale(&coefs.mean_coef_xt, x_t)?)?;
    add_noise(mean, &coefs.noise_std, noise)
}

/// Per-sample coefficients of a DPM-Solver++(2M) step from `t` to `s` (Lu et al. 2022,
/// algorithm 2), with `λ = ln(α/σ)`, `h = λ_s - λ_t` and, for the second-order update,
/// `r = h_prev / h` where `h_prev` is the previous step's `h`.
#[derive(Debug, Clone)]
pub struct DpmSolverCoefficients {
    /// `σ_s / σ_t`, shape (B,).
    pub sigma_ratio: Tensor,
    /// `α_s (1 - e^{-h})` (= `α_s` when `s` is clean data), shape (B,).
    pub data_coef: Tensor,
    /// `1/(2r)` for a second-order update, 0 for a first-order one, shape (B,).
    pub correction: Tensor,
    /// Whether any sample takes a second-order update and so needs the previous `x̂_0`.
    pub needs_previous: bool,
}

impl DpmSolverCoefficients {
    /// The coefficients of the step from index `i` to `i - 1` of `schedule` (to clean
    /// data for `i = 0`) for each sample; `second_order[b]` chooses the 2M update for
    /// sample `b`, which uses the `x̂_0` predicted at index `i + 1`. The update into clean
    /// data (`i = 0`, `h = ∞`) is always first order: asking for second order there, or
    /// at the last index (no previous step), is an error.
    pub fn new(
        schedule: &Schedule,
        indices: &[usize],
        second_order: &[bool],
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        check_indices(schedule, indices)?;
        if second_order.len() != indices.len() {
            bail!(
                "one second-order flag per sample is needed: {} flags for {} samples",
                second_order.len(),
                indices.len()
            );
        }
        let lambda = |a: f64| 0.5 * (a.ln() - (1.0 - a).ln());
        let mut sigma_ratio = Vec::with_capacity(indices.len());
        let mut data_coef = Vec::with_capacity(indices.len());
        let mut correction = Vec::with_capacity(indices.len());
        for (&i, &second) in indices.iter().zip(second_order) {
            let a_t = schedule.alphas_cumprod()[i];
            let a_s = schedule.alphas_cumprod_prev(i);
            if i == 0 {
                // Into clean data: σ_s = 0, e^{-h} = 0, so x_s = α_s x̂_0 = x̂_0.
                if second {
                    bail!("the DPM-Solver++ step into clean data (index 0) is first order only");
                }
                sigma_ratio.push(0.0);
                data_coef.push(a_s.sqrt());
                correction.push(0.0);
                continue;
            }
            let h = lambda(a_s) - lambda(a_t);
            sigma_ratio.push(((1.0 - a_s) / (1.0 - a_t)).sqrt());
            // α_s (1 - e^{-h}) with expm1: h is small for fine step ladders.
            data_coef.push(-a_s.sqrt() * (-h).exp_m1());
            if second {
                if i + 1 >= schedule.len() {
                    bail!(
                        "a second-order DPM-Solver++ step needs a previous step, and index {i} \
                         is the first of {} steps",
                        schedule.len()
                    );
                }
                let h_prev = lambda(a_t) - lambda(schedule.alphas_cumprod()[i + 1]);
                correction.push(h / (2.0 * h_prev));
            } else {
                correction.push(0.0);
            }
        }
        Ok(Self {
            sigma_ratio: per_sample(&sigma_ratio, dtype, device)?,
            data_coef: per_sample(&data_coef, dtype, device)?,
            correction: per_sample(&correction, dtype, device)?,
            needs_previous: second_order.iter().any(|&s| s),
        })
    }
}

/// One DPM-Solver++(2M) step, in data prediction:
/// `x_s = (σ_s/σ_t) x_t + α_s (1 - e^{-h}) D`, with `D = x̂_0 + (1/(2r)) (x̂_0 - x̂_0,prev)`
/// (`D = x̂_0` for a first-order step, which is DDIM with `η = 0`).
///
/// `prev_x0` is the `x̂_0` of the previous step, needed when any sample takes a
/// second-order update. Returns `(x_s, x̂_0)`; keep `x̂_0` for the next step.
pub fn dpmpp_2m_step(
    x_t: &Tensor,
    model_output: &Tensor,
    prediction: Prediction,
    level: &NoiseLevel,
    prev_x0: Option<&Tensor>,
    coefs: &DpmSolverCoefficients,
) -> Result<(Tensor, Tensor)> {
    let x0 = predict_x0(x_t, model_output, prediction, level)?;
    let d = match prev_x0 {
        Some(prev) => x0.add(&scale(&coefs.correction, &x0.sub(prev)?)?)?,
        None if coefs.needs_previous => {
            bail!("a second-order DPM-Solver++ step needs the previous step's x0 prediction")
        }
        None => x0.clone(),
    };
    let x = scale(&coefs.sigma_ratio, x_t)?.add(&scale(&coefs.data_coef, &d)?)?;
    Ok((x, x0))
}

/// A (B,) tensor of per-sample coefficients, computed in f64 and rounded to `dtype`.
fn per_sample(values: &[f64], dtype: DType, device: &Device) -> Result<Tensor> {
    Tensor::from_slice(values, values.len(), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)
}

/// `coef[b] · x[b, ...]` for a (B,) coefficient tensor.
fn scale(coef: &Tensor, x: &Tensor) -> Result<Tensor> {
    x.broadcast_mul(&as_column(coef, x)?)
}

/// `x[b, ...] / coef[b]` for a (B,) coefficient tensor.
fn divide(x: &Tensor, coef: &Tensor) -> Result<Tensor> {
    x.broadcast_div(&as_column(coef, x)?)
}

/// `x + std · noise`, or `x` when there is no noise.
fn add_noise(x: Tensor, std: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
    match noise {
        Some(z) => x.add(&scale(std, z)?),
        None => Ok(x),
    }
}

/// Reshapes a (B,) coefficient tensor to (B, 1, ..., 1) of `x`'s rank.
fn as_column(coef: &Tensor, x: &Tensor) -> Result<Tensor> {
    let b = x.dim(0)?;
    if coef.dims() != [b] {
        bail!(
            "per-sample coefficients must have shape ({b},) for a batch of {b}, got {:?}",
            coef.dims()
        );
    }
    let mut shape = vec![1usize; x.rank()];
    shape[0] = b;
    coef.reshape(shape)
}

fn check_indices(schedule: &Schedule, indices: &[usize]) -> Result<()> {
    if let Some(&i) = indices.iter().find(|&&i| i >= schedule.len()) {
        bail!(
            "step index {i} is outside a schedule of {} steps",
            schedule.len()
        );
    }
    Ok(())
}

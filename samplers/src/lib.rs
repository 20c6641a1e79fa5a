//! Diffusion samplers for SpriteDX Restore: noise schedules, the per-step updates of
//! DDPM, DDIM and DPM-Solver++(2M) as pure tensor functions, and sampling loops that are
//! generic over a [`Denoiser`], so every model of the engine is driven by the same code.
//!
//! Everything runs on candle tensors of any device and float dtype; schedule arithmetic
//! is done in `f64` on the host, and noise is drawn on the CPU from seeded ChaCha8
//! streams, so results do not depend on the device or the thread count.
//!
//! # The process
//!
//! A [`Schedule`] of `T` betas gives `ᾱ_t = ∏_{k≤t} (1 - β_k)` and the forward process
//! `x_t = α_t x_0 + σ_t ε` with `α_t = √ᾱ_t`, `σ_t = √(1 - ᾱ_t)`, `ε ~ N(0, I)`
//! ([`q_sample`]). Stable Diffusion and StableSR use [`Schedule::ldm_linear`],
//! `β = linspace(√0.00085, √0.012, 1000)²`; [`Schedule::cosine`] is Nichol & Dhariwal's.
//!
//! A network predicts either `ε` or `v = α_t ε - σ_t x_0` ([`Prediction`]); both give
//! `x̂_0 = (x_t - σ_t ε̂)/α_t = α_t x_t - σ_t v̂` and `ε̂ = σ_t x_t + α_t v̂`
//! ([`predict_x0`], [`predict_eps`]).
//!
//! # Respacing
//!
//! A sampler with `N` steps uses StableSR's (improved-diffusion's) respacing:
//! [`space_timesteps`]`(1000, "N")` picks `N` timesteps `t_0 = 0 < ... < t_{N-1} = 999`,
//! and [`Schedule::respace`] builds the `N`-step schedule with the same `ᾱ` at those
//! timesteps and betas `β'_k = 1 - ᾱ_{t_k}/ᾱ_{t_{k-1}}`. The network is always shown the
//! original timestep `t_k` ([`Schedule::timesteps`]). Every sampler runs the indices
//! `N-1, ..., 0` and the last step goes to clean data (`ᾱ = 1`), so the result is the
//! network's `x̂_0` at `t_0 = 0` (as StableSR's DDPM loop ends; LDM's `DDIMSampler` instead
//! stops at `ᾱ_{t_0}`).
//!
//! [`Schedule::respace`] works in `f64`. [`Schedule::respace_f32`] repeats the f32
//! arithmetic of StableSR's PyTorch code and reproduces its schedule buffers (betas and
//! `ᾱ` bit for bit); pass it to [`Sampler::from_schedule`] for parity runs against
//! StableSR. The two differ by ~1e-7 relative in `ᾱ` and up to ~1e-4 in small betas.
//!
//! Because the respacing keeps `t = 0`, its last interval (`t_1 → 0`) is a long step in
//! `λ = ln(α/σ)`; with few steps, DPM-Solver++ is more accurate when that step is taken
//! at first order (`lower_order_final`).
//!
//! # The updates (per sample, from level `t` to the next level `s`)
//!
//! - DDPM ([`ddpm_step`]), ancestral with LDM's fixed-small variance:
//!   `x_s = c₁ x̂_0 + c₂ x_t + √β̃ z`, `c₁ = β √ᾱ_s/(1 - ᾱ_t)`,
//!   `c₂ = (1 - ᾱ_s) √(1 - β)/(1 - ᾱ_t)`, `β̃ = β (1 - ᾱ_s)/(1 - ᾱ_t)`, no noise at the
//!   last step.
//! - DDIM ([`ddim_step`]): `x_s = α_s x̂_0 + √(1 - ᾱ_s - σ²) ε̂ + σ z` with
//!   `σ = η √((1 - ᾱ_s)/(1 - ᾱ_t)) √(1 - ᾱ_t/ᾱ_s)`.
//! - DPM-Solver++(2M) ([`dpmpp_2m_step`]), with `λ = ln(α/σ)`, `h = λ_s - λ_t`:
//!   `x_s = (σ_s/σ_t) x_t + α_s (1 - e^{-h}) D`, `D = x̂_0 + (x̂_0 - x̂_0,prev)/(2r)`,
//!   `r = h_prev/h`; first order (`D = x̂_0`) at the first step and into clean data.
//!
//! The step functions take per-sample coefficient tensors of shape (B,) (built by
//! [`DdimCoefficients::new`] and the like from per-sample step indices), so each batch
//! element may be at its own step. They are the references for fused kernels.
//!
//! # Example
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use spritedx_samplers::{FnDenoiser, Method, Prediction, Sampler, Schedule, Start};
//!
//! # fn main() -> candle_core::Result<()> {
//! let device = Device::Cpu;
//! // A stand-in network: the ideal noise predictor when all data is the point 0.5,
//! // ε̂ = (x_t - α_t · 0.5)/σ_t, read from the training schedule at the timestep given.
//! let training = Schedule::ldm_linear()?;
//! let ac = training.alphas_cumprod().to_vec();
//! let mut denoiser = FnDenoiser::new(Prediction::Eps, |x: &Tensor, t: &Tensor| {
//!     let a = ac[t.to_vec1::<u32>()?[0] as usize];
//!     ((x - 0.5 * a.sqrt())? / (1.0 - a).sqrt())
//! });
//! let sampler = Sampler::new(&training, 20, Method::DpmSolverPP2M { lower_order_final: false })?;
//! let mut steps_done = 0;
//! let mut progress = |p: spritedx_samplers::Progress| steps_done = p.step;
//! let x0 = sampler.sample(
//!     &mut denoiser,
//!     Start::Noise { shape: &[1, 4, 8, 8], dtype: DType::F32, device: &device },
//!     &[42],
//!     Some(&mut progress),
//! )?;
//! assert_eq!(steps_done, 20);
//! let err = (x0 - 0.5)?.abs()?.max_all()?.to_scalar::<f32>()?;
//! assert!(err < 1e-5);
//! # Ok(())
//! # }
//! ```

pub mod denoiser;
mod fused;
pub mod sampler;
pub mod schedule;
pub mod steps;

pub use denoiser::{Denoiser, FnDenoiser};
pub use sampler::{Method, NoiseSource, Progress, Sampler, Start};
pub use schedule::{space_timesteps, space_timesteps_sections, Schedule};
pub use steps::{
    ddim_step, ddpm_step, dpmpp_2m_step, predict_eps, predict_x0, q_sample, DdimCoefficients,
    DdpmCoefficients, DpmSolverCoefficients, NoiseLevel, Prediction,
};

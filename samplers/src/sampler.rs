//! The sampling loops: DDPM, DDIM and DPM-Solver++(2M) over a respaced schedule.

use candle_core::{bail, DType, Device, Result, Shape, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::denoiser::Denoiser;
use crate::fused;
use crate::schedule::{space_timesteps_sections, Schedule};
use crate::steps::{
    ddim_step, ddpm_step, dpmpp_2m_step, q_sample, DdimCoefficients, DdpmCoefficients,
    DpmSolverCoefficients, NoiseLevel,
};

/// Which update a [`Sampler`] takes at each step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// Ancestral sampling with LDM's fixed-small posterior variance (StableSR's sampler).
    Ddpm,
    /// DDIM; `eta = 0` is deterministic (the probability-flow ODE, first order),
    /// `eta = 1` has the variance of DDPM's posterior.
    Ddim {
        /// The stochasticity η ≥ 0.
        eta: f64,
    },
    /// DPM-Solver++(2M): multistep, second order, data prediction. The first step and
    /// the final step into clean data are first order.
    DpmSolverPP2M {
        /// Also take the last step that ends at a nonzero noise level (into index 0)
        /// at first order. The DPM-Solver authors and diffusers do this for few steps
        /// (under 10 and 15 respectively), where it steadies the result.
        lower_order_final: bool,
    },
}

/// Where sampling starts.
#[derive(Debug, Clone, Copy)]
pub enum Start<'a> {
    /// Pure noise `N(0, I)` of this shape at the first (noisiest) step.
    Noise {
        /// (B, C, H, W).
        shape: &'a [usize],
        /// The dtype of the samples.
        dtype: DType,
        /// Where the samples live.
        device: &'a Device,
    },
    /// A clean latent diffused to a step (`q_sample`) and denoised from there (img2img):
    /// with `strength` in (0, 1] the sampler runs the last `⌊strength · N⌋` of its `N`
    /// steps ([`Schedule::start_index`]); strength 1 starts at the noisiest step.
    Latent {
        /// (B, C, H, W), on the device and in the dtype that sampling uses.
        latent: &'a Tensor,
        /// The fraction of the steps to run.
        strength: f64,
    },
}

/// What the progress callback is told after each step.
#[derive(Debug)]
pub struct Progress<'a> {
    /// The number of steps done, 1 after the first.
    pub step: usize,
    /// The number of steps this run takes.
    pub total: usize,
    /// The (training-schedule) timestep the network was just given.
    pub timestep: usize,
    /// The sample after this step.
    pub x: &'a Tensor,
}

/// Standard normal noise from one seeded ChaCha8 stream per batch element.
///
/// The noise is drawn on the CPU and then moved to the target device, so it is the same
/// on every device and thread count, and sample `b` gets the same noise whatever else is
/// in its batch.
pub struct NoiseSource {
    rngs: Vec<ChaCha8Rng>,
}

impl NoiseSource {
    /// One stream per seed, in batch order.
    pub fn new(seeds: &[u64]) -> Self {
        Self {
            rngs: seeds
                .iter()
                .map(|&s| ChaCha8Rng::seed_from_u64(s))
                .collect(),
        }
    }

    /// The batch size this source serves.
    pub fn batch(&self) -> usize {
        self.rngs.len()
    }

    /// `N(0, I)` noise of `shape` (B, ...): sample `b`'s elements are the next draws of
    /// stream `b`, in row-major order.
    pub fn sample(&mut self, shape: &Shape, dtype: DType, device: &Device) -> Result<Tensor> {
        let b = shape.dims().first().copied().unwrap_or(0);
        if b != self.rngs.len() {
            bail!(
                "noise for a batch of {b} requested from a source with {} seeds; give one \
                 seed per batch element",
                self.rngs.len()
            );
        }
        let per_sample = shape.elem_count() / b.max(1);
        let mut values = Vec::with_capacity(shape.elem_count());
        for rng in &mut self.rngs {
            values.extend((0..per_sample).map(|_| rng.sample::<f32, _>(StandardNormal)));
        }
        Tensor::from_vec(values, shape, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)
    }
}

/// A sampler: a method over a respaced schedule.
#[derive(Debug, Clone)]
pub struct Sampler {
    schedule: Schedule,
    method: Method,
}

impl Sampler {
    /// A sampler that takes `steps` steps of `training` (e.g. [`Schedule::ldm_linear`]),
    /// chosen by StableSR's respacing (`space_timesteps(T, [steps])`, which keeps the
    /// first and the last timestep; a single step keeps only `t = 0`).
    pub fn new(training: &Schedule, steps: usize, method: Method) -> Result<Self> {
        if steps == 0 {
            bail!("a sampler needs at least one step, got 0");
        }
        let keep = space_timesteps_sections(training.len(), &[steps])?;
        Ok(Self::from_schedule(training.respace(&keep)?, method))
    }

    /// A sampler over an already respaced schedule (one step per entry).
    pub fn from_schedule(schedule: Schedule, method: Method) -> Self {
        Self { schedule, method }
    }

    /// The respaced schedule the sampler steps through, from its last index down to 0.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The update rule.
    pub fn method(&self) -> Method {
        self.method
    }

    /// Draws samples: from `start`, steps down the schedule to clean data, asking
    /// `denoiser` once per step. `seeds` holds one seed per batch element (see
    /// [`NoiseSource`]); all noise (the start and every stochastic step) comes from them,
    /// so equal seeds give bit-identical results. `progress` is called after each step.
    ///
    /// When the samples are f32 on a CUDA device, the img2img start and the DDIM and
    /// DPM-Solver++ updates run as spritedx-kernels' fused ops (one kernel per step, the
    /// coefficients in tables built once per run); otherwise, and for DDPM (whose update
    /// has no fused kernel), as the composed tensor steps of [`crate::steps`], which are
    /// the reference: both paths do the same f32 operations in the same order.
    pub fn sample<D: Denoiser + ?Sized>(
        &self,
        denoiser: &mut D,
        start: Start<'_>,
        seeds: &[u64],
        progress: Option<&mut dyn FnMut(Progress<'_>)>,
    ) -> Result<Tensor> {
        let (dtype, device) = match start {
            Start::Noise { dtype, device, .. } => (dtype, device),
            Start::Latent { latent, .. } => (latent.dtype(), latent.device()),
        };
        let fused = device.is_cuda() && dtype == DType::F32;
        self.sample_on_path(denoiser, start, seeds, progress, fused)
    }

    /// [`Sampler::sample`] with the update path chosen by the caller: `fused` takes the
    /// kernels' fused ops on any device (f32 only), which lets the CPU tests compare the
    /// CUDA path's logic (tables, row indices, noise draws) with the composed one.
    pub(crate) fn sample_on_path<D: Denoiser + ?Sized>(
        &self,
        denoiser: &mut D,
        start: Start<'_>,
        seeds: &[u64],
        mut progress: Option<&mut dyn FnMut(Progress<'_>)>,
        fused: bool,
    ) -> Result<Tensor> {
        let sched = &self.schedule;
        let mut noise = NoiseSource::new(seeds);
        let (mut x, top) = match start {
            Start::Noise {
                shape,
                dtype,
                device,
            } => (
                noise.sample(&Shape::from_dims(shape), dtype, device)?,
                sched.len() - 1,
            ),
            Start::Latent { latent, strength } => {
                let top = sched.start_index(strength)?;
                let b = latent.dim(0)?;
                let z = noise.sample(latent.shape(), latent.dtype(), latent.device())?;
                let x = if fused {
                    fused::q_sample(latent, &z, sched, top)?
                } else {
                    let level =
                        NoiseLevel::at(sched, &vec![top; b], latent.dtype(), latent.device())?;
                    q_sample(latent, &z, &level)?
                };
                (x, top)
            }
        };
        let (b, dtype, device) = (x.dim(0)?, x.dtype(), x.device().clone());
        let prediction = denoiser.prediction();
        // The fused path's coefficient tables, built once for the whole run.
        let table = match (fused, self.method) {
            (true, Method::Ddim { eta }) => Some(fused::ddim_table(sched, eta, &device)?),
            (true, Method::DpmSolverPP2M { .. }) => Some(fused::dpm_table(sched, &device)?),
            _ => None,
        };
        let mut prev_x0: Option<Tensor> = None;
        for (done, i) in (0..=top).rev().enumerate() {
            let indices = vec![i; b];
            let timestep = sched.timesteps()[i];
            let t = Tensor::from_vec(vec![timestep as u32; b], b, &device)?;
            let out = denoiser.predict(&x, &t)?;
            if out.dims() != x.dims() {
                bail!(
                    "the denoiser returned shape {:?} for a sample of shape {:?} at timestep \
                     {timestep}; it must return the sample's shape",
                    out.dims(),
                    x.dims()
                );
            }
            x = match self.method {
                Method::Ddpm => {
                    let level = NoiseLevel::at(sched, &indices, dtype, &device)?;
                    let coefs = DdpmCoefficients::new(sched, &indices, dtype, &device)?;
                    let z = if i > 0 {
                        Some(noise.sample(x.shape(), dtype, &device)?)
                    } else {
                        None
                    };
                    ddpm_step(&x, &out, prediction, &level, &coefs, z.as_ref())?
                }
                Method::Ddim { eta } => {
                    let z = if eta > 0.0 && i > 0 {
                        Some(noise.sample(x.shape(), dtype, &device)?)
                    } else {
                        None
                    };
                    if let Some(table) = &table {
                        spritedx_kernels::sampler::ddim_step(
                            &x,
                            &out,
                            fused::kernel_prediction(prediction),
                            table,
                            &fused::rows(i, b, &device)?,
                            z.as_ref(),
                        )?
                    } else {
                        let level = NoiseLevel::at(sched, &indices, dtype, &device)?;
                        let coefs = DdimCoefficients::new(sched, &indices, eta, dtype, &device)?;
                        ddim_step(&x, &out, prediction, &level, &coefs, z.as_ref())?
                    }
                }
                Method::DpmSolverPP2M { lower_order_final } => {
                    let second = prev_x0.is_some() && i > 0 && !(lower_order_final && i == 1);
                    let prev = if second { prev_x0.as_ref() } else { None };
                    let (next, x0) = if let Some(table) = &table {
                        spritedx_kernels::sampler::dpmpp_2m_step(
                            &x,
                            &out,
                            fused::kernel_prediction(prediction),
                            table,
                            &fused::rows(fused::dpm_row(i, second, sched.len()), b, &device)?,
                            prev,
                        )?
                    } else {
                        let level = NoiseLevel::at(sched, &indices, dtype, &device)?;
                        let coefs = DpmSolverCoefficients::new(
                            sched,
                            &indices,
                            &vec![second; b],
                            dtype,
                            &device,
                        )?;
                        dpmpp_2m_step(&x, &out, prediction, &level, prev, &coefs)?
                    };
                    prev_x0 = Some(x0);
                    next
                }
            };
            if let Some(report) = progress.as_mut() {
                report(Progress {
                    step: done + 1,
                    total: top + 1,
                    timestep,
                    x: &x,
                });
            }
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::denoiser::FnDenoiser;
    use crate::steps::Prediction;

    /// A smooth, nonlinear stand-in for a network that depends on both `x_t` and `t`.
    fn network(x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let b = x.dim(0)?;
        let shift = t
            .to_dtype(DType::F32)?
            .affine(1e-3, 0.0)?
            .reshape((b, 1, 1, 1))?;
        x.affine(0.8, 0.1)?.sin()?.broadcast_add(&shift)
    }

    /// The fused path, forced on the CPU (where the fused ops run the kernels' Rust
    /// reference), gives the composed path's samples for every method, prediction and
    /// start. Tolerance 0: every step does the same f32 operations in the same order, on
    /// the same coefficients and noise draws.
    #[test]
    fn fused_path_samples_equal_composed_path_samples() -> Result<()> {
        let training = Schedule::ldm_linear()?;
        let methods = [
            Method::Ddpm,
            Method::Ddim { eta: 0.0 },
            Method::Ddim { eta: 1.0 },
            Method::DpmSolverPP2M {
                lower_order_final: false,
            },
            Method::DpmSolverPP2M {
                lower_order_final: true,
            },
        ];
        let shape = [2usize, 3, 5, 4];
        let latent = Tensor::arange(0f32, 120.0, &Device::Cpu)?
            .affine(0.05, -3.0)?
            .cos()?
            .reshape(&shape[..])?;
        let seeds = [7u64, 8];
        let mut cases = 0;
        for method in methods {
            let sampler = Sampler::new(&training, 10, method)?;
            for prediction in [Prediction::Eps, Prediction::V] {
                let starts = [
                    Start::Noise {
                        shape: &shape,
                        dtype: DType::F32,
                        device: &Device::Cpu,
                    },
                    Start::Latent {
                        latent: &latent,
                        strength: 0.6,
                    },
                ];
                for start in starts {
                    let run = |fused: bool| {
                        let mut denoiser = FnDenoiser::new(prediction, network);
                        sampler.sample_on_path(&mut denoiser, start, &seeds, None, fused)
                    };
                    let (composed, fused) = (run(false)?, run(true)?);
                    let diff = composed.sub(&fused)?.abs()?.max_all()?.to_scalar::<f32>()?;
                    assert!(
                        composed.abs()?.max_all()?.to_scalar::<f32>()? > 0.0,
                        "{method:?}: samples must be nonzero to compare anything"
                    );
                    assert_eq!(diff, 0.0, "{method:?} {prediction:?} {start:?}");
                    cases += 1;
                }
            }
        }
        assert_eq!(cases, 20);
        Ok(())
    }
}

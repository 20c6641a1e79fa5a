//! The samplers on data distributions whose ideal denoiser, and whose exact sampling
//! result, are known in closed form.

mod common;

use candle_core::{DType, Device, Result, Shape, Tensor};
use common::{channel, max_abs_diff, mean_var, uniform, Data, IdealDenoiser};
use spritedx_samplers::{Method, NoiseSource, Prediction, Sampler, Schedule, Start};

/// Per-channel `(μ, s)` of the Gaussian test data: unit variance like SD latents, and
/// narrower and wider ones with offsets.
const GAUSSIAN: [(f64, f64); 4] = [(0.0, 1.0), (0.5, 0.5), (-1.0, 0.2), (2.0, 1.5)];

fn gaussian() -> Data {
    Data::Gaussian {
        mu: GAUSSIAN.iter().map(|g| g.0).collect(),
        s: GAUSSIAN.iter().map(|g| g.1).collect(),
    }
}

fn noise_start(shape: &[usize]) -> Start<'_> {
    Start::Noise {
        shape,
        dtype: DType::F32,
        device: &Device::Cpu,
    }
}

const DPM: Method = Method::DpmSolverPP2M {
    lower_order_final: false,
};
const DPM_LOF: Method = Method::DpmSolverPP2M {
    lower_order_final: true,
};

#[test]
fn every_sampler_returns_the_single_data_point_at_any_step_count() -> Result<()> {
    // For a point mass at x0 the ideal predictor gives x̂_0 = x0 exactly, so every method
    // must end on x0 up to f32 rounding, however few steps and whatever the noise.
    let training = Schedule::ldm_linear()?;
    let shape = [2, 4, 8, 8];
    let x0 = uniform(&shape, -1.0, 1.0, 7)?;
    let mut worst = 0.0f64;
    for steps in [1, 2, 3, 5, 10, 20, 50, 200, 1000] {
        for method in [
            Method::Ddpm,
            Method::Ddim { eta: 0.0 },
            Method::Ddim { eta: 1.0 },
            DPM,
            DPM_LOF,
        ] {
            for prediction in [Prediction::Eps, Prediction::V] {
                let sampler = Sampler::new(&training, steps, method)?;
                let mut den = IdealDenoiser::new(Data::Point(x0.clone()), prediction, &training);
                let out = sampler.sample(&mut den, noise_start(&shape), &[1, 2], None)?;
                assert_eq!(den.calls.len(), steps);
                let err = max_abs_diff(&out, &x0)?;
                assert!(
                    err < 1e-5,
                    "{method:?} {prediction:?} {steps} steps: |x - x0| = {err:e}"
                );
                worst = worst.max(err);
                // The same from a noised image at half strength.
                let mut den = IdealDenoiser::new(Data::Point(x0.clone()), prediction, &training);
                let start = Start::Latent {
                    latent: &x0,
                    strength: 0.5,
                };
                if let Ok(out) = sampler.sample(&mut den, start, &[1, 2], None) {
                    let err = max_abs_diff(&out, &x0)?;
                    assert!(
                        err < 1e-5,
                        "{method:?} {prediction:?} {steps} steps from x0: {err:e}"
                    );
                    worst = worst.max(err);
                } else {
                    assert_eq!(
                        steps, 1,
                        "only a 1-step sampler runs no step at strength 0.5"
                    );
                }
            }
        }
    }
    println!("point mass: max |x - x0| = {worst:e} (tolerance 1e-5)");
    Ok(())
}

/// Mean and variance of the output of LDM's DDPM chain (fixed-small variance) with the
/// ideal denoiser for `N(μ, s²)` data, started from `N(0, 1)`: every step is linear
/// Gaussian, `x_s = c₁ x̂_0 + c₂ x_t + σ̃ z` with `x̂_0 = μ + k (x_t - α_t μ)`, so the
/// moments follow exactly. (DDIM with η = 1 is the same chain.)
fn ddpm_chain_moments(sched: &Schedule, mu: f64, s: f64) -> (f64, f64) {
    let (mut m, mut v) = (0.0f64, 1.0f64);
    for i in (0..sched.len()).rev() {
        let at = sched.alphas_cumprod()[i];
        let a = at.sqrt();
        let k = a * s * s / (at * s * s + 1.0 - at);
        let (c1, c2) = (sched.posterior_mean_coef1(i), sched.posterior_mean_coef2(i));
        let noise_var = if i == 0 {
            0.0
        } else {
            sched.posterior_variance(i)
        };
        m = c1 * (mu + k * (m - a * mu)) + c2 * m;
        v = (c1 * k + c2).powi(2) * v + noise_var;
    }
    (m, v)
}

#[test]
fn ddpm_and_ddim_eta_1_sample_gaussian_data_with_the_right_moments() -> Result<()> {
    // 4 samples of 4×128×128: 65536 elements per channel. The standard error of the
    // sample mean is sd/256 and that of the sample variance var·√(2/65535) = 0.55% of it;
    // the tolerance is 5 standard errors around the moments that the chain must have.
    // LDM's fixed-small posterior variance makes DDPM's output narrower than the data at
    // finite step counts (e.g. -3.3% variance for s = 1 at 200 steps, -0.8% at 1000):
    // that bias is computed exactly by `ddpm_chain_moments` and printed against the data.
    let training = Schedule::ldm_linear()?;
    let shape = [4, 4, 128, 128];
    let n = (shape[0] * shape[2] * shape[3]) as f64;
    for steps in [20, 200] {
        for method in [Method::Ddpm, Method::Ddim { eta: 1.0 }] {
            let sampler = Sampler::new(&training, steps, method)?;
            let mut den = IdealDenoiser::new(gaussian(), Prediction::Eps, &training);
            let out = sampler.sample(&mut den, noise_start(&shape), &[11, 12, 13, 14], None)?;
            for (c, &(mu, s)) in GAUSSIAN.iter().enumerate() {
                let (m, v) = mean_var(&channel(&out, c)?);
                let (cm, cv) = ddpm_chain_moments(sampler.schedule(), mu, s);
                let (se_m, se_v) = ((cv / n).sqrt(), cv * (2.0 / (n - 1.0)).sqrt());
                println!(
                    "{method:?} {steps} steps, N({mu}, {s}²): mean {m:.5} (chain {cm:.5}, \
                     {:.2} se), var {v:.5} (chain {cv:.5}, {:.2} se; data {:.5}, chain bias {:+.2}%)",
                    (m - cm) / se_m,
                    (v - cv) / se_v,
                    s * s,
                    100.0 * (cv / (s * s) - 1.0)
                );
                assert!((m - cm).abs() < 5.0 * se_m, "mean {m} vs {cm}");
                assert!((v - cv).abs() < 5.0 * se_v, "variance {v} vs {cv}");
            }
        }
    }
    Ok(())
}

#[test]
fn ddim_with_eta_1_is_ddpm() -> Result<()> {
    // With σ² = β̃ the DDIM update equals the DDPM posterior step, and both draw the same
    // noise (the start, then one draw per step but the last), so the samples agree to f32
    // rounding (tolerance 1e-5).
    let training = Schedule::ldm_linear()?;
    let shape = [2, 4, 16, 16];
    for steps in [10, 200] {
        let mut den = IdealDenoiser::new(gaussian(), Prediction::Eps, &training);
        let ddpm = Sampler::new(&training, steps, Method::Ddpm)?.sample(
            &mut den,
            noise_start(&shape),
            &[3, 4],
            None,
        )?;
        let ddim = Sampler::new(&training, steps, Method::Ddim { eta: 1.0 })?.sample(
            &mut den,
            noise_start(&shape),
            &[3, 4],
            None,
        )?;
        let err = max_abs_diff(&ddpm, &ddim)?;
        println!("{steps} steps: |DDPM - DDIM(η=1)| = {err:e}");
        assert!(err < 1e-5, "{steps} steps: {err:e}");
    }
    Ok(())
}

/// The exact solution of the probability-flow ODE for `N(μ, s²)` data from `x_T` at
/// `ᾱ_T` to `ᾱ_0`, followed by the samplers' last step into clean data with the ideal
/// denoiser (`x̂_0 = E[x_0 | x_{t_0}]`), per element in f64. Along the ODE the whitened
/// value `(x - α μ)/√(α² s² + σ²)` is constant.
fn pf_ode_solution(x_t: &Tensor, a_top: f64, a_low: f64) -> Result<Vec<Vec<f64>>> {
    let spread = |a: f64, s: f64| (a * s * s + 1.0 - a).sqrt();
    GAUSSIAN
        .iter()
        .enumerate()
        .map(|(c, &(mu, s))| {
            Ok(channel(x_t, c)?
                .into_iter()
                .map(|x| {
                    let w = (x - a_top.sqrt() * mu) / spread(a_top, s);
                    let x_low = a_low.sqrt() * mu + spread(a_low, s) * w;
                    mu + a_low.sqrt() * s * s * (x_low - a_low.sqrt() * mu)
                        / spread(a_low, s).powi(2)
                })
                .collect())
        })
        .collect()
}

fn ode_error(
    training: &Schedule,
    steps: usize,
    method: Method,
    prediction: Prediction,
) -> Result<f64> {
    ode_error_of(training, Sampler::new(training, steps, method)?, prediction)
}

/// A schedule of `steps` steps equally spaced in `λ = ln(α/σ)` between the ends of the
/// LDM schedule, for a convergence-order check free of the uneven last steps of the
/// uniform-in-t respacing.
fn log_snr_uniform(steps: usize) -> Result<Schedule> {
    let ldm = Schedule::ldm_linear()?;
    let lambda = |a: f64| 0.5 * (a / (1.0 - a)).ln();
    let (hi, lo) = (
        lambda(ldm.alphas_cumprod()[0]),
        lambda(ldm.alphas_cumprod()[999]),
    );
    let ac: Vec<f64> = (0..steps)
        .map(|k| {
            let l = hi + (lo - hi) * k as f64 / (steps - 1) as f64;
            1.0 / (1.0 + (-2.0 * l).exp())
        })
        .collect();
    let betas = (0..steps)
        .map(|k| 1.0 - ac[k] / if k == 0 { 1.0 } else { ac[k - 1] })
        .collect();
    Schedule::from_betas(betas)
}

fn ode_error_of(training: &Schedule, sampler: Sampler, prediction: Prediction) -> Result<f64> {
    let shape = [1, 4, 32, 32];
    let seeds = [5];
    let mut den = IdealDenoiser::new(gaussian(), prediction, training);
    let out = sampler.sample(&mut den, noise_start(&shape), &seeds, None)?;
    // The sampler's start is the first draw of its noise source.
    let x_top =
        NoiseSource::new(&seeds).sample(&Shape::from_dims(&shape), DType::F32, &Device::Cpu)?;
    let ac = sampler.schedule().alphas_cumprod();
    let want = pf_ode_solution(&x_top, ac[ac.len() - 1], ac[0])?;
    let mut err = 0.0f64;
    for (c, want_c) in want.iter().enumerate() {
        for (g, w) in channel(&out, c)?.iter().zip(want_c) {
            err = err.max((g - w).abs());
        }
    }
    Ok(err)
}

#[test]
fn deterministic_samplers_follow_the_probability_flow_ode() -> Result<()> {
    // Max abs error against the exact ODE solution over 4096 elements (the Gaussian data
    // above, values up to ~8), on StableSR's uniform-in-t respacing. That respacing keeps
    // t = 0, so its last interval (t_1 -> 0) is a long step in λ = ln(α/σ) (λ goes from
    // ~2.6 to 3.5 even at 200 steps), which dominates the error of both solvers; a
    // second-order DPM-Solver++ update over it extrapolates with a large 1/(2r), which
    // is what the lower-order final step avoids (compare the even-λ test below).
    // Asserted: DPM-Solver++(2M) is more accurate than DDIM (η = 0) at every step count
    // from 14 up, and with the lower-order final step at every step count; tolerances at
    // 20 and 50 steps are ~1.4x the errors measured when they were written (20 steps:
    // DDIM 0.254, DPM 0.228, DPM lower-order final 0.149; 50 steps: 0.102, 0.075, 0.062).
    let training = Schedule::ldm_linear()?;
    for steps in [5, 10, 14, 20, 40, 50, 100, 200] {
        let ddim = ode_error(&training, steps, Method::Ddim { eta: 0.0 }, Prediction::Eps)?;
        let dpm = ode_error(&training, steps, DPM, Prediction::Eps)?;
        let dpm_lof = ode_error(&training, steps, DPM_LOF, Prediction::Eps)?;
        println!(
            "{steps} steps: ODE error DDIM {ddim:.3e}, DPM-Solver++(2M) {dpm:.3e}, \
             with lower-order final {dpm_lof:.3e}"
        );
        assert!(
            dpm_lof < ddim,
            "{steps} steps: DPM-Solver++ (lower-order final) {dpm_lof:e} vs DDIM {ddim:e}"
        );
        if steps >= 14 {
            assert!(
                dpm < ddim,
                "{steps} steps: DPM-Solver++ {dpm:e} is not more accurate than DDIM {ddim:e}"
            );
        }
        let tolerances = match steps {
            20 => Some((0.35, 0.32, 0.21)),
            50 => Some((0.14, 0.105, 0.087)),
            _ => None,
        };
        if let Some((t_ddim, t_dpm, t_lof)) = tolerances {
            assert!(
                ddim < t_ddim,
                "{steps} steps: DDIM error {ddim:e} over {t_ddim}"
            );
            assert!(
                dpm < t_dpm,
                "{steps} steps: DPM-Solver++ error {dpm:e} over {t_dpm}"
            );
            assert!(
                dpm_lof < t_lof,
                "{steps} steps: DPM-Solver++ (lower-order final) error {dpm_lof:e} over {t_lof}"
            );
        }
    }
    Ok(())
}

#[test]
fn dpm_solver_is_second_order_and_ddim_first_order_on_an_even_log_snr_grid() -> Result<()> {
    // With steps of equal h in λ the global errors must shrink 2x (DDIM) and 4x
    // (DPM-Solver++(2M)) per doubling of the step count. Measured ratios: DDIM 2.02, 2.01,
    // 2.01; DPM 3.61, 4.06, 4.07 (10 -> 20 -> 40 -> 80 steps); at 40 steps the errors are
    // 0.171 and 0.0066.
    let mut prev: Option<(f64, f64)> = None;
    for steps in [10, 20, 40, 80] {
        let sched = log_snr_uniform(steps)?;
        let run = |method| {
            ode_error_of(
                &sched,
                Sampler::from_schedule(sched.clone(), method),
                Prediction::Eps,
            )
        };
        let (ddim, dpm) = (run(Method::Ddim { eta: 0.0 })?, run(DPM)?);
        println!("{steps} steps on an even λ grid: ODE error DDIM {ddim:.3e}, DPM-Solver++(2M) {dpm:.3e}");
        assert!(
            dpm < ddim / 5.0,
            "{steps} steps: DPM-Solver++ {dpm:e} vs DDIM {ddim:e}"
        );
        if let Some((prev_ddim, prev_dpm)) = prev {
            let (r_ddim, r_dpm) = (prev_ddim / ddim, prev_dpm / dpm);
            println!(
                "  error ratio from half the steps: DDIM {r_ddim:.2}, DPM-Solver++ {r_dpm:.2}"
            );
            assert!(
                (1.8..2.2).contains(&r_ddim),
                "DDIM convergence ratio {r_ddim}"
            );
            assert!(r_dpm > 3.3, "DPM-Solver++ convergence ratio {r_dpm}");
        }
        prev = Some((ddim, dpm));
    }
    Ok(())
}

#[test]
fn eps_and_v_denoisers_give_the_same_samples() -> Result<()> {
    // The same ideal denoiser, once predicting ε and once v = α ε - σ x̂_0: the samplers
    // convert both to the same x̂_0 and ε̂, so with the same seeds the samples agree to
    // f32 rounding (tolerance 1e-5).
    let training = Schedule::ldm_linear()?;
    let shape = [2, 4, 16, 16];
    for method in [
        Method::Ddpm,
        Method::Ddim { eta: 0.0 },
        Method::Ddim { eta: 0.5 },
        DPM,
        DPM_LOF,
    ] {
        for steps in [5, 50] {
            let sampler = Sampler::new(&training, steps, method)?;
            let mut eps = IdealDenoiser::new(gaussian(), Prediction::Eps, &training);
            let mut v = IdealDenoiser::new(gaussian(), Prediction::V, &training);
            let a = sampler.sample(&mut eps, noise_start(&shape), &[8, 9], None)?;
            let b = sampler.sample(&mut v, noise_start(&shape), &[8, 9], None)?;
            let err = max_abs_diff(&a, &b)?;
            println!("{method:?} {steps} steps: |eps - v| = {err:e}");
            assert!(err < 1e-5, "{method:?} {steps} steps: {err:e}");
        }
    }
    Ok(())
}

//! The step functions against their formulas and the fixture's buffers, per-sample
//! timesteps, determinism, and what the loops tell the denoiser and the callback.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Result, Tensor};
use common::{max_abs_diff, uniform, Data, IdealDenoiser};
use spritedx_samplers::{
    ddim_step, ddpm_step, dpmpp_2m_step, q_sample, space_timesteps, DdimCoefficients,
    DdpmCoefficients, DpmSolverCoefficients, Method, NoiseLevel, Prediction, Progress, Sampler,
    Schedule, Start,
};

fn fixture() -> Result<HashMap<String, Tensor>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/stablesr/tiny_io.safetensors");
    candle_core::safetensors::load(&path, &Device::Cpu)
}

fn buffer(t: &HashMap<String, Tensor>, name: &str) -> Result<Vec<f64>> {
    t[name].to_dtype(DType::F64)?.to_vec1::<f64>()
}

/// `x[b]` as f64 values.
fn sample_values(x: &Tensor, b: usize) -> Result<Vec<f64>> {
    x.get(b)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()
}

const CPU: Device = Device::Cpu;

/// One f32 unit roundoff, 2^-24.
const F32_HALF_ULP: f64 = 1.0 / 16_777_216.0;

#[test]
fn q_sample_matches_its_formula_with_the_fixture_schedule() -> Result<()> {
    // x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε at per-sample t, against the f32 sqrt_* buffers that
    // StableSR's script keeps for q_sample_respace, in f64 per element (tolerance 1e-6
    // absolute on values of scale ~1: f32 rounding of three terms).
    let t = fixture()?;
    let sqrt_a = buffer(&t, "schedule.sampling.sqrt_alphas_cumprod_1000")?;
    let sqrt_1m = buffer(&t, "schedule.sampling.sqrt_one_minus_alphas_cumprod_1000")?;
    let sched = Schedule::ldm_linear()?;
    let steps = [999usize, 500, 17, 0];
    let shape = [4, 4, 8, 8];
    let x0 = uniform(&shape, -1.0, 1.0, 1)?;
    let eps = uniform(&shape, -2.0, 2.0, 2)?;
    let level = NoiseLevel::at(&sched, &steps, DType::F32, &CPU)?;
    let x_t = q_sample(&x0, &eps, &level)?;
    let mut worst = 0.0f64;
    for (b, &step) in steps.iter().enumerate() {
        let (x0_b, eps_b, got) = (
            sample_values(&x0, b)?,
            sample_values(&eps, b)?,
            sample_values(&x_t, b)?,
        );
        for ((x, e), g) in x0_b.iter().zip(&eps_b).zip(&got) {
            let want = sqrt_a[step] * x + sqrt_1m[step] * e;
            worst = worst.max((g - want).abs());
        }
    }
    println!("q_sample vs formula: max abs err {worst:e}");
    assert!(worst < 1e-6);

    // The coefficients themselves: q_sample(1, 0) = √ᾱ_t and q_sample(0, 1) = √(1-ᾱ_t),
    // to f32 rounding of the fixture's values (1e-7 relative).
    let all: Vec<usize> = (0..1000).collect();
    let level = NoiseLevel::at(&sched, &all, DType::F32, &CPU)?;
    let ones = Tensor::ones((1000, 1), DType::F32, &CPU)?;
    let zeros = ones.zeros_like()?;
    let a = q_sample(&ones, &zeros, &level)?
        .flatten_all()?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?;
    let s = q_sample(&zeros, &ones, &level)?
        .flatten_all()?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?;
    for i in 0..1000 {
        assert!(
            (a[i] - sqrt_a[i]).abs() <= 1e-7 * sqrt_a[i],
            "√ᾱ[{i}]: {} vs {}",
            a[i],
            sqrt_a[i]
        );
        assert!(
            (s[i] - sqrt_1m[i]).abs() <= 1e-7 * sqrt_1m[i],
            "√(1-ᾱ)[{i}]: {} vs {}",
            s[i],
            sqrt_1m[i]
        );
    }
    Ok(())
}

#[test]
fn ddpm_step_is_ldm_p_sample_with_the_fixture_buffers() -> Result<()> {
    // LDM's p_sample for ε-prediction, written out per element in f64 from the f32
    // buffers of the 200-step respaced schedule of StableSR's script:
    //   x̂0 = sqrt_recip_ac[i] x - sqrt_recipm1_ac[i] ε, mean = coef1[i] x̂0 + coef2[i] x,
    //   out = mean + (i > 0) exp(½ posterior_log_variance_clipped[i]) z,
    // against `ddpm_step` on our f32-path respacing of the same steps, for a batch whose
    // samples sit at different steps (0 included, where the noise is masked).
    // Tolerance per element: 8 f32 roundings (2^-24 each) of the sum of the terms'
    // magnitudes, plus coef1 |ε| times the reference's own rounding error in
    // sqrt_recipm1_ac (2^-24/ᾱ/(2 sqrt_recipm1), see the schedule fixture test).
    let t = fixture()?;
    let p = "schedule.respaced200";
    let recip = buffer(&t, &format!("{p}.sqrt_recip_alphas_cumprod"))?;
    let recipm1 = buffer(&t, &format!("{p}.sqrt_recipm1_alphas_cumprod"))?;
    let c1 = buffer(&t, &format!("{p}.posterior_mean_coef1"))?;
    let c2 = buffer(&t, &format!("{p}.posterior_mean_coef2"))?;
    let logvar = buffer(&t, &format!("{p}.posterior_log_variance_clipped"))?;
    let sched = Schedule::ldm_linear()?.respace_f32(&space_timesteps(1000, "200")?)?;
    let steps = [199usize, 120, 1, 0];
    let shape = [4, 4, 8, 8];
    let x = uniform(&shape, -1.5, 1.5, 3)?;
    let eps = uniform(&shape, -2.0, 2.0, 4)?;
    let z = uniform(&shape, -2.0, 2.0, 5)?;
    let level = NoiseLevel::at(&sched, &steps, DType::F32, &CPU)?;
    let coefs = DdpmCoefficients::new(&sched, &steps, DType::F32, &CPU)?;
    let got = ddpm_step(&x, &eps, Prediction::Eps, &level, &coefs, Some(&z))?;
    let mut worst = 0.0f64;
    for (b, &i) in steps.iter().enumerate() {
        let (xb, eb, zb, gb) = (
            sample_values(&x, b)?,
            sample_values(&eps, b)?,
            sample_values(&z, b)?,
            sample_values(&got, b)?,
        );
        let std = if i == 0 { 0.0 } else { (0.5 * logvar[i]).exp() };
        let a = sched.alphas_cumprod()[i];
        let recipm1_err = F32_HALF_ULP / a / (2.0 * recipm1[i]);
        for k in 0..xb.len() {
            let x0 = recip[i] * xb[k] - recipm1[i] * eb[k];
            let want = c1[i] * x0 + c2[i] * xb[k] + std * zb[k];
            let magnitude = c1[i] * (recip[i] * xb[k].abs() + recipm1[i] * eb[k].abs())
                + c2[i] * xb[k].abs()
                + std * zb[k].abs();
            let tol = 8.0 * F32_HALF_ULP * magnitude + c1[i] * eb[k].abs() * recipm1_err;
            let err = (gb[k] - want).abs();
            assert!(
                err <= tol,
                "sample {b} (step {i}) element {k}: {} vs {want}, tolerance {tol:e}",
                gb[k]
            );
            worst = worst.max(err / tol);
        }
    }
    println!("ddpm_step vs LDM p_sample: max error / tolerance {worst:.3}");
    Ok(())
}

/// Runs each step function on a batch of 2 whose samples are at different steps, and on
/// each sample alone; the results must be bit-identical.
#[test]
fn per_sample_timesteps_equal_stepping_each_sample_alone() -> Result<()> {
    let sched = Schedule::ldm_linear()?.respace(&space_timesteps(1000, "20")?)?;
    let steps = [15usize, 3];
    let shape = [2, 4, 8, 8];
    let x = uniform(&shape, -2.0, 2.0, 6)?;
    let out = uniform(&shape, -2.0, 2.0, 7)?;
    let prev = uniform(&shape, -1.0, 1.0, 8)?;
    let z = uniform(&shape, -2.0, 2.0, 9)?;
    let f32 = DType::F32;

    type Step<'a> = dyn Fn(&[usize], &Tensor, &Tensor, &Tensor, &Tensor) -> Result<Tensor> + 'a;
    let cases: Vec<(&str, Box<Step>)> = vec![
        (
            "q_sample",
            Box::new(|idx, x, _, _, z| q_sample(x, z, &NoiseLevel::at(&sched, idx, f32, &CPU)?)),
        ),
        (
            "ddim_step (η = 0.7, v)",
            Box::new(|idx, x, out, _, z| {
                let level = NoiseLevel::at(&sched, idx, f32, &CPU)?;
                let coefs = DdimCoefficients::new(&sched, idx, 0.7, f32, &CPU)?;
                ddim_step(x, out, Prediction::V, &level, &coefs, Some(z))
            }),
        ),
        (
            "ddpm_step",
            Box::new(|idx, x, out, _, z| {
                let level = NoiseLevel::at(&sched, idx, f32, &CPU)?;
                let coefs = DdpmCoefficients::new(&sched, idx, f32, &CPU)?;
                ddpm_step(x, out, Prediction::Eps, &level, &coefs, Some(z))
            }),
        ),
        (
            "dpmpp_2m_step (second order)",
            Box::new(|idx, x, out, prev, _| {
                let level = NoiseLevel::at(&sched, idx, f32, &CPU)?;
                let coefs =
                    DpmSolverCoefficients::new(&sched, idx, &vec![true; idx.len()], f32, &CPU)?;
                Ok(dpmpp_2m_step(x, out, Prediction::Eps, &level, Some(prev), &coefs)?.0)
            }),
        ),
    ];
    for (name, step) in &cases {
        let batch = step(&steps, &x, &out, &prev, &z)?;
        for (b, &i) in steps.iter().enumerate() {
            let one = |t: &Tensor| t.narrow(0, b, 1);
            let alone = step(&[i], &one(&x)?, &one(&out)?, &one(&prev)?, &one(&z)?)?;
            let diff = max_abs_diff(&batch.narrow(0, b, 1)?, &alone)?;
            assert_eq!(
                diff, 0.0,
                "{name}: sample {b} at step {i} differs in a batch by {diff:e}"
            );
        }
        // And the two samples really were stepped differently.
        let other = step(&[steps[0], steps[0]], &x, &out, &prev, &z)?;
        assert!(
            max_abs_diff(&other, &batch)? > 1e-3,
            "{name}: the step index has no effect"
        );
    }
    Ok(())
}

#[test]
fn dpmpp_second_order_step_needs_the_previous_prediction_and_refuses_clean_data() -> Result<()> {
    let sched = Schedule::ldm_linear()?.respace(&space_timesteps(1000, "10")?)?;
    let x = uniform(&[1, 2, 2, 2], -1.0, 1.0, 1)?;
    let level = NoiseLevel::at(&sched, &[4], DType::F32, &CPU)?;
    let coefs = DpmSolverCoefficients::new(&sched, &[4], &[true], DType::F32, &CPU)?;
    assert!(dpmpp_2m_step(&x, &x, Prediction::Eps, &level, None, &coefs).is_err());
    assert!(DpmSolverCoefficients::new(&sched, &[0], &[true], DType::F32, &CPU).is_err());
    assert!(DpmSolverCoefficients::new(&sched, &[9], &[true], DType::F32, &CPU).is_err());
    Ok(())
}

fn run(method: Method, seeds: &[u64], shape: &[usize]) -> Result<Tensor> {
    let training = Schedule::ldm_linear()?;
    let sampler = Sampler::new(&training, 10, method)?;
    let mut den = IdealDenoiser::new(
        Data::Gaussian {
            mu: vec![0.0; shape[1]],
            s: vec![1.0; shape[1]],
        },
        Prediction::Eps,
        &training,
    );
    let start = Start::Noise {
        shape,
        dtype: DType::F32,
        device: &CPU,
    };
    sampler.sample(&mut den, start, seeds, None)
}

#[test]
fn sampling_is_deterministic_per_seed_and_per_sample() -> Result<()> {
    let shape = [2, 4, 8, 8];
    for method in [
        Method::Ddpm,
        Method::Ddim { eta: 0.0 },
        Method::Ddim { eta: 0.8 },
        Method::DpmSolverPP2M {
            lower_order_final: true,
        },
    ] {
        let a = run(method, &[10, 20], &shape)?;
        let b = run(method, &[10, 20], &shape)?;
        let bits = |t: &Tensor| -> Result<Vec<u32>> {
            Ok(t.flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .map(|v| v.to_bits())
                .collect())
        };
        assert_eq!(
            bits(&a)?,
            bits(&b)?,
            "{method:?}: same seeds, different bits"
        );
        let c = run(method, &[10, 21], &shape)?;
        assert_eq!(
            bits(&a.get(0)?)?,
            bits(&c.get(0)?)?,
            "{method:?}: sample 0 depends on sample 1's seed"
        );
        assert!(
            max_abs_diff(&a.get(1)?, &c.get(1)?)? > 0.1,
            "{method:?}: a different seed changed nothing"
        );
        // A sample's result does not depend on its batch: alone, with its own seed, it is
        // the same bits.
        let alone = run(method, &[20], &[1, 4, 8, 8])?;
        assert_eq!(
            bits(&a.get(1)?)?,
            bits(&alone.get(0)?)?,
            "{method:?}: batch-dependent result"
        );
    }
    Ok(())
}

#[test]
fn the_denoiser_sees_the_original_timesteps_and_the_callback_every_step() -> Result<()> {
    // With 200 steps the network must be conditioned on StableSR's ori_timesteps, from
    // the last (999) down to 0, one call per step, all batch elements at the same t.
    let t = fixture()?;
    let ori: Vec<u32> = t["schedule.respaced200.ori_timesteps"]
        .to_vec1::<i64>()?
        .into_iter()
        .map(|v| v as u32)
        .collect();
    let training = Schedule::ldm_linear()?;
    let sampler = Sampler::new(&training, 200, Method::Ddpm)?;
    let mut den = IdealDenoiser::new(
        Data::Point(Tensor::zeros((1, 4, 1, 1), DType::F32, &CPU)?),
        Prediction::Eps,
        &training,
    );
    let mut reported = Vec::new();
    let mut progress =
        |p: Progress<'_>| reported.push((p.step, p.total, p.timestep as u32, p.x.dims().to_vec()));
    let start = Start::Noise {
        shape: &[3, 4, 4, 4],
        dtype: DType::F32,
        device: &CPU,
    };
    sampler.sample(&mut den, start, &[1, 2, 3], Some(&mut progress))?;
    let want: Vec<u32> = ori.iter().rev().copied().collect();
    let seen: Vec<u32> = den.calls.iter().map(|c| c[0]).collect();
    assert_eq!(seen, want);
    assert!(den
        .calls
        .iter()
        .all(|c| c.len() == 3 && c.iter().all(|&v| v == c[0])));
    assert_eq!(reported.len(), 200);
    for (k, (step, total, timestep, dims)) in reported.iter().enumerate() {
        assert_eq!((*step, *total, *timestep), (k + 1, 200, want[k]));
        assert_eq!(dims, &[3, 4, 4, 4]);
    }
    Ok(())
}

#[test]
fn a_start_latent_at_partial_strength_runs_the_last_steps_only() -> Result<()> {
    let training = Schedule::ldm_linear()?;
    let sampler = Sampler::new(&training, 20, Method::Ddim { eta: 0.0 })?;
    let keep = space_timesteps(1000, "20")?;
    let latent = uniform(&[1, 4, 4, 4], -1.0, 1.0, 3)?;
    for (strength, runs) in [(1.0, 20usize), (0.5, 10), (0.26, 5), (0.05, 1)] {
        let mut den = IdealDenoiser::new(Data::Point(latent.clone()), Prediction::Eps, &training);
        let out = sampler.sample(
            &mut den,
            Start::Latent {
                latent: &latent,
                strength,
            },
            &[4],
            None,
        )?;
        let seen: Vec<usize> = den.calls.iter().map(|c| c[0] as usize).collect();
        let want: Vec<usize> = keep[..runs].iter().rev().copied().collect();
        assert_eq!(seen, want, "strength {strength}");
        assert!(max_abs_diff(&out, &latent)? < 1e-5);
    }
    let mut den = IdealDenoiser::new(Data::Point(latent.clone()), Prediction::Eps, &training);
    let too_weak = Start::Latent {
        latent: &latent,
        strength: 0.01,
    };
    assert!(sampler.sample(&mut den, too_weak, &[4], None).is_err());
    Ok(())
}

#[test]
fn a_start_latent_is_noised_with_q_sample_at_the_start_step() -> Result<()> {
    // The first thing the denoiser sees is q_sample(latent, ᾱ at the start step, ε) with
    // ε the first draw of the seed's noise: check it against the formula (1e-6).
    let training = Schedule::ldm_linear()?;
    let sampler = Sampler::new(&training, 20, Method::Ddpm)?;
    let latent = uniform(&[2, 4, 4, 4], -1.0, 1.0, 12)?;
    let mut first: Option<Tensor> = None;
    let mut den = spritedx_samplers::FnDenoiser::new(Prediction::Eps, |x: &Tensor, _t: &Tensor| {
        if first.is_none() {
            first = Some(x.clone());
        }
        x.zeros_like()
    });
    let start = Start::Latent {
        latent: &latent,
        strength: 0.5,
    };
    sampler.sample(&mut den, start, &[5, 6], None)?;
    let first = first.expect("the denoiser was called");
    let eps =
        spritedx_samplers::NoiseSource::new(&[5, 6]).sample(latent.shape(), DType::F32, &CPU)?;
    let a = sampler.schedule().alphas_cumprod()[9];
    let want = ((&latent * a.sqrt())? + (&eps * (1.0 - a).sqrt())?)?;
    assert!(max_abs_diff(&first, &want)? < 1e-6);
    Ok(())
}

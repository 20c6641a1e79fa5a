//! Sampler steps per second: the fused kernels of this crate against the same step written
//! as candle's composed broadcast ops (as spritedx-samplers' `steps` module writes it).
//!
//! On a CUDA machine (the comparison this is for):
//!
//! ```sh
//! eval "$(scripts/setup-cuda.sh)"
//! CARGO_TARGET_DIR=target-cuda cargo bench --features cuda --bench sampler_steps
//! ```
//!
//! Without the `cuda` feature, or without a GPU, it runs on the CPU, where the fused op is
//! the single-threaded Rust reference and candle's ops are multi-threaded: that run only
//! shows that the bench works. Before timing, each pair is checked to compute the same
//! step (1e-5 relative), so the comparison is like for like.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use candle_core::{Device, Result, Tensor};
use common::{ddim_rows, dpm_rows, max_errors, respaced_alphas_cumprod, Rng};
use spritedx_kernels::sampler::{self, coefficient_table, CoefficientRow, Prediction};

/// How long each variant is timed.
const BUDGET: Duration = Duration::from_secs(2);

fn device() -> Device {
    if cfg!(feature = "cuda") {
        match Device::new_cuda(0) {
            Ok(d) => return d,
            Err(e) => {
                let reason = e.to_string();
                let reason = reason.lines().next().unwrap_or_default();
                eprintln!("no CUDA device ({reason}); timing on the CPU instead");
            }
        }
    }
    Device::Cpu
}

/// `coef[b] · x[b, ...]` with a (B,) coefficient tensor, as the samplers crate scales.
fn scale(coef: &Tensor, x: &Tensor) -> Result<Tensor> {
    let mut shape = vec![1usize; x.rank()];
    shape[0] = x.dim(0)?;
    x.broadcast_mul(&coef.reshape(shape)?)
}

/// Column `k` of the per-sample rows of `table`, as a (B,) tensor on `device` (what the
/// samplers crate passes to its step functions).
fn column<R: CoefficientRow>(rows: &[R], k: usize, device: &Device) -> Result<Tensor> {
    let v: Vec<f32> = rows.iter().map(|r| r.values()[k]).collect();
    Tensor::from_vec(v, rows.len(), device)
}

/// Runs `step` repeatedly for [`BUDGET`] (after a warm-up) and returns steps per second.
fn steps_per_second(device: &Device, mut step: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..3 {
        step()?;
    }
    device.synchronize()?;
    let start = Instant::now();
    let mut steps = 0u64;
    while start.elapsed() < BUDGET {
        for _ in 0..10 {
            step()?;
        }
        device.synchronize()?;
        steps += 10;
    }
    Ok(steps as f64 / start.elapsed().as_secs_f64())
}

fn check_same(what: &str, fused: &Tensor, composed: &Tensor) -> Result<()> {
    let a = fused
        .flatten_all()?
        .to_device(&Device::Cpu)?
        .to_vec1::<f32>()?;
    let b = composed
        .flatten_all()?
        .to_device(&Device::Cpu)?
        .to_vec1::<f32>()?;
    let (_, rel) = max_errors(&a, &b);
    assert!(
        rel <= 1e-5,
        "{what}: the fused and composed steps differ by {rel:e} relative"
    );
    Ok(())
}

fn main() -> Result<()> {
    let device = device();
    let mut rng = Rng::new(7);
    let ac = respaced_alphas_cumprod(20);
    println!("device: {device:?}");
    println!("| step | latents | fused steps/s | composed steps/s | speed-up |");
    println!("|---|---|---|---|---|");
    for shape in [[1usize, 4, 64, 64], [8, 4, 64, 64], [4, 4, 128, 128]] {
        let batch = shape[0];
        let n: usize = shape.iter().product();
        let x = Tensor::from_vec(rng.normals(n), &shape, &device)?;
        let m = Tensor::from_vec(rng.normals(n), &shape, &device)?;
        let z = Tensor::from_vec(rng.normals(n), &shape, &device)?;
        let prev = Tensor::from_vec(rng.normals(n), &shape, &device)?;
        // Every sample at a mid-schedule step (second order for DPM-Solver++).
        let rows_host: Vec<u32> = (0..batch).map(|b| 5 + (b % 10) as u32).collect();
        let rows = Tensor::new(rows_host.as_slice(), &device)?;
        let label = format!("{shape:?}");

        // DDIM, ε-prediction, η = 1 (with noise): the longest composed chain.
        let table = ddim_rows(&ac, 1.0);
        let per_sample: Vec<_> = rows_host.iter().map(|&r| table[r as usize]).collect();
        let table_t = coefficient_table(&table, &device)?;
        let cols: Vec<Tensor> = (0..5)
            .map(|k| column(&per_sample, k, &device))
            .collect::<Result<_>>()?;
        let (alpha, sigma, alpha_prev, direction, noise_std) =
            (&cols[0], &cols[1], &cols[2], &cols[3], &cols[4]);
        let composed_ddim = || -> Result<Tensor> {
            let x0 = x
                .sub(&scale(sigma, &m)?)?
                .broadcast_div(&alpha.reshape((batch, 1, 1, 1))?)?;
            let next = scale(alpha_prev, &x0)?.add(&scale(direction, &m)?)?;
            next.add(&scale(noise_std, &z)?)
        };
        let fused_ddim = || sampler::ddim_step(&x, &m, Prediction::Eps, &table_t, &rows, Some(&z));
        check_same("ddim", &fused_ddim()?, &composed_ddim()?)?;
        let fused = steps_per_second(&device, || fused_ddim().map(drop))?;
        let composed = steps_per_second(&device, || composed_ddim().map(drop))?;
        println!(
            "| DDIM (eps, eta 1) | {label} | {fused:.0} | {composed:.0} | {:.2}x |",
            fused / composed
        );

        // DPM-Solver++(2M), v-prediction, second order.
        let table = dpm_rows(&ac, true);
        let per_sample: Vec<_> = rows_host.iter().map(|&r| table[r as usize]).collect();
        let table_t = coefficient_table(&table, &device)?;
        let cols: Vec<Tensor> = (0..5)
            .map(|k| column(&per_sample, k, &device))
            .collect::<Result<_>>()?;
        let (alpha, sigma, sigma_ratio, data_coef, correction) =
            (&cols[0], &cols[1], &cols[2], &cols[3], &cols[4]);
        let composed_dpm = || -> Result<(Tensor, Tensor)> {
            let x0 = scale(alpha, &x)?.sub(&scale(sigma, &m)?)?;
            let d = x0.add(&scale(correction, &x0.sub(&prev)?)?)?;
            Ok((scale(sigma_ratio, &x)?.add(&scale(data_coef, &d)?)?, x0))
        };
        let fused_dpm =
            || sampler::dpmpp_2m_step(&x, &m, Prediction::V, &table_t, &rows, Some(&prev));
        let (f, c) = (fused_dpm()?, composed_dpm()?);
        check_same("dpm++ x_prev", &f.0, &c.0)?;
        check_same("dpm++ x0", &f.1, &c.1)?;
        let fused = steps_per_second(&device, || fused_dpm().map(drop))?;
        let composed = steps_per_second(&device, || composed_dpm().map(drop))?;
        println!(
            "| DPM-Solver++(2M) (v, 2nd order) | {label} | {fused:.0} | {composed:.0} | {:.2}x |",
            fused / composed
        );
    }
    Ok(())
}

//! Every kernel on a real CUDA device against the Rust reference (the same op on the CPU).
//!
//! Ignored by default, since they need a GPU; on a CUDA machine:
//!
//! ```sh
//! eval "$(scripts/setup-cuda.sh)"   # or CUDA_HOME=/usr/local/cuda-13.0
//! CARGO_TARGET_DIR=target-cuda cargo test --release --features cuda --test gpu -- --ignored --nocapture
//! ```
//!
//! Tolerances: the sampler kernels do the reference's f32 operations in the same order
//! (nvcc -fmad=false, IEEE division), so 1e-6 relative is allowed and agreement is
//! expected to be exact. The cell reduction calls the device's `cbrtf` (1 ulp) where the
//! CPU calls glibc's, so OKLab values and spreads may differ by a few ulps (1e-5 absolute
//! allowed) while alpha, picked from 8-bit values, is exact. The palette snap gets the same
//! inputs on both devices and must give the same indices.
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device, Tensor};
use common::{
    ddim_rows, dpm_rows, max_errors, noise_rows, rectified_image, respaced_alphas_cumprod, Rng,
};
use spritedx_kernels::decoder::{self, srgb8_to_oklab, CELL_VALUES};
use spritedx_kernels::sampler::{self, coefficient_table, Prediction};

fn gpu() -> Device {
    Device::new_cuda(0)
        .expect("these tests need a CUDA device (they are #[ignore]d for that reason)")
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_device(&Device::Cpu)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// (B, C, H, W) latents: odd sizes and a Stable Diffusion latent of 512 px.
const SHAPES: [[usize; 4]; 3] = [[1, 1, 1, 1], [3, 4, 13, 11], [4, 4, 64, 64]];

/// The same data on the CPU and on the GPU.
fn pair(data: &[f32], shape: &[usize], gpu: &Device) -> (Tensor, Tensor) {
    let cpu = Tensor::from_slice(data, shape, &Device::Cpu).unwrap();
    let dev = cpu.to_device(gpu).unwrap();
    (cpu, dev)
}

fn rows_pair(rng: &mut Rng, batch: usize, n_rows: usize, gpu: &Device) -> (Tensor, Tensor) {
    let mut rows: Vec<u32> = (0..batch).map(|_| rng.below(n_rows) as u32).collect();
    rows[0] = 0;
    let cpu = Tensor::new(rows.as_slice(), &Device::Cpu).unwrap();
    (cpu.clone(), cpu.to_device(gpu).unwrap())
}

fn assert_rel(what: &str, gpu: &Tensor, cpu: &Tensor) {
    let (abs, rel) = max_errors(&values(gpu), &values(cpu));
    println!("{what}: max relative error {rel:e} (absolute {abs:e})");
    assert!(
        rel <= 1e-6,
        "{what}: max relative error {rel:e} (absolute {abs:e}) over 1e-6"
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn q_sample_on_gpu_matches_the_reference() {
    let (dev, mut rng) = (gpu(), Rng::new(11));
    let table = noise_rows(&respaced_alphas_cumprod(50));
    let (table_cpu, table_gpu) = (
        coefficient_table(&table, &Device::Cpu).unwrap(),
        coefficient_table(&table, &dev).unwrap(),
    );
    for shape in SHAPES {
        let n: usize = shape.iter().product();
        let (x0_cpu, x0_gpu) = pair(&rng.normals(n), &shape, &dev);
        let (z_cpu, z_gpu) = pair(&rng.normals(n), &shape, &dev);
        let (rows_cpu, rows_gpu) = rows_pair(&mut rng, shape[0], table.len(), &dev);
        let want = sampler::q_sample(&x0_cpu, &z_cpu, &table_cpu, &rows_cpu).unwrap();
        let got = sampler::q_sample(&x0_gpu, &z_gpu, &table_gpu, &rows_gpu).unwrap();
        assert!(got.device().is_cuda(), "the result stays on the GPU");
        assert_rel(&format!("q_sample {shape:?}"), &got, &want);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn ddim_step_on_gpu_matches_the_reference() {
    let (dev, mut rng) = (gpu(), Rng::new(12));
    let ac = respaced_alphas_cumprod(20);
    for eta in [0.0, 1.0] {
        let table = ddim_rows(&ac, eta);
        let table_cpu = coefficient_table(&table, &Device::Cpu).unwrap();
        let table_gpu = coefficient_table(&table, &dev).unwrap();
        for shape in SHAPES {
            let n: usize = shape.iter().product();
            let (x_cpu, x_gpu) = pair(&rng.normals(n), &shape, &dev);
            let (m_cpu, m_gpu) = pair(&rng.normals(n), &shape, &dev);
            let (z_cpu, z_gpu) = pair(&rng.normals(n), &shape, &dev);
            let (rows_cpu, rows_gpu) = rows_pair(&mut rng, shape[0], table.len(), &dev);
            for prediction in [Prediction::Eps, Prediction::V] {
                for noisy in [false, true] {
                    let want = sampler::ddim_step(
                        &x_cpu,
                        &m_cpu,
                        prediction,
                        &table_cpu,
                        &rows_cpu,
                        noisy.then_some(&z_cpu),
                    )
                    .unwrap();
                    let got = sampler::ddim_step(
                        &x_gpu,
                        &m_gpu,
                        prediction,
                        &table_gpu,
                        &rows_gpu,
                        noisy.then_some(&z_gpu),
                    )
                    .unwrap();
                    assert_rel(
                        &format!("ddim eta {eta} {prediction:?} noise {noisy} {shape:?}"),
                        &got,
                        &want,
                    );
                }
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn dpmpp_2m_step_on_gpu_matches_the_reference() {
    let (dev, mut rng) = (gpu(), Rng::new(13));
    let ac = respaced_alphas_cumprod(20);
    for second_order in [false, true] {
        let table = dpm_rows(&ac, second_order);
        let table_cpu = coefficient_table(&table, &Device::Cpu).unwrap();
        let table_gpu = coefficient_table(&table, &dev).unwrap();
        for shape in SHAPES {
            let n: usize = shape.iter().product();
            let (x_cpu, x_gpu) = pair(&rng.normals(n), &shape, &dev);
            let (m_cpu, m_gpu) = pair(&rng.normals(n), &shape, &dev);
            let (p_cpu, p_gpu) = pair(&rng.normals(n), &shape, &dev);
            let (rows_cpu, rows_gpu) = rows_pair(&mut rng, shape[0], table.len(), &dev);
            for prediction in [Prediction::Eps, Prediction::V] {
                // Without a previous x̂_0 only first-order tables are valid.
                for with_prev in [true, false].into_iter().filter(|&p| p || !second_order) {
                    let (prev_cpu, prev_gpu) = if with_prev {
                        (Some(&p_cpu), Some(&p_gpu))
                    } else {
                        (None, None)
                    };
                    let want = sampler::dpmpp_2m_step(
                        &x_cpu, &m_cpu, prediction, &table_cpu, &rows_cpu, prev_cpu,
                    )
                    .unwrap();
                    let got = sampler::dpmpp_2m_step(
                        &x_gpu, &m_gpu, prediction, &table_gpu, &rows_gpu, prev_gpu,
                    )
                    .unwrap();
                    let what = format!("dpm++ second order {second_order} {prediction:?} prev {with_prev} {shape:?}");
                    assert_rel(&format!("{what} x_prev"), &got.0, &want.0);
                    assert_rel(&format!("{what} x0"), &got.1, &want.1);
                }
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn reduce_cells_on_gpu_matches_the_reference() {
    let (dev, mut rng) = (gpu(), Rng::new(14));
    for (batch, rows, cols, f) in [
        (1, 1, 1, 1),
        (2, 5, 3, 2),
        (1, 7, 5, 3),
        (2, 16, 16, 8),
        (1, 3, 5, 16),
        (1, 64, 48, 4),
    ] {
        let image = rectified_image(&mut rng, batch, rows, cols, f);
        let (cpu, gpu_image) = pair(&image, &[batch, 4, rows * f, cols * f], &dev);
        let want = values(&decoder::reduce_cells(&cpu, f).unwrap());
        let got = values(&decoder::reduce_cells(&gpu_image, f).unwrap());
        let mut worst = 0f32;
        for (g, w) in got
            .chunks_exact(CELL_VALUES)
            .zip(want.chunks_exact(CELL_VALUES))
        {
            assert_eq!(g[3], w[3], "alpha is exact: {g:?} vs {w:?}");
            let (abs, _) = max_errors(g, w);
            worst = worst.max(abs);
        }
        println!("reduce_cells {batch}x{rows}x{cols} f {f}: max absolute error {worst:e}");
        assert!(
            worst <= 1e-5,
            "reduce_cells {batch}x{rows}x{cols} f {f}: max absolute error {worst:e} over 1e-5"
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn snap_to_palette_on_gpu_matches_the_reference() {
    let (dev, mut rng) = (gpu(), Rng::new(15));
    for (n, stride, k) in [(1, 3, 1), (1000, 5, 16), (100_000, 3, 256)] {
        let palette: Vec<f32> = (0..k)
            .flat_map(|_| {
                srgb8_to_oklab([
                    rng.below(256) as u8,
                    rng.below(256) as u8,
                    rng.below(256) as u8,
                ])
            })
            .collect();
        let colours: Vec<f32> = (0..n * stride)
            .map(|i| {
                if i % stride == 0 {
                    rng.unit()
                } else {
                    rng.uniform(-0.3, 0.3)
                }
            })
            .collect();
        let (pal_cpu, pal_gpu) = pair(&palette, &[k, 3], &dev);
        let (col_cpu, col_gpu) = pair(&colours, &[n, stride], &dev);
        let want = decoder::snap_to_palette(&col_cpu, &pal_cpu)
            .unwrap()
            .to_vec1::<u32>()
            .unwrap();
        let got = decoder::snap_to_palette(&col_gpu, &pal_gpu).unwrap();
        assert_eq!(got.dtype(), DType::U32);
        assert_eq!(
            got.to_device(&Device::Cpu)
                .unwrap()
                .to_vec1::<u32>()
                .unwrap(),
            want,
            "{n} colours, {k} entries"
        );
    }
}

//! spritedx-kernels' fused ops against this crate's composed steps (the reference), with
//! this crate's own coefficients. On the CPU the fused ops run the kernels' Rust
//! reference, which the CUDA kernels are tested against in spritedx-kernels; it does the
//! same f32 operations in the same order as the composed steps, so the tolerance is 0.

mod common;

use candle_core::{DType, Device, Tensor};
use spritedx_kernels::sampler::{
    self as fused, coefficient_table, DdimRow, DpmSolverRow, NoiseRow,
};
use spritedx_samplers::{
    ddim_step, dpmpp_2m_step, q_sample, space_timesteps, DdimCoefficients, DpmSolverCoefficients,
    NoiseLevel, Prediction, Schedule,
};

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    common::max_abs_diff(a, b).unwrap()
}

const PREDICTIONS: [(Prediction, fused::Prediction); 2] = [
    (Prediction::Eps, fused::Prediction::Eps),
    (Prediction::V, fused::Prediction::V),
];

#[test]
fn fused_steps_equal_the_composed_steps() {
    let dev = Device::Cpu;
    let steps = 20;
    let schedule = Schedule::ldm_linear()
        .unwrap()
        .respace(&space_timesteps(1000, &steps.to_string()).unwrap())
        .unwrap();
    // One sample per kind of step: the first, middle ones, the last into index 0, and
    // the one into clean data; each sample gets its own table row.
    let indices = [19usize, 12, 5, 1, 0];
    let shape = [5usize, 4, 9, 7];
    let x = common::uniform(&shape, -2.0, 2.0, 1).unwrap();
    let m = common::uniform(&shape, -2.0, 2.0, 2).unwrap();
    let z = common::uniform(&shape, -2.0, 2.0, 3).unwrap();
    let prev = common::uniform(&shape, -2.0, 2.0, 4).unwrap();
    let rows = Tensor::new(&[0u32, 1, 2, 3, 4], &dev).unwrap();
    let level = NoiseLevel::at(&schedule, &indices, DType::F32, &dev).unwrap();
    let (alpha, sigma) = (values(&level.alpha), values(&level.sigma));
    let mut worst = 0f64;
    let mut cases = 0;

    let noise_table: Vec<NoiseRow> = (0..5)
        .map(|b| NoiseRow {
            alpha: alpha[b],
            sigma: sigma[b],
        })
        .collect();
    let composed = q_sample(&x, &z, &level).unwrap();
    let table = coefficient_table(&noise_table, &dev).unwrap();
    let fused_q = fused::q_sample(&x, &z, &table, &rows).unwrap();
    worst = worst.max(max_diff(&composed, &fused_q));
    cases += 1;

    for eta in [0.0, 1.0] {
        let c = DdimCoefficients::new(&schedule, &indices, eta, DType::F32, &dev).unwrap();
        let (ap, dir, ns) = (
            values(&c.alpha_prev),
            values(&c.direction),
            values(&c.noise_std),
        );
        let table: Vec<DdimRow> = (0..5)
            .map(|b| DdimRow {
                alpha: alpha[b],
                sigma: sigma[b],
                alpha_prev: ap[b],
                direction: dir[b],
                noise_std: ns[b],
            })
            .collect();
        let table = coefficient_table(&table, &dev).unwrap();
        for (p, fp) in PREDICTIONS {
            for noise in [None, Some(&z)] {
                let a = ddim_step(&x, &m, p, &level, &c, noise).unwrap();
                let b = fused::ddim_step(&x, &m, fp, &table, &rows, noise).unwrap();
                worst = worst.max(max_diff(&a, &b));
                cases += 1;
            }
        }
    }
    for second in [false, true] {
        // Second order is defined between the first and the last index only.
        let flags: Vec<bool> = indices
            .iter()
            .map(|&i| second && i > 0 && i + 1 < steps)
            .collect();
        let c = DpmSolverCoefficients::new(&schedule, &indices, &flags, DType::F32, &dev).unwrap();
        let (sr, dc, co) = (
            values(&c.sigma_ratio),
            values(&c.data_coef),
            values(&c.correction),
        );
        let table: Vec<DpmSolverRow> = (0..5)
            .map(|b| DpmSolverRow {
                alpha: alpha[b],
                sigma: sigma[b],
                sigma_ratio: sr[b],
                data_coef: dc[b],
                correction: co[b],
            })
            .collect();
        let table = coefficient_table(&table, &dev).unwrap();
        for (p, fp) in PREDICTIONS {
            let prevs: Vec<Option<&Tensor>> = if second {
                vec![Some(&prev)]
            } else {
                vec![None, Some(&prev)]
            };
            for pr in prevs {
                let (a_next, a_x0) = dpmpp_2m_step(&x, &m, p, &level, pr, &c).unwrap();
                let (b_next, b_x0) = fused::dpmpp_2m_step(&x, &m, fp, &table, &rows, pr).unwrap();
                worst = worst
                    .max(max_diff(&a_next, &b_next))
                    .max(max_diff(&a_x0, &b_x0));
                cases += 1;
            }
        }
    }
    println!("{cases} cases; max abs difference fused vs composed: {worst:e}");
    assert_eq!(cases, 1 + 8 + 6);
    assert_eq!(worst, 0.0, "fused and composed steps must agree exactly");
}

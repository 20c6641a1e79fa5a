//! The kernels' own code on the CPU: build.rs compiles `cuda/emulated.cpp` (the `.cu`
//! sources as host C++ under the launch emulator), and these tests run each kernel with
//! the launch configuration the CUDA path uses, and with a small odd one that makes the
//! grid-stride loops wrap, against the Rust reference.
//!
//! Tolerance: the kernels and the reference perform the same IEEE single-precision
//! operations in the same order (no FMA contraction, no fast math; the same libm `cbrtf`),
//! so they are expected to agree bit for bit; the tests allow 1e-6 relative
//! (and exact indices for the palette snap) and print the largest error measured.

use crate::decoder::{
    reference as decoder_ref, srgb8_to_linear_table, srgb8_to_oklab, CELL_VALUES,
};
use crate::launch::{self, LaunchDims};
use crate::sampler::{reference as sampler_ref, DdimRow, DpmSolverRow, NoiseRow, Prediction};

#[path = "../tests/common/mod.rs"]
mod common;

use common::{
    ddim_rows, dpm_rows, max_errors, noise_rows, rectified_image, respaced_alphas_cumprod, Rng,
};

mod ffi {
    use crate::sampler::{DdimRow, DpmSolverRow, NoiseRow};

    extern "C" {
        pub fn sdx_emulate_q_sample_f32(
            grid_x: u32,
            grid_y: u32,
            block_x: u32,
            x0: *const f32,
            noise: *const f32,
            table: *const NoiseRow,
            n_rows: u32,
            rows: *const u32,
            per_sample: usize,
            out: *mut f32,
        );
        pub fn sdx_emulate_ddim_step_f32(
            grid_x: u32,
            grid_y: u32,
            block_x: u32,
            x_t: *const f32,
            model_output: *const f32,
            noise: *const f32,
            table: *const DdimRow,
            n_rows: u32,
            rows: *const u32,
            per_sample: usize,
            v_prediction: i32,
            out: *mut f32,
        );
        pub fn sdx_emulate_dpmpp_2m_step_f32(
            grid_x: u32,
            grid_y: u32,
            block_x: u32,
            x_t: *const f32,
            model_output: *const f32,
            prev_x0: *const f32,
            table: *const DpmSolverRow,
            n_rows: u32,
            rows: *const u32,
            per_sample: usize,
            v_prediction: i32,
            x_prev: *mut f32,
            x0_out: *mut f32,
        );
        pub fn sdx_emulate_reduce_cells_f32(
            grid_x: u32,
            block_x: u32,
            image: *const f32,
            srgb_to_linear: *const f32,
            batch: u32,
            rows: u32,
            cols: u32,
            factor: u32,
            cells: *mut f32,
        );
        pub fn sdx_emulate_snap_to_palette_f32(
            grid_x: u32,
            block_x: u32,
            colours: *const f32,
            n: usize,
            stride: u32,
            palette: *const f32,
            k: u32,
            out: *mut u32,
        );
    }
}

/// The production launch of a sampler kernel, and an odd small one (3 blocks of 32
/// threads per sample) whose threads each stride over several elements.
fn sampler_launches(per_sample: usize, batch: usize) -> [LaunchDims; 2] {
    let odd = LaunchDims {
        grid: (3, batch as u32, 1),
        block: (32, 1, 1),
    };
    [launch::per_sample(per_sample, batch).unwrap(), odd]
}

fn optional_ptr(v: Option<&[f32]>) -> *const f32 {
    v.map_or(std::ptr::null(), <[f32]>::as_ptr)
}

fn emulate_q_sample(
    dims: LaunchDims,
    x0: &[f32],
    noise: &[f32],
    table: &[NoiseRow],
    rows: &[u32],
) -> Vec<f32> {
    assert_eq!(x0.len(), noise.len());
    let mut out = vec![f32::NAN; x0.len()];
    // SAFETY: the buffers have the lengths the kernel reads and writes
    // (rows.len() samples of x0.len() / rows.len() elements; table.len() rows).
    unsafe {
        ffi::sdx_emulate_q_sample_f32(
            dims.grid.0,
            dims.grid.1,
            dims.block.0,
            x0.as_ptr(),
            noise.as_ptr(),
            table.as_ptr(),
            table.len() as u32,
            rows.as_ptr(),
            x0.len() / rows.len(),
            out.as_mut_ptr(),
        )
    };
    out
}

#[allow(clippy::too_many_arguments)]
fn emulate_ddim(
    dims: LaunchDims,
    x_t: &[f32],
    model_output: &[f32],
    noise: Option<&[f32]>,
    table: &[DdimRow],
    rows: &[u32],
    prediction: Prediction,
) -> Vec<f32> {
    assert_eq!(x_t.len(), model_output.len());
    assert!(noise.is_none_or(|z| z.len() == x_t.len()));
    let mut out = vec![f32::NAN; x_t.len()];
    // SAFETY: as in emulate_q_sample; a null noise pointer is the kernel's "no noise".
    unsafe {
        ffi::sdx_emulate_ddim_step_f32(
            dims.grid.0,
            dims.grid.1,
            dims.block.0,
            x_t.as_ptr(),
            model_output.as_ptr(),
            optional_ptr(noise),
            table.as_ptr(),
            table.len() as u32,
            rows.as_ptr(),
            x_t.len() / rows.len(),
            prediction.v_flag(),
            out.as_mut_ptr(),
        )
    };
    out
}

#[allow(clippy::too_many_arguments)]
fn emulate_dpm(
    dims: LaunchDims,
    x_t: &[f32],
    model_output: &[f32],
    prev_x0: Option<&[f32]>,
    table: &[DpmSolverRow],
    rows: &[u32],
    prediction: Prediction,
) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(x_t.len(), model_output.len());
    assert!(prev_x0.is_none_or(|p| p.len() == x_t.len()));
    let mut x_prev = vec![f32::NAN; x_t.len()];
    let mut x0 = vec![f32::NAN; x_t.len()];
    // SAFETY: as in emulate_q_sample; a null prev_x0 is the kernel's "first order".
    unsafe {
        ffi::sdx_emulate_dpmpp_2m_step_f32(
            dims.grid.0,
            dims.grid.1,
            dims.block.0,
            x_t.as_ptr(),
            model_output.as_ptr(),
            optional_ptr(prev_x0),
            table.as_ptr(),
            table.len() as u32,
            rows.as_ptr(),
            x_t.len() / rows.len(),
            prediction.v_flag(),
            x_prev.as_mut_ptr(),
            x0.as_mut_ptr(),
        )
    };
    (x_prev, x0)
}

fn emulate_reduce(
    dims: LaunchDims,
    image: &[f32],
    batch: usize,
    rows: usize,
    cols: usize,
    f: usize,
) -> Vec<f32> {
    assert_eq!(image.len(), batch * 4 * rows * f * cols * f);
    let mut cells = vec![f32::NAN; batch * rows * cols * CELL_VALUES];
    // SAFETY: the image and output have the sizes the kernel reads and writes; the sRGB
    // table has 256 entries, indexed by 8-bit values.
    unsafe {
        ffi::sdx_emulate_reduce_cells_f32(
            dims.grid.0,
            dims.block.0,
            image.as_ptr(),
            srgb8_to_linear_table().as_ptr(),
            batch as u32,
            rows as u32,
            cols as u32,
            f as u32,
            cells.as_mut_ptr(),
        )
    };
    cells
}

fn emulate_snap(dims: LaunchDims, colours: &[f32], stride: usize, palette: &[f32]) -> Vec<u32> {
    let n = colours.len() / stride;
    let mut out = vec![u32::MAX; n];
    // SAFETY: n rows of `stride` colour values and palette.len() / 3 palette entries.
    unsafe {
        ffi::sdx_emulate_snap_to_palette_f32(
            dims.grid.0,
            dims.block.0,
            colours.as_ptr(),
            n,
            stride as u32,
            palette.as_ptr(),
            (palette.len() / 3) as u32,
            out.as_mut_ptr(),
        )
    };
    out
}

/// Tolerance of the sampler kernels against the reference: 1e-6 relative.
const SAMPLER_REL_TOL: f32 = 1e-6;

/// (batch, elements per sample) shapes: one element, odd sizes, a latent of 4x13x11, and
/// more elements than one launch's threads so that the grid-stride loop wraps.
const SAMPLER_SHAPES: [(usize, usize); 4] = [(1, 1), (3, 7), (2, 4 * 13 * 11), (5, 70_001)];

/// Per-sample rows: every sample at a different step (cycling through the table).
fn mixed_rows(rng: &mut Rng, batch: usize, n_rows: usize) -> Vec<u32> {
    (0..batch).map(|_| rng.below(n_rows) as u32).collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f32], worst: &mut f32) {
    let (abs, rel) = max_errors(got, want);
    assert!(
        rel <= SAMPLER_REL_TOL,
        "{what}: max relative error {rel:e} (absolute {abs:e})"
    );
    *worst = worst.max(rel);
}

#[test]
fn q_sample_kernel_matches_the_reference() {
    let mut rng = Rng::new(1);
    let table = noise_rows(&respaced_alphas_cumprod(50));
    let mut worst = 0f32;
    for (batch, n) in SAMPLER_SHAPES {
        let x0 = rng.normals(batch * n);
        let noise = rng.normals(batch * n);
        let rows = mixed_rows(&mut rng, batch, table.len());
        let mut want = vec![0f32; batch * n];
        sampler_ref::q_sample(&x0, &noise, &table, &rows, &mut want).unwrap();
        for dims in sampler_launches(n, batch) {
            let got = emulate_q_sample(dims, &x0, &noise, &table, &rows);
            assert_close(
                &format!("q_sample {batch}x{n} {dims:?}"),
                &got,
                &want,
                &mut worst,
            );
        }
    }
    println!("q_sample: max relative error {worst:e}");
}

#[test]
fn ddim_kernel_matches_the_reference_for_eps_and_v_with_and_without_noise() {
    let mut rng = Rng::new(2);
    let ac = respaced_alphas_cumprod(20);
    let mut worst = 0f32;
    for eta in [0.0, 1.0] {
        let table = ddim_rows(&ac, eta);
        for (batch, n) in SAMPLER_SHAPES {
            let x_t = rng.normals(batch * n);
            let model_output = rng.normals(batch * n);
            let z = rng.normals(batch * n);
            // Row 0 (into clean data) is always among them.
            let mut rows = mixed_rows(&mut rng, batch, table.len());
            rows[0] = 0;
            for prediction in [Prediction::Eps, Prediction::V] {
                for noise in [None, Some(z.as_slice())] {
                    let mut want = vec![0f32; batch * n];
                    sampler_ref::ddim_step(
                        &x_t,
                        &model_output,
                        noise,
                        &table,
                        &rows,
                        prediction,
                        &mut want,
                    )
                    .unwrap();
                    for dims in sampler_launches(n, batch) {
                        let got = emulate_ddim(
                            dims,
                            &x_t,
                            &model_output,
                            noise,
                            &table,
                            &rows,
                            prediction,
                        );
                        let what = format!(
                            "ddim eta {eta} {prediction:?} noise {} {batch}x{n}",
                            noise.is_some()
                        );
                        assert_close(&what, &got, &want, &mut worst);
                    }
                }
            }
        }
    }
    println!("ddim_step: max relative error {worst:e}");
}

#[test]
fn dpm_solver_kernel_matches_the_reference_first_and_second_order() {
    let mut rng = Rng::new(3);
    let ac = respaced_alphas_cumprod(20);
    let mut worst = 0f32;
    for second_order in [false, true] {
        let table = dpm_rows(&ac, second_order);
        for (batch, n) in SAMPLER_SHAPES {
            let x_t = rng.normals(batch * n);
            let model_output = rng.normals(batch * n);
            let prev = rng.normals(batch * n);
            let mut rows = mixed_rows(&mut rng, batch, table.len());
            rows[0] = 0;
            for prediction in [Prediction::Eps, Prediction::V] {
                // Without a previous x̂_0 only first-order rows are valid.
                let prevs: &[Option<&[f32]>] = if second_order {
                    &[Some(&prev)]
                } else {
                    &[None, Some(&prev)]
                };
                for &prev_x0 in prevs {
                    let mut want = (vec![0f32; batch * n], vec![0f32; batch * n]);
                    sampler_ref::dpmpp_2m_step(
                        &x_t,
                        &model_output,
                        prev_x0,
                        &table,
                        &rows,
                        prediction,
                        &mut want.0,
                        &mut want.1,
                    )
                    .unwrap();
                    for dims in sampler_launches(n, batch) {
                        let got = emulate_dpm(
                            dims,
                            &x_t,
                            &model_output,
                            prev_x0,
                            &table,
                            &rows,
                            prediction,
                        );
                        let what = format!(
                            "dpm++ second order {second_order} {prediction:?} prev {} {batch}x{n}",
                            prev_x0.is_some()
                        );
                        assert_close(&format!("{what} x_prev"), &got.0, &want.0, &mut worst);
                        assert_close(&format!("{what} x0"), &got.1, &want.1, &mut worst);
                    }
                }
            }
        }
    }
    println!("dpmpp_2m_step: max relative error {worst:e}");
}

/// Where the reference reports an error (a row outside the table; a second-order row
/// without a previous x̂_0), the kernel writes NaN for that sample only.
#[test]
fn invalid_rows_give_nan_for_their_sample_only() {
    let mut rng = Rng::new(4);
    let ac = respaced_alphas_cumprod(10);
    let n = 37;
    let x = rng.normals(3 * n);
    let m = rng.normals(3 * n);
    let dims = launch::per_sample(n, 3).unwrap();
    let ddim = ddim_rows(&ac, 0.0);
    let out = emulate_ddim(dims, &x, &m, None, &ddim, &[2, 99, 5], Prediction::Eps);
    assert!(
        out[n..2 * n].iter().all(|v| v.is_nan()),
        "row 99 of 10 gives NaN"
    );
    assert!(
        out[..n].iter().chain(&out[2 * n..]).all(|v| v.is_finite()),
        "other samples are untouched"
    );
    let q = emulate_q_sample(dims, &x, &m, &noise_rows(&ac), &[10, 0, 0]);
    assert!(q[..n].iter().all(|v| v.is_nan()) && q[n..].iter().all(|v| v.is_finite()));
    // Row 5 is second order, row 0 first order.
    let dpm = dpm_rows(&ac, true);
    assert!(dpm[5].correction != 0.0 && dpm[0].correction == 0.0);
    let (x_prev, x0) = emulate_dpm(dims, &x, &m, None, &dpm, &[0, 5, 0], Prediction::V);
    for out in [&x_prev, &x0] {
        assert!(out[n..2 * n].iter().all(|v| v.is_nan()));
        assert!(out[..n].iter().chain(&out[2 * n..]).all(|v| v.is_finite()));
    }
}

#[test]
fn reduce_cells_kernel_matches_the_reference() {
    let mut rng = Rng::new(5);
    let mut worst = 0f32;
    // (batch, rows, cols, factor): factor 1 and 2 (thin cells), odd grids, and factors whose
    // interiors exceed MAX_SAMPLES_PER_CELL and are subsampled (16: 10x10 -> stride 2;
    // 21: 13x13; 40: 24x24 -> stride 3).
    let shapes = [
        (1, 1, 1, 1),
        (1, 5, 3, 1),
        (2, 3, 4, 2),
        (1, 7, 5, 3),
        (2, 4, 3, 8),
        (1, 3, 5, 16),
        (1, 2, 3, 21),
        (1, 1, 2, 40),
    ];
    for (batch, rows, cols, f) in shapes {
        let image = rectified_image(&mut rng, batch, rows, cols, f);
        let mut want = vec![0f32; batch * rows * cols * CELL_VALUES];
        decoder_ref::reduce_cells(&image, batch, rows, cols, f, &mut want).unwrap();
        let cells = batch * rows * cols;
        let odd = LaunchDims {
            grid: (2, 1, 1),
            block: (3, 1, 1),
        };
        for dims in [launch::per_cell(cells), odd] {
            let got = emulate_reduce(dims, &image, batch, rows, cols, f);
            let (abs, _) = max_errors(&got, &want);
            // Absolute: L in [0, 1], a, b within ±0.5, spread below 2, alpha in 0-255
            // (which the medians pick from 8-bit values, so any error there is >= 1).
            assert!(
                abs <= 1e-6,
                "reduce_cells {batch}x{rows}x{cols} f {f} {dims:?}: max error {abs:e}"
            );
            worst = worst.max(abs);
        }
    }
    println!("reduce_cells: max absolute error {worst:e}");
}

#[test]
fn snap_kernel_matches_the_reference() {
    let mut rng = Rng::new(6);
    for (n, stride, k) in [(1, 3, 1), (37, 3, 7), (1000, 5, 64), (300, 4, 255)] {
        let palette: Vec<f32> = (0..k)
            .flat_map(|_| srgb8_to_oklab([0, 0, 0].map(|_: u8| rng.below(256) as u8)))
            .collect();
        let mut colours: Vec<f32> = (0..n * stride)
            .map(|i| match i % stride {
                0 => rng.uniform(-0.1, 1.1),
                1 | 2 => rng.uniform(-0.4, 0.4),
                _ => rng.uniform(0.0, 255.0),
            })
            .collect();
        // Exact palette colours (ties when the palette repeats), and non-finite values.
        for i in 0..n.min(k) {
            colours[i * stride..i * stride + 3].copy_from_slice(&palette[3 * i..3 * i + 3]);
        }
        if n > 3 {
            colours[stride] = f32::NAN;
            colours[2 * stride + 1] = f32::INFINITY;
        }
        let mut want = vec![0u32; n];
        decoder_ref::snap_to_palette(&colours, stride, &palette, &mut want).unwrap();
        for dims in [
            launch::per_colour(n),
            LaunchDims {
                grid: (2, 1, 1),
                block: (5, 1, 1),
            },
        ] {
            assert_eq!(
                emulate_snap(dims, &colours, stride, &palette),
                want,
                "{n} colours, {k} entries, {dims:?}"
            );
        }
    }
}

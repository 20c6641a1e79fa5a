//! spritedx-kernels' decoder ops (on the CPU: their Rust reference, which the CUDA
//! kernels are tested against in spritedx-kernels) against this crate's decoder: the
//! rectified-cell reduction equals `decoder::reduce_cells` on regular grids, the colour
//! conversion equals `colour::srgb8_to_oklab`, and the palette snap equals
//! `palette::snap_to_palette`. Tolerance 0: the same f32 operations in the same order.

// The kernels' own test inputs: a seeded generator and pixel-art-like rectified images.
#[path = "../kernels/tests/common/mod.rs"]
mod common;

use candle_core::{Device, Tensor};
use image::RgbaImage;
use spritedx::colour::{srgb8_to_oklab, Oklab};
use spritedx::grid::Grid;
use spritedx::palette::{snap_to_palette, Palette};
use spritedx_kernels::decoder as kernels;

/// A grid of `cols` x `rows` cells of `f` pixels whose lines lie on multiples of `f`, as
/// on a rectified image.
fn regular_grid(cols: usize, rows: usize, f: usize) -> Grid {
    let lines = |n: usize| (0..=n).map(|i| (i * f) as f32).collect();
    Grid {
        x_lines: lines(cols),
        y_lines: lines(rows),
        cell_width: f as f32,
        cell_height: f as f32,
        phase_x: 0.0,
        phase_y: 0.0,
        confidence_x: 1.0,
        confidence_y: 1.0,
    }
}

fn reduce_with_kernels(t: &Tensor, f: usize) -> Vec<f32> {
    kernels::reduce_cells(t, f)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

#[test]
fn kernels_cell_reduction_equals_the_decoders_on_regular_grids() {
    let mut rng = common::Rng::new(9);
    let mut cells_checked = 0;
    // Cell sizes from 1 pixel (no interior) to over MAX_SAMPLES_PER_CELL pixels.
    let cases = [
        (3usize, 4usize, 1usize),
        (5, 3, 2),
        (4, 4, 3),
        (6, 5, 7),
        (3, 3, 16),
        (2, 3, 21),
        (2, 2, 40),
    ];
    for (rows, cols, f) in cases {
        let data = common::rectified_image(&mut rng, 1, rows, cols, f);
        let t = Tensor::from_vec(data, (1, 4, rows * f, cols * f), &Device::Cpu).unwrap();
        let img: RgbaImage = spritedx::rectify::tensor_to_image(&t).unwrap();
        let cpu = spritedx::decoder::reduce_cells(&img, &regular_grid(cols, rows, f));
        let reduced = reduce_with_kernels(&t, f);
        assert_eq!(reduced.len(), rows * cols * 5);
        for (i, cell) in reduced.chunks_exact(5).enumerate() {
            let c = cpu.colour[i];
            assert_eq!(
                cell,
                &[c.l, c.a, c.b, cpu.alpha[i], cpu.spread[i]],
                "cell {i} of a {cols}x{rows} grid of {f}-pixel cells"
            );
            cells_checked += 1;
        }
        // The 8-bit image back as a tensor reduces to the same cells.
        let again = spritedx::rectify::image_to_tensor(&img, &Device::Cpu).unwrap();
        assert_eq!(reduce_with_kernels(&again, f), reduced);
    }
    println!("{cells_checked} cells identical");
    let all_cells: usize = cases.iter().map(|(rows, cols, _)| rows * cols).sum();
    assert_eq!(cells_checked, all_cells);
}

#[test]
fn kernels_colour_conversion_and_palette_snap_equal_the_decoders() {
    // Every 8-bit colour on a lattice of step 3.
    for r in (0..=255u8).step_by(3) {
        for g in (0..=255u8).step_by(3) {
            for b in (0..=255u8).step_by(3) {
                let c = srgb8_to_oklab([r, g, b]);
                assert_eq!(kernels::srgb8_to_oklab([r, g, b]), [c.l, c.a, c.b]);
            }
        }
    }
    let mut rng = common::Rng::new(10);
    let palette = Palette {
        colours: (0..40)
            .map(|_| [0; 3].map(|_: u8| rng.below(256) as u8))
            .collect(),
    };
    let samples: Vec<Oklab> = (0..5000)
        .map(|_| Oklab {
            l: rng.unit(),
            a: rng.uniform(-0.3, 0.3),
            b: rng.uniform(-0.3, 0.3),
        })
        .collect();
    let want: Vec<u32> = snap_to_palette(&samples, &palette)
        .into_iter()
        .map(|i| i as u32)
        .collect();
    let flat = |cs: &[Oklab]| {
        cs.iter()
            .flat_map(|c| [c.l, c.a, c.b])
            .collect::<Vec<f32>>()
    };
    let colours = Tensor::from_vec(flat(&samples), (samples.len(), 3), &Device::Cpu).unwrap();
    let oklab_palette = Tensor::from_vec(flat(&palette.oklab()), (40, 3), &Device::Cpu).unwrap();
    let got = kernels::snap_to_palette(&colours, &oklab_palette)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap();
    assert_eq!(got, want);
    // The snap picks more than one colour, so the comparison says something.
    assert!(want.iter().any(|&i| i != want[0]));
}

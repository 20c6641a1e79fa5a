//! Screen-space filters: separable gaussian blur (premultiplied) and gaussian noise.

use rand::Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;

use super::canvas::{premultiply, unpremultiply, Canvas};
use super::params::Noise;
use crate::rng::{derive_seed, rng_from_seed};

/// Gaussian blur of standard deviation `sigma` screen pixels (kernel radius `ceil(3 sigma)`,
/// clamp-to-edge), on premultiplied colour; a pixel that becomes invisible keeps its own
/// straight colour.
pub(super) fn gaussian_blur(canvas: &mut Canvas, sigma: f32) {
    let radius = (3.0 * sigma).ceil() as usize;
    let (width, height) = (canvas.width, canvas.height);
    if radius == 0 || width == 0 || height == 0 {
        return;
    }
    let mut weights: Vec<f32> = (0..=2 * radius)
        .map(|k| {
            let d = k as f32 - radius as f32;
            (-d * d / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let total: f32 = weights.iter().sum();
    weights.iter_mut().for_each(|w| *w /= total);
    // Source index of tap `k` around `centre`, clamped to [0, len).
    let source = |centre: usize, k: usize, len: usize| (centre + k).saturating_sub(radius).min(len - 1);

    let mut horizontal = vec![[0.0f32; 4]; width * height];
    horizontal
        .par_chunks_mut(width)
        .zip(canvas.pixels.par_chunks(width))
        .for_each(|(out_row, in_row)| {
            for (x, out) in out_row.iter_mut().enumerate() {
                let mut sum = [0.0f32; 4];
                for (k, &w) in weights.iter().enumerate() {
                    let p = premultiply(in_row[source(x, k, width)]);
                    for c in 0..4 {
                        sum[c] += w * p[c];
                    }
                }
                *out = sum;
            }
        });
    canvas
        .pixels
        .par_chunks_mut(width)
        .enumerate()
        .for_each(|(y, out_row)| {
            // Whole rows at a time: contiguous reads, and the compiler vectorises the inner loop.
            let mut sums = vec![[0.0f32; 4]; width];
            for (k, &w) in weights.iter().enumerate() {
                let in_row = &horizontal[source(y, k, height) * width..][..width];
                for (sum, p) in sums.iter_mut().zip(in_row) {
                    for c in 0..4 {
                        sum[c] += w * p[c];
                    }
                }
            }
            for (out, sum) in out_row.iter_mut().zip(sums) {
                *out = unpremultiply(sum, *out);
            }
        });
}

/// Adds N(0, sigma / 255) to each colour channel of visible pixels, clamped to [0, 1].
/// Each row has its own generator (derived from the seed and the row), so rows can be done
/// in parallel and the result does not depend on the thread count.
pub(super) fn add_noise(canvas: &mut Canvas, noise: &Noise) {
    let sigma = noise.sigma / 255.0;
    let width = canvas.width.max(1);
    canvas.pixels.par_chunks_mut(width).enumerate().for_each(|(y, row)| {
        let mut rng = rng_from_seed(derive_seed(noise.seed, &[y as u64]));
        for pixel in row {
            let deltas: [f32; 3] = std::array::from_fn(|_| rng.sample(StandardNormal));
            if pixel[3] > 0.0 {
                for (c, d) in pixel[..3].iter_mut().zip(deltas) {
                    *c = (*c + sigma * d).clamp(0.0, 1.0);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blur_keeps_flat_colour_and_mean_and_spreads_an_edge() {
        let mut canvas = Canvas::transparent(20, 3);
        for (i, p) in canvas.pixels.iter_mut().enumerate() {
            *p = if i % 20 < 10 {
                [1.0, 0.5, 0.0, 1.0]
            } else {
                [0.0, 0.5, 1.0, 1.0]
            };
        }
        gaussian_blur(&mut canvas, 1.5);
        let row = &canvas.pixels[20..40];
        assert!(
            (row[0][0] - 1.0).abs() < 1e-5 && (row[19][0]).abs() < 1e-5,
            "far from the edge stays flat"
        );
        assert!(row
            .iter()
            .all(|p| (p[1] - 0.5).abs() < 1e-5 && (p[3] - 1.0).abs() < 1e-5));
        assert!(
            row[9][0] < 0.9 && row[10][0] > 0.1,
            "the edge is spread: {:?}",
            &row[8..12]
        );
        assert!((row[9][0] + row[10][0] - 1.0).abs() < 1e-4, "symmetric about the edge");
    }

    #[test]
    fn blur_does_not_bleed_transparent_colour() {
        let mut canvas = Canvas::transparent(9, 1);
        for (i, p) in canvas.pixels.iter_mut().enumerate() {
            *p = if i < 4 {
                [1.0, 0.0, 0.0, 0.0]
            } else {
                [0.0, 0.0, 0.0, 1.0]
            };
        }
        gaussian_blur(&mut canvas, 1.0);
        for p in canvas.pixels.iter().filter(|p| p[3] >= 0.5 / 255.0) {
            assert_eq!(p[..3], [0.0, 0.0, 0.0], "{p:?}");
        }
        assert!(canvas.pixels[3][3] > 0.0, "alpha itself is blurred");
    }

    #[test]
    fn noise_has_the_requested_spread_on_visible_pixels_only() {
        let mut canvas = Canvas::transparent(100, 100);
        for (i, p) in canvas.pixels.iter_mut().enumerate() {
            *p = [0.5, 0.5, 0.5, if i % 2 == 0 { 1.0 } else { 0.0 }];
        }
        add_noise(&mut canvas, &Noise { sigma: 6.0, seed: 3 });
        let visible: Vec<f32> = canvas.pixels.iter().step_by(2).map(|p| (p[0] - 0.5) * 255.0).collect();
        let std = (visible.iter().map(|d| d * d).sum::<f32>() / visible.len() as f32).sqrt();
        assert!((std - 6.0).abs() < 0.3, "std {std}");
        assert!(canvas
            .pixels
            .iter()
            .skip(1)
            .step_by(2)
            .all(|p| p[..3] == [0.5, 0.5, 0.5]));
    }
}

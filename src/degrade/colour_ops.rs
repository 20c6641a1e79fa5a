//! Per-pixel colour steps: per-cell drift and gradient (on the art, in OKLab), flattening
//! onto a background, and gamma/exposure.

use image::RgbaImage;
use rand::Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;

use super::canvas::Canvas;
use super::params::{ColourDrift, ColourGradient};
use crate::colour::{linear_to_oklab, linear_to_srgb, oklab_to_linear, srgb_to_linear, Oklab};
use crate::rng::rng_from_seed;

/// Offsets every visible art pixel in OKLab by its own N(0, sigma) draw plus the gradient
/// at its position, then clips to the sRGB gamut. Works on the art (one value per cell),
/// which is the same as drifting each cell's colour after rendering.
pub(super) fn drift(art: &mut Canvas, drift: Option<&ColourDrift>, gradient: Option<&ColourGradient>) {
    if drift.is_none() && gradient.is_none() {
        return;
    }
    let mut rng = drift.map(|d| rng_from_seed(d.seed));
    let (cols, rows) = (art.width as f32, art.height as f32);
    for (index, pixel) in art.pixels.iter_mut().enumerate() {
        let mut offset = [0.0f32; 3];
        // Drawn for every pixel, visible or not, so each cell's offset depends only on its
        // position.
        if let (Some(d), Some(rng)) = (drift, rng.as_mut()) {
            offset = std::array::from_fn(|_| d.sigma * rng.sample::<f32, _>(StandardNormal));
        }
        if let Some(g) = gradient {
            let u = ((index % art.width) as f32 + 0.5) / cols - 0.5;
            let v = ((index / art.width) as f32 + 0.5) / rows - 0.5;
            for (c, o) in offset.iter_mut().enumerate() {
                *o += u * g.across_width[c] + v * g.across_height[c];
            }
        }
        if pixel[3] <= 0.0 {
            continue;
        }
        let lab = linear_to_oklab([pixel[0], pixel[1], pixel[2]].map(srgb_to_linear));
        let shifted = Oklab {
            l: lab.l + offset[0],
            a: lab.a + offset[1],
            b: lab.b + offset[2],
        };
        let rgb = oklab_to_linear(shifted).map(|c| linear_to_srgb(c.clamp(0.0, 1.0)));
        pixel[..3].copy_from_slice(&rgb);
    }
}

/// Composites the art over an opaque sRGB background (in sRGB-encoded values, like every
/// image editor), leaving it fully opaque.
pub(super) fn flatten(art: &mut Canvas, background: [u8; 3]) {
    let background = background.map(|v| f32::from(v) / 255.0);
    for pixel in &mut art.pixels {
        let alpha = pixel[3];
        for c in 0..3 {
            pixel[c] = pixel[c] * alpha + background[c] * (1.0 - alpha);
        }
        pixel[3] = 1.0;
    }
}

/// `image` composited over an opaque sRGB background (in sRGB-encoded values, rounded):
/// the target of a flattened sample.
pub fn flatten_onto(image: &RgbaImage, background: [u8; 3]) -> RgbaImage {
    let mut flat = image.clone();
    for pixel in flat.pixels_mut() {
        let alpha = u32::from(pixel[3]);
        for c in 0..3 {
            let mixed = u32::from(pixel[c]) * alpha + u32::from(background[c]) * (255 - alpha);
            pixel[c] = ((mixed + 127) / 255) as u8;
        }
        pixel[3] = 255;
    }
    flat
}

/// `exposure * colour^gamma` on the sRGB-encoded colour of visible pixels.
pub(super) fn gamma_exposure(canvas: &mut Canvas, gamma: f32, exposure: f32) {
    canvas.pixels.par_iter_mut().filter(|p| p[3] > 0.0).for_each(|pixel| {
        for c in &mut pixel[..3] {
            *c = (exposure * c.powf(gamma)).clamp(0.0, 1.0);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::colour::srgb8_to_oklab;

    #[test]
    fn drift_moves_visible_pixels_by_about_sigma_and_leaves_transparent_ones() {
        let image = RgbaImage::from_fn(16, 16, |x, _| {
            if x < 8 {
                image::Rgba([120, 90, 60, 255])
            } else {
                image::Rgba([10, 20, 30, 0])
            }
        });
        let mut art = Canvas::from_rgba8(&image);
        drift(&mut art, Some(&ColourDrift { sigma: 0.02, seed: 9 }), None);
        let drifted = art.to_rgba8();
        let original = srgb8_to_oklab([120, 90, 60]);
        let distances: Vec<f32> = drifted
            .pixels()
            .filter(|p| p[3] == 255)
            .map(|p| srgb8_to_oklab([p[0], p[1], p[2]]).dist(original))
            .collect();
        let mean = distances.iter().sum::<f32>() / distances.len() as f32;
        // The mean length of a 3D N(0, 0.02) vector is 0.032; 8-bit rounding adds a little.
        assert!((0.02..0.045).contains(&mean), "mean drift {mean}");
        assert!(drifted.pixels().filter(|p| p[3] == 0).all(|p| p.0 == [10, 20, 30, 0]));
    }

    #[test]
    fn flatten_onto_composites_by_alpha() {
        let image = RgbaImage::from_raw(3, 1, vec![200, 100, 0, 255, 200, 100, 0, 0, 200, 100, 0, 128]).unwrap();
        let flat = flatten_onto(&image, [0, 0, 255]);
        assert_eq!(
            flat.as_raw(),
            &vec![200, 100, 0, 255, 0, 0, 255, 255, 100, 50, 127, 255]
        );
    }
}

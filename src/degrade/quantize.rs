//! Lossy 8-bit steps: reduction to a wrong palette, and a JPEG round trip.

use color_quant::NeuQuant;
use image::codecs::jpeg::JpegEncoder;
use image::{ImageFormat, RgbImage, RgbaImage};

use super::canvas::{to_u8, Canvas};
use super::params::PaletteDiffusion;

/// NeuQuant's sampling factor: 1 learns from every pixel, 30 from every 30th; 10 is the
/// author's speed/quality compromise.
const NEUQUANT_SAMPLING: i32 = 10;

/// Replaces the colour of every visible pixel by the nearest colour of a `colours`-colour
/// palette that NeuQuant learns from the image itself. The palette is "wrong" because it is
/// learnt from the already degraded pixels (blur and kernel mixes included), and NeuQuant
/// places colours by pixel frequency, not by the sprite's true palette. Alpha is kept;
/// invisible pixels are left alone. With `dither`, Floyd-Steinberg diffuses the error to the
/// visible right/lower neighbours (error towards invisible pixels is dropped).
pub(super) fn palette_diffusion(canvas: &mut Canvas, palette: &PaletteDiffusion) {
    let training: Vec<u8> = canvas
        .pixels
        .iter()
        .filter(|p| p[3] > 0.0)
        .flat_map(|p| [to_u8(p[0]), to_u8(p[1]), to_u8(p[2]), 255])
        .collect();
    if training.is_empty() {
        return;
    }
    let quantizer = NeuQuant::new(NEUQUANT_SAMPLING, palette.colours as usize, &training);
    let nearest = |rgb: [f32; 3]| -> [f32; 3] {
        let index = quantizer.index_of(&[to_u8(rgb[0]), to_u8(rgb[1]), to_u8(rgb[2]), 255]);
        let [r, g, b, _] = quantizer
            .lookup(index)
            .expect("NeuQuant returns indices into its own palette");
        [r, g, b].map(|v| f32::from(v) / 255.0)
    };
    let (width, height) = (canvas.width, canvas.height);
    if !palette.dither {
        for pixel in canvas.pixels.iter_mut().filter(|p| p[3] > 0.0) {
            let rgb = nearest([pixel[0], pixel[1], pixel[2]]);
            pixel[..3].copy_from_slice(&rgb);
        }
        return;
    }
    // Wanted colours including the error diffused so far (may leave [0, 1]).
    let mut wanted: Vec<[f32; 3]> = canvas.pixels.iter().map(|p| [p[0], p[1], p[2]]).collect();
    for y in 0..height {
        for x in 0..width {
            let index = y * width + x;
            if canvas.pixels[index][3] <= 0.0 {
                continue;
            }
            let want = wanted[index].map(|c| c.clamp(0.0, 1.0));
            let got = nearest(want);
            canvas.pixels[index][..3].copy_from_slice(&got);
            let error: [f32; 3] = std::array::from_fn(|c| want[c] - got[c]);
            let neighbours = [
                (1, 0, 7.0 / 16.0),
                (-1, 1, 3.0 / 16.0),
                (0, 1, 5.0 / 16.0),
                (1, 1, 1.0 / 16.0),
            ];
            for (dx, dy, share) in neighbours {
                let (nx, ny) = (x as isize + dx, y + dy);
                if nx < 0 || nx as usize >= width || ny >= height {
                    continue;
                }
                let neighbour = ny * width + nx as usize;
                if canvas.pixels[neighbour][3] > 0.0 {
                    for c in 0..3 {
                        wanted[neighbour][c] += share * error[c];
                    }
                }
            }
        }
    }
}

/// Encodes the colour as JPEG at `quality` and decodes it again. JPEG has no alpha: the
/// straight RGB is compressed as it is (invisible pixels included, so the block structure
/// sees what a generator's canvas would), and the alpha channel is kept exactly.
pub(super) fn jpeg_round_trip(image: &mut RgbaImage, quality: u8) {
    if image.width() == 0 || image.height() == 0 {
        return;
    }
    let colour = RgbImage::from_fn(image.width(), image.height(), |x, y| {
        let [r, g, b, _] = image.get_pixel(x, y).0;
        image::Rgb([r, g, b])
    });
    let mut encoded = Vec::new();
    JpegEncoder::new_with_quality(&mut encoded, quality)
        .encode_image(&colour)
        .expect("JPEG encoding into memory cannot fail below the validated size limit");
    let decoded = image::load_from_memory_with_format(&encoded, ImageFormat::Jpeg)
        .expect("the JPEG just encoded decodes")
        .into_rgb8();
    for (pixel, compressed) in image.pixels_mut().zip(decoded.pixels()) {
        pixel.0[..3].copy_from_slice(&compressed.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn gradient_canvas() -> Canvas {
        let mut canvas = Canvas::transparent(48, 48);
        for (i, p) in canvas.pixels.iter_mut().enumerate() {
            let (x, y) = ((i % 48) as f32 / 47.0, (i / 48) as f32 / 47.0);
            *p = [x, y, 1.0 - x * y, if i % 7 == 0 { 0.0 } else { 1.0 }];
        }
        canvas
    }

    #[test]
    fn palette_diffusion_leaves_at_most_the_palette_size_of_visible_colours() {
        for dither in [false, true] {
            let mut canvas = gradient_canvas();
            let before = canvas.clone();
            palette_diffusion(&mut canvas, &PaletteDiffusion { colours: 8, dither });
            let colours: HashSet<[u8; 3]> = canvas
                .to_rgba8()
                .pixels()
                .filter(|p| p[3] > 0)
                .map(|p| [p[0], p[1], p[2]])
                .collect();
            assert!(
                (2..=8).contains(&colours.len()),
                "dither {dither}: {} colours",
                colours.len()
            );
            for (after, before) in canvas.pixels.iter().zip(&before.pixels) {
                assert_eq!(after[3], before[3], "alpha is kept");
                if before[3] == 0.0 {
                    assert_eq!(after, before, "invisible pixels are left alone");
                }
            }
        }
    }

    #[test]
    fn jpeg_changes_colour_and_keeps_alpha() {
        let mut image = gradient_canvas().to_rgba8();
        let before = image.clone();
        jpeg_round_trip(&mut image, 30);
        assert_ne!(image, before);
        assert!(image.pixels().zip(before.pixels()).all(|(a, b)| a[3] == b[3]));
    }
}

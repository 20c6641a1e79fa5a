//! Rectification: resampling pseudo pixel art so that every cell of its detected grid
//! becomes exactly `factor` x `factor` pixels, and the tensor layouts the learned
//! restorers read it in.
//!
//! After rectification one art pixel is one `factor` x `factor` block, whatever the cell
//! sizes, phase and wobble of the input were. Folding each block into channels
//! (pixel-unshuffle) then gives a tensor at true resolution, one position per art pixel,
//! which is what the learned restorers' encoders take; the StableSR pipeline instead
//! encodes the rectified image with its autoencoder, whose downsampling factor equals
//! `factor`, so that one latent pixel is one art pixel.

use crate::grid::Grid;
use candle_core::{DType, Device, Result, Tensor};
use image::{Rgba, RgbaImage};

/// Resamples `img` so that cell `(cx, cy)` of `grid` becomes the pixels
/// `cx * factor .. (cx + 1) * factor` by `cy * factor .. (cy + 1) * factor`.
/// Each output pixel is a bilinear sample of the input (premultiplied by alpha, so that
/// transparent pixels' colours do not bleed) at the matching position inside the cell:
/// sub-pixel `i` of `factor` sits at `(i + 0.5) / factor` of the cell's width.
pub fn rectify(img: &RgbaImage, grid: &Grid, factor: u32) -> RgbaImage {
    let factor = factor.max(1);
    let xs = sample_positions(&grid.x_lines, factor);
    let ys = sample_positions(&grid.y_lines, factor);
    let mut out = RgbaImage::new(xs.len() as u32, ys.len() as u32);
    for (oy, &sy) in ys.iter().enumerate() {
        for (ox, &sx) in xs.iter().enumerate() {
            out.put_pixel(ox as u32, oy as u32, bilinear_premultiplied(img, sx, sy));
        }
    }
    out
}

/// Screen coordinates (in pixel-centre units: pixel `x` covers `x .. x + 1`, so its centre
/// is `x + 0.5`) of the `factor` samples in each cell between consecutive lines.
fn sample_positions(lines: &[f32], factor: u32) -> Vec<f32> {
    let mut positions = Vec::with_capacity(lines.len().saturating_sub(1) * factor as usize);
    for w in lines.windows(2) {
        let size = w[1] - w[0];
        for i in 0..factor {
            positions.push(w[0] + (i as f32 + 0.5) / factor as f32 * size);
        }
    }
    positions
}

/// Bilinear sample at screen position `(x, y)` with edge clamping, interpolating
/// premultiplied colour and alpha and un-premultiplying the result.
fn bilinear_premultiplied(img: &RgbaImage, x: f32, y: f32) -> Rgba<u8> {
    let (w, h) = img.dimensions();
    // Pixel centres sit at integer + 0.5.
    let fx = (x - 0.5).clamp(0.0, (w - 1) as f32);
    let fy = (y - 0.5).clamp(0.0, (h - 1) as f32);
    let (x0, y0) = (fx.floor() as u32, fy.floor() as u32);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (tx, ty) = (fx - x0 as f32, fy - y0 as f32);
    let mut acc = [0.0f32; 4];
    for (px, py, weight) in [
        (x0, y0, (1.0 - tx) * (1.0 - ty)),
        (x1, y0, tx * (1.0 - ty)),
        (x0, y1, (1.0 - tx) * ty),
        (x1, y1, tx * ty),
    ] {
        let p = img.get_pixel(px, py).0;
        let a = f32::from(p[3]) / 255.0;
        for c in 0..3 {
            acc[c] += weight * f32::from(p[c]) * a;
        }
        acc[3] += weight * a;
    }
    let alpha = acc[3];
    let colour = |c: usize| if alpha > 1e-6 { (acc[c] / alpha).round().clamp(0.0, 255.0) as u8 } else { 0 };
    Rgba([colour(0), colour(1), colour(2), (alpha * 255.0).round().clamp(0.0, 255.0) as u8])
}

/// An RGBA image as a (1, 4, H, W) f32 tensor with values in [-1, 1] (straight alpha).
pub fn image_to_tensor(img: &RgbaImage, device: &Device) -> Result<Tensor> {
    let (w, h) = img.dimensions();
    let data: Vec<f32> = img.as_raw().iter().map(|&v| f32::from(v) / 127.5 - 1.0).collect();
    Tensor::from_vec(data, (h as usize, w as usize, 4), &Device::Cpu)?.permute((2, 0, 1))?.unsqueeze(0)?.to_device(device)
}

/// The first image of a (B, 4, H, W) tensor in [-1, 1] as RGBA8 (values clamped).
pub fn tensor_to_image(t: &Tensor) -> Result<RgbaImage> {
    let (_, c, h, w) = t.dims4()?;
    if c != 4 {
        candle_core::bail!("expected 4 channels (RGBA), got {c}");
    }
    let hwc = t.get(0)?.permute((1, 2, 0))?.to_dtype(DType::F32)?.to_device(&Device::Cpu)?.flatten_all()?;
    let data: Vec<u8> =
        hwc.to_vec1::<f32>()?.iter().map(|&v| ((v + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8).collect();
    Ok(RgbaImage::from_raw(w as u32, h as u32, data).expect("buffer length matches the dimensions"))
}

/// Folds every `factor` x `factor` block into channels: (B, C, H*f, W*f) ->
/// (B, C*f*f, H, W), channel `c * f * f + i * f + j` holding sub-pixel row `i`, column `j`
/// of channel `c` (PyTorch's `pixel_unshuffle` order).
pub fn pixel_unshuffle(t: &Tensor, factor: usize) -> Result<Tensor> {
    let (b, c, hf, wf) = t.dims4()?;
    if hf % factor != 0 || wf % factor != 0 {
        candle_core::bail!("pixel_unshuffle: {hf}x{wf} is not a multiple of {factor}");
    }
    let (h, w) = (hf / factor, wf / factor);
    t.reshape((b, c, h, factor, w, factor))?.permute((0, 1, 3, 5, 2, 4))?.reshape((b, c * factor * factor, h, w))
}

/// The inverse of [`pixel_unshuffle`].
pub fn pixel_shuffle(t: &Tensor, factor: usize) -> Result<Tensor> {
    let (b, cff, h, w) = t.dims4()?;
    if cff % (factor * factor) != 0 {
        candle_core::bail!("pixel_shuffle: {cff} channels is not a multiple of {}", factor * factor);
    }
    let c = cff / (factor * factor);
    t.reshape((b, c, factor, factor, h, w))?.permute((0, 1, 4, 2, 5, 3))?.reshape((b, c, h * factor, w * factor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn grid(cols: u32, rows: u32, cell: f32, offset: f32) -> Grid {
        Grid {
            x_lines: (0..=cols).map(|i| offset + i as f32 * cell).collect(),
            y_lines: (0..=rows).map(|i| offset + i as f32 * cell).collect(),
            cell_width: cell,
            cell_height: cell,
            phase_x: offset,
            phase_y: offset,
            confidence_x: 1.0,
            confidence_y: 1.0,
        }
    }

    fn sprite(w: u32, h: u32) -> RgbaImage {
        RgbaImage::from_fn(w, h, |x, y| {
            let v = (crate::rng::splitmix64(u64::from(x * 31 + y)) % 256) as u8;
            Rgba([v, 255 - v, v / 2, if (x + y) % 5 == 0 { 0 } else { 255 }])
        })
    }

    #[test]
    fn nearest_upscale_rectifies_back_to_blocks_of_the_sprite() {
        // A 7x upscale rectified to 3x3 blocks: every sub-pixel sample lands well inside
        // its cell (the nearest input pixel centre is inside the cell), so each block is
        // the sprite's pixel exactly, transparency included.
        let small = sprite(6, 5);
        let big = image::imageops::resize(&small, 42, 35, image::imageops::FilterType::Nearest);
        let out = rectify(&big, &grid(6, 5, 7.0, 0.0), 3);
        assert_eq!(out.dimensions(), (18, 15));
        for (x, y, p) in out.enumerate_pixels() {
            let s = small.get_pixel(x / 3, y / 3);
            if s[3] == 0 {
                assert_eq!(p[3], 0, "({x},{y})");
            } else {
                assert_eq!(p, s, "({x},{y})");
            }
        }
    }

    #[test]
    fn transparent_neighbours_do_not_darken_colours() {
        // Half-transparent black beside opaque red: a bilinear sample between them is red
        // with partial alpha, not a darker red.
        let img = RgbaImage::from_fn(2, 1, |x, _| if x == 0 { Rgba([200, 0, 0, 255]) } else { Rgba([0, 0, 0, 0]) });
        let p = bilinear_premultiplied(&img, 1.0, 0.5);
        assert_eq!(p, Rgba([200, 0, 0, 128]));
    }

    #[test]
    fn tensor_round_trip_is_exact() {
        let img = sprite(5, 3);
        let t = image_to_tensor(&img, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[1, 4, 3, 5]);
        assert_eq!(tensor_to_image(&t).unwrap(), img);
    }

    proptest! {
        /// Unshuffle then shuffle is the identity, and unshuffle puts sub-pixel (i, j) of
        /// channel c in channel c*f*f + i*f + j.
        #[test]
        fn shuffle_inverts_unshuffle(b in 1usize..3, c in 1usize..4, h in 1usize..4, w in 1usize..4, f in 1usize..4) {
            let n = b * c * h * f * w * f;
            let t = Tensor::arange(0f32, n as f32, &Device::Cpu).unwrap().reshape((b, c, h * f, w * f)).unwrap();
            let u = pixel_unshuffle(&t, f).unwrap();
            prop_assert_eq!(u.dims(), &[b, c * f * f, h, w]);
            let back = pixel_shuffle(&u, f).unwrap();
            prop_assert_eq!(back.flatten_all().unwrap().to_vec1::<f32>().unwrap(), t.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            let (bi, ci, yi, xi, i, j) = (b - 1, c - 1, h - 1, w - 1, f - 1, 0);
            let direct = t.get(bi).unwrap().get(ci).unwrap().get(yi * f + i).unwrap().get(xi * f + j).unwrap().to_scalar::<f32>().unwrap();
            let folded = u.get(bi).unwrap().get(ci * f * f + i * f + j).unwrap().get(yi).unwrap().get(xi).unwrap().to_scalar::<f32>().unwrap();
            prop_assert_eq!(direct, folded);
        }
    }
}

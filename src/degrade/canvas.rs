//! The working image: straight (not premultiplied) RGBA in f32, sRGB-encoded, in [0, 1].
//!
//! Steps that mix pixels (resampling, blur) premultiply, filter and unpremultiply, so a
//! transparent pixel's colour never bleeds into a visible one. A pixel whose alpha would
//! round to 0 becomes exactly transparent and keeps the straight colour of the input pixel
//! nearest to it: invisible colour is carried along unchanged (so the `clean` preset
//! reproduces even hidden RGB exactly) but never mixed into anything.

use image::RgbaImage;
use rayon::prelude::*;

/// Alpha below this rounds to 0 in 8 bits.
pub(super) const INVISIBLE_ALPHA: f32 = 0.5 / 255.0;

#[derive(Clone, Debug)]
pub(super) struct Canvas {
    pub(super) width: usize,
    pub(super) height: usize,
    /// Row-major straight RGBA.
    pub(super) pixels: Vec<[f32; 4]>,
}

impl Canvas {
    pub(super) fn transparent(width: usize, height: usize) -> Self {
        Canvas {
            width,
            height,
            pixels: vec![[0.0; 4]; width * height],
        }
    }

    pub(super) fn from_rgba8(image: &RgbaImage) -> Self {
        Canvas {
            width: image.width() as usize,
            height: image.height() as usize,
            pixels: image.pixels().map(|p| p.0.map(|v| f32::from(v) / 255.0)).collect(),
        }
    }

    pub(super) fn to_rgba8(&self) -> RgbaImage {
        let mut image = RgbaImage::new(self.width as u32, self.height as u32);
        image.par_chunks_mut(4).zip(&self.pixels).for_each(|(out, pixel)| {
            for (o, &v) in out.iter_mut().zip(pixel) {
                *o = to_u8(v);
            }
        });
        image
    }
}

/// A [0, 1] value to 8 bits, rounded half up. (`f32::round` is a libm call on baseline
/// x86-64; adding 0.5 and truncating is the same for non-negative values and inlines.)
pub(super) fn to_u8(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0 + 0.5) as u8
}

pub(crate) fn premultiply([r, g, b, a]: [f32; 4]) -> [f32; 4] {
    [r * a, g * a, b * a, a]
}

/// Straight colour from a filtered premultiplied sum; `hidden` is the straight colour kept
/// when the result is invisible. Overshoot (bicubic, lanczos) is clamped to [0, 1].
pub(crate) fn unpremultiply(sum: [f32; 4], hidden: [f32; 4]) -> [f32; 4] {
    let alpha = sum[3].min(1.0);
    if alpha < INVISIBLE_ALPHA {
        return [hidden[0], hidden[1], hidden[2], 0.0];
    }
    let straight = |c: f32| (c / alpha).clamp(0.0, 1.0);
    [straight(sum[0]), straight(sum[1]), straight(sum[2]), alpha]
}

//! Single-pixel details: how an image at its true resolution gives itself away.
//!
//! An upscale by 2 or more draws every art pixel over at least two screen pixels on each
//! axis, so no screen pixel can stand out from both of its neighbours on one axis: with a
//! nearest-neighbour upscale one of them is the same art pixel, and a smooth upscale,
//! blur or soft edges only spread the change further. Pixel art at its true resolution is
//! full of such pixels (one-pixel outlines, highlights, eyes, dithering). Without this
//! test the grid analysis finds some comb in any image, and restoring a sprite that was
//! never upscaled would reduce it to a few blocks.

use image::RgbaImage;

/// A pixel is a single-pixel detail when one of its premultiplied channels (0-255) lies
/// more than this above both of its neighbours on an axis, or below both. Noise, JPEG
/// ringing and the dithering of close palette colours stay under it; drawn details such
/// as a dark outline pixel between lighter ones do not. Measured on the validation split
/// (seed 1, 258 pairs per preset; see [`TRUE_RESOLUTION_SHARE`]): 64 leaves at most
/// 0.03% of a `seed` image and 0.01% of an `ai` image, and 0.17% of the four generator
/// samples; 40 would let the dithering of the `hard` preset through more often.
pub const DETAIL_CONTRAST: f32 = 64.0;

/// Images with more than this share of single-pixel details ([`single_pixel_detail_share`])
/// are taken to be at their true resolution already. On a quarter of the clean sprites
/// (598, every 4th) 81% lie above it (the others draw no detail that strong: floor and
/// wall textures of low contrast); of 258 `hard` validation images 9 do, dithered at
/// screen resolution (snap had restored 2 of them to the right size, none exactly, and
/// found no grid in 1); of `clean`, `seed` and `ai` none, nor any generator sample.
pub const TRUE_RESOLUTION_SHARE: f32 = 0.02;

/// The share of the image's pixels that are single-pixel details on either axis: counted
/// once per axis on which they stand out, over the number of pixels, leaving out lines
/// drawn across the image ([`DRAWN_LINE_RUN`]).
pub fn single_pixel_detail_share(img: &RgbaImage) -> f32 {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return 0.0;
    }
    let premultiplied: Vec<[f32; 4]> = img
        .pixels()
        .map(|p| {
            let a = f32::from(p[3]) / 255.0;
            [f32::from(p[0]) * a, f32::from(p[1]) * a, f32::from(p[2]) * a, f32::from(p[3])]
        })
        .collect();
    let stands_out = |before: &[f32; 4], at: &[f32; 4], after: &[f32; 4]| {
        (0..4).any(|c| {
            let (up, down) = ((at[c] - before[c]).min(at[c] - after[c]), (before[c] - at[c]).min(after[c] - at[c]));
            up > DETAIL_CONTRAST || down > DETAIL_CONTRAST
        })
    };
    // Where each pixel stands out: across x, and across y.
    let (mut across_x, mut across_y) = (vec![false; w * h], vec![false; w * h]);
    for y in 0..h {
        for x in 0..w {
            let at = &premultiplied[y * w + x];
            across_x[y * w + x] = x > 0 && x + 1 < w && stands_out(&premultiplied[y * w + x - 1], at, &premultiplied[y * w + x + 1]);
            across_y[y * w + x] = y > 0 && y + 1 < h && stands_out(&premultiplied[(y - 1) * w + x], at, &premultiplied[(y + 1) * w + x]);
        }
    }
    // Pixels that stand out across x, in runs of one colour down a column shorter than a
    // drawn line; likewise across y along a row. A run takes in every pixel of its colour
    // in turn, standing out or not, so that a line stays one where it crosses another line
    // or passes cells that it does not stand out from. (A checkerboard's pixels all stand out,
    // but alternate in colour.)
    let same_colour = |a: &[f32; 4], b: &[f32; 4]| (0..4).all(|c| (a[c] - b[c]).abs() <= LINE_COLOUR_TOLERANCE);
    let short_runs = |pixels: &mut dyn Iterator<Item = usize>, flags: &[bool]| -> usize {
        let (mut counted, mut run, mut flagged, mut previous) = (0, 0, 0, None::<usize>);
        for i in pixels.map(Some).chain(std::iter::once(None)) {
            let continues = matches!((i, previous), (Some(i), Some(p)) if same_colour(&premultiplied[i], &premultiplied[p]));
            if !continues {
                if run < DRAWN_LINE_RUN {
                    counted += flagged;
                }
                (run, flagged) = (0, 0);
            }
            if let Some(i) = i {
                run += 1;
                flagged += usize::from(flags[i]);
            }
            previous = i;
        }
        counted
    };
    let details: usize = (0..w).map(|x| short_runs(&mut (0..h).map(|y| y * w + x), &across_x)).sum::<usize>()
        + (0..h).map(|y| short_runs(&mut (0..w).map(|x| y * w + x), &across_y)).sum::<usize>();
    details as f32 / (w * h) as f32
}

/// Pixels that stand out across one axis in a run of one colour at least this long along
/// the other are a line drawn over the image (the grid of an editor's screenshot, which
/// stands out wherever it crosses lighter or transparent cells), and are not counted. Art
/// draws few one-pixel lines that long: on the clean sprites of [`TRUE_RESOLUTION_SHARE`]
/// the share above it falls from 83.3% to 80.9% (498 and 484 of 598).
const DRAWN_LINE_RUN: usize = 8;
/// Neighbouring pixels of a drawn line differ by at most this much per premultiplied
/// channel (0-255): noise and compression, not the colours of art.
const LINE_COLOUR_TOLERANCE: f32 = 16.0;

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgba;
    use proptest::prelude::*;

    /// A sprite of random colours, a quarter of its pixels transparent: at its true
    /// resolution most of its pixels stand out.
    fn random_sprite(seed: u64, w: u32, h: u32) -> RgbaImage {
        let mut state = seed;
        RgbaImage::from_fn(w, h, |_, _| {
            state = crate::rng::splitmix64(state);
            let v = state.to_le_bytes();
            Rgba([v[0], v[1], v[2], if v[3] < 64 { 0 } else { 255 }])
        })
    }

    /// Nearest-neighbour upscale by any factor of 2 or more, fractional included.
    fn nearest_upscale(img: &RgbaImage, scale: f32) -> RgbaImage {
        let (w, h) = ((img.width() as f32 * scale) as u32, (img.height() as f32 * scale) as u32);
        RgbaImage::from_fn(w, h, |x, y| {
            let (sx, sy) = (((x as f32 + 0.5) / scale) as u32, ((y as f32 + 0.5) / scale) as u32);
            *img.get_pixel(sx.min(img.width() - 1), sy.min(img.height() - 1))
        })
    }

    proptest! {
        /// The invariant the test rests on: a nearest upscale by 2 or more has no
        /// single-pixel detail at all, whatever the art.
        #[test]
        fn an_upscale_by_two_or_more_has_none(seed in any::<u64>(), w in 1u32..12, h in 1u32..12, scale in 2.0f32..5.0) {
            let upscaled = nearest_upscale(&random_sprite(seed, w, h), scale);
            prop_assert_eq!(single_pixel_detail_share(&upscaled), 0.0);
        }
    }

    /// An editor's screenshot: a sprite of light colours upscaled 6x with a black line
    /// over every cell boundary. The lines stand out from both neighbours all along their
    /// length, and are not counted; a dot of their colour inside a cell is.
    #[test]
    fn a_grid_drawn_over_an_upscale_is_no_detail() {
        let light = RgbaImage::from_fn(8, 8, |x, y| Rgba([150 + (x * 13) as u8, 150 + (y * 11) as u8, 200, 255]));
        let mut screenshot = nearest_upscale(&light, 6.0);
        for (x, y, p) in screenshot.enumerate_pixels_mut() {
            if x % 6 == 0 || y % 6 == 0 {
                *p = Rgba([0, 0, 0, 255]);
            }
        }
        assert_eq!(single_pixel_detail_share(&screenshot), 0.0);
        screenshot.put_pixel(9, 9, Rgba([0, 0, 0, 255]));
        assert!(single_pixel_detail_share(&screenshot) > 0.0);
    }

    /// A checkerboard of black and white at true resolution: every interior pixel stands
    /// out on both axes; the border pixels on one or none.
    #[test]
    fn a_checkerboard_is_all_detail() {
        let board = RgbaImage::from_fn(10, 10, |x, y| if (x + y) % 2 == 0 { Rgba([0, 0, 0, 255]) } else { Rgba([255, 255, 255, 255]) });
        // Per axis, 8 of 10 pixels of each line have two neighbours: 2 * 80 of 100.
        assert!((single_pixel_detail_share(&board) - 1.6).abs() < 1e-6);
    }

    /// Changes under the contrast, and a blurred step however strong, are no detail.
    #[test]
    fn noise_and_ramps_are_not_details() {
        let ramp = RgbaImage::from_fn(16, 4, |x, y| {
            let v = (x * 16) as u8;
            Rgba([v, v.saturating_add(if (x + y) % 2 == 0 { 30 } else { 0 }), 0, 255])
        });
        assert_eq!(single_pixel_detail_share(&ramp), 0.0);
    }
}

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
/// found no grid in 1); of `clean`, `seed` and `ai` none, nor any generator sample. Heavy
/// JPEG rings at single pixels too: of 60 sprites upscaled 2x nearest-neighbour over white
/// and saved at quality 15, 8 lie above it (2.0-2.6%; snap had restored them at the right
/// size with 31-76% of their pixels right); at quality 30, and at 3x and 4x, none. A
/// threshold of 3% would keep those and refuse 73% of the clean sprites instead of 81%.
pub const TRUE_RESOLUTION_SHARE: f32 = 0.02;

/// The share of the image's pixels that are single-pixel details on either axis: counted
/// once per axis on which they stand out, over the number of pixels, leaving out lines
/// drawn across the image ([`DRAWN_LINE_RUN`]).
pub fn single_pixel_detail_share(img: &RgbaImage) -> f32 {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return 0.0;
    }
    // Premultiplied RGBA rounded to whole levels (half a level next to a contrast of 64),
    // in integers and only where needed: every pixel of the image is tested, and large
    // images are common.
    let raw = img.as_raw();
    let pixel = |i: usize| -> [u8; 4] { [raw[4 * i], raw[4 * i + 1], raw[4 * i + 2], raw[4 * i + 3]] };
    let premultiplied = |i: usize| -> [i16; 4] {
        let p = pixel(i);
        let a = u32::from(p[3]);
        let times_alpha = |v: u8| ((u32::from(v) * a + 127) / 255) as i16;
        [times_alpha(p[0]), times_alpha(p[1]), times_alpha(p[2]), a as i16]
    };
    let contrast = DETAIL_CONTRAST as i16;
    // Whether pixel `at` stands out from `before` and `after`. A pixel of the same alpha as
    // `before` and within the contrast of it in each colour cannot (premultiplying only
    // shrinks the difference), which settles almost every pixel from the stored bytes.
    let stands_out = |before: usize, at: usize, after: usize| {
        let (b, a) = (pixel(before), pixel(at));
        if a[3] == b[3] && (0..3).all(|c| i16::from(a[c].abs_diff(b[c])) <= contrast) {
            return false;
        }
        let (before, at, after) = (premultiplied(before), premultiplied(at), premultiplied(after));
        (0..4).any(|c| {
            let (up, down) = ((at[c] - before[c]).min(at[c] - after[c]), (before[c] - at[c]).min(after[c] - at[c]));
            up > contrast || down > contrast
        })
    };
    // Where pixels stand out: across x as (column, row), across y as (row, column), each
    // sorted (most images have none or a few, and only their lines need a look below).
    let (mut across_x, mut across_y): (Vec<(usize, usize)>, Vec<(usize, usize)>) = (Vec::new(), Vec::new());
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            if x > 0 && x + 1 < w && stands_out(i - 1, i, i + 1) {
                across_x.push((x, y));
            }
            if y > 0 && y + 1 < h && stands_out(i - w, i, i + w) {
                across_y.push((y, x));
            }
        }
    }
    across_x.sort_unstable();
    // Pixels that stand out across x, in runs of one colour down a column shorter than a
    // drawn line; likewise across y along a row. A run takes in every pixel of its colour
    // in turn, standing out or not, so that a line stays one where it crosses another line
    // or passes cells that it does not stand out from. (A checkerboard's pixels all stand
    // out, but alternate in colour.)
    let tolerance = LINE_COLOUR_TOLERANCE as i16;
    let same_colour = |i: usize, j: usize| {
        let (a, b) = (premultiplied(i), premultiplied(j));
        (0..4).all(|c| (a[c] - b[c]).abs() <= tolerance)
    };
    // The pixels `start + k * step`, `k < len`, of which those at the increasing positions
    // `flagged` (values of k) stand out.
    let short_runs = |start: usize, step: usize, len: usize, flagged: &mut dyn Iterator<Item = usize>| -> usize {
        let mut flagged = flagged.peekable();
        let (mut counted, mut run, mut in_run) = (0, 0, 0);
        for k in 0..len {
            let i = start + k * step;
            if k > 0 && !same_colour(i, i - step) {
                if run < DRAWN_LINE_RUN {
                    counted += in_run;
                }
                (run, in_run) = (0, 0);
            }
            run += 1;
            if flagged.next_if_eq(&k).is_some() {
                in_run += 1;
            }
        }
        if run < DRAWN_LINE_RUN {
            counted += in_run;
        }
        counted
    };
    // Each line's flagged positions, from pairs (line, position) sorted by line.
    let per_line = |pairs: &[(usize, usize)], start_of: &dyn Fn(usize) -> usize, step: usize, len: usize| -> usize {
        pairs.chunk_by(|a, b| a.0 == b.0).map(|line| short_runs(start_of(line[0].0), step, len, &mut line.iter().map(|&(_, k)| k))).sum()
    };
    let details = per_line(&across_x, &|x| x, w, h) + per_line(&across_y, &|y| y * w, 1, w);
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

    /// A sprite of random colours, a quarter of its pixels transparent and an eighth
    /// translucent: at its true resolution most of its pixels stand out.
    fn random_sprite(seed: u64, w: u32, h: u32) -> RgbaImage {
        let mut state = seed;
        RgbaImage::from_fn(w, h, |_, _| {
            state = crate::rng::splitmix64(state);
            let v = state.to_le_bytes();
            Rgba([v[0], v[1], v[2], match v[3] { 0..64 => 0, 64..96 => v[4], _ => 255 }])
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

    /// The count written plainly: every pixel premultiplied, tested from its premultiplied
    /// values alone, and the runs of one colour scanned down every column and along every
    /// row.
    fn reference_share(img: &RgbaImage) -> f32 {
        let (w, h) = (img.width() as i64, img.height() as i64);
        let at = |x: i64, y: i64| -> [i64; 4] {
            let p = img.get_pixel(x as u32, y as u32);
            let a = i64::from(p[3]);
            [0, 1, 2].map(|c| (i64::from(p[c]) * a + 127) / 255).into_iter().chain([a]).collect::<Vec<_>>().try_into().unwrap()
        };
        let contrast = DETAIL_CONTRAST as i64;
        let out = |b: [i64; 4], p: [i64; 4], n: [i64; 4]| (0..4).any(|c| (p[c] - b[c]).min(p[c] - n[c]) > contrast || (b[c] - p[c]).min(n[c] - p[c]) > contrast);
        let flag_x = |x: i64, y: i64| x > 0 && x + 1 < w && out(at(x - 1, y), at(x, y), at(x + 1, y));
        let flag_y = |x: i64, y: i64| y > 0 && y + 1 < h && out(at(x, y - 1), at(x, y), at(x, y + 1));
        let same = |a: [i64; 4], b: [i64; 4]| (0..4).all(|c| (a[c] - b[c]).abs() <= LINE_COLOUR_TOLERANCE as i64);
        let mut details = 0;
        let mut scan = |points: Vec<(i64, i64)>, flag: &dyn Fn(i64, i64) -> bool| {
            let mut runs: Vec<Vec<(i64, i64)>> = Vec::new();
            for (k, &(x, y)) in points.iter().enumerate() {
                if k == 0 || !same(at(x, y), at(points[k - 1].0, points[k - 1].1)) {
                    runs.push(Vec::new());
                }
                runs.last_mut().unwrap().push((x, y));
            }
            details += runs.iter().filter(|r| r.len() < DRAWN_LINE_RUN).flatten().filter(|&&(x, y)| flag(x, y)).count();
        };
        for x in 0..w {
            scan((0..h).map(|y| (x, y)).collect(), &flag_x);
        }
        for y in 0..h {
            scan((0..w).map(|x| (x, y)).collect(), &flag_y);
        }
        details as f32 / (w * h) as f32
    }

    proptest! {
        /// The share as written plainly ([`reference_share`]), to the bit, on sprites of
        /// random colours and alphas drawn as blocks, lines and single pixels.
        #[test]
        fn the_share_is_what_the_plain_count_gives(seed in any::<u64>(), w in 1u32..24, h in 1u32..24, block in 1u32..4) {
            let sprite = random_sprite(seed, w.div_ceil(block), h.div_ceil(block));
            let mut img = RgbaImage::from_fn(w, h, |x, y| *sprite.get_pixel(x / block, y / block));
            // A line of one colour down a column, long enough to be taken as drawn.
            if w > 2 {
                for y in 0..h {
                    img.put_pixel(w / 2, y, Rgba([255, 255, 255, 255]));
                }
            }
            prop_assert_eq!(single_pixel_detail_share(&img), reference_share(&img));
        }
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

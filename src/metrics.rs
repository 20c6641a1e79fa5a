//! How a restoration is scored against the clean sprite.
//!
//! [`score`] compares a restorer's output (at whatever size the restorer chose) with the
//! clean sprite at true resolution. The scores are meant to be honest: a perfect
//! restoration is `exact`, and transparent or solid-background margins around the art
//! neither help nor hurt. Every definition below is what the code does.
//!
//! # Pixel classes
//! A pixel is *transparent* when its alpha is below `alpha_threshold` (default 128) and
//! *opaque* otherwise. Two pixels are *within tolerance* when every channel (R, G, B and A)
//! differs by at most `exact_tolerance` (default 8).
//!
//! # Content box ([`content_box`])
//! - If the image has any transparent pixel, the box is the bounding box of its opaque
//!   pixels: margin rows and columns that are entirely transparent are trimmed.
//! - Otherwise, if the four corner pixels are pairwise within tolerance (for every channel,
//!   the largest corner value minus the smallest is at most `exact_tolerance`), the image is
//!   taken to sit on a solid background whose colour is the top-left corner pixel, and the
//!   box is the bounding box of the pixels *not* within tolerance of that colour: margin
//!   rows and columns made only of background are trimmed.
//! - Otherwise the box is the whole image.
//!
//! An image with no content (all transparent, all background, or zero-sized) has an empty
//! box (`width == height == 0`).
//!
//! # The compared grid
//! Both images are cropped to their content boxes. `size_match` is true when the two boxes
//! have the same width and height. When they differ, the restored crop is resampled to the
//! clean crop's size by nearest neighbour at cell centres (target column `x` reads source
//! column `floor((x + 0.5) * src_width / dst_width)`, rows likewise) so the remaining
//! metrics still mean something, but `exact` is false. This resampled pair is the
//! *compared grid* for pixel accuracy, PSNR, SSIM and edge F1; the palette error uses the
//! two crops as they are, since it does not depend on size.
//!
//! When exactly one of the boxes is empty, nothing can be aligned and the scores are the
//! worst values: `size_match` and `exact` false, `pixel_accuracy` 0, `psnr` 0 dB (the
//! floor for 8-bit data), `ssim` 0, `edge_f1` 0, and `palette_error` as defined below (the
//! empty side has an empty palette, so it is [`EMPTY_PALETTE_PENALTY`]). When both are
//! empty, the scores are those of a perfect match.
//!
//! # Metrics
//! - **Right pixel**: both transparent (their RGB and exact alpha are ignored), or both
//!   opaque and within tolerance on R, G and B, and on A too when
//!   `compare_alpha_levels` is set. By default alpha counts by class only: the restorers
//!   binarise alpha on purpose (crisp alpha is part of the product), so a translucent
//!   pixel of the clean sprite restored fully opaque in the right colour is right. `pixel_accuracy` = right pixels / pixels
//!   of the compared grid (1 for an empty grid). `exact` = `size_match` and every pixel
//!   right.
//! - **PSNR**: on premultiplied RGBA in 0-255 (`c * a / 255` for R, G, B; A as is), the mean
//!   squared error over all four channels of all pixels; `10 log10(255² / MSE)` dB, capped
//!   at [`PSNR_CAP`] (identical images, or differences too small to matter) so it stays
//!   finite in JSON and in means. Premultiplying means a fully transparent pixel's colour
//!   never matters, while a faint alpha haze (alpha below the threshold but not 0) still
//!   costs in proportion to what compositing would show.
//! - **SSIM**: Wang et al. 2004 on the same premultiplied RGBA values, with `K1 = 0.01`,
//!   `K2 = 0.03`, `L = 255` (so `C1 = (K1 L)²`, `C2 = (K2 L)²`) and a Gaussian window of
//!   sigma 1.5. The window is 11 taps per axis, shrunk on each axis to the image's extent
//!   when the image is smaller (so an 8x5 image gets an 8x5 window); the 1-D weights are
//!   `exp(-d² / (2 sigma²))` with `d` the distance from the window's centre, normalised to
//!   sum 1, and the 2-D window is their product. Local statistics are taken at every
//!   position where the window lies wholly inside the image ("valid" positions, as in the
//!   reference MATLAB code), and the SSIM map is averaged over the four channels and all
//!   positions. An empty grid gives 1.
//! - **Palette error**: each image's palette is the set of distinct RGB values of its
//!   opaque pixels, in OKLab. For each colour of A, the OKLab distance to the nearest colour
//!   of B, averaged over A's palette; the same from B to A; the result is the mean of the
//!   two means. Both palettes empty gives 0; exactly one empty gives
//!   [`EMPTY_PALETTE_PENALTY`] (1.0, the OKLab distance from black to white).
//! - **Edge F1**: an edge lies between two horizontally or vertically adjacent pixels when
//!   one is transparent and the other opaque, or both are opaque and their OKLab distance
//!   exceeds `edge_threshold` (default 0.05). With `TP` the edges present at the same place
//!   in both images, precision `P = TP / restored edges` and recall `R = TP / clean edges`;
//!   `F1 = 2PR / (P + R)` (computed as `2 TP / (restored edges + clean edges)`, which is
//!   equal). Neither image has an edge: 1. Only one has edges, or `TP = 0`: 0.

use image::{imageops, Rgba, RgbaImage};

use crate::colour::{srgb8_to_oklab, Oklab};

/// PSNR of identical images, in dB; also the ceiling for nearly identical ones.
pub const PSNR_CAP: f64 = 100.0;

/// Palette error when exactly one image has no opaque colour: the OKLab distance from
/// black to white, about the largest distance between two sRGB colours.
pub const EMPTY_PALETTE_PENALTY: f64 = 1.0;

/// SSIM constants from Wang et al. 2004.
const SSIM_K1: f64 = 0.01;
const SSIM_K2: f64 = 0.03;
const SSIM_DYNAMIC_RANGE: f64 = 255.0;
const SSIM_SIGMA: f64 = 1.5;
const SSIM_WINDOW_TAPS: u32 = 11;

/// Thresholds that decide when a pixel counts as right, opaque, or on an edge.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MetricOptions {
    /// Largest per-channel difference (8-bit) for a pixel to count as right.
    pub exact_tolerance: u8,
    /// Alpha at or above this is opaque, below it transparent.
    pub alpha_threshold: u8,
    /// OKLab distance above which two neighbouring opaque pixels form an edge.
    pub edge_threshold: f32,
    /// Whether two opaque pixels must also agree on alpha within the tolerance (for
    /// restorers that keep alpha levels); by default only the opacity class counts.
    pub compare_alpha_levels: bool,
}

impl Default for MetricOptions {
    fn default() -> Self {
        Self {
            exact_tolerance: 8,
            alpha_threshold: 128,
            edge_threshold: 0.05,
            compare_alpha_levels: false,
        }
    }
}

/// The scores of one restoration; see the module docs for the exact definitions.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Scores {
    /// The two content boxes have the same size.
    pub size_match: bool,
    /// `size_match` and every pixel right.
    pub exact: bool,
    /// Fraction of right pixels on the compared grid.
    pub pixel_accuracy: f64,
    /// PSNR in dB on premultiplied RGBA, at most [`PSNR_CAP`].
    pub psnr: f64,
    /// Mean SSIM on premultiplied RGBA.
    pub ssim: f64,
    /// Symmetric mean nearest-colour OKLab distance between the two palettes.
    pub palette_error: f64,
    /// F1 of the restored edges against the clean edges.
    pub edge_f1: f64,
}

impl Scores {
    /// The scores of a perfect match.
    const PERFECT: Scores = Scores {
        size_match: true,
        exact: true,
        pixel_accuracy: 1.0,
        psnr: PSNR_CAP,
        ssim: 1.0,
        palette_error: 0.0,
        edge_f1: 1.0,
    };
}

/// The part of an image that holds the art; see the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContentBox {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl ContentBox {
    /// The box of an image with no content.
    pub const EMPTY: ContentBox = ContentBox {
        x: 0,
        y: 0,
        width: 0,
        height: 0,
    };

    pub fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }
}

/// Scores `restored` against `clean`; see the module docs for every definition.
pub fn score(restored: &RgbaImage, clean: &RgbaImage, opts: &MetricOptions) -> Scores {
    let restored_box = content_box(restored, opts);
    let clean_box = content_box(clean, opts);
    let restored = crop(restored, restored_box);
    let clean = crop(clean, clean_box);
    let palette_error = palette_error(&restored, &clean, opts);
    if restored_box.is_empty() && clean_box.is_empty() {
        return Scores::PERFECT;
    }
    if restored_box.is_empty() || clean_box.is_empty() {
        return Scores {
            size_match: false,
            exact: false,
            pixel_accuracy: 0.0,
            psnr: 0.0,
            ssim: 0.0,
            palette_error,
            edge_f1: 0.0,
        };
    }

    let size_match = restored.dimensions() == clean.dimensions();
    let restored = if size_match {
        restored
    } else {
        resample_nearest(&restored, clean.width(), clean.height())
    };
    let right = count_right(&restored, &clean, opts);
    let total = restored.pixels().len();
    Scores {
        size_match,
        exact: size_match && right == total,
        pixel_accuracy: right as f64 / total as f64,
        psnr: psnr(&restored, &clean),
        ssim: ssim(&restored, &clean),
        palette_error,
        edge_f1: edge_f1(&restored, &clean, opts),
    }
}

/// The content box of `img`; see the module docs.
pub fn content_box(img: &RgbaImage, opts: &MetricOptions) -> ContentBox {
    let (width, height) = img.dimensions();
    if width == 0 || height == 0 {
        return ContentBox::EMPTY;
    }
    if img.pixels().any(|p| is_transparent(p, opts)) {
        return bounding_box(img, |p| !is_transparent(p, opts));
    }
    let corners = [
        (0, 0),
        (width - 1, 0),
        (0, height - 1),
        (width - 1, height - 1),
    ]
    .map(|(x, y)| *img.get_pixel(x, y));
    let corners_agree = (0..4).all(|c| {
        let values = corners.map(|p| p[c]);
        values.iter().max().unwrap() - values.iter().min().unwrap() <= opts.exact_tolerance
    });
    if corners_agree {
        let background = corners[0];
        bounding_box(img, |p| !within_tolerance(p, &background, opts))
    } else {
        ContentBox {
            x: 0,
            y: 0,
            width,
            height,
        }
    }
}

/// Whether two pixels count as the same: both transparent, or both opaque and within
/// tolerance on every channel.
pub fn pixel_is_right(a: &Rgba<u8>, b: &Rgba<u8>, opts: &MetricOptions) -> bool {
    match (is_transparent(a, opts), is_transparent(b, opts)) {
        (true, true) => true,
        (false, false) if opts.compare_alpha_levels => within_tolerance(a, b, opts),
        (false, false) => a.0[..3].iter().zip(&b.0[..3]).all(|(&x, &y)| x.abs_diff(y) <= opts.exact_tolerance),
        _ => false,
    }
}

/// Fraction of right pixels between two same-size images (1 when they have no pixels).
///
/// # Panics
/// If the sizes differ.
pub fn pixel_accuracy(a: &RgbaImage, b: &RgbaImage, opts: &MetricOptions) -> f64 {
    let right = count_right(a, b, opts);
    let total = a.pixels().len();
    if total == 0 {
        return 1.0;
    }
    right as f64 / total as f64
}

/// How many pixels of two same-size images are right.
fn count_right(a: &RgbaImage, b: &RgbaImage, opts: &MetricOptions) -> usize {
    assert_same_size(a, b);
    a.pixels()
        .zip(b.pixels())
        .filter(|(p, q)| pixel_is_right(p, q, opts))
        .count()
}

/// PSNR in dB of two same-size images on premultiplied RGBA, capped at [`PSNR_CAP`].
///
/// # Panics
/// If the sizes differ.
pub fn psnr(a: &RgbaImage, b: &RgbaImage) -> f64 {
    assert_same_size(a, b);
    let squared_error: f64 = a
        .pixels()
        .zip(b.pixels())
        .map(|(p, q)| {
            let (p, q) = (premultiplied(p), premultiplied(q));
            (0..4).map(|c| (p[c] - q[c]).powi(2)).sum::<f64>()
        })
        .sum();
    if squared_error == 0.0 {
        return PSNR_CAP;
    }
    let mse = squared_error / (4 * a.pixels().len()) as f64;
    (10.0 * (SSIM_DYNAMIC_RANGE * SSIM_DYNAMIC_RANGE / mse).log10()).min(PSNR_CAP)
}

/// Mean SSIM of two same-size images on premultiplied RGBA (1 when they have no pixels).
///
/// # Panics
/// If the sizes differ.
pub fn ssim(a: &RgbaImage, b: &RgbaImage) -> f64 {
    assert_same_size(a, b);
    let (width, height) = (a.width() as usize, a.height() as usize);
    if width == 0 || height == 0 {
        return 1.0;
    }
    let window_x = gaussian_window(a.width().min(SSIM_WINDOW_TAPS) as usize);
    let window_y = gaussian_window(a.height().min(SSIM_WINDOW_TAPS) as usize);
    let (out_width, out_height) = (width - window_x.len() + 1, height - window_y.len() + 1);
    let c1 = (SSIM_K1 * SSIM_DYNAMIC_RANGE).powi(2);
    let c2 = (SSIM_K2 * SSIM_DYNAMIC_RANGE).powi(2);
    let a: Vec<[f64; 4]> = a.pixels().map(premultiplied).collect();
    let b: Vec<[f64; 4]> = b.pixels().map(premultiplied).collect();

    let mut ssim_sum = 0.0;
    // Per channel, the five moment planes x, y, x², y², xy are filtered together:
    // horizontally into `rows` (out_width x height), then vertically per output position.
    let mut rows = vec![[0.0f64; 5]; out_width * height];
    for channel in 0..4 {
        for y in 0..height {
            for ox in 0..out_width {
                let mut acc = [0.0; 5];
                for (k, &weight) in window_x.iter().enumerate() {
                    let (va, vb) = (
                        a[y * width + ox + k][channel],
                        b[y * width + ox + k][channel],
                    );
                    for (m, v) in acc.iter_mut().zip([va, vb, va * va, vb * vb, va * vb]) {
                        *m += weight * v;
                    }
                }
                rows[y * out_width + ox] = acc;
            }
        }
        for oy in 0..out_height {
            for ox in 0..out_width {
                let mut acc = [0.0; 5];
                for (k, &weight) in window_y.iter().enumerate() {
                    for (m, v) in acc.iter_mut().zip(rows[(oy + k) * out_width + ox]) {
                        *m += weight * v;
                    }
                }
                let [mu_a, mu_b, mean_aa, mean_bb, mean_ab] = acc;
                let var_a = mean_aa - mu_a * mu_a;
                let var_b = mean_bb - mu_b * mu_b;
                let cov = mean_ab - mu_a * mu_b;
                ssim_sum += ((2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2))
                    / ((mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2));
            }
        }
    }
    ssim_sum / (4 * out_width * out_height) as f64
}

/// Symmetric mean nearest-colour OKLab distance between the opaque palettes of two images
/// of any sizes; see the module docs.
pub fn palette_error(a: &RgbaImage, b: &RgbaImage, opts: &MetricOptions) -> f64 {
    let (palette_a, palette_b) = (opaque_palette(a, opts), opaque_palette(b, opts));
    match (palette_a.is_empty(), palette_b.is_empty()) {
        (true, true) => 0.0,
        (true, false) | (false, true) => EMPTY_PALETTE_PENALTY,
        (false, false) => {
            0.5 * (mean_nearest_distance(&palette_a, &palette_b)
                + mean_nearest_distance(&palette_b, &palette_a))
        }
    }
}

/// F1 of the edges of `restored` against those of `clean` (same size); see the module docs.
///
/// # Panics
/// If the sizes differ.
pub fn edge_f1(restored: &RgbaImage, clean: &RgbaImage, opts: &MetricOptions) -> f64 {
    assert_same_size(restored, clean);
    let restored_edges = edge_map(restored, opts);
    let clean_edges = edge_map(clean, opts);
    let restored_count = restored_edges.iter().filter(|&&e| e).count();
    let clean_count = clean_edges.iter().filter(|&&e| e).count();
    let true_positives = restored_edges
        .iter()
        .zip(&clean_edges)
        .filter(|(&r, &c)| r && c)
        .count();
    if restored_count == 0 && clean_count == 0 {
        return 1.0;
    }
    2.0 * true_positives as f64 / (restored_count + clean_count) as f64
}

fn is_transparent(p: &Rgba<u8>, opts: &MetricOptions) -> bool {
    p[3] < opts.alpha_threshold
}

fn within_tolerance(a: &Rgba<u8>, b: &Rgba<u8>, opts: &MetricOptions) -> bool {
    a.0.iter()
        .zip(b.0)
        .all(|(&x, y)| x.abs_diff(y) <= opts.exact_tolerance)
}

/// The bounding box of the pixels for which `is_content` holds, which is what trimming
/// the margin rows and columns without content leaves.
fn bounding_box(img: &RgbaImage, is_content: impl Fn(&Rgba<u8>) -> bool) -> ContentBox {
    let mut bounds: Option<(u32, u32, u32, u32)> = None;
    for (x, y, p) in img.enumerate_pixels() {
        if is_content(p) {
            let (x0, y0, x1, y1) = bounds.unwrap_or((x, y, x, y));
            bounds = Some((x0.min(x), y0.min(y), x1.max(x), y1.max(y)));
        }
    }
    match bounds {
        Some((x0, y0, x1, y1)) => ContentBox {
            x: x0,
            y: y0,
            width: x1 - x0 + 1,
            height: y1 - y0 + 1,
        },
        None => ContentBox::EMPTY,
    }
}

fn crop(img: &RgbaImage, content: ContentBox) -> RgbaImage {
    imageops::crop_imm(img, content.x, content.y, content.width, content.height).to_image()
}

/// Nearest-neighbour resampling that reads each target cell's centre.
fn resample_nearest(img: &RgbaImage, width: u32, height: u32) -> RgbaImage {
    let source = |target: u32, target_len: u32, source_len: u32| {
        ((2 * u64::from(target) + 1) * u64::from(source_len) / (2 * u64::from(target_len))) as u32
    };
    RgbaImage::from_fn(width, height, |x, y| {
        *img.get_pixel(
            source(x, width, img.width()),
            source(y, height, img.height()),
        )
    })
}

fn assert_same_size(a: &RgbaImage, b: &RgbaImage) {
    assert_eq!(
        a.dimensions(),
        b.dimensions(),
        "metrics compare images of the same size"
    );
}

/// RGBA in 0-255 with the colour multiplied by alpha. Exact for alpha 0 and 255.
fn premultiplied(p: &Rgba<u8>) -> [f64; 4] {
    let alpha = f64::from(p[3]);
    [
        f64::from(p[0]) * alpha / 255.0,
        f64::from(p[1]) * alpha / 255.0,
        f64::from(p[2]) * alpha / 255.0,
        alpha,
    ]
}

/// A 1-D Gaussian of `taps` weights (sigma [`SSIM_SIGMA`]) centred on the window,
/// normalised to sum 1.
fn gaussian_window(taps: usize) -> Vec<f64> {
    let centre = (taps as f64 - 1.0) / 2.0;
    let weights: Vec<f64> = (0..taps)
        .map(|i| (-(i as f64 - centre).powi(2) / (2.0 * SSIM_SIGMA * SSIM_SIGMA)).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    weights.into_iter().map(|w| w / total).collect()
}

/// The distinct RGB values of the opaque pixels, in OKLab. Deduplicating before the
/// conversion keeps a 32x32 sprite to a handful of colours.
fn opaque_palette(img: &RgbaImage, opts: &MetricOptions) -> Vec<Oklab> {
    let mut packed: Vec<u32> = img
        .pixels()
        .filter(|p| !is_transparent(p, opts))
        .map(|p| u32::from_be_bytes([0, p[0], p[1], p[2]]))
        .collect();
    packed.sort_unstable();
    packed.dedup();
    packed
        .into_iter()
        .map(|c| {
            let [_, r, g, b] = c.to_be_bytes();
            srgb8_to_oklab([r, g, b])
        })
        .collect()
}

/// Mean over `from` of the distance to the nearest colour of `to` (both non-empty).
fn mean_nearest_distance(from: &[Oklab], to: &[Oklab]) -> f64 {
    let mut to_by_lightness = to.to_vec();
    to_by_lightness.sort_unstable_by(|p, q| p.l.total_cmp(&q.l));
    let total: f64 = from
        .iter()
        .map(|&c| f64::from(nearest_distance(c, &to_by_lightness)))
        .sum();
    total / from.len() as f64
}

/// Distance from `colour` to the nearest of `sorted_by_lightness`. Walks outwards from
/// `colour`'s lightness and stops each way once the lightness gap alone is no better than
/// the best found, which is exact (the gap bounds the distance) and keeps palettes of a
/// few thousand colours fast.
fn nearest_distance(colour: Oklab, sorted_by_lightness: &[Oklab]) -> f32 {
    let split = sorted_by_lightness.partition_point(|c| c.l < colour.l);
    let (below, above) = sorted_by_lightness.split_at(split);
    let mut best2 = f32::INFINITY;
    for candidate in above {
        let gap = candidate.l - colour.l;
        if gap * gap >= best2 {
            break;
        }
        best2 = best2.min(colour.dist2(*candidate));
    }
    for candidate in below.iter().rev() {
        let gap = colour.l - candidate.l;
        if gap * gap >= best2 {
            break;
        }
        best2 = best2.min(colour.dist2(*candidate));
    }
    best2.sqrt()
}

/// Whether each neighbouring pair is an edge: every horizontal pair row by row, then every
/// vertical pair row by row.
fn edge_map(img: &RgbaImage, opts: &MetricOptions) -> Vec<bool> {
    let (width, height) = (img.width() as usize, img.height() as usize);
    // None for a transparent pixel, its OKLab colour otherwise.
    let colours: Vec<Option<Oklab>> = img
        .pixels()
        .map(|p| (!is_transparent(p, opts)).then(|| srgb8_to_oklab([p[0], p[1], p[2]])))
        .collect();
    let is_edge = |i: usize, j: usize| match (colours[i], colours[j]) {
        (Some(a), Some(b)) => a.dist(b) > opts.edge_threshold,
        (None, None) => false,
        _ => true,
    };
    let horizontal = (0..height).flat_map(|y| {
        (0..width.saturating_sub(1)).map(move |x| (y * width + x, y * width + x + 1))
    });
    let vertical = (0..height.saturating_sub(1))
        .flat_map(|y| (0..width).map(move |x| (y * width + x, (y + 1) * width + x)));
    horizontal
        .chain(vertical)
        .map(|(i, j)| is_edge(i, j))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // The strict definition (alpha levels compared too); the default differs only in that.
    const OPTS: MetricOptions = MetricOptions {
        exact_tolerance: 8,
        alpha_threshold: 128,
        edge_threshold: 0.05,
        compare_alpha_levels: true,
    };

    #[test]
    fn by_default_opaque_alpha_counts_by_class_only() {
        // A sprite with one transparent corner (so the content box is the sprite itself).
        let sprite = |p: [u8; 4]| RgbaImage::from_fn(3, 3, |x, y| if x + y == 0 { Rgba(CLEAR) } else { Rgba(p) });
        let translucent = sprite([40, 90, 200, 150]);
        let binarised = sprite([40, 90, 200, 255]);
        assert!(score(&binarised, &translucent, &MetricOptions::default()).exact);
        assert!(!score(&binarised, &translucent, &OPTS).exact);
        let recoloured = sprite([60, 90, 200, 255]);
        assert!(!score(&recoloured, &translucent, &MetricOptions::default()).exact);
    }
    const CLEAR: [u8; 4] = [0, 0, 0, 0];
    const RED: [u8; 4] = [255, 0, 0, 255];
    const BLUE: [u8; 4] = [0, 0, 255, 255];
    const GREEN: [u8; 4] = [0, 255, 0, 255];

    fn image(width: u32, height: u32, pixels: &[[u8; 4]]) -> RgbaImage {
        assert_eq!(pixels.len(), (width * height) as usize);
        RgbaImage::from_fn(width, height, |x, y| Rgba(pixels[(y * width + x) as usize]))
    }

    /// `img` surrounded by margins of `fill` (left, top, right, bottom).
    fn pad(img: &RgbaImage, [left, top, right, bottom]: [u32; 4], fill: [u8; 4]) -> RgbaImage {
        let mut out = RgbaImage::from_pixel(
            img.width() + left + right,
            img.height() + top + bottom,
            Rgba(fill),
        );
        imageops::replace(&mut out, img, i64::from(left), i64::from(top));
        out
    }

    fn upscale(img: &RgbaImage, factor: u32) -> RgbaImage {
        RgbaImage::from_fn(img.width() * factor, img.height() * factor, |x, y| {
            *img.get_pixel(x / factor, y / factor)
        })
    }

    /// A sprite: a few shapes of a small random palette, on a transparent field, on
    /// a random background or edge to edge; alpha 0, 255 or anything per colour.
    fn any_image() -> impl Strategy<Value = RgbaImage> {
        let alpha = prop_oneof![Just(0u8), Just(255u8), any::<u8>()];
        let colour = (any::<[u8; 3]>(), alpha).prop_map(|([r, g, b], a)| [r, g, b, a]);
        (1u32..=9, 1u32..=9, prop::collection::vec(colour, 1..=4)).prop_flat_map(
            |(w, h, palette)| {
                prop::collection::vec(0..palette.len(), (w * h) as usize).prop_map(move |indices| {
                    RgbaImage::from_fn(w, h, |x, y| Rgba(palette[indices[(y * w + x) as usize]]))
                })
            },
        )
    }

    /// An opaque image whose corners are black and white, so its content box is all of it
    /// whatever single pixel is then changed a little.
    fn whole_box_image() -> impl Strategy<Value = RgbaImage> {
        (1u32..=9, 2u32..=9).prop_flat_map(|(w, h)| {
            prop::collection::vec(any::<[u8; 3]>(), (w * h) as usize).prop_map(move |rgb| {
                let mut img = RgbaImage::from_fn(w, h, |x, y| {
                    let [r, g, b] = rgb[(y * w + x) as usize];
                    Rgba([r, g, b, 255])
                });
                img.put_pixel(0, 0, Rgba([0, 0, 0, 255]));
                img.put_pixel(w - 1, h - 1, Rgba([255, 255, 255, 255]));
                img
            })
        })
    }

    /// `v` moved by `delta` in whichever direction stays in 0..=255 (needs delta <= 128).
    fn nudge(v: u8, delta: u8) -> u8 {
        v.checked_add(delta).unwrap_or_else(|| v - delta)
    }

    /// SSIM straight from the definition: a 2-D window summed directly at every valid
    /// position, to check the separable filtering and the window shrinking.
    fn ssim_reference(a: &RgbaImage, b: &RgbaImage) -> f64 {
        let (w, h) = (a.width() as usize, a.height() as usize);
        let (tw, th) = (w.min(11), h.min(11));
        let gauss = |n: usize| {
            let c = (n as f64 - 1.0) / 2.0;
            let g: Vec<f64> = (0..n)
                .map(|i| (-(i as f64 - c).powi(2) / 4.5).exp())
                .collect();
            let s: f64 = g.iter().sum();
            g.into_iter().map(|v| v / s).collect::<Vec<_>>()
        };
        let (gx, gy) = (gauss(tw), gauss(th));
        let (c1, c2) = (6.5025, 58.5225);
        let mut sum = 0.0;
        let mut count = 0;
        for ch in 0..4 {
            for oy in 0..=h - th {
                for ox in 0..=w - tw {
                    let (mut ma, mut mb, mut saa, mut sbb, mut sab) = (0.0, 0.0, 0.0, 0.0, 0.0);
                    for (j, wy) in gy.iter().enumerate() {
                        for (i, wx) in gx.iter().enumerate() {
                            let wt = wx * wy;
                            let pa =
                                premultiplied(a.get_pixel((ox + i) as u32, (oy + j) as u32))[ch];
                            let pb =
                                premultiplied(b.get_pixel((ox + i) as u32, (oy + j) as u32))[ch];
                            ma += wt * pa;
                            mb += wt * pb;
                            saa += wt * pa * pa;
                            sbb += wt * pb * pb;
                            sab += wt * pa * pb;
                        }
                    }
                    let (va, vb, cov) = (saa - ma * ma, sbb - mb * mb, sab - ma * mb);
                    sum += ((2.0 * ma * mb + c1) * (2.0 * cov + c2))
                        / ((ma * ma + mb * mb + c1) * (va + vb + c2));
                    count += 1;
                }
            }
        }
        sum / count as f64
    }

    #[test]
    fn defaults_and_partial_options_deserialise() {
        assert_eq!(MetricOptions::default(), MetricOptions { compare_alpha_levels: false, ..OPTS });
        let parsed: MetricOptions = serde_json::from_str(r#"{"exact_tolerance": 3}"#).unwrap();
        assert_eq!(
            parsed,
            MetricOptions {
                exact_tolerance: 3,
                ..MetricOptions::default()
            }
        );
    }

    #[test]
    fn content_box_trims_transparent_margins() {
        let sprite = image(2, 1, &[RED, BLUE]);
        let img = pad(&sprite, [3, 1, 2, 4], [9, 9, 9, 127]);
        assert_eq!(
            content_box(&img, &OPTS),
            ContentBox {
                x: 3,
                y: 1,
                width: 2,
                height: 1
            }
        );
    }

    #[test]
    fn content_box_trims_solid_background_within_tolerance() {
        let sprite = image(2, 2, &[RED, [100, 100, 100, 255], BLUE, GREEN]);
        let mut img = pad(&sprite, [1, 2, 3, 1], [100, 100, 100, 255]);
        // Background noise within tolerance is still background, corners included.
        img.put_pixel(0, 0, Rgba([104, 96, 100, 255]));
        img.put_pixel(5, 2, Rgba([108, 100, 92, 250]));
        assert_eq!(
            content_box(&img, &OPTS),
            ContentBox {
                x: 1,
                y: 2,
                width: 2,
                height: 2
            }
        );
    }

    #[test]
    fn content_box_is_whole_image_when_corners_disagree() {
        let img = image(3, 2, &[RED, RED, RED, RED, RED, [255, 0, 9, 255]]);
        assert_eq!(
            content_box(&img, &OPTS),
            ContentBox {
                x: 0,
                y: 0,
                width: 3,
                height: 2
            }
        );
    }

    #[test]
    fn content_box_of_an_image_without_content_is_empty() {
        let transparent = RgbaImage::from_pixel(4, 3, Rgba([7, 8, 9, 100]));
        let uniform = RgbaImage::from_pixel(4, 3, Rgba(RED));
        assert!(content_box(&transparent, &OPTS).is_empty());
        assert!(content_box(&uniform, &OPTS).is_empty());
        assert!(content_box(&RgbaImage::new(0, 5), &OPTS).is_empty());
    }

    #[test]
    fn empty_content_is_exact_only_against_empty_content() {
        let nothing = RgbaImage::new(4, 4);
        let also_nothing = RgbaImage::new(7, 2);
        let sprite = pad(&image(1, 1, &[RED]), [1, 1, 1, 1], CLEAR);
        assert_eq!(score(&nothing, &also_nothing, &OPTS), Scores::PERFECT);
        for (restored, clean) in [(&nothing, &sprite), (&sprite, &nothing)] {
            let s = score(restored, clean, &OPTS);
            assert!(!s.size_match && !s.exact);
            assert_eq!(
                (s.pixel_accuracy, s.psnr, s.ssim, s.edge_f1),
                (0.0, 0.0, 0.0, 0.0)
            );
            assert_eq!(s.palette_error, EMPTY_PALETTE_PENALTY);
        }
    }

    #[test]
    fn nearest_upscale_is_not_a_size_match_but_aligns() {
        let clean = pad(
            &image(2, 2, &[RED, BLUE, CLEAR, GREEN]),
            [1, 2, 1, 0],
            CLEAR,
        );
        let s = score(&upscale(&clean, 2), &clean, &OPTS);
        assert!(!s.size_match && !s.exact);
        // Cell-centre resampling of a 2x nearest upscale recovers the clean grid exactly.
        assert_eq!(s.pixel_accuracy, 1.0);
        assert_eq!(s.psnr, PSNR_CAP);
    }

    #[test]
    fn psnr_matches_hand_computed_value() {
        // 4x4 opaque, one red channel off by 10: MSE = 100 / (16 pixels * 4 channels),
        // PSNR = 10 log10(255² / 1.5625) = 46.19260334851798 dB (computed in Python).
        let clean =
            RgbaImage::from_fn(4, 4, |x, y| Rgba([(x * 40) as u8, (y * 40) as u8, 90, 255]));
        let mut restored = clean.clone();
        restored.get_pixel_mut(2, 1)[0] += 10;
        assert!((psnr(&restored, &clean) - 46.192_603_348_517_98).abs() < 1e-9);
        assert_eq!(psnr(&clean, &clean), PSNR_CAP);
    }

    #[test]
    fn psnr_and_ssim_ignore_colour_of_fully_transparent_pixels() {
        let a = image(2, 1, &[[10, 200, 30, 0], RED]);
        let b = image(2, 1, &[[250, 0, 130, 0], RED]);
        assert_eq!(psnr(&a, &b), PSNR_CAP);
        assert_eq!(ssim(&a, &b), 1.0);
    }

    #[test]
    fn ssim_of_constant_images_matches_hand_computed_value() {
        // Constant images have zero variance, so each channel's SSIM is
        // (2 a b + C1) / (a² + b² + C1) with C1 = (0.01 * 255)² = 6.5025: RGB 100 vs 110
        // gives 22006.5025 / 22106.5025, alpha gives 1; mean 0.9966073330686299 (Python).
        let a = RgbaImage::from_pixel(5, 3, Rgba([100, 100, 100, 255]));
        let b = RgbaImage::from_pixel(5, 3, Rgba([110, 110, 110, 255]));
        assert!((ssim(&a, &b) - 0.996_607_333_068_629_9).abs() < 1e-12);
    }

    #[test]
    fn ssim_is_below_one_for_different_images() {
        let checker = RgbaImage::from_fn(16, 16, |x, y| {
            Rgba(if (x + y) % 2 == 0 { RED } else { BLUE })
        });
        let flipped = RgbaImage::from_fn(16, 16, |x, y| {
            Rgba(if (x + y) % 2 == 1 { RED } else { BLUE })
        });
        let value = ssim(&checker, &flipped);
        assert!(value < 0.5, "{value}");
        assert!((ssim(&checker, &checker) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn palette_error_matches_hand_computed_oklab_distance() {
        // A = {red}, B = {red, blue}: A->B mean 0, B->A mean d/2, result d/4, with
        // d = |OKLab(red) - OKLab(blue)| = 0.5370892232739362 from Ottosson's reference
        // values (Python); tolerance 1e-4 for the 6-digit references and f32 arithmetic.
        let a = image(2, 1, &[RED, [1, 2, 3, 0]]);
        let b = image(3, 1, &[RED, BLUE, BLUE]);
        let expected = 0.537_089_223_273_936_2 / 4.0;
        assert!((palette_error(&a, &b, &OPTS) - expected).abs() < 1e-4);
        assert!((palette_error(&b, &a, &OPTS) - expected).abs() < 1e-4);
    }

    #[test]
    fn palette_error_of_empty_palettes() {
        let transparent = RgbaImage::from_pixel(2, 2, Rgba([5, 5, 5, 10]));
        let red = image(1, 1, &[RED]);
        assert_eq!(palette_error(&transparent, &transparent, &OPTS), 0.0);
        assert_eq!(
            palette_error(&transparent, &red, &OPTS),
            EMPTY_PALETTE_PENALTY
        );
        assert_eq!(
            palette_error(&red, &transparent, &OPTS),
            EMPTY_PALETTE_PENALTY
        );
    }

    #[test]
    fn edge_f1_matches_hand_counted_precision_and_recall() {
        // Clean [[R, R], [_, R]]: edges at the bottom horizontal pair and the left vertical.
        // Restored [[R, B], [_, _]]: top horizontal, left vertical, right vertical.
        // TP = 1 (left vertical), P = 1/3, R = 1/2, F1 = 2PR / (P + R) = 0.4.
        let clean = image(2, 2, &[RED, RED, CLEAR, RED]);
        let restored = image(2, 2, &[RED, BLUE, CLEAR, CLEAR]);
        let (p, r) = (1.0 / 3.0, 1.0 / 2.0);
        assert!((edge_f1(&restored, &clean, &OPTS) - 2.0 * p * r / (p + r)).abs() < 1e-12);
        assert!((edge_f1(&restored, &clean, &OPTS) - 0.4).abs() < 1e-12);
    }

    #[test]
    fn edge_f1_without_edges() {
        let flat = RgbaImage::from_pixel(3, 3, Rgba(RED));
        // 2/255 on one channel is far below the 0.05 OKLab edge threshold.
        let near_flat = RgbaImage::from_fn(3, 3, |x, _| Rgba([255 - 2 * x as u8, 0, 0, 255]));
        let edged = RgbaImage::from_fn(3, 3, |x, _| Rgba(if x == 0 { RED } else { BLUE }));
        assert_eq!(edge_f1(&flat, &near_flat, &OPTS), 1.0);
        assert_eq!(edge_f1(&flat, &edged, &OPTS), 0.0);
        assert_eq!(edge_f1(&edged, &flat, &OPTS), 0.0);
    }

    #[test]
    fn edge_threshold_decides_between_opaque_colours() {
        let (dark, light) = ([90, 90, 90, 255], [120, 120, 120, 255]);
        let delta_e = srgb8_to_oklab([90; 3]).dist(srgb8_to_oklab([120; 3]));
        assert!(delta_e > 0.05 && delta_e < 0.2, "{delta_e}");
        let pair = image(2, 1, &[dark, light]);
        let flat = image(2, 1, &[dark, dark]);
        assert_eq!(edge_f1(&pair, &flat, &OPTS), 0.0);
        assert_eq!(
            edge_f1(
                &pair,
                &flat,
                &MetricOptions {
                    edge_threshold: 0.2,
                    ..OPTS
                }
            ),
            1.0
        );
    }

    #[test]
    fn resampling_reads_cell_centres() {
        // 5 columns to 2: centres at 1.25 and 3.75 source columns, so columns 1 and 3
        // (reading cell corners would give 0 and 2).
        let columns = RgbaImage::from_fn(5, 1, |x, _| Rgba([x as u8, 0, 0, 255]));
        let resampled = resample_nearest(&columns, 2, 1);
        assert_eq!(resampled.pixels().map(|p| p[0]).collect::<Vec<_>>(), [1, 3]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn identity_is_perfect(img in any_image()) {
            let s = score(&img, &img, &OPTS);
            prop_assert!(s.size_match && s.exact);
            prop_assert_eq!(s.pixel_accuracy, 1.0);
            prop_assert_eq!(s.psnr, PSNR_CAP);
            prop_assert!((s.ssim - 1.0).abs() < 1e-9, "ssim {}", s.ssim);
            prop_assert_eq!(s.palette_error, 0.0);
            prop_assert_eq!(s.edge_f1, 1.0);
        }

        #[test]
        fn transparent_margins_change_nothing(
            mut restored in any_image(),
            mut clean in any_image(),
            margins in any::<[u32; 4]>().prop_map(|m| m.map(|v| v % 4)),
            fill_rgb in any::<[u8; 3]>(),
            fill_alpha in 0u8..128,
            hole in any::<prop::sample::Index>(),
        ) {
            // The transparent-margin rule applies to images with some transparency.
            for img in [&mut restored, &mut clean] {
                let (w, h) = img.dimensions();
                let i = hole.index((w * h) as usize) as u32;
                img.get_pixel_mut(i % w, i / w)[3] = 0;
            }
            let [r, g, b] = fill_rgb;
            let fill = [r, g, b, fill_alpha];
            let expected = score(&restored, &clean, &OPTS);
            prop_assert_eq!(score(&pad(&restored, margins, fill), &clean, &OPTS), expected);
            prop_assert_eq!(score(&restored, &pad(&clean, margins, fill), &OPTS), expected);
        }

        #[test]
        fn background_margins_change_nothing(
            mut restored in any_image(),
            mut clean in any_image(),
            margins in any::<[u32; 4]>().prop_map(|m| m.map(|v| v % 4)),
            background in any::<[u8; 3]>(),
        ) {
            // The background rule applies to opaque images whose corners are the background.
            let [r, g, b] = background;
            let background = [r, g, b, 255];
            for img in [&mut restored, &mut clean] {
                let (w, h) = img.dimensions();
                img.pixels_mut().for_each(|p| p[3] = 255);
                for (x, y) in [(0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1)] {
                    img.put_pixel(x, y, Rgba(background));
                }
            }
            let expected = score(&restored, &clean, &OPTS);
            prop_assert_eq!(score(&pad(&restored, margins, background), &clean, &OPTS), expected);
            prop_assert_eq!(score(&restored, &pad(&clean, margins, background), &OPTS), expected);
        }

        #[test]
        fn one_pixel_beyond_tolerance_is_not_exact(
            clean in whole_box_image(),
            at in any::<prop::sample::Index>(),
            channel in 0usize..3,
            delta in 9u8..=128,
        ) {
            let n = clean.pixels().len();
            let i = at.index(n) as u32;
            let mut restored = clean.clone();
            let p = restored.get_pixel_mut(i % clean.width(), i / clean.width());
            p[channel] = nudge(p[channel], delta);
            let s = score(&restored, &clean, &OPTS);
            prop_assert!(s.size_match && !s.exact);
            prop_assert!((s.pixel_accuracy - (1.0 - 1.0 / n as f64)).abs() < 1e-12);
            prop_assert!(s.psnr < PSNR_CAP);
        }

        #[test]
        fn changes_within_tolerance_stay_exact(
            clean in whole_box_image(),
            at in any::<prop::sample::Index>(),
            deltas in any::<[u8; 4]>().prop_map(|d| d.map(|v| v % 9)),
        ) {
            let i = at.index(clean.pixels().len()) as u32;
            let mut restored = clean.clone();
            let p = restored.get_pixel_mut(i % clean.width(), i / clean.width());
            for (value, delta) in p.0.iter_mut().zip(deltas) {
                *value = nudge(*value, delta);
            }
            let s = score(&restored, &clean, &OPTS);
            prop_assert!(s.size_match && s.exact);
            prop_assert_eq!(s.pixel_accuracy, 1.0);
        }

        #[test]
        fn colour_of_a_transparent_pixel_changes_nothing(
            mut img in any_image(),
            other in any_image(),
            at in any::<prop::sample::Index>(),
            new_rgb in any::<[u8; 3]>(),
            faint_alpha in 1u8..128,
        ) {
            let (w, h) = img.dimensions();
            let i = at.index((w * h) as usize) as u32;
            let (x, y) = (i % w, i / w);
            img.get_pixel_mut(x, y)[3] = 0;
            let mut recoloured = img.clone();
            let [r, g, b] = new_rgb;
            recoloured.put_pixel(x, y, Rgba([r, g, b, 0]));
            // Alpha 0: nothing at all changes, PSNR and SSIM included.
            prop_assert!(score(&recoloured, &img, &OPTS).exact);
            prop_assert_eq!(score(&recoloured, &other, &OPTS), score(&img, &other, &OPTS));
            prop_assert_eq!(score(&other, &recoloured, &OPTS), score(&other, &img, &OPTS));
            // Faint alpha below the threshold: still transparent for every class-based
            // score (PSNR and SSIM see the haze by design).
            recoloured.put_pixel(x, y, Rgba([r, g, b, faint_alpha]));
            prop_assert!(score(&recoloured, &img, &OPTS).exact);
            for (changed, original) in [
                (score(&recoloured, &other, &OPTS), score(&img, &other, &OPTS)),
                (score(&other, &recoloured, &OPTS), score(&other, &img, &OPTS)),
            ] {
                prop_assert_eq!(
                    (changed.size_match, changed.exact, changed.pixel_accuracy, changed.palette_error, changed.edge_f1),
                    (original.size_match, original.exact, original.pixel_accuracy, original.palette_error, original.edge_f1)
                );
            }
        }

        #[test]
        fn ssim_is_symmetric_and_matches_direct_definition(
            (a, b) in (1u32..=14, 1u32..=14).prop_flat_map(|(w, h)| {
                let pixels = prop::collection::vec(any::<[u8; 4]>(), (w * h) as usize);
                (pixels.clone(), pixels).prop_map(move |(p, q)| (image(w, h, &p), image(w, h, &q)))
            }),
        ) {
            let forward = ssim(&a, &b);
            prop_assert!((forward - ssim(&b, &a)).abs() < 1e-12);
            prop_assert!(forward <= 1.0 + 1e-12);
            prop_assert!((forward - ssim_reference(&a, &b)).abs() < 1e-9);
        }

        #[test]
        fn pruned_nearest_colour_search_equals_brute_force(
            from in prop::collection::vec(any::<[u8; 3]>(), 1..40),
            to in prop::collection::vec(any::<[u8; 3]>(), 1..40),
        ) {
            let mut to: Vec<Oklab> = to.into_iter().map(srgb8_to_oklab).collect();
            to.sort_unstable_by(|p, q| p.l.total_cmp(&q.l));
            for c in from.into_iter().map(srgb8_to_oklab) {
                let brute = to.iter().map(|t| c.dist2(*t)).fold(f32::INFINITY, f32::min).sqrt();
                prop_assert_eq!(nearest_distance(c, &to), brute);
            }
        }
    }
}

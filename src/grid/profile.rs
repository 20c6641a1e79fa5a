//! Edge profiles: how much the image changes across each possible grid line.
//!
//! `profile_x[x]` is the summed colour change between pixel column `x - 1` and column `x`
//! (so index `x` is the screen coordinate of a vertical boundary), over all rows; likewise
//! `profile_y` for horizontal boundaries. The change of one pixel pair is the L1 distance of
//! premultiplied RGBA (8-bit units), so transparent pixels' colours never count, minus a
//! noise floor (the median change over the image, which in pixel art is a change inside a
//! cell), clamped at zero: noise then adds almost nothing while real cell edges stand out.

use image::RgbaImage;

/// The two edge profiles of an image.
#[derive(Clone, Debug, PartialEq)]
pub struct EdgeProfiles {
    /// Length `width + 1`; entries 0 and `width` (the image borders) are 0.
    pub x: Vec<f32>,
    /// Length `height + 1`; entries 0 and `height` are 0.
    pub y: Vec<f32>,
}

/// Premultiplied RGBA of every pixel, as f32 in 0-255.
fn premultiplied(img: &RgbaImage) -> Vec<[f32; 4]> {
    img.pixels()
        .map(|p| {
            let a = f32::from(p[3]) / 255.0;
            [f32::from(p[0]) * a, f32::from(p[1]) * a, f32::from(p[2]) * a, f32::from(p[3])]
        })
        .collect()
}

fn l1(a: [f32; 4], b: [f32; 4]) -> f32 {
    (a[0] - b[0]).abs() + (a[1] - b[1]).abs() + (a[2] - b[2]).abs() + (a[3] - b[3]).abs()
}

/// Computes both edge profiles.
pub fn edge_profiles(img: &RgbaImage) -> EdgeProfiles {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let px = premultiplied(img);
    // Horizontal neighbour changes (for vertical boundaries) and vertical ones.
    let mut dx = Vec::with_capacity(h * w.saturating_sub(1));
    let mut dy = Vec::with_capacity(w * h.saturating_sub(1));
    for y in 0..h {
        let row = &px[y * w..(y + 1) * w];
        dx.extend(row.windows(2).map(|p| l1(p[0], p[1])));
        if y + 1 < h {
            let next = &px[(y + 1) * w..(y + 2) * w];
            dy.extend(row.iter().zip(next).map(|(&a, &b)| l1(a, b)));
        }
    }
    let floor = noise_floor(&dx, &dy);
    let mut x = vec![0.0f32; w + 1];
    for row in dx.chunks(w.saturating_sub(1).max(1)) {
        for (i, &d) in row.iter().enumerate() {
            x[i + 1] += (d - floor).max(0.0);
        }
    }
    let mut y = vec![0.0f32; h + 1];
    for (r, row) in dy.chunks(w.max(1)).enumerate() {
        y[r + 1] = row.iter().map(|&d| (d - floor).max(0.0)).sum();
    }
    if w >= 1 {
        x[w] = 0.0;
    }
    EdgeProfiles { x, y }
}

/// Median of all neighbour changes: the typical change inside a cell.
fn noise_floor(dx: &[f32], dy: &[f32]) -> f32 {
    let mut all: Vec<f32> = dx.iter().chain(dy).copied().collect();
    if all.is_empty() {
        return 0.0;
    }
    let mid = all.len() / 2;
    let (_, m, _) = all.select_nth_unstable_by(mid, f32::total_cmp);
    *m
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgba;

    #[test]
    fn profile_peaks_exactly_at_cell_boundaries_of_a_nearest_upscale() {
        // 4 art columns x 3 rows at 3x: boundaries at 3, 6, 9.
        let art = [[10u8, 200, 10, 200], [200, 10, 200, 10], [10, 10, 200, 200]];
        let img = RgbaImage::from_fn(12, 9, |x, y| {
            let v = art[(y / 3) as usize][(x / 3) as usize];
            Rgba([v, v, v, 255])
        });
        let p = edge_profiles(&img);
        assert_eq!(p.x.len(), 13);
        for (x, &v) in p.x.iter().enumerate() {
            assert_eq!(v > 0.0, x == 3 || x == 6 || x == 9, "x = {x}: {v}");
        }
        for (y, &v) in p.y.iter().enumerate() {
            assert_eq!(v > 0.0, y == 3 || y == 6, "y = {y}: {v}");
        }
    }

    #[test]
    fn transparent_colour_changes_do_not_count() {
        let img = RgbaImage::from_fn(6, 2, |x, _| if x < 3 { Rgba([255, 0, 0, 0]) } else { Rgba([0, 255, 0, 0]) });
        assert!(edge_profiles(&img).x.iter().all(|&v| v == 0.0));
    }
}

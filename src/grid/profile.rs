//! Edge profiles: how often the image has an edge across each possible grid line.
//!
//! `x[i]` counts the rows in which the colour change between pixel columns `i - 1` and
//! `i` is a local maximum along the row and stands clearly above the noise; `y[i]` counts
//! the same for columns across horizontal boundaries. Each such edge counts with a weight
//! `min(1, change / full)`, `full` being the 75th percentile of all edge changes: typical
//! and strong edges count one, while the faint maxima of JPEG ringing and block borders
//! beside them count little. Index `i` is the screen coordinate
//! of the boundary. The change of one pixel pair is the L1 distance of premultiplied
//! RGBA in 8-bit units, so transparent pixels' colours never count.
//!
//! Counting edges instead of summing their magnitudes is what makes the profile robust:
//! a blurred edge still peaks on its cell boundary, noise rarely clears the threshold,
//! and a few very strong edges (a sprite's silhouette against transparency) weigh no more
//! than the many faint edges between similar colours that carry the grid.

use image::RgbaImage;

/// The two edge profiles of an image.
#[derive(Clone, Debug, PartialEq)]
pub struct EdgeProfiles {
    /// Length `width + 1`; entries 0 and `width` (the image borders) are 0.
    pub x: Vec<f32>,
    /// Length `height + 1`; entries 0 and `height` are 0.
    pub y: Vec<f32>,
}

/// Smallest change (L1 over premultiplied RGBA, 0-255 units) that can count as an edge.
const MIN_EDGE: f32 = 8.0;
/// An edge must exceed this many times the typical change between neighbours.
const NOISE_FACTOR: f32 = 3.0;

/// Premultiplied RGBA of one row of pixels, as f32 in 0-255, one plane per channel (so
/// that the changes between pixels vectorise across the row), into `out`.
fn premultiplied_row(img: &RgbaImage, y: u32, out: &mut [Vec<f32>; 4]) {
    let w = img.width() as usize;
    let bytes = &img.as_raw()[y as usize * w * 4..(y as usize + 1) * w * 4];
    for plane in out.iter_mut() {
        plane.resize(w, 0.0);
    }
    let [r, g, b, alpha] = out;
    for ((((p, r), g), b), alpha) in bytes.chunks_exact(4).zip(r.iter_mut()).zip(g.iter_mut()).zip(b.iter_mut()).zip(alpha.iter_mut()) {
        let a = f32::from(p[3]) / 255.0;
        (*r, *g, *b, *alpha) = (f32::from(p[0]) * a, f32::from(p[1]) * a, f32::from(p[2]) * a, f32::from(p[3]));
    }
}

/// `out[i]`: the L1 distance of pixels `from[..][i]` and `to[..][i]` (planar RGBA), summed
/// over the channels in order, one channel per pass.
fn l1_changes(out: &mut [f32], from: [&[f32]; 4], to: [&[f32]; 4]) {
    for (c, (from, to)) in from.into_iter().zip(to).enumerate() {
        let (from, to) = (&from[..out.len()], &to[..out.len()]);
        if c == 0 {
            out.iter_mut().zip(from.iter().zip(to)).for_each(|(o, (a, b))| *o = (a - b).abs());
        } else {
            out.iter_mut().zip(from.iter().zip(to)).for_each(|(o, (a, b))| *o += (a - b).abs());
        }
    }
}

/// Computes both edge profiles.
pub fn edge_profiles(img: &RgbaImage) -> EdgeProfiles {
    let (w, h) = (img.width() as usize, img.height() as usize);
    // dx[y * w + x]: change between (x - 1, y) and (x, y), for x in 1..w (index 0 unused).
    let mut dx = vec![0.0f32; w * h];
    let mut dy = vec![0.0f32; w * h]; // dy[y * w + x]: change between (x, y - 1) and (x, y)
    let planes = || std::array::from_fn::<Vec<f32>, 4, _>(|_| Vec::with_capacity(w));
    let (mut above, mut row) = (planes(), planes());
    for y in 0..h {
        premultiplied_row(img, y as u32, &mut row);
        if w > 1 {
            l1_changes(&mut dx[y * w + 1..(y + 1) * w], std::array::from_fn(|c| &row[c][..w - 1]), std::array::from_fn(|c| &row[c][1..]));
        }
        if y > 0 {
            l1_changes(&mut dy[y * w..(y + 1) * w], std::array::from_fn(|c| &above[c][..]), std::array::from_fn(|c| &row[c][..]));
        }
        std::mem::swap(&mut above, &mut row);
    }
    let threshold = (NOISE_FACTOR * typical_change(&dx, &dy, w, h)).max(MIN_EDGE);
    // Edges as (axis, boundary index, change): local maxima above the threshold, along
    // each row for vertical boundaries, along each column for horizontal ones (found row
    // by row, comparing each change with those above and below it).
    // A change past the last one is compared with itself, which it always equals.
    let mut edges: Vec<(bool, u32, f32)> = Vec::new();
    for y in 0..h {
        let v = &dx[y * w..(y + 1) * w];
        let is_edge = |i: usize| {
            let c = v[i];
            (c > threshold) & (c > v[i - 1]) & (c >= v[(i + 1).min(w - 1)])
        };
        for_each_hit(1..w, is_edge, |i| edges.push((true, i as u32, v[i])));
    }
    for y in 1..h {
        let (above, here) = (&dy[(y - 1) * w..y * w], &dy[y * w..(y + 1) * w]);
        let below = dy.get((y + 1) * w..(y + 2) * w).unwrap_or(here);
        let is_edge = |x: usize| {
            let c = here[x];
            (c > threshold) & (c > above[x]) & (c >= below[x])
        };
        for_each_hit(0..w, is_edge, |x| edges.push((false, y as u32, here[x])));
    }
    let full = full_weight_change(&edges).max(threshold);
    let mut x_profile = vec![0.0f32; w + 1];
    let mut y_profile = vec![0.0f32; h + 1];
    for (is_x, i, change) in edges {
        let weight = (change / full).min(1.0);
        if is_x {
            x_profile[i as usize] += weight;
        } else {
            y_profile[i as usize] += weight;
        }
    }
    EdgeProfiles { x: x_profile, y: y_profile }
}

/// Calls `found(i)` for every `i` of `range` where `hit(i)`, in order. The hits are
/// gathered 64 at a time as a bit mask: edges are too frequent for a branch per index to
/// be predicted.
fn for_each_hit(range: std::ops::Range<usize>, hit: impl Fn(usize) -> bool, mut found: impl FnMut(usize)) {
    for start in range.clone().step_by(64) {
        let end = (start + 64).min(range.end);
        let mut mask = 0u64;
        for i in start..end {
            mask |= u64::from(hit(i)) << (i - start);
        }
        while mask != 0 {
            found(start + mask.trailing_zeros() as usize);
            mask &= mask - 1;
        }
    }
}

/// The 75th percentile of the edges' changes (never negative, so their bits order as
/// they do).
fn full_weight_change(edges: &[(bool, u32, f32)]) -> f32 {
    if edges.is_empty() {
        return 0.0;
    }
    let mut changes: Vec<u32> = edges.iter().map(|e| e.2.to_bits()).collect();
    let k = changes.len() * 3 / 4;
    f32::from_bits(*changes.select_nth_unstable(k).1)
}

/// The median change between neighbours: in pixel art most neighbours share a cell, so
/// this is the noise level inside cells.
fn typical_change(dx: &[f32], dy: &[f32], w: usize, h: usize) -> f32 {
    // Changes are L1 distances, never negative, so their bits order as they do.
    let mut all: Vec<u32> = Vec::with_capacity(2 * w * h);
    for y in 0..h {
        all.extend(dx[y * w + 1..(y + 1) * w].iter().map(|v| v.to_bits()));
        if y > 0 {
            all.extend(dy[y * w..(y + 1) * w].iter().map(|v| v.to_bits()));
        }
    }
    if all.is_empty() {
        return 0.0;
    }
    let mid = all.len() / 2;
    f32::from_bits(*all.select_nth_unstable(mid).1)
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
    fn typical_edges_count_one_and_faint_ones_little() {
        // Columns 3, 6 and 9 are typical edges in every row, column 12 a faint one.
        let img = RgbaImage::from_fn(15, 6, |x, _| {
            let v = [0u8, 120, 240, 120, 132][(x / 3) as usize];
            Rgba([v, v, v, 255])
        });
        let p = edge_profiles(&img);
        for x in [3, 6, 9] {
            assert_eq!(p.x[x], 6.0, "{:?}", p.x);
        }
        assert!(p.x[12] > 0.0 && p.x[12] < 1.0, "{:?}", p.x);
    }

    #[test]
    fn transparent_colour_changes_do_not_count() {
        let img = RgbaImage::from_fn(6, 2, |x, _| if x < 3 { Rgba([255, 0, 0, 0]) } else { Rgba([0, 255, 0, 0]) });
        assert!(edge_profiles(&img).x.iter().all(|&v| v == 0.0));
    }
}

//! Palettes: reading palette files, choosing a palette for a set of colours, and snapping
//! colours to a palette.
//!
//! The snap restorer reduces each grid cell of a degraded image to one OKLab colour, then
//! calls [`auto_palette`] (or [`snap_to_palette`] with a user's palette) to give every cell
//! one colour of a small clean palette. All distances are Euclidean in OKLab (see
//! [`crate::colour`]): 1.0 is black to white, a just-noticeable difference is about 0.02.
//!
//! # Palette files ([`Palette::from_file`])
//!
//! | format | recognised by | content |
//! |---|---|---|
//! | Lospec `.hex` | extension `.hex`, or any other text file | one `RRGGBB` or `#RRGGBB` per line, hex digits in either case; blank lines and comments (`;`, `//`, or `#` followed by a space or nothing) are skipped; a comment may follow the colour on its line |
//! | GIMP `.gpl` | first line `GIMP Palette`, or extension `.gpl` | header fields (`Name: ...`, `Columns: ...`), `#` comments, blank lines, then `R G B [name]` lines, decimal 0-255 |
//! | JASC `.pal` | first line `JASC-PAL`, or extension `.pal` | `JASC-PAL`, `0100`, the colour count, then that many `R G B` lines, decimal 0-255; blank lines are skipped |
//! | image | extension `.png`, `.gif`, `.bmp`, `.webp`, `.jpg`/`.jpeg`, or any file that is not UTF-8 text | the distinct pixels with alpha >= 128, in order of first appearance (row by row); at most [`MAX_IMAGE_PALETTE_COLOURS`] |
//!
//! A colour listed twice keeps its first position only, so a palette never holds duplicates
//! and snapping a palette's own colours returns their indices. A file with no colours is an
//! error. Every error names the file, and for text formats the line, and says what was
//! expected.
//!
//! # Choosing a palette ([`auto_palette`])
//!
//! Input: one OKLab colour per cell with a weight (pixel count or confidence). Each true
//! palette colour shows up as a cloud of cell colours (drift, noise, JPEG; spread ~0.01-0.03),
//! soft edges add a few in-between colours, and small accents (a one-cell eye highlight) are
//! real colours that must survive. The steps:
//!
//! 1. **Seeds.** Samples are pooled in a grid of cubes with edge `merge_distance / 2`
//!    (diagonal 0.87 x `merge_distance`, so a cube only pools colours that would merge
//!    anyway; exact duplicates always share a cube). The edge doubles while there are more
//!    than 4,096 cubes, which bounds the work for very spread-out input.
//! 2. **Leaders.** Seeds, heaviest first, join the nearest leader within `merge_distance`
//!    or become a leader themselves (a leader stays where its first seed was). A cheap
//!    first reduction: each noise cloud becomes a few leaders.
//! 3. **Merging.** Agglomerative, closest pair first, with centroid linkage (distance
//!    between weighted means) and a noise-absorbing reach. A pair scores
//!    `distance / merge_distance`, except that a fragment at most half as heavy as its
//!    partner, lying within the partner's *absorbing reach*, scores
//!    `distance / reach`; the reach is 3.5 x the partner's RMS spread, clamped to
//!    [`merge_distance`, 2 x `merge_distance`]. Pairs merge while they score below 1.
//!    So near-duplicates merge, and the tail of a noise cloud (single samples 0.05-0.08
//!    from the centre at a noise sigma of 0.015) joins its cloud, while an accent farther
//!    than 2 x `merge_distance` from everything is always kept, however light: weight alone
//!    never merges anything.
//! 4. **Refinement.** At most 2 weighted Lloyd (k-means) passes over the seeds, then step 3
//!    again with the refined clusters' true spreads, then Lloyd again if that merged.
//! 5. **Result.** Each cluster's colour is its weighted mean, rounded to sRGB8 with
//!    [`oklab_to_srgb8`]; clusters that round to the same sRGB8 are one. The palette is
//!    ordered by cluster weight, heaviest first (ties by colour). Each sample is assigned
//!    the nearest palette colour in OKLab, exactly as [`snap_to_palette`] would (searched
//!    once per seed where the triangle inequality makes the answer certain for all of its
//!    samples). Colours no sample is nearest to are dropped.
//!
//! With `max_colours = Some(N)` (`--colors N`) the samples are first grouped by the sRGB8
//! colour they round to, giving D distinct colours. If D <= N the palette is exactly those
//! colours. Otherwise the groups are pooled as in step 1 (cubes halving while fewer than N),
//! leaders gather within a radius that halves until there are at least N, and step 3 goes on
//! merging past the threshold, by the same score, until N clusters remain: noise fragments
//! merge first, then colours in order of distance, so a far accent outlives closer pairs of
//! big colours. Step 4's Lloyd may empty a cluster and two clusters may round alike; then
//! the sample colours farthest from the palette are added back, so the palette has exactly
//! `min(N, D)` colours (some possibly unused). `merge_distance` then only orders the merges.
//!
//! Defaults ([`AutoPaletteOptions::default`]): `merge_distance` = [`DEFAULT_MERGE_DISTANCE`]
//! = 0.04 OKLab (about two just-noticeable differences: noise and JPEG shifts of a colour
//! stay below it, while pixel-art ramps step by 0.05 or more), `max_colours` = `None`.
//!
//! Weights: non-finite or negative weights count as 0; every sample also weighs at least
//! 1e-6, so a zero-weight sample still has a colour and may still be an accent. Weights
//! decide where a cluster's colour lies and which cluster is a fragment of which; distance
//! alone decides whether a far colour is kept. Non-finite sample components are read as 0.
//!
//! Limits: a soft-edge in-between colour farther than 2 x `merge_distance` from every real
//! colour cannot be told from an accent by colour alone and is kept. Everything is
//! deterministic (no randomness; ties go to the lower index).
//!
//! Speed, one core, release, pixel-art-like cells (16 noisy colours, 5% soft-edge mixes,
//! 0.5% accents; the `timing` test), on a busy 2-core machine: 4,000 samples 0.75-1.3 ms,
//! 10,000 samples 1.7-2.5 ms (4.6 ms from 64 true colours); with `--colors 16` 1.2-1.8 ms
//! and 2.3-5 ms (the sRGB8 grouping costs extra). Lloyd and snapping cost seeds x colours,
//! so settings that yield thousands of colours (a merge distance below ~0.01) take tens of
//! milliseconds.

mod cluster;
mod parse;

pub use cluster::{auto_palette, AutoPaletteOptions, DEFAULT_MERGE_DISTANCE};
pub use parse::{PaletteError, PaletteFormat, MAX_IMAGE_PALETTE_COLOURS};

use crate::colour::{oklab_to_srgb8, srgb8_to_oklab, Oklab};

/// A palette of sRGB8 colours, without duplicates when it comes from [`Palette::from_file`]
/// or [`auto_palette`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Palette {
    pub colours: Vec<[u8; 3]>,
}

impl Palette {
    /// The palette's colours in OKLab, in the same order. Convert once when snapping many
    /// colours: [`Palette::nearest`] converts on every call.
    pub fn oklab(&self) -> Vec<Oklab> {
        self.colours.iter().map(|&c| srgb8_to_oklab(c)).collect()
    }

    /// Index of the colour nearest to `c` in OKLab (the lowest index on a tie).
    ///
    /// # Panics
    /// If the palette is empty.
    pub fn nearest(&self, c: Oklab) -> usize {
        nearest_index(&self.oklab(), c)
    }

    /// The palette in Lospec `.hex` form: one lowercase `rrggbb` per line.
    pub fn to_hex(&self) -> String {
        self.colours.iter().map(|[r, g, b]| format!("{r:02x}{g:02x}{b:02x}\n")).collect()
    }
}

/// Snaps samples to a given palette: for each sample, the index of the nearest palette
/// colour in OKLab (the lowest index on a tie). Non-finite components are read as 0.
///
/// # Panics
/// If `samples` is not empty and the palette is empty.
pub fn snap_to_palette(samples: &[Oklab], palette: &Palette) -> Vec<usize> {
    let lab = palette.oklab();
    samples.iter().map(|&s| nearest_index(&lab, s)).collect()
}

/// Index of the entry of `palette` nearest to `c` (the lowest index on a tie); non-finite
/// components of `c` are read as 0.
fn nearest_index(palette: &[Oklab], c: Oklab) -> usize {
    assert!(!palette.is_empty(), "cannot snap a colour to an empty palette");
    closest(palette, finite_or_zero(c))
}

/// Index of the entry of `colours` nearest to `c` (the lowest index on a tie; 0 when empty).
/// Four running minima over interleaved entries, so the comparisons do not wait on each
/// other: this is the inner loop of Lloyd passes and of snapping.
fn closest(colours: &[Oklab], c: Oklab) -> usize {
    let mut lanes = [(f32::INFINITY, 0usize); 4];
    let chunks = colours.chunks_exact(4);
    let tail_start = colours.len() - chunks.remainder().len();
    for (k, chunk) in chunks.enumerate() {
        for (lane, (best, &p)) in lanes.iter_mut().zip(chunk).enumerate() {
            let d2 = c.dist2(p);
            if d2 < best.0 {
                *best = (d2, 4 * k + lane);
            }
        }
    }
    for (i, &p) in colours.iter().enumerate().skip(tail_start) {
        let d2 = c.dist2(p);
        if d2 < lanes[0].0 {
            lanes[0] = (d2, i);
        }
    }
    // Each lane holds its lowest index among its minima; across lanes the lowest index wins
    // ties. Unused lanes hold (infinity, 0), which only wins when nothing is finite.
    lanes.iter().fold((f32::INFINITY, usize::MAX), |best, &lane| if lane < best { lane } else { best }).1
}

/// `c` with non-finite components replaced by 0, so one bad sample cannot poison sums.
fn finite_or_zero(c: Oklab) -> Oklab {
    let f = |v: f32| if v.is_finite() { v } else { 0.0 };
    Oklab { l: f(c.l), a: f(c.a), b: f(c.b) }
}

/// The sRGB8 colour `c` rounds to, through [`oklab_to_srgb8`] after [`finite_or_zero`].
fn rounded_srgb8(c: Oklab) -> [u8; 3] {
    oklab_to_srgb8(finite_or_zero(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nearest_picks_the_closest_colour_and_the_lowest_index_on_ties() {
        let palette = Palette { colours: vec![[0, 0, 0], [255, 255, 255], [255, 0, 0], [255, 0, 0]] };
        assert_eq!(palette.nearest(srgb8_to_oklab([20, 20, 20])), 0);
        assert_eq!(palette.nearest(srgb8_to_oklab([230, 240, 235])), 1);
        assert_eq!(palette.nearest(srgb8_to_oklab([200, 30, 20])), 2, "the duplicate red at 3 loses the tie");
        assert_eq!(palette.nearest(Oklab { l: f32::NAN, a: 0.0, b: 0.0 }), 0, "NaN reads as black");
        let samples: Vec<Oklab> = [[1, 1, 1], [254, 0, 3], [250, 250, 250]].map(srgb8_to_oklab).to_vec();
        assert_eq!(snap_to_palette(&samples, &palette), vec![0, 2, 1]);
    }

    #[test]
    fn hex_output_is_lowercase_rrggbb_lines() {
        let palette = Palette { colours: vec![[0xAB, 0x00, 0x10], [255, 255, 255]] };
        assert_eq!(palette.to_hex(), "ab0010\nffffff\n");
    }

    fn distinct_colours() -> impl Strategy<Value = Vec<[u8; 3]>> {
        proptest::collection::btree_set(any::<[u8; 3]>(), 1..40).prop_map(|s| s.into_iter().collect())
    }

    proptest! {
        // A palette without duplicates snaps its own colours to themselves.
        #[test]
        fn snapping_a_palettes_own_colours_is_the_identity(colours in distinct_colours()) {
            let palette = Palette { colours };
            let own = palette.oklab();
            let expected: Vec<usize> = (0..own.len()).collect();
            prop_assert_eq!(snap_to_palette(&own, &palette), expected);
        }
    }
}

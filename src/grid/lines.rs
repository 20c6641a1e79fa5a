//! Placing each grid line on its own, or keeping the comb's regular lines
//! ([`regular_lines`]; the grid analysis chooses).
//!
//! Generator output is not on a regular grid: cells differ in size by a pixel or two and
//! the lines drift away from any regular comb. Given the fitted period `p`, the lines are
//! the path through the edge profile that maximises
//!
//! ```text
//! sum over lines of  S(line)  -  SPACING_COST * S_typ * |spacing - p| / p
//! ```
//!
//! with `S` the profile's local maxima (each placed at its sub-pixel vertex, zero
//! elsewhere: one edge can then pay for one line only, however blurred it is), `S_typ` the
//! typical strength of a grid line, and spacings limited to `[1 - MAX_STRETCH, 1 + MAX_STRETCH] * p`. It is solved
//! exactly by dynamic programming on a quarter-pixel lattice, so fractional periods are
//! represented exactly: where there is no edge (neighbouring cells of one colour) the
//! lines keep the period, and the number of cells across a flat region stays right.
//! The spacing cost is linear, not quadratic: squeezing one cell more into a run of thirty
//! costs thirty small deviations, which a quadratic cost would let a single stray peak pay.

use super::period::CombFit;

/// Largest relative difference between a cell's size and the period.
pub const MAX_STRETCH: f32 = 0.35;
/// Weight of the spacing prior against the edge evidence.
const SPACING_COST: f32 = 2.5;
/// Lattice steps per pixel.
const STEPS: usize = 4;

/// The grid lines strictly inside `(0, len)`, in screen coordinates, increasing.
pub fn place_lines(profile: &[f32], comb: &CombFit) -> Vec<f32> {
    let len = profile.len().saturating_sub(1);
    let p = comb.period;
    if len < 2 || p <= 0.0 {
        return Vec::new();
    }
    let n = len * STEPS + 1;
    let evidence = peak_evidence(profile, n);
    let typical = typical_line_strength(&evidence, comb);
    let min_step = (((1.0 - MAX_STRETCH) * p * STEPS as f32).ceil() as usize).max(1);
    let max_step = ((1.0 + MAX_STRETCH) * p * STEPS as f32).floor() as usize;
    let max_step = max_step.max(min_step);
    let spacing_cost: Vec<f32> = (0..=max_step)
        .map(|s| {
            let d = (s as f32 / STEPS as f32 - p) / p;
            SPACING_COST * typical * d.abs()
        })
        .collect();
    // best[i]: best total of a line path whose last line is at lattice point i.
    // from[i]: the previous line of that path (usize::MAX: i is the first line).
    let mut best = vec![f32::NEG_INFINITY; n];
    let mut from = vec![usize::MAX; n];
    for i in 1..n - 1 {
        // A first line may be anywhere within one stretched cell of the border.
        let mut b = if i <= max_step { 0.0 } else { f32::NEG_INFINITY };
        let mut f = usize::MAX;
        for s in min_step..=max_step.min(i - 1) {
            let prev = best[i - s];
            if prev > f32::NEG_INFINITY {
                let v = prev - spacing_cost[s];
                if v > b {
                    b = v;
                    f = i - s;
                }
            }
        }
        if b > f32::NEG_INFINITY {
            best[i] = b + evidence[i];
            from[i] = f;
        }
    }
    // The last line lies within one stretched cell of the far border.
    let end = ((n - 1).saturating_sub(max_step)..n - 1)
        .filter(|&i| i > 0 && best[i] > f32::NEG_INFINITY)
        .max_by(|&a, &b| best[a].total_cmp(&best[b]).then(b.cmp(&a)));
    let Some(mut i) = end else { return Vec::new() };
    let mut lines = vec![i as f32 / STEPS as f32];
    while from[i] != usize::MAX {
        i = from[i];
        lines.push(i as f32 / STEPS as f32);
    }
    lines.reverse();
    lines
}

/// The comb's own lines strictly inside `(0, len)`: every `period` from its phase.
pub fn regular_lines(len: f32, comb: &CombFit) -> Vec<f32> {
    if !(comb.period > 0.0) {
        return Vec::new();
    }
    let first = comb.phase.rem_euclid(comb.period);
    let first = if first > 0.0 { first } else { comb.period };
    (0..).map(|k| first + k as f32 * comb.period).take_while(|&x| x < len).collect()
}

/// Which of a comb's parameters [`fit_to_placed_lines`] may change: those the user did not
/// give.
#[derive(Clone, Copy, Debug)]
pub struct FreeParameters {
    pub period: bool,
    pub phase: bool,
}

/// The regular comb that the placed lines (from [`place_lines`]) follow best: by least
/// squares of each line's position on its tooth's index. The comb's own period and phase
/// are fitted to the edge profile on a one-pixel lattice; some tens of placed lines, each
/// off by their own noise, pin both down finer. Lines more than a quarter period from
/// their tooth (where the placement followed something else) do not count; with fewer
/// than two left the comb stays.
pub fn fit_to_placed_lines(comb: &CombFit, placed: &[f32], free: FreeParameters) -> CombFit {
    let p = comb.period;
    // (tooth index, position) of every line near its tooth.
    let near: Vec<(f64, f64)> = placed
        .iter()
        .filter_map(|&x| {
            let k = ((x - comb.phase) / p).round();
            let off = x - (comb.phase + k * p);
            (off.abs() <= 0.25 * p).then_some((f64::from(k), f64::from(x)))
        })
        .collect();
    if near.len() < 2 {
        return *comb;
    }
    let n = near.len() as f64;
    let (phase, period) = (f64::from(comb.phase), f64::from(p));
    let (phase, period) = match (free.period, free.phase) {
        (true, true) => {
            let (mk, mx) = (near.iter().map(|v| v.0).sum::<f64>() / n, near.iter().map(|v| v.1).sum::<f64>() / n);
            let skk: f64 = near.iter().map(|v| (v.0 - mk).powi(2)).sum();
            if skk == 0.0 {
                return *comb;
            }
            let slope = near.iter().map(|v| (v.0 - mk) * (v.1 - mx)).sum::<f64>() / skk;
            (mx - slope * mk, slope)
        }
        (true, false) => {
            let kk: f64 = near.iter().map(|v| v.0 * v.0).sum();
            if kk == 0.0 {
                return *comb;
            }
            (phase, near.iter().map(|v| v.0 * (v.1 - phase)).sum::<f64>() / kk)
        }
        (false, true) => (near.iter().map(|v| v.1 - v.0 * period).sum::<f64>() / n, period),
        (false, false) => (phase, period),
    };
    let period = period as f32;
    CombFit { period, phase: (phase as f32).rem_euclid(period), ..*comb }
}

/// The profile's local maxima on the lattice, each at its sub-pixel vertex.
fn peak_evidence(profile: &[f32], n: usize) -> Vec<f32> {
    let mut evidence = vec![0.0f32; n];
    for x in 1..profile.len().saturating_sub(1) {
        let (a, b, c) = (profile[x - 1], profile[x], profile[x + 1]);
        if b > 0.0 && b > a && b >= c {
            let denom = a - 2.0 * b + c;
            let offset = if denom < 0.0 { (0.5 * (a - c) / denom).clamp(-0.5, 0.5) } else { 0.0 };
            let i = ((x as f32 + offset) * STEPS as f32).round() as usize;
            if i < n {
                evidence[i] = evidence[i].max(b);
            }
        }
    }
    evidence
}

/// What a grid line typically scores: the mean of the peaks within a pixel of the comb's
/// teeth (the largest peak when none is).
fn typical_line_strength(evidence: &[f32], comb: &CombFit) -> f32 {
    let reach = STEPS as f32;
    let near_teeth: Vec<f32> = evidence
        .iter()
        .enumerate()
        .filter(|&(i, &e)| {
            let d = (i as f32 - comb.phase * reach).rem_euclid(comb.period * reach);
            e > 0.0 && d.min(comb.period * reach - d) <= reach
        })
        .map(|(_, &e)| e)
        .collect();
    if near_teeth.is_empty() {
        evidence.iter().copied().fold(0.0, f32::max).max(1e-6)
    } else {
        near_teeth.iter().sum::<f32>() / near_teeth.len() as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comb(period: f32) -> CombFit {
        CombFit { period, phase: 0.0, score: 1.0, contrast: 1.0 }
    }

    #[test]
    fn lines_follow_jittered_edges_and_keep_the_period_without_evidence() {
        // Period 10, true lines jittered by up to 1 px; the edge at 50 is missing.
        let truth = [10usize, 21, 30, 40, 50, 61, 70, 79, 91];
        let mut prof = vec![0.0f32; 101];
        for &x in &truth {
            if x != 50 {
                prof[x] = 10.0;
            }
        }
        let lines = place_lines(&prof, &comb(10.0));
        assert_eq!(lines.len(), 9, "{lines:?}");
        for (l, &t) in lines.iter().zip(&truth) {
            assert!((l - t as f32).abs() <= 1.0, "{lines:?}");
        }
    }

    #[test]
    fn drifting_lines_are_followed_beyond_a_fixed_comb() {
        // Cells of 10 px drifting: each cell 1 px longer than the last up to 13, then back.
        let sizes = [10usize, 11, 12, 13, 13, 12, 11, 10, 9, 8, 7, 9];
        let mut x = 0;
        let mut truth = Vec::new();
        for s in sizes {
            x += s;
            truth.push(x);
        }
        let len = x + 8;
        let mut prof = vec![0.0f32; len + 1];
        for &t in &truth {
            prof[t] = 5.0;
        }
        let lines = place_lines(&prof, &comb(10.4));
        assert_eq!(lines.len(), truth.len(), "{lines:?}");
        for (l, &t) in lines.iter().zip(&truth) {
            assert!((l - t as f32).abs() <= 0.5, "{lines:?} vs {truth:?}");
        }
    }

    #[test]
    fn flat_regions_keep_fractional_periods_exactly() {
        // Period 2.5 over 100 px with edges only at both ends: 39 interior lines.
        let mut prof = vec![0.0f32; 101];
        prof[5] = 3.0;
        prof[95] = 3.0;
        let lines = place_lines(&prof, &CombFit { period: 2.5, phase: 0.0, score: 1.0, contrast: 1.0 });
        assert_eq!(lines.len(), 39, "{lines:?}");
    }
}

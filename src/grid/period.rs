//! Fitting a regular comb (period and phase) to an edge profile.
//!
//! A candidate grid line set is the comb `phase + k * period`. Its score is the *lift* of
//! the comb: the share of the profile's change that falls on the teeth, minus the share of
//! positions that are teeth, which is `(T - mean) / (period * mean)` with `T` the mean of
//! the profile on the teeth (triangle-weighted within one screen pixel of a tooth). The
//! true grid scores highest: a multiple of the period collects the same change per tooth
//! on fewer teeth, so its lift is divided by the multiple; a fraction of the period puts
//! most teeth inside cells. This keeps a 2x grid from being taken for a 4x one and the
//! other way round, and a repeating pattern in the art from being taken for the grid.
//!
//! The confidence of a fit is its *contrast* `(T - M) / (T + M)`, `M` being the mean of
//! the profile at least one pixel away from every tooth: 1 when all change sits on the
//! grid lines, near 0 when the comb explains nothing.
//!
//! The period is searched on a geometric ladder fine enough that a wrong period smears the
//! comb by at most one pixel over the whole image, then the best candidates are refined
//! eight times finer.

/// Phase resolution: profile positions are folded into about this many bins per pixel.
const BINS_PER_PIXEL: f32 = 4.0;

/// A comb fitted to one axis.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CombFit {
    /// Screen pixels per cell.
    pub period: f32,
    /// Position of one grid line, in [0, period).
    pub phase: f32,
    /// The lift `(T - mean) / (period * mean)`.
    pub score: f32,
    /// `(T - M) / (T + M)`, in [-1, 1]: 1 when all change is on the grid lines.
    pub contrast: f32,
}

/// Profile positions folded modulo a period into equal phase bins that tile the period.
struct Folded {
    bin_width: f32,
    sum: Vec<f32>,
    count: Vec<f32>,
    total_sum: f32,
    total_count: f32,
}

/// Folds the interior of the profile (the image borders are not grid evidence).
fn fold(profile: &[f32], period: f32) -> Folded {
    let nbins = ((period * BINS_PER_PIXEL).round() as usize).max(1);
    let bin_width = period / nbins as f32;
    let mut sum = vec![0.0f32; nbins];
    let mut count = vec![0.0f32; nbins];
    let inv = 1.0 / period;
    for (x, &v) in profile.iter().enumerate().take(profile.len().saturating_sub(1)).skip(1) {
        let xf = x as f32;
        let pos = xf - (xf * inv).floor() * period;
        let b = ((pos / bin_width + 0.5) as usize) % nbins; // bin b is centred on b * bin_width
        sum[b] += v;
        count[b] += 1.0;
    }
    let total_sum = sum.iter().sum();
    let total_count = count.iter().sum();
    Folded { bin_width, sum, count, total_sum, total_count }
}

/// Best phase for a period, from the folded profile. `fixed_phase` restricts the search.
fn best_phase(f: &Folded, period: f32, fixed_phase: Option<f32>) -> Option<CombFit> {
    let nbins = f.sum.len();
    // Bins closer than one pixel to the tooth are "near": they weigh into T with a
    // triangle and are left out of M.
    let reach = ((1.0 - 1e-4) / f.bin_width).floor() as isize;
    let phases: Vec<usize> = match fixed_phase {
        Some(p) => vec![((p.rem_euclid(period) / f.bin_width).round() as usize) % nbins],
        None => (0..nbins).collect(),
    };
    let mean = f.total_sum / f.total_count.max(1.0);
    let mut best: Option<CombFit> = None;
    for pb in phases {
        let (mut t_sum, mut t_w, mut near_sum, mut near_count) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
        for off in -reach..=reach {
            let b = (pb as isize + off).rem_euclid(nbins as isize) as usize;
            let w = 1.0 - off.unsigned_abs() as f32 * f.bin_width;
            t_sum += w * f.sum[b];
            t_w += w * f.count[b];
            near_sum += f.sum[b];
            near_count += f.count[b];
        }
        let far_count = f.total_count - near_count;
        if t_w <= 0.0 || far_count <= 0.0 || mean <= 0.0 {
            continue;
        }
        let t = t_sum / t_w;
        let m = ((f.total_sum - near_sum) / far_count).max(0.0);
        let score = (t - mean) / (period * mean);
        if best.is_none_or(|b| score > b.score) {
            let contrast = if t + m > 0.0 { (t - m) / (t + m) } else { 0.0 };
            best = Some(CombFit { period, phase: pb as f32 * f.bin_width, score, contrast });
        }
    }
    best
}

/// Smallest period scored: below two pixels the tooth window (one pixel either side)
/// would cover the whole period.
pub const MIN_PERIOD: f32 = 2.0;

/// Scores one period (best phase, or the fixed one). Periods under [`MIN_PERIOD`] are clamped.
pub fn fit_period(profile: &[f32], period: f32, fixed_phase: Option<f32>) -> Option<CombFit> {
    let period = period.max(MIN_PERIOD);
    best_phase(&fold(profile, period), period, fixed_phase)
}

/// Finds the comb that best explains the profile, with periods in `[min_period, max_period]`.
/// Returns `None` when the profile is too short for two periods or carries no change.
pub fn fit_comb(profile: &[f32], min_period: f32, max_period: f32, fixed_phase: Option<f32>) -> Option<CombFit> {
    let span = profile.len().saturating_sub(1) as f32;
    let min_period = min_period.max(MIN_PERIOD);
    let max_period = max_period.min(span / 2.0);
    if max_period < min_period || profile.iter().all(|&v| v <= 0.0) {
        return None;
    }
    // Geometric ladder: a relative step of 1/span moves the last tooth by about one pixel.
    let step = 1.0 + 1.0 / span.max(8.0);
    let mut ladder = Vec::new();
    let mut p = min_period;
    while p <= max_period {
        if let Some(fit) = fit_period(profile, p, fixed_phase) {
            ladder.push(fit);
        }
        p *= step;
    }
    let best_score = ladder.iter().map(|f| f.score).fold(f32::NEG_INFINITY, f32::max);
    if !(best_score > 0.0) {
        return None;
    }
    // Local maxima of the ladder near the best are refined; the best refined one wins.
    (0..ladder.len())
        .filter(|&i| {
            let s = ladder[i].score;
            let left = if i > 0 { ladder[i - 1].score } else { f32::NEG_INFINITY };
            let right = ladder.get(i + 1).map_or(f32::NEG_INFINITY, |f| f.score);
            s >= left && s >= right && s >= 0.5 * best_score
        })
        .map(|i| refine(profile, ladder[i].period, step, fixed_phase))
        .max_by(|a, b| a.score.total_cmp(&b.score))
}

/// Searches eight times finer within one ladder step either side.
fn refine(profile: &[f32], period: f32, step: f32, fixed_phase: Option<f32>) -> CombFit {
    let mut best = fit_period(profile, period, fixed_phase).expect("the ladder scored this period");
    let fine = step.powf(1.0 / 8.0);
    for k in -8..=8 {
        let p = period * fine.powi(k);
        if let Some(fit) = fit_period(profile, p, fixed_phase) {
            if fit.score > best.score {
                best = fit;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A profile with edges of varying strength on the lines `phase + k * period`.
    fn comb_profile(len: usize, period: f32, phase: f32, blur: bool) -> Vec<f32> {
        let mut p = vec![0.0f32; len + 1];
        let mut k = 0;
        loop {
            let x = phase + k as f32 * period;
            if x >= len as f32 {
                break;
            }
            let xi = x.round() as usize;
            if xi > 0 && xi < len {
                // Edges of irregular strength, as where neighbouring cells differ more or less.
                let strength = 1.0 + (crate::rng::splitmix64(k as u64) % 5) as f32;
                p[xi] += strength;
                if blur {
                    // A blurred edge (sigma 0.7 px) spreads over its neighbours.
                    p[xi - 1] += 0.36 * strength;
                    if xi + 1 < len {
                        p[xi + 1] += 0.36 * strength;
                    }
                }
            }
            k += 1;
        }
        p
    }

    #[test]
    fn finds_integer_and_fractional_periods_with_phase() {
        for &(period, phase) in &[(2.0f32, 0.0f32), (3.0, 1.0), (4.0, 2.0), (5.5, 2.0), (13.7, 5.0), (37.0, 11.0)] {
            let prof = comb_profile(600, period, phase, false);
            let fit = fit_comb(&prof, 2.0, 40.0, None).unwrap();
            assert!((fit.period - period).abs() < 0.02 * period, "{period}: {fit:?}");
            let d = (fit.phase - phase).rem_euclid(period);
            assert!(d.min(period - d) <= 0.5, "{period}/{phase}: {fit:?}");
            assert!(fit.contrast > 0.9, "{fit:?}");
        }
    }

    #[test]
    fn never_confuses_two_with_four() {
        for blur in [false, true] {
            let two = fit_comb(&comb_profile(256, 2.0, 0.0, blur), 2.0, 40.0, None).unwrap();
            assert!((two.period - 2.0).abs() < 0.05, "blur {blur}: {two:?}");
            let four = fit_comb(&comb_profile(256, 4.0, 0.0, blur), 2.0, 40.0, None).unwrap();
            assert!((four.period - 4.0).abs() < 0.05, "blur {blur}: {four:?}");
        }
    }

    #[test]
    fn flat_profile_has_no_comb() {
        assert!(fit_comb(&vec![0.0; 100], 2.0, 40.0, None).is_none());
        let noise: Vec<f32> = (0..300).map(|i| ((i * 2654435761u64 as usize) % 97) as f32).collect();
        if let Some(fit) = fit_comb(&noise, 2.0, 40.0, None) {
            assert!(fit.contrast < 0.5, "{fit:?}");
        }
    }
}

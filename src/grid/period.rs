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

use multiversion::multiversion;

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
#[derive(Default)]
struct Folded {
    bin_width: f32,
    sum: Vec<f32>,
    count: Vec<f32>,
    total_sum: f32,
    total_count: f32,
}

/// Folds the interior of the profile (the image borders are not grid evidence).
fn fold(profile: &[f32], period: f32) -> Folded {
    let mut folded = [Folded::default()];
    fold_ranges_into([profile], period, 0, profile.len(), &mut folded);
    let [folded] = folded;
    folded
}

/// Folds the positions in `start..end` (the image borders excluded) of `N` profiles of one
/// length at once, by their position in the whole profile, so that folds of adjacent
/// ranges add up; into `out`, whose buffers are reused. Each position's bin is found once
/// for all the profiles; their position counts, the same for all, are counted in `out[0]`
/// only (the others' are left empty and 0).
fn fold_ranges_into<const N: usize>(profiles: [&[f32]; N], period: f32, start: usize, end: usize, out: &mut [Folded; N]) {
    let len = profiles.first().map_or(0, |p| p.len());
    debug_assert!(profiles.iter().all(|p| p.len() == len), "fold_ranges_into needs profiles of one length");
    let nbins = ((period * BINS_PER_PIXEL).round() as usize).max(1);
    let bin_width = period / nbins as f32;
    let inv_bin_width = 1.0 / bin_width;
    for folded in out.iter_mut() {
        folded.bin_width = bin_width;
        folded.sum.clear();
        folded.sum.resize(nbins, 0.0);
        folded.count.clear();
        folded.total_count = 0.0;
    }
    if N == 0 {
        return;
    }
    out[0].count.resize(nbins, 0.0);
    let first = start.max(1);
    let last = end.min(len.saturating_sub(1));
    let values = profiles.map(|p| p.get(first..last).unwrap_or(&[]));
    // The position within the period advances by one pixel per step; keeping it
    // incrementally saves a floor and a division per position in this hot loop.
    let mut pos = (first as f32) % period;
    for i in 0..last.saturating_sub(first) {
        let b = (pos * inv_bin_width + 0.5) as usize; // bin b is centred on b * bin_width
        let b = if b >= nbins { b - nbins } else { b };
        for (folded, v) in out.iter_mut().zip(&values) {
            folded.sum[b] += v[i];
        }
        out[0].count[b] += 1.0;
        pos += 1.0;
        if pos >= period {
            pos -= period;
        }
    }
    out[0].total_count = out[0].count.iter().sum();
    for folded in out.iter_mut() {
        folded.total_sum = folded.sum.iter().sum();
    }
}

/// `out = a + b`, bin by bin (`out` is reused).
fn add_bins(out: &mut Vec<f32>, a: &[f32], b: &[f32]) {
    out.clear();
    out.extend(a.iter().zip(b).map(|(x, y)| x + y));
}

impl Folded {
    /// The position counts of two adjacent ranges together, into `out` (reused: this runs
    /// for every window of every rung of the period ladder). Profiles folded together
    /// share their counts, so this runs once for all of them.
    fn join_counts_into(&self, other: &Folded, out: &mut Folded) {
        out.bin_width = self.bin_width;
        add_bins(&mut out.count, &self.count, &other.count);
        out.total_count = self.total_count + other.total_count;
    }

    /// The profile sums of two adjacent ranges together, into `out`.
    fn join_sums_into(&self, other: &Folded, out: &mut Folded) {
        add_bins(&mut out.sum, &self.sum, &other.sum);
        out.total_sum = self.total_sum + other.total_sum;
    }
}

/// Per phase bin, the folded profile gathered over the bins within one pixel of a tooth
/// there: plain and triangle-weighted sums of the edge sums and of the position counts.
/// Computed for every phase at once as `2 * reach + 1` shifted passes over the bins, which
/// vectorise; this runs for every window of every rung of the period ladder.
#[derive(Default)]
struct ToothWindows {
    near_sum: Vec<f32>,
    tooth_sum: Vec<f32>,
    near_count: Vec<f32>,
    tooth_weight: Vec<f32>,
    /// The bins circularly extended by `reach` on both sides.
    extended_sum: Vec<f32>,
    extended_count: Vec<f32>,
    /// The lift of every phase, for [`best_phase`].
    scores: Vec<f32>,
}

thread_local! {
    /// One set of buffers per thread: fresh allocations per window cost a sixth of the time.
    static TOOTH_WINDOWS_SCRATCH: std::cell::RefCell<ToothWindows> = std::cell::RefCell::new(ToothWindows::default());
}

impl ToothWindows {
    /// Runs `body` with this thread's buffers.
    fn with<R>(body: impl FnOnce(&mut ToothWindows) -> R) -> R {
        TOOTH_WINDOWS_SCRATCH.with(|scratch| body(&mut scratch.borrow_mut()))
    }

    /// The count windows of `f` ([`tooth_reach`] bins either side, weighted by
    /// `1 - |offset| * bin width`).
    fn fill_counts(&mut self, f: &Folded) {
        fill_windows(&f.count, tooth_reach(f), f.bin_width, &mut self.extended_count, &mut self.near_count, &mut self.tooth_weight);
    }

    /// The sum windows of `f`, as [`ToothWindows::fill_counts`].
    fn fill_sums(&mut self, f: &Folded) {
        fill_windows(&f.sum, tooth_reach(f), f.bin_width, &mut self.extended_sum, &mut self.near_sum, &mut self.tooth_sum);
    }
}

/// The plain and weighted windows of `bins` ([`add_tooth_windows`]) into `plain` and
/// `weighted`, through `extended`, the bins circularly extended by `reach` on both sides
/// (all three reused).
fn fill_windows(bins: &[f32], reach: usize, step: f32, extended: &mut Vec<f32>, plain: &mut Vec<f32>, weighted: &mut Vec<f32>) {
    extended.clear();
    extended.extend_from_slice(&bins[bins.len() - reach..]);
    extended.extend_from_slice(bins);
    extended.extend_from_slice(&bins[..reach]);
    for acc in [&mut *plain, &mut *weighted] {
        acc.clear();
        acc.resize(bins.len(), 0.0);
    }
    add_tooth_windows(plain, weighted, extended, reach, step);
}

/// Bins closer than one pixel to the tooth are "near": they weigh into T with a triangle
/// and are left out of M. This many bins either side (`2 * reach < bins`), counted on the
/// counts, which a window joins before its sums.
fn tooth_reach(f: &Folded) -> usize {
    (((1.0 - 1e-4) / f.bin_width).floor() as usize).min(f.count.len().saturating_sub(1) / 2)
}

/// Adds to `plain[b]` the bins within `reach` of bin `b`, and to `weighted[b]` the same
/// weighted by `1 - |offset| * step`, from `extended`, the bins circularly extended by
/// `reach` on both sides. One shifted pass per offset; compiled for AVX-512 and AVX2 as
/// well as the baseline (picked at run time), since the binary targets baseline x86-64.
#[multiversion(targets("x86_64+avx512f+avx512vl", "x86_64+avx2+fma"))]
fn add_tooth_windows(plain: &mut [f32], weighted: &mut [f32], extended: &[f32], reach: usize, step: f32) {
    let n = plain.len();
    // Offset `o` of the extended bins is offset `o - reach` from the tooth.
    for o in 0..=2 * reach {
        let weight = 1.0 - o.abs_diff(reach) as f32 * step;
        for ((p, w), &v) in plain.iter_mut().zip(weighted.iter_mut()).zip(&extended[o..o + n]) {
            *p += v;
            *w += weight * v;
        }
    }
}

/// Best phase for a period, from the folded profile. `fixed_phase` restricts the search.
fn best_phase(f: &Folded, period: f32, fixed_phase: Option<f32>) -> Option<CombFit> {
    ToothWindows::with(|w| {
        w.fill_counts(f);
        best_phase_counted(w, f, period, fixed_phase)
    })
}

/// [`best_phase`] with `w`'s count windows already filled, from `f` or a fold with the
/// same counts.
fn best_phase_counted(w: &mut ToothWindows, f: &Folded, period: f32, fixed_phase: Option<f32>) -> Option<CombFit> {
    let nbins = f.sum.len();
    let phases = match fixed_phase {
        Some(p) => {
            let pb = ((p.rem_euclid(period) / f.bin_width).round() as usize) % nbins;
            pb..pb + 1
        }
        None => 0..nbins,
    };
    let mean = f.total_sum / f.total_count.max(1.0);
    if mean <= 0.0 {
        return None;
    }
    w.fill_sums(f);
    let ToothWindows { near_sum, tooth_sum, near_count, tooth_weight, scores, .. } = w;
    // Every phase's lift in one branch-free pass (it vectorises), then the first best.
    let lift = |sum: f32, weight: f32, near: f32| {
        let scored = (weight > 1e-9) & (f.total_count - near > 0.5);
        let score = (sum / weight - mean) / (period * mean);
        if scored { score } else { f32::NEG_INFINITY }
    };
    scores.clear();
    scores.resize(phases.len(), 0.0);
    let (sums, weights, nears) = (&tooth_sum[phases.clone()], &tooth_weight[phases.clone()], &near_count[phases.clone()]);
    for (((score, &sum), &weight), &near) in scores.iter_mut().zip(sums).zip(weights).zip(nears) {
        *score = lift(sum, weight, near);
    }
    let (mut best, mut best_score) = (None, f32::NEG_INFINITY);
    for (i, &score) in scores.iter().enumerate() {
        if score > best_score {
            (best, best_score) = (Some(i), score);
        }
    }
    best.map(|i| {
        let pb = phases.start + i;
        let t = tooth_sum[pb] / tooth_weight[pb];
        let m = ((f.total_sum - near_sum[pb]) / (f.total_count - near_count[pb])).max(0.0);
        let contrast = if t + m > 0.0 { (t - m) / (t + m) } else { 0.0 };
        // A fixed phase is scored at its nearest bin but kept as given.
        let phase = fixed_phase.map_or(pb as f32 * f.bin_width, |p| p.rem_euclid(period));
        CombFit { period, phase, score: best_score, contrast }
    })
}

/// Smallest period scored: below two pixels the tooth window (one pixel either side)
/// would cover the whole period.
pub const MIN_PERIOD: f32 = 2.0;

/// Scores one period (best phase, or the fixed one). Periods under [`MIN_PERIOD`] are clamped.
pub fn fit_period(profile: &[f32], period: f32, fixed_phase: Option<f32>) -> Option<CombFit> {
    let period = period.max(MIN_PERIOD);
    best_phase(&fold(profile, period), period, fixed_phase)
}

/// Local fits span at least this many periods, [`MIN_WINDOW`] pixels and a third of the profile.
const WINDOW_PERIODS: f32 = 6.0;
const MIN_WINDOW: usize = 48;
/// Windows are at least this share of the profile.
const WINDOWS_PER_PROFILE: usize = 3;
/// Relative step of the period ladder, and of its refinement around the best rung.
const LADDER_STEP: f32 = 0.01;
const REFINE_STEP: f32 = 0.001;
/// Largest move, in pixels, of a window's last tooth from one rung of the ladder to the next.
const MAX_RUNG_SMEAR: f32 = 1.0;

/// Scores a period by local comb fits: windows of [`WINDOW_PERIODS`] periods, half
/// overlapping, each with its own best phase; the lifts and contrasts are averaged
/// weighted by each window's share of the profile. Local phases make the score immune to
/// lines that drift or slip by part of a cell across the image, as generator output does.
/// Each half window is folded once and windows join two neighbouring halves.
pub fn windowed_fit(profile: &[f32], period: f32) -> Option<(f32, f32)> {
    let [fit] = windowed_fits([profile], period);
    fit
}

/// [`windowed_fit`] of `N` profiles of one length, folded together ([`fold_ranges_into`]).
fn windowed_fits<const N: usize>(profiles: [&[f32]; N], period: f32) -> [Option<(f32, f32)>; N] {
    let len = profiles.first().map_or(0, |p| p.len());
    let half = (window_len(len, period) / 2).max(1);
    FOLD_SCRATCH.with(|scratch| {
        let (halves, window) = &mut *scratch.borrow_mut();
        let count = len.div_ceil(half);
        if halves.len() < count * N {
            halves.resize_with(count * N, Folded::default);
        }
        let halves = &mut halves[..count * N];
        for (h, folded) in halves.chunks_exact_mut(N.max(1)).enumerate() {
            fold_ranges_into(profiles, period, h * half, (h + 1) * half, folded.try_into().expect("chunks of N"));
        }
        score_windows(profiles, period, halves, window)
    })
}

thread_local! {
    /// Half-window folds and one joined window, reused per thread: fresh buffers for every
    /// rung of the period ladder cost more than the folding.
    static FOLD_SCRATCH: std::cell::RefCell<(Vec<Folded>, Folded)> = std::cell::RefCell::new((Vec::new(), Folded::default()));
}

/// The windowed fits of [`windowed_fits`] from the profiles' half-window folds (half `h`
/// of profile `k` at `halves[h * N + k]`; their shared counts in those of profile 0).
fn score_windows<const N: usize>(profiles: [&[f32]; N], period: f32, halves: &[Folded], window: &mut Folded) -> [Option<(f32, f32)>; N] {
    let count = halves.len() / N.max(1);
    // Per profile: the lifts and contrasts weighted by each window's mass, and the mass.
    let mut totals = [(0.0f32, 0.0f32, 0.0f32); N];
    ToothWindows::with(|w| {
        let mut add = |w: &mut ToothWindows, k: usize, folded: &Folded| {
            if let Some(fit) = best_phase_counted(w, folded, period, None) {
                let (score, contrast, mass) = &mut totals[k];
                *score += folded.total_sum * fit.score;
                *contrast += folded.total_sum * fit.contrast;
                *mass += folded.total_sum;
            }
        };
        if count < 2 {
            for (k, profile) in profiles.iter().enumerate() {
                let folded = fold(profile, period);
                w.fill_counts(&folded);
                add(w, k, &folded);
            }
        } else {
            for h in 1..count {
                halves[(h - 1) * N].join_counts_into(&halves[h * N], window);
                w.fill_counts(window);
                for k in 0..N {
                    halves[(h - 1) * N + k].join_sums_into(&halves[h * N + k], window);
                    add(w, k, window);
                }
            }
        }
    });
    totals.map(|(score, contrast, mass)| (mass > 0.0).then(|| (score / mass, contrast / mass)))
}

/// Cells are nearly square: each axis's cell size is searched within this factor of the
/// size both axes agree on.
pub const MAX_ASPECT: f32 = 1.15;

/// The window of local fits for a period: the same for every period of one image (unless
/// a period needs more), so that no period gains from fitting more phases to fewer teeth.
fn window_len(len: usize, period: f32) -> usize {
    ((WINDOW_PERIODS * period) as usize).max(len / WINDOWS_PER_PROFILE).max(MIN_WINDOW).min(len)
}

/// The period ladder from `from` to `to`, each rung scored by the sum of the profiles'
/// windowed lifts (a profile that cannot be scored adds nothing).
/// The relative step is at most `step`, and small enough that the next rung moves the
/// last tooth of a window by at most [`MAX_RUNG_SMEAR`] pixels, so no period falls
/// between two rungs.
fn ladder(profiles: &[&[f32]], from: f32, to: f32, step: f32) -> Vec<(f32, f32)> {
    let len = profiles.iter().map(|p| p.len()).max().unwrap_or(0);
    let mut rungs = Vec::new();
    let mut p = from;
    while p <= to {
        let score: f32 = match profiles {
            // Both axes of a square image fold together.
            [x, y] if x.len() == y.len() => windowed_fits([*x, *y], p).into_iter().flatten().map(|(s, c)| rung_score(s, c)).sum(),
            _ => profiles.iter().filter_map(|prof| windowed_fit(prof, p)).map(|(s, c)| rung_score(s, c)).sum(),
        };
        rungs.push((p, score));
        p *= 1.0 + step.min(MAX_RUNG_SMEAR / window_len(len, p) as f32);
    }
    rungs
}

/// How a period ranks: its lift times its contrast. The lift alone can favour a
/// fraction of the true period when the art has texture or features drawn off the grid
/// (the extra teeth find a little of it), and the contrast drops for such combs; the lift
/// keeps multiples of the period, whose contrast is as high, from winning. (Squaring the
/// contrast would also punish true 2-pixel grids, whose blurred edges leave no clean space
/// between teeth.)
fn rung_score(lift: f32, contrast: f32) -> f32 {
    lift * contrast.max(0.0)
}

fn best_rung(rungs: &[(f32, f32)]) -> Option<(f32, f32)> {
    rungs.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1))
}

/// Largest period a profile can show twice.
fn longest_period(profile: &[f32], max_period: f32) -> f32 {
    max_period.min(profile.len().saturating_sub(1) as f32 / 2.0)
}

/// Finds the comb that best explains the profile, with periods in `[min_period, max_period]`.
/// The period comes from local fits ([`windowed_fit`]) on a ladder, refined around the
/// best rung; the phase, fixed or not, from the whole profile. Returns `None` when the
/// profile is too short for two periods or carries no change.
pub fn fit_comb(profile: &[f32], min_period: f32, max_period: f32, fixed_phase: Option<f32>) -> Option<CombFit> {
    let min_period = min_period.max(MIN_PERIOD);
    let max_period = longest_period(profile, max_period);
    if max_period < min_period || profile.iter().all(|&v| v <= 0.0) {
        return None;
    }
    let (coarse, _) = best_rung(&ladder(&[profile], min_period, max_period, LADDER_STEP))?;
    let coarse = coarsen(&[profile], coarse, max_period);
    let lo = (coarse / (1.0 + LADDER_STEP)).max(min_period);
    let hi = (coarse * (1.0 + LADDER_STEP)).min(max_period);
    let (local, _) = best_rung(&ladder(&[profile], lo, hi, REFINE_STEP))?;
    let (score, contrast) = windowed_fit(profile, local)?;
    // NaN and negative lifts alike mean the comb explains nothing.
    if score.is_nan() || score <= 0.0 {
        return None;
    }
    let (period, fit) = whole_cell_period(profile, mean_period(profile, local, fixed_phase), (min_period, max_period), fixed_phase);
    let phase = fit.map_or(0.0, |f| f.phase);
    Some(CombFit { period, phase, score, contrast })
}

/// How far the mean period may lie from the locally fitted one.
pub(crate) const MEAN_PERIOD_RANGE: f32 = 0.05;

/// The mean period over the whole profile, near the locally fitted one. Local fits find
/// the right cell size but, each window having its own phase, only to a few percent; the
/// line placement needs the mean to a fraction of a pixel over the whole image, or it
/// fits one cell too many or too few where lines have no edges. A single comb over the
/// whole profile gives that: steps move its last tooth by at most half a pixel.
/// Returns the period with its whole-profile fit (`None` when no period scanned had one).
fn mean_period(profile: &[f32], local: f32, fixed_phase: Option<f32>) -> (f32, Option<CombFit>) {
    let span = profile.len().saturating_sub(1).max(1) as f32;
    let step = 1.0 + (0.5 / span).min(REFINE_STEP);
    let mut best = (local, f32::NEG_INFINITY, None);
    let mut p = local / (1.0 + MEAN_PERIOD_RANGE);
    while p <= local * (1.0 + MEAN_PERIOD_RANGE) {
        if let Some(fit) = fit_period(profile, p, fixed_phase) {
            let score = rung_score(fit.score, fit.contrast);
            if score > best.1 {
                best = (p, score, Some(fit));
            }
        }
        p *= step;
    }
    (best.0.max(MIN_PERIOD), best.2)
}

/// Edges at least this share of the profile's strongest are the ones
/// [`whole_cell_period`] spaces.
const STRONG_EDGE: f32 = 0.5;
/// A comb of at least this contrast has every edge on its teeth: a sharp upscale.
const SHARP_CONTRAST: f32 = 0.98;

/// Where a sharp upscale has few edges, say a one-pixel frame around a flat area, periods
/// that fit the same edges one cell more or fewer across the flat area score almost alike
/// on the whole profile, and its comb's score peaks more narrowly than any scan steps. Its
/// edges lie exactly on grid lines, so the true period puts the outermost strong edges a
/// whole number of cells apart: of `period` (with its `fit`, from [`mean_period`]) and
/// those periods within `bounds`, the one the whole profile scores best, with its fit
/// (`None` when `period` has none).
/// Other profiles (blurred, or generator output whose lines drift) keep `period`.
fn whole_cell_period(profile: &[f32], (period, fit): (f32, Option<CombFit>), (min_period, max_period): (f32, f32), fixed_phase: Option<f32>) -> (f32, Option<CombFit>) {
    let fit = fit.or_else(|| fit_period(profile, period, fixed_phase));
    let Some(fit) = fit.filter(|f| f.contrast >= SHARP_CONTRAST) else { return (period, fit) };
    let strong = profile.iter().copied().fold(0.0f32, f32::max) * STRONG_EDGE;
    let (Some(first), Some(last)) = (profile.iter().position(|&v| v > 0.0 && v >= strong), profile.iter().rposition(|&v| v > 0.0 && v >= strong)) else {
        return (period, Some(fit));
    };
    let distance = (last - first) as f32;
    let mut best = (period, rung_score(fit.score, fit.contrast), fit);
    for cells in (distance / max_period).ceil().max(1.0) as usize..=(distance / min_period).floor() as usize {
        let p = distance / cells as f32;
        if let Some(candidate) = fit_period(profile, p, fixed_phase) {
            let score = rung_score(candidate.score, candidate.contrast);
            if score > best.1 {
                best = (p, score, candidate);
            }
        }
    }
    (best.0, Some(best.2))
}

/// A sub-comb carrying less than this share of the strongest sub-comb's edges is empty.
const EMPTY_SUB_COMB: f32 = 0.1;

/// Fixes the one case the ranking cannot see: for large cells, half (or a third) of the
/// period ranks almost as well as the period, the lift differing by only `1 / period`.
/// Split into every 2nd (3rd) tooth, a true grid's sub-combs all carry edges, while those
/// of a too-fine comb are one full and the rest empty. Then the period is multiplied.
/// Sub-combs that are merely unequal (bars drawn on every other column, features drawn
/// off the grid) are left alone.
fn coarsen(profiles: &[&[f32]], mut period: f32, max_period: f32) -> f32 {
    'again: loop {
        for k in [2usize, 3] {
            let coarse = period * k as f32;
            if coarse > max_period {
                continue;
            }
            // The rest: the strongest of the sub-combs other than the strongest.
            let (mut strongest, mut rest) = (0.0f32, 0.0f32);
            for profile in profiles {
                let Some(fit) = fit_period(profile, period, None) else { continue };
                let mut subs: Vec<f32> = (0..k).map(|j| tooth_mean(profile, coarse, fit.phase + j as f32 * period)).collect();
                subs.sort_by(|a, b| b.total_cmp(a));
                strongest += subs[0];
                rest += subs[1];
            }
            if strongest > 0.0 && rest < EMPTY_SUB_COMB * strongest {
                period = coarse;
                continue 'again;
            }
        }
        return period;
    }
}

/// Mean of the profile on the teeth `phase + k * period` (within the profile's interior),
/// each tooth triangle-weighted over one pixel either side.
fn tooth_mean(profile: &[f32], period: f32, phase: f32) -> f32 {
    let last = profile.len().saturating_sub(2);
    let (mut sum, mut weight) = (0.0f32, 0.0f32);
    let mut tooth = phase.rem_euclid(period);
    while tooth <= last as f32 + 1.0 {
        let lo = (tooth - 1.0).ceil().max(1.0) as usize;
        let hi = ((tooth + 1.0).floor() as usize).min(last);
        for (x, &v) in profile.iter().enumerate().take(hi + 1).skip(lo) {
            let w = 1.0 - (x as f32 - tooth).abs();
            if w > 0.0 {
                sum += w * v;
                weight += w;
            }
        }
        tooth += period;
    }
    if weight > 0.0 { sum / weight } else { 0.0 }
}

/// Fits both axes of an image whose cells are nearly square: the cell size both profiles
/// agree on best (summed windowed lifts) is found first, then each axis is fitted on its
/// own within [`MAX_ASPECT`] of it. One axis alone is easily fooled by features drawn at
/// half a cell, or by an axis with few edges; together they rarely are.
///
/// Tileable textures (walls, floors) repeat every few cells with their strongest edges on
/// the tile's border; below about 5 px per cell that comb can outrank the cells' own.
/// When both axes show a finer grid between the teeth ([`finer_grid_contrast`]), the
/// fit is repeated below half the period, as often as that keeps happening.
pub fn fit_square_cells(
    x: &[f32],
    y: &[f32],
    min_period: f32,
    mut max_period: f32,
    fixed_phase: Option<(f32, f32)>,
) -> (Option<CombFit>, Option<CombFit>) {
    loop {
        let (fx, fy) = fit_square_cells_below(x, y, min_period, max_period, fixed_phase);
        let (Some(cx), Some(cy)) = (fx, fy) else { return (fx, fy) };
        let finer = |profile: &[f32], fit: &CombFit| finer_grid_contrast(profile, fit) >= FINER_GRID_CONTRAST;
        let finer_max = cx.period.max(cy.period) / 2.0 * (1.0 + MEAN_PERIOD_RANGE);
        if !(finer(x, &cx) && finer(y, &cy)) || finer_max < min_period.max(MIN_PERIOD) {
            return (fx, fy);
        }
        max_period = finer_max;
    }
}

/// Sub-combs finer than this leave no pixel a whole pixel away from every tooth, where
/// [`finer_grid_contrast`] measures what lies between the teeth.
const MIN_SUB_PERIOD: f32 = 2.5;
/// Sub-combs from this period up to [`MIN_SUB_PERIOD`] (cells of about two pixels) are
/// measured with every position shared between tooth and gap by its distance.
const MIN_TWO_PIXEL_SUB_PERIOD: f32 = 1.9;
/// A finer grid must carry at least this share of the profile's edges between the teeth
/// of the coarser one...
const FINER_GRID_SHARE: f32 = 0.2;
/// ...with at least this contrast. On the tuning pairs (val split, seed 2) the right grids
/// of `seed` score at most -0.13, those of `ai` (whose lines drift) 0.53 on one axis; the
/// tile periods of textures 0.57-0.85 on both.
const FINER_GRID_CONTRAST: f32 = 0.45;

/// How clearly the edges between the teeth of `fit` lie on a finer comb that shares its
/// teeth (the comb's period divided by 2, 3, ...): the highest contrast `(T - M) / (T + M)`
/// of such a sub-comb on the profile with the coarse teeth left out, among sub-combs of at
/// least [`MIN_SUB_PERIOD`] that carry at least [`FINER_GRID_SHARE`] of the profile's
/// change. -1 when none qualifies. A true grid has nothing regular between its teeth: what
/// lies there is noise, or features drawn off the grid.
pub fn finer_grid_contrast(profile: &[f32], fit: &CombFit) -> f32 {
    let interior = profile.get(1..profile.len().saturating_sub(1)).unwrap_or(&[]);
    let total: f32 = interior.iter().sum();
    if total <= 0.0 {
        return -1.0;
    }
    // Distance of a position to the nearest tooth of the comb `phase + k * period`.
    let distance = |x: f32, period: f32| {
        let d = (x - fit.phase).rem_euclid(period);
        d.min(period - d)
    };
    // (position, change) of the profile between the coarse teeth.
    let between: Vec<(f32, f32)> = interior.iter().enumerate().map(|(i, &v)| ((i + 1) as f32, v)).filter(|&(x, _)| distance(x, fit.period) >= 1.0).collect();
    let mut best = -1.0f32;
    for k in 2.. {
        let sub = fit.period / k as f32;
        if sub < MIN_TWO_PIXEL_SUB_PERIOD {
            break;
        }
        let (mut tooth_sum, mut tooth_weight, mut near, mut far_sum, mut far_count) = (0.0f32, 0.0f32, 0.0f32, 0.0f32, 0.0f32);
        for &(x, v) in &between {
            let d = distance(x, sub);
            if sub < MIN_SUB_PERIOD {
                // Every position is within a pixel of a tooth of a two-pixel comb: each
                // counts as tooth and as gap, weighted by its distance.
                let d = d.min(1.0);
                tooth_sum += (1.0 - d) * v;
                tooth_weight += 1.0 - d;
                near += (1.0 - d) * v;
                far_sum += d * v;
                far_count += d;
            } else if d < 1.0 {
                tooth_sum += (1.0 - d) * v;
                tooth_weight += 1.0 - d;
                near += v;
            } else {
                far_sum += v;
                far_count += 1.0;
            }
        }
        if near < FINER_GRID_SHARE * total || tooth_weight <= 0.0 || far_count <= 0.0 {
            continue;
        }
        let (t, m) = (tooth_sum / tooth_weight, far_sum / far_count);
        best = best.max((t - m) / (t + m));
    }
    best
}

/// [`fit_square_cells`] without the check for a finer grid.
fn fit_square_cells_below(
    x: &[f32],
    y: &[f32],
    min_period: f32,
    max_period: f32,
    fixed_phase: Option<(f32, f32)>,
) -> (Option<CombFit>, Option<CombFit>) {
    let min_period = min_period.max(MIN_PERIOD);
    let max_period = longest_period(x, max_period).max(longest_period(y, max_period));
    let Some((joint, _)) = best_rung(&ladder(&[x, y], min_period, max_period, LADDER_STEP)) else {
        return (None, None);
    };
    let joint = coarsen(&[x, y], joint, max_period);
    let axis = |prof: &[f32], phase: Option<f32>| {
        fit_comb(prof, (joint / MAX_ASPECT).max(min_period), (joint * MAX_ASPECT).min(max_period), phase)
    };
    (axis(x, fixed_phase.map(|p| p.0)), axis(y, fixed_phase.map(|p| p.1)))
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
    fn a_one_pixel_frame_gets_its_true_cell_size() {
        // A one-pixel frame around a flat square at 5x: edges only at 10, 15, 145 and 150.
        // Of three sub-combs of the 5-pixel comb one is empty by chance, but two carry
        // edges, so the period must not be tripled.
        let mut prof = vec![0.0f32; 161];
        for (x, v) in [(10, 140.0), (15, 37.14), (145, 37.14), (150, 140.0)] {
            prof[x] = v;
        }
        let fit = fit_comb(&prof, 2.0, 40.0, None).unwrap();
        assert!((fit.period - 5.0).abs() < 0.25, "{fit:?}");
        // Fitted on both axes together, the local fits lean to 5.28 px, whose whole-profile
        // scan finds 5.19 (25 cells across the flat middle instead of 26); 5.0 puts the
        // frame's outer edges 28 cells apart and scores best.
        let (x, y) = fit_square_cells(&prof, &prof, 2.0, 40.0, None);
        for fit in [x.unwrap(), y.unwrap()] {
            assert!((fit.period - 5.0).abs() < 0.01, "{fit:?}");
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

    #[test]
    fn a_tiled_texture_gets_its_cells_not_its_tile() {
        // A wall texture at 4 px per cell, tiling every 8 cells: faint edges of irregular
        // strength on every cell line, the tile's border much stronger. The tile's comb
        // outranks the cells' on the ladder; the edges between its teeth show the cells.
        let mut prof = vec![0.0f32; 257];
        for line in 1..64 {
            let strength = if line % 8 == 0 { 14.0 } else { 0.3 + (crate::rng::splitmix64(line as u64) % 8) as f32 * 0.1 };
            prof[line * 4] = strength;
        }
        let (tile, _) = fit_square_cells_below(&prof, &prof, 2.0, 40.0, None);
        let tile = tile.unwrap();
        assert!((tile.period - 32.0).abs() < 0.5, "the case this guards against: {tile:?}");
        assert!(finer_grid_contrast(&prof, &tile) >= FINER_GRID_CONTRAST);
        let (x, y) = fit_square_cells(&prof, &prof, 2.0, 40.0, None);
        for fit in [x.unwrap(), y.unwrap()] {
            assert!((fit.period - 4.0).abs() < 0.05, "{fit:?}");
            assert!(finer_grid_contrast(&prof, &fit) < FINER_GRID_CONTRAST, "{fit:?}");
        }
        // A true grid of 32 px cells with noise between its lines stays as it is.
        let noisy: Vec<f32> = (0..257).map(|x| if x % 32 == 0 { 14.0 } else { (crate::rng::splitmix64(x as u64 + 99) % 10) as f32 * 0.03 }).collect();
        let (x, _) = fit_square_cells(&noisy, &noisy, 2.0, 40.0, None);
        assert!((x.unwrap().period - 32.0).abs() < 0.5, "{x:?}");
    }
}

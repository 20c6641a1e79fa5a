//! [`auto_palette`]: weighted clustering in OKLab, as described in the module docs of
//! [`crate::palette`], whose numbered steps the comments here refer to.

use super::{closest, finite_or_zero, nearest_index, rounded_srgb8, Palette};
use crate::colour::{srgb8_to_oklab, Oklab};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

/// Default OKLab distance below which clusters merge: about two just-noticeable
/// differences (see the module docs for why).
pub const DEFAULT_MERGE_DISTANCE: f32 = 0.04;

/// Every sample weighs at least this, so a cluster's mean is always defined.
const MIN_SAMPLE_WEIGHT: f64 = 1e-6;
/// Edge of the pooling cubes as a fraction of the merge distance: the cube's diagonal,
/// 0.87 x the merge distance, stays below it, so a cube only pools colours that merge anyway.
const SEED_CUBE_FRACTION: f32 = 0.5;
/// Smallest pooling cube edge, so a merge distance of 0 still pools exact duplicates.
const MIN_SEED_CUBE: f32 = 1.0 / 1024.0;
/// The pooling cubes grow until there are at most this many, which bounds the work.
const MAX_SEEDS: usize = 4096;
/// With `--colors N`, up to this many distinct sRGB8 colours are the seeds themselves.
const MAX_UNPOOLED_POINTS: usize = 256;
/// A cluster at most this fraction of its neighbour's weight may be absorbed as its noise.
const ABSORB_WEIGHT_RATIO: f32 = 0.5;
/// How many RMS spreads of the heavier cluster a fragment may lie from it and be absorbed.
const ABSORB_SPREAD_MULTIPLE: f32 = 3.5;
/// The absorbing reach never exceeds this multiple of the merge distance, so a far accent
/// is never absorbed however noisy its neighbour.
const ABSORB_MAX_FACTOR: f32 = 2.0;
/// Most Lloyd passes per refinement (fewer when the assignment stops changing).
const LLOYD_ITERATIONS: usize = 2;
/// Smallest reach, so scores stay finite when the merge distance is 0.
const MIN_REACH: f32 = 1e-6;
/// Above this many clusters, merging finds neighbours through a grid instead of scanning
/// every cluster.
const MAX_SCANNED_CLUSTERS: usize = 512;

/// Options for [`auto_palette`].
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AutoPaletteOptions {
    /// OKLab distance below which clusters merge (near-duplicates). Default
    /// [`DEFAULT_MERGE_DISTANCE`]; negative or non-finite values count as 0.
    pub merge_distance: f32,
    /// `Some(N)`: the palette has exactly `min(N, distinct sample colours)` colours and
    /// `merge_distance` only orders the merges (`--colors N`). `Some(0)` counts as 1.
    pub max_colours: Option<usize>,
}

impl Default for AutoPaletteOptions {
    fn default() -> Self {
        Self { merge_distance: DEFAULT_MERGE_DISTANCE, max_colours: None }
    }
}

/// Chooses a palette for weighted OKLab samples; returns the palette and, for each sample,
/// its palette index (the nearest palette colour, exactly as [`super::snap_to_palette`]).
/// Empty input gives an empty palette.
///
/// # Panics
/// If `samples` and `weights` differ in length.
pub fn auto_palette(samples: &[Oklab], weights: &[f32], opts: &AutoPaletteOptions) -> (Palette, Vec<usize>) {
    assert_eq!(samples.len(), weights.len(), "auto_palette needs exactly one weight per sample");
    if samples.is_empty() {
        return (Palette::default(), Vec::new());
    }
    let merge_distance = if opts.merge_distance.is_finite() { opts.merge_distance.max(0.0) } else { 0.0 };
    let (colours, sample_seed) = match opts.max_colours {
        None => palette_by_distance(samples, weights, merge_distance),
        Some(n) => palette_of_size(samples, weights, merge_distance, n.max(1)),
    };
    finish(samples, &sample_seed, colours, opts.max_colours.is_none())
}

/// Steps 1-4 without a colour count: clusters merge while they are close. Returns the
/// weighted colours and each sample's seed.
fn palette_by_distance(samples: &[Oklab], weights: &[f32], merge_distance: f32) -> (Vec<([u8; 3], f64)>, Vec<u32>) {
    let units: Vec<Moments> =
        samples.iter().zip(weights).map(|(&s, &w)| Moments::of(finite_or_zero(s), sample_weight(w))).collect();
    let (seeds, sample_seed) = pool_in_cubes(&units, merge_distance, 1);
    let leaders = gather_around_leaders(&seeds, merge_distance);
    let clusters = merge_clusters(leaders, merge_distance, 1, false);
    (round_and_dedupe(&refine(&seeds, clusters, merge_distance, 1, false)), sample_seed)
}

/// Steps 1-4 for `--colors n`: exactly `min(n, distinct sRGB8 colours)` colours. Returns
/// the weighted colours and each sample's seed.
fn palette_of_size(samples: &[Oklab], weights: &[f32], merge_distance: f32, n: usize) -> (Vec<([u8; 3], f64)>, Vec<u32>) {
    let (points, sample_point) = group_by_srgb8(samples, weights);
    if points.len() <= n {
        return (points.iter().map(|p| (p.rgb, p.moments.weight)).collect(), sample_point);
    }
    let units: Vec<Moments> = points.iter().map(|p| p.moments).collect();
    let (seeds, sample_seed) = if units.len() <= MAX_UNPOOLED_POINTS {
        (units, sample_point)
    } else {
        let (seeds, point_seed) = pool_in_cubes(&units, merge_distance, n);
        (seeds, sample_point.iter().map(|&p| point_seed[p as usize]).collect())
    };
    // Leaders gather within a radius that shrinks until there are at least n of them.
    let mut radius = merge_distance;
    let mut leaders = gather_around_leaders(&seeds, radius);
    while leaders.len() < n {
        if radius <= MIN_SEED_CUBE {
            leaders = seeds.clone();
            break;
        }
        radius /= 2.0;
        leaders = gather_around_leaders(&seeds, radius);
    }
    // The merges that score below 1 come first in closest-first order, and the bounded
    // search finds them cheaply; the rest continue without a bound until n remain.
    let clusters = merge_clusters(leaders, merge_distance, n, false);
    let clusters = merge_clusters(clusters, merge_distance, n, true);
    let mut colours = round_and_dedupe(&refine(&seeds, clusters, merge_distance, n, true));
    fill_to(&mut colours, &points, n);
    (colours, sample_seed)
}

/// Weighted sums over a set of colours: enough for their mean and spread, merged in O(1).
#[derive(Clone, Copy, Debug, Default)]
struct Moments {
    weight: f64,
    sum: [f64; 3],
    /// Sum of weight x squared norm, for the spread.
    sum_sq: f64,
}

impl Moments {
    fn of(c: Oklab, weight: f64) -> Moments {
        let v = [f64::from(c.l), f64::from(c.a), f64::from(c.b)];
        Moments { weight, sum: v.map(|x| x * weight), sum_sq: weight * (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]) }
    }

    fn add(&mut self, o: &Moments) {
        self.weight += o.weight;
        for (s, t) in self.sum.iter_mut().zip(o.sum) {
            *s += t;
        }
        self.sum_sq += o.sum_sq;
    }

    fn mean(&self) -> Oklab {
        let [l, a, b] = self.sum.map(|s| (s / self.weight) as f32);
        Oklab { l, a, b }
    }

    /// RMS distance of the colours from their mean.
    fn spread(&self) -> f32 {
        let m = self.sum.map(|s| s / self.weight);
        let variance = self.sum_sq / self.weight - (m[0] * m[0] + m[1] * m[1] + m[2] * m[2]);
        variance.max(0.0).sqrt() as f32
    }
}

fn sample_weight(w: f32) -> f64 {
    let w = if w.is_finite() { f64::from(w) } else { 0.0 };
    w.max(MIN_SAMPLE_WEIGHT)
}

/// The samples that round to one sRGB8 colour.
struct Point {
    rgb: [u8; 3],
    /// Weighted mean of the samples.
    lab: Oklab,
    moments: Moments,
}

/// For `--colors N`: samples grouped by the sRGB8 colour they round to, in colour
/// order, which gives the number of distinct colours; and each sample's group.
fn group_by_srgb8(samples: &[Oklab], weights: &[f32]) -> (Vec<Point>, Vec<u32>) {
    let pack = |[r, g, b]: [u8; 3]| u32::from_be_bytes([0, r, g, b]);
    let mut keyed: Vec<(u32, u32)> = samples.iter().zip(0..).map(|(&s, i)| (pack(rounded_srgb8(s)), i)).collect();
    keyed.sort_unstable();
    let mut sample_point = vec![0; samples.len()];
    let points = keyed
        .chunk_by(|x, y| x.0 == y.0)
        .zip(0..)
        .map(|(run, p)| {
            let mut moments = Moments::default();
            for &(_, i) in run {
                let i = i as usize;
                moments.add(&Moments::of(finite_or_zero(samples[i]), sample_weight(weights[i])));
                sample_point[i] = p;
            }
            let [_, r, g, b] = run[0].0.to_be_bytes();
            Point { rgb: [r, g, b], lab: moments.mean(), moments }
        })
        .collect();
    (points, sample_point)
}

/// Step 1: units pooled in grid cubes of edge `merge_distance / 2`, doubled until at most
/// [`MAX_SEEDS`] cubes, then halved while fewer than `min_count` (so `--colors N` has at
/// least N seeds where the colours allow). Returns the cubes and each unit's cube.
fn pool_in_cubes(units: &[Moments], merge_distance: f32, min_count: usize) -> (Vec<Moments>, Vec<u32>) {
    let positions: Vec<Oklab> = units.iter().map(Moments::mean).collect();
    let mut edge = (merge_distance * SEED_CUBE_FRACTION).max(MIN_SEED_CUBE);
    let mut pooled = pool_at(units, &positions, edge);
    while pooled.0.len() > MAX_SEEDS {
        edge *= 2.0;
        pooled = pool_at(units, &positions, edge);
    }
    while pooled.0.len() < min_count && edge > MIN_SEED_CUBE {
        edge /= 2.0;
        pooled = pool_at(units, &positions, edge);
    }
    pooled
}

fn pool_at(units: &[Moments], positions: &[Oklab], edge: f32) -> (Vec<Moments>, Vec<u32>) {
    let mut keyed: Vec<(u64, u32)> = positions.iter().zip(0..).map(|(&c, i)| (pack_cell(cell_of(c, edge)), i)).collect();
    keyed.sort_unstable();
    let mut unit_cube = vec![0; units.len()];
    let cubes = keyed
        .chunk_by(|x, y| x.0 == y.0)
        .zip(0..)
        .map(|(run, cube)| {
            let mut moments = Moments::default();
            for &(_, i) in run {
                moments.add(&units[i as usize]);
                unit_cube[i as usize] = cube;
            }
            moments
        })
        .collect();
    (cubes, unit_cube)
}

/// Coordinates of the grid cell of edge `edge` holding `c`, clamped to 21 bits each.
fn cell_of(c: Oklab, edge: f32) -> [i64; 3] {
    const LIMIT: i64 = 1 << 20;
    [c.l, c.a, c.b].map(|v| ((v / edge).floor() as i64).clamp(-LIMIT, LIMIT - 1))
}

fn pack_cell(cell: [i64; 3]) -> u64 {
    const OFFSET: i64 = 1 << 20;
    cell.iter().fold(0u64, |key, &v| (key << 21) | (v + OFFSET) as u64)
}

/// Step 2: seeds, heaviest first, each join the nearest leader within `radius` (a leader
/// is the first seed of its group and stays where that seed was) or become a leader.
fn gather_around_leaders(seeds: &[Moments], radius: f32) -> Vec<Moments> {
    if radius <= 0.0 {
        return seeds.to_vec();
    }
    let mut order: Vec<usize> = (0..seeds.len()).collect();
    order.sort_by(|&x, &y| seeds[y].weight.total_cmp(&seeds[x].weight).then(x.cmp(&y)));
    let positions: Vec<Oklab> = seeds.iter().map(Moments::mean).collect();
    let mut leaders: Vec<(Oklab, Moments)> = Vec::new();
    let mut grid = Grid::new(radius, &positions);
    let mut near = Vec::new();
    for s in order {
        let c = positions[s];
        near.clear();
        grid.push_neighbours(c, &mut near);
        let mut best: Option<(f32, u32)> = None;
        for &l in &near {
            let d2 = leaders[l as usize].0.dist2(c);
            if d2 < radius * radius && best.is_none_or(|b| (d2, l) < b) {
                best = Some((d2, l));
            }
        }
        match best {
            Some((_, l)) => leaders[l as usize].1.add(&seeds[s]),
            None => {
                grid.insert(c, leaders.len() as u32);
                leaders.push((c, seeds[s]));
            }
        }
    }
    leaders.into_iter().map(|(_, m)| m).collect()
}

/// Indices of things by grid cell, for finding everything within `reach` of a colour: a
/// dense grid over the bounding box of the positions it was made for. A query looks at the
/// cells meeting the cube of half-side `reach`, which finds everything within `reach` for
/// any cell edge; the edge is twice the reach (8 cells a query), widened when the box would
/// need more than [`MAX_GRID_CELLS_PER_AXIS`] cells along an axis. Positions outside the
/// box fall in its border cells, which keeps queries correct.
struct Grid {
    reach: f32,
    edge: f32,
    origin: [f32; 3],
    dims: [usize; 3],
    cells: Vec<Vec<u32>>,
}

/// Most cells along one axis of a [`Grid`].
const MAX_GRID_CELLS_PER_AXIS: usize = 64;

impl Grid {
    fn new(reach: f32, positions: &[Oklab]) -> Grid {
        let mut lo = [f32::INFINITY; 3];
        let mut hi = [f32::NEG_INFINITY; 3];
        for p in positions {
            for (axis, v) in [p.l, p.a, p.b].into_iter().enumerate() {
                lo[axis] = lo[axis].min(v);
                hi[axis] = hi[axis].max(v);
            }
        }
        if positions.is_empty() {
            (lo, hi) = ([0.0; 3], [0.0; 3]);
        }
        let extent = (0..3).map(|axis| hi[axis] - lo[axis]).fold(0.0f32, f32::max);
        let edge = (2.0 * reach).max(extent / MAX_GRID_CELLS_PER_AXIS as f32).max(f32::MIN_POSITIVE);
        let dims = std::array::from_fn(|axis| (((hi[axis] - lo[axis]) / edge) as usize + 1).min(MAX_GRID_CELLS_PER_AXIS + 1));
        Grid { reach, edge, origin: lo, dims, cells: vec![Vec::new(); dims.iter().product()] }
    }

    /// The cell coordinates of `v` along `axis`, clamped to the grid.
    fn coordinate(&self, v: f32, axis: usize) -> usize {
        (((v - self.origin[axis]) / self.edge).floor().max(0.0) as usize).min(self.dims[axis] - 1)
    }

    fn cell(&self, c: Oklab) -> usize {
        let [x, y, z] = [self.coordinate(c.l, 0), self.coordinate(c.a, 1), self.coordinate(c.b, 2)];
        (x * self.dims[1] + y) * self.dims[2] + z
    }

    fn insert(&mut self, c: Oklab, i: u32) {
        let cell = self.cell(c);
        self.cells[cell].push(i);
    }

    fn remove(&mut self, c: Oklab, i: u32) {
        let cell = self.cell(c);
        if let Some(at) = self.cells[cell].iter().position(|&j| j == i) {
            self.cells[cell].swap_remove(at);
        }
    }

    /// Appends everything in the cells that meet the cube of half-side `reach` around `c`
    /// (a superset of everything within `reach`).
    fn push_neighbours(&self, c: Oklab, out: &mut Vec<u32>) {
        let r = self.reach;
        let range = |v: f32, axis: usize| self.coordinate(v - r, axis)..=self.coordinate(v + r, axis);
        for x in range(c.l, 0) {
            for y in range(c.a, 1) {
                let row = (x * self.dims[1] + y) * self.dims[2];
                for z in range(c.b, 2) {
                    out.extend_from_slice(&self.cells[row + z]);
                }
            }
        }
    }
}

/// A possible merge: `owner`'s best merge is with `other`, at `score`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Candidate {
    score: f32,
    owner: u32,
    other: u32,
}

impl Eq for Candidate {}

impl Ord for Candidate {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.score.total_cmp(&o.score).then(self.owner.cmp(&o.owner)).then(self.other.cmp(&o.other))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

/// Closest-first agglomerative merging (step 3) with a cache of each cluster's best
/// merge and a heap of candidate merges. Clusters are parallel arrays, so scoring one
/// against all others is a tight loop.
struct Merger {
    moments: Vec<Moments>,
    centres: Vec<Oklab>,
    /// Each cluster's weight; negative once it has merged into another.
    weights: Vec<f32>,
    /// Squared absorbing reach: how far a fragment at most [`ABSORB_WEIGHT_RATIO`] of this
    /// weight may lie and be absorbed.
    reach2: Vec<f32>,
    /// Squared merge distance.
    merge2: f32,
    /// Squared distance beyond which a pair cannot score below the limit (infinite when
    /// the limit is).
    max_reach2: f32,
    merge_distance: f32,
    count: usize,
    /// Each cluster's best merge (score, other) among those scoring below `limit`.
    nearest: Vec<Option<(f32, u32)>>,
    heap: BinaryHeap<Reverse<Candidate>>,
    /// `None`: every cluster is a candidate partner of every other.
    grid: Option<Grid>,
    /// Pairs scoring at or above this never merge: 1, or infinity when merging on past the
    /// threshold (`--colors N`).
    limit: f32,
    /// `rescanned[k] == epoch`: cluster k already looked for its best merge in this step.
    rescanned: Vec<u32>,
    /// Merge steps so far.
    epoch: u32,
    /// Reused lists of neighbours, to avoid allocations per merge.
    near_buffer: Vec<u32>,
    cell_buffer: Vec<u32>,
}

impl Merger {
    /// `use_grid` (only with a bound) finds partners through a grid rather than scanning
    /// all clusters; the result is the same.
    fn new(clusters: Vec<Moments>, merge_distance: f32, unbounded: bool, use_grid: bool) -> Merger {
        let n = clusters.len();
        let centres: Vec<Oklab> = clusters.iter().map(Moments::mean).collect();
        // Reaches lie between the merge distance and ABSORB_MAX_FACTOR (>= 1) times it.
        let grid = (use_grid && !unbounded).then(|| Grid::new(ABSORB_MAX_FACTOR * merge_distance, &centres));
        let merge_distance = merge_distance.max(MIN_REACH);
        let mut merger = Merger {
            centres,
            weights: vec![0.0; n],
            reach2: vec![0.0; n],
            moments: clusters,
            merge2: merge_distance * merge_distance,
            max_reach2: if unbounded { f32::INFINITY } else { (ABSORB_MAX_FACTOR * merge_distance).powi(2) },
            merge_distance,
            count: n,
            nearest: vec![None; n],
            heap: BinaryHeap::new(),
            grid,
            limit: if unbounded { f32::INFINITY } else { 1.0 },
            rescanned: vec![0; n],
            epoch: 0,
            near_buffer: Vec::new(),
            cell_buffer: Vec::new(),
        };
        for i in 0..n {
            merger.refresh(i);
            if let Some(grid) = &mut merger.grid {
                grid.insert(merger.centres[i], i as u32);
            }
        }
        merger
    }

    /// Recomputes the derived arrays of cluster `i` from its moments.
    fn refresh(&mut self, i: usize) {
        let m = &self.moments[i];
        let reach = (ABSORB_SPREAD_MULTIPLE * m.spread()).min(ABSORB_MAX_FACTOR * self.merge_distance).max(self.merge_distance);
        self.centres[i] = m.mean();
        self.weights[i] = m.weight as f32;
        self.reach2[i] = reach * reach;
    }

    fn alive(&self, i: usize) -> bool {
        self.weights[i] >= 0.0
    }

    /// Squared score of merging `i` and `j`: squared distance over the squared merge
    /// distance, or over the squared absorbing reach of the heavier for a light fragment
    /// within that reach. Beyond the reach a fragment scores like any pair, so with
    /// `--colors N` a far accent is ordered by its plain distance and merges after closer
    /// big clusters.
    #[inline(always)]
    fn score(&self, i: usize, j: usize) -> f32 {
        self.score_at(i, j, self.centres[i].dist2(self.centres[j]))
    }

    /// [`Merger::score`] given the squared distance `d2` between the two.
    #[inline(always)]
    fn score_at(&self, i: usize, j: usize, d2: f32) -> f32 {
        let (wi, wj) = (self.weights[i], self.weights[j]);
        let (light, heavy, heavy_reach2) = if wi <= wj { (wi, wj, self.reach2[j]) } else { (wj, wi, self.reach2[i]) };
        let absorbed = light <= ABSORB_WEIGHT_RATIO * heavy && d2 < heavy_reach2;
        d2 / if absorbed { heavy_reach2 } else { self.merge2 }
    }

    /// The best merge for `i`: lowest score below the limit, lowest index on a tie.
    fn best_merge(&mut self, i: usize) -> Option<(f32, u32)> {
        let mut best = (self.limit, u32::MAX);
        match &self.grid {
            Some(grid) => {
                let mut near = std::mem::take(&mut self.cell_buffer);
                near.clear();
                grid.push_neighbours(self.centres[i], &mut near);
                for &j in &near {
                    if j as usize != i {
                        let score = self.score(i, j as usize);
                        if (score, j) < best {
                            best = (score, j);
                        }
                    }
                }
                self.cell_buffer = near;
            }
            None => {
                let centre = self.centres[i];
                for j in 0..self.moments.len() {
                    // Farther than the largest reach scores at least 1: no merge below the limit 1.
                    let d2 = centre.dist2(self.centres[j]);
                    if d2 < self.max_reach2 && j != i && self.alive(j) {
                        let score = self.score_at(i, j, d2);
                        if score < best.0 {
                            best = (score, j as u32);
                        }
                    }
                }
            }
        }
        (best.1 != u32::MAX).then_some(best)
    }

    fn set_nearest(&mut self, i: usize, best: Option<(f32, u32)>) {
        self.nearest[i] = best;
        if let Some((score, other)) = best {
            self.heap.push(Reverse(Candidate { score, owner: i as u32, other }));
        }
    }

    /// Appends the clusters that may merge with one centred at `c`.
    fn push_neighbours(&self, c: Oklab, out: &mut Vec<u32>) {
        match &self.grid {
            Some(grid) => grid.push_neighbours(c, out),
            None => out.extend((0..self.moments.len() as u32).filter(|&j| self.alive(j as usize))),
        }
    }

    /// Merges until `min_count` clusters remain or no pair scores below the limit; returns
    /// the remaining clusters in index order.
    fn run(mut self, min_count: usize) -> Vec<Moments> {
        for i in 0..self.moments.len() {
            let best = self.best_merge(i);
            self.set_nearest(i, best);
        }
        while self.count > min_count {
            let Some(Reverse(c)) = self.heap.pop() else { break };
            let (i, j) = (c.owner as usize, c.other as usize);
            // Entries go stale when either side merges or finds a better partner.
            if self.alive(i) && self.alive(j) && self.nearest[i] == Some((c.score, c.other)) {
                self.merge(i, j);
            }
        }
        self.moments.into_iter().zip(self.weights).filter(|&(_, w)| w >= 0.0).map(|(m, _)| m).collect()
    }

    /// Merges the pair into the lower index and updates the best-merge cache of every
    /// cluster that could be affected.
    fn merge(&mut self, i: usize, j: usize) {
        let (kept, gone) = (i.min(j), i.max(j));
        let (old_kept, old_gone) = (self.centres[kept], self.centres[gone]);
        let gone_moments = self.moments[gone];
        self.moments[kept].add(&gone_moments);
        self.refresh(kept);
        self.weights[gone] = -1.0;
        self.nearest[gone] = None;
        self.count -= 1;
        let new_centre = self.centres[kept];
        if let Some(grid) = &mut self.grid {
            grid.remove(old_gone, gone as u32);
            grid.remove(old_kept, kept as u32);
            grid.insert(new_centre, kept as u32);
        }
        self.epoch += 1;
        let best = self.best_merge(kept);
        self.set_nearest(kept, best);

        // Whoever had one of the pair as its best merge lies near the pair's old centres
        // and must look again.
        let mut near = std::mem::take(&mut self.near_buffer);
        near.clear();
        self.push_neighbours(old_kept, &mut near);
        // Without a grid the list already holds every cluster.
        if self.grid.is_some() {
            self.push_neighbours(old_gone, &mut near);
        }
        for &k in &near {
            let k = k as usize;
            if k == kept || !self.alive(k) || self.rescanned[k] == self.epoch {
                continue;
            }
            if let Some((_, t)) = self.nearest[k] {
                if t as usize == kept || t as usize == gone {
                    self.rescanned[k] = self.epoch;
                    let best = self.best_merge(k);
                    self.set_nearest(k, best);
                }
            }
        }
        // Whoever lies near the new centre may now prefer the merged cluster.
        if self.grid.is_some() {
            near.clear();
            self.push_neighbours(new_centre, &mut near);
        }
        for &k in &near {
            let k = k as usize;
            if k == kept || !self.alive(k) || self.rescanned[k] == self.epoch {
                continue;
            }
            let d2 = self.centres[k].dist2(new_centre);
            if d2 >= self.max_reach2 {
                continue;
            }
            let score = self.score_at(k, kept, d2);
            if score < self.limit && self.nearest[k].is_none_or(|b| (score, kept as u32) < b) {
                self.set_nearest(k, Some((score, kept as u32)));
            }
        }
        self.near_buffer = near;
    }
}

/// Step 3: merges clusters closest first by [`Merger::score`] until `min_count`
/// remain; pairs scoring 1 or more merge only when `unbounded` (`--colors N`).
fn merge_clusters(clusters: Vec<Moments>, merge_distance: f32, min_count: usize, unbounded: bool) -> Vec<Moments> {
    if clusters.len() <= min_count || (!unbounded && merge_distance <= 0.0) {
        return clusters;
    }
    let use_grid = clusters.len() > MAX_SCANNED_CLUSTERS;
    Merger::new(clusters, merge_distance, unbounded, use_grid).run(min_count)
}

/// Step 4: Lloyd, then step 3 again with the refined clusters' true spreads, then Lloyd
/// again if that merged anything.
fn refine(seeds: &[Moments], clusters: Vec<Moments>, merge_distance: f32, min_count: usize, unbounded: bool) -> Vec<Moments> {
    let positions: Vec<Oklab> = seeds.iter().map(Moments::mean).collect();
    let clusters = lloyd(seeds, &positions, clusters);
    let before = clusters.len();
    let clusters = merge_clusters(clusters, merge_distance, min_count, unbounded);
    if clusters.len() == before {
        clusters
    } else {
        lloyd(seeds, &positions, clusters)
    }
}

/// Weighted Lloyd (k-means) passes over the seeds; clusters left empty disappear.
fn lloyd(seeds: &[Moments], positions: &[Oklab], mut clusters: Vec<Moments>) -> Vec<Moments> {
    let mut assignment = vec![usize::MAX; seeds.len()];
    for _ in 0..LLOYD_ITERATIONS {
        let centres: Vec<Oklab> = clusters.iter().map(Moments::mean).collect();
        let mut sums = vec![Moments::default(); centres.len()];
        let mut changed = false;
        for ((seed, &position), assigned) in seeds.iter().zip(positions).zip(&mut assignment) {
            let k = closest(&centres, position);
            changed |= *assigned != k;
            *assigned = k;
            sums[k].add(seed);
        }
        let before = sums.len();
        clusters = sums.into_iter().filter(|m| m.weight > 0.0).collect();
        if !changed && clusters.len() == before {
            break;
        }
        // Dropping an empty cluster shifts indices, so the next pass cannot compare.
        if clusters.len() != before {
            assignment.fill(usize::MAX);
        }
    }
    clusters
}

/// Step 5: each cluster's mean rounded to sRGB8, with clusters that round alike combined.
fn round_and_dedupe(clusters: &[Moments]) -> Vec<([u8; 3], f64)> {
    let mut colours: Vec<([u8; 3], f64)> = Vec::with_capacity(clusters.len());
    for m in clusters {
        let rgb = rounded_srgb8(m.mean());
        match colours.iter_mut().find(|(c, _)| *c == rgb) {
            Some((_, w)) => *w += m.weight,
            None => colours.push((rgb, m.weight)),
        }
    }
    colours
}

/// For `--colors N`: while fewer than `n` colours, adds the point colour farthest from the
/// palette (lowest point index on a tie), with weight 0. Stops when every point's colour is in.
fn fill_to(colours: &mut Vec<([u8; 3], f64)>, points: &[Point], n: usize) {
    if colours.len() >= n {
        return;
    }
    let mut present: HashSet<[u8; 3]> = colours.iter().map(|(c, _)| *c).collect();
    let lab: Vec<Oklab> = colours.iter().map(|(c, _)| srgb8_to_oklab(*c)).collect();
    let mut gap: Vec<f32> = points.iter().map(|p| lab.iter().map(|&c| c.dist2(p.lab)).fold(f32::INFINITY, f32::min)).collect();
    while colours.len() < n {
        let farthest = (0..points.len())
            .filter(|&i| !present.contains(&points[i].rgb))
            .fold(None, |best: Option<usize>, i| match best {
                Some(b) if gap[b] >= gap[i] => Some(b),
                _ => Some(i),
            });
        let Some(i) = farthest else { break };
        let added = srgb8_to_oklab(points[i].rgb);
        present.insert(points[i].rgb);
        colours.push((points[i].rgb, 0.0));
        for (g, p) in gap.iter_mut().zip(points) {
            *g = g.min(added.dist2(p.lab));
        }
    }
}

/// Orders the colours by weight (heaviest first, ties by colour), assigns every sample its
/// nearest colour, and (when `drop_unused`) drops colours no sample is nearest to.
fn finish(samples: &[Oklab], sample_seed: &[u32], mut colours: Vec<([u8; 3], f64)>, drop_unused: bool) -> (Palette, Vec<usize>) {
    colours.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
    let lab: Vec<Oklab> = colours.iter().map(|(c, _)| srgb8_to_oklab(*c)).collect();
    let mut assignments = snap_by_seed(samples, sample_seed, &lab);
    let mut used = vec![!drop_unused; colours.len()];
    for &k in &assignments {
        used[k] = true;
    }
    // Dropping keeps the order, so every sample's nearest colour stays the same one.
    let mut new_index = vec![0; colours.len()];
    let mut kept = Vec::with_capacity(colours.len());
    for (k, &(rgb, _)) in colours.iter().enumerate() {
        if used[k] {
            new_index[k] = kept.len();
            kept.push(rgb);
        }
    }
    for a in &mut assignments {
        *a = new_index[*a];
    }
    (Palette { colours: kept }, assignments)
}

/// How much wider than the seed's diameter the gap between its nearest and second-nearest
/// palette colours must be before its samples skip their own search: far above f32
/// rounding in the distances, so the shortcut never changes an answer.
const SNAP_SHORTCUT_MARGIN: f32 = 1e-4;

/// The nearest palette colour of every sample, exactly as [`nearest_index`] gives it, but
/// searched once per seed where that is certain: when the seed's nearest colour is closer
/// than its second-nearest by more than twice the distance of any of its samples from the
/// seed's centre, the triangle inequality makes it every sample's unique nearest colour.
fn snap_by_seed(samples: &[Oklab], sample_seed: &[u32], palette: &[Oklab]) -> Vec<usize> {
    let seed_count = sample_seed.iter().max().map_or(0, |&s| s as usize + 1);
    let mut sums = vec![([0.0f64; 3], 0usize); seed_count];
    for (s, &seed) in samples.iter().zip(sample_seed) {
        let c = finite_or_zero(*s);
        let (sum, count) = &mut sums[seed as usize];
        for (t, v) in sum.iter_mut().zip([c.l, c.a, c.b]) {
            *t += f64::from(v);
        }
        *count += 1;
    }
    let centres: Vec<Oklab> = sums
        .iter()
        .map(|&(sum, count)| {
            let [l, a, b] = sum.map(|t| (t / count.max(1) as f64) as f32);
            Oklab { l, a, b }
        })
        .collect();
    let mut radius2 = vec![0.0f32; seed_count];
    for (s, &seed) in samples.iter().zip(sample_seed) {
        let r2 = &mut radius2[seed as usize];
        *r2 = r2.max(finite_or_zero(*s).dist2(centres[seed as usize]));
    }
    let certain: Vec<Option<usize>> = centres
        .iter()
        .zip(&radius2)
        .map(|(&c, &r2)| {
            let (best, d1, d2) = closest_two(palette, c);
            (d2.sqrt() - d1.sqrt() > 2.0 * r2.sqrt() + SNAP_SHORTCUT_MARGIN).then_some(best)
        })
        .collect();
    samples
        .iter()
        .zip(sample_seed)
        .map(|(&s, &seed)| certain[seed as usize].unwrap_or_else(|| nearest_index(palette, s)))
        .collect()
}

/// The index of the entry nearest to `c` (lowest on a tie) and the squared distances to the
/// nearest and second-nearest entries (infinite when there is no second).
fn closest_two(colours: &[Oklab], c: Oklab) -> (usize, f32, f32) {
    let (mut best, mut d1, mut d2) = (0, f32::INFINITY, f32::INFINITY);
    for (i, p) in colours.iter().enumerate() {
        let d = c.dist2(*p);
        if d < d1 {
            (best, d1, d2) = (i, d, d1);
        } else if d < d2 {
            d2 = d;
        }
    }
    (best, d1, d2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::palette::snap_to_palette;
    use crate::rng::rng_from_seed;
    use proptest::prelude::*;
    use rand::Rng;
    use rand_distr::{Distribution, Normal};

    /// Five colours at least 0.15 apart in OKLab, none at the gamut's edge.
    const FIVE: [[u8; 3]; 5] = [[40, 40, 80], [200, 50, 50], [230, 200, 70], [60, 160, 80], [150, 190, 240]];

    /// `c` plus independent noise on each OKLab axis.
    fn jitter(c: Oklab, noise: &Normal<f32>, rng: &mut impl Rng) -> Oklab {
        Oklab { l: c.l + noise.sample(rng), a: c.a + noise.sample(rng), b: c.b + noise.sample(rng) }
    }

    /// `per` samples around each colour with OKLab noise `sigma` on every axis, weights
    /// uniform in [0.5, 2); returns samples, weights and each sample's true colour index.
    fn noisy_clouds(colours: &[Oklab], per: usize, sigma: f32, seed: u64) -> (Vec<Oklab>, Vec<f32>, Vec<usize>) {
        let mut rng = rng_from_seed(seed);
        let noise = Normal::new(0.0f32, sigma).unwrap();
        let (mut samples, mut weights, mut truth) = (Vec::new(), Vec::new(), Vec::new());
        for (k, c) in colours.iter().enumerate() {
            for _ in 0..per {
                samples.push(jitter(*c, &noise, &mut rng));
                weights.push(rng.random_range(0.5..2.0));
                truth.push(k);
            }
        }
        (samples, weights, truth)
    }

    fn lab(colours: &[[u8; 3]]) -> Vec<Oklab> {
        colours.iter().map(|&c| srgb8_to_oklab(c)).collect()
    }

    fn min_pairwise_distance(colours: &[Oklab]) -> f32 {
        let mut best = f32::INFINITY;
        for (i, a) in colours.iter().enumerate() {
            for b in &colours[i + 1..] {
                best = best.min(a.dist(*b));
            }
        }
        best
    }

    /// Checks that each true colour has a palette colour within 0.01 OKLab (the mean of 200
    /// samples is off by ~0.001, sRGB8 rounding by up to ~0.003), and that every sample is
    /// assigned the palette colour of its true colour.
    fn assert_recovers(truth_colours: &[Oklab], palette: &Palette, assignments: &[usize], truth: &[usize]) {
        let found = palette.oklab();
        let matched: Vec<usize> = truth_colours.iter().map(|&t| nearest_index(&found, t)).collect();
        for (t, &m) in truth_colours.iter().zip(&matched) {
            assert!(t.dist(found[m]) < 0.01, "true {t:?} vs found {:?} ({})", found[m], t.dist(found[m]));
        }
        for (s, (&a, &t)) in assignments.iter().zip(truth).enumerate() {
            assert_eq!(a, matched[t], "sample {s} of true colour {t}");
        }
    }

    #[test]
    fn five_noisy_colours_give_exactly_five_accurate_colours() {
        let truth_colours = lab(&FIVE);
        assert!(min_pairwise_distance(&truth_colours) > 0.15);
        // Several seeds, since the tail of each noise cloud is where spurious colours appear.
        for seed in 0..20 {
            let (samples, weights, truth) = noisy_clouds(&truth_colours, 200, 0.015, seed);
            let (palette, assignments) = auto_palette(&samples, &weights, &AutoPaletteOptions::default());
            assert_eq!(palette.colours.len(), 5, "seed {seed}: {:?}", palette.colours);
            assert_recovers(&truth_colours, &palette, &assignments, &truth);
        }
    }

    #[test]
    fn a_single_far_sample_is_kept_as_an_accent() {
        let truth_colours = lab(&FIVE);
        let accent = srgb8_to_oklab([250, 120, 250]);
        assert!(truth_colours.iter().all(|c| c.dist(accent) > 0.15));
        for seed in 0..5 {
            let (mut samples, mut weights, mut truth) = noisy_clouds(&truth_colours, 200, 0.015, seed);
            samples.push(accent);
            weights.push(1.0);
            truth.push(5);
            let (palette, assignments) = auto_palette(&samples, &weights, &AutoPaletteOptions::default());
            assert_eq!(palette.colours.len(), 6, "seed {seed}: {:?}", palette.colours);
            assert!(palette.colours.contains(&[250, 120, 250]), "the accent keeps its exact colour");
            let all: Vec<Oklab> = truth_colours.iter().copied().chain([accent]).collect();
            assert_recovers(&all, &palette, &assignments, &truth);
        }
    }

    #[test]
    fn colours_closer_than_the_merge_distance_merge() {
        // The first colour twice, 0.01 apart in lightness: one colour, not two.
        let mut truth_colours = lab(&FIVE);
        let twin = Oklab { l: truth_colours[0].l + 0.01, ..truth_colours[0] };
        truth_colours.push(twin);
        let (samples, weights, _) = noisy_clouds(&truth_colours, 200, 0.015, 7);
        let (palette, _) = auto_palette(&samples, &weights, &AutoPaletteOptions::default());
        assert_eq!(palette.colours.len(), 5, "{:?}", palette.colours);
        // The merged colour lies between the twins (within 0.01 of their midpoint).
        let mid = Oklab { l: truth_colours[0].l + 0.005, ..truth_colours[0] };
        assert!(palette.oklab().iter().any(|c| c.dist(mid) < 0.01));

        // Noise-free too: two exact colours 0.03 apart merge, 0.05 apart do not.
        let base = Oklab { l: 0.5, a: 0.05, b: -0.05 };
        for (gap, expected) in [(0.03, 1), (0.05, 2)] {
            let pair = [base, Oklab { l: base.l + gap, ..base }];
            let (palette, _) = auto_palette(&pair, &[1.0, 1.0], &AutoPaletteOptions::default());
            assert_eq!(palette.colours.len(), expected, "gap {gap}");
        }
    }

    #[test]
    fn a_small_distinct_shade_next_to_a_big_noisy_colour_is_kept() {
        // 1,000 samples of a colour and 20 of a shade 0.1 darker: the shade is its own
        // cluster, not the big colour's noise (absorbed only within 2 x 0.04 = 0.08).
        let big = srgb8_to_oklab([150, 110, 90]);
        let shade = Oklab { l: big.l - 0.1, ..big };
        let (mut samples, mut weights, mut truth) = noisy_clouds(&[big], 1000, 0.015, 3);
        let (s, w, _) = noisy_clouds(&[shade], 20, 0.015, 4);
        samples.extend(s);
        weights.extend(w);
        truth.extend([1; 20]);
        let (palette, _) = auto_palette(&samples, &weights, &AutoPaletteOptions::default());
        assert_eq!(palette.colours.len(), 2, "{:?}", palette.colours);
        assert!(palette.oklab()[1].dist(shade) < 0.015, "the lighter cluster is the shade: {:?}", palette.colours);
    }

    #[test]
    fn max_colours_gives_exactly_that_many_and_keeps_accents_while_it_can() {
        let truth_colours = lab(&FIVE);
        let (samples, weights, _) = noisy_clouds(&truth_colours, 200, 0.015, 11);
        for n in [1, 3, 5, 8, 40] {
            let opts = AutoPaletteOptions { max_colours: Some(n), ..Default::default() };
            let (palette, assignments) = auto_palette(&samples, &weights, &opts);
            assert_eq!(palette.colours.len(), n, "{n}: {:?}", palette.colours);
            assert_eq!(assignments, snap_to_palette(&samples, &palette));
        }
        // N = 5 with a far accent: the two closest true colours merge, the accent stays.
        let accent = srgb8_to_oklab([255, 0, 255]);
        let nearest_to_accent = truth_colours.iter().map(|c| c.dist(accent)).fold(f32::INFINITY, f32::min);
        let closest_pair = min_pairwise_distance(&truth_colours);
        assert!(nearest_to_accent > closest_pair, "the test needs the accent farther than the closest pair");
        let (mut samples, mut weights) = (samples, weights);
        samples.push(accent);
        weights.push(1.0);
        let opts = AutoPaletteOptions { max_colours: Some(5), ..Default::default() };
        let (palette, _) = auto_palette(&samples, &weights, &opts);
        assert_eq!(palette.colours.len(), 5);
        assert!(palette.colours.contains(&[255, 0, 255]), "{:?}", palette.colours);
        // Fewer distinct colours than N: exactly those colours.
        let few = lab(&[[1, 2, 3], [200, 100, 0], [1, 2, 3]]);
        let opts = AutoPaletteOptions { max_colours: Some(16), ..Default::default() };
        let (palette, assignments) = auto_palette(&few, &[1.0, 1.0, 5.0], &opts);
        assert_eq!(palette.colours, vec![[1, 2, 3], [200, 100, 0]], "heaviest first");
        assert_eq!(assignments, vec![0, 1, 0]);
    }

    #[test]
    fn degenerate_inputs_give_valid_results() {
        let opts = AutoPaletteOptions::default();
        assert_eq!(auto_palette(&[], &[], &opts), (Palette::default(), vec![]));
        let nan = Oklab { l: f32::NAN, a: f32::INFINITY, b: 0.0 };
        let (palette, assignments) = auto_palette(&[nan, srgb8_to_oklab([255, 255, 255])], &[f32::NAN, -3.0], &opts);
        assert_eq!(palette.colours.len(), 2, "black (the NaN sample) and white");
        assert_eq!(assignments.len(), 2);
        assert_eq!(palette.colours[assignments[0]], [0, 0, 0]);
        let zero = AutoPaletteOptions { merge_distance: 0.0, max_colours: None };
        let close = lab(&[[100, 100, 100], [101, 100, 100]]);
        assert_eq!(auto_palette(&close, &[1.0, 1.0], &zero).0.colours.len(), 2, "merge distance 0 keeps distinct colours");
        let nan_distance = AutoPaletteOptions { merge_distance: f32::NAN, max_colours: Some(0) };
        assert_eq!(auto_palette(&close, &[1.0, 1.0], &nan_distance).0.colours.len(), 1, "Some(0) counts as 1");
    }

    /// `count` clusters of 1-6 samples each (so they have spreads), scattered over part of
    /// the gamut with a few heavy ones, for exercising the merging and leader searches.
    fn random_clusters(count: usize, seed: u64) -> Vec<Moments> {
        let mut rng = rng_from_seed(seed);
        let noise = Normal::new(0.0f32, 0.01).unwrap();
        (0..count)
            .map(|_| {
                let c = Oklab { l: rng.random_range(0.2..0.8), a: rng.random_range(-0.1..0.1), b: rng.random_range(-0.1..0.1) };
                let heavy = if rng.random_bool(0.1) { 50.0 } else { 1.0 };
                let mut m = Moments::default();
                for _ in 0..rng.random_range(1..=6) {
                    m.add(&Moments::of(jitter(c, &noise, &mut rng), heavy * f64::from(rng.random_range(0.5f32..2.0))));
                }
                m
            })
            .collect()
    }

    fn bits(clusters: &[Moments]) -> Vec<[u64; 5]> {
        clusters.iter().map(|m| [m.weight, m.sum[0], m.sum[1], m.sum[2], m.sum_sq].map(f64::to_bits)).collect()
    }

    #[test]
    fn merging_through_the_grid_equals_scanning_every_cluster() {
        for (seed, merge_distance) in [(1, 0.03), (2, 0.05), (3, 0.01)] {
            let clusters = random_clusters(700, seed);
            let scanned = Merger::new(clusters.clone(), merge_distance, false, false).run(1);
            let gridded = Merger::new(clusters, merge_distance, false, true).run(1);
            assert!(scanned.len() < 650, "the test should merge plenty: {}", scanned.len());
            assert_eq!(bits(&scanned), bits(&gridded), "seed {seed}");
        }
    }

    #[test]
    fn leaders_are_the_nearest_within_the_radius() {
        let seeds = random_clusters(500, 4);
        let radius = 0.04;
        // Brute force: heaviest first, nearest existing leader within the radius.
        let mut order: Vec<usize> = (0..seeds.len()).collect();
        order.sort_by(|&x, &y| seeds[y].weight.total_cmp(&seeds[x].weight).then(x.cmp(&y)));
        let mut expected: Vec<(Oklab, Moments)> = Vec::new();
        for s in order {
            let c = seeds[s].mean();
            let best = (0..expected.len())
                .map(|l| (expected[l].0.dist2(c), l))
                .filter(|&(d2, _)| d2 < radius * radius)
                .min_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
            match best {
                Some((_, l)) => expected[l].1.add(&seeds[s]),
                None => expected.push((c, seeds[s])),
            }
        }
        let expected: Vec<Moments> = expected.into_iter().map(|(_, m)| m).collect();
        let leaders = gather_around_leaders(&seeds, radius);
        assert!(leaders.len() < 400 && leaders.len() > 20, "{}", leaders.len());
        assert_eq!(bits(&leaders), bits(&expected));
    }

    #[test]
    fn large_spread_inputs_keep_every_guarantee() {
        // 6,000 random colours: over 256 distinct (the pooled --colors path), and with a
        // small merge distance over 512 leaders (the grid merging path).
        let mut rng = rng_from_seed(9);
        let samples: Vec<Oklab> = (0..6000).map(|_| srgb8_to_oklab([rng.random(), rng.random(), rng.random()])).collect();
        let weights: Vec<f32> = (0..6000).map(|_| rng.random_range(0.0..3.0)).collect();
        let distinct: HashSet<[u8; 3]> = samples.iter().map(|&s| rounded_srgb8(s)).collect();
        let units: Vec<Moments> = samples.iter().map(|&s| Moments::of(s, 1.0)).collect();
        let leaders = gather_around_leaders(&pool_in_cubes(&units, 0.02, 1).0, 0.02);
        assert!(leaders.len() > MAX_SCANNED_CLUSTERS, "{} leaders", leaders.len());
        for opts in [
            AutoPaletteOptions { merge_distance: 0.02, max_colours: None },
            AutoPaletteOptions { merge_distance: 0.04, max_colours: Some(40) },
            AutoPaletteOptions { merge_distance: 0.04, max_colours: Some(300) },
        ] {
            let (palette, assignments) = auto_palette(&samples, &weights, &opts);
            assert_eq!(assignments, snap_to_palette(&samples, &palette), "{opts:?}");
            let unique: HashSet<[u8; 3]> = palette.colours.iter().copied().collect();
            assert_eq!(unique.len(), palette.colours.len(), "{opts:?}");
            if let Some(n) = opts.max_colours {
                assert_eq!(palette.colours.len(), n.min(distinct.len()));
            }
        }
    }

    /// Samples around a few base colours (so there are clusters and duplicates), with
    /// weights that may be 0.
    fn samples_and_weights() -> impl Strategy<Value = (Vec<Oklab>, Vec<f32>)> {
        let base = proptest::collection::vec(any::<[u8; 3]>(), 1..8);
        base.prop_flat_map(|base| {
            let n = base.len();
            proptest::collection::vec((0..n, -0.03f32..0.03, -0.03f32..0.03, -0.03f32..0.03, 0.0f32..5.0), 0..150).prop_map(
                move |v| {
                    v.into_iter()
                        .map(|(k, dl, da, db, w)| {
                            let c = srgb8_to_oklab(base[k]);
                            (Oklab { l: c.l + dl, a: c.a + da, b: c.b + db }, w)
                        })
                        .unzip()
                },
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        // Assignments index the palette and are the nearest colours; the palette has no
        // duplicates; with Some(N) it has exactly min(N, distinct sample colours) colours.
        #[test]
        fn assignments_index_the_palette(
            (samples, weights) in samples_and_weights(),
            merge_distance in 0.0f32..0.2,
            max_colours in proptest::option::of(1usize..12),
        ) {
            let opts = AutoPaletteOptions { merge_distance, max_colours };
            let (palette, assignments) = auto_palette(&samples, &weights, &opts);
            prop_assert_eq!(assignments.len(), samples.len());
            prop_assert_eq!(palette.colours.is_empty(), samples.is_empty());
            prop_assert!(assignments.iter().all(|&a| a < palette.colours.len()));
            prop_assert_eq!(&assignments, &snap_to_palette(&samples, &palette));
            let distinct_in_palette: HashSet<[u8; 3]> = palette.colours.iter().copied().collect();
            prop_assert_eq!(distinct_in_palette.len(), palette.colours.len());
            if let Some(n) = max_colours {
                let distinct: HashSet<[u8; 3]> = samples.iter().map(|&s| rounded_srgb8(s)).collect();
                prop_assert_eq!(palette.colours.len(), n.min(distinct.len()));
            } else {
                let mut used = vec![false; palette.colours.len()];
                for &a in &assignments { used[a] = true; }
                prop_assert!(used.iter().all(|&u| u), "every colour is some sample's nearest");
            }
        }

        #[test]
        fn auto_palette_is_deterministic(
            (samples, weights) in samples_and_weights(),
            max_colours in proptest::option::of(1usize..12),
        ) {
            let opts = AutoPaletteOptions { max_colours, ..Default::default() };
            prop_assert_eq!(auto_palette(&samples, &weights, &opts), auto_palette(&samples, &weights, &opts));
        }
    }
}

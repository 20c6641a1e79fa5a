//! Inputs shared by the kernel tests (the emulated unit tests, the GPU tests) and the GPU
//! benchmark: a seeded generator, coefficient tables of a real schedule, and pixel-art-like
//! rectified images.
#![allow(dead_code)] // each user takes what it needs

use spritedx_kernels::sampler::{DdimRow, DpmSolverRow, NoiseRow};

/// A small seeded generator (splitmix64), so that every run sees the same inputs.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = (self.unit() as f64).max(1e-12);
        let u2 = self.unit() as f64;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }

    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.normal()).collect()
    }
}

/// `ᾱ` of Stable Diffusion's schedule (`β = linspace(√0.00085, √0.012, 1000)²`) at `steps`
/// evenly spaced timesteps from 0 to 999, in f64.
pub fn respaced_alphas_cumprod(steps: usize) -> Vec<f64> {
    let (lo, hi) = (0.00085f64.sqrt(), 0.012f64.sqrt());
    let mut ac = Vec::with_capacity(1000);
    let mut prod = 1.0;
    for i in 0..1000 {
        let beta = (lo + (hi - lo) * i as f64 / 999.0).powi(2);
        prod *= 1.0 - beta;
        ac.push(prod);
    }
    (0..steps)
        .map(|k| ac[(k * 999) / (steps - 1).max(1)])
        .collect()
}

/// `ᾱ` before step `i` (clean data, 1, before the first).
fn prev(ac: &[f64], i: usize) -> f64 {
    if i == 0 {
        1.0
    } else {
        ac[i - 1]
    }
}

/// q_sample's rows: one per step.
pub fn noise_rows(ac: &[f64]) -> Vec<NoiseRow> {
    ac.iter()
        .map(|&a| NoiseRow {
            alpha: a.sqrt() as f32,
            sigma: (1.0 - a).sqrt() as f32,
        })
        .collect()
}

/// DDIM's rows: row `i` steps from index `i` to `i - 1` (to clean data for 0), as
/// spritedx-samplers' `DdimCoefficients::new` computes them.
pub fn ddim_rows(ac: &[f64], eta: f64) -> Vec<DdimRow> {
    (0..ac.len())
        .map(|i| {
            let (a_t, a_s) = (ac[i], prev(ac, i));
            let sigma = eta * ((1.0 - a_s) / (1.0 - a_t) * (1.0 - a_t / a_s)).sqrt();
            DdimRow {
                alpha: a_t.sqrt() as f32,
                sigma: (1.0 - a_t).sqrt() as f32,
                alpha_prev: a_s.sqrt() as f32,
                direction: (1.0 - a_s - sigma * sigma).max(0.0).sqrt() as f32,
                noise_std: sigma as f32,
            }
        })
        .collect()
}

/// DPM-Solver++(2M)'s rows, as spritedx-samplers' `DpmSolverCoefficients::new` computes
/// them: second order where `second_order` and there is a previous step (not at the first
/// step, `len - 1`, nor into clean data, 0).
pub fn dpm_rows(ac: &[f64], second_order: bool) -> Vec<DpmSolverRow> {
    let lambda = |a: f64| 0.5 * (a.ln() - (1.0 - a).ln());
    (0..ac.len())
        .map(|i| {
            let (a_t, a_s) = (ac[i], prev(ac, i));
            let (alpha, sigma) = (a_t.sqrt() as f32, (1.0 - a_t).sqrt() as f32);
            if i == 0 {
                return DpmSolverRow {
                    alpha,
                    sigma,
                    sigma_ratio: 0.0,
                    data_coef: a_s.sqrt() as f32,
                    correction: 0.0,
                };
            }
            let h = lambda(a_s) - lambda(a_t);
            let correction = if second_order && i + 1 < ac.len() {
                h / (2.0 * (lambda(a_t) - lambda(ac[i + 1])))
            } else {
                0.0
            };
            DpmSolverRow {
                alpha,
                sigma,
                sigma_ratio: ((1.0 - a_s) / (1.0 - a_t)).sqrt() as f32,
                data_coef: (-a_s.sqrt() * (-h).exp_m1()) as f32,
                correction: correction as f32,
            }
        })
        .collect()
}

/// A pixel-art-like rectified image, (batch, 4, rows f, cols f) in [-1, 1]: each cell one
/// of a few colours with per-pixel noise, some cells transparent or half transparent,
/// soft (blended) edges on a share of cells, and a few outlier pixels.
pub fn rectified_image(
    rng: &mut Rng,
    batch: usize,
    rows: usize,
    cols: usize,
    f: usize,
) -> Vec<f32> {
    let (h, w) = (rows * f, cols * f);
    let palette: Vec<[f32; 4]> = (0..6)
        .map(|_| {
            [
                rng.uniform(-1.0, 1.0),
                rng.uniform(-1.0, 1.0),
                rng.uniform(-1.0, 1.0),
                1.0,
            ]
        })
        .chain([[0.0, 0.0, 0.0, -1.0], [0.3, -0.2, 0.5, 0.0]])
        .collect();
    let mut image = vec![0f32; batch * 4 * h * w];
    for b in 0..batch {
        let cell_colour: Vec<usize> = (0..rows * cols).map(|_| rng.below(palette.len())).collect();
        let soft: Vec<bool> = (0..rows * cols).map(|_| rng.unit() < 0.3).collect();
        for y in 0..h {
            for x in 0..w {
                let (cx, cy) = (x / f, y / f);
                let mut px = palette[cell_colour[cy * cols + cx]];
                if soft[cy * cols + cx] && x % f == f - 1 && cx + 1 < cols {
                    // A blended column at the cell's right edge.
                    let next = palette[cell_colour[cy * cols + cx + 1]];
                    for c in 0..4 {
                        px[c] = 0.5 * (px[c] + next[c]);
                    }
                }
                let outlier = rng.unit() < 0.03;
                for (c, &v) in px.iter().enumerate() {
                    let noise = if outlier {
                        rng.uniform(-1.0, 1.0)
                    } else {
                        0.03 * rng.normal()
                    };
                    image[((b * 4 + c) * h + y) * w + x] = (v + noise).clamp(-1.0, 1.0);
                }
            }
        }
    }
    image
}

/// Largest absolute difference, and largest difference relative to max(|a|, |b|, 1e-30);
/// both infinite where one value is NaN and the other is not (NaN in both agrees).
pub fn max_errors(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter().zip(b).fold((0f32, 0f32), |(abs, rel), (&x, &y)| {
        let (d, r) = match (x.is_nan(), y.is_nan()) {
            (true, true) => (0.0, 0.0),
            (false, false) if x == y => (0.0, 0.0),
            (false, false) => (
                (x - y).abs(),
                (x - y).abs() / x.abs().max(y.abs()).max(1e-30),
            ),
            _ => (f32::INFINITY, f32::INFINITY),
        };
        (abs.max(d), rel.max(r))
    })
}

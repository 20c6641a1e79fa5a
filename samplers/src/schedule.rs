//! Noise schedules: betas, their cumulative products, the coefficients derived from them,
//! and StableSR's respacing of a 1000-step schedule to fewer steps.
//!
//! Everything here is computed in `f64` on the host. Per-step coefficients are turned into
//! tensors only when a step needs them (see [`crate::steps`]), so that quantities such as
//! `1 - ᾱ` near `ᾱ = 1` keep their precision before being rounded to the tensor's dtype.

use candle_core::{bail, Result};

/// Betas, `ᾱ` (alphas_cumprod) and the model timestep of each step of a diffusion process.
///
/// Step `i` has `ᾱ_i = ∏_{k≤i} (1 - β_k)`. The step *before* step 0 is the clean data,
/// `ᾱ_{-1} = 1`, which is what [`Schedule::alphas_cumprod_prev`] returns for `i = 0`.
///
/// A schedule built from betas is its own training schedule: step `i` is shown to the
/// network as timestep `i`. A [respaced](Schedule::respace) schedule keeps a subset of the
/// steps of its parent, and its [`timesteps`](Schedule::timesteps) are the parent's
/// indices of those steps: that is what the network is conditioned on.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    betas: Vec<f64>,
    alphas_cumprod: Vec<f64>,
    timesteps: Vec<usize>,
}

/// The floor under the posterior variance before its log is taken, as in LDM's
/// `posterior_log_variance_clipped` (the variance is exactly 0 at step 0).
const POSTERIOR_VARIANCE_FLOOR: f64 = 1e-20;

impl Schedule {
    /// The schedule of the given betas: `ᾱ_i = ∏_{k≤i} (1 - β_k)`, timesteps `0..n`.
    ///
    /// Every beta must lie strictly inside `(0, 1)`: a beta of 0 makes the posterior
    /// variance 0/0 at step 0, and a beta of 1 makes `ᾱ` reach 0 and `1/√ᾱ` infinite.
    pub fn from_betas(betas: Vec<f64>) -> Result<Self> {
        if betas.is_empty() {
            bail!("a noise schedule needs at least one beta, got none");
        }
        if let Some((i, b)) = betas
            .iter()
            .enumerate()
            .find(|(_, &b)| !(b > 0.0 && b < 1.0))
        {
            bail!("beta {i} is {b}; every beta of a noise schedule must lie in (0, 1)");
        }
        let alphas_cumprod = betas
            .iter()
            .scan(1.0f64, |acc, &b| {
                *acc *= 1.0 - b;
                Some(*acc)
            })
            .collect();
        let timesteps = (0..betas.len()).collect();
        Ok(Self {
            betas,
            alphas_cumprod,
            timesteps,
        })
    }

    /// The "linear" schedule of LDM / Stable Diffusion: `β = linspace(√start, √end, steps)²`
    /// in `f64` (LDM's `make_beta_schedule('linear', ...)`).
    pub fn linear(steps: usize, beta_start: f64, beta_end: f64) -> Result<Self> {
        if steps < 2 {
            bail!("a linear beta schedule needs at least 2 steps, got {steps}");
        }
        let (lo, hi) = (beta_start.sqrt(), beta_end.sqrt());
        let last = (steps - 1) as f64;
        // Like torch.linspace, the first half steps up from the start and the second half
        // down from the end, which keeps both end points exact (the betas then agree with
        // the reference to ~1 ulp; torch's vectorised loop rounds some differently).
        let step = (hi - lo) / last;
        let betas = (0..steps)
            .map(|i| {
                let r = if i < steps / 2 {
                    lo + step * i as f64
                } else {
                    hi - step * (steps - 1 - i) as f64
                };
                r * r
            })
            .collect();
        Self::from_betas(betas)
    }

    /// The schedule of Stable Diffusion and StableSR: [`linear`](Self::linear) with 1000
    /// steps from 0.00085 to 0.012.
    pub fn ldm_linear() -> Result<Self> {
        Self::linear(1000, 0.00085, 0.012)
    }

    /// The cosine schedule of Nichol & Dhariwal (improved DDPM), as LDM builds it:
    /// `f(t) = cos²((t/T + s)/(1 + s) · π/2)`, `β_t = 1 - f(t+1)/f(t)` clipped to at most
    /// 0.999 (so that `ᾱ` never reaches 0). The paper uses `s = 0.008`.
    pub fn cosine(steps: usize, s: f64) -> Result<Self> {
        if steps == 0 {
            bail!("a cosine beta schedule needs at least 1 step, got 0");
        }
        let f = |t: usize| {
            let x = (t as f64 / steps as f64 + s) / (1.0 + s) * std::f64::consts::FRAC_PI_2;
            x.cos().powi(2)
        };
        let betas = (0..steps)
            .map(|t| (1.0 - f(t + 1) / f(t)).clamp(0.0, 0.999))
            .collect();
        Self::from_betas(betas)
    }

    /// The schedule that keeps only the given steps of this one, as StableSR and
    /// improved-diffusion respace it: the kept steps keep their `ᾱ`, and the betas are
    /// recomputed from them, `β'_k = 1 - ᾱ_{t_k} / ᾱ_{t_{k-1}}` (with `ᾱ_{t_{-1}} = 1`).
    /// The new schedule's [`timesteps`](Self::timesteps) are this schedule's timesteps of
    /// the kept steps.
    ///
    /// `use_steps` must be strictly increasing indices into this schedule; build it with
    /// [`space_timesteps`].
    pub fn respace(&self, use_steps: &[usize]) -> Result<Self> {
        self.check_steps_to_keep(use_steps)?;
        let alphas_cumprod: Vec<f64> = use_steps.iter().map(|&t| self.alphas_cumprod[t]).collect();
        let betas = alphas_cumprod
            .iter()
            .scan(1.0f64, |prev, &a| {
                let beta = 1.0 - a / *prev;
                *prev = a;
                Some(beta)
            })
            .collect();
        Ok(Self {
            betas,
            alphas_cumprod,
            timesteps: self.kept_timesteps(use_steps),
        })
    }

    /// [`respace`](Self::respace) with the single-precision arithmetic of StableSR's
    /// PyTorch code, which reproduces its schedule buffers (`LatentDiffusionSRTextWT`'s, and
    /// those of `sr_val_ddpm_text_T_vqganfin_old.py`) to the last bit of their betas and
    /// alphas_cumprod: `ᾱ` is rounded to f32, `β'_k = 1 - ᾱ_{t_k}/ᾱ_{t_{k-1}}` is computed in
    /// f32, and `ᾱ'` is re-accumulated as the f32 running product of `1 - β'`.
    ///
    /// Use it for parity with StableSR. It differs from [`respace`](Self::respace) by up
    /// to ~1e-4 relative in small betas (the f32 cancellation in `1 - ratio`) and ~1e-7
    /// relative in `ᾱ`.
    pub fn respace_f32(&self, use_steps: &[usize]) -> Result<Self> {
        self.check_steps_to_keep(use_steps)?;
        let betas32: Vec<f32> = use_steps
            .iter()
            .scan(1.0f32, |prev, &t| {
                let a = self.alphas_cumprod[t] as f32;
                let beta = 1.0 - a / *prev;
                *prev = a;
                Some(beta)
            })
            .collect();
        if let Some((k, b)) = betas32
            .iter()
            .enumerate()
            .find(|(_, &b)| !(b > 0.0 && b < 1.0))
        {
            bail!(
                "respaced beta {k} is {b} in f32; the kept steps are too close for single \
                 precision (use `respace` instead)"
            );
        }
        let alphas_cumprod = betas32
            .iter()
            .scan(1.0f32, |acc, &b| {
                *acc *= 1.0 - b;
                Some(f64::from(*acc))
            })
            .collect();
        Ok(Self {
            betas: betas32.into_iter().map(f64::from).collect(),
            alphas_cumprod,
            timesteps: self.kept_timesteps(use_steps),
        })
    }

    fn check_steps_to_keep(&self, use_steps: &[usize]) -> Result<()> {
        if use_steps.is_empty() {
            bail!("respacing needs at least one step to keep, got none");
        }
        if let Some(w) = use_steps.windows(2).find(|w| w[0] >= w[1]) {
            bail!(
                "the steps to keep must be strictly increasing, got {} before {}",
                w[0],
                w[1]
            );
        }
        let last = *use_steps.last().expect("checked non-empty");
        if last >= self.len() {
            bail!(
                "cannot keep step {last} of a schedule with {} steps",
                self.len()
            );
        }
        Ok(())
    }

    fn kept_timesteps(&self, use_steps: &[usize]) -> Vec<usize> {
        use_steps.iter().map(|&t| self.timesteps[t]).collect()
    }

    /// The number of steps.
    pub fn len(&self) -> usize {
        self.betas.len()
    }

    /// Always false: a schedule has at least one step.
    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    /// `β_i` for every step.
    pub fn betas(&self) -> &[f64] {
        &self.betas
    }

    /// `ᾱ_i = ∏_{k≤i} (1 - β_k)` for every step.
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// The timestep that the network is given at each step: `0..n` for a schedule built
    /// from betas, the parent's timesteps of the kept steps for a respaced one (StableSR's
    /// `ori_timesteps`).
    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    /// `ᾱ_{i-1}`, with `ᾱ_{-1} = 1` (clean data).
    pub fn alphas_cumprod_prev(&self, i: usize) -> f64 {
        if i == 0 {
            1.0
        } else {
            self.alphas_cumprod[i - 1]
        }
    }

    /// `√ᾱ_i`, the scale of the data in `x_i`.
    pub fn sqrt_alphas_cumprod(&self, i: usize) -> f64 {
        self.alphas_cumprod[i].sqrt()
    }

    /// `√(1 - ᾱ_i)`, the standard deviation of the noise in `x_i`.
    pub fn sqrt_one_minus_alphas_cumprod(&self, i: usize) -> f64 {
        (1.0 - self.alphas_cumprod[i]).sqrt()
    }

    /// `ln(1 - ᾱ_i)`.
    pub fn log_one_minus_alphas_cumprod(&self, i: usize) -> f64 {
        (1.0 - self.alphas_cumprod[i]).ln()
    }

    /// `√(1/ᾱ_i)`.
    pub fn sqrt_recip_alphas_cumprod(&self, i: usize) -> f64 {
        (1.0 / self.alphas_cumprod[i]).sqrt()
    }

    /// `√(1/ᾱ_i - 1)`.
    pub fn sqrt_recipm1_alphas_cumprod(&self, i: usize) -> f64 {
        (1.0 / self.alphas_cumprod[i] - 1.0).sqrt()
    }

    /// The variance of the posterior `q(x_{i-1} | x_i, x_0)`:
    /// `β̃_i = β_i (1 - ᾱ_{i-1}) / (1 - ᾱ_i)` (0 at step 0).
    pub fn posterior_variance(&self, i: usize) -> f64 {
        self.betas[i] * (1.0 - self.alphas_cumprod_prev(i)) / (1.0 - self.alphas_cumprod[i])
    }

    /// `ln(max(β̃_i, 1e-20))`, LDM's `posterior_log_variance_clipped`.
    pub fn posterior_log_variance_clipped(&self, i: usize) -> f64 {
        self.posterior_variance(i)
            .max(POSTERIOR_VARIANCE_FLOOR)
            .ln()
    }

    /// The weight of `x_0` in the posterior mean: `β_i √ᾱ_{i-1} / (1 - ᾱ_i)`.
    pub fn posterior_mean_coef1(&self, i: usize) -> f64 {
        self.betas[i] * self.alphas_cumprod_prev(i).sqrt() / (1.0 - self.alphas_cumprod[i])
    }

    /// The weight of `x_i` in the posterior mean: `(1 - ᾱ_{i-1}) √(1 - β_i) / (1 - ᾱ_i)`.
    pub fn posterior_mean_coef2(&self, i: usize) -> f64 {
        (1.0 - self.alphas_cumprod_prev(i)) * (1.0 - self.betas[i]).sqrt()
            / (1.0 - self.alphas_cumprod[i])
    }

    /// The index of the step at which a sampler starts when it runs only a fraction
    /// `strength` of the `len()` steps (img2img): it runs `⌊strength · len⌋` steps, from
    /// index `⌊strength · len⌋ - 1` down to 0.
    pub fn start_index(&self, strength: f64) -> Result<usize> {
        if !(strength > 0.0 && strength <= 1.0) {
            bail!("strength must lie in (0, 1], got {strength}");
        }
        let steps = (strength * self.len() as f64).floor() as usize;
        if steps == 0 {
            bail!(
                "strength {strength} of {} steps runs no step at all; raise the strength \
                 to at least {} or use more steps",
                self.len(),
                1.0 / self.len() as f64
            );
        }
        Ok(steps - 1)
    }
}

/// The steps to keep when respacing a `num_timesteps`-step process, exactly as
/// improved-diffusion's (and StableSR's) `space_timesteps` chooses them, sorted.
///
/// `section_counts` is either comma-separated counts, `"200"` or `"10,15,20"`: the process
/// is cut into that many equal sections (the first ones one step longer when it does not
/// divide), and section `j` is strided to `count_j` steps with a fractional stride
/// `(size - 1)/(count - 1)` whose running sum is rounded half to even (Python's `round`);
/// or `"ddimN"`: the smallest integer stride that gives exactly N steps, `0, s, 2s, ...`.
pub fn space_timesteps(num_timesteps: usize, section_counts: &str) -> Result<Vec<usize>> {
    let spec = section_counts.trim();
    if let Some(count) = spec.strip_prefix("ddim") {
        let desired: usize = count
            .parse()
            .map_err(|e| candle_core::Error::Msg(format!("bad step count in {spec:?}: {e}")))?;
        for stride in 1..num_timesteps {
            if num_timesteps.div_ceil(stride) == desired {
                return Ok((0..num_timesteps).step_by(stride).collect());
            }
        }
        bail!(
            "cannot create exactly {desired} steps out of {num_timesteps} with an integer stride"
        );
    }
    let counts = spec
        .split(',')
        .map(|c| c.trim().parse::<usize>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            candle_core::Error::Msg(format!(
                "section counts must be comma-separated integers or \"ddimN\", got {spec:?}: {e}"
            ))
        })?;
    space_timesteps_sections(num_timesteps, &counts)
}

/// [`space_timesteps`] with the section counts given as numbers.
pub fn space_timesteps_sections(
    num_timesteps: usize,
    section_counts: &[usize],
) -> Result<Vec<usize>> {
    if section_counts.is_empty() {
        bail!("respacing needs at least one section count, got none");
    }
    let size_per = num_timesteps / section_counts.len();
    let extra = num_timesteps % section_counts.len();
    let mut start = 0usize;
    let mut steps = Vec::new();
    for (j, &count) in section_counts.iter().enumerate() {
        let size = size_per + usize::from(j < extra);
        if size < count {
            bail!("cannot divide a section of {size} steps into {count}");
        }
        let stride = if count <= 1 {
            1.0
        } else {
            (size - 1) as f64 / (count - 1) as f64
        };
        // A running sum, not `k * stride`: the reference accumulates, and the two can
        // round differently at exact halves.
        let mut idx = 0.0f64;
        for _ in 0..count {
            steps.push(start + idx.round_ties_even() as usize);
            idx += stride;
        }
        start += size;
    }
    steps.sort_unstable();
    steps.dedup();
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_timesteps_examples_from_the_reference_docstring() -> Result<()> {
        // improved-diffusion: 300 steps, sections [10, 15, 20] -> 10 + 15 + 20 steps,
        // each section starting at its own first step.
        let steps = space_timesteps(300, "10,15,20")?;
        assert_eq!(steps.len(), 45);
        assert_eq!(&steps[..3], &[0, 11, 22]);
        assert!(steps.contains(&100) && steps.contains(&200) && steps.contains(&299));
        // "ddim50" on 1000 steps is the stride 20.
        assert_eq!(
            space_timesteps(1000, "ddim50")?,
            (0..1000).step_by(20).collect::<Vec<_>>()
        );
        // One section over everything keeps both ends.
        let s = space_timesteps(1000, "4")?;
        assert_eq!(s, vec![0, 333, 666, 999]);
        assert!(space_timesteps(10, "11").is_err());
        Ok(())
    }

    #[test]
    fn respacing_keeps_alphas_cumprod_and_recomputes_betas() -> Result<()> {
        let base = Schedule::ldm_linear()?;
        let keep = space_timesteps(1000, "7")?;
        let r = base.respace(&keep)?;
        assert_eq!(r.timesteps(), keep.as_slice());
        for (k, &t) in keep.iter().enumerate() {
            assert_eq!(r.alphas_cumprod()[k], base.alphas_cumprod()[t]);
        }
        // The betas of the respaced schedule multiply back to its alphas_cumprod.
        let rebuilt = Schedule::from_betas(r.betas().to_vec())?;
        for (a, b) in rebuilt.alphas_cumprod().iter().zip(r.alphas_cumprod()) {
            assert!((a - b).abs() <= 1e-14 * b, "{a} vs {b}");
        }
        // Respacing a respaced schedule reports the original timesteps.
        let rr = r.respace(&[1, 3])?;
        assert_eq!(rr.timesteps(), &[keep[1], keep[3]]);
        Ok(())
    }

    #[test]
    fn cosine_schedule_follows_its_closed_form() -> Result<()> {
        let s = 0.008;
        let n = 1000;
        let sched = Schedule::cosine(n, s)?;
        let f = |t: f64| {
            ((t / n as f64 + s) / (1.0 + s) * std::f64::consts::FRAC_PI_2)
                .cos()
                .powi(2)
        };
        // Without clipping the product telescopes to f(t+1)/f(0); only the last beta
        // (f(T) = cos²(π/2) ≈ 0) is clipped at 0.999.
        for i in 0..n - 1 {
            let want = f(i as f64 + 1.0) / f(0.0);
            let got = sched.alphas_cumprod()[i];
            assert!(
                (got - want).abs() <= 1e-12 * want,
                "step {i}: {got} vs {want}"
            );
        }
        assert_eq!(sched.betas()[n - 1], 0.999);
        assert!(sched.betas().iter().all(|&b| b > 0.0 && b <= 0.999));
        Ok(())
    }

    #[test]
    fn start_index_runs_floor_of_strength_times_steps() -> Result<()> {
        let r = Schedule::ldm_linear()?.respace(&space_timesteps(1000, "20")?)?;
        assert_eq!(r.start_index(1.0)?, 19);
        assert_eq!(r.start_index(0.5)?, 9);
        assert_eq!(r.start_index(0.26)?, 4);
        assert!(r.start_index(0.01).is_err());
        assert!(r.start_index(0.0).is_err());
        assert!(r.start_index(1.5).is_err());
        Ok(())
    }
}

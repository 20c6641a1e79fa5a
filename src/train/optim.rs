//! AdamW with its state exposed (candle_nn's keeps its moments private, so a checkpoint
//! could not resume it exactly), global-norm gradient clipping, and an exponential moving
//! average of the weights.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use std::collections::HashMap;

/// AdamW hyper-parameters (Loshchilov & Hutter: decoupled weight decay).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Gradients are scaled down together when their global L2 norm exceeds this
    /// (0 disables clipping).
    pub clip_grad_norm: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { lr: 2e-4, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, clip_grad_norm: 1.0 }
    }
}

/// AdamW over named variables. The moments are plain tensors that a checkpoint saves and
/// restores ([`AdamW::state`], [`AdamW::load_state`]).
pub struct AdamW {
    pub config: AdamWConfig,
    vars: Vec<(String, Var)>,
    first: Vec<Tensor>,
    second: Vec<Tensor>,
    /// Updates taken so far (the bias correction's `t`).
    pub steps: u64,
}

impl AdamW {
    /// `vars` in a fixed order (e.g. sorted by name), which the state follows.
    pub fn new(vars: Vec<(String, Var)>, config: AdamWConfig) -> Result<Self> {
        let first = vars.iter().map(|(_, v)| v.zeros_like()).collect::<Result<Vec<_>>>()?;
        let second = vars.iter().map(|(_, v)| v.zeros_like()).collect::<Result<Vec<_>>>()?;
        Ok(Self { config, vars, first, second, steps: 0 })
    }

    /// The number of trained values (elements of all variables).
    pub fn parameter_count(&self) -> usize {
        self.vars.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// One update from the gradients of a backward pass; returns the global gradient norm
    /// before clipping. Variables without a gradient are left as they are (their moments too).
    pub fn step(&mut self, grads: &GradStore) -> Result<f64> {
        let mut norm_sq = 0.0f64;
        for (_, var) in &self.vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                norm_sq += match with_cpu_f32(&[g], |[g]| sum_of_squares(g)) {
                    Some(sum) => sum,
                    None => f64::from(g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?),
                };
            }
        }
        let norm = norm_sq.sqrt();
        let clip = self.config.clip_grad_norm;
        let scale = if clip > 0.0 && norm > clip { clip / norm } else { 1.0 };
        self.steps += 1;
        let c = &self.config;
        let t = self.steps as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2 = 1.0 - c.beta2.powi(t);
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            // Detached, so the moments (and through them every past step's graph) are not
            // kept alive by the op history a gradient carries.
            let g = g.detach();
            let fused = with_cpu_f32(&[var.as_tensor(), &g, &self.first[i], &self.second[i]], |[w, g, m, v]| {
                fused_update(w, g, m, v, &Hyper { scale, bias1, bias2, config: c })
            });
            if let Some((w, m, v)) = fused {
                let shape = var.shape().clone();
                var.set(&Tensor::from_vec(w, shape.clone(), var.device())?)?;
                self.first[i] = Tensor::from_vec(m, shape.clone(), var.device())?;
                self.second[i] = Tensor::from_vec(v, shape, var.device())?;
                continue;
            }
            let g = if scale != 1.0 { (g * scale)? } else { g };
            let m = ((&self.first[i] * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            let v = ((&self.second[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&m / bias1)? / ((&v / bias2)?.sqrt()? + c.eps)?)?;
            let decayed = (var.as_tensor() * (1.0 - c.lr * c.weight_decay))?;
            var.set(&(decayed - (update * c.lr)?)?)?;
            self.first[i] = m;
            self.second[i] = v;
        }
        Ok(norm)
    }

    /// The moments by `adam.m.NAME` / `adam.v.NAME`.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.insert(format!("adam.m.{name}"), self.first[i].clone());
            out.insert(format!("adam.v.{name}"), self.second[i].clone());
        }
        out
    }

    /// Restores moments saved by [`AdamW::state`]; every variable's moments must be there
    /// with the right shape.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, steps: u64) -> Result<()> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (prefix, slot) in [("adam.m.", &mut self.first[i]), ("adam.v.", &mut self.second[i])] {
                let key = format!("{prefix}{name}");
                let t = state.get(&key).ok_or_else(|| candle_core::Error::Msg(format!("checkpoint lacks {key}")))?;
                if t.dims() != var.dims() {
                    candle_core::bail!("{key} has shape {:?}, the variable {:?}", t.dims(), var.dims());
                }
                *slot = t.to_device(var.device())?.to_dtype(var.dtype())?;
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// What one AdamW update needs besides the tensors.
struct Hyper<'a> {
    /// The clipping factor on the gradient.
    scale: f64,
    /// The bias corrections `1 - beta^t` of the two moments.
    bias1: f64,
    bias2: f64,
    config: &'a AdamWConfig,
}

/// Runs `f` on the elements of `N` tensors when all are contiguous f32 on the CPU; None
/// otherwise (the composed update then runs on the device's own ops).
fn with_cpu_f32<const N: usize, R>(tensors: &[&Tensor; N], f: impl FnOnce([&[f32]; N]) -> R) -> Option<R> {
    let guards: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices: [&[f32]; N] = [&[]; N];
    for (slot, (storage, layout)) in slices.iter_mut().zip(&guards) {
        let candle_core::Storage::Cpu(cpu) = &**storage else { return None };
        *slot = crate::nn::contiguous_slice::<f32>(cpu, layout, "AdamW").ok()?;
    }
    Some(f(slices))
}

/// Elements per parallel task of the fused passes.
const CHUNK: usize = 1 << 14;

fn sum_of_squares(g: &[f32]) -> f64 {
    use rayon::prelude::*;
    g.par_chunks(CHUNK).map(|c| c.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>()).sum()
}

/// The AdamW update of one variable in one parallel pass: the new weights and moments.
/// The composed form in [`AdamW::step`] reads and writes every element a dozen times: on
/// the diffusion restorer's 8M parameters it took 29-31 ms an update, this 16 ms.
fn fused_update(w: &[f32], g: &[f32], m: &[f32], v: &[f32], h: &Hyper) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    use rayon::prelude::*;
    let c = h.config;
    let len = w.len();
    assert!(g.len() == len && m.len() == len && v.len() == len, "AdamW: a variable of {len} values with a gradient of {} and moments of {} and {}", g.len(), m.len(), v.len());
    let (mut w_out, mut m_out, mut v_out) = (Vec::with_capacity(len), Vec::with_capacity(len), Vec::with_capacity(len));
    let outputs = w_out.spare_capacity_mut()[..len].par_chunks_mut(CHUNK).zip(m_out.spare_capacity_mut()[..len].par_chunks_mut(CHUNK)).zip(v_out.spare_capacity_mut()[..len].par_chunks_mut(CHUNK));
    let inputs = w.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)).zip(m.par_chunks(CHUNK)).zip(v.par_chunks(CHUNK));
    // In f32 like the composed ops, with the constants folded: the loop vectorises.
    let (scale, beta1, beta2) = (h.scale as f32, c.beta1 as f32, c.beta2 as f32);
    let (keep, step, inv_bias2, eps) = ((1.0 - c.lr * c.weight_decay) as f32, (c.lr / h.bias1) as f32, (1.0 / h.bias2) as f32, c.eps as f32);
    outputs.zip(inputs).for_each(|(((w_out, m_out), v_out), (((w, g), m), v))| {
        for i in 0..w.len() {
            let g = g[i] * scale;
            let m = m[i] * beta1 + g * (1.0 - beta1);
            let v = v[i] * beta2 + g * g * (1.0 - beta2);
            w_out[i].write(w[i] * keep - step * m / ((v * inv_bias2).sqrt() + eps));
            m_out[i].write(m);
            v_out[i].write(v);
        }
    });
    // SAFETY: the chunks of the three outputs pair up with the inputs' chunks, all `len`
    // long, and the loop wrote every element of each.
    unsafe {
        w_out.set_len(len);
        m_out.set_len(len);
        v_out.set_len(len);
    }
    (w_out, m_out, v_out)
}

/// An exponential moving average of variables: `ema = decay * ema + (1 - decay) * var`.
pub struct Ema {
    pub decay: f64,
    pub shadow: Vec<(String, Tensor)>,
}

impl Ema {
    /// Starts at the variables' current values.
    pub fn new(vars: &[(String, Var)], decay: f64) -> Result<Self> {
        let shadow = vars.iter().map(|(n, v)| Ok((n.clone(), v.as_tensor().detach().copy()?))).collect::<Result<Vec<_>>>()?;
        Ok(Self { decay, shadow })
    }

    pub fn update(&mut self, vars: &[(String, Var)]) -> Result<()> {
        for ((_, s), (_, v)) in self.shadow.iter_mut().zip(vars) {
            // The variable is detached so the average does not record ops on it: it would
            // chain every past average into a graph that is never freed.
            *s = ((&*s * self.decay)? + (v.as_tensor().detach() * (1.0 - self.decay))?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, DType};

    /// AdamW against a hand-computed update: one step on f(w) = sum(w^2) / 2 from w = 2
    /// (gradient 2). m = 0.1 * 2, v = 0.001 * 4; bias-corrected m/sqrt(v) = 1, so
    /// w <- 2 * (1 - lr * wd) - lr * 1 / (1 + eps).
    #[test]
    fn first_step_matches_the_formula() {
        let var = Var::from_tensor(&Tensor::new(&[2.0f32], &Device::Cpu).unwrap()).unwrap();
        let cfg = AdamWConfig { lr: 0.1, weight_decay: 0.5, clip_grad_norm: 0.0, ..Default::default() };
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], cfg).unwrap();
        let loss = (var.as_tensor().sqr().unwrap() * 0.5).unwrap().sum_all().unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
        let w = var.as_tensor().to_vec1::<f32>().unwrap()[0];
        let want = 2.0 * (1.0 - 0.1 * 0.5) - 0.1 / (1.0 + 1e-8 / 2.0);
        assert!((f64::from(w) - want).abs() < 1e-6, "{w} vs {want}");
    }

    #[test]
    fn fused_cpu_update_matches_the_composed_one() {
        // f32 on the CPU takes the fused pass, f64 the composed ops: three clipped steps
        // on the same loss agree within 1e-5 (f32 arithmetic), and the norms within 1e-6.
        let cfg = AdamWConfig { lr: 0.05, clip_grad_norm: 0.5, ..Default::default() };
        let start: Vec<f64> = (0..40_000).map(|i| ((i * 37 % 101) as f64 - 50.0) / 25.0).collect();
        let run = |dtype: DType| {
            let var = Var::from_tensor(&Tensor::new(start.as_slice(), &Device::Cpu).unwrap().to_dtype(dtype).unwrap()).unwrap();
            let mut opt = AdamW::new(vec![("w".to_string(), var.clone())], cfg.clone()).unwrap();
            let norms: Vec<f64> = (0..3).map(|_| opt.step(&(var.as_tensor().powf(3.0).unwrap().sum_all().unwrap() * 1e-3).unwrap().backward().unwrap()).unwrap()).collect();
            (var.as_tensor().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap(), norms)
        };
        let ((fused, fused_norms), (composed, composed_norms)) = (run(DType::F32), run(DType::F64));
        let worst = fused.iter().zip(&composed).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-5, "weights differ by {worst}");
        for (a, b) in fused_norms.iter().zip(&composed_norms) {
            assert!((a - b).abs() < 1e-6 * b.max(1.0), "norms {a} and {b}");
        }
        assert!(composed_norms[0] > 0.5, "the gradient is clipped ({})", composed_norms[0]);
    }

    #[test]
    fn clipping_bounds_the_gradient_norm_and_reports_it() {
        let var = Var::from_tensor(&Tensor::new(&[3.0f32, 4.0], &Device::Cpu).unwrap()).unwrap();
        let cfg = AdamWConfig { clip_grad_norm: 1.0, ..Default::default() };
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], cfg).unwrap();
        // Gradient = w = (3, 4): norm 5.
        let loss = (var.as_tensor().sqr().unwrap() * 0.5).unwrap().sum_all().unwrap();
        let norm = opt.step(&loss.backward().unwrap()).unwrap();
        assert!((norm - 5.0).abs() < 1e-5);
        // The first moment holds 0.1 * the clipped gradient (0.6, 0.8).
        let m = opt.state()["adam.m.w"].to_vec1::<f32>().unwrap();
        assert!((m[0] - 0.06).abs() < 1e-6 && (m[1] - 0.08).abs() < 1e-6, "{m:?}");
    }

    #[test]
    fn state_round_trip_resumes_identically() {
        let make = || Var::from_tensor(&Tensor::new(&[1.0f32, -2.0, 0.5], &Device::Cpu).unwrap()).unwrap();
        let loss_of = |v: &Var| (v.as_tensor().sqr().unwrap().sum_all().unwrap() + v.as_tensor().sum_all().unwrap()).unwrap();
        // Straight run of 4 steps.
        let a = make();
        let mut opt_a = AdamW::new(vec![("w".into(), a.clone())], AdamWConfig::default()).unwrap();
        for _ in 0..4 {
            opt_a.step(&loss_of(&a).backward().unwrap()).unwrap();
        }
        // 2 steps, state saved, a fresh optimizer restores it and runs 2 more.
        let b = make();
        let mut opt_b = AdamW::new(vec![("w".into(), b.clone())], AdamWConfig::default()).unwrap();
        for _ in 0..2 {
            opt_b.step(&loss_of(&b).backward().unwrap()).unwrap();
        }
        let (state, steps) = (opt_b.state(), opt_b.steps);
        let c = Var::from_tensor(&b.as_tensor().copy().unwrap()).unwrap();
        let mut opt_c = AdamW::new(vec![("w".into(), c.clone())], AdamWConfig::default()).unwrap();
        opt_c.load_state(&state, steps).unwrap();
        for _ in 0..2 {
            opt_c.step(&loss_of(&c).backward().unwrap()).unwrap();
        }
        assert_eq!(a.as_tensor().to_vec1::<f32>().unwrap(), c.as_tensor().to_vec1::<f32>().unwrap());
    }

    /// The optimizer state and the average must not hold on to the graph: after a step,
    /// none of them records an op (a recorded op keeps every earlier step alive).
    #[test]
    fn state_and_average_carry_no_graph() {
        let var = Var::from_tensor(&Tensor::new(&[1.0f32, 2.0], &Device::Cpu).unwrap()).unwrap();
        let vars = vec![("w".to_string(), var.clone())];
        let mut opt = AdamW::new(vars.clone(), AdamWConfig::default()).unwrap();
        let mut ema = Ema::new(&vars, 0.9).unwrap();
        for _ in 0..2 {
            let loss = var.as_tensor().sqr().unwrap().sum_all().unwrap();
            opt.step(&loss.backward().unwrap()).unwrap();
            ema.update(&vars).unwrap();
        }
        for t in opt.state().values().chain(ema.shadow.iter().map(|(_, t)| t)) {
            assert!(!t.track_op(), "a state tensor records an op");
        }
    }

    #[test]
    fn ema_moves_by_one_minus_decay() {
        let var = Var::zeros(2, DType::F32, &Device::Cpu).unwrap();
        let vars = vec![("w".to_string(), var.clone())];
        let mut ema = Ema::new(&vars, 0.9).unwrap();
        var.set(&Tensor::new(&[1.0f32, 2.0], &Device::Cpu).unwrap()).unwrap();
        ema.update(&vars).unwrap();
        let s = ema.shadow[0].1.to_vec1::<f32>().unwrap();
        assert!((s[0] - 0.1).abs() < 1e-6 && (s[1] - 0.2).abs() < 1e-6, "{s:?}");
    }
}

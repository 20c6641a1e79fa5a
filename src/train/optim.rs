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
                norm_sq += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
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

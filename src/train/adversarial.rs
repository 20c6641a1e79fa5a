//! The design note's optional adversarial term: a PatchGAN discriminator on sprites at
//! true resolution, trained with the hinge loss beside the restorer.
//!
//! The discriminator scores overlapping patches of a sprite (one logit per position of its
//! half-resolution output, each seeing 13 x 13 art pixels) as clean art or a
//! restorer's prediction. The restorer's term, `-mean(D(predicted))`, rewards predictions
//! the discriminator takes for clean art: crisp cells and palette-like colours where the
//! pixel losses alone settle for the average of the plausible answers.

use crate::stablesr::layers::{ops, Conv2d};
use crate::train::optim::{AdamW, AdamWConfig};
use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use std::collections::HashMap;

/// Slope of the LeakyReLU between the discriminator's convolutions (pix2pix's).
const LEAKY_SLOPE: f64 = 0.2;

/// The PatchGAN: conv3x3 4 -> `width`, a stride-2 conv3x3 to 2 `width`, conv3x3, and a
/// conv3x3 to one logit per position. No normalisation: batches are small, and the
/// hinge loss keeps the logits bounded in practice.
pub struct PatchDiscriminator {
    convs: Vec<Conv2d>,
    logits: Conv2d,
}

impl PatchDiscriminator {
    /// Weights under `first`, `down`, `mid` and `logits`.
    pub fn new(vb: VarBuilder, width: usize) -> Result<Self> {
        Ok(Self {
            convs: vec![
                Conv2d::same3x3(vb.pp("first"), 4, width)?,
                Conv2d::new(vb.pp("down"), width, 2 * width, 3, 2, 1)?,
                Conv2d::same3x3(vb.pp("mid"), 2 * width, 2 * width)?,
            ],
            logits: Conv2d::same3x3(vb.pp("logits"), 2 * width, 1)?,
        })
    }

    /// Patch logits (B, 1, H/2, W/2) of sprites (B, 4, H, W) in [-1, 1]: positive for
    /// clean art.
    pub fn forward(&self, sprites: &Tensor) -> Result<Tensor> {
        let mut h = ops::from_nchw(sprites)?;
        for conv in &self.convs {
            h = candle_nn::ops::leaky_relu(&conv.forward(&h)?, LEAKY_SLOPE)?;
        }
        ops::to_nchw(&self.logits.forward(&h)?)
    }

    /// The restorer's term: minus the mean logit of its predictions.
    pub fn generator_loss(&self, predicted: &Tensor) -> Result<Tensor> {
        self.forward(predicted)?.mean_all()?.neg()
    }

    /// The discriminator's hinge loss: `mean(relu(1 - D(clean))) + mean(relu(1 + D(predicted)))`.
    /// `predicted` is detached here, so this loss trains the discriminator alone.
    pub fn loss(&self, clean: &Tensor, predicted: &Tensor) -> Result<Tensor> {
        let real = (1.0 - self.forward(clean)?)?.relu()?.mean_all()?;
        let fake = (self.forward(&predicted.detach())? + 1.0)?.relu()?.mean_all()?;
        real + fake
    }
}

/// Channels of the discriminator's first layer (its others have twice as many).
const CRITIC_WIDTH: usize = 64;

/// The discriminator as a training run keeps it: its own variables (`critic.*`), seeded
/// like the model's, and its own AdamW, both saved in the run's checkpoint.
pub struct Critic {
    pub net: PatchDiscriminator,
    vars: Vec<(String, Var)>,
    opt: AdamW,
}

impl Critic {
    pub fn new(seed: u64, optim: AdamWConfig, device: &Device) -> anyhow::Result<Self> {
        let varmap = VarMap::new();
        let net = PatchDiscriminator::new(VarBuilder::from_varmap(&varmap, DType::F32, device).pp("critic"), CRITIC_WIDTH)?;
        let vars = crate::train::run::sorted_vars(&varmap);
        crate::train::run::init_vars(&vars, crate::rng::derive_seed(seed, &[0x6372_6974]), &[])?;
        let opt = AdamW::new(vars.clone(), optim)?;
        Ok(Self { net, vars, opt })
    }

    /// One update of the discriminator on a batch of clean sprites and the restorer's
    /// predictions of them, at learning rate `lr`; returns its loss before the update.
    pub fn step(&mut self, clean: &Tensor, predicted: &Tensor, lr: f64) -> Result<f32> {
        let loss = self.net.loss(clean, predicted)?;
        self.opt.config.lr = lr;
        self.opt.step(&loss.backward()?)?;
        loss.to_scalar::<f32>()
    }

    /// Weights by name and AdamW moments, for the checkpoint.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = self.opt.state();
        out.extend(self.vars.iter().map(|(name, var)| (name.clone(), var.as_tensor().clone())));
        out
    }

    /// Restores what [`Critic::state`] saved, after `steps` updates.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, steps: u64) -> Result<()> {
        for (name, var) in &self.vars {
            var.set(state.get(name).ok_or_else(|| candle_core::Error::Msg(format!("checkpoint lacks {name}")))?)?;
        }
        self.opt.load_state(state, steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discriminator() -> (VarMap, PatchDiscriminator) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let d = PatchDiscriminator::new(vb, 8).unwrap();
        (varmap, d)
    }

    #[test]
    fn logits_are_per_patch_at_half_resolution() {
        let (_, d) = discriminator();
        let x = Tensor::randn(0f32, 1.0, (2, 4, 16, 12), &Device::Cpu).unwrap();
        assert_eq!(d.forward(&x).unwrap().dims(), &[2, 1, 8, 6]);
    }

    #[test]
    fn the_hinge_loss_trains_only_the_discriminator() {
        let (varmap, d) = discriminator();
        let clean = Tensor::randn(0f32, 1.0, (2, 4, 8, 8), &Device::Cpu).unwrap();
        let predicted = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 4, 8, 8), &Device::Cpu).unwrap()).unwrap();
        let grads = d.loss(&clean, predicted.as_tensor()).unwrap().backward().unwrap();
        assert!(grads.get(predicted.as_tensor()).is_none(), "the prediction is detached");
        let weights = varmap.all_vars();
        assert!(weights.iter().any(|w| grads.get(w.as_tensor()).is_some()));
        // The restorer's term does reach the prediction.
        let grads = d.generator_loss(predicted.as_tensor()).unwrap().backward().unwrap();
        assert!(grads.get(predicted.as_tensor()).is_some());
    }

    #[test]
    fn the_hinge_loss_is_two_when_the_discriminator_cannot_tell() {
        // Zero weights give zero logits for everything: relu(1 - 0) + relu(1 + 0) = 2.
        let (varmap, d) = discriminator();
        for var in varmap.all_vars() {
            var.set(&var.zeros_like().unwrap()).unwrap();
        }
        let x = Tensor::randn(0f32, 1.0, (1, 4, 8, 8), &Device::Cpu).unwrap();
        let loss = d.loss(&x, &x).unwrap().to_scalar::<f32>().unwrap();
        assert!((loss - 2.0).abs() < 1e-6, "{loss}");
        assert_eq!(d.generator_loss(&x).unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }
}

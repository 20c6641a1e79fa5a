//! The interface between the samplers and a network.

use candle_core::{Result, Tensor};

use crate::steps::Prediction;

/// A network (with its conditioning) as the samplers see it.
///
/// Conditioning (text embeddings, a low-resolution latent, guidance) is the denoiser's own
/// business: hold it in the implementing struct or capture it in the closure of an
/// [`FnDenoiser`].
pub trait Denoiser {
    /// What [`predict`](Denoiser::predict) returns: `ε` or `v`.
    fn prediction(&self) -> Prediction;

    /// The network's output for `x_t` (B, C, H, W) at per-sample `timesteps` (B,), a `U32`
    /// tensor on `x_t`'s device. The timesteps are those of the *training* schedule (e.g.
    /// 0..1000), also after respacing: they are what the network is conditioned on.
    /// Returns a tensor of `x_t`'s shape.
    fn predict(&mut self, x_t: &Tensor, timesteps: &Tensor) -> Result<Tensor>;
}

/// A [`Denoiser`] from a closure `(x_t, timesteps) -> output`.
pub struct FnDenoiser<F> {
    prediction: Prediction,
    predict: F,
}

impl<F> FnDenoiser<F>
where
    F: FnMut(&Tensor, &Tensor) -> Result<Tensor>,
{
    /// A denoiser whose output is of kind `prediction`, computed by `predict`.
    pub fn new(prediction: Prediction, predict: F) -> Self {
        Self {
            prediction,
            predict,
        }
    }
}

impl<F> Denoiser for FnDenoiser<F>
where
    F: FnMut(&Tensor, &Tensor) -> Result<Tensor>,
{
    fn prediction(&self) -> Prediction {
        self.prediction
    }

    fn predict(&mut self, x_t: &Tensor, timesteps: &Tensor) -> Result<Tensor> {
        (self.predict)(x_t, timesteps)
    }
}

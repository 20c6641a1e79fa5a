//! Denoisers whose ideal output is known in closed form, and small tensor helpers.
#![allow(dead_code)] // each test binary uses its own subset

use candle_core::{DType, Device, Result, Tensor};
use spritedx_samplers::{Denoiser, Prediction, Schedule};

/// The data distribution an [`IdealDenoiser`] is ideal for.
pub enum Data {
    /// All data is this one point (shape (B, C, H, W) or broadcastable to it).
    Point(Tensor),
    /// Every element of channel `c` is independent `N(mu[c], s[c]²)`.
    Gaussian { mu: Vec<f64>, s: Vec<f64> },
}

/// The exact posterior-mean predictor of `ε` (or `v`) for [`Data`], evaluated in f64 at
/// the training-schedule timesteps it is given. It records the timesteps it was called
/// with.
pub struct IdealDenoiser {
    pub data: Data,
    pub prediction: Prediction,
    pub alphas_cumprod: Vec<f64>,
    pub calls: Vec<Vec<u32>>,
}

impl IdealDenoiser {
    pub fn new(data: Data, prediction: Prediction, training: &Schedule) -> Self {
        Self {
            data,
            prediction,
            alphas_cumprod: training.alphas_cumprod().to_vec(),
            calls: Vec::new(),
        }
    }

    /// `(x̂_0, ε̂)`, the posterior means of `x_0` and `ε` given `x_t`, in f64.
    fn posterior_means(
        &self,
        x: &Tensor,
        alpha: &Tensor,
        sigma: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        match &self.data {
            Data::Point(x0) => {
                let x0 = x0.to_dtype(DType::F64)?.broadcast_as(x.shape())?;
                let eps = x.sub(&x0.broadcast_mul(alpha)?)?.broadcast_div(sigma)?;
                Ok((x0, eps))
            }
            Data::Gaussian { mu, s } => {
                let c = x.dim(1)?;
                let mu = Tensor::from_slice(mu, (1, c, 1, 1), x.device())?;
                let var: Vec<f64> = s.iter().map(|s| s * s).collect();
                let var = Tensor::from_slice(&var, (1, c, 1, 1), x.device())?;
                // x_t ~ N(α μ, α² s² + σ²); E[x_0 | x_t] = μ + α s² (x_t - α μ) / (α² s² + σ²)
                // and E[ε | x_t] = σ (x_t - α μ) / (α² s² + σ²).
                let centred = x.broadcast_sub(&mu.broadcast_mul(alpha)?)?;
                let total = var
                    .broadcast_mul(&alpha.sqr()?)?
                    .broadcast_add(&sigma.sqr()?)?;
                let z = centred.div(&total.broadcast_as(x.shape())?)?;
                let x0 = z
                    .broadcast_mul(&var.broadcast_mul(alpha)?)?
                    .broadcast_add(&mu)?;
                let eps = z.broadcast_mul(sigma)?;
                Ok((x0, eps))
            }
        }
    }
}

impl Denoiser for IdealDenoiser {
    fn prediction(&self) -> Prediction {
        self.prediction
    }

    fn predict(&mut self, x_t: &Tensor, timesteps: &Tensor) -> Result<Tensor> {
        let t = timesteps.to_vec1::<u32>()?;
        self.calls.push(t.clone());
        let b = t.len();
        let a: Vec<f64> = t
            .iter()
            .map(|&t| self.alphas_cumprod[t as usize].sqrt())
            .collect();
        let s: Vec<f64> = t
            .iter()
            .map(|&t| (1.0 - self.alphas_cumprod[t as usize]).sqrt())
            .collect();
        let alpha = Tensor::from_slice(&a, (b, 1, 1, 1), x_t.device())?;
        let sigma = Tensor::from_slice(&s, (b, 1, 1, 1), x_t.device())?;
        let x = x_t.to_dtype(DType::F64)?;
        let (x0, eps) = self.posterior_means(&x, &alpha, &sigma)?;
        let out = match self.prediction {
            Prediction::Eps => eps,
            // v = α ε - σ x_0
            Prediction::V => eps.broadcast_mul(&alpha)?.sub(&x0.broadcast_mul(&sigma)?)?,
        };
        out.to_dtype(x_t.dtype())
    }
}

/// Uniform values in [lo, hi) from a fixed seed, as a tensor.
pub fn uniform(shape: &[usize], lo: f32, hi: f32, seed: u64) -> Result<Tensor> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    a.to_dtype(DType::F64)?
        .sub(&b.to_dtype(DType::F64)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f64>()
}

/// The elements of channel `c` of a (B, C, H, W) tensor, in f64.
pub fn channel(x: &Tensor, c: usize) -> Result<Vec<f64>> {
    x.narrow(1, c, 1)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()
}

/// Sample mean and (unbiased) variance.
pub fn mean_var(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, var)
}

//! StableSR's optional colour corrections of the decoded image towards the input's
//! colours (`scripts/wavelet_color_fix.py`): AdaIN matches each channel's mean and
//! standard deviation; the wavelet fix keeps the decoded image's high frequencies and
//! takes the low frequencies from the input.

use candle_core::{Result, Tensor, D};
use serde::{Deserialize, Serialize};

/// Added to the variance before its square root (StableSR's `calc_mean_std`).
const ADAIN_EPS: f64 = 1e-5;
/// Levels of the wavelet decomposition (StableSR's default).
const WAVELET_LEVELS: usize = 5;

/// Which colour correction runs on the decoded image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColourFix {
    /// None (StableSR's scripts' default, `nofix`).
    #[default]
    None,
    /// Per-channel mean and standard deviation of the input (`adain`, used in the paper).
    Adain,
    /// Low frequencies of the input, high frequencies of the result (`wavelet`).
    Wavelet,
}

impl ColourFix {
    /// `none`, `adain` or `wavelet`.
    pub fn parse(name: &str) -> anyhow::Result<Self> {
        Ok(match name {
            "none" | "nofix" => Self::None,
            "adain" => Self::Adain,
            "wavelet" => Self::Wavelet,
            other => anyhow::bail!("unknown colour fix {other:?}: use none, adain or wavelet"),
        })
    }

    /// `content` (B, C, H, W) corrected towards `style` of the same shape.
    pub fn apply(self, content: &Tensor, style: &Tensor) -> Result<Tensor> {
        match self {
            Self::None => Ok(content.clone()),
            Self::Adain => adain(content, style),
            Self::Wavelet => wavelet_reconstruction(content, style),
        }
    }
}

/// Per-channel mean and standard deviation over H and W, (B, C, 1, 1) each; the variance
/// is the unbiased one, as torch's `var`.
fn mean_std(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let (b, c, h, w) = x.dims4()?;
    let flat = x.reshape((b, c, h * w))?;
    let mean = flat.mean_keepdim(D::Minus1)?;
    let n = (h * w) as f64;
    let var = (flat.broadcast_sub(&mean)?.sqr()?.sum_keepdim(D::Minus1)? / (n - 1.0).max(1.0))?;
    let std = (var + ADAIN_EPS)?.sqrt()?;
    Ok((mean.reshape((b, c, 1, 1))?, std.reshape((b, c, 1, 1))?))
}

/// `content` with each channel's mean and standard deviation replaced by `style`'s.
pub fn adain(content: &Tensor, style: &Tensor) -> Result<Tensor> {
    let (c_mean, c_std) = mean_std(content)?;
    let (s_mean, s_std) = mean_std(style)?;
    content
        .broadcast_sub(&c_mean)?
        .broadcast_div(&c_std)?
        .broadcast_mul(&s_std)?
        .broadcast_add(&s_mean)
}

/// The 3x3 binomial blur with holes of `radius` (dilation), edge pixels repeated.
fn wavelet_blur(x: &Tensor, radius: usize) -> Result<Tensor> {
    let c = x.dim(1)?;
    let k: [f32; 9] = [
        1.0 / 16.0,
        1.0 / 8.0,
        1.0 / 16.0,
        1.0 / 8.0,
        1.0 / 4.0,
        1.0 / 8.0,
        1.0 / 16.0,
        1.0 / 8.0,
        1.0 / 16.0,
    ];
    let kernel = Tensor::new(&k, x.device())?
        .to_dtype(x.dtype())?
        .reshape((1, 1, 3, 3))?
        .repeat((c, 1, 1, 1))?;
    let padded =
        x.pad_with_same(D::Minus1, radius, radius)?
            .pad_with_same(D::Minus2, radius, radius)?;
    padded.conv2d(&kernel, 0, 1, radius, c)
}

/// (high frequencies, low frequencies) of `x`, which sum to `x`.
pub fn wavelet_decomposition(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let mut high = x.zeros_like()?;
    let mut low = x.clone();
    for level in 0..WAVELET_LEVELS {
        let blurred = wavelet_blur(&low, 1 << level)?;
        high = (high + (&low - &blurred)?)?;
        low = blurred;
    }
    Ok((high, low))
}

/// `content`'s high frequencies plus `style`'s low frequencies.
pub fn wavelet_reconstruction(content: &Tensor, style: &Tensor) -> Result<Tensor> {
    let (content_high, _) = wavelet_decomposition(content)?;
    let (_, style_low) = wavelet_decomposition(style)?;
    content_high + style_low
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn adain_takes_the_style_statistics() {
        let content = Tensor::randn(0.3f32, 2.0, (1, 3, 9, 7), &Device::Cpu).unwrap();
        let style = Tensor::randn(-0.5f32, 0.2, (1, 3, 9, 7), &Device::Cpu).unwrap();
        let fixed = adain(&content, &style).unwrap();
        let (fm, fs) = mean_std(&fixed).unwrap();
        let (sm, ss) = mean_std(&style).unwrap();
        // The eps under the square root makes the std match to ~eps / (2 std²).
        assert!(max_abs(&(fm - sm).unwrap()) < 1e-5);
        assert!(max_abs(&(fs - ss).unwrap()) < 1e-3);
    }

    #[test]
    fn wavelet_bands_sum_to_the_image_and_constants_pass_through() {
        let x = Tensor::randn(0f32, 1.0, (1, 3, 20, 17), &Device::Cpu).unwrap();
        let (high, low) = wavelet_decomposition(&x).unwrap();
        assert!(max_abs(&((high + low).unwrap() - &x).unwrap()) < 1e-5);
        // A constant image has no high frequencies, whatever the padding.
        let flat = Tensor::full(0.25f32, (1, 3, 20, 17), &Device::Cpu).unwrap();
        let (high, low) = wavelet_decomposition(&flat).unwrap();
        assert!(max_abs(&high) < 1e-6);
        assert!(max_abs(&(low - 0.25).unwrap()) < 1e-6);
    }
}

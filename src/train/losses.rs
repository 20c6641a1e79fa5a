//! The losses of the design note on a predicted clean sprite, as pure tensor functions.
//!
//! Tensors are (B, 4, H, W) RGBA in [-1, 1] with straight alpha. Colour terms count only
//! where the target is opaque (a transparent pixel's colour is invisible), weighted by
//! the target's alpha mask.

use candle_core::{DType, Result, Tensor, D};

/// The target's opacity as a (B, 1, H, W) mask of 0 and 1 (alpha above the middle).
pub fn opaque_mask(target: &Tensor) -> Result<Tensor> {
    target.narrow(1, 3, 1)?.ge(0.0)?.to_dtype(DType::F32)
}

/// Mean over the masked pixels of `values` (B, C, H, W) with `mask` (B, 1, H, W); 0 when
/// nothing is masked in.
fn masked_mean(values: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let channels = values.dim(1)? as f64;
    let weighted = values.broadcast_mul(mask)?.sum_all()?;
    let count = (mask.sum_all()? * channels)?;
    weighted.broadcast_div(&(count + 1e-6)?)
}

/// L1 of the colour on opaque target pixels, plus L1 of alpha everywhere.
pub fn pixel_l1(pred: &Tensor, target: &Tensor) -> Result<(Tensor, Tensor)> {
    let mask = opaque_mask(target)?;
    let colour = masked_mean(&(pred.narrow(1, 0, 3)? - target.narrow(1, 0, 3)?)?.abs()?, &mask)?;
    let alpha = (pred.narrow(1, 3, 1)? - target.narrow(1, 3, 1)?)?.abs()?.mean_all()?;
    Ok((colour, alpha))
}

/// Sobel gradients (x and y) of every channel on the interior (H-2, W-2) positions:
/// `gx = [[-1,0,1],[-2,0,2],[-1,0,1]]` correlated with the image, `gy` its transpose.
pub fn sobel(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let (_, _, h, w) = x.dims4()?;
    if h < 3 || w < 3 {
        candle_core::bail!("sobel needs at least 3x3 pixels, got {h}x{w}");
    }
    let at = |dy: isize, dx: isize| x.narrow(2, (1 + dy) as usize, h - 2)?.narrow(3, (1 + dx) as usize, w - 2);
    let gx = ((at(-1, 1)? + (at(0, 1)? * 2.0)? + at(1, 1)?)? - (at(-1, -1)? + (at(0, -1)? * 2.0)? + at(1, -1)?)?)?;
    let gy = ((at(1, -1)? + (at(1, 0)? * 2.0)? + at(1, 1)?)? - (at(-1, -1)? + (at(-1, 0)? * 2.0)? + at(-1, 1)?)?)?;
    Ok((gx, gy))
}

/// Mean L1 between the Sobel gradients of prediction and target, on premultiplied colour
/// and alpha (so a transparent pixel's colour does not make edges).
pub fn edge_loss(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    let premultiplied = |t: &Tensor| -> Result<Tensor> {
        let alpha = ((t.narrow(1, 3, 1)? + 1.0)? * 0.5)?;
        Tensor::cat(&[t.narrow(1, 0, 3)?.broadcast_mul(&alpha)?, t.narrow(1, 3, 1)?], 1)
    };
    let (px, py) = sobel(&premultiplied(pred)?)?;
    let (tx, ty) = sobel(&premultiplied(target)?)?;
    ((px - tx)?.abs()?.mean_all()? + (py - ty)?.abs()?.mean_all()?)? * 0.5
}

/// The palette quantisation penalty: for each opaque target pixel, the squared RGB
/// distance from the prediction to the nearest colour of that sample's palette, averaged.
/// `palettes` is (B, K, 3) in [-1, 1]: each sample's clean colours, padded to K by
/// repeating one of them (a repeat never changes a minimum).
pub fn palette_loss(pred: &Tensor, target: &Tensor, palettes: &Tensor) -> Result<Tensor> {
    let (b, _, h, w) = pred.dims4()?;
    let rgb = pred.narrow(1, 0, 3)?.reshape((b, 3, h * w))?.transpose(1, 2)?; // (B, HW, 3)
    let diff = rgb.unsqueeze(2)?.broadcast_sub(&palettes.unsqueeze(1)?)?; // (B, HW, K, 3)
    let nearest = diff.sqr()?.sum(D::Minus1)?.min(D::Minus1)?; // (B, HW)
    let mask = opaque_mask(target)?.reshape((b, 1, h * w))?;
    masked_mean(&nearest.reshape((b, 1, h * w))?, &mask)
}

/// Each sample's distinct opaque colours in the target (B, 4, H, W), as (B, K, 3) padded
/// by repeating the first colour; a sample with no opaque pixel gets black (its penalty
/// is masked out anyway).
pub fn target_palettes(target: &Tensor) -> Result<Tensor> {
    let (b, _, h, w) = target.dims4()?;
    let data = target.to_dtype(DType::F32)?.to_device(&candle_core::Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
    let plane = h * w;
    let mut palettes: Vec<Vec<[f32; 3]>> = Vec::with_capacity(b);
    for s in 0..b {
        let base = s * 4 * plane;
        let mut colours: Vec<[f32; 3]> = Vec::new();
        for p in 0..plane {
            if data[base + 3 * plane + p] < 0.0 {
                continue;
            }
            let c = [data[base + p], data[base + plane + p], data[base + 2 * plane + p]];
            if !colours.iter().any(|k| k.iter().zip(&c).all(|(a, b)| (a - b).abs() < 1e-6)) {
                colours.push(c);
            }
        }
        if colours.is_empty() {
            colours.push([-1.0; 3]);
        }
        palettes.push(colours);
    }
    let k = palettes.iter().map(Vec::len).max().unwrap_or(1);
    let mut flat = Vec::with_capacity(b * k * 3);
    for colours in &palettes {
        for i in 0..k {
            flat.extend_from_slice(colours.get(i).unwrap_or(&colours[0]));
        }
    }
    Tensor::from_vec(flat, (b, k, 3), target.device())
}

/// Weights of the loss terms (0 switches a term off).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct LossWeights {
    /// The diffusion loss (eps or v), for the diffusion model.
    pub diffusion: f64,
    pub l1: f64,
    pub alpha: f64,
    pub edge: f64,
    pub palette: f64,
    /// The PatchGAN adversarial term on the predicted clean sprite (see
    /// [`crate::train::adversarial`]); 0, the default, trains no discriminator.
    #[serde(default)]
    pub adversarial: f64,
}

impl Default for LossWeights {
    fn default() -> Self {
        Self { diffusion: 1.0, l1: 1.0, alpha: 1.0, edge: 0.5, palette: 0.5, adversarial: 0.0 }
    }
}

/// A batch's training loss: the weighted total, each term's value for the log, and the
/// clean sprite (B, 4, H, W) the model predicted, which the adversarial term judges.
pub struct BatchLoss {
    pub total: Tensor,
    pub parts: Vec<(&'static str, f32)>,
    pub predicted: Tensor,
}

/// The clean-sprite losses, weighted and summed; also each term's value for the log.
pub fn sprite_losses(pred: &Tensor, target: &Tensor, w: &LossWeights) -> Result<(Tensor, Vec<(&'static str, f32)>)> {
    let (colour, alpha) = pixel_l1(pred, target)?;
    let mut total = ((&colour * w.l1)? + (&alpha * w.alpha)?)?;
    let mut parts = vec![("l1", colour.to_scalar::<f32>()?), ("alpha", alpha.to_scalar::<f32>()?)];
    if w.edge > 0.0 {
        let edge = edge_loss(pred, target)?;
        parts.push(("edge", edge.to_scalar::<f32>()?));
        total = (total + (edge * w.edge)?)?;
    }
    if w.palette > 0.0 {
        let palette = palette_loss(pred, target, &target_palettes(target)?)?;
        parts.push(("palette", palette.to_scalar::<f32>()?));
        total = (total + (palette * w.palette)?)?;
    }
    Ok((total, parts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn image(b: usize, h: usize, w: usize, seed: u64) -> Tensor {
        let n = b * 4 * h * w;
        let data: Vec<f32> = (0..n).map(|i| ((crate::rng::splitmix64(seed + i as u64) % 2001) as f32 / 1000.0) - 1.0).collect();
        Tensor::from_vec(data, (b, 4, h, w), &Device::Cpu).unwrap()
    }

    #[test]
    fn sobel_matches_a_direct_correlation() {
        let x = image(1, 5, 6, 1);
        let (gx, gy) = sobel(&x).unwrap();
        let px = |c: usize, y: usize, xx: usize| x.get(0).unwrap().get(c).unwrap().get(y).unwrap().get(xx).unwrap().to_scalar::<f32>().unwrap();
        let kx = [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]];
        for c in 0..4 {
            for y in 1..4 {
                for xx in 1..5 {
                    let (mut sx, mut sy) = (0.0f32, 0.0f32);
                    for i in 0..3 {
                        for j in 0..3 {
                            let v = px(c, y + i - 1, xx + j - 1);
                            sx += kx[i][j] * v;
                            sy += kx[j][i] * v;
                        }
                    }
                    let got_x = gx.get(0).unwrap().get(c).unwrap().get(y - 1).unwrap().get(xx - 1).unwrap().to_scalar::<f32>().unwrap();
                    let got_y = gy.get(0).unwrap().get(c).unwrap().get(y - 1).unwrap().get(xx - 1).unwrap().to_scalar::<f32>().unwrap();
                    assert!((got_x - sx).abs() < 1e-5 && (got_y - sy).abs() < 1e-5, "c{c} y{y} x{xx}: {got_x}/{sx} {got_y}/{sy}");
                }
            }
        }
    }

    #[test]
    fn losses_vanish_on_the_target_and_not_elsewhere() {
        let t = image(2, 6, 6, 3);
        let w = LossWeights::default();
        let (zero, _) = sprite_losses(&t, &t, &w).unwrap();
        assert!(zero.to_scalar::<f32>().unwrap().abs() < 1e-5);
        let (other, parts) = sprite_losses(&image(2, 6, 6, 99), &t, &w).unwrap();
        assert!(other.to_scalar::<f32>().unwrap() > 0.1, "{parts:?}");
        assert!(parts.iter().all(|(_, v)| *v > 0.0), "{parts:?}");
    }

    #[test]
    fn palette_penalty_is_the_distance_to_the_nearest_palette_colour() {
        // Target: one opaque colour (0.5, 0, 0) and one transparent pixel; prediction
        // (0.5, 0.3, 0.4) on the opaque pixel: squared distance 0.09 + 0.16 = 0.25, the
        // transparent pixel is masked out.
        let target = Tensor::from_vec(vec![0.5f32, 0.9, 0.0, 0.9, 0.0, 0.9, 1.0, -1.0], (1, 4, 1, 2), &Device::Cpu).unwrap();
        let pred = Tensor::from_vec(vec![0.5f32, -1.0, 0.3, 1.0, 0.4, 1.0, 1.0, 1.0], (1, 4, 1, 2), &Device::Cpu).unwrap();
        let pal = target_palettes(&target).unwrap();
        assert_eq!(pal.dims(), &[1, 1, 3]);
        let loss = palette_loss(&pred, &target, &pal).unwrap().to_scalar::<f32>().unwrap();
        assert!((loss - 0.25).abs() < 1e-4, "{loss}");
    }
}

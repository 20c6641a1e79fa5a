//! Overlapping latent tiles and their blending weights. StableSR's tile script
//! (`sr_val_ddpm_text_T_vqganfin_oldcanvas_tile.py`, `p_mean_variance_canvas`) runs a large
//! latent through networks trained on 64 x 64 latents this way: at every step each tile is
//! denoised on its own and the tiles' noise predictions are averaged with weights that
//! fall off towards each tile's border, where the networks see the least context.
//!
//! StableSR weights a tile with a Gaussian of a tenth of its side. Between tiles 32 apart
//! that hands a position from one tile to the next within a few pixels (up to a fifth of
//! the blend per pixel for 64-tiles overlapping by 32, two thirds for 16-tiles by 8), so
//! here each tile's weight instead ramps up as `sin²` over the first `overlap` pixels and
//! down over the last `overlap`, flat between: where two tiles overlap by `overlap` their
//! shares are `sin²` and `cos²`, and a position's share moves by at most `π / (2 overlap)`
//! per pixel. The weights are normalised per tile before the sum (`w_i / Σ w`), so a single
//! tile reproduces the untiled prediction bit for bit, and a tile larger than the latent
//! shrinks to the latent's side.

use crate::tiling::tile_starts;
use candle_core::{bail, Device, Result, Tensor, D};

/// The weight of each position along a tile side of `len`: `sin²` ramps over the first
/// and the last `overlap` positions (sampled at pixel centres, so never 0), 1 between.
fn ramp_profile(len: usize, overlap: usize) -> Vec<f64> {
    let ramp = |i: usize| {
        if i >= overlap {
            1.0
        } else {
            let x = (i as f64 + 0.5) / overlap as f64 * std::f64::consts::FRAC_PI_2;
            x.sin().powi(2)
        }
    };
    (0..len).map(|i| ramp(i).min(ramp(len - 1 - i))).collect()
}

/// One tile: its top-left corner in the latent and its normalised blending weight.
#[derive(Debug, Clone)]
pub struct Tile {
    /// Row of the top edge.
    pub y: usize,
    /// Column of the left edge.
    pub x: usize,
    /// (1, 1, tile_h, tile_w): this tile's share of the blend at each of its positions;
    /// the shares of all tiles covering a position sum to 1.
    pub weight: Tensor,
}

/// How a latent of `height` x `width` is cut into overlapping tiles.
#[derive(Debug, Clone)]
pub struct TileLayout {
    /// Height and width of the latent.
    pub height: usize,
    pub width: usize,
    /// Height and width of every tile (the tile size, or the latent's side if smaller).
    pub tile_height: usize,
    pub tile_width: usize,
    /// The tiles, row by row.
    pub tiles: Vec<Tile>,
}

impl TileLayout {
    /// Tiles of `size` x `size` (shrunk to the latent where it is smaller) overlapping by
    /// `overlap`, covering a `height` x `width` latent, with weights on `device`.
    pub fn new(
        height: usize,
        width: usize,
        size: usize,
        overlap: usize,
        device: &Device,
    ) -> Result<Self> {
        if height == 0 || width == 0 {
            bail!("cannot tile an empty latent ({height}x{width})");
        }
        if size == 0 || overlap >= size {
            bail!("tile overlap {overlap} must be smaller than the tile size {size}");
        }
        let (tile_height, tile_width) = (size.min(height), size.min(width));
        // A shrunk tile covers its whole axis, so the overlap never reaches its size.
        let overlap_for = |tile: usize| overlap.min(tile - 1);
        let (overlap_y, overlap_x) = (overlap_for(tile_height), overlap_for(tile_width));
        let ys = tile_starts(height, tile_height, overlap_y);
        let xs = tile_starts(width, tile_width, overlap_x);
        let wy = ramp_profile(tile_height, overlap_y);
        let wx = ramp_profile(tile_width, overlap_x);
        let mut total = vec![0.0f64; height * width];
        for &y in &ys {
            for &x in &xs {
                for (i, wyi) in wy.iter().enumerate() {
                    for (j, wxj) in wx.iter().enumerate() {
                        total[(y + i) * width + x + j] += wyi * wxj;
                    }
                }
            }
        }
        let mut tiles = Vec::with_capacity(ys.len() * xs.len());
        for &y in &ys {
            for &x in &xs {
                let mut share = Vec::with_capacity(tile_height * tile_width);
                for (i, wyi) in wy.iter().enumerate() {
                    for (j, wxj) in wx.iter().enumerate() {
                        share.push((wyi * wxj / total[(y + i) * width + x + j]) as f32);
                    }
                }
                let weight = Tensor::from_vec(share, (1, 1, tile_height, tile_width), device)?;
                tiles.push(Tile { y, x, weight });
            }
        }
        Ok(Self {
            height,
            width,
            tile_height,
            tile_width,
            tiles,
        })
    }

    /// `t` (B, C, height, width) cut at tile `tile`: (B, C, tile_height, tile_width).
    pub fn crop(&self, t: &Tensor, tile: &Tile) -> Result<Tensor> {
        t.narrow(D::Minus2, tile.y, self.tile_height)?
            .narrow(D::Minus1, tile.x, self.tile_width)
    }

    /// The blend of per-tile outputs (one (B, C, tile_height, tile_width) per tile, in
    /// the order of [`TileLayout::tiles`]) into a (B, C, height, width) tensor.
    pub fn blend(&self, outputs: &[Tensor]) -> Result<Tensor> {
        if outputs.len() != self.tiles.len() {
            bail!(
                "{} tile outputs for a layout of {} tiles",
                outputs.len(),
                self.tiles.len()
            );
        }
        let mut sum: Option<Tensor> = None;
        for (out, tile) in outputs.iter().zip(&self.tiles) {
            let weighted = out.broadcast_mul(&tile.weight)?;
            let placed = weighted
                .pad_with_zeros(D::Minus2, tile.y, self.height - tile.y - self.tile_height)?
                .pad_with_zeros(D::Minus1, tile.x, self.width - tile.x - self.tile_width)?;
            sum = Some(match sum {
                None => placed,
                Some(s) => (s + placed)?,
            });
        }
        sum.ok_or_else(|| candle_core::Error::Msg("a tile layout without tiles".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_the_axis_with_the_last_one_flush() {
        assert_eq!(tile_starts(40, 16, 8), vec![0, 8, 16, 24]);
        assert_eq!(tile_starts(41, 16, 8), vec![0, 8, 16, 24, 25]);
        assert_eq!(tile_starts(16, 16, 8), vec![0]);
        assert_eq!(tile_starts(100, 64, 32), vec![0, 32, 36]);
    }

    #[test]
    fn shares_sum_to_one_everywhere() {
        let layout = TileLayout::new(37, 23, 16, 6, &Device::Cpu).unwrap();
        assert_eq!((layout.tile_height, layout.tile_width), (16, 16));
        let ones: Vec<Tensor> = layout
            .tiles
            .iter()
            .map(|_| Tensor::ones((1, 1, 16, 16), candle_core::DType::F32, &Device::Cpu))
            .collect::<Result<_>>()
            .unwrap();
        let total = layout.blend(&ones).unwrap();
        let err = (total - 1.0)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(err < 1e-6, "shares sum to 1 within 1e-6, max error {err}");
    }

    #[test]
    fn a_tile_larger_than_the_latent_shrinks_to_it() {
        let layout = TileLayout::new(12, 20, 64, 32, &Device::Cpu).unwrap();
        assert_eq!(layout.tiles.len(), 1);
        assert_eq!((layout.tile_height, layout.tile_width), (12, 20));
        let w = layout.tiles[0].weight.flatten_all().unwrap();
        assert!(w.to_vec1::<f32>().unwrap().iter().all(|&v| v == 1.0));
    }

    #[test]
    fn ramps_are_complementary_where_two_tiles_overlap() {
        let p = ramp_profile(16, 8);
        for i in 0..8 {
            assert!(
                (p[i + 8] + p[i] - 1.0).abs() < 1e-12,
                "{i}: {} + {}",
                p[i + 8],
                p[i]
            );
        }
        assert_eq!(ramp_profile(5, 0), vec![1.0; 5]);
        assert!(ramp_profile(9, 3).iter().all(|&w| w > 0.0));
    }

    #[test]
    fn bad_overlap_is_refused() {
        let err = TileLayout::new(64, 64, 16, 16, &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("overlap"), "{err}");
    }
}

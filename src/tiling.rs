//! Running a network over a large image in overlapping tiles.
//!
//! The learned restorers attend over every position of their input, so their time and
//! memory grow with the square of their area: the fast model took 60 s and 8.7 GB for a
//! sheet of 256x256 cells in one piece (6 s and 0.26 GB in tiles). In tiles of a fixed
//! size the cost is linear in the area. Tiles overlap, and each output pixel comes from
//! the tile whose centre is nearest to it, so every pixel is predicted with at least
//! `margin` cells of context on each side (or the image edge): the models are trained on
//! 16x16-cell patches and use no more context than that.

use candle_core::{Tensor, D};

/// One tile along one axis: where it starts, and which part of the output it supplies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// First position of the tile.
    pub start: usize,
    /// Positions `own_start..own_end` of the output come from this tile.
    pub own_start: usize,
    pub own_end: usize,
}

/// Where tiles of one side length start along one axis of length `len`: every
/// `tile - overlap`, the last one flush with the end. `tile` is at most `len`.
pub fn tile_starts(len: usize, tile: usize, overlap: usize) -> Vec<usize> {
    let stride = tile - overlap;
    let mut starts = Vec::new();
    let mut start = 0;
    loop {
        if start + tile >= len {
            starts.push(len - tile);
            return starts;
        }
        starts.push(start);
        start += stride;
    }
}

/// The tiles covering `len` positions with tiles of `tile` positions: one tile of `len`
/// when it fits; otherwise tiles every `tile - 2 * margin` positions, the last one flush
/// with the end. The owned parts partition `0..len`, and each lies at least `margin`
/// positions inside its tile wherever it does not touch the image edge.
///
/// Panics unless `tile > 2 * margin`.
pub fn spans(len: usize, tile: usize, margin: usize) -> Vec<Span> {
    assert!(tile > 2 * margin, "a tile of {tile} cannot keep a margin of {margin} on both sides");
    if len <= tile {
        return vec![Span { start: 0, own_start: 0, own_end: len }];
    }
    let starts = tile_starts(len, tile, 2 * margin);
    // Between neighbours the owner changes half way between their centres; neighbours are
    // at most `tile - 2 * margin` apart, so that point is at least `margin` inside both.
    let boundaries: Vec<usize> = starts.windows(2).map(|w| (w[0] + w[1] + tile) / 2).collect();
    starts
        .iter()
        .enumerate()
        .map(|(i, &start)| Span {
            start,
            own_start: if i == 0 { 0 } else { boundaries[i - 1] },
            own_end: boundaries.get(i).copied().unwrap_or(len),
        })
        .collect()
}

/// How to tile: tiles of `tile` cells a side, `margin` cells of context kept around each
/// owned part, at most `batch` tiles per call of the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiling {
    pub tile: usize,
    pub margin: usize,
    pub batch: usize,
}

impl Default for Tiling {
    /// 64-cell tiles (a large sprite in one piece), 8 cells of context (half a training
    /// patch), 4 tiles per call.
    fn default() -> Self {
        Self { tile: 64, margin: 8, batch: 4 }
    }
}

/// `net` applied to `input` (1, C, H, W) in tiles: `net` gets a batch (N, C, h, w) of
/// tiles, all the same size, and the index of the first tile in the image's tile order
/// (row-major; to seed each tile), and returns (N, C', h, w). The result is (1, C', H, W).
/// An input that fits in one tile goes to `net` whole.
pub fn map_tiles<E: From<candle_core::Error>>(input: &Tensor, tiling: Tiling, mut net: impl FnMut(&Tensor, usize) -> Result<Tensor, E>) -> Result<Tensor, E> {
    let (b, _, h, w) = input.dims4()?;
    if b != 1 {
        return Err(candle_core::Error::Msg(format!("map_tiles takes one image at a time, got a batch of {b}")).into());
    }
    if h <= tiling.tile && w <= tiling.tile {
        return net(input, 0);
    }
    let (rows, cols) = (spans(h, tiling.tile, tiling.margin), spans(w, tiling.tile, tiling.margin));
    let tiles: Vec<(Span, Span)> = rows.iter().flat_map(|&r| cols.iter().map(move |&c| (r, c))).collect();
    let (tile_h, tile_w) = (h.min(tiling.tile), w.min(tiling.tile));
    let mut owned = Vec::with_capacity(tiles.len());
    for (chunk_index, chunk) in tiles.chunks(tiling.batch.max(1)).enumerate() {
        let crops = chunk
            .iter()
            .map(|(r, c)| input.narrow(D::Minus2, r.start, tile_h)?.narrow(D::Minus1, c.start, tile_w))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let out = net(&Tensor::cat(&crops, 0)?, chunk_index * tiling.batch.max(1))?;
        for (i, (r, c)) in chunk.iter().enumerate() {
            let part = out
                .narrow(0, i, 1)?
                .narrow(D::Minus2, r.own_start - r.start, r.own_end - r.own_start)?
                .narrow(D::Minus1, c.own_start - c.start, c.own_end - c.own_start)?;
            owned.push(part);
        }
    }
    let stitched_rows = owned.chunks(cols.len()).map(|row| Tensor::cat(row, D::Minus1)).collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&stitched_rows, D::Minus2)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn owned_parts_partition_the_axis_each_with_its_margin(len in 1usize..400, tile in 3usize..80, margin in 0usize..20) {
            prop_assume!(tile > 2 * margin);
            let spans = spans(len, tile, margin);
            prop_assert_eq!(spans[0].own_start, 0);
            prop_assert_eq!(spans.last().unwrap().own_end, len);
            for pair in spans.windows(2) {
                prop_assert_eq!(pair[0].own_end, pair[1].own_start);
            }
            for s in &spans {
                let size = tile.min(len);
                prop_assert!(s.own_start < s.own_end, "{:?} owns nothing", s);
                prop_assert!(s.start + size <= len);
                prop_assert!(s.own_start == 0 || s.own_start >= s.start + margin, "{:?}: context before", s);
                prop_assert!(s.own_end == len || s.own_end + margin <= s.start + size, "{:?}: context after", s);
            }
        }
    }

    /// Each output position must come from the right place of the input: with a network
    /// that adds each tile's batch index times 1000, the stitched output is the input plus
    /// the owner's index, and the owner is the one `spans` names.
    #[test]
    fn stitching_puts_each_owned_part_back_in_place() {
        let (h, w) = (37, 150);
        let input = Tensor::arange(0f32, (h * w * 2) as f32, &Device::Cpu).unwrap().reshape((1, 2, h, w)).unwrap();
        let tiling = Tiling { tile: 16, margin: 3, batch: 3 };
        let out = map_tiles(&input, tiling, |tiles, first| {
            let n = tiles.dim(0)?;
            let index = Tensor::arange(first as f32, (first + n) as f32, tiles.device())?.reshape((n, 1, 1, 1))?;
            tiles.broadcast_add(&(index * 1000.0)?)
        })
        .unwrap();
        assert_eq!(out.dims(), input.dims());
        let (rows, cols) = (spans(h, 16, 3), spans(w, 16, 3));
        let owner = |y: usize, x: usize| {
            let r = rows.iter().position(|s| (s.own_start..s.own_end).contains(&y)).unwrap();
            let c = cols.iter().position(|s| (s.own_start..s.own_end).contains(&x)).unwrap();
            (r * cols.len() + c) as f32
        };
        let got = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want: Vec<f32> = input.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().enumerate().map(|(i, v)| v + 1000.0 * owner((i / w) % h, i % w)).collect();
        assert_eq!(got, want);
        assert!(rows.len() > 1 && cols.len() > 1, "the test must cross tile seams in both directions");
    }

    #[test]
    fn an_input_that_fits_goes_whole() {
        let input = Tensor::zeros((1, 3, 20, 30), candle_core::DType::F32, &Device::Cpu).unwrap();
        let mut calls = 0;
        map_tiles(&input, Tiling { tile: 32, margin: 4, batch: 2 }, |t, _| {
            calls += 1;
            assert_eq!(t.dims(), &[1, 3, 20, 30]);
            candle_core::Result::Ok(t.clone())
        })
        .unwrap();
        assert_eq!(calls, 1);
    }
}

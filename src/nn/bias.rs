//! The bias of a convolution: adding a per-channel bias to every row of `(pixels, C)`
//! in place, and its gradient, the column sums, in parallel. The bias may also differ per
//! sample (`(N, C)`, one row per sample's block of pixels): a ResBlock adds its timestep
//! embedding to the convolution's output per sample and channel, and folded into the bias
//! that costs no pass of its own, forward or backward.
//!
//! candle's `broadcast_add` computes the bias gradient with its generic reduction, which
//! runs on one thread over a strided view: 4 ms per convolution of the issue-4 benchmark
//! net, serial time that a second core could not help with. Here the column sums are split
//! over row blocks, summed per block in contiguous order, and the blocks' sums added.
//! Measured on a (16384, 64) matrix, forward and backward: 6.3 ms with `broadcast_add`,
//! 4.1 ms with a custom op on one thread; 4.8 ms against 1.2 ms on two. The addition
//! itself runs inside the convolution's op ([`super::conv`]), so that autograd sees one op
//! instead of a convolution, two reshapes and an addition (each of which allocates, zeroes
//! and adds a gradient the size of the activations).

use candle_core::{backend::BackendStorage, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

/// Rows per parallel block.
const ROWS_PER_BLOCK: usize = 256;

/// Adds the bias rows `bias` (`(G, C)` row-major) to the row-major `(R, C)` matrix `rows`,
/// whose `R = G * rows_per_group` rows come in `G` consecutive groups: group `g` gets bias
/// row `g`. One bias row for all rows is `G = 1`.
pub(super) fn add_to_rows<T: WithDType>(rows: &mut [T], bias: &[T], c: usize, rows_per_group: usize) {
    rows.par_chunks_mut(c * ROWS_PER_BLOCK).enumerate().for_each(|(block, values)| {
        for (i, row) in values.chunks_mut(c).enumerate() {
            let group = (block * ROWS_PER_BLOCK + i) / rows_per_group;
            for (v, &b) in row.iter_mut().zip(&bias[group * c..(group + 1) * c]) {
                *v += b;
            }
        }
    });
}

/// Column sums of a `(R, C)` matrix per group of `rows_per_group` consecutive rows:
/// `(R / rows_per_group, C)` (no backward: it only serves gradients).
struct ColumnSums {
    rows_per_group: usize,
}

fn column_sums<T: WithDType>(x: &[T], c: usize, rows_per_group: usize) -> Vec<T> {
    let groups = x.len() / c / rows_per_group;
    // Blocks never straddle two groups, so each block's sums belong to one of them.
    let blocks_per_group = rows_per_group.div_ceil(ROWS_PER_BLOCK);
    let partial: Vec<Vec<f64>> = (0..groups * blocks_per_group)
        .into_par_iter()
        .map(|i| {
            let (group, block) = (i / blocks_per_group, i % blocks_per_group);
            let start = group * rows_per_group + block * ROWS_PER_BLOCK;
            let end = (start + ROWS_PER_BLOCK).min((group + 1) * rows_per_group);
            let mut sums = vec![0.0f64; c];
            for row in x[start * c..end * c].chunks(c) {
                for (s, &v) in sums.iter_mut().zip(row) {
                    *s += v.to_f64();
                }
            }
            sums
        })
        .collect();
    partial.chunks(blocks_per_group).flat_map(|blocks| (0..c).map(|j| T::from_f64(blocks.iter().map(|p| p[j]).sum()))).collect()
}

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "column_sums"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (r, c) = layout.shape().dims2()?;
        if self.rows_per_group == 0 || r % self.rows_per_group != 0 {
            candle_core::bail!("column_sums: {r} rows do not split into groups of {}", self.rows_per_group);
        }
        let out = with_float_slices!(self.name(), storage, [(storage, layout)], |x| column_sums(x, c, self.rows_per_group));
        Ok((out, Shape::from((r / self.rows_per_group, c))))
    }
}

/// The sums over the rows of `(R, C)` `x` in `groups` groups of consecutive rows:
/// `(groups, C)`, accumulated in f64. Not differentiable.
pub(super) fn sum_rows(x: &Tensor, groups: usize) -> Result<Tensor> {
    let rows = x.dim(0)?;
    if groups == 0 || rows % groups != 0 {
        candle_core::bail!("sum_rows: {rows} rows do not split into {groups} groups");
    }
    x.contiguous()?.apply_op1_no_bwd(&ColumnSums { rows_per_group: rows / groups })
}

/// `x` `(R, C)` plus `bias` `(C,)` on every row: a linear map's bias, where candle's
/// `broadcast_add` would sum the gradient over the rows on one thread.
struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "add_bias"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, bs: &CpuStorage, bl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (r, c) = xl.shape().dims2()?;
        if bl.shape().elem_count() != c {
            candle_core::bail!("add_bias: {} bias entries for {c} columns", bl.shape().elem_count());
        }
        let out = with_float_slices!(self.name(), xs, [(xs, xl), (bs, bl)], |x, bias| {
            let mut rows = x.to_vec();
            add_to_rows(&mut rows, bias, c, r.max(1));
            rows
        });
        Ok((out, xl.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, bias: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.clone()), Some(sum_rows(grad, 1)?.reshape(bias.shape())?)))
    }
}

/// `x` `(R, C)` plus `bias` `(C,)` on every row (differentiable); CPU, f32 or f64.
pub fn add_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&bias.contiguous()?, AddBias)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testing::{max_abs_diff, randn};

    #[test]
    fn match_candle_broadcast_add_and_sum() {
        // One row, one column, rows that do not fill the last block, groups smaller and
        // larger than a block and not dividing it; f64, tolerance 1e-12.
        for &(groups, rows_per_group, c) in &[(1, 1, 5), (1, 7, 1), (1, 1000, 3), (1, 513, 64), (3, 1, 2), (4, 300, 3), (2, 256, 5), (5, 100, 64)] {
            let r = groups * rows_per_group;
            let (y, b) = (randn((groups, rows_per_group, c), 1), randn((groups, 1, c), 2));
            let mut rows = y.flatten_all().unwrap().to_vec1::<f64>().unwrap();
            add_to_rows(&mut rows, &b.flatten_all().unwrap().to_vec1::<f64>().unwrap(), c, rows_per_group);
            let ours = Tensor::from_vec(rows, (groups, rows_per_group, c), y.device()).unwrap();
            assert!(max_abs_diff(&ours, &y.broadcast_add(&b).unwrap()) < 1e-12, "add {groups}x{rows_per_group}x{c}");
            let sums = sum_rows(&y.reshape((r, c)).unwrap(), groups).unwrap();
            assert!(max_abs_diff(&sums, &y.sum(1).unwrap()) < 1e-12, "sums {groups}x{rows_per_group}x{c}");
        }
        assert!(sum_rows(&randn((5, 2), 3), 2).is_err(), "5 rows in 2 groups");
    }

    #[test]
    fn add_bias_matches_broadcast_add_under_autograd() {
        // Forward and both gradients of <x + bias, r>; f64, tolerance 1e-12.
        use candle_core::Var;
        for &(r, c) in &[(1, 3), (700, 5)] {
            let (x, b) = (Var::from_tensor(&randn((r, c), 4)).unwrap(), Var::from_tensor(&randn(c, 5)).unwrap());
            let ours = add_bias(x.as_tensor(), b.as_tensor()).unwrap();
            let reference = x.as_tensor().broadcast_add(b.as_tensor()).unwrap();
            assert!(max_abs_diff(&ours, &reference) < 1e-12, "forward {r}x{c}");
            let weights = randn((r, c), 6);
            let g_ours = ours.mul(&weights).unwrap().sum_all().unwrap().backward().unwrap();
            let g_ref = reference.mul(&weights).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &b] {
                assert!(max_abs_diff(g_ours.get(v).unwrap(), g_ref.get(v).unwrap()) < 1e-12, "gradient {r}x{c}");
            }
        }
    }
}

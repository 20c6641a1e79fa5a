//! Launch configurations of the kernels, shared by the CUDA path and the emulated tests so
//! that the tests run the kernels with the grids the GPU gets.

use candle_core::{bail, Result};

/// Threads per block of the element-wise sampler kernels and of the palette snap.
const ELEMENTWISE_BLOCK: u32 = 256;
/// Threads per block of the cell reduction: each thread keeps ~3.5 KB of samples in local
/// memory, so blocks are kept small.
const REDUCE_BLOCK: u32 = 128;
/// Blocks along one sample's elements; the threads stride over the rest. 4096 blocks of
/// 256 threads are ~8 waves on the largest GPUs, enough to hide memory latency.
const MAX_BLOCKS_PER_SAMPLE: usize = 4096;
/// The most blocks of a 1-D launch (the grid-stride loops cover the rest).
const MAX_FLAT_BLOCKS: usize = 65_535;

/// A kernel launch's grid and block sizes (x, y, z).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LaunchDims {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
}

/// The sampler kernels' launch: `grid.y` is the sample, `grid.x` blocks stride over its
/// `per_sample` elements.
pub(crate) fn per_sample(per_sample: usize, batch: usize) -> Result<LaunchDims> {
    if batch > 65_535 {
        bail!("a fused sampler step takes at most 65535 samples per call, got {batch}: split the batch");
    }
    let blocks = per_sample
        .div_ceil(ELEMENTWISE_BLOCK as usize)
        .clamp(1, MAX_BLOCKS_PER_SAMPLE);
    Ok(LaunchDims {
        grid: (blocks as u32, batch.max(1) as u32, 1),
        block: (ELEMENTWISE_BLOCK, 1, 1),
    })
}

/// The cell reduction's launch: one thread per cell.
pub(crate) fn per_cell(cells: usize) -> LaunchDims {
    flat(cells, REDUCE_BLOCK)
}

/// The palette snap's launch: one thread per colour.
pub(crate) fn per_colour(colours: usize) -> LaunchDims {
    flat(colours, ELEMENTWISE_BLOCK)
}

fn flat(n: usize, block: u32) -> LaunchDims {
    let blocks = n.div_ceil(block as usize).clamp(1, MAX_FLAT_BLOCKS);
    LaunchDims {
        grid: (blocks as u32, 1, 1),
        block: (block, 1, 1),
    }
}

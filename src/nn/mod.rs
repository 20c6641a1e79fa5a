//! Fast CPU building blocks for the learned restorers, as candle custom ops.
//!
//! candle's CPU convolution backward runs a direct-loop transposed convolution, which makes
//! training on two cores impractical. The ops here keep activations in NHWC and express
//! convolution as im2col + matrix multiplication, so both passes are dominated by one
//! large matmul (candle's gemm) plus one parallel gather. Every op has a Rust forward and a
//! backward made of other ops, and is tested against candle's reference ops and against
//! finite differences.
//!
//! - [`bias`]: a convolution's or linear map's bias, added in place, and its gradient (column sums).
//! - [`conv`]: 3x3 convolution, zero padding 1, NHWC, with its own backward: [`conv::Conv3x3`].
//! - [`norm`]: GroupNorm followed by SiLU, fused: [`norm::group_norm_silu`].
//! - [`upsample`]: nearest 2x upsampling (NCHW or NHWC) with a sum-pool backward: [`upsample::upsample_nearest_2x`].
//! - [`rowwise`]: the transformer's ops over the last dimension, fused: LayerNorm, softmax, GEGLU.
//! - [`shapes`]: recording the keys and shapes a module asks for, without allocating.

/// Whether the ops here run `x`: on the CPU, in f32 or f64. Elsewhere callers fall back to
/// candle's own ops.
pub fn runs_on(x: &candle_core::Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), candle_core::DType::F32 | candle_core::DType::F64)
}

/// A zero-filled buffer, allocated uninitialised and then filled in parallel. `vec![0; n]`
/// asks the allocator for zeroed memory, which for large buffers means fresh pages from the
/// kernel every time (page faults dominated training steps); this way freed buffers are
/// reused. The fill is parallel because it runs on the calling thread before the op's
/// parallel loops: done serially it was 5% of a training step and a part that a second
/// thread could not speed up.
fn zeroed<T: candle_core::WithDType>(len: usize) -> Vec<T> {
    use rayon::prelude::*;
    let mut v = Vec::with_capacity(len);
    v.par_extend(rayon::iter::repeat_n(T::zero(), len));
    v
}

/// The elements of a contiguous CPU tensor; `op` names the caller in the error.
pub(crate) fn contiguous_slice<'a, T: candle_core::WithDType>(
    storage: &'a candle_core::CpuStorage,
    layout: &candle_core::Layout,
    op: &str,
) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&storage.as_slice::<T>()?[start..end]),
        None => candle_core::bail!("{op} needs contiguous inputs"),
    }
}

/// The f32 or f64 storage that `body` makes from the contiguous slices of CPU storages,
/// all of the first one's dtype; `op` names the caller in errors.
macro_rules! with_float_slices {
    ($op:expr, $first:expr, [$(($storage:expr, $layout:expr)),+], |$($slice:ident),+| $body:expr) => {
        match $first.dtype() {
            candle_core::DType::F32 => {
                $(let $slice = $crate::nn::contiguous_slice::<f32>($storage, $layout, $op)?;)+
                candle_core::CpuStorage::F32($body)
            }
            candle_core::DType::F64 => {
                $(let $slice = $crate::nn::contiguous_slice::<f64>($storage, $layout, $op)?;)+
                candle_core::CpuStorage::F64($body)
            }
            other => candle_core::bail!("{} supports f32 and f64, not {other:?}", $op),
        }
    };
}

pub mod bias;
pub mod conv;
pub mod norm;
pub mod rowwise;
pub mod shapes;
pub mod upsample;
#[cfg(test)]
mod testing;

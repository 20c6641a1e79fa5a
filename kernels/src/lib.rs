//! CUDA kernels for SpriteDX Restore and their Rust side.
//!
//! Two groups of kernels, each a candle custom op that runs the Rust reference on the CPU
//! and the CUDA kernel when its tensors live on a CUDA device (with the `cuda` feature):
//!
//! - [`sampler`]: fused sampler updates, [`sampler::q_sample`], [`sampler::ddim_step`]
//!   and [`sampler::dpmpp_2m_step`], one pass over the latents per step with the
//!   coefficients looked up per sample from a table that stays on the device;
//! - [`decoder`]: the decoder's hot path on a rectified image,
//!   [`decoder::reduce_cells`] (the robust colour, alpha and spread of every cell) and
//!   [`decoder::snap_to_palette`] (the nearest palette colour in OKLab).
//!
//! # Sources and tests
//!
//! The kernels are CUDA C in `cuda/` (`sampler.cu`, `decoder.cu`). The Rust reference
//! ([`sampler::reference`], [`decoder::reference`]) is the definition; the kernels follow
//! it operation for operation and are built without FMA contraction or fast math, so they
//! compute the same f32 values. Three checks hold them to it:
//!
//! - on every build, build.rs also compiles the same `.cu` files as host C++ with a small
//!   launch emulator (`cuda/emulation.h`), and the unit tests run the kernels' own code
//!   under the launch configurations the GPU gets, against the reference (no GPU needed);
//! - with the `cuda` feature, build.rs compiles them to PTX with nvcc, and CI also runs
//!   each through ptxas for sm_80 and sm_90 (`kernels/check-ptx.sh`);
//! - on a CUDA machine, the ignored tests of `tests/gpu.rs` compare every op on the device
//!   with the same op on the CPU, and `benches/sampler_steps.rs` times the fused steps
//!   against candle's composed ops (see the crate's README).
//!
//! # PTX at build time, not NVRTC at run time
//!
//! The `cuda` feature compiles the kernels to PTX with nvcc when the crate is built
//! (compute capability `CUDA_COMPUTE_CAP`, default 80, which the driver JIT-compiles for
//! any later GPU) and embeds it; at run time it is loaded once per device through
//! candle's cache of custom modules. Build time was chosen because candle's own `cuda`
//! feature already needs nvcc at build time (candle-kernels), so it adds no requirement;
//! compile errors show up in the build and in CI rather than on a user's GPU; nothing is
//! compiled at run time (NVRTC would compile the modules again in every process, and
//! needs its headers at run time); and the PTX that CI checks with ptxas is exactly the PTX
//! that ships. NVRTC would only win by targeting the exact device at run time, which the
//! driver's JIT of compute_80 PTX already does.
//!
//! The CUDA calls go through candle's re-export of cudarc
//! (`candle_core::cuda_backend::cudarc`), so there is one cudarc in the build, with the
//! features candle chose (dynamic linking against the driver).

// The test helpers in tests/common name the crate, as integration tests do.
#[cfg(test)]
extern crate self as spritedx_kernels;

pub mod decoder;
#[cfg(any(test, feature = "cuda"))]
mod launch;
pub mod sampler;

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(test)]
mod emulated;

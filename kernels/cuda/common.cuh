// Shared by every kernel source: compiled by nvcc for the device, or by a host C++
// compiler with the launch emulator (emulation.h) for the CPU-side tests.
//
// Rules the kernels keep so that the emulator runs them exactly: no shared memory, no
// __syncthreads, no warp intrinsics, and every output element written by one thread.
// Each thread's work is then independent of the others', and running the threads one
// after another (the emulator) computes what the GPU computes.
//
// Floating point: the kernels are built without fast math and without FMA contraction
// (nvcc -fmad=false, g++ -ffp-contract=off), so each float operation is one IEEE-754
// single-precision operation in the order the source writes it, as in the Rust
// reference (src/sampler.rs, src/decoder.rs).
#pragma once

#ifdef __CUDACC__
#include <stddef.h>
#else
#include "emulation.h"
#endif

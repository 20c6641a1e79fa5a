// A host-side stand-in for the CUDA execution model, enough for the kernels of this
// crate: the qualifiers, the built-in index variables, the math functions they call, and
// `emulate_launch`, which runs a kernel for every (block, thread) of a launch, one after
// another. Used only by the CPU-side tests (build.rs compiles emulated.cpp with it).
#pragma once

#include <math.h>
#include <stddef.h>
#include <string.h>

#define __global__
#define __device__
#define __forceinline__ inline

struct uint3 {
    unsigned int x, y, z;
};

struct dim3 {
    unsigned int x, y, z;
    dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

// thread_local so that tests running on several threads each have their own "GPU".
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

// CUDA's bit casts.
inline int __float_as_int(float f) {
    int i;
    memcpy(&i, &f, sizeof i);
    return i;
}

inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, sizeof f);
    return f;
}

// Runs `kernel(args...)` once per thread of a grid x block launch, blocks and threads in
// index order, with blockIdx/threadIdx/blockDim/gridDim set as the GPU would.
template <typename... Params, typename... Args>
void emulate_launch(dim3 grid, dim3 block, void (*kernel)(Params...), Args... args) {
    gridDim = grid;
    blockDim = block;
    for (unsigned int bz = 0; bz < grid.z; ++bz)
        for (unsigned int by = 0; by < grid.y; ++by)
            for (unsigned int bx = 0; bx < grid.x; ++bx)
                for (unsigned int tz = 0; tz < block.z; ++tz)
                    for (unsigned int ty = 0; ty < block.y; ++ty)
                        for (unsigned int tx = 0; tx < block.x; ++tx) {
                            blockIdx = uint3{bx, by, bz};
                            threadIdx = uint3{tx, ty, tz};
                            kernel(args...);
                        }
}

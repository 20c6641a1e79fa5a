// The decoder's hot path on a rectified image: the robust colour of every cell, and the
// nearest palette colour in OKLab.
//
// A rectified image (spritedx::rectify) has every cell exactly f x f pixels, so cell
// (cx, cy) is the block x in [cx f, (cx + 1) f), y in [cy f, (cy + 1) f). The reduction
// is spritedx's decoder::reduce_cells on that regular grid: the pixels whose centres lie
// at least CELL_MARGIN of the cell inside it (subsampled on a lattice when there are more
// than MAX_SAMPLES_PER_CELL), weighted by a tent that favours the centre, give
//   alpha  = the weighted median of alpha (0-255) over all of them,
//   L, a, b = the weighted medians of each OKLab channel over those at least half opaque
//            (all of them when none is),
//   spread = the weighted median OKLab distance of those pixels from (L, a, b).
// One thread per cell; the cell's samples live in the thread's local arrays.
#include "common.cuh"

#define SDX_CELL_MARGIN 0.2f
#define SDX_MAX_SAMPLES_PER_CELL 96u
// The most samples a square interior yields: at most 96 without subsampling, and at most
// 10 x 10 with it (the stride is at least side/√96, so ceil(side/stride) <= 10).
#define SDX_CELL_SAMPLES_CAPACITY 128

struct Interior {
    unsigned int first;
    unsigned int last;
    float centre;
    float half;
};

// The interior pixel range of a cell [lo, hi) along an axis of `len` pixels and the tent's
// centre and half-width (decoder::interior).
__device__ Interior cell_interior(float lo, float hi, unsigned int len) {
    const float size = hi - lo;
    const float margin = SDX_CELL_MARGIN * size;
    // Pixel i's centre is i + 0.5; keep those inside [lo + margin, hi - margin].
    const float first_f = fmaxf(ceilf(lo + margin - 0.5f), 0.0f);
    long long first = (long long)first_f;
    long long last = (long long)floorf(hi - margin - 0.5f);
    if (last > (long long)len - 1) last = (long long)len - 1;
    if (last < first) {
        // Too thin for an interior: the pixel under the centre.
        const float c = fminf(fmaxf(floorf((lo + hi) / 2.0f), 0.0f), (float)(len - 1));
        first = (long long)c;
        last = first;
    }
    Interior out;
    out.first = (unsigned int)first;
    out.last = (unsigned int)(last < 0 ? 0 : last);
    out.centre = (lo + hi) / 2.0f;
    out.half = fmaxf(size / 2.0f, 0.5f);
    return out;
}

// The tent weight of a pixel at index i along an axis: 1 at the centre, 1/2 at the edge.
__device__ __forceinline__ float tent(unsigned int i, float centre, float half) {
    return 1.0f - 0.5f * fminf(fabsf(((float)i + 0.5f - centre) / half), 1.0f);
}

// A key whose signed integer order is f32::total_cmp's order.
__device__ __forceinline__ int total_order_key(float v) {
    const int bits = __float_as_int(v);
    return bits ^ (int)((unsigned int)(bits >> 31) >> 1);
}

// The lower weighted median of (values, weights): sorted by value (stable), the first
// value at which the running weight reaches half the total (decoder::weighted_median).
// Sorts both arrays in place.
__device__ float weighted_median(float* values, float* weights, int n) {
    if (n == 0) return 0.0f;
    for (int i = 1; i < n; ++i) {
        const float v = values[i];
        const float w = weights[i];
        const int key = total_order_key(v);
        int j = i - 1;
        while (j >= 0 && total_order_key(values[j]) > key) {
            values[j + 1] = values[j];
            weights[j + 1] = weights[j];
            --j;
        }
        values[j + 1] = v;
        weights[j + 1] = w;
    }
    float total = 0.0f;
    for (int i = 0; i < n; ++i) total = total + weights[i];
    const float half = total / 2.0f;
    float acc = 0.0f;
    for (int i = 0; i < n; ++i) {
        acc = acc + weights[i];
        if (acc >= half) return values[i];
    }
    return values[n - 1];
}

// A [-1, 1] channel value as the 8-bit value spritedx::rectify::tensor_to_image gives it.
__device__ __forceinline__ unsigned int to_u8(float v) {
    // fmaxf/fminf return the number for a NaN, as Rust's saturating `as u8` gives 0.
    return (unsigned int)fminf(fmaxf(roundf((v + 1.0f) * 127.5f), 0.0f), 255.0f);
}

// Linear sRGB to OKLab (Ottosson's matrices, spritedx::colour::linear_to_oklab).
__device__ void linear_to_oklab(float r, float g, float b, float* out) {
    const float l = 0.41222147f * r + 0.53633255f * g + 0.051445995f * b;
    const float m = 0.2119035f * r + 0.6806995f * g + 0.10739696f * b;
    const float s = 0.08830246f * r + 0.28171885f * g + 0.6299787f * b;
    const float lc = cbrtf(l), mc = cbrtf(m), sc = cbrtf(s);
    out[0] = 0.21045426f * lc + 0.7936178f * mc - 0.004072047f * sc;
    out[1] = 1.9779985f * lc - 2.4285922f * mc + 0.4505937f * sc;
    out[2] = 0.025904037f * lc + 0.78277177f * mc - 0.80867577f * sc;
}

// `image`: (B, 4, H, W) RGBA in [-1, 1], H = rows f, W = cols f. `srgb_to_linear`: the 256
// entries of spritedx::colour::srgb8_to_linear_table. `cells`: (B, rows, cols, 5) of
// [L, a, b, alpha (0-255), spread], row-major.
extern "C" __global__ void sdx_reduce_cells_f32(
    const float* __restrict__ image,
    const float* __restrict__ srgb_to_linear,
    unsigned int batch,
    unsigned int rows,
    unsigned int cols,
    unsigned int factor,
    float* __restrict__ cells) {
    const unsigned int height = rows * factor;
    const unsigned int width = cols * factor;
    const size_t plane = (size_t)height * width;
    const size_t n_cells = (size_t)batch * rows * cols;
    for (size_t cell = (size_t)blockIdx.x * blockDim.x + threadIdx.x; cell < n_cells;
         cell += (size_t)gridDim.x * blockDim.x) {
        const unsigned int cx = (unsigned int)(cell % cols);
        const unsigned int cy = (unsigned int)((cell / cols) % rows);
        const size_t b = cell / ((size_t)cols * rows);
        const Interior ix = cell_interior((float)(cx * factor), (float)((cx + 1) * factor), width);
        const Interior iy = cell_interior((float)(cy * factor), (float)((cy + 1) * factor), height);
        const unsigned int count = (ix.last - ix.first + 1) * (iy.last - iy.first + 1);
        unsigned int stride = (unsigned int)ceilf(sqrtf((float)count / (float)SDX_MAX_SAMPLES_PER_CELL));
        if (stride < 1) stride = 1;

        float lab[3][SDX_CELL_SAMPLES_CAPACITY];
        float alpha[SDX_CELL_SAMPLES_CAPACITY];
        float weight[SDX_CELL_SAMPLES_CAPACITY];
        int n = 0;
        const float* rgba = image + b * 4 * plane;
        for (unsigned int y = iy.first; y <= iy.last; y += stride) {
            const float wy = tent(y, iy.centre, iy.half);
            for (unsigned int x = ix.first; x <= ix.last; x += stride) {
                if (n == SDX_CELL_SAMPLES_CAPACITY) break;  // unreachable for square cells
                const float wx = tent(x, ix.centre, ix.half);
                const size_t p = (size_t)y * width + x;
                float c[3];
                linear_to_oklab(srgb_to_linear[to_u8(rgba[p])], srgb_to_linear[to_u8(rgba[plane + p])],
                                srgb_to_linear[to_u8(rgba[2 * plane + p])], c);
                lab[0][n] = c[0];
                lab[1][n] = c[1];
                lab[2][n] = c[2];
                alpha[n] = (float)to_u8(rgba[3 * plane + p]);
                weight[n] = wx * wy;
                ++n;
            }
        }

        float keyed[SDX_CELL_SAMPLES_CAPACITY];
        float keyed_weight[SDX_CELL_SAMPLES_CAPACITY];
        for (int i = 0; i < n; ++i) {
            keyed[i] = alpha[i];
            keyed_weight[i] = weight[i];
        }
        const float cell_alpha = weighted_median(keyed, keyed_weight, n);

        // The pool: samples at least half opaque, or all of them when none is.
        bool any_opaque = false;
        for (int i = 0; i < n; ++i) any_opaque = any_opaque || alpha[i] >= 128.0f;
        float colour[3];
        for (int ch = 0; ch < 3; ++ch) {
            int m = 0;
            for (int i = 0; i < n; ++i) {
                if (any_opaque && !(alpha[i] >= 128.0f)) continue;
                keyed[m] = lab[ch][i];
                keyed_weight[m] = weight[i];
                ++m;
            }
            colour[ch] = weighted_median(keyed, keyed_weight, m);
        }
        int m = 0;
        for (int i = 0; i < n; ++i) {
            if (any_opaque && !(alpha[i] >= 128.0f)) continue;
            const float dl = lab[0][i] - colour[0];
            const float da = lab[1][i] - colour[1];
            const float db = lab[2][i] - colour[2];
            keyed[m] = sqrtf(dl * dl + da * da + db * db);
            keyed_weight[m] = weight[i];
            ++m;
        }
        const float spread = weighted_median(keyed, keyed_weight, m);

        float* out = cells + cell * 5;
        out[0] = colour[0];
        out[1] = colour[1];
        out[2] = colour[2];
        out[3] = cell_alpha;
        out[4] = spread;
    }
}

// For each of `n` colours (the first three values, L a b, of each row of `stride` floats),
// the index of the nearest of the `k` OKLab colours of `palette` ((k, 3)), the lowest index
// on a tie (spritedx::palette::snap_to_palette). Non-finite components read as 0.
extern "C" __global__ void sdx_snap_to_palette_f32(
    const float* __restrict__ colours,
    size_t n,
    unsigned int stride,
    const float* __restrict__ palette,
    unsigned int k,
    unsigned int* __restrict__ out) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float* c = colours + i * stride;
        const float l = isfinite(c[0]) ? c[0] : 0.0f;
        const float a = isfinite(c[1]) ? c[1] : 0.0f;
        const float b = isfinite(c[2]) ? c[2] : 0.0f;
        float best = INFINITY;
        unsigned int best_index = 0;
        for (unsigned int j = 0; j < k; ++j) {
            const float dl = l - palette[3 * j];
            const float da = a - palette[3 * j + 1];
            const float db = b - palette[3 * j + 2];
            const float d2 = dl * dl + da * da + db * db;
            if (d2 < best) {
                best = d2;
                best_index = j;
            }
        }
        out[i] = best_index;
    }
}

// Fused sampler updates: q_sample, one DDIM step and one DPM-Solver++(2M) step, each one
// pass over the latents instead of a chain of broadcast multiplies and adds.
//
// Layout: the tensors are contiguous (B, ...) f32, `per_sample` elements per batch
// element. Launch: grid (any x, B), 1-D blocks; blockIdx.y is the sample, and the
// threads of that row stride over its elements. Sample b's coefficients are row
// `rows[b]` of a table of `n_rows` rows (a whole schedule, one row per step index, or
// one row per sample), so a batch may be at different steps and the table can stay on
// the device for the whole sampling run. A row index outside the table gives NaN
// outputs for that sample (the CPU reference reports an error instead).
//
// The formulas are those of spritedx-samplers' steps.rs, with α_t = √ᾱ_t, σ_t = √(1 - ᾱ_t):
//   x̂_0 = (x_t - σ_t ε̂)/α_t (ε-prediction),   x̂_0 = α_t x_t - σ_t v̂ (v-prediction)
//   ε̂   = ε̂,                                  ε̂   = σ_t x_t + α_t v̂
#include "common.cuh"

// Coefficients of q_sample: x_t = alpha x_0 + sigma noise.
struct NoiseRow {
    float alpha;
    float sigma;
};

// Coefficients of a DDIM step from level t to level s:
// x_s = alpha_prev x̂_0 + direction ε̂ + noise_std z.
struct DdimRow {
    float alpha;       // α_t
    float sigma;       // σ_t
    float alpha_prev;  // √ᾱ_s
    float direction;   // √(1 - ᾱ_s - noise_std²)
    float noise_std;   // η √((1 - ᾱ_s)/(1 - ᾱ_t)) √(1 - ᾱ_t/ᾱ_s)
};

// Coefficients of a DPM-Solver++(2M) step from level t to level s:
// x_s = sigma_ratio x_t + data_coef D, D = x̂_0 + correction (x̂_0 - x̂_0,prev).
struct DpmSolverRow {
    float alpha;        // α_t
    float sigma;        // σ_t
    float sigma_ratio;  // σ_s/σ_t
    float data_coef;    // α_s (1 - e^{-h})
    float correction;   // 1/(2r) for a second-order update, 0 for a first-order one
};

__device__ __forceinline__ float predict_x0(float x, float out, float alpha, float sigma, int v_prediction) {
    return v_prediction ? alpha * x - sigma * out : (x - sigma * out) / alpha;
}

__device__ __forceinline__ float predict_eps(float x, float out, float alpha, float sigma, int v_prediction) {
    return v_prediction ? sigma * x + alpha * out : out;
}

extern "C" __global__ void sdx_q_sample_f32(
    const float* __restrict__ x0,
    const float* __restrict__ noise,
    const NoiseRow* __restrict__ table,
    unsigned int n_rows,
    const unsigned int* __restrict__ rows,
    size_t per_sample,
    float* __restrict__ out) {
    const size_t base = (size_t)blockIdx.y * per_sample;
    const unsigned int row = rows[blockIdx.y];
    const bool valid = row < n_rows;
    const NoiseRow c = valid ? table[row] : NoiseRow{0.0f, 0.0f};
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < per_sample;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t k = base + i;
        out[k] = valid ? c.alpha * x0[k] + c.sigma * noise[k] : nanf("");
    }
}

// `noise` may be null: the noise term is dropped (deterministic DDIM, η = 0).
extern "C" __global__ void sdx_ddim_step_f32(
    const float* __restrict__ x_t,
    const float* __restrict__ model_output,
    const float* __restrict__ noise,
    const DdimRow* __restrict__ table,
    unsigned int n_rows,
    const unsigned int* __restrict__ rows,
    size_t per_sample,
    int v_prediction,
    float* __restrict__ out) {
    const size_t base = (size_t)blockIdx.y * per_sample;
    const unsigned int row = rows[blockIdx.y];
    const bool valid = row < n_rows;
    const DdimRow c = valid ? table[row] : DdimRow{0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < per_sample;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t k = base + i;
        if (!valid) {
            out[k] = nanf("");
            continue;
        }
        const float x = x_t[k];
        const float m = model_output[k];
        const float x0 = predict_x0(x, m, c.alpha, c.sigma, v_prediction);
        const float eps = predict_eps(x, m, c.alpha, c.sigma, v_prediction);
        float next = c.alpha_prev * x0 + c.direction * eps;
        if (noise != nullptr) next = next + c.noise_std * noise[k];
        out[k] = next;
    }
}

// `prev_x0` may be null: every sample must then take a first-order step (correction 0);
// a sample whose row asks for a correction without a previous x̂_0 gets NaN.
// Writes x_s to `x_prev` and this step's x̂_0 (for the next step) to `x0_out`.
extern "C" __global__ void sdx_dpmpp_2m_step_f32(
    const float* __restrict__ x_t,
    const float* __restrict__ model_output,
    const float* __restrict__ prev_x0,
    const DpmSolverRow* __restrict__ table,
    unsigned int n_rows,
    const unsigned int* __restrict__ rows,
    size_t per_sample,
    int v_prediction,
    float* __restrict__ x_prev,
    float* __restrict__ x0_out) {
    const size_t base = (size_t)blockIdx.y * per_sample;
    const unsigned int row = rows[blockIdx.y];
    const DpmSolverRow c = row < n_rows ? table[row] : DpmSolverRow{0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    const bool valid = row < n_rows && (prev_x0 != nullptr || c.correction == 0.0f);
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < per_sample;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t k = base + i;
        if (!valid) {
            x_prev[k] = nanf("");
            x0_out[k] = nanf("");
            continue;
        }
        const float x = x_t[k];
        const float x0 = predict_x0(x, model_output[k], c.alpha, c.sigma, v_prediction);
        const float d = prev_x0 != nullptr ? x0 + c.correction * (x0 - prev_x0[k]) : x0;
        x_prev[k] = c.sigma_ratio * x + c.data_coef * d;
        x0_out[k] = x0;
    }
}

// The kernels of sampler.cu and decoder.cu compiled for the host, and one C entry point
// per kernel that runs it under the launch emulator (emulation.h) with a given grid and
// block. The CPU-side tests (src/emulated.rs) call these with the launch configurations
// the CUDA path uses, so the kernels' own code is checked against the Rust reference.
#include "decoder.cu"
#include "sampler.cu"

extern "C" {

void sdx_emulate_q_sample_f32(unsigned int grid_x, unsigned int grid_y, unsigned int block_x, const float* x0,
                              const float* noise, const NoiseRow* table, unsigned int n_rows,
                              const unsigned int* rows, size_t per_sample, float* out) {
    emulate_launch(dim3(grid_x, grid_y), dim3(block_x), sdx_q_sample_f32, x0, noise, table, n_rows, rows,
                   per_sample, out);
}

void sdx_emulate_ddim_step_f32(unsigned int grid_x, unsigned int grid_y, unsigned int block_x, const float* x_t,
                               const float* model_output, const float* noise, const DdimRow* table,
                               unsigned int n_rows, const unsigned int* rows, size_t per_sample, int v_prediction,
                               float* out) {
    emulate_launch(dim3(grid_x, grid_y), dim3(block_x), sdx_ddim_step_f32, x_t, model_output, noise, table, n_rows,
                   rows, per_sample, v_prediction, out);
}

void sdx_emulate_dpmpp_2m_step_f32(unsigned int grid_x, unsigned int grid_y, unsigned int block_x,
                                   const float* x_t, const float* model_output, const float* prev_x0,
                                   const DpmSolverRow* table, unsigned int n_rows, const unsigned int* rows,
                                   size_t per_sample, int v_prediction, float* x_prev, float* x0_out) {
    emulate_launch(dim3(grid_x, grid_y), dim3(block_x), sdx_dpmpp_2m_step_f32, x_t, model_output, prev_x0, table,
                   n_rows, rows, per_sample, v_prediction, x_prev, x0_out);
}

void sdx_emulate_reduce_cells_f32(unsigned int grid_x, unsigned int block_x, const float* image,
                                  const float* srgb_to_linear, unsigned int batch, unsigned int rows,
                                  unsigned int cols, unsigned int factor, float* cells) {
    emulate_launch(dim3(grid_x), dim3(block_x), sdx_reduce_cells_f32, image, srgb_to_linear, batch, rows, cols,
                   factor, cells);
}

void sdx_emulate_snap_to_palette_f32(unsigned int grid_x, unsigned int block_x, const float* colours, size_t n,
                                     unsigned int stride, const float* palette, unsigned int k,
                                     unsigned int* out) {
    emulate_launch(dim3(grid_x), dim3(block_x), sdx_snap_to_palette_f32, colours, n, stride, palette, k, out);
}
}

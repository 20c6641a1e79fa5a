//! CUDA kernels for SpriteDX Restore and their Rust side.
//!
//! This crate will hold the CUDA C sources of the fused sampler updates (DDIM and
//! DPM-Solver++ steps, q_sample) and of the decoder's hot path (per-cell robust reduction,
//! nearest-palette snap in OKLab), their loading through cudarc, and the Rust reference
//! implementations they are tested against. It is empty until the CUDA work lands
//! (issue 7); it exists now so that the workspace has the design card's shape.

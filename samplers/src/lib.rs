//! Diffusion samplers for SpriteDX Restore.
//!
//! This crate will hold the noise schedules (the LDM linear schedule and a cosine one,
//! with StableSR's respacing) and the samplers DDPM, DDIM and DPM-Solver++ (2M), generic
//! over a denoiser so that every model of the engine is driven by the same code.
//! It is empty until the diffusion restorer lands (issue 5); it exists now so that the
//! workspace has the design card's shape and compiles as a whole.

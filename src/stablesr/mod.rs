//! The StableSR architecture in candle ("Exploiting Diffusion Prior for Real-World Image
//! Super-Resolution", IceClear/StableSR), written as our own modules with the
//! checkpoint's own key names, at any size from a config.
//!
//! - [`layers`]: the shared building blocks (GroupNorm32, timestep embedding, ResBlock with
//!   SPADE, attention blocks, up/downsampling); the one place where an op's
//!   implementation is chosen.
//! - [`unet`]: the diffusion UNet (`model.diffusion_model`, UNetModelDualcondV2).
//! - [`struct_encoder`]: the time-aware structure encoder (`structcond_stage_model`,
//!   EncoderUNetModelWT), one feature map per resolution.
//! - [`vae`]: AutoencoderKL and its CFW variant (AutoencoderKLResi with Decoder_Mix).
//! - [`text`]: the OpenCLIP ViT-H text tower (`cond_stage_model`), for the empty prompt.
//! - [`pipeline`]: restoration end to end (loading, rectification, encoding, tiled
//!   sampling, CFW decoding, the decoder's palette and alpha stage).

pub mod layers;
pub mod pipeline;
pub mod struct_encoder;
pub mod text;
pub mod unet;
pub mod vae;

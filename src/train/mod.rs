//! Training the learned restorers on this machine's CPU: pairs made on the fly
//! ([`data`]), AdamW with saved state and an EMA ([`optim`]), atomic checkpoints
//! ([`checkpoint`]), and the losses of the design note ([`losses`]).

pub mod checkpoint;
pub mod data;
pub mod losses;
pub mod optim;

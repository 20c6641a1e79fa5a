//! Training the learned restorers on this machine's CPU: pairs made on the fly
//! ([`data`]), AdamW with saved state and an EMA ([`optim`]), atomic checkpoints
//! ([`checkpoint`]), the losses of the design note ([`losses`]) with its optional
//! adversarial term ([`adversarial`]) and a PNG plot of a run ([`plot`]).

pub mod adversarial;
pub mod checkpoint;
pub mod data;
pub mod losses;
pub mod optim;
pub mod plot;
pub mod run;

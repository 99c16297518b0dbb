//! The runtime: the training loop around the compiled steps, state initialisation and
//! checkpoints.

pub mod compiled;
pub mod state;
pub mod train;

//! Passes from IR to IR: mode specialisation and the assembly of the train and eval
//! programs (autodiff, clipping, optimizer updates).

pub mod programs;
pub mod simplify;
pub mod specialise;

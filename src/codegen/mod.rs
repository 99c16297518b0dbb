//! Code generation: the train and eval programs lowered to Cranelift functions.
//!
//! Matrix products call a tuned f32 GEMM kernel ([`host::kpc_sgemm`]) registered with the
//! JIT; everything around them is generated here.

pub mod emit;
pub mod emit_kernels;
pub mod exec;
pub mod expr_dag;
pub mod kernel;
pub mod memory;
pub mod profile;
pub mod recurrent;
pub mod schedule;
pub mod step;
pub mod templates;
pub mod vmath;
pub mod host;
pub mod jit;

#[cfg(test)]
mod tests;

//! kpc: a declarative training-graph compiler.
//!
//! The pipeline, one module per stage: [`syntax`] (pest grammar → AST with spans),
//! [`data`] (sources read and validated at check time), [`check`] (names, types, shapes →
//! a typed model), [`ir`] (the petgraph IR and its one op set), [`autodiff`] (reverse-mode
//! differentiation), [`passes`] (specialisation and simplification), [`codegen`]
//! (Cranelift), [`runtime`] (the training loop). [`interp`] is the test oracle.

// Diagnostics are returned by value on the cold error path; boxing every one would only add
// noise at each `?`.
#![allow(clippy::result_large_err)]

pub mod autodiff;
pub mod check;
pub mod codegen;
pub mod data;
pub mod diag;
pub mod interp;
pub mod ir;
pub mod passes;
pub mod report;
pub mod runtime;
pub mod syntax;

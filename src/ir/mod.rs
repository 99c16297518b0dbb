//! The IR: a petgraph graph of typed nodes over one closed op set ([`op::Op`]).
//!
//! [`lower::lower`] turns a checked job into the forward IR; `passes` specialise it into
//! the train and eval programs (autodiff in between builds the backward graph); `print`
//! renders any program as text or Graphviz DOT.

pub mod graph;
pub mod lower;
pub mod op;
pub mod print;

pub use graph::{Graph, Node, NodeId, Program};
pub use op::Op;

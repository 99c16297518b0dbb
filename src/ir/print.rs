//! Text and Graphviz DOT renderings of a program: one node per line, in execution order.

use super::graph::{NodeId, Program};
use crate::check::Dim;
use std::collections::HashMap;
use std::fmt::Write;

fn shape(dtype: crate::data::Dtype, dims: &[Dim]) -> String {
    let d: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("{}[{}]", dtype.name(), d.join(", "))
}

/// Dense ids (`%0`, `%1`, …) in execution order, so output does not depend on petgraph's
/// internal indices.
fn numbering(p: &Program) -> (Vec<NodeId>, HashMap<NodeId, usize>) {
    let order = p.schedule();
    let ids = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    (order, ids)
}

/// `%3 = matmul tb(%1, %2) : f32[B, 128]`, one line per node; effects are marked `!`.
pub fn text(p: &Program) -> String {
    let (order, ids) = numbering(p);
    let mut out = format!("program {} ({} nodes)\n", p.name, order.len());
    for n in order {
        let node = p.graph.node(n);
        let args: Vec<String> = p.graph.operands(n).iter().map(|o| format!("%{}", ids[o])).collect();
        let mark = if p.effects.contains(&n) { "!" } else { " " };
        let _ = writeln!(out, "{mark}%{} = {}({}) : {}", ids[&n], node.op.name(), args.join(", "), shape(node.dtype, &node.shape));
    }
    out
}

/// A Graphviz digraph; `dot -Tsvg` renders it.
pub fn dot(p: &Program) -> String {
    let (order, ids) = numbering(p);
    let mut out = format!("digraph \"{}\" {{\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\", fontsize=10];\n", p.name);
    for n in &order {
        let node = p.graph.node(*n);
        let style = if p.effects.contains(n) { ", style=filled, fillcolor=\"#ffe0b0\"" } else { "" };
        let label = format!("%{} {}\\n{}", ids[n], node.op.name().replace('"', "'"), shape(node.dtype, &node.shape));
        let _ = writeln!(out, "  n{} [label=\"{label}\"{style}];", ids[n]);
    }
    for n in &order {
        for (i, o) in p.graph.operands(*n).iter().enumerate() {
            let _ = writeln!(out, "  n{} -> n{} [label=\"{i}\", fontsize=8];", ids[o], ids[n]);
        }
    }
    out.push_str("}\n");
    out
}

//! The IR graph: a petgraph `StableGraph` of [`Node`]s whose incoming edges are the operands
//! (edge weight = operand position), and a [`Program`]: a graph plus its effects in order.

use super::op::Op;
use crate::check::Dim;
use crate::data::Dtype;
use petgraph::Direction;
use petgraph::stable_graph::{NodeIndex, StableGraph};
use petgraph::visit::EdgeRef;

pub type NodeId = NodeIndex<u32>;

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub op: Op,
    pub shape: Vec<Dim>,
    pub dtype: Dtype,
}

#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub g: StableGraph<Node, usize>,
}

impl Graph {
    pub fn add(&mut self, op: Op, operands: &[NodeId], shape: Vec<Dim>, dtype: Dtype) -> NodeId {
        let n = self.g.add_node(Node { op, shape, dtype });
        for (i, o) in operands.iter().enumerate() {
            self.g.add_edge(*o, n, i);
        }
        n
    }

    /// An elementwise f32 node whose shape is the PyTorch broadcast of its operands'.
    pub fn elementwise(&mut self, e: super::op::Elementwise, operands: &[NodeId]) -> NodeId {
        let shape = operands
            .iter()
            .skip(1)
            .fold(self.node(operands[0]).shape.clone(), |acc, o| crate::check::broadcast(&acc, &self.node(*o).shape).expect("operands broadcast"));
        self.add(Op::Elementwise(e), operands, shape, Dtype::F32)
    }

    pub fn node(&self, n: NodeId) -> &Node {
        &self.g[n]
    }

    /// Operands in order.
    pub fn operands(&self, n: NodeId) -> Vec<NodeId> {
        let mut e: Vec<(usize, NodeId)> = self.g.edges_directed(n, Direction::Incoming).map(|e| (*e.weight(), e.source())).collect();
        e.sort_unstable();
        e.into_iter().map(|(_, s)| s).collect()
    }

    /// Nodes using `n`.
    pub fn users(&self, n: NodeId) -> Vec<NodeId> {
        let mut u: Vec<NodeId> = self.g.neighbors_directed(n, Direction::Outgoing).collect();
        u.sort_unstable();
        u.dedup();
        u
    }

    /// Replaces every use of `old` by `new`.
    pub fn replace_uses(&mut self, old: NodeId, new: NodeId) {
        let uses: Vec<(NodeId, usize, petgraph::stable_graph::EdgeIndex<u32>)> =
            self.g.edges_directed(old, Direction::Outgoing).map(|e| (e.target(), *e.weight(), e.id())).collect();
        for (target, pos, id) in uses {
            self.g.remove_edge(id);
            self.g.add_edge(new, target, pos);
        }
    }

    pub fn len(&self) -> usize {
        self.g.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.g.node_count() == 0
    }

    /// Node ids in creation order (a topological order: operands are created first, and
    /// passes that rewire preserve it by only pointing uses at older nodes or re-sorting).
    pub fn ids(&self) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = self.g.node_indices().collect();
        v.sort_unstable();
        v
    }

    /// A topological order (operands before users).
    pub fn topo(&self) -> Vec<NodeId> {
        petgraph::algo::toposort(&self.g, None).unwrap_or_else(|_| panic!("IR graphs are acyclic by construction"))
    }
}

/// One program (forward, train step, micro-step, apply step, eval step): the graph and its
/// effects — state writes and outputs — in the order they happen. A program runs every pure
/// node its effects need, then the effects in order.
#[derive(Debug, Clone, Default)]
pub struct Program {
    pub name: String,
    pub graph: Graph,
    pub effects: Vec<NodeId>,
}

impl Program {
    /// Every node the effects depend on, in a topological order with the effects last (in
    /// their own order).
    pub fn schedule(&self) -> Vec<NodeId> {
        let mut live = std::collections::HashSet::new();
        let mut stack: Vec<NodeId> = self.effects.clone();
        while let Some(n) = stack.pop() {
            if live.insert(n) {
                stack.extend(self.graph.operands(n));
            }
        }
        let effect_set: std::collections::HashSet<NodeId> = self.effects.iter().copied().collect();
        let mut order: Vec<NodeId> = self.graph.topo().into_iter().filter(|n| live.contains(n) && !effect_set.contains(n)).collect();
        order.extend(self.effects.iter().copied());
        order
    }
}

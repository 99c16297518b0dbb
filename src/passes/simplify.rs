//! Simplification passes, each a function from graph to graph (in place on a [`Program`]):
//! constant folding, common-subexpression elimination and dead-code elimination.

use crate::ir::op::{Elementwise as E, Op};
use crate::ir::{NodeId, Program};
use std::collections::{HashMap, HashSet};

/// Folds elementwise ops whose operands are all scalar constants, and the identities
/// `x·1`, `x/1`, `x+0`, `x−0` where the result has `x`'s shape.
pub fn fold_constants(p: &mut Program) {
    let g = &mut p.graph;
    for n in g.topo() {
        if !g.g.contains_node(n) {
            continue;
        }
        let Op::Elementwise(e) = g.node(n).op else { continue };
        let ops = g.operands(n);
        let consts: Vec<Option<f32>> = ops
            .iter()
            .map(|o| match g.node(*o).op {
                Op::Const(c) if g.node(*o).shape.is_empty() => Some(c),
                _ => None,
            })
            .collect();
        if !g.node(n).shape.is_empty() || consts.iter().any(Option::is_none) {
            // Identities with a constant right operand.
            if let (Some(&x), Some(Some(c))) = (ops.first(), consts.get(1)) {
                let identity = matches!((e, *c), (E::Mul, 1.0) | (E::Div, 1.0) | (E::Add, 0.0) | (E::Sub, 0.0));
                if identity && g.node(x).shape == g.node(n).shape && g.node(x).dtype == g.node(n).dtype {
                    g.replace_uses(n, x);
                }
            }
            continue;
        }
        let v: Vec<f32> = consts.into_iter().map(|c| c.expect("checked")).collect();
        let folded = match (e, v.as_slice()) {
            (E::Add, [a, b]) => a + b,
            (E::Sub, [a, b]) => a - b,
            (E::Mul, [a, b]) => a * b,
            (E::Div, [a, b]) => a / b,
            (E::Max, [a, b]) => a.max(*b),
            (E::Neg, [a]) => -a,
            (E::Exp, [a]) => a.exp(),
            (E::Log, [a]) => a.ln(),
            (E::Sqrt, [a]) => a.sqrt(),
            (E::Abs, [a]) => a.abs(),
            (E::Tanh, [a]) => a.tanh(),
            _ => continue,
        };
        let c = g.add(Op::Const(folded), &[], vec![], g.node(n).dtype);
        g.replace_uses(n, c);
    }
    eliminate_dead_code(p);
}

/// Merges nodes with the same op, operands and type (effects and random masks excepted: two
/// masks of different sites differ by their op already; effects are never merged).
pub fn eliminate_common_subexpressions(p: &mut Program) {
    let g = &mut p.graph;
    let mut seen: HashMap<String, NodeId> = HashMap::new();
    for n in g.topo() {
        let node = g.node(n);
        if node.op.is_effect() {
            continue;
        }
        let key = format!("{:?}|{:?}|{:?}|{:?}", node.op, g.operands(n), node.shape, node.dtype);
        match seen.get(&key) {
            Some(&first) => g.replace_uses(n, first),
            None => {
                seen.insert(key, n);
            }
        }
    }
    eliminate_dead_code(p);
}

/// Removes every node no effect depends on.
pub fn eliminate_dead_code(p: &mut Program) {
    let mut live = HashSet::new();
    let mut stack = p.effects.clone();
    while let Some(n) = stack.pop() {
        if live.insert(n) {
            stack.extend(p.graph.operands(n));
        }
    }
    let dead: Vec<NodeId> = p.graph.g.node_indices().filter(|n| !live.contains(n)).collect();
    for n in dead {
        p.graph.g.remove_node(n);
    }
}

/// The standard pipeline, run on every program.
pub fn simplify(p: &mut Program) {
    fold_constants(p);
    eliminate_common_subexpressions(p);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Dim;
    use crate::data::Dtype;
    use crate::interp::{self, Env};
    use crate::ir::Graph;
    use ndarray::{ArrayD, IxDyn};

    fn f(g: &mut Graph, op: Op, ops: &[NodeId], shape: Vec<Dim>) -> NodeId {
        g.add(op, ops, shape, Dtype::F32)
    }

    /// x·(2·3) + x·(2·3) − 0, output as a sum, plus a dead branch.
    fn sample() -> Program {
        let mut g = Graph::default();
        let s = vec![Dim::Fixed(3)];
        let x = f(&mut g, Op::State(0), &[], s.clone());
        let two = f(&mut g, Op::Const(2.0), &[], vec![]);
        let three = f(&mut g, Op::Const(3.0), &[], vec![]);
        let six_a = f(&mut g, Op::Elementwise(E::Mul), &[two, three], vec![]);
        let six_b = f(&mut g, Op::Elementwise(E::Mul), &[two, three], vec![]);
        let a = f(&mut g, Op::Elementwise(E::Mul), &[x, six_a], s.clone());
        let b = f(&mut g, Op::Elementwise(E::Mul), &[x, six_b], s.clone());
        let sum = f(&mut g, Op::Elementwise(E::Add), &[a, b], s.clone());
        let zero = f(&mut g, Op::Const(0.0), &[], vec![]);
        let y = f(&mut g, Op::Elementwise(E::Sub), &[sum, zero], s.clone());
        let _dead = f(&mut g, Op::Elementwise(E::Exp), &[x], s);
        let total = f(&mut g, Op::SumTo, &[y], vec![]);
        let out = f(&mut g, Op::Output(0), &[total], vec![]);
        Program { name: "t".into(), graph: g, effects: vec![out] }
    }

    fn value(p: &Program) -> f64 {
        let mut e: Env<f64> = Env {
            inputs: vec![],
            state: vec![ArrayD::from_shape_vec(IxDyn(&[3]), vec![1.0, -2.0, 0.5]).expect("state")],
            grads: Default::default(),
            opt: Default::default(),
            scalars: vec![0.0; 7],
            rng_key: 0,
            outputs: Default::default(),
            batch: 1,
            seq: vec![],
            seq_names: vec![],
        };
        interp::run(p, &mut e);
        e.outputs[&0]
    }

    fn count(p: &Program, pred: impl Fn(&Op) -> bool) -> usize {
        p.graph.g.node_indices().filter(|n| pred(&p.graph.node(*n).op)).count()
    }

    #[test]
    fn dead_code_goes_and_values_stay() {
        let mut p = sample();
        let before = value(&p);
        eliminate_dead_code(&mut p);
        assert_eq!(count(&p, |o| *o == Op::Elementwise(E::Exp)), 0);
        assert_eq!(value(&p), before);
    }

    #[test]
    fn constants_fold_and_identities_vanish() {
        let mut p = sample();
        let before = value(&p);
        fold_constants(&mut p);
        assert_eq!(count(&p, |o| *o == Op::Const(6.0)), 2, "2·3 folded (twice, before CSE)");
        assert_eq!(count(&p, |o| *o == Op::Elementwise(E::Sub)), 0, "x − 0 removed");
        assert_eq!(value(&p), before);
    }

    #[test]
    fn common_subexpressions_merge() {
        let mut p = sample();
        let before = value(&p);
        simplify(&mut p);
        assert_eq!(count(&p, |o| *o == Op::Elementwise(E::Mul)), 1, "x·6 computed once");
        assert_eq!(value(&p), before);
    }
}

//! Reverse-mode symbolic differentiation: new nodes in the same graph compute the gradient
//! of a scalar with respect to chosen leaves. One vector-Jacobian rule per op ([`vjp`]);
//! gradients of a value used several times are summed; nothing is differentiated through
//! integer inputs, running statistics, masks or metric ops.

use crate::check::Dim;
use crate::data::Dtype;
use crate::ir::op::{Elementwise as E, Op};
use crate::ir::{Graph, NodeId};
use std::collections::{HashMap, HashSet};

fn add(g: &mut Graph, op: Op, operands: &[NodeId], shape: Vec<Dim>) -> NodeId {
    g.add(op, operands, shape, Dtype::F32)
}

fn ew(g: &mut Graph, e: E, operands: &[NodeId]) -> NodeId {
    g.elementwise(e, operands)
}

fn shape(g: &Graph, n: NodeId) -> Vec<Dim> {
    g.node(n).shape.clone()
}

/// `grad` summed down to the shape of `like` (undoing broadcasting), if they differ.
fn sum_to(g: &mut Graph, grad: NodeId, like: NodeId) -> NodeId {
    let target = shape(g, like);
    if shape(g, grad) == target { grad } else { add(g, Op::SumTo, &[grad], target) }
}

/// The gradient of `y = node(operands)` with respect to each operand, given `dy`. `None`
/// for an operand nothing flows into.
fn vjp(g: &mut Graph, node: NodeId, dy: NodeId) -> Vec<Option<NodeId>> {
    let ops = g.operands(node);
    let op = g.node(node).op.clone();
    let y = node;
    match op {
        Op::Elementwise(e) => {
            let a = ops[0];
            let b = ops.get(1).copied();
            match e {
                // d(a+b) = (dy, dy), summed back over broadcast axes.
                E::Add => {
                    let b = b.expect("binary");
                    vec![Some(sum_to(g, dy, a)), Some(sum_to(g, dy, b))]
                }
                E::Sub => {
                    let b = b.expect("binary");
                    let n = ew(g, E::Neg, &[dy]);
                    vec![Some(sum_to(g, dy, a)), Some(sum_to(g, n, b))]
                }
                // d(a·b) = (dy·b, dy·a).
                E::Mul => {
                    let b = b.expect("binary");
                    let da = ew(g, E::Mul, &[dy, b]);
                    let db = ew(g, E::Mul, &[dy, a]);
                    vec![Some(sum_to(g, da, a)), Some(sum_to(g, db, b))]
                }
                // d(a/b) = (dy/b, −dy·y/b).
                E::Div => {
                    let b = b.expect("binary");
                    let da = ew(g, E::Div, &[dy, b]);
                    let t = ew(g, E::Mul, &[dy, y]);
                    let t = ew(g, E::Div, &[t, b]);
                    let db = ew(g, E::Neg, &[t]);
                    vec![Some(sum_to(g, da, a)), Some(sum_to(g, db, b))]
                }
                // max(a, b): the gradient goes to a where a > b, else to b.
                E::Max => {
                    let b = b.expect("binary");
                    let mask = ew(g, E::Greater, &[a, b]);
                    let da = ew(g, E::Mul, &[dy, mask]);
                    let db = ew(g, E::Sub, &[dy, da]);
                    vec![Some(sum_to(g, da, a)), Some(sum_to(g, db, b))]
                }
                E::Neg => vec![Some(ew(g, E::Neg, &[dy]))],
                // d e^a = dy·y.
                E::Exp => vec![Some(ew(g, E::Mul, &[dy, y]))],
                // d ln a = dy/a.
                E::Log => vec![Some(ew(g, E::Div, &[dy, a]))],
                // d √a = dy/(2y).
                E::Sqrt => {
                    let two = add(g, Op::Const(2.0), &[], vec![]);
                    let d = ew(g, E::Mul, &[y, two]);
                    vec![Some(ew(g, E::Div, &[dy, d]))]
                }
                E::Abs => vec![Some(ew(g, E::AbsGrad, &[a, dy]))],
                E::Relu => vec![Some(ew(g, E::ReluGrad, &[a, dy]))],
                // d tanh a = dy·(1 − y²).
                E::Tanh => {
                    let one = add(g, Op::Const(1.0), &[], vec![]);
                    let y2 = ew(g, E::Mul, &[y, y]);
                    let d = ew(g, E::Sub, &[one, y2]);
                    vec![Some(ew(g, E::Mul, &[dy, d]))]
                }
                // d σ(a) = dy·y·(1 − y).
                E::Sigmoid => {
                    let one = add(g, Op::Const(1.0), &[], vec![]);
                    let d = ew(g, E::Sub, &[one, y]);
                    let d = ew(g, E::Mul, &[y, d]);
                    vec![Some(ew(g, E::Mul, &[dy, d]))]
                }
                E::Gelu => vec![Some(ew(g, E::GeluGrad, &[a, dy]))],
                // Gradient helpers and comparisons are not differentiated further.
                E::ReluGrad | E::GeluGrad | E::AbsGrad | E::Greater | E::Equal => vec![None; ops.len()],
            }
        }
        Op::MatMul { trans_a, trans_b } => {
            let (a, b) = (ops[0], ops[1]);
            // y = A'·B' with A' = Aᵀ if trans_a, B' = Bᵀ if trans_b.
            let da = match (trans_a, trans_b) {
                (false, false) => add(g, Op::MatMul { trans_a: false, trans_b: true }, &[dy, b], shape(g, a)),
                (false, true) => add(g, Op::MatMul { trans_a: false, trans_b: false }, &[dy, b], shape(g, a)),
                (true, false) => add(g, Op::MatMul { trans_a: false, trans_b: true }, &[b, dy], shape(g, a)),
                (true, true) => add(g, Op::MatMul { trans_a: true, trans_b: true }, &[b, dy], shape(g, a)),
            };
            let db = match (trans_a, trans_b) {
                (false, false) => add(g, Op::MatMul { trans_a: true, trans_b: false }, &[a, dy], shape(g, b)),
                (true, false) => add(g, Op::MatMul { trans_a: false, trans_b: false }, &[a, dy], shape(g, b)),
                (false, true) => add(g, Op::MatMul { trans_a: true, trans_b: false }, &[dy, a], shape(g, b)),
                (true, true) => add(g, Op::MatMul { trans_a: true, trans_b: true }, &[dy, a], shape(g, b)),
            };
            vec![Some(da), Some(db)]
        }
        Op::Reshape => vec![Some(add(g, Op::Reshape, &[dy], shape(g, ops[0])))],
        Op::Broadcast => vec![Some(sum_to(g, dy, ops[0]))],
        Op::SumTo => vec![Some(add(g, Op::Broadcast, &[dy], shape(g, ops[0])))],
        Op::Softmax => vec![Some(add(g, Op::SoftmaxGrad, &[y, dy], shape(g, y)))],
        Op::LogSoftmax => vec![Some(add(g, Op::LogSoftmaxGrad, &[y, dy], shape(g, y)))],
        Op::Cat => {
            let (a, b) = (ops[0], ops[1]);
            let wa = match g.node(a).shape.last() {
                Some(Dim::Fixed(w)) => *w,
                _ => unreachable!("cat along a fixed last axis"),
            };
            let da = add(g, Op::SliceLast { start: 0 }, &[dy], shape(g, a));
            let db = add(g, Op::SliceLast { start: wa }, &[dy], shape(g, b));
            vec![Some(da), Some(db)]
        }
        Op::Gather { padding } => {
            let (table, ids) = (ops[0], ops[1]);
            vec![Some(add(g, Op::ScatterAdd { skip: padding }, &[ids, dy], shape(g, table))), None]
        }
        Op::NllRows { ignore, eps } => {
            let (logp, ids) = (ops[0], ops[1]);
            vec![Some(add(g, Op::NllRowsGrad { ignore, eps }, &[ids, dy], shape(g, logp))), None]
        }
        Op::SliceSeq { start } => vec![Some(add(g, Op::SliceSeqGrad { start }, &[dy], shape(g, ops[0])))],
        Op::Last => vec![Some(add(g, Op::LastGrad, &[dy, ops[1]], shape(g, ops[0]))), None],
        // Backpropagation through time, one gradient op per differentiable operand (the
        // lengths are data).
        Op::Recurrent { cell, bias, h0, c0 } => {
            let mut with_dy = ops.clone();
            with_dy.push(dy);
            (0..ops.len())
                .map(|wrt| {
                    if wrt == 1 {
                        return None;
                    }
                    let op = Op::RecurrentGrad { cell, bias, h0, c0, wrt };
                    Some(add(g, op, &with_dy, shape(g, ops[wrt])))
                })
                .collect()
        }
        Op::Lengths { .. } | Op::SeqMask => vec![None; ops.len()],
        // Dropout masks, counts and metrics are constants of the step; leaves have no operands.
        Op::DropoutMask { .. } | Op::CountedRows { .. } | Op::ArgmaxHit | Op::TopKHit { .. } | Op::ToFloat => vec![None; ops.len()],
        Op::Input(_) | Op::State(_) | Op::GradOf(_) | Op::OptState { .. } | Op::Const(_) | Op::Runtime(_) => vec![],
        Op::SoftmaxGrad
        | Op::LogSoftmaxGrad
        | Op::SliceLast { .. }
        | Op::ScatterAdd { .. }
        | Op::NllRowsGrad { .. }
        | Op::SliceSeqGrad { .. }
        | Op::LastGrad
        | Op::RecurrentGrad { .. } => {
            unreachable!("second derivatives are not needed: {}", op.name())
        }
        Op::Dropout { .. } | Op::BatchNorm { .. } => unreachable!("autodiff runs after specialisation"),
        Op::Update(_) | Op::ClipScale { .. } | Op::Assign | Op::Output(_) => unreachable!("effects are not differentiated"),
    }
}

/// Adds the gradient of scalar `loss` (scaled by `seed`, a scalar node) with respect to each
/// node in `wrt` to the graph; returns `wrt[i]` → gradient node (absent when the loss does not
/// depend on it).
pub fn backward(g: &mut Graph, loss: NodeId, seed: NodeId, wrt: &[NodeId]) -> HashMap<NodeId, NodeId> {
    // Nodes on a path from a `wrt` leaf to the loss: only they need gradients.
    let wanted: HashSet<NodeId> = wrt.iter().copied().collect();
    let order = g.topo();
    let mut depends = HashSet::new();
    for &n in &order {
        if wanted.contains(&n) || g.operands(n).iter().any(|o| depends.contains(o)) {
            depends.insert(n);
        }
    }
    let mut on_path = HashSet::new();
    let mut stack = vec![loss];
    while let Some(n) = stack.pop() {
        if depends.contains(&n) && on_path.insert(n) {
            stack.extend(g.operands(n));
        }
    }
    let mut grads: HashMap<NodeId, NodeId> = HashMap::new();
    if !on_path.contains(&loss) {
        return HashMap::new();
    }
    grads.insert(loss, seed);
    for &n in order.iter().rev() {
        if !on_path.contains(&n) || wanted.contains(&n) {
            continue;
        }
        let Some(&dy) = grads.get(&n) else { continue };
        let ops = g.operands(n);
        let partials = vjp(g, n, dy);
        for (o, d) in ops.into_iter().zip(partials) {
            let Some(d) = d else { continue };
            if !on_path.contains(&o) {
                continue;
            }
            let total = match grads.get(&o) {
                Some(&prev) => ew(g, E::Add, &[prev, d]),
                None => d,
            };
            grads.insert(o, total);
        }
    }
    wrt.iter().filter_map(|w| grads.get(w).map(|d| (*w, *d))).collect()
}

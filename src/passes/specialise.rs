//! Mode specialisation: the one forward IR becomes the train-mode or the eval-mode forward.
//!
//! Train: dropout multiplies by a keep-and-scale mask; batchnorm normalises with the batch's
//! mean and biased variance (the gradient flows through both) and updates the running mean
//! and the *unbiased* running variance with `momentum`. Eval: dropout is the identity and
//! batchnorm is an affine map of the running statistics; nothing is written.

use crate::check::Dim;
use crate::data::Dtype;
use crate::ir::op::{Elementwise as E, Op, Runtime};
use crate::ir::{Graph, NodeId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

fn add(g: &mut Graph, op: Op, operands: &[NodeId], shape: Vec<Dim>) -> NodeId {
    g.add(op, operands, shape, Dtype::F32)
}

fn ew(g: &mut Graph, e: E, operands: &[NodeId]) -> NodeId {
    g.elementwise(e, operands)
}

fn konst(g: &mut Graph, v: f32) -> NodeId {
    add(g, Op::Const(v), &[], vec![])
}

/// Rewrites every dropout and batchnorm node for `mode`; returns the state writes the train
/// mode adds (running statistics), in order.
pub fn specialise(g: &mut Graph, mode: Mode) -> Vec<NodeId> {
    let mut effects = Vec::new();
    let targets: Vec<NodeId> = g.ids().into_iter().filter(|n| matches!(g.node(*n).op, Op::Dropout { .. } | Op::BatchNorm { .. })).collect();
    for n in targets {
        let ops = g.operands(n);
        let shape = g.node(n).shape.clone();
        let replacement = match (g.node(n).op.clone(), mode) {
            (Op::Dropout { .. }, Mode::Eval) => ops[0],
            (Op::Dropout { p, site }, Mode::Train) => {
                let mask = add(g, Op::DropoutMask { p, site }, &[], shape);
                ew(g, E::Mul, &[ops[0], mask])
            }
            (Op::BatchNorm { eps, momentum, affine, state }, mode) => {
                let (x, rm, rv) = (ops[0], ops[1], ops[2]);
                let channels = g.node(rm).shape.clone();
                let e = konst(g, eps);
                let (centered, var) = match mode {
                    Mode::Eval => (ew(g, E::Sub, &[x, rm]), rv),
                    Mode::Train => {
                        // The statistics count rows — or, over sequences, valid steps only
                        // (BatchNorm1d on the packed [N_valid, C] data).
                        let masked = ops.len() == if affine { 6 } else { 4 };
                        let (rows, xs) = if masked {
                            let mask = *ops.last().expect("mask operand");
                            let n = add(g, Op::SumTo, &[mask], vec![]);
                            (n, ew(g, E::Mul, &[x, mask]))
                        } else {
                            (add(g, Op::Runtime(Runtime::BatchRows), &[], vec![]), x)
                        };
                        let sum = add(g, Op::SumTo, &[xs], channels.clone());
                        let mean = ew(g, E::Div, &[sum, rows]);
                        let centered = ew(g, E::Sub, &[x, mean]);
                        let sq = ew(g, E::Mul, &[centered, centered]);
                        let sq = if masked { ew(g, E::Mul, &[sq, *ops.last().expect("mask operand")]) } else { sq };
                        let sq_sum = add(g, Op::SumTo, &[sq], channels.clone());
                        let var = ew(g, E::Div, &[sq_sum, rows]);
                        // running ← (1 − m)·running + m·batch, with the unbiased variance.
                        let keep = konst(g, 1.0 - momentum);
                        let m = konst(g, momentum);
                        let one = konst(g, 1.0);
                        let rows_m1 = ew(g, E::Sub, &[rows, one]);
                        let unbias = ew(g, E::Div, &[rows, rows_m1]);
                        let var_u = ew(g, E::Mul, &[var, unbias]);
                        for (running, batch, k) in [(rm, mean, state), (rv, var_u, state + 1)] {
                            let a = ew(g, E::Mul, &[running, keep]);
                            let b = ew(g, E::Mul, &[batch, m]);
                            let new = ew(g, E::Add, &[a, b]);
                            let loc = add(g, Op::State(k), &[], channels.clone());
                            effects.push(add(g, Op::Assign, &[loc, new], channels.clone()));
                        }
                        (centered, var)
                    }
                };
                let ve = ew(g, E::Add, &[var, e]);
                let sd = ew(g, E::Sqrt, &[ve]);
                let xhat = ew(g, E::Div, &[centered, sd]);
                if affine {
                    let scaled = ew(g, E::Mul, &[xhat, ops[3]]);
                    ew(g, E::Add, &[scaled, ops[4]])
                } else {
                    xhat
                }
            }
            _ => unreachable!("filtered above"),
        };
        g.replace_uses(n, replacement);
        g.g.remove_node(n);
    }
    effects
}

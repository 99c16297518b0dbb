//! The expressions of one map (or reduction) as a DAG with shared subexpressions.
//!
//! Kernel templates build expressions as trees and clone freely (a GRU's gate `r` appears in
//! `n`, in the new state, in the layer output and in the saved gates), and one map often
//! writes several outputs from the same intermediates. Hash-consing the trees here means
//! each distinct subexpression is computed once per element — a sigmoid is ~20
//! instructions — whatever the shape of the trees a template wrote.

use super::emit_kernels::Env;
use super::kernel::Expr;
use super::vmath;
use cranelift_codegen::ir::{InstBuilder, Type, Value, condcodes::FloatCC, types};
use cranelift_frontend::FunctionBuilder;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Unary {
    Neg,
    Sqrt,
    Abs,
    Exp,
    Log,
    Tanh,
    Erf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
}

/// One distinct subexpression; operands are indices of earlier nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Node {
    In(usize),
    /// The constant's bits (so that equal constants, and only they, are shared).
    Const(u32),
    Scalar(usize),
    LoopVar,
    InnerIndex,
    Unary(Unary, usize),
    Binary(Binary, usize, usize),
    /// `if a (>, or == when `eq`) b { t } else { f }`.
    Select { eq: bool, a: usize, b: usize, t: usize, f: usize },
}

/// Distinct subexpressions in dependency order, and the node of each root expression.
pub struct Dag {
    nodes: Vec<Node>,
    roots: Vec<usize>,
}

impl Dag {
    pub fn new(exprs: &[&Expr]) -> Dag {
        let mut b = DagBuilder { nodes: Vec::new(), ids: HashMap::new() };
        let roots = exprs.iter().map(|e| b.add(e)).collect();
        Dag { nodes: b.nodes, roots }
    }

    /// A rough instruction count per element: transcendental functions are ~20 each.
    pub fn cost(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| match n {
                Node::Unary(Unary::Exp | Unary::Log | Unary::Tanh | Unary::Erf, _) => 20,
                Node::Select { .. } => 3,
                _ => 1,
            })
            .sum()
    }

    /// Does any expression read input `k`? (Unread inputs need not be loaded.)
    pub fn reads(&self, k: usize) -> bool {
        self.nodes.contains(&Node::In(k))
    }

    /// Distinct subexpressions (for tests).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Emits every node once, in lanes of `lane`, and returns the roots' values. `inputs`
    /// holds the map's inputs at the current element, `index` the innermost index.
    pub fn eval(&self, b: &mut FunctionBuilder, lane: Type, inputs: &[Value], index: Value, env: &Env) -> Vec<Value> {
        let splat = |b: &mut FunctionBuilder, v: Value| if lane == types::F32 { v } else { b.ins().splat(lane, v) };
        let mut vals: Vec<Value> = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let v = match *node {
                Node::In(k) => inputs[k],
                Node::Const(bits) => {
                    let c = b.ins().f32const(f32::from_bits(bits));
                    splat(b, c)
                }
                Node::Scalar(s) => {
                    let v = env.scalar(b, s);
                    splat(b, v)
                }
                Node::InnerIndex => {
                    let f = b.ins().fcvt_from_sint(types::F32, index);
                    splat(b, f)
                }
                Node::LoopVar => {
                    let v = env.loop_index_f32(b);
                    splat(b, v)
                }
                Node::Unary(op, a) => {
                    let x = vals[a];
                    match op {
                        Unary::Neg => b.ins().fneg(x),
                        Unary::Sqrt => b.ins().sqrt(x),
                        Unary::Abs => b.ins().fabs(x),
                        Unary::Exp => vmath::exp(b, lane, x),
                        Unary::Log => vmath::log(b, lane, x),
                        Unary::Tanh => vmath::tanh(b, lane, x),
                        Unary::Erf => vmath::erf(b, lane, x),
                    }
                }
                Node::Binary(op, x, y) => {
                    let (x, y) = (vals[x], vals[y]);
                    match op {
                        Binary::Add => b.ins().fadd(x, y),
                        Binary::Sub => b.ins().fsub(x, y),
                        Binary::Mul => b.ins().fmul(x, y),
                        Binary::Div => b.ins().fdiv(x, y),
                        Binary::Max => vmath::select(b, lane, FloatCC::GreaterThan, x, y, x, y),
                        Binary::Min => vmath::select(b, lane, FloatCC::LessThan, x, y, x, y),
                    }
                }
                Node::Select { eq, a, b: q, t, f } => {
                    let cc = if eq { FloatCC::Equal } else { FloatCC::GreaterThan };
                    vmath::select(b, lane, cc, vals[a], vals[q], vals[t], vals[f])
                }
            };
            vals.push(v);
        }
        self.roots.iter().map(|r| vals[*r]).collect()
    }
}

struct DagBuilder {
    nodes: Vec<Node>,
    ids: HashMap<Node, usize>,
}

impl DagBuilder {
    fn intern(&mut self, n: Node) -> usize {
        if let Some(id) = self.ids.get(&n) {
            return *id;
        }
        self.nodes.push(n);
        self.ids.insert(n, self.nodes.len() - 1);
        self.nodes.len() - 1
    }

    fn add(&mut self, e: &Expr) -> usize {
        let node = match e {
            Expr::In(k) => Node::In(*k),
            Expr::Const(c) => Node::Const(c.to_bits()),
            Expr::Scalar(s) => Node::Scalar(*s),
            Expr::LoopVar => Node::LoopVar,
            Expr::InnerIndex => Node::InnerIndex,
            Expr::Neg(a) | Expr::Sqrt(a) | Expr::Abs(a) | Expr::Exp(a) | Expr::Log(a) | Expr::Tanh(a) | Expr::Erf(a) => {
                let op = match e {
                    Expr::Neg(_) => Unary::Neg,
                    Expr::Sqrt(_) => Unary::Sqrt,
                    Expr::Abs(_) => Unary::Abs,
                    Expr::Exp(_) => Unary::Exp,
                    Expr::Log(_) => Unary::Log,
                    Expr::Tanh(_) => Unary::Tanh,
                    _ => Unary::Erf,
                };
                Node::Unary(op, self.add(a))
            }
            Expr::Add(x, y) | Expr::Sub(x, y) | Expr::Mul(x, y) | Expr::Div(x, y) | Expr::Max(x, y) | Expr::Min(x, y) => {
                let op = match e {
                    Expr::Add(..) => Binary::Add,
                    Expr::Sub(..) => Binary::Sub,
                    Expr::Mul(..) => Binary::Mul,
                    Expr::Div(..) => Binary::Div,
                    Expr::Max(..) => Binary::Max,
                    _ => Binary::Min,
                };
                Node::Binary(op, self.add(x), self.add(y))
            }
            Expr::SelectGt(a, q, t, f) | Expr::SelectEq(a, q, t, f) => Node::Select {
                eq: matches!(e, Expr::SelectEq(..)),
                a: self.add(a),
                b: self.add(q),
                t: self.add(t),
                f: self.add(f),
            },
        };
        self.intern(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codegen::kernel::ex::*;

    #[test]
    fn shared_subexpressions_are_one_node() {
        let r = sigmoid(add(input(0), input(1)));
        let h = add(mul(r.clone(), input(2)), r.clone());
        let dag = Dag::new(&[&h, &r]);
        // in0, in1, add, neg, exp, 1.0, add, div (= r), in2, mul, add
        assert_eq!(dag.len(), 11);
        let (Node::Binary(Binary::Add, m, r_id), _) = (dag.nodes[dag.roots[0]], ()) else { panic!("h is an add") };
        assert_eq!(r_id, dag.roots[1]);
        assert!(matches!(dag.nodes[m], Node::Binary(Binary::Mul, x, _) if x == r_id));
    }

    #[test]
    fn different_constants_stay_apart() {
        let dag = Dag::new(&[&add(c(1.0), c(-1.0)), &c(1.0)]);
        assert_eq!(dag.len(), 3);
    }
}

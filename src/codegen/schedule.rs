//! Scheduling: an IR program → a kernel program.
//!
//! Every node either gets a buffer (inputs, state, gradients and optimizer state have fixed
//! places; other values get a temporary) or is *inlined* into the expression of the one
//! kernel that uses it. Elementwise chains thereby fuse into a single `Map` (or into the
//! `Reduce` that sums them); matrix products become GEMM calls with transposes as strides;
//! softmax, loss and metric ops use the hand-written templates.

use super::jit::CodegenError;
use super::kernel::ex::*;
use super::kernel::*;
use super::exec::ProgramSpec;
use super::templates::{self, Builder};
use crate::check::{Dim, Job};
use crate::data::Dtype;
use crate::ir::op::{Elementwise as E, Op, Update};
use crate::ir::{NodeId, Program};
use std::collections::HashMap;

/// Where each state tensor, its gradient and its optimizer state live (f32 offsets).
#[derive(Debug, Clone)]
pub struct StateLayout {
    pub offset: Vec<usize>,
    pub numel: Vec<usize>,
    pub opt_offset: Vec<usize>,
    pub state_len: usize,
    pub opt_len: usize,
    /// Sequence dimension names, in slot order.
    pub seq_names: Vec<String>,
}

impl StateLayout {
    pub fn new(job: &Job, opt_slots: &[usize]) -> StateLayout {
        let state = job.state();
        let (mut offset, mut numel, mut opt_offset) = (Vec::new(), Vec::new(), Vec::new());
        let (mut at, mut opt_at) = (0usize, 0usize);
        for (k, t) in state.iter().enumerate() {
            let n: usize = t.shape.iter().product::<usize>().max(1);
            // Cache-line aligned starts keep every tensor's rows vector-friendly.
            offset.push(at);
            numel.push(n);
            at += n.div_ceil(16) * 16;
            opt_offset.push(opt_at);
            opt_at += (n.div_ceil(16) * 16) * opt_slots.get(k).copied().unwrap_or(0);
        }
        let seq_names = job.seq_names();
        StateLayout { offset, numel, opt_offset, state_len: at, opt_len: opt_at, seq_names }
    }
}

/// The prefix of the error for sequence ops, which the code generator does not compile yet.
pub const UNSUPPORTED_SEQUENCES: &str = "sequence operations are not compiled to native code yet: ";

fn err(msg: impl Into<String>) -> CodegenError {
    CodegenError(msg.into())
}

struct Scheduler<'a> {
    p: &'a Program,
    layout: &'a StateLayout,
    job: &'a Job,
    b: Builder,
    buf: HashMap<NodeId, Buf>,
    inline: HashMap<NodeId, bool>,
    /// Each recurrent application's buffers and saved state, by its operands.
    rnn_saved: HashMap<Vec<NodeId>, (super::recurrent::Layer, super::recurrent::Saved)>,
    rnn_grads: HashMap<Vec<NodeId>, super::recurrent::Grads>,
}

fn f32buf(region: Region, offset_f32: usize) -> Buf {
    Buf { region, offset: offset_f32 * 4, elem: Elem::F32 }
}

impl Scheduler<'_> {
    fn shape(&self, n: NodeId) -> &[Dim] {
        &self.p.graph.node(n).shape
    }

    fn size(&self, d: &Dim) -> Size {
        match d {
            Dim::Batch => Size::batch(1),
            Dim::Fixed(k) => Size::fixed(*k as i64),
            Dim::Seq { name, offset } => {
                let k = self.layout.seq_names.iter().position(|n| n == name).expect("sequence dim registered");
                Size { factor: 1, batch: false, seq: Some((k, *offset)) }
            }
        }
    }

    fn sizes(&self, shape: &[Dim]) -> Vec<Size> {
        shape.iter().map(|d| self.size(d)).collect()
    }

    fn numel(&self, shape: &[Dim]) -> Size {
        shape.iter().fold(Size::fixed(1), |acc, d| acc.times(self.size(d)))
    }

    /// `rows × cols` view of a value: all leading axes merged, the last axis as columns.
    fn rows_cols(&self, shape: &[Dim]) -> Result<(Size, usize), CodegenError> {
        match shape.split_last() {
            Some((Dim::Fixed(c), lead)) => Ok((self.numel(lead), *c)),
            _ => Err(err(format!("expected a fixed last axis, found {shape:?}"))),
        }
    }

    /// Reading `n` (stored contiguously in `buf` with its own shape) inside iteration
    /// space `space`, with PyTorch broadcasting (right-aligned; size-1 or missing axes
    /// repeat).
    fn access(&self, buf: Buf, shape: &[Dim], space: &[Dim]) -> Access {
        let sizes = self.sizes(shape);
        let mut contiguous = vec![Size::fixed(1); sizes.len()];
        for k in (0..sizes.len().saturating_sub(1)).rev() {
            contiguous[k] = contiguous[k + 1].times(sizes[k + 1]);
        }
        let lead = space.len() - shape.len().min(space.len());
        let strides = (0..space.len())
            .map(|i| {
                if i < lead {
                    return Size::fixed(0);
                }
                let j = i - lead;
                if shape[j] == space[i] { contiguous[j] } else { Size::fixed(0) }
            })
            .collect();
        Access::new(buf, strides)
    }

    fn is_leaf_scalar(&self, n: NodeId) -> bool {
        matches!(self.p.graph.node(n).op, Op::Const(_) | Op::Runtime(_))
    }

    /// Decides which nodes are inlined into their single user's expression.
    fn plan_inlining(&mut self, order: &[NodeId]) {
        let effects: std::collections::HashSet<NodeId> = self.p.effects.iter().copied().collect();
        let live: std::collections::HashSet<NodeId> = order.iter().copied().collect();
        for &n in order {
            let node = self.p.graph.node(n);
            let users: Vec<NodeId> = self.p.graph.users(n).into_iter().filter(|u| live.contains(u)).collect();
            let inline = match &node.op {
                Op::Const(_) | Op::Runtime(_) => true,
                // A broadcast is an index map, free to inline into every map or reduction that
                // reads it; a consumer that needs memory (a GEMM, a recurrent layer) gets a
                // materialised copy.
                Op::Broadcast => {
                    let operand_ok = self.p.graph.operands(n).iter().all(|o| !matches!(self.p.graph.node(*o).op, Op::Elementwise(_)) || self.is_leaf_scalar(*o));
                    let users_fuse = users.iter().all(|u| matches!(self.p.graph.node(*u).op, Op::Elementwise(_) | Op::Assign | Op::Output(_) | Op::SumTo | Op::ClipScale { .. }));
                    operand_ok && users_fuse
                }
                Op::Elementwise(_) if !effects.contains(&n) && users.len() == 1 => {
                    let u = users[0];
                    let user = self.p.graph.node(u);
                    let fusing_user = matches!(user.op, Op::Elementwise(_) | Op::Assign | Op::Output(_) | Op::SumTo);
                    // The value is computed at the user's iteration space: only when equal.
                    let space = match user.op {
                        Op::SumTo => self.p.graph.node(self.p.graph.operands(u)[0]).shape.clone(),
                        Op::Assign => self.p.graph.node(self.p.graph.operands(u)[0]).shape.clone(),
                        _ => user.shape.clone(),
                    };
                    fusing_user && space == node.shape && !(matches!(user.op, Op::Assign) && self.p.graph.operands(u)[0] == n)
                }
                _ => false,
            };
            self.inline.insert(n, inline);
        }
    }

    fn inlined(&self, n: NodeId) -> bool {
        self.inline.get(&n).copied().unwrap_or(false)
    }

    /// The expression computing `n` inside iteration space `space`; buffers it reads are
    /// appended to `inputs`.
    fn expr(&self, n: NodeId, space: &[Dim], inputs: &mut Vec<Access>) -> Result<Expr, CodegenError> {
        let node = self.p.graph.node(n);
        if !self.inlined(n) {
            let buf = *self.buf.get(&n).ok_or_else(|| err(format!("value {} has no buffer", node.op.name())))?;
            let a = self.access(buf, &node.shape, space);
            if let Some(k) = inputs.iter().position(|x| *x == a) {
                return Ok(input(k));
            }
            inputs.push(a);
            return Ok(input(inputs.len() - 1));
        }
        let ops = self.p.graph.operands(n);
        Ok(match &node.op {
            Op::Const(v) => c(*v),
            Op::Runtime(r) => Expr::Scalar(r.slot()),
            Op::Broadcast => self.expr(ops[0], space, inputs)?,
            Op::Elementwise(e) => {
                let a = self.expr(ops[0], space, inputs)?;
                let b = match ops.get(1) {
                    Some(o) => Some(self.expr(*o, space, inputs)?),
                    None => None,
                };
                let two = |b: Option<Expr>| b.expect("binary op");
                match e {
                    E::Add => add(a, two(b)),
                    E::Sub => sub(a, two(b)),
                    E::Mul => mul(a, two(b)),
                    E::Div => div(a, two(b)),
                    E::Max => max(a, two(b)),
                    E::Neg => neg(a),
                    E::Exp => exp(a),
                    E::Log => log(a),
                    E::Sqrt => sqrt(a),
                    E::Abs => abs(a),
                    E::Relu => gt(a.clone(), c(0.0), a, c(0.0)),
                    E::Tanh => tanh(a),
                    E::Sigmoid => sigmoid(a),
                    // x·Φ(x) with Φ(x) = ½(1 + erf(x/√2)).
                    E::Gelu => mul(mul(a.clone(), c(0.5)), add(c(1.0), erf(mul(a, c(std::f32::consts::FRAC_1_SQRT_2))))),
                    E::ReluGrad => gt(a, c(0.0), two(b), c(0.0)),
                    // d/dx x·Φ(x) = Φ(x) + x·φ(x).
                    E::GeluGrad => {
                        let x = a;
                        let cdf = mul(c(0.5), add(c(1.0), erf(mul(x.clone(), c(std::f32::consts::FRAC_1_SQRT_2)))));
                        let pdf = mul(c(0.398_942_3), exp(mul(c(-0.5), mul(x.clone(), x.clone()))));
                        mul(two(b), add(cdf, mul(x, pdf)))
                    }
                    E::AbsGrad => {
                        let dy = two(b);
                        gt(a.clone(), c(0.0), dy.clone(), gt(c(0.0), a, neg(dy), c(0.0)))
                    }
                    E::Greater => gt(a, two(b), c(1.0), c(0.0)),
                    E::Equal => eq(a, two(b), c(1.0), c(0.0)),
                }
            }
            other => return Err(err(format!("{} cannot be inlined", other.name()))),
        })
    }

    fn fixed_buf(&self, op: &Op) -> Option<Buf> {
        match op {
            Op::Input(k) => {
                let dtype = self.job.inputs[*k].ty.dtype;
                Some(Buf { region: Region::Input(*k), offset: 0, elem: if dtype == Dtype::I64 { Elem::I64 } else { Elem::F32 } })
            }
            Op::State(k) => Some(f32buf(Region::State, self.layout.offset[*k])),
            Op::GradOf(k) => Some(f32buf(Region::Grad, self.layout.offset[*k])),
            Op::OptState { tensor, slot } => {
                let stride = self.layout.numel[*tensor].div_ceil(16) * 16;
                Some(f32buf(Region::OptState, self.layout.opt_offset[*tensor] + slot * stride))
            }
            _ => None,
        }
    }

    fn temp(&mut self, n: NodeId) -> Buf {
        let len = self.numel(&self.p.graph.node(n).shape.clone());
        let b = self.b.temp(Elem::F32, len);
        self.buf.insert(n, b);
        b
    }

    fn get(&self, n: NodeId) -> Result<Buf, CodegenError> {
        self.buf.get(&n).copied().ok_or_else(|| err(format!("{} has no buffer", self.p.graph.node(n).op.name())))
    }

    /// A `Map` writing `n`'s expression (over its own shape) into `out`.
    fn map_into(&mut self, out: Buf, out_shape: &[Dim], value: NodeId) -> Result<(), CodegenError> {
        let mut inputs = Vec::new();
        let e = self.expr(value, out_shape, &mut inputs)?;
        let out_access = self.access(out, out_shape, out_shape);
        self.b.push(Kernel::Map { shape: self.sizes(out_shape), inputs, outputs: vec![(out_access, e)] });
        Ok(())
    }

    fn node(&mut self, n: NodeId) -> Result<(), CodegenError> {
        let node = self.p.graph.node(n).clone();
        let ops = self.p.graph.operands(n);
        if let Some(b) = self.fixed_buf(&node.op) {
            self.buf.insert(n, b);
            return Ok(());
        }
        if self.inlined(n) {
            return Ok(());
        }
        match &node.op {
            Op::Input(_) | Op::State(_) | Op::GradOf(_) | Op::OptState { .. } => unreachable!("fixed buffers"),
            Op::Const(_) | Op::Runtime(_) | Op::Elementwise(_) | Op::Broadcast => {
                let out = self.temp(n);
                // Materialise: evaluate the node itself (not inlined) as the map's expression.
                self.inline.insert(n, true);
                let r = self.map_into(out, &node.shape, n);
                self.inline.insert(n, false);
                r?;
            }
            Op::Reshape => {
                let b = self.get(ops[0])?;
                self.buf.insert(n, b);
            }
            Op::MatMul { trans_a, trans_b } => self.matmul(n, &ops, *trans_a, *trans_b)?,
            Op::SumTo => {
                let x = ops[0];
                let space = self.shape(x).to_vec();
                let out = self.temp(n);
                let mut inputs = Vec::new();
                let e = self.expr(x, &space, &mut inputs)?;
                let out_access = self.access(out, &node.shape, &space);
                self.b.push(Kernel::Reduce { shape: self.sizes(&space), inputs, expr: e, op: ReduceOp::Sum, out: out_access, init: true });
            }
            Op::Softmax | Op::LogSoftmax => {
                let x = self.get(ops[0])?;
                let out = self.temp(n);
                let (rows, cols) = self.rows_cols(&node.shape)?;
                if node.op == Op::Softmax {
                    templates::softmax_rows(&mut self.b, x, out, rows, cols);
                } else {
                    templates::log_softmax_rows(&mut self.b, x, out, rows, cols);
                }
            }
            Op::SoftmaxGrad | Op::LogSoftmaxGrad => {
                let (y, dy) = (self.get(ops[0])?, self.get(ops[1])?);
                let out = self.temp(n);
                let (rows, cols) = self.rows_cols(&node.shape)?;
                if node.op == Op::SoftmaxGrad {
                    templates::softmax_rows_backward(&mut self.b, y, dy, out, rows, cols);
                } else {
                    templates::log_softmax_rows_backward(&mut self.b, y, dy, out, rows, cols);
                }
            }
            Op::NllRows { ignore, eps } => {
                let (logp, ids) = (self.get(ops[0])?, self.get(ops[1])?);
                let out = self.temp(n);
                let (rows, cols) = self.rows_cols(self.shape(ops[0]))?;
                templates::nll_per_row(&mut self.b, logp, ids, rows, cols, *ignore, *eps, out);
            }
            Op::CountedRows { ignore } => {
                let ids = self.get(ops[0])?;
                let out = self.temp(n);
                let space = node.shape.clone();
                let ia = self.access(ids, &space, &space);
                let oa = self.access(out, &space, &space);
                self.b.push(Kernel::Map { shape: self.sizes(&space), inputs: vec![ia], outputs: vec![(oa, eq(input(0), c(*ignore as f32), c(0.0), c(1.0)))] });
            }
            Op::NllRowsGrad { ignore, eps } => {
                let (ids, g) = (self.get(ops[0])?, self.get(ops[1])?);
                let out = self.temp(n);
                let (rows, cols) = self.rows_cols(&node.shape)?;
                templates::nll_per_row_backward(&mut self.b, ids, rows, cols, *ignore, *eps, g, out);
            }
            Op::ArgmaxHit | Op::TopKHit { .. } => {
                let (x, ids) = (self.get(ops[0])?, self.get(ops[1])?);
                let out = self.temp(n);
                let (rows, cols) = self.rows_cols(self.shape(ops[0]))?;
                let k = if let Op::TopKHit { k } = node.op { k } else { 1 };
                templates::top_k_hits(&mut self.b, x, ids, rows, cols, k, out);
            }
            Op::ToFloat => {
                let x = self.get(ops[0])?;
                let out = self.temp(n);
                let space = node.shape.clone();
                let (ia, oa) = (self.access(x, &space, &space), self.access(out, &space, &space));
                self.b.push(Kernel::Map { shape: self.sizes(&space), inputs: vec![ia], outputs: vec![(oa, input(0))] });
            }
            Op::DropoutMask { p, site } => {
                let out = self.temp(n);
                let len = self.numel(&node.shape);
                self.b.push(Kernel::DropoutMask { len, p: *p, site: *site as u64, out });
            }
            Op::Gather { .. } => {
                let (table, ids) = (self.get(ops[0])?, self.get(ops[1])?);
                let out = self.temp(n);
                let (_, width) = self.rows_cols(&node.shape)?;
                let rows = self.numel(self.shape(ops[1]));
                self.b.push(Kernel::Gather { rows, width, ids, table, dst: out });
            }
            Op::ScatterAdd { skip } => {
                let (ids, dy) = (self.get(ops[0])?, self.get(ops[1])?);
                let out = self.temp(n);
                let (_, width) = self.rows_cols(&node.shape)?;
                let rows = self.numel(self.shape(ops[0]));
                let len = self.numel(&node.shape);
                self.b.push(Kernel::Zero { buf: out, len });
                self.b.push(Kernel::ScatterAdd { rows, width, ids, src: dy, table: out, skip: *skip });
            }
            Op::Cat => {
                let out = self.temp(n);
                let (rows, width) = self.rows_cols(&node.shape)?;
                let mut col = 0usize;
                for o in &ops {
                    let src = self.get(*o)?;
                    let (_, w) = self.rows_cols(self.shape(*o))?;
                    let dst = Buf { offset: out.offset + col * 4, ..out };
                    self.b.push(Kernel::Map {
                        shape: vec![rows, Size::fixed(w as i64)],
                        inputs: vec![Access::new(src, vec![Size::fixed(w as i64), Size::fixed(1)])],
                        outputs: vec![(Access::new(dst, vec![Size::fixed(width as i64), Size::fixed(1)]), input(0))],
                    });
                    col += w;
                }
            }
            Op::SliceLast { start } => {
                let src = self.get(ops[0])?;
                let out = self.temp(n);
                let (rows, w) = self.rows_cols(&node.shape)?;
                let (_, width) = self.rows_cols(self.shape(ops[0]))?;
                let from = Buf { offset: src.offset + start * 4, ..src };
                self.b.push(Kernel::Map {
                    shape: vec![rows, Size::fixed(w as i64)],
                    inputs: vec![Access::new(from, vec![Size::fixed(width as i64), Size::fixed(1)])],
                    outputs: vec![(Access::new(out, vec![Size::fixed(w as i64), Size::fixed(1)]), input(0))],
                });
            }
            Op::ClipScale { max_norm } => {
                let out = self.temp(n);
                let space = node.shape.clone();
                let mut inputs = Vec::new();
                let g = self.expr(ops[0], &space, &mut inputs)?;
                let total = self.expr(ops[1], &space, &mut inputs)?;
                let coef = min(c(1.0), div(c(*max_norm), add(sqrt(total), c(1e-6))));
                let oa = self.access(out, &space, &space);
                self.b.push(Kernel::Map { shape: self.sizes(&space), inputs, outputs: vec![(oa, mul(g, coef))] });
            }
            Op::Update(rule) => self.update(&ops, *rule)?,
            Op::Assign => {
                let loc = self.get(ops[0])?;
                let shape = self.shape(ops[0]).to_vec();
                self.map_into(loc, &shape, ops[1])?;
            }
            Op::Output(slot) => {
                let out = f32buf(Region::Out, *slot);
                self.map_into(out, &[], ops[0])?;
            }
            Op::Dropout { .. } | Op::BatchNorm { .. } => return Err(err("unspecialised dropout or batchnorm reached codegen")),
            Op::Lengths { dim, offset } => {
                let out = self.temp(n);
                let lens = Buf { region: Region::Lengths(*dim), offset: 0, elem: Elem::I32 };
                self.b.push(Kernel::Map {
                    shape: vec![Size::batch(1)],
                    inputs: vec![Access::new(lens, vec![Size::fixed(1)])],
                    outputs: vec![(Access::new(out, vec![Size::fixed(1)]), add(input(0), c(*offset as f32)))],
                });
            }
            Op::SeqMask => {
                let lengths = self.get(ops[0])?;
                let out = self.temp(n);
                let t = self.size(&node.shape[1]);
                // The `[B, T]` index space; a `[B, T, 1]` mask has the same layout.
                self.b.push(Kernel::Map {
                    shape: vec![Size::batch(1), t],
                    inputs: vec![Access::new(lengths, vec![Size::fixed(1), Size::fixed(0)])],
                    outputs: vec![(Access::new(out, vec![t, Size::fixed(1)]), gt(input(0), Expr::InnerIndex, c(1.0), c(0.0)))],
                });
            }
            Op::SliceSeq { start } => {
                let x = self.get(ops[0])?;
                let width: usize = node.shape[2..].iter().map(|d| if let Dim::Fixed(k) = d { *k } else { 1 }).product();
                let out = if node.dtype == Dtype::I64 {
                    let len = self.numel(&node.shape);
                    let b = self.b.temp(Elem::I64, len);
                    self.buf.insert(n, b);
                    b
                } else {
                    self.temp(n)
                };
                let (t_in, t_out) = (self.size(&self.shape(ops[0])[1].clone()), self.size(&node.shape[1]));
                let w = Size::fixed(width as i64);
                let eb = if x.elem == Elem::I64 { 8 } else { 4 };
                self.b.push(Kernel::CopyRows {
                    rows: Size::batch(1),
                    len: t_out.times(w),
                    src: Buf { offset: x.offset + start * width * eb, ..x },
                    src_stride: t_in.times(w),
                    dst: out,
                    dst_stride: t_out.times(w),
                });
            }
            Op::SliceSeqGrad { start } => {
                let dy = self.get(ops[0])?;
                let out = self.temp(n);
                let width: usize = node.shape[2..].iter().map(|d| if let Dim::Fixed(k) = d { *k } else { 1 }).product();
                let (t_out, t_in) = (self.size(&node.shape[1]), self.size(&self.shape(ops[0])[1].clone()));
                let len = self.numel(&node.shape);
                self.b.push(Kernel::Zero { buf: out, len });
                let w = Size::fixed(width as i64);
                self.b.push(Kernel::Map {
                    shape: vec![Size::batch(1), t_in, w],
                    inputs: vec![Access::new(dy, vec![t_in.times(w), w, Size::fixed(1)])],
                    outputs: vec![(Access::new(Buf { offset: out.offset + start * width * 4, ..out }, vec![t_out.times(w), w, Size::fixed(1)]), input(0))],
                });
            }
            Op::Last | Op::LastGrad => {
                let (x, lengths) = (self.get(ops[0])?, self.get(ops[1])?);
                let out = self.temp(n);
                let scatter = node.op == Op::LastGrad;
                let seq_shape = if scatter { node.shape.clone() } else { self.shape(ops[0]).to_vec() };
                let (_, width) = self.rows_cols(&seq_shape)?;
                let steps = self.size(&seq_shape[1]);
                if scatter {
                    let len = self.numel(&node.shape);
                    self.b.push(Kernel::Zero { buf: out, len });
                }
                self.b.push(Kernel::LastStep { steps, width, x, lengths, out, scatter });
            }
            Op::Recurrent { cell, bias, h0, c0 } => {
                let layer = self.recurrent_layer(&ops, *cell, *bias, *h0, *c0)?;
                let y = self.temp(n);
                let saved = super::recurrent::forward(&mut self.b, &layer, y);
                self.rnn_saved.insert(ops.clone(), (layer, saved));
            }
            Op::RecurrentGrad { wrt, .. } => {
                let (forward_ops, dy) = ops.split_at(ops.len() - 1);
                let key = forward_ops.to_vec();
                let grads = match self.rnn_grads.get(&key) {
                    Some(g) => *g,
                    None => {
                        let (layer, saved) = *self.rnn_saved.get(&key).ok_or_else(|| err("a recurrent gradient without its forward pass"))?;
                        let dy = self.get(dy[0])?;
                        let g = super::recurrent::backward(&mut self.b, &layer, &saved, dy);
                        self.rnn_grads.insert(key, g);
                        g
                    }
                };
                // Operand order: x, lengths, w_ih, w_hh, [b_ih, b_hh], [h0], [c0].
                let bias = matches!(node.op, Op::RecurrentGrad { bias: true, .. });
                let h0 = matches!(node.op, Op::RecurrentGrad { h0: true, .. });
                let mut order = vec![Some(grads.x), None, Some(grads.w_ih), Some(grads.w_hh)];
                if bias {
                    order.push(Some(grads.b_ih));
                    order.push(Some(grads.b_hh));
                }
                if h0 {
                    order.push(Some(grads.h0));
                }
                order.push(Some(grads.c0));
                let buf = order.get(*wrt).copied().flatten().ok_or_else(|| err("gradient of a recurrent layer's lengths"))?;
                self.buf.insert(n, buf);
            }
        }
        Ok(())
    }

    fn recurrent_layer(&self, ops: &[NodeId], cell: crate::check::Cell, bias: bool, h0: bool, c0: bool) -> Result<super::recurrent::Layer, CodegenError> {
        let x_shape = self.shape(ops[0]).to_vec();
        let input = match x_shape.last() {
            Some(Dim::Fixed(k)) => *k,
            _ => return Err(err("recurrent input without a fixed feature axis")),
        };
        let hidden = match self.shape(ops[3]).last() {
            Some(Dim::Fixed(k)) => *k,
            _ => return Err(err("recurrent weight without a fixed shape")),
        };
        let mut next = 4;
        let mut opt = |present: bool| -> Result<Option<Buf>, CodegenError> {
            if !present {
                return Ok(None);
            }
            next += 1;
            self.get(ops[next - 1]).map(Some)
        };
        let b_ih = opt(bias)?;
        let b_hh = opt(bias)?;
        let h0b = opt(h0)?;
        let c0b = opt(c0)?;
        Ok(super::recurrent::Layer {
            cell,
            x: self.get(ops[0])?,
            lengths: self.get(ops[1])?,
            w_ih: self.get(ops[2])?,
            w_hh: self.get(ops[3])?,
            b_ih,
            b_hh,
            h0: h0b,
            c0: c0b,
            input,
            hidden,
            steps: self.size(&x_shape[1]),
        })
    }

    fn matmul(&mut self, n: NodeId, ops: &[NodeId], ta: bool, tb: bool) -> Result<(), CodegenError> {
        let (a, b) = (ops[0], ops[1]);
        let (ra, ca) = self.rows_cols(self.shape(a))?;
        let (rb, cb) = self.rows_cols(self.shape(b))?;
        // Leading axes merge into rows when one side is a plain matrix (linear layers and
        // their weight gradients, whose 2-D result sums over every row).
        let out_rank = self.p.graph.node(n).shape.len();
        let batched = self.shape(a).len() > 2 && self.shape(b).len() > 2 && out_rank > 2;
        if batched {
            return Err(err("batched `@` of two tensors with leading axes is not supported yet"));
        }
        // A' = Aᵀ if ta; rows of A' are m, columns k.
        // A' = Aᵀ if ta: m rows of A', contracted over k = its columns.
        let (m, k, a_rs, a_cs) = if ta { (Size::fixed(ca as i64), ra, Size::fixed(1), Size::fixed(ca as i64)) } else { (ra, Size::fixed(ca as i64), Size::fixed(ca as i64), Size::fixed(1)) };
        let (n_cols, b_rs, b_cs) = if tb { (rb, Size::fixed(1), Size::fixed(cb as i64)) } else { (Size::fixed(cb as i64), Size::fixed(cb as i64), Size::fixed(1)) };
        let out = self.temp(n);
        let (_, out_cols) = self.rows_cols(&self.p.graph.node(n).shape.clone())?;
        let zero = Size::fixed(0);
        self.b.push(Kernel::Gemm {
            m,
            n: n_cols,
            k,
            batch: Size::fixed(1),
            a: MatView { buf: self.get(a)?, rs: a_rs, cs: a_cs, batch_stride: zero, step: zero },
            b: MatView { buf: self.get(b)?, rs: b_rs, cs: b_cs, batch_stride: zero, step: zero },
            c: MatView { buf: out, rs: Size::fixed(out_cols as i64), cs: Size::fixed(1), batch_stride: zero, step: zero },
            accumulate: false,
        });
        Ok(())
    }

    /// One optimizer update over a parameter, its gradient and its state: a single map
    /// writing the parameter and every state tensor, in PyTorch's operation order.
    fn update(&mut self, ops: &[NodeId], rule: Update) -> Result<(), CodegenError> {
        let len = self.numel(self.shape(ops[0]));
        let flat = |b: Buf| Access::new(b, vec![Size::fixed(1)]);
        let mut inputs: Vec<Access> = Vec::new();
        for o in ops {
            inputs.push(flat(self.get(*o)?));
        }
        let (p, g) = (input(0), input(1));
        let lr = Expr::Scalar(crate::ir::op::Runtime::Lr.slot());
        let mut outputs: Vec<(Access, Expr)> = Vec::new();
        let param_out = flat(self.get(ops[0])?);
        // `a + w·(b − a)` or `b − (b − a)·(1 − w)` as torch.lerp picks by the weight.
        // Constants are derived in f64 (PyTorch's Python floats) and rounded once.
        let k = |v: f64| c(v as f32);
        let lerp = |a: Expr, b: Expr, w: f64| if w < 0.5 { add(a.clone(), mul(k(w), sub(b, a))) } else { sub(b.clone(), mul(sub(b, a), k(1.0 - w))) };
        match rule {
            Update::Sgd { momentum, dampening, weight_decay, nesterov } => {
                let g = if weight_decay != 0.0 { add(g, mul(k(weight_decay), p.clone())) } else { g };
                let dir = if momentum != 0.0 {
                    let buf = input(2);
                    let first = Expr::Scalar(crate::ir::op::Runtime::FirstStep.slot());
                    // First step: buf = g; later buf = μ·buf + (1 − dampening)·g.
                    let later = add(mul(buf, k(momentum)), mul(k(1.0 - dampening), g.clone()));
                    let new_buf = gt(first, c(0.5), g.clone(), later);
                    outputs.push((flat(self.get(ops[2])?), new_buf.clone()));
                    if nesterov { add(g, mul(k(momentum), new_buf)) } else { new_buf }
                } else {
                    g
                };
                outputs.insert(0, (param_out, add(p, mul(neg(lr), dir))));
            }
            Update::Adam { beta1, beta2, eps, weight_decay, amsgrad, decoupled } => {
                let p1 = if decoupled && weight_decay != 0.0 { mul(p.clone(), Expr::Scalar(crate::ir::op::Runtime::DecayFactor.slot())) } else { p.clone() };
                let g = if !decoupled && weight_decay != 0.0 { add(g, mul(k(weight_decay), p)) } else { g };
                let m = lerp(input(2), g.clone(), 1.0 - beta1);
                let v = add(mul(input(3), k(beta2)), mul(mul(k(1.0 - beta2), g.clone()), g));
                outputs.push((flat(self.get(ops[2])?), m.clone()));
                outputs.push((flat(self.get(ops[3])?), v.clone()));
                let vhat = if amsgrad {
                    let vmax = max(input(4), v);
                    outputs.push((flat(self.get(ops[4])?), vmax.clone()));
                    vmax
                } else {
                    v
                };
                let b2 = Expr::Scalar(crate::ir::op::Runtime::AdamBias2Sqrt.slot());
                let step = Expr::Scalar(crate::ir::op::Runtime::AdamStepSize.slot());
                let denom = add(div(sqrt(vhat), b2), k(eps));
                outputs.insert(0, (param_out, add(p1, div(mul(neg(step), m), denom))));
            }
            Update::RmsProp { alpha, eps, weight_decay, momentum, centered } => {
                let g = if weight_decay != 0.0 { add(g, mul(k(weight_decay), p.clone())) } else { g };
                let sq = add(mul(input(2), k(alpha)), mul(mul(k(1.0 - alpha), g.clone()), g.clone()));
                outputs.push((flat(self.get(ops[2])?), sq.clone()));
                // Operand slots after (param, grad, square_avg): the momentum buffer, then
                // grad_avg, each present only when used.
                let buf_at = 3;
                let avg_at = 3 + usize::from(momentum != 0.0);
                let avg = if centered {
                    let ga = lerp(input(avg_at), g.clone(), 1.0 - alpha);
                    outputs.push((flat(self.get(ops[avg_at])?), ga.clone()));
                    sqrt(add(sq, mul(mul(c(-1.0), ga.clone()), ga)))
                } else {
                    sqrt(sq)
                };
                let avg = add(avg, k(eps));
                let new_p = if momentum != 0.0 {
                    let buf = add(mul(input(buf_at), k(momentum)), div(g, avg));
                    outputs.push((flat(self.get(ops[buf_at])?), buf.clone()));
                    add(p, mul(neg(lr), buf))
                } else {
                    add(p, div(mul(neg(lr), g), avg))
                };
                outputs.insert(0, (param_out, new_p));
            }
        }
        self.b.push(Kernel::Map { shape: vec![len], inputs, outputs });
        Ok(())
    }
}

/// Schedules one program.
pub fn schedule(p: &Program, job: &Job, layout: &StateLayout) -> Result<ProgramSpec, CodegenError> {
    let order = p.schedule();
    let mut s = Scheduler {
        p,
        layout,
        job,
        b: Builder::default(),
        buf: HashMap::new(),
        inline: HashMap::new(),
        rnn_saved: HashMap::new(),
        rnn_grads: HashMap::new(),
    };
    s.plan_inlining(&order);
    for n in order {
        s.node(n)?;
    }
    let Builder { kernels, temps } = s.b;
    Ok(ProgramSpec { name: p.name.clone(), kernels, temps })
}

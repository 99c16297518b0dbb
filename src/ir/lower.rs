//! Lowering: a checked [`Job`] → the forward IR. Layers expand into ops (linear = matmul
//! with the weight transposed by strides + bias), dropout and batchnorm stay abstract until
//! specialisation, and every loss term and metric becomes a (sum, count) pair so that eval
//! can aggregate over batches exactly as LANGUAGE.md §5 says.

use super::graph::{Graph, NodeId};
use super::op::{Elementwise as E, Op, Runtime};
use crate::check::{self, Arith, Dim, Job, LayerKind, LossKind, MetricKind, Reduction, TensorRole, Unary};
use crate::data::Dtype;

/// A lowering failure: a construct the compiler does not support yet, at a span.
#[derive(Debug, Clone)]
pub struct Unsupported {
    pub what: String,
    pub span: crate::diag::Span,
}

/// A loss term or a metric, aggregated over batches as `sum / count` (`mean`) or `sum`.
#[derive(Debug, Clone, Copy)]
pub struct Aggregate {
    pub sum: NodeId,
    pub count: NodeId,
    pub mean: bool,
}

/// The loss as a formula over its terms, evaluated in f64 by the runtime for eval.
#[derive(Debug, Clone, PartialEq)]
pub enum Formula {
    Term(usize),
    Const(f64),
    Neg(Box<Formula>),
    Bin(Arith, Box<Formula>, Box<Formula>),
}

impl Formula {
    pub fn eval(&self, terms: &[f64]) -> f64 {
        match self {
            Formula::Term(k) => terms[*k],
            Formula::Const(c) => *c,
            Formula::Neg(a) => -a.eval(terms),
            Formula::Bin(op, a, b) => {
                let (a, b) = (a.eval(terms), b.eval(terms));
                match op {
                    Arith::Add => a + b,
                    Arith::Sub => a - b,
                    Arith::Mul => a * b,
                    Arith::Div => a / b,
                }
            }
        }
    }
}

/// The forward IR of a job.
#[derive(Debug, Clone)]
pub struct Forward {
    pub graph: Graph,
    pub terms: Vec<Aggregate>,
    pub formula: Formula,
    /// The scalar loss of one batch (terms as `sum / count` or `sum`, combined).
    pub loss: NodeId,
    /// `(key, aggregate)` per metric, in the job's order.
    pub metrics: Vec<(String, Aggregate)>,
}

struct Lowerer<'j> {
    job: &'j Job,
    g: Graph,
    /// IR node of each checked node (None until lowered).
    value: Vec<Option<NodeId>>,
    /// state_dict index of each layer's first tensor.
    state_base: Vec<usize>,
    dropout_sites: usize,
    /// One node per state tensor, so a shared parameter has a single gradient.
    state_nodes: std::collections::HashMap<usize, NodeId>,
    seq_names: Vec<String>,
    lengths: std::collections::HashMap<(usize, i64), NodeId>,
}

impl Lowerer<'_> {
    fn add(&mut self, op: Op, operands: &[NodeId], shape: Vec<Dim>) -> NodeId {
        self.g.add(op, operands, shape, Dtype::F32)
    }

    fn shape(&self, n: NodeId) -> Vec<Dim> {
        self.g.node(n).shape.clone()
    }

    fn scalar(&mut self, v: f32) -> NodeId {
        self.add(Op::Const(v), &[], vec![])
    }

    fn ew(&mut self, e: E, operands: &[NodeId]) -> NodeId {
        self.g.elementwise(e, operands)
    }

    fn state(&mut self, k: usize) -> NodeId {
        if let Some(n) = self.state_nodes.get(&k) {
            return *n;
        }
        let n = self.new_state(k);
        self.state_nodes.insert(k, n);
        n
    }

    fn new_state(&mut self, k: usize) -> NodeId {
        let t = &self.job_state()[k];
        let shape = t.shape.iter().map(|d| Dim::Fixed(*d)).collect();
        let dtype = if t.role == TensorRole::NumBatchesTracked { Dtype::I64 } else { Dtype::F32 };
        self.g.add(Op::State(k), &[], shape, dtype)
    }

    fn job_state(&self) -> Vec<check::StateTensor> {
        self.job.state()
    }

    /// Per-row valid lengths of a sequence axis.
    fn lengths_of(&mut self, d: &Dim) -> NodeId {
        let Dim::Seq { name, offset } = d else { unreachable!("a sequence axis") };
        let dim = self.seq_names.iter().position(|n| n == name).expect("sequence dimension of an input");
        if let Some(n) = self.lengths.get(&(dim, *offset)) {
            return *n;
        }
        let n = self.add(Op::Lengths { dim, offset: *offset }, &[], vec![Dim::Batch]);
        self.lengths.insert((dim, *offset), n);
        n
    }

    /// The sequence axis of a value, if any.
    fn seq_dim(&self, n: NodeId) -> Option<Dim> {
        self.shape(n).into_iter().find(|d| matches!(d, Dim::Seq { .. }))
    }

    /// `[B, T]` (or `[B, T, 1]` with `keep`) mask of valid steps of `n`'s sequence axis.
    fn mask_of(&mut self, n: NodeId, keep: bool) -> Option<NodeId> {
        let t = self.seq_dim(n)?;
        let lengths = self.lengths_of(&t);
        let mut shape = vec![Dim::Batch, t];
        if keep {
            shape.push(Dim::Fixed(1));
        }
        Some(self.add(Op::SeqMask, &[lengths], shape))
    }

    /// `values` with padded positions zeroed, and the number of counted positions: for a
    /// value with a sequence axis only its valid steps count (LANGUAGE.md §5).
    fn masked(&mut self, values: NodeId) -> Result<(NodeId, NodeId), Unsupported> {
        match self.mask_of(values, false) {
            None => Ok((values, self.numel(values)?)),
            Some(mask) => {
                let v = self.ew(E::Mul, &[values, mask]);
                let positions = self.add(Op::SumTo, &[mask], vec![]);
                let per_position: usize = self.shape(values).iter().skip(2).map(|d| if let Dim::Fixed(k) = d { *k } else { 1 }).product();
                let per = self.scalar(per_position as f32);
                Ok((v, self.ew(E::Mul, &[positions, per])))
            }
        }
    }

    /// Number of elements of a value as a scalar node (`B × fixed sizes`).
    fn numel(&mut self, n: NodeId) -> Result<NodeId, Unsupported> {
        let mut fixed = 1usize;
        let mut batch = false;
        for d in self.shape(n) {
            match d {
                Dim::Batch => batch = true,
                Dim::Fixed(k) => fixed *= k,
                Dim::Seq { .. } => return Err(self.unsupported("counting over sequence positions without a mask")),
            }
        }
        let f = self.scalar(fixed as f32);
        if !batch {
            return Ok(f);
        }
        let b = self.add(Op::Runtime(Runtime::BatchRows), &[], vec![]);
        Ok(self.ew(E::Mul, &[b, f]))
    }

    fn unsupported(&self, what: &str) -> Unsupported {
        Unsupported { what: format!("{what} is not supported by the code generator yet"), span: crate::diag::Span::default() }
    }

    fn lower(&mut self, id: usize) -> Result<NodeId, Unsupported> {
        if let Some(n) = self.value[id] {
            return Ok(n);
        }
        let node = &self.job.nodes[id];
        let at = |e: Unsupported| Unsupported { span: node.span, ..e };
        let n = self.lower_op(id).map_err(at)?;
        self.value[id] = Some(n);
        Ok(n)
    }

    fn lower_op(&mut self, id: usize) -> Result<NodeId, Unsupported> {
        let job = self.job;
        let node = &job.nodes[id];
        let shape = node.ty.shape.clone();
        Ok(match &node.op {
            check::Op::Input(i) => self.g.add(Op::Input(*i), &[], shape, node.ty.dtype),
            check::Op::Const(c) => self.scalar(*c as f32),
            check::Op::Unary(u, x) => {
                let x = self.lower(*x)?;
                let e = match u {
                    Unary::Relu => E::Relu,
                    Unary::Tanh => E::Tanh,
                    Unary::Sigmoid => E::Sigmoid,
                    Unary::Gelu => E::Gelu,
                    Unary::Neg => E::Neg,
                };
                self.ew(e, &[x])
            }
            check::Op::Arith(a, x, y) => {
                let (x, y) = (self.lower(*x)?, self.lower(*y)?);
                let e = match a {
                    Arith::Add => E::Add,
                    Arith::Sub => E::Sub,
                    Arith::Mul => E::Mul,
                    Arith::Div => E::Div,
                };
                self.ew(e, &[x, y])
            }
            check::Op::Dropout { x, p } => {
                let x = self.lower(*x)?;
                let site = self.dropout_sites;
                self.dropout_sites += 1;
                self.add(Op::Dropout { p: *p as f32, site }, &[x], shape)
            }
            check::Op::Softmax { x, axis } | check::Op::LogSoftmax { x, axis } => {
                if *axis + 1 != shape.len() {
                    return Err(self.unsupported("softmax over an axis other than the last"));
                }
                let x = self.lower(*x)?;
                let op = if matches!(node.op, check::Op::Softmax { .. }) { Op::Softmax } else { Op::LogSoftmax };
                self.add(op, &[x], shape)
            }
            check::Op::Flatten(x) | check::Op::Squeeze(x) => {
                let x = self.lower(*x)?;
                self.add(Op::Reshape, &[x], shape)
            }
            check::Op::Cat { a, b, axis } => {
                if *axis + 1 != shape.len() {
                    return Err(self.unsupported("`cat` along an axis other than the last"));
                }
                let (a, b) = (self.lower(*a)?, self.lower(*b)?);
                self.add(Op::Cat, &[a, b], shape)
            }
            check::Op::MatMul(a, b) => {
                let (a, b) = (self.lower(*a)?, self.lower(*b)?);
                self.add(Op::MatMul { trans_a: false, trans_b: false }, &[a, b], shape)
            }
            check::Op::Apply { layer, x, h0, c0 } => {
                let x = self.lower(*x)?;
                let h0 = match h0 {
                    Some(h) => Some(self.lower(*h)?),
                    None => None,
                };
                let c0 = match c0 {
                    Some(c) => Some(self.lower(*c)?),
                    None => None,
                };
                self.layer(*layer, x, shape, (h0, c0))?
            }
            check::Op::Last(x) => {
                let x = self.lower(*x)?;
                let t = self.seq_dim(x).expect("checked: a sequence");
                let lengths = self.lengths_of(&t);
                self.add(Op::Last, &[x, lengths], shape)
            }
            check::Op::Mean(x) => {
                // Σ over valid steps / length: padded steps are masked out first.
                let x = self.lower(*x)?;
                let t = self.seq_dim(x).expect("checked: a sequence");
                let lengths = self.lengths_of(&t);
                let mask = self.mask_of(x, true).expect("a sequence");
                let xm = self.ew(E::Mul, &[x, mask]);
                let h = shape[1].clone();
                let sum = self.add(Op::SumTo, &[xm], vec![Dim::Batch, Dim::Fixed(1), h.clone()]);
                let sum = self.add(Op::Reshape, &[sum], vec![Dim::Batch, h]);
                let len = self.add(Op::Reshape, &[lengths], vec![Dim::Batch, Dim::Fixed(1)]);
                self.ew(E::Div, &[sum, len])
            }
            check::Op::SliceSeq { x, start, .. } => {
                let x = self.lower(*x)?;
                self.g.add(Op::SliceSeq { start: *start }, &[x], shape, node.ty.dtype)
            }
            check::Op::Loss { .. } => unreachable!("loss terms are lowered by `term`"),
        })
    }

    fn layer(&mut self, layer: usize, x: NodeId, shape: Vec<Dim>, state_args: (Option<NodeId>, Option<NodeId>)) -> Result<NodeId, Unsupported> {
        let base = self.state_base[layer];
        Ok(match &self.job.layers[layer].kind {
            LayerKind::Linear { bias, .. } => {
                let w = self.state(base);
                let y = self.add(Op::MatMul { trans_a: false, trans_b: true }, &[x, w], shape);
                if *bias {
                    let b = self.state(base + 1);
                    self.ew(E::Add, &[y, b])
                } else {
                    y
                }
            }
            LayerKind::BatchNorm { eps, momentum, affine, .. } => {
                let first_buffer = base + if *affine { 2 } else { 0 };
                let rm = self.state(first_buffer);
                let rv = self.state(first_buffer + 1);
                let mut operands = vec![x, rm, rv];
                if *affine {
                    operands.push(self.state(base));
                    operands.push(self.state(base + 1));
                }
                // Over [B, T, C] only valid steps count: the mask rides along as the last operand.
                if let Some(mask) = self.mask_of(x, true) {
                    operands.push(mask);
                }
                let op = Op::BatchNorm { eps: *eps as f32, momentum: *momentum as f32, affine: *affine, state: first_buffer };
                self.add(op, &operands, shape)
            }
            LayerKind::LayerNorm { eps, features } => {
                // y = (x − mean) / √(var + eps) · w + b over the last axis.
                let mut stat_shape = shape.clone();
                *stat_shape.last_mut().expect("rank ≥ 2") = Dim::Fixed(1);
                let inv_c = self.scalar(1.0 / *features as f32);
                let sum = self.add(Op::SumTo, &[x], stat_shape.clone());
                let mean = self.ew(E::Mul, &[sum, inv_c]);
                let centered = self.ew(E::Sub, &[x, mean]);
                let sq = self.ew(E::Mul, &[centered, centered]);
                let sq_sum = self.add(Op::SumTo, &[sq], stat_shape);
                let var = self.ew(E::Mul, &[sq_sum, inv_c]);
                let e = self.scalar(*eps as f32);
                let ve = self.ew(E::Add, &[var, e]);
                let sd = self.ew(E::Sqrt, &[ve]);
                let xhat = self.ew(E::Div, &[centered, sd]);
                let w = self.state(base);
                let b = self.state(base + 1);
                let scaled = self.ew(E::Mul, &[xhat, w]);
                self.ew(E::Add, &[scaled, b])
            }
            LayerKind::Embedding { padding_idx, .. } => {
                let w = self.state(base);
                self.add(Op::Gather { padding: padding_idx.map(|p| p as i64) }, &[w, x], shape)
            }
            LayerKind::Recurrent { cell, bias, .. } => {
                let t = self.seq_dim(x).expect("checked: a sequence");
                let lengths = self.lengths_of(&t);
                let mut operands = vec![x, lengths, self.state(base), self.state(base + 1)];
                if *bias {
                    operands.push(self.state(base + 2));
                    operands.push(self.state(base + 3));
                }
                let (h0, c0) = state_args;
                if let Some(h) = h0 {
                    operands.push(h);
                }
                if let Some(c) = c0 {
                    operands.push(c);
                }
                self.add(Op::Recurrent { cell: *cell, bias: *bias, h0: h0.is_some(), c0: c0.is_some() }, &operands, shape)
            }
        })
    }

    /// A loss term as (sum, count) and its per-batch value.
    fn term(&mut self, kind: &LossKind, input: usize, target: usize, reduction: Reduction) -> Result<Aggregate, Unsupported> {
        let x = self.lower(input)?;
        let y = self.lower(target)?;
        let (rows, count) = match kind {
            LossKind::CrossEntropy { .. } | LossKind::Nll { .. } => {
                let (ignore, eps, from_logits) = match kind {
                    LossKind::CrossEntropy { ignore_index, label_smoothing } => (*ignore_index, *label_smoothing as f32, true),
                    LossKind::Nll { ignore_index } => (*ignore_index, 0.0, false),
                    _ => unreachable!(),
                };
                let logp = if from_logits {
                    let s = self.shape(x);
                    self.add(Op::LogSoftmax, &[x], s)
                } else {
                    x
                };
                let row_shape = self.shape(y);
                let mut rows = self.add(Op::NllRows { ignore, eps }, &[logp, y], row_shape.clone());
                let mut counted = self.add(Op::CountedRows { ignore }, &[y], row_shape);
                if let Some(mask) = self.mask_of(y, false) {
                    rows = self.ew(E::Mul, &[rows, mask]);
                    counted = self.ew(E::Mul, &[counted, mask]);
                }
                let count = self.add(Op::SumTo, &[counted], vec![]);
                (rows, count)
            }
            LossKind::Bce => {
                // −(y·max(log p, −100) + (1 − y)·max(log(1 − p), −100)), as nn.BCELoss.
                let floor = self.scalar(-100.0);
                let one = self.scalar(1.0);
                let lp = self.ew(E::Log, &[x]);
                let lp = self.ew(E::Max, &[lp, floor]);
                let q = self.ew(E::Sub, &[one, x]);
                let lq = self.ew(E::Log, &[q]);
                let lq = self.ew(E::Max, &[lq, floor]);
                let a = self.ew(E::Mul, &[y, lp]);
                let ny = self.ew(E::Sub, &[one, y]);
                let b = self.ew(E::Mul, &[ny, lq]);
                let s = self.ew(E::Add, &[a, b]);
                let rows = self.ew(E::Neg, &[s]);
                self.masked(rows)?
            }
            LossKind::BceWithLogits { pos_weight } => {
                // (1 − y)·x + (1 + (w − 1)·y)·(log(1 + e^{−|x|}) + max(−x, 0)): PyTorch's stable form.
                let one = self.scalar(1.0);
                let zero = self.scalar(0.0);
                let ny = self.ew(E::Sub, &[one, y]);
                let a = self.ew(E::Mul, &[ny, x]);
                let ax = self.ew(E::Abs, &[x]);
                let nax = self.ew(E::Neg, &[ax]);
                let e = self.ew(E::Exp, &[nax]);
                let e1 = self.ew(E::Add, &[one, e]);
                let l = self.ew(E::Log, &[e1]);
                let nx = self.ew(E::Neg, &[x]);
                let m = self.ew(E::Max, &[nx, zero]);
                let soft = self.ew(E::Add, &[l, m]);
                let weight = match pos_weight {
                    Some(w) => {
                        let w = self.lower(*w)?;
                        let wm1 = self.ew(E::Sub, &[w, one]);
                        let t = self.ew(E::Mul, &[wm1, y]);
                        self.ew(E::Add, &[one, t])
                    }
                    None => one,
                };
                let b = self.ew(E::Mul, &[weight, soft]);
                let rows = self.ew(E::Add, &[a, b]);
                self.masked(rows)?
            }
            LossKind::Mse | LossKind::L1 => {
                let d = self.ew(E::Sub, &[x, y]);
                let rows = if matches!(kind, LossKind::Mse) { self.ew(E::Mul, &[d, d]) } else { self.ew(E::Abs, &[d]) };
                self.masked(rows)?
            }
        };
        let sum = self.add(Op::SumTo, &[rows], vec![]);
        Ok(Aggregate { sum, count, mean: reduction == Reduction::Mean })
    }

    fn value_of(&mut self, a: Aggregate) -> NodeId {
        if a.mean { self.ew(E::Div, &[a.sum, a.count]) } else { a.sum }
    }

    /// The loss expression: terms combined by constants and arithmetic.
    fn formula(&mut self, id: usize, terms: &mut Vec<Aggregate>) -> Result<(Formula, NodeId), Unsupported> {
        let node = &self.job.nodes[id];
        Ok(match &node.op {
            check::Op::Loss { kind, input, target, reduction } => {
                let a = self.term(kind, *input, *target, *reduction).map_err(|e| Unsupported { span: node.span, ..e })?;
                terms.push(a);
                let v = self.value_of(a);
                (Formula::Term(terms.len() - 1), v)
            }
            check::Op::Const(c) => (Formula::Const(*c), self.scalar(*c as f32)),
            check::Op::Unary(Unary::Neg, x) => {
                let (f, n) = self.formula(*x, terms)?;
                (Formula::Neg(Box::new(f)), self.ew(E::Neg, &[n]))
            }
            check::Op::Arith(op, a, b) => {
                let (fa, na) = self.formula(*a, terms)?;
                let (fb, nb) = self.formula(*b, terms)?;
                let e = match op {
                    Arith::Add => E::Add,
                    Arith::Sub => E::Sub,
                    Arith::Mul => E::Mul,
                    Arith::Div => E::Div,
                };
                (Formula::Bin(*op, Box::new(fa), Box::new(fb)), self.ew(e, &[na, nb]))
            }
            _ => unreachable!("the checker only lets losses, constants and arithmetic into the loss"),
        })
    }

    fn metric(&mut self, m: &check::Metric) -> Result<Aggregate, Unsupported> {
        let at = |e: Unsupported| Unsupported { span: m.span, ..e };
        match &m.kind {
            MetricKind::Loss { kind, reduction } => self.term(kind, m.input, m.target, *reduction).map_err(at),
            MetricKind::Mse | MetricKind::Mae => {
                let kind = if m.kind == MetricKind::Mse { LossKind::Mse } else { LossKind::L1 };
                self.term(&kind, m.input, m.target, Reduction::Mean).map_err(at)
            }
            MetricKind::Accuracy { threshold } => {
                let x = self.lower(m.input).map_err(at)?;
                let y = self.lower(m.target).map_err(at)?;
                let hits = if self.shape(x).len() == self.shape(y).len() {
                    // Binary: (x > threshold) == (y ≥ 0.5).
                    let yf = if self.g.node(y).dtype == Dtype::I64 { self.add(Op::ToFloat, &[y], self.shape(y)) } else { y };
                    let t = self.scalar(*threshold as f32);
                    let pred = self.ew(E::Greater, &[x, t]);
                    let half = self.scalar(0.5);
                    let below = self.ew(E::Greater, &[half, yf]);
                    let one = self.scalar(1.0);
                    let truth = self.ew(E::Sub, &[one, below]);
                    self.ew(E::Equal, &[pred, truth])
                } else {
                    let s = self.shape(y);
                    self.add(Op::ArgmaxHit, &[x, y], s)
                };
                let (hits, count) = self.masked(hits).map_err(at)?;
                let sum = self.add(Op::SumTo, &[hits], vec![]);
                Ok(Aggregate { sum, count, mean: true })
            }
            MetricKind::TopK { k } => {
                let x = self.lower(m.input).map_err(at)?;
                let y = self.lower(m.target).map_err(at)?;
                let s = self.shape(y);
                let hits = self.add(Op::TopKHit { k: *k }, &[x, y], s);
                let (hits, count) = self.masked(hits).map_err(at)?;
                let sum = self.add(Op::SumTo, &[hits], vec![]);
                Ok(Aggregate { sum, count, mean: true })
            }
        }
    }
}

/// Lowers a checked job to its forward IR (with abstract dropout and batchnorm).
pub fn lower(job: &Job) -> Result<Forward, Unsupported> {
    let mut state_base = Vec::new();
    let mut k = 0;
    for (i, l) in job.layers.iter().enumerate() {
        state_base.push(k);
        k += l.state(i).len();
    }
    let mut lw = Lowerer { job, g: Graph::default(), value: vec![None; job.nodes.len()], state_base, dropout_sites: 0, state_nodes: Default::default(), seq_names: job.seq_names(), lengths: Default::default() };
    let mut terms = Vec::new();
    let (formula, loss) = lw.formula(job.loss, &mut terms)?;
    let mut metrics = Vec::new();
    for m in &job.metrics {
        let a = lw.metric(m)?;
        metrics.push((m.key.clone(), a));
    }
    Ok(Forward { graph: lw.g, terms, formula, loss, metrics })
}

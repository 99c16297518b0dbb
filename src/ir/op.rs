//! THE operation set of kpc's IR. Every pass matches on it exhaustively, so a new op is a
//! compile error everywhere it must be handled.
//!
//! Ops are chosen at the granularity the code generator wants: elementwise primitives that
//! fuse into one loop, matrix products that become GEMM calls, and a few "fat" ops
//! (softmax, loss pieces, batch statistics, recurrent layers) whose kernels are written by
//! hand, each with an explicit gradient op.

/// A runtime scalar the training loop supplies each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    /// The learning rate this step uses.
    Lr,
    /// `1 / k` for gradient accumulation over `k` micro-batches.
    AccumScale,
    /// Adam: `lr / (1 − β1^t)`.
    AdamStepSize,
    /// Adam: `√(1 − β2^t)`.
    AdamBias2Sqrt,
    /// 1.0 on the first optimizer step, else 0.0 (SGD momentum starts from the gradient).
    FirstStep,
    /// The batch size `B` as f32.
    BatchRows,
    /// AdamW: `1 − lr·weight_decay`, computed in f64 like PyTorch's Python scalar.
    DecayFactor,
}

impl Runtime {
    /// Every runtime scalar, in slot order.
    pub const ALL: [Runtime; 7] = [
        Runtime::Lr,
        Runtime::AccumScale,
        Runtime::AdamStepSize,
        Runtime::AdamBias2Sqrt,
        Runtime::FirstStep,
        Runtime::BatchRows,
        Runtime::DecayFactor,
    ];

    /// The scalar slot the runtime writes this value to.
    pub fn slot(self) -> usize {
        Runtime::ALL.iter().position(|r| *r == self).expect("listed")
    }
}

/// A per-element (or per-row) function of its operands, with PyTorch broadcasting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Elementwise {
    Add,
    Sub,
    Mul,
    Div,
    /// `max(a, b)`.
    Max,
    Neg,
    Exp,
    Log,
    Sqrt,
    Abs,
    Relu,
    Tanh,
    Sigmoid,
    /// Exact (erf) GELU.
    Gelu,
    /// `dy · [x > 0]` from (x, dy).
    ReluGrad,
    /// `dy · gelu'(x)` from (x, dy).
    GeluGrad,
    /// `dy · sign(x)` from (x, dy) (PyTorch's abs backward, 0 at 0).
    AbsGrad,
    /// `1.0` where `a > b`, else `0.0`.
    Greater,
    /// `1.0` where `a == b`, else `0.0`.
    Equal,
}

impl Elementwise {
    pub fn arity(self) -> usize {
        use Elementwise::*;
        match self {
            Neg | Exp | Log | Sqrt | Abs | Relu | Tanh | Sigmoid | Gelu => 1,
            Add | Sub | Mul | Div | Max | ReluGrad | GeluGrad | AbsGrad | Greater | Equal => 2,
        }
    }

    pub fn name(self) -> &'static str {
        use Elementwise::*;
        match self {
            Add => "add",
            Sub => "sub",
            Mul => "mul",
            Div => "div",
            Max => "max",
            Neg => "neg",
            Exp => "exp",
            Log => "log",
            Sqrt => "sqrt",
            Abs => "abs",
            Relu => "relu",
            Tanh => "tanh",
            Sigmoid => "sigmoid",
            Gelu => "gelu",
            ReluGrad => "relu_grad",
            GeluGrad => "gelu_grad",
            AbsGrad => "abs_grad",
            Greater => "greater",
            Equal => "equal",
        }
    }
}

/// Optimizer update rules (LANGUAGE.md §10), each over one parameter tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
/// Hyper-parameters stay f64 (PyTorch's Python floats) so that derived constants such as
/// `1 − β1` are computed in f64 and rounded to f32 once, as PyTorch does.
pub enum Update {
    Sgd { momentum: f64, dampening: f64, weight_decay: f64, nesterov: bool },
    Adam { beta1: f64, beta2: f64, eps: f64, weight_decay: f64, amsgrad: bool, decoupled: bool },
    RmsProp { alpha: f64, eps: f64, weight_decay: f64, momentum: f64, centered: bool },
}

impl Update {
    /// How many optimizer-state tensors of the parameter's shape the rule keeps.
    pub fn state_slots(&self) -> usize {
        match self {
            Update::Sgd { momentum, .. } => usize::from(*momentum != 0.0),
            Update::Adam { amsgrad, .. } => 2 + usize::from(*amsgrad),
            Update::RmsProp { momentum, centered, .. } => 1 + usize::from(*momentum != 0.0) + usize::from(*centered),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Batch input `k` (in `Job::inputs` order).
    Input(usize),
    /// State tensor `k` (in `Job::state()` order): a parameter or a batchnorm buffer.
    State(usize),
    /// Gradient accumulator of state tensor `k`.
    GradOf(usize),
    /// Optimizer-state tensor `slot` of state tensor `k`.
    OptState { tensor: usize, slot: usize },
    /// A scalar constant.
    Const(f32),
    Runtime(Runtime),
    Elementwise(Elementwise),
    /// `a @ b` over the last two axes (leading axes broadcast); `trans_a`/`trans_b`
    /// transpose an operand's last two axes by strides.
    MatMul { trans_a: bool, trans_b: bool },
    /// Same data, another shape (flatten, squeeze).
    Reshape,
    /// Operand broadcast to this node's shape (PyTorch's expand).
    Broadcast,
    /// Sums the operand down to this node's shape (the gradient of broadcasting, and every
    /// reduction: to `[]` for a total, to `[C]` for column sums, to `[…, 1]` for row sums).
    SumTo,
    /// Row-wise (last axis) softmax / log-softmax, and their gradients from (y, dy).
    Softmax,
    LogSoftmax,
    SoftmaxGrad,
    LogSoftmaxGrad,
    /// `cat(a, b)` along the last axis; `Slice` takes `len` columns from `start` of the
    /// last axis (the gradient of `cat`).
    Cat,
    SliceLast { start: usize },
    /// Keep-and-scale mask of dropout: `1/(1−p)` with probability `1−p`, else 0, drawn from
    /// the counter-based generator keyed by (runtime key, site, element).
    DropoutMask { p: f32, site: usize },
    /// Embedding lookup: rows of `table` (operand 0) at `ids` (operand 1); `padding` is the
    /// row that gets no gradient.
    Gather { padding: Option<i64> },
    /// Gradient of a lookup: rows of `dy` (operand 1) added at `ids` (operand 0) into a zero
    /// table of this node's shape; `skip` (the padding row) gets nothing.
    ScatterAdd { skip: Option<i64> },
    /// Per row: `−(1−ε)·logp[y] − (ε/C)·Σ logp`, 0 where `y == ignore` (operands logp, ids).
    NllRows { ignore: i64, eps: f32 },
    /// Per row 1 where `y != ignore`, else 0 (operand ids).
    CountedRows { ignore: i64 },
    /// Gradient of `NllRows` w.r.t. logp given the per-row upstream gradient (ids, g).
    NllRowsGrad { ignore: i64, eps: f32 },
    /// Per row 1 when the arg-max (first on ties) of the scores equals the id (scores, ids).
    ArgmaxHit,
    /// Per row 1 when the id is among the `k` largest scores (scores, ids).
    TopKHit { k: usize },
    /// `id` as f32 (for comparisons with scores in metrics).
    ToFloat,
    /// Dropout before specialisation: the train program multiplies by a mask, the eval
    /// program passes the value through.
    Dropout { p: f32, site: usize },
    /// batchnorm before specialisation: operands (x, running_mean, running_var[, weight,
    /// bias]); `layer` indexes `Job::layers`, `state` the running_mean tensor (running_var
    /// and num_batches_tracked follow it in state order).
    BatchNorm { eps: f32, momentum: f32, affine: bool, state: usize },
    /// Per-row valid lengths of sequence dimension `dim` (in the job's order of sequence
    /// names) plus `offset`, as f32 `[B]`.
    Lengths { dim: usize, offset: i64 },
    /// 1 where `t < length[b]`, else 0, over this node's shape `[B, T]` or `[B, T, 1]`
    /// (operand: lengths).
    SeqMask,
    /// `y[b, t] = x[b, t + start]` along the sequence axis (the slice `t[start:end]`).
    SliceSeq { start: usize },
    /// Gradient of `SliceSeq`: `dx[b, t + start] = dy[b, t]`, zero elsewhere.
    SliceSeqGrad { start: usize },
    /// `[B, T, H]` → `[B, H]`: each row's output at its last valid step (operands x, lengths).
    Last,
    /// Gradient of `Last`: `dy[b]` placed at step `length[b] − 1` (operands dy, lengths).
    LastGrad,
    /// A recurrent layer over padded sequences with packed semantics: operands
    /// (x, lengths, w_ih, w_hh, [b_ih, b_hh], [h0], [c0]). A row's state stops changing
    /// after its last valid step; outputs at padded steps are zero.
    Recurrent { cell: crate::check::Cell, bias: bool, h0: bool, c0: bool },
    /// The gradient of a recurrent layer's output w.r.t. its operand `wrt`, by
    /// backpropagation through time: operands (the layer's operands…, dy).
    RecurrentGrad { cell: crate::check::Cell, bias: bool, h0: bool, c0: bool, wrt: usize },
    /// An optimizer update of one parameter: operands (param, grad, opt-state…); the node
    /// stands for the updated parameter and writes its state in place.
    Update(Update),
    /// `g · min(1, max_norm / (√total + 1e-6))`: operands (grad, total squared norm).
    ClipScale { max_norm: f32 },
    /// Writes operand 1 into the location of operand 0 (state, grad, optimizer state) and
    /// stands for that location afterwards. Programs are ordered so reads precede writes.
    Assign,
    /// A program output slot (loss sums, counts, metric sums): operand 0 is a scalar.
    Output(usize),
}

impl Op {
    /// A short name for printing.
    pub fn name(&self) -> String {
        match self {
            Op::Input(k) => format!("input[{k}]"),
            Op::State(k) => format!("state[{k}]"),
            Op::GradOf(k) => format!("grad[{k}]"),
            Op::OptState { tensor, slot } => format!("opt[{tensor}.{slot}]"),
            Op::Const(c) => format!("const({c})"),
            Op::Runtime(r) => format!("runtime({r:?})"),
            Op::Elementwise(e) => e.name().to_string(),
            Op::MatMul { trans_a, trans_b } => {
                format!("matmul{}{}", if *trans_a { " ta" } else { "" }, if *trans_b { " tb" } else { "" })
            }
            Op::Reshape => "reshape".into(),
            Op::Broadcast => "broadcast".into(),
            Op::Dropout { p, site } => format!("dropout(p={p}, site={site})"),
            Op::BatchNorm { eps, momentum, affine, state } => format!("batchnorm(eps={eps}, momentum={momentum}, affine={affine}, state={state})"),
            Op::SumTo => "sum_to".into(),
            Op::Softmax => "softmax".into(),
            Op::LogSoftmax => "log_softmax".into(),
            Op::SoftmaxGrad => "softmax_grad".into(),
            Op::LogSoftmaxGrad => "log_softmax_grad".into(),
            Op::Cat => "cat".into(),
            Op::SliceLast { start } => format!("slice_last(start={start})"),
            Op::DropoutMask { p, site } => format!("dropout_mask(p={p}, site={site})"),
            Op::Gather { padding } => match padding {
                Some(p) => format!("gather(padding={p})"),
                None => "gather".into(),
            },
            Op::ScatterAdd { skip } => match skip {
                Some(s) => format!("scatter_add(skip={s})"),
                None => "scatter_add".into(),
            },
            Op::NllRows { ignore, eps } => format!("nll_rows(ignore={ignore}, eps={eps})"),
            Op::CountedRows { ignore } => format!("counted_rows(ignore={ignore})"),
            Op::NllRowsGrad { ignore, eps } => format!("nll_rows_grad(ignore={ignore}, eps={eps})"),
            Op::ArgmaxHit => "argmax_hit".into(),
            Op::TopKHit { k } => format!("top_k_hit(k={k})"),
            Op::ToFloat => "to_float".into(),
            Op::Lengths { dim, offset } => format!("lengths(dim={dim}, offset={offset})"),
            Op::SeqMask => "seq_mask".into(),
            Op::SliceSeq { start } => format!("slice_seq(start={start})"),
            Op::SliceSeqGrad { start } => format!("slice_seq_grad(start={start})"),
            Op::Last => "last".into(),
            Op::LastGrad => "last_grad".into(),
            Op::Recurrent { cell, bias, h0, c0 } => format!("recurrent({cell:?}, bias={bias}, h0={h0}, c0={c0})"),
            Op::RecurrentGrad { cell, wrt, .. } => format!("recurrent_grad({cell:?}, wrt={wrt})"),
            Op::Update(u) => format!("update({u:?})"),
            Op::ClipScale { max_norm } => format!("clip_scale(max_norm={max_norm})"),
            Op::Assign => "assign".into(),
            Op::Output(k) => format!("output[{k}]"),
        }
    }

    /// Does this op carry state or randomness that makes two equal nodes unequal?
    pub fn is_effect(&self) -> bool {
        matches!(self, Op::Assign | Op::Output(_) | Op::Update(_))
    }
}

//! The checked, typed job: what the checker hands to lowering. Every name is resolved,
//! every argument defaulted and range-checked, every value typed with a symbolic shape.

use crate::data::{Dtype, Table};
use crate::diag::Span;
use std::fmt;
use std::path::PathBuf;

/// One axis of a value's shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dim {
    /// The batch axis `B` (always the first axis of a per-example value).
    Batch,
    /// A size known at compile time.
    Fixed(usize),
    /// A padded sequence axis: row r has `len_r(name) + offset` valid steps, where `len_r`
    /// is the length of input dimension `name` in row r (`tgt - 1` after `t[1:]`).
    Seq { name: String, offset: i64 },
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Batch => write!(f, "B"),
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Seq { name, offset: 0 } => write!(f, "{name}"),
            Dim::Seq { name, offset } if *offset > 0 => write!(f, "{name}+{offset}"),
            Dim::Seq { name, offset } => write!(f, "{name}{offset}"),
        }
    }
}

/// dtype and symbolic shape of a value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ty {
    pub dtype: Dtype,
    pub shape: Vec<Dim>,
}

impl Ty {
    pub fn scalar(dtype: Dtype) -> Ty {
        Ty { dtype, shape: Vec::new() }
    }

    /// The sequence axis, if any (always axis 1 when present).
    pub fn seq(&self) -> Option<(&str, i64)> {
        self.shape.iter().find_map(|d| match d {
            Dim::Seq { name, offset } => Some((name.as_str(), *offset)),
            _ => None,
        })
    }

    pub fn last_fixed(&self) -> Option<usize> {
        match self.shape.last() {
            Some(Dim::Fixed(n)) => Some(*n),
            _ => None,
        }
    }
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[", self.dtype.name())?;
        for (i, d) in self.shape.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

/// A checked job.
#[derive(Debug, Clone)]
pub struct Job {
    /// The .train file.
    pub path: PathBuf,
    pub inputs: Vec<Input>,
    pub layers: Vec<Layer>,
    /// The dataflow, in topological order: a node's operands always precede it.
    pub nodes: Vec<Node>,
    /// The scalar node of the whole `loss` expression.
    pub loss: NodeId,
    pub metrics: Vec<Metric>,
    pub optimizer: Optimizer,
    pub schedule: Schedule,
    pub train: TrainConfig,
    pub data: BoundData,
}

pub type NodeId = usize;

/// `input NAME: DTYPE[DIMS]`, bound to a data field.
#[derive(Debug, Clone)]
pub struct Input {
    pub name: String,
    /// Full shape, batch axis first.
    pub ty: Ty,
    pub span: Span,
    /// Index of the bound field in `BoundData::train.fields` (and `eval.fields`).
    pub field: usize,
}

/// The loaded data; the fields of `train` and `eval` are in the same order.
#[derive(Debug, Clone)]
pub struct BoundData {
    pub train: Table,
    pub eval: Option<Table>,
}

#[derive(Debug, Clone)]
pub struct Layer {
    pub name: String,
    pub kind: LayerKind,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    Rnn { relu: bool },
    Gru,
    Lstm,
}

impl Cell {
    /// Gate count G: weight_ih is `[G·H, in]`.
    pub fn gates(self) -> usize {
        match self {
            Cell::Rnn { .. } => 1,
            Cell::Gru => 3,
            Cell::Lstm => 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum LayerKind {
    Linear { in_features: usize, out_features: usize, bias: bool },
    BatchNorm { features: usize, eps: f64, momentum: f64, affine: bool },
    LayerNorm { features: usize, eps: f64 },
    Embedding {
        num: usize,
        dim: usize,
        padding_idx: Option<usize>,
        /// Rows loaded from `from = "file"` (row-major `[num, dim]`), kept as loaded.
        pretrained: Option<Vec<f32>>,
        freeze: bool,
    },
    Recurrent { cell: Cell, input_size: usize, hidden: usize, bias: bool },
}

/// How a tensor of the state_dict starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// U(-bound, bound).
    Uniform(f64),
    /// N(0, 1), then the padding row (if any) zeroed.
    Normal { padding_idx: Option<usize> },
    /// Pretrained rows of an embedding (see `LayerKind::Embedding::pretrained`).
    Pretrained,
    Const(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorRole {
    /// A trainable parameter.
    Param,
    /// A parameter that gets no gradient (`freeze = true`).
    Frozen,
    /// batchnorm `running_mean` / `running_var` (f32 buffers).
    RunningMean,
    RunningVar,
    /// batchnorm `num_batches_tracked` (an i64 buffer, shape `[]`).
    NumBatchesTracked,
}

/// One entry of the state_dict, in PyTorch's order and layout.
#[derive(Debug, Clone, PartialEq)]
pub struct StateTensor {
    /// `fc1.weight`, `bn1.running_mean`, `rnn.weight_ih_l0`, …
    pub name: String,
    pub shape: Vec<usize>,
    pub role: TensorRole,
    pub init: Init,
    /// Index of the owning layer in `Job::layers`.
    pub layer: usize,
}

impl Layer {
    /// The layer's state_dict entries in PyTorch's order.
    pub fn state(&self, layer: usize) -> Vec<StateTensor> {
        let t = |suffix: &str, shape: Vec<usize>, role: TensorRole, init: Init| StateTensor {
            name: format!("{}.{suffix}", self.name),
            shape,
            role,
            init,
            layer,
        };
        match &self.kind {
            LayerKind::Linear { in_features, out_features, bias } => {
                let bound = 1.0 / (*in_features as f64).sqrt();
                let mut v = vec![t("weight", vec![*out_features, *in_features], TensorRole::Param, Init::Uniform(bound))];
                if *bias {
                    v.push(t("bias", vec![*out_features], TensorRole::Param, Init::Uniform(bound)));
                }
                v
            }
            LayerKind::BatchNorm { features, affine, .. } => {
                let mut v = Vec::new();
                if *affine {
                    v.push(t("weight", vec![*features], TensorRole::Param, Init::Const(1.0)));
                    v.push(t("bias", vec![*features], TensorRole::Param, Init::Const(0.0)));
                }
                v.push(t("running_mean", vec![*features], TensorRole::RunningMean, Init::Const(0.0)));
                v.push(t("running_var", vec![*features], TensorRole::RunningVar, Init::Const(1.0)));
                v.push(t("num_batches_tracked", vec![], TensorRole::NumBatchesTracked, Init::Const(0.0)));
                v
            }
            LayerKind::LayerNorm { features, .. } => vec![
                t("weight", vec![*features], TensorRole::Param, Init::Const(1.0)),
                t("bias", vec![*features], TensorRole::Param, Init::Const(0.0)),
            ],
            LayerKind::Embedding { num, dim, padding_idx, pretrained, freeze } => {
                let role = if *freeze { TensorRole::Frozen } else { TensorRole::Param };
                let init = if pretrained.is_some() { Init::Pretrained } else { Init::Normal { padding_idx: *padding_idx } };
                vec![t("weight", vec![*num, *dim], role, init)]
            }
            LayerKind::Recurrent { cell, input_size, hidden, bias } => {
                let g = cell.gates() * hidden;
                let bound = Init::Uniform(1.0 / (*hidden as f64).sqrt());
                let mut v = vec![
                    t("weight_ih_l0", vec![g, *input_size], TensorRole::Param, bound),
                    t("weight_hh_l0", vec![g, *hidden], TensorRole::Param, bound),
                ];
                if *bias {
                    v.push(t("bias_ih_l0", vec![g], TensorRole::Param, bound));
                    v.push(t("bias_hh_l0", vec![g], TensorRole::Param, bound));
                }
                v
            }
        }
    }
}

impl Job {
    /// Names of the sequence dimensions, in order of first appearance among the inputs: the
    /// index of a name is its slot in compiled code and the interpreter.
    pub fn seq_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for i in &self.inputs {
            if let Some((name, _)) = i.ty.seq()
                && !names.iter().any(|n| n == name) {
                    names.push(name.to_string());
                }
        }
        names
    }

    /// The whole state_dict, layers in declaration order.
    pub fn state(&self) -> Vec<StateTensor> {
        self.layers.iter().enumerate().flat_map(|(i, l)| l.state(i)).collect()
    }
}

#[derive(Debug, Clone)]
pub struct Node {
    pub op: Op,
    pub ty: Ty,
    /// Where the value was written in the .train file.
    pub span: Span,
    /// The model value's name when the node is a named value (`logits`).
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unary {
    Relu,
    Tanh,
    Sigmoid,
    /// Exact erf form.
    Gelu,
    Neg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arith {
    Add,
    Sub,
    Mul,
    Div,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    Mean,
    Sum,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LossKind {
    CrossEntropy { ignore_index: i64, label_smoothing: f64 },
    Nll { ignore_index: i64 },
    Bce,
    BceWithLogits { pos_weight: Option<NodeId> },
    Mse,
    L1,
}

/// The model's operations at the level the user wrote them; lowering expands them.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Input(usize),
    /// A scalar f32 constant (broadcasts).
    Const(f64),
    /// A declared layer applied to `x` (recurrent layers may get `h0`, and lstm `c0`).
    Apply { layer: usize, x: NodeId, h0: Option<NodeId>, c0: Option<NodeId> },
    Unary(Unary, NodeId),
    Dropout { x: NodeId, p: f64 },
    /// `axis` is non-negative (resolved from `dim`).
    Softmax { x: NodeId, axis: usize },
    LogSoftmax { x: NodeId, axis: usize },
    /// `[B, T, H]` → `[B, H]`, each row's last valid step.
    Last(NodeId),
    /// Mean over the valid steps of the sequence axis.
    Mean(NodeId),
    /// All axes but the batch axis into one.
    Flatten(NodeId),
    /// Drops a trailing axis of size 1.
    Squeeze(NodeId),
    Cat { a: NodeId, b: NodeId, axis: usize },
    /// Elementwise with PyTorch broadcasting.
    Arith(Arith, NodeId, NodeId),
    /// `torch.matmul`.
    MatMul(NodeId, NodeId),
    /// `x[start:end]` on the sequence axis: valid steps `start ..` up to `len + end_offset`
    /// (`end_offset` ≤ 0; `t[1:]` is start 1, end 0; `t[:-1]` is start 0, end -1).
    SliceSeq { x: NodeId, start: usize, end_offset: i64 },
    /// A loss term: a scalar.
    Loss { kind: LossKind, input: NodeId, target: NodeId, reduction: Reduction },
}

impl Op {
    /// Operand node ids, in order.
    pub fn operands(&self) -> Vec<NodeId> {
        match self {
            Op::Input(_) | Op::Const(_) => vec![],
            Op::Apply { x, h0, c0, .. } => std::iter::once(*x).chain(*h0).chain(*c0).collect(),
            Op::Unary(_, x)
            | Op::Dropout { x, .. }
            | Op::Softmax { x, .. }
            | Op::LogSoftmax { x, .. }
            | Op::Last(x)
            | Op::Mean(x)
            | Op::Flatten(x)
            | Op::Squeeze(x)
            | Op::SliceSeq { x, .. } => vec![*x],
            Op::Cat { a, b, .. } | Op::Arith(_, a, b) | Op::MatMul(a, b) => vec![*a, *b],
            Op::Loss { kind, input, target, .. } => {
                let mut v = vec![*input, *target];
                if let LossKind::BceWithLogits { pos_weight: Some(w) } = kind {
                    v.push(*w);
                }
                v
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum MetricKind {
    /// Arg-max of `[.., C]` logits against class ids; or for `[B]` inputs `x > threshold`
    /// against `y ≥ 0.5`.
    Accuracy { threshold: f64 },
    TopK { k: usize },
    Mse,
    Mae,
    /// Any loss used as a metric.
    Loss { kind: LossKind, reduction: Reduction },
}

#[derive(Debug, Clone)]
pub struct Metric {
    /// The log key: `eval_accuracy`, or `eval_<name>` when named.
    pub key: String,
    pub kind: MetricKind,
    pub input: NodeId,
    pub target: NodeId,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Optimizer {
    Sgd { lr: f64, momentum: f64, dampening: f64, weight_decay: f64, nesterov: bool },
    Adam { lr: f64, betas: (f64, f64), eps: f64, weight_decay: f64, amsgrad: bool, decoupled: bool },
    RmsProp { lr: f64, alpha: f64, eps: f64, weight_decay: f64, momentum: f64, centered: bool },
}

impl Optimizer {
    pub fn lr(&self) -> f64 {
        match self {
            Optimizer::Sgd { lr, .. } | Optimizer::Adam { lr, .. } | Optimizer::RmsProp { lr, .. } => *lr,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleKind {
    Constant,
    StepLr { step_size: u64, gamma: f64 },
    MultiStepLr { milestones: Vec<u64>, gamma: f64 },
    ExponentialLr { gamma: f64 },
    CosineLr { t_max: u64, eta_min: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Every {
    Epoch,
    Step,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub every: Every,
    pub warmup: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub epochs: u64,
    pub batch_size: usize,
    pub shuffle: bool,
    pub drop_last: bool,
    pub accumulate: usize,
    pub clip_grad_norm: Option<f64>,
    pub eval_every: u64,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 20,
            batch_size: 64,
            shuffle: false,
            drop_last: false,
            accumulate: 1,
            clip_grad_norm: None,
            eval_every: 1,
            seed: 0,
        }
    }
}

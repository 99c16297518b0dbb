//! The model item: layers, values and their symbolic shapes.
//!
//! Values may refer to names declared later (the dataflow is a graph, not a script); a
//! declared name shadows a built-in function from its declaration on. Nodes are created on
//! demand, depth first, so `nodes` is topologically ordered and a cycle is found while it is
//! being walked.

use super::args::{Bound, Const, Kind, Param, Typed, bind, eval_const, nullable, opt, req};
use super::model::*;
use crate::data::Dtype;
use crate::diag::{Diagnostic, Span};
use crate::syntax::ast::{Arg, BinOp, Expr, ExprKind, ModelStmt};
use std::collections::HashMap;

/// Most parameters a model may have (elements over all tensors).
pub const MAX_PARAMS: u64 = 1 << 31;

pub const FUNCTIONS: &[&str] =
    &["relu", "tanh", "sigmoid", "gelu", "dropout", "softmax", "log_softmax", "last", "mean", "flatten", "squeeze", "cat"];
pub const LAYERS: &[&str] = &["linear", "batchnorm", "layernorm", "embedding", "rnn", "gru", "lstm"];
pub const LOSSES: &[&str] = &["cross_entropy", "nll", "bce", "bce_with_logits", "mse", "l1"];
pub const METRICS: &[&str] = &["accuracy", "top_k", "mse", "mae"];

#[derive(Clone, Copy)]
enum Decl {
    Input(usize),
    Layer(usize),
    Value(usize),
}

enum State {
    Visiting,
    Done(NodeId),
}

/// What `.vocab` / `.classes` of an input resolve to, and the shortest sequence per dim.
pub(super) struct DataFacts {
    /// input name → vocabulary size.
    pub vocab: HashMap<String, usize>,
    /// input name → class count.
    pub classes: HashMap<String, usize>,
    /// Pretrained embedding rows loaded for `from = "…"`, by the span of the path string:
    /// (values, rows, row width).
    pub pretrained: HashMap<Span, Pretrained>,
}

/// Pretrained embedding rows: (row-major values, rows, row width).
pub(super) type Pretrained = (Vec<f32>, usize, usize);

pub(super) struct Values<'a> {
    stmts: &'a [ModelStmt],
    decls: HashMap<String, (Decl, usize)>,
    pub inputs: Vec<Input>,
    pub layers: Vec<Layer>,
    pub nodes: Vec<Node>,
    state: HashMap<String, State>,
    pub input_nodes: Vec<Option<NodeId>>,
    facts: &'a DataFacts,
    params_total: u64,
}

/// Position of the loss and metrics items: after every model statement.
pub const AFTER_MODEL: usize = usize::MAX;

impl<'a> Values<'a> {
    pub fn new(stmts: &'a [ModelStmt], inputs: Vec<Input>, facts: &'a DataFacts) -> Result<Values<'a>, Diagnostic> {
        let mut decls: HashMap<String, (Decl, usize)> = HashMap::new();
        let mut spans: HashMap<String, Span> = HashMap::new();
        let mut layer_count = 0usize;
        let mut input_count = 0usize;
        for (i, s) in stmts.iter().enumerate() {
            let (name, decl) = match s {
                ModelStmt::Input(d) => {
                    input_count += 1;
                    (&d.name, Decl::Input(input_count - 1))
                }
                ModelStmt::Assign(b) => {
                    let is_layer = matches!(&b.value.kind, ExprKind::Call { callee, .. }
                        if matches!(&callee.kind, ExprKind::Name(n) if LAYERS.contains(&n.as_str())
                            && !spans.contains_key(n.as_str())));
                    if is_layer {
                        layer_count += 1;
                        (&b.name, Decl::Layer(layer_count - 1))
                    } else {
                        (&b.name, Decl::Value(i))
                    }
                }
            };
            if let Some(prev) = spans.get(&name.name) {
                return Err(Diagnostic::at(name.span, format!("`{}` is declared twice", name.name), "declared again here")
                    .with_label(*prev, "first declared here"));
            }
            spans.insert(name.name.clone(), name.span);
            decls.insert(name.name.clone(), (decl, i));
        }
        let n_inputs = inputs.len();
        let mut v = Values {
            stmts,
            decls,
            inputs,
            layers: Vec::new(),
            nodes: Vec::new(),
            state: HashMap::new(),
            input_nodes: vec![None; n_inputs],
            facts,
            params_total: 0,
        };
        for s in stmts {
            if let ModelStmt::Assign(b) = s
                && let Some((Decl::Layer(_), _)) = v.decls.get(&b.name.name) {
                    v.declare_layer(&b.name.name, b.name.span, &b.value)?;
                }
        }
        Ok(v)
    }

    fn push(&mut self, op: Op, ty: Ty, span: Span) -> NodeId {
        self.nodes.push(Node { op, ty, span, name: None });
        self.nodes.len() - 1
    }

    fn ty(&self, n: NodeId) -> &Ty {
        &self.nodes[n].ty
    }

    /// `t.vocab` / `y.classes` as a constant.
    fn field(&self, e: &Expr) -> Result<Const, Diagnostic> {
        let ExprKind::Field { target, name } = &e.kind else { unreachable!("field() on a non-field") };
        let ExprKind::Name(t) = &target.kind else {
            return Err(Diagnostic::at(target.span, "`.vocab` and `.classes` apply to a model input", "expected an input name"));
        };
        let table = match name.name.as_str() {
            "vocab" => &self.facts.vocab,
            "classes" => &self.facts.classes,
            other => {
                return Err(Diagnostic::at(name.span, format!("unknown field `.{other}`"), "expected `.vocab` or `.classes`"));
            }
        };
        match table.get(t) {
            Some(n) => Ok(Const::Int(*n as i64)),
            None if matches!(self.decls.get(t), Some((Decl::Input(_), _))) => {
                let what = if name.name == "vocab" { "a tokenized (`chars`/`words`) input" } else { "a `label(...)` input" };
                Err(Diagnostic::at(e.span, format!("input `{t}` has no `.{}`", name.name), format!("`.{}` needs {what}", name.name)))
            }
            None => Err(Diagnostic::at(target.span, format!("`{t}` is not a model input"), "expected an input name")),
        }
    }

    fn constant(&self, e: &Expr) -> Result<Const, Diagnostic> {
        eval_const(e, &mut |f| self.field(f))
    }

    fn typed<'b>(&self, b: &'b Bound<'_>, name: &'b str) -> Result<Option<Typed<'b>>, Diagnostic> {
        match b.expr(name) {
            None => Ok(None),
            Some(e) => Ok(Some(Typed { callee: &b.callee, name, span: e.span, value: self.constant(e)? })),
        }
    }

    fn size(&self, b: &Bound<'_>, name: &str) -> Result<usize, Diagnostic> {
        let t = self.typed(b, name)?.expect("required size");
        let v = t.int()?;
        if v < 1 || v > i64::from(i32::MAX) {
            return Err(t.out_of_range("a positive integer below 2^31"));
        }
        Ok(v as usize)
    }

    fn flag(&self, b: &Bound<'_>, name: &str, default: bool) -> Result<bool, Diagnostic> {
        self.typed(b, name)?.map_or(Ok(default), |t| t.bool())
    }

    fn positive_float(&self, b: &Bound<'_>, name: &str, default: f64) -> Result<f64, Diagnostic> {
        match self.typed(b, name)? {
            None => Ok(default),
            Some(t) => {
                let v = t.float()?;
                if v <= 0.0 { Err(t.out_of_range("a positive number")) } else { Ok(v) }
            }
        }
    }

    fn declare_layer(&mut self, name: &str, name_span: Span, e: &Expr) -> Result<(), Diagnostic> {
        let ExprKind::Call { callee, args } = &e.kind else { unreachable!("layer decl is a call") };
        let ExprKind::Name(ctor) = &callee.kind else { unreachable!("layer decl callee is a name") };
        const LINEAR: &[Param] = &[
            req("in", Kind::Int).alias("in_features"),
            req("out", Kind::Int).alias("out_features"),
            opt("bias", Kind::Bool),
        ];
        const BATCHNORM: &[Param] = &[
            req("features", Kind::Int).alias("num_features"),
            opt("eps", Kind::Float),
            opt("momentum", Kind::Float),
            opt("affine", Kind::Bool),
        ];
        const LAYERNORM: &[Param] = &[req("features", Kind::Int).alias("normalized_shape"), opt("eps", Kind::Float)];
        const EMBEDDING: &[Param] = &[
            req("num", Kind::Int).alias("num_embeddings"),
            req("dim", Kind::Int).alias("embedding_dim"),
            nullable("padding_idx", Kind::Int),
            nullable("from", Kind::Str),
            opt("freeze", Kind::Bool),
        ];
        const RNN: &[Param] = &[
            req("in", Kind::Int).alias("input_size"),
            req("hidden", Kind::Int).alias("hidden_size"),
            opt("nonlinearity", Kind::Str),
            opt("bias", Kind::Bool),
        ];
        const CELL: &[Param] = &[
            req("in", Kind::Int).alias("input_size"),
            req("hidden", Kind::Int).alias("hidden_size"),
            opt("bias", Kind::Bool),
        ];
        let sig = match ctor.as_str() {
            "linear" => LINEAR,
            "batchnorm" => BATCHNORM,
            "layernorm" => LAYERNORM,
            "embedding" => EMBEDDING,
            "rnn" => RNN,
            _ => CELL,
        };
        let b = bind(ctor, e.span, sig, None, args)?;
        let kind = match ctor.as_str() {
            "linear" => LayerKind::Linear {
                in_features: self.size(&b, "in")?,
                out_features: self.size(&b, "out")?,
                bias: self.flag(&b, "bias", true)?,
            },
            "batchnorm" => {
                let momentum = match self.typed(&b, "momentum")? {
                    None => 0.1,
                    Some(t) => {
                        let m = t.float()?;
                        if !(0.0..=1.0).contains(&m) {
                            return Err(t.out_of_range("in [0, 1]"));
                        }
                        m
                    }
                };
                LayerKind::BatchNorm {
                    features: self.size(&b, "features")?,
                    eps: self.positive_float(&b, "eps", 1e-5)?,
                    momentum,
                    affine: self.flag(&b, "affine", true)?,
                }
            }
            "layernorm" => {
                LayerKind::LayerNorm { features: self.size(&b, "features")?, eps: self.positive_float(&b, "eps", 1e-5)? }
            }
            "embedding" => self.embedding(&b)?,
            _ => {
                let cell = match ctor.as_str() {
                    "rnn" => match self.typed(&b, "nonlinearity")? {
                        None => Cell::Rnn { relu: false },
                        Some(t) => match t.str()?.as_str() {
                            "tanh" => Cell::Rnn { relu: false },
                            "relu" => Cell::Rnn { relu: true },
                            _ => return Err(t.out_of_range("\"tanh\" or \"relu\"")),
                        },
                    },
                    "gru" => Cell::Gru,
                    _ => Cell::Lstm,
                };
                LayerKind::Recurrent {
                    cell,
                    input_size: self.size(&b, "in")?,
                    hidden: self.size(&b, "hidden")?,
                    bias: self.flag(&b, "bias", true)?,
                }
            }
        };
        let layer = Layer { name: name.to_string(), kind, span: name_span };
        let count: Option<u64> = layer
            .state(0)
            .iter()
            .try_fold(0u64, |acc, t| t.shape.iter().try_fold(1u64, |p, d| p.checked_mul(*d as u64)).and_then(|n| acc.checked_add(n)));
        let total = count.and_then(|c| c.checked_add(self.params_total));
        match total {
            Some(t) if t <= MAX_PARAMS => self.params_total = t,
            _ => {
                return Err(Diagnostic::at(e.span, format!("the model would have more than 2^31 parameters with layer `{name}`"), "this layer is too large")
                    .with_note("kpc keeps a job's parameters, gradients and optimizer state in memory; reduce the layer sizes"));
            }
        }
        self.layers.push(layer);
        Ok(())
    }

    fn embedding(&self, b: &Bound<'_>) -> Result<LayerKind, Diagnostic> {
        let num = self.size(b, "num")?;
        let dim = self.size(b, "dim")?;
        let padding_idx = match self.typed(b, "padding_idx")? {
            None => None,
            Some(t) if t.is_none() => None,
            Some(t) => {
                let p = t.int()?;
                // PyTorch accepts a negative index counted from the end.
                let idx = if p < 0 { p + num as i64 } else { p };
                if idx < 0 || idx >= num as i64 {
                    return Err(t.out_of_range(&format!("in [-{num}, {num})")));
                }
                Some(idx as usize)
            }
        };
        let from = match self.typed(b, "from")? {
            Some(t) if !t.is_none() => Some((t.str()?, t.span)),
            _ => None,
        };
        let freeze = self.flag(b, "freeze", from.is_some())?;
        let pretrained = match from {
            None => None,
            Some((_, span)) => {
                let (rows, n, width) = self.facts.pretrained.get(&span).cloned().ok_or_else(|| {
                    Diagnostic::at(span, "pretrained rows must be named by a string literal", "expected `from = \"file.npy\"`")
                })?;
                if n != num || width != dim {
                    return Err(Diagnostic::at(span, format!("the pretrained rows are [{n}, {width}], but the embedding is [{num}, {dim}]"), format!("holds [{n}, {width}]"))
                        .with_note("`from` must hold exactly `num` rows of `dim` values"));
                }
                Some(rows)
            }
        };
        Ok(LayerKind::Embedding { num, dim, padding_idx, pretrained, freeze })
    }

    /// Resolves `name` as seen from statement `at`.
    fn lookup(&self, name: &str, at: usize) -> Option<Decl> {
        let (decl, pos) = *self.decls.get(name)?;
        let builtin = FUNCTIONS.contains(&name) || LAYERS.contains(&name);
        if builtin && pos > at && at != AFTER_MODEL { None } else { Some(decl) }
    }

    /// The node of a named value, input or (error) layer.
    pub fn name_value(&mut self, name: &str, span: Span, at: usize) -> Result<NodeId, Diagnostic> {
        match self.lookup(name, at) {
            Some(Decl::Input(i)) => Ok(self.input_node(i)),
            Some(Decl::Value(stmt)) => self.value(name, stmt, span),
            Some(Decl::Layer(l)) => Err(Diagnostic::at(span, format!("`{name}` is a layer, not a value"), "a layer")
                .with_label(self.layers[l].span, "declared here")
                .with_note(format!("apply it to a value: `x |> {name}`"))),
            None if FUNCTIONS.contains(&name) => Err(Diagnostic::at(span, format!("`{name}` is a function, not a value"), "a function")
                .with_note(format!("apply it to a value: `x |> {name}`"))),
            None => Err(Diagnostic::at(span, format!("unknown name `{name}`"), "not declared").with_note(self.names_note())),
        }
    }

    fn names_note(&self) -> String {
        let mut names: Vec<&str> = self
            .stmts
            .iter()
            .map(|s| match s {
                ModelStmt::Input(d) => d.name.name.as_str(),
                ModelStmt::Assign(b) => b.name.name.as_str(),
            })
            .collect();
        names.truncate(12);
        format!("the model declares: {}", names.join(", "))
    }

    fn input_node(&mut self, i: usize) -> NodeId {
        if let Some(n) = self.input_nodes[i] {
            return n;
        }
        let ty = self.inputs[i].ty.clone();
        let span = self.inputs[i].span;
        let n = self.push(Op::Input(i), ty, span);
        self.nodes[n].name = Some(self.inputs[i].name.clone());
        self.input_nodes[i] = Some(n);
        n
    }

    fn value(&mut self, name: &str, stmt: usize, use_span: Span) -> Result<NodeId, Diagnostic> {
        match self.state.get(name) {
            Some(State::Done(n)) => return Ok(*n),
            Some(State::Visiting) => {
                return Err(Diagnostic::at(use_span, format!("`{name}` depends on itself"), "used here while it is being defined")
                    .with_label(self.stmt_name_span(stmt), "defined here")
                    .with_note("values form a dataflow graph and may not have cycles"));
            }
            None => {}
        }
        self.state.insert(name.to_string(), State::Visiting);
        let ModelStmt::Assign(b) = &self.stmts[stmt] else { unreachable!("value decl is an assignment") };
        let n = self.expr(&b.value, stmt)?;
        // A plain alias (`a = b`) names the same node; keep the first name.
        if self.nodes[n].name.is_none() {
            self.nodes[n].name = Some(name.to_string());
        }
        self.state.insert(name.to_string(), State::Done(n));
        Ok(n)
    }

    fn stmt_name_span(&self, stmt: usize) -> Span {
        match &self.stmts[stmt] {
            ModelStmt::Input(d) => d.name.span,
            ModelStmt::Assign(b) => b.name.span,
        }
    }

    pub fn expr(&mut self, e: &Expr, at: usize) -> Result<NodeId, Diagnostic> {
        match &e.kind {
            ExprKind::Number { value, .. } => Ok(self.push(Op::Const(*value), Ty::scalar(Dtype::F32), e.span)),
            ExprKind::Name(n) => self.name_value(n, e.span, at),
            ExprKind::Field { .. } => {
                let Const::Int(v) = self.field(e)? else { unreachable!("fields are integers") };
                Ok(self.push(Op::Const(v as f64), Ty::scalar(Dtype::F32), e.span))
            }
            ExprKind::Pipe { lhs, rhs } => match &rhs.kind {
                ExprKind::Name(f) => self.call(f, rhs.span, Some(lhs), &[], e.span, at),
                ExprKind::Call { callee, args } => match &callee.kind {
                    ExprKind::Name(f) => self.call(f, callee.span, Some(lhs), args, e.span, at),
                    _ => Err(Diagnostic::at(callee.span, "expected a function or layer name", "not a name")),
                },
                _ => Err(Diagnostic::at(rhs.span, format!("the right side of `|>` must be a function or layer, found {}", rhs.describe()), "expected a function or layer")),
            },
            ExprKind::Call { callee, args } => match &callee.kind {
                ExprKind::Name(f) => self.call(f, callee.span, None, args, e.span, at),
                _ => Err(Diagnostic::at(callee.span, format!("{} is not callable", callee.describe()), "expected a function or layer name")),
            },
            ExprKind::Binary { op, lhs, rhs } => {
                let a = self.expr(lhs, at)?;
                let b = self.expr(rhs, at)?;
                if *op == BinOp::MatMul { self.matmul(a, b, e.span, lhs.span, rhs.span) } else { self.arith(*op, a, b, e.span) }
            }
            ExprKind::Neg(x) => {
                let n = self.expr(x, at)?;
                self.need_f32(n, x.span, "unary minus")?;
                let ty = self.ty(n).clone();
                Ok(self.push(Op::Unary(Unary::Neg, n), ty, e.span))
            }
            ExprKind::Slice { target, start, end } => self.slice(target, start.as_deref(), end.as_deref(), e.span, at),
            _ => Err(Diagnostic::at(e.span, format!("expected a model value, found {}", e.describe()), "not a value")),
        }
    }

    fn need_f32(&self, n: NodeId, span: Span, what: &str) -> Result<(), Diagnostic> {
        let ty = self.ty(n);
        if ty.dtype == Dtype::F32 {
            return Ok(());
        }
        Err(Diagnostic::at(span, format!("{what} needs f32 values, found {ty}"), format!("this is {ty}"))
            .with_note("i64 values are ids or class labels; turn ids into vectors with an `embedding` layer"))
    }

    fn arith(&mut self, op: BinOp, a: NodeId, b: NodeId, span: Span) -> Result<NodeId, Diagnostic> {
        let (ta, tb) = (self.ty(a).clone(), self.ty(b).clone());
        for (n, t) in [(a, &ta), (b, &tb)] {
            if t.dtype != Dtype::F32 {
                let s = self.nodes[n].span;
                return Err(Diagnostic::at(s, format!("arithmetic `{}` needs f32 values, found {t}", op.symbol()), format!("this is {t}")));
            }
        }
        let Some(shape) = broadcast(&ta.shape, &tb.shape) else {
            return Err(Diagnostic::at(span, format!("shapes {ta} and {tb} cannot be broadcast together"), "incompatible shapes")
                .with_label(self.nodes[a].span, format!("{ta}"))
                .with_label(self.nodes[b].span, format!("{tb}"))
                .with_note("axes are matched from the right and must be equal or 1, as in PyTorch"));
        };
        let arith = match op {
            BinOp::Add => Arith::Add,
            BinOp::Sub => Arith::Sub,
            BinOp::Mul => Arith::Mul,
            _ => Arith::Div,
        };
        Ok(self.push(Op::Arith(arith, a, b), Ty { dtype: Dtype::F32, shape }, span))
    }

    fn matmul(&mut self, a: NodeId, b: NodeId, span: Span, sa: Span, sb: Span) -> Result<NodeId, Diagnostic> {
        let (ta, tb) = (self.ty(a).clone(), self.ty(b).clone());
        self.need_f32(a, sa, "`@`")?;
        self.need_f32(b, sb, "`@`")?;
        if ta.shape.len() < 2 || tb.shape.len() < 2 {
            return Err(Diagnostic::at(span, format!("`@` needs operands with at least two axes, found {ta} and {tb}"), "too few axes"));
        }
        let (ra, rb) = (ta.shape.len(), tb.shape.len());
        if ta.shape[ra - 1] != tb.shape[rb - 2] {
            return Err(Diagnostic::at(span, format!("`@` cannot multiply {ta} by {tb}"), "inner sizes differ")
                .with_label(sa, format!("last axis {}", ta.shape[ra - 1]))
                .with_label(sb, format!("second-to-last axis {}", tb.shape[rb - 2])));
        }
        let Some(mut shape) = broadcast(&ta.shape[..ra - 2], &tb.shape[..rb - 2]) else {
            return Err(Diagnostic::at(span, format!("the batch axes of {ta} and {tb} cannot be broadcast together"), "incompatible shapes"));
        };
        shape.push(ta.shape[ra - 2].clone());
        shape.push(tb.shape[rb - 1].clone());
        Ok(self.push(Op::MatMul(a, b), Ty { dtype: Dtype::F32, shape }, span))
    }

    fn slice(&mut self, target: &Expr, start: Option<&Expr>, end: Option<&Expr>, span: Span, at: usize) -> Result<NodeId, Diagnostic> {
        let x = self.expr(target, at)?;
        let ty = self.ty(x).clone();
        let Some((name, offset)) = ty.seq() else {
            return Err(Diagnostic::at(span, format!("slicing needs a sequence axis, but `{}` is {ty}", snippet(target)), "no sequence axis")
                .with_note("slices `t[a:b]` select steps of a variable-length sequence"));
        };
        let name = name.to_string();
        let bound = |e: Option<&Expr>| -> Result<Option<(i64, Span)>, Diagnostic> {
            let Some(e) = e else { return Ok(None) };
            let c = eval_const(e, &mut |f| Err(Diagnostic::at(f.span, "a field is not allowed here", "expected an integer")))?;
            let t = Typed { callee: "slice", name: "bound", span: e.span, value: c };
            Ok(Some((t.int()?, e.span)))
        };
        let s = bound(start)?;
        let en = bound(end)?;
        let start_v = match s {
            None => 0,
            Some((v, _)) if v >= 0 && v <= super::super::data::MAX_SEQ_LEN as i64 => v as usize,
            Some((_, sp)) => {
                return Err(Diagnostic::at(sp, "a slice start must be a non-negative integer", "expected 0, 1, 2, …")
                    .with_note("slices keep a length of the form `len - k`; supported: `t[a:]`, `t[:-k]`, `t[a:-k]`"));
            }
        };
        let end_offset = match en {
            None => 0,
            Some((v, _)) if v <= 0 && v > -(super::super::data::MAX_SEQ_LEN as i64) => v,
            Some((_, sp)) => {
                return Err(Diagnostic::at(sp, "a slice end must be negative (counted from each row's end) or omitted", "expected -1, -2, … or nothing")
                    .with_note("slices keep a length of the form `len - k`; supported: `t[a:]`, `t[:-k]`, `t[a:-k]`"));
            }
        };
        let mut shape = ty.shape.clone();
        let new_offset = offset + end_offset - start_v as i64;
        for d in shape.iter_mut() {
            if matches!(d, Dim::Seq { .. }) {
                *d = Dim::Seq { name: name.clone(), offset: new_offset };
            }
        }
        Ok(self.push(Op::SliceSeq { x, start: start_v, end_offset }, Ty { dtype: ty.dtype, shape }, span))
    }

    fn call(&mut self, f: &str, fspan: Span, piped: Option<&Expr>, args: &[Arg], span: Span, at: usize) -> Result<NodeId, Diagnostic> {
        match self.lookup(f, at) {
            Some(Decl::Layer(l)) => return self.apply(l, fspan, piped, args, span, at),
            Some(Decl::Input(_)) | Some(Decl::Value(_)) => {
                return Err(Diagnostic::at(fspan, format!("`{f}` is a value, not a function or layer"), "not callable"));
            }
            None => {}
        }
        if LAYERS.contains(&f) {
            return Err(Diagnostic::at(fspan, format!("layer `{f}` must be declared with a name before it is applied"), "anonymous layer")
                .with_note(format!("declare it in the model, e.g. `layer1 = {f}(...)`, then apply `x |> layer1`")));
        }
        if LOSSES.contains(&f) || METRICS.contains(&f) {
            return Err(Diagnostic::at(fspan, format!("`{f}` is a loss or metric and belongs in the `loss` or `metrics` item"), "not a model function"));
        }
        const X: &[Param] = &[req("x", Kind::Value)];
        const DROPOUT: &[Param] = &[req("x", Kind::Value), opt("p", Kind::Float)];
        const SOFTMAX: &[Param] = &[req("x", Kind::Value), opt("dim", Kind::Int)];
        const CAT: &[Param] = &[req("a", Kind::Value), req("b", Kind::Value), opt("dim", Kind::Int)];
        let sig = match f {
            "relu" | "tanh" | "sigmoid" | "gelu" | "last" | "mean" | "flatten" | "squeeze" => X,
            "dropout" => DROPOUT,
            "softmax" | "log_softmax" => SOFTMAX,
            "cat" => CAT,
            _ => {
                return Err(Diagnostic::at(fspan, format!("unknown function or layer `{f}`"), "not declared")
                    .with_note(format!("functions: {}", FUNCTIONS.join(", "))));
            }
        };
        let b = bind(f, span, sig, piped, args)?;
        let xe = b.expr(sig[0].name).expect("required operand");
        let x = self.expr(xe, at)?;
        let ty = self.ty(x).clone();
        match f {
            "relu" | "tanh" | "sigmoid" | "gelu" => {
                self.need_f32(x, xe.span, &format!("`{f}`"))?;
                let u = match f {
                    "relu" => Unary::Relu,
                    "tanh" => Unary::Tanh,
                    "sigmoid" => Unary::Sigmoid,
                    _ => Unary::Gelu,
                };
                Ok(self.push(Op::Unary(u, x), ty, span))
            }
            "dropout" => {
                self.need_f32(x, xe.span, "`dropout`")?;
                let p = match self.typed(&b, "p")? {
                    None => 0.5,
                    Some(t) => {
                        let p = t.float()?;
                        if !(0.0..=1.0).contains(&p) {
                            return Err(t.out_of_range("a probability in [0, 1]"));
                        }
                        p
                    }
                };
                Ok(self.push(Op::Dropout { x, p }, ty, span))
            }
            "softmax" | "log_softmax" => {
                self.need_f32(x, xe.span, &format!("`{f}`"))?;
                let axis = self.axis(&b, &ty, -1)?;
                let op = if f == "softmax" { Op::Softmax { x, axis } } else { Op::LogSoftmax { x, axis } };
                Ok(self.push(op, ty, span))
            }
            "last" | "mean" => {
                self.need_f32(x, xe.span, &format!("`{f}`"))?;
                if ty.shape.len() != 3 || ty.seq().is_none() {
                    return Err(Diagnostic::at(xe.span, format!("`{f}` reads a sequence [B, T, H], found {ty}"), "not a sequence of vectors"));
                }
                let shape = vec![Dim::Batch, ty.shape[2].clone()];
                let op = if f == "last" { Op::Last(x) } else { Op::Mean(x) };
                Ok(self.push(op, Ty { dtype: Dtype::F32, shape }, span))
            }
            "flatten" => {
                if ty.seq().is_some() {
                    return Err(Diagnostic::at(xe.span, format!("`flatten` cannot merge a variable-length axis, found {ty}"), "has a sequence axis")
                        .with_note("reduce the sequence first with `last` or `mean`"));
                }
                let mut n: usize = 1;
                for d in ty.shape.iter().skip(1) {
                    if let Dim::Fixed(k) = d {
                        n = n.saturating_mul(*k);
                    }
                }
                Ok(self.push(Op::Flatten(x), Ty { dtype: ty.dtype, shape: vec![Dim::Batch, Dim::Fixed(n)] }, span))
            }
            "squeeze" => {
                if ty.shape.len() < 2 || ty.shape.last() != Some(&Dim::Fixed(1)) {
                    return Err(Diagnostic::at(xe.span, format!("`squeeze` drops a trailing axis of size 1, but the value is {ty}"), "last axis is not 1"));
                }
                let mut shape = ty.shape.clone();
                shape.pop();
                Ok(self.push(Op::Squeeze(x), Ty { dtype: ty.dtype, shape }, span))
            }
            _ => {
                let be = b.expr("b").expect("required operand");
                let y = self.expr(be, at)?;
                let ty2 = self.ty(y).clone();
                self.need_f32(x, xe.span, "`cat`")?;
                self.need_f32(y, be.span, "`cat`")?;
                let axis = self.axis(&b, &ty, -1)?;
                let ok = ty.shape.len() == ty2.shape.len()
                    && ty.shape.iter().zip(&ty2.shape).enumerate().all(|(i, (p, q))| i == axis || p == q);
                let (Some(Dim::Fixed(p)), Some(Dim::Fixed(q))) = (ty.shape.get(axis), ty2.shape.get(axis)) else {
                    return Err(Diagnostic::at(span, "`cat` joins along a fixed-size axis", "not a fixed axis"));
                };
                if !ok {
                    return Err(Diagnostic::at(span, format!("`cat` needs equal shapes except along axis {axis}, found {ty} and {ty2}"), "incompatible shapes"));
                }
                let mut shape = ty.shape.clone();
                shape[axis] = Dim::Fixed(p + q);
                Ok(self.push(Op::Cat { a: x, b: y, axis }, Ty { dtype: Dtype::F32, shape }, span))
            }
        }
    }

    /// Resolves a `dim` argument to a non-negative axis that is neither batch nor sequence.
    fn axis(&self, b: &Bound<'_>, ty: &Ty, default: i64) -> Result<usize, Diagnostic> {
        let (d, span) = match self.typed(b, "dim")? {
            None => (default, b.span),
            Some(t) => (t.int()?, t.span),
        };
        let rank = ty.shape.len() as i64;
        let axis = if d < 0 { d + rank } else { d };
        if axis < 0 || axis >= rank {
            return Err(Diagnostic::at(span, format!("dimension {d} is out of range for {ty}"), format!("expected a dimension in [-{rank}, {rank})")));
        }
        let axis = axis as usize;
        if !matches!(ty.shape[axis], Dim::Fixed(_)) {
            return Err(Diagnostic::at(span, format!("dimension {d} of {ty} is the batch or sequence axis"), "expected a feature axis"));
        }
        Ok(axis)
    }

    fn apply(&mut self, l: usize, fspan: Span, piped: Option<&Expr>, args: &[Arg], span: Span, at: usize) -> Result<NodeId, Diagnostic> {
        const PLAIN: &[Param] = &[req("x", Kind::Value)];
        const RNN: &[Param] = &[req("x", Kind::Value), nullable("h0", Kind::Value)];
        const LSTM: &[Param] = &[req("x", Kind::Value), nullable("h0", Kind::Value), nullable("c0", Kind::Value)];
        let kind = self.layers[l].kind.clone();
        let lname = self.layers[l].name.clone();
        let sig = match &kind {
            LayerKind::Recurrent { cell: Cell::Lstm, .. } => LSTM,
            LayerKind::Recurrent { .. } => RNN,
            _ => PLAIN,
        };
        let b = bind(&lname, span, sig, piped, args)?;
        let xe = b.expr("x").expect("required operand");
        let x = self.expr(xe, at)?;
        let ty = self.ty(x).clone();
        let feature_mismatch = |want: usize, what: &str| {
            Diagnostic::at(xe.span, format!("layer `{lname}` expects {want} input features, but the value has {}", ty.shape.last().map_or("none".into(), |d| d.to_string())), format!("this is {ty}"))
                .with_label(fspan, format!("`{lname}` takes {what} {want}"))
        };
        let out_ty = match &kind {
            LayerKind::Linear { in_features, out_features, .. } => {
                self.need_f32(x, xe.span, &format!("layer `{lname}` (linear)"))?;
                if ty.shape.len() < 2 || ty.last_fixed() != Some(*in_features) {
                    return Err(feature_mismatch(*in_features, "in ="));
                }
                let mut shape = ty.shape.clone();
                *shape.last_mut().expect("rank ≥ 2") = Dim::Fixed(*out_features);
                Ty { dtype: Dtype::F32, shape }
            }
            LayerKind::BatchNorm { features, .. } => {
                self.need_f32(x, xe.span, &format!("layer `{lname}` (batchnorm)"))?;
                let ok_rank = ty.shape.len() == 2 || (ty.shape.len() == 3 && ty.seq().is_some());
                if !ok_rank || ty.last_fixed() != Some(*features) {
                    return Err(feature_mismatch(*features, "features =").with_note("batchnorm normalizes [B, C] or [B, T, C]"));
                }
                ty.clone()
            }
            LayerKind::LayerNorm { features, .. } => {
                self.need_f32(x, xe.span, &format!("layer `{lname}` (layernorm)"))?;
                if ty.shape.len() < 2 || ty.last_fixed() != Some(*features) {
                    return Err(feature_mismatch(*features, "features ="));
                }
                ty.clone()
            }
            LayerKind::Embedding { num, dim, .. } => {
                if ty.dtype != Dtype::I64 {
                    return Err(Diagnostic::at(xe.span, format!("embedding `{lname}` looks up i64 ids, found {ty}"), format!("this is {ty}")));
                }
                if let Some(v) = self.vocab_of(x)
                    && v > *num {
                        return Err(Diagnostic::at(fspan, format!("embedding `{lname}` has {num} rows, but its input has ids up to {}", v - 1), "too few rows")
                            .with_label(self.layers[l].span, "declared here")
                            .with_note(format!("use `num = {v}` or the input's `.vocab`")));
                    }
                let mut shape = ty.shape.clone();
                shape.push(Dim::Fixed(*dim));
                Ty { dtype: Dtype::F32, shape }
            }
            LayerKind::Recurrent { input_size, hidden, .. } => {
                if ty.dtype != Dtype::F32 || ty.shape.len() != 3 || ty.seq().is_none() {
                    return Err(Diagnostic::at(xe.span, format!("recurrent layer `{lname}` reads a sequence f32[B, T, {input_size}], found {ty}"), format!("this is {ty}"))
                        .with_note("feed it the output of an embedding or of another sequence layer"));
                }
                if ty.last_fixed() != Some(*input_size) {
                    return Err(feature_mismatch(*input_size, "in ="));
                }
                let mut shape = ty.shape.clone();
                shape[2] = Dim::Fixed(*hidden);
                Ty { dtype: Dtype::F32, shape }
            }
        };
        let mut state = [None, None];
        for (k, key) in ["h0", "c0"].iter().enumerate() {
            if !sig.iter().any(|p| p.name == *key) {
                continue;
            }
            if let Some(e) = b.expr(key) {
                if e.kind == ExprKind::None {
                    continue;
                }
                let n = self.expr(e, at)?;
                let t = self.ty(n).clone();
                let LayerKind::Recurrent { hidden, .. } = kind else { unreachable!("only recurrent layers take h0") };
                let want = Ty { dtype: Dtype::F32, shape: vec![Dim::Batch, Dim::Fixed(hidden)] };
                if t != want {
                    return Err(Diagnostic::at(e.span, format!("`{key}` of `{lname}` must be {want}, found {t}"), format!("this is {t}")));
                }
                state[k] = Some(n);
            }
        }
        Ok(self.push(Op::Apply { layer: l, x, h0: state[0], c0: state[1] }, out_ty, span))
    }

    /// The vocabulary size of a token-id value derived from an input (`t`, `t[1:]`).
    pub fn vocab_of(&self, mut n: NodeId) -> Option<usize> {
        loop {
            match &self.nodes[n].op {
                Op::SliceSeq { x, .. } => n = *x,
                Op::Input(i) => return self.facts.vocab.get(&self.inputs[*i].name).copied(),
                _ => return None,
            }
        }
    }

    /// The input a value comes from unchanged but for slicing (for data-range checks).
    pub fn source_input(&self, mut n: NodeId) -> Option<usize> {
        loop {
            match &self.nodes[n].op {
                Op::SliceSeq { x, .. } => n = *x,
                Op::Input(i) => return Some(*i),
                _ => return None,
            }
        }
    }

    /// Types every model value the loss and metrics did not reach, so that its errors are
    /// reported before it is called unused.
    pub fn check_remaining(&mut self) -> Result<(), Diagnostic> {
        for (i, s) in self.stmts.iter().enumerate() {
            if let ModelStmt::Assign(b) = s
                && let Some((Decl::Value(_), _)) = self.decls.get(&b.name.name) {
                    self.value(&b.name.name, i, b.name.span)?;
                }
        }
        Ok(())
    }

    /// The first model input, layer or value the `roots` (loss and metric nodes) do not use.
    pub fn first_unused(&self, roots: &[NodeId]) -> Option<Diagnostic> {
        let live = self.reachable(roots);
        for s in self.stmts {
            match s {
                ModelStmt::Input(d) => {
                    let Some(i) = self.inputs.iter().position(|i| i.name == d.name.name) else { continue };
                    if !self.input_nodes[i].is_some_and(|n| live[n]) {
                        return Some(Diagnostic::at(d.name.span, format!("input `{}` is never used", d.name.name), "not used by the loss or any metric")
                            .with_note("every input must feed the loss or a metric; remove it and its data binding"));
                    }
                }
                ModelStmt::Assign(b) => match self.decls.get(&b.name.name) {
                    Some((Decl::Layer(l), _)) => {
                        let applied = self.nodes.iter().enumerate().any(|(n, node)| live[n] && matches!(node.op, Op::Apply { layer, .. } if layer == *l));
                        if !applied {
                            return Some(Diagnostic::at(b.name.span, format!("layer `{}` is never applied", b.name.name), "declared but not used")
                                .with_note("a layer nothing calls is probably a typo"));
                        }
                    }
                    Some((Decl::Value(_), _)) => {
                        let used = matches!(self.state.get(&b.name.name), Some(State::Done(n)) if live[*n]);
                        if !used {
                            return Some(Diagnostic::at(b.name.span, format!("value `{}` is never used by the loss or a metric", b.name.name), "unused value")
                                .with_note("a value nothing uses is probably a typo"));
                        }
                    }
                    _ => {}
                },
            }
        }
        None
    }

    /// Which nodes the roots depend on.
    fn reachable(&self, roots: &[NodeId]) -> Vec<bool> {
        let mut live = vec![false; self.nodes.len()];
        let mut stack: Vec<NodeId> = roots.to_vec();
        while let Some(n) = stack.pop() {
            if std::mem::replace(&mut live[n], true) {
                continue;
            }
            stack.extend(self.nodes[n].op.operands());
        }
        live
    }
}

/// PyTorch broadcasting of two shapes, or `None`.
pub fn broadcast(a: &[Dim], b: &[Dim]) -> Option<Vec<Dim>> {
    let n = a.len().max(b.len());
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let da = (i + a.len()).checked_sub(n).map(|k| &a[k]);
        let db = (i + b.len()).checked_sub(n).map(|k| &b[k]);
        out.push(match (da, db) {
            (Some(x), None) | (None, Some(x)) => x.clone(),
            (Some(x), Some(y)) if x == y => x.clone(),
            (Some(Dim::Fixed(1)), Some(y)) => y.clone(),
            (Some(x), Some(Dim::Fixed(1))) => x.clone(),
            _ => return None,
        });
    }
    Some(out)
}

fn snippet(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Name(n) => n.clone(),
        _ => "this value".into(),
    }
}

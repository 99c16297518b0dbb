//! The loss and metrics items: loss terms, metric calls, their shapes and the data ranges
//! their targets must lie in.

use super::args::{Bound, Kind, Param, Typed, bind, eval_const, opt, req};
use super::model::*;
use super::values::{AFTER_MODEL, LOSSES, METRICS, Values};
use crate::data::{self, Dtype, Table};
use crate::diag::{Diagnostic, SourceMap, Span};
use crate::syntax::ast::{BinOp, Expr, ExprKind, Metrics};

const CE: &[Param] = &[
    req("input", Kind::Value),
    req("target", Kind::Value),
    opt("reduction", Kind::Str),
    opt("ignore_index", Kind::Int),
    opt("label_smoothing", Kind::Float),
];
const NLL: &[Param] = &[req("input", Kind::Value), req("target", Kind::Value), opt("reduction", Kind::Str), opt("ignore_index", Kind::Int)];
const PLAIN: &[Param] = &[req("input", Kind::Value), req("target", Kind::Value), opt("reduction", Kind::Str)];
const BCE_LOGITS: &[Param] = &[
    req("input", Kind::Value),
    req("target", Kind::Value),
    opt("reduction", Kind::Str),
    super::args::nullable("pos_weight", Kind::Value),
];
const ACCURACY: &[Param] = &[req("input", Kind::Value), req("target", Kind::Value), opt("threshold", Kind::Float)];
const TOP_K: &[Param] = &[req("input", Kind::Value), req("target", Kind::Value), opt("k", Kind::Int)];
const PAIR: &[Param] = &[req("input", Kind::Value), req("target", Kind::Value)];

/// Checks loss and metrics against the model, creating their nodes.
pub(super) struct Objective<'v, 'a> {
    pub values: &'v mut Values<'a>,
    pub train: &'v Table,
    pub eval: Option<&'v Table>,
    pub sources: &'v mut SourceMap,
}

fn typed<'b>(b: &'b Bound<'_>, name: &'b str) -> Result<Option<Typed<'b>>, Diagnostic> {
    match b.expr(name) {
        None => Ok(None),
        Some(e) => {
            let value = eval_const(e, &mut |f| Err(Diagnostic::at(f.span, "a field is not allowed here", "expected a constant")))?;
            Ok(Some(Typed { callee: &b.callee, name, span: e.span, value }))
        }
    }
}

fn reduction(b: &Bound<'_>) -> Result<Reduction, Diagnostic> {
    match typed(b, "reduction")? {
        None => Ok(Reduction::Mean),
        Some(t) => match t.str()?.as_str() {
            "mean" => Ok(Reduction::Mean),
            "sum" => Ok(Reduction::Sum),
            _ => Err(t.out_of_range("\"mean\" or \"sum\"").with_note("the loss item is a scalar, so `\"none\"` is not available")),
        },
    }
}

impl Objective<'_, '_> {
    fn ty(&self, n: NodeId) -> Ty {
        self.values.nodes[n].ty.clone()
    }

    fn span(&self, n: NodeId) -> Span {
        self.values.nodes[n].span
    }

    /// The loss expression: loss calls combined with numbers by `+ - * /`.
    pub fn loss(&mut self, e: &Expr) -> Result<NodeId, Diagnostic> {
        match &e.kind {
            ExprKind::Number { value, .. } => Ok(self.push(Op::Const(*value), Ty::scalar(Dtype::F32), e.span)),
            ExprKind::Neg(x) => {
                let n = self.loss(x)?;
                Ok(self.push(Op::Unary(Unary::Neg, n), Ty::scalar(Dtype::F32), e.span))
            }
            ExprKind::Binary { op, lhs, rhs } if *op != BinOp::MatMul => {
                let a = self.loss(lhs)?;
                let b = self.loss(rhs)?;
                let arith = match op {
                    BinOp::Add => Arith::Add,
                    BinOp::Sub => Arith::Sub,
                    BinOp::Mul => Arith::Mul,
                    _ => Arith::Div,
                };
                Ok(self.push(Op::Arith(arith, a, b), Ty::scalar(Dtype::F32), e.span))
            }
            ExprKind::Call { callee, args } => match &callee.kind {
                ExprKind::Name(f) if LOSSES.contains(&f.as_str()) => {
                    let (kind, input, target, red) = self.loss_call(f, e.span, args)?;
                    Ok(self.push(Op::Loss { kind, input, target, reduction: red }, Ty::scalar(Dtype::F32), e.span))
                }
                ExprKind::Name(f) => Err(Diagnostic::at(callee.span, format!("unknown loss `{f}`"), "not a loss function")
                    .with_note(format!("losses: {}", LOSSES.join(", ")))),
                _ => Err(Diagnostic::at(callee.span, "expected a loss function", "not a name")),
            },
            _ => Err(Diagnostic::at(e.span, format!("expected a loss such as `cross_entropy(logits, y)`, found {}", e.describe()), "not a loss")
                .with_note("the loss item combines loss calls with numbers, e.g. `0.5 * mse(a, b) + l1(a, b)`")),
        }
    }

    fn push(&mut self, op: Op, ty: Ty, span: Span) -> NodeId {
        self.values.nodes.push(Node { op, ty, span, name: None });
        self.values.nodes.len() - 1
    }

    fn operand(&mut self, b: &Bound<'_>, name: &str) -> Result<NodeId, Diagnostic> {
        let e = b.expr(name).expect("required operand");
        self.values.expr(e, AFTER_MODEL)
    }

    fn loss_call(&mut self, f: &str, span: Span, args: &[crate::syntax::ast::Arg]) -> Result<(LossKind, NodeId, NodeId, Reduction), Diagnostic> {
        let sig = match f {
            "cross_entropy" => CE,
            "nll" => NLL,
            "bce_with_logits" => BCE_LOGITS,
            _ => PLAIN,
        };
        let b = bind(f, span, sig, None, args)?;
        let input = self.operand(&b, "input")?;
        let target = self.operand(&b, "target")?;
        let red = reduction(&b)?;
        let kind = match f {
            "cross_entropy" | "nll" => {
                let ignore_index = typed(&b, "ignore_index")?.map_or(Ok(-100), |t| t.int())?;
                let smoothing = if f == "cross_entropy" { typed(&b, "label_smoothing")? } else { None };
                let label_smoothing = match smoothing {
                    None => 0.0,
                    Some(t) => {
                        let v = t.float()?;
                        if !(0.0..=1.0).contains(&v) {
                            return Err(t.out_of_range("in [0, 1]"));
                        }
                        v
                    }
                };
                self.classes_check(f, &b, input, target, ignore_index)?;
                if f == "nll" {
                    LossKind::Nll { ignore_index }
                } else {
                    LossKind::CrossEntropy { ignore_index, label_smoothing }
                }
            }
            "bce" | "bce_with_logits" => {
                self.same_shape(f, &b, input, target, true)?;
                self.probability_targets(f, &b, target)?;
                if f == "bce" {
                    LossKind::Bce
                } else {
                    let pos_weight = match b.expr("pos_weight") {
                        Some(e) if e.kind != ExprKind::None => {
                            let w = self.values.expr(e, AFTER_MODEL)?;
                            let (tw, ti) = (self.ty(w), self.ty(input));
                            if tw.dtype != Dtype::F32 || super::values::broadcast(&tw.shape, &ti.shape).as_deref() != Some(&ti.shape[..]) {
                                return Err(Diagnostic::at(e.span, format!("`pos_weight` must broadcast to {ti}, found {tw}"), "incompatible shape"));
                            }
                            Some(w)
                        }
                        _ => None,
                    };
                    LossKind::BceWithLogits { pos_weight }
                }
            }
            _ => {
                self.same_shape(f, &b, input, target, true)?;
                if f == "mse" { LossKind::Mse } else { LossKind::L1 }
            }
        };
        Ok((kind, input, target, red))
    }

    /// `[B, C]` logits with `[B]` class ids, or `[B, T, C]` with `[B, T]`; ids in range.
    fn classes_check(&mut self, f: &str, b: &Bound<'_>, input: NodeId, target: NodeId, ignore_index: i64) -> Result<usize, Diagnostic> {
        let (ti, tt) = (self.ty(input), self.ty(target));
        let (is, ts) = (b.span_of("input"), b.span_of("target"));
        if ti.dtype != Dtype::F32 {
            return Err(Diagnostic::at(is, format!("`{f}` needs f32 scores, found {ti}"), format!("this is {ti}")));
        }
        let rank_ok = (ti.shape.len() == 2 && ti.seq().is_none()) || (ti.shape.len() == 3 && ti.seq().is_some());
        let Some(classes) = ti.last_fixed().filter(|_| rank_ok) else {
            return Err(Diagnostic::at(is, format!("`{f}` needs scores of shape [B, C] or [B, T, C], found {ti}"), format!("this is {ti}")));
        };
        if tt.dtype != Dtype::I64 {
            return Err(Diagnostic::at(ts, format!("`{f}` needs i64 class ids as targets, found {tt}"), format!("this is {tt}"))
                .with_note("declare the target input `i64` (class probabilities as targets are not supported)"));
        }
        if tt.shape[..] != ti.shape[..ti.shape.len() - 1] {
            let want = Ty { dtype: Dtype::I64, shape: ti.shape[..ti.shape.len() - 1].to_vec() };
            return Err(Diagnostic::at(ts, format!("`{f}` targets must be {want} for scores {ti}, found {tt}"), format!("this is {tt}"))
                .with_label(is, format!("scores are {ti}")));
        }
        // Class ids must index the scores: check the data the target comes from.
        if let Some(i) = self.values.source_input(target) {
            let name = self.values.inputs[i].name.clone();
            let field = self.values.inputs[i].field;
            for table in [Some(self.train), self.eval].into_iter().flatten() {
                let fld = &table.fields[field];
                let count = fld.classes.as_ref().map(|c| c.len()).or(fld.vocab.as_ref().map(|v| v.len()));
                if let Some(count) = count {
                    if count > classes {
                        let what = if fld.classes.is_some() { "classes" } else { "token ids" };
                        let plural = if classes == 1 { "class" } else { "classes" };
                        return Err(Diagnostic::at(is, format!("`{f}` scores have {classes} {plural}, but target `{name}` has {count} {what}"), format!("{classes} {plural}"))
                            .with_label(ts, format!("{count} {what}"))
                            .with_note(format!("size the output layer with `{name}.{}`", if fld.classes.is_some() { "classes" } else { "vocab" })));
                    }
                    continue;
                }
                if let data::Values::I64 { data, .. } = &fld.values
                    && let Some(row) = data.iter().position(|&v| v != ignore_index && (v < 0 || v >= classes as i64)) {
                        let v = data[row];
                        let d = data::row_error(
                            table,
                            fld,
                            row,
                            format!("class id {v} of `{name}` is out of range for {classes} classes"),
                            format!("expected an integer in [0, {classes})"),
                            self.sources,
                        );
                        return Err(d.with_label(is, format!("`{f}` over {classes} classes")));
                    }
            }
        }
        Ok(classes)
    }

    fn same_shape(&self, f: &str, b: &Bound<'_>, input: NodeId, target: NodeId, float_target: bool) -> Result<(), Diagnostic> {
        let (ti, tt) = (self.ty(input), self.ty(target));
        let (is, ts) = (b.span_of("input"), b.span_of("target"));
        if ti.dtype != Dtype::F32 {
            return Err(Diagnostic::at(is, format!("`{f}` needs f32 values, found {ti}"), format!("this is {ti}")));
        }
        if float_target && tt.dtype != Dtype::F32 {
            return Err(Diagnostic::at(ts, format!("`{f}` needs an f32 target, found {tt}"), format!("this is {tt}"))
                .with_note("declare the target input `f32`"));
        }
        if ti.shape != tt.shape {
            return Err(Diagnostic::at(ts, format!("`{f}` needs input and target of the same shape, found {ti} and {tt}"), format!("this is {tt}"))
                .with_label(is, format!("this is {ti}"))
                .with_note("kpc does not broadcast loss operands silently; reshape with `squeeze` if needed"));
        }
        Ok(())
    }

    /// bce targets must lie in [0, 1].
    fn probability_targets(&mut self, f: &str, b: &Bound<'_>, target: NodeId) -> Result<(), Diagnostic> {
        let Some(i) = self.values.source_input(target) else { return Ok(()) };
        let name = self.values.inputs[i].name.clone();
        let field = self.values.inputs[i].field;
        for table in [Some(self.train), self.eval].into_iter().flatten() {
            let fld = &table.fields[field];
            if let data::Values::F32 { data, shape } = &fld.values {
                let width = shape.iter().product::<usize>().max(1);
                if let Some(k) = data.iter().position(|v| !(0.0..=1.0).contains(v)) {
                    let d = data::row_error(
                        table,
                        fld,
                        k / width,
                        format!("target {} of `{name}` is outside [0, 1]", data[k]),
                        "expected a probability in [0, 1]",
                        self.sources,
                    );
                    return Err(d.with_label(b.span, format!("`{f}` needs targets in [0, 1]")));
                }
            }
        }
        Ok(())
    }

    pub fn metrics(&mut self, item: &Metrics) -> Result<Vec<Metric>, Diagnostic> {
        if self.eval.is_none() {
            return Err(Diagnostic::at(item.keyword, "metrics need an `eval` source", "no eval data to measure on")
                .with_note("add `eval = ...` to the data item, or remove the metrics item"));
        }
        let mut out: Vec<Metric> = Vec::new();
        for m in &item.metrics {
            let ExprKind::Call { callee, args } = &m.value.kind else {
                return Err(Diagnostic::at(m.value.span, format!("expected a metric call, found {}", m.value.describe()), "expected e.g. `accuracy(logits, y)`"));
            };
            let ExprKind::Name(f) = &callee.kind else {
                return Err(Diagnostic::at(callee.span, "expected a metric name", "not a name"));
            };
            let span = m.value.span;
            let (kind, input, target) = match f.as_str() {
                "accuracy" => {
                    let b = bind(f, span, ACCURACY, None, args)?;
                    let (input, target) = (self.operand(&b, "input")?, self.operand(&b, "target")?);
                    let threshold = typed(&b, "threshold")?.map_or(Ok(0.5), |t| t.float())?;
                    self.accuracy_shapes(f, &b, input, target)?;
                    (MetricKind::Accuracy { threshold }, input, target)
                }
                "top_k" => {
                    let b = bind(f, span, TOP_K, None, args)?;
                    let (input, target) = (self.operand(&b, "input")?, self.operand(&b, "target")?);
                    let classes = self.classes_check(f, &b, input, target, -100)?;
                    let k = match typed(&b, "k")? {
                        None => 5,
                        Some(t) => {
                            let k = t.int()?;
                            if k < 1 || k as usize > classes {
                                return Err(t.out_of_range(&format!("in [1, {classes}] (the number of classes)")));
                            }
                            k as usize
                        }
                    };
                    if k > classes {
                        return Err(Diagnostic::at(span, format!("`top_k` with k = {k} needs at least {k} classes, found {classes}"), "k too large"));
                    }
                    (MetricKind::TopK { k }, input, target)
                }
                "mae" => {
                    let b = bind(f, span, PAIR, None, args)?;
                    let (input, target) = (self.operand(&b, "input")?, self.operand(&b, "target")?);
                    self.same_shape(f, &b, input, target, true)?;
                    (MetricKind::Mae, input, target)
                }
                l if LOSSES.contains(&l) => {
                    let (kind, input, target, reduction) = self.loss_call(l, span, args)?;
                    let kind = match (l, kind) {
                        ("mse", LossKind::Mse) if reduction == Reduction::Mean => MetricKind::Mse,
                        (_, kind) => MetricKind::Loss { kind, reduction },
                    };
                    (kind, input, target)
                }
                other => {
                    let mut all: Vec<&str> = METRICS.to_vec();
                    all.extend(LOSSES.iter().filter(|l| !METRICS.contains(l)));
                    return Err(Diagnostic::at(callee.span, format!("unknown metric `{other}`"), "not a metric")
                        .with_note(format!("metrics: {}", all.join(", "))));
                }
            };
            let key = format!("eval_{}", m.name.as_ref().map_or(f.as_str(), |n| n.name.as_str()));
            if key == "eval_loss" {
                let s = m.name.as_ref().map_or(callee.span, |n| n.span);
                return Err(Diagnostic::at(s, "the metric key `eval_loss` is reserved for the loss", "reserved name")
                    .with_note("name the metric, e.g. `metrics my_loss = ...`"));
            }
            if let Some(prev) = out.iter().find(|p| p.key == key) {
                let s = m.name.as_ref().map_or(callee.span, |n| n.span);
                return Err(Diagnostic::at(s, format!("metric `{key}` is defined twice"), "same key again")
                    .with_label(prev.span, "first defined here")
                    .with_note(format!("name one of them: `metrics other_{f} = {f}(...)`")));
            }
            out.push(Metric { key, kind, input, target, span });
        }
        Ok(out)
    }

    fn accuracy_shapes(&mut self, f: &str, b: &Bound<'_>, input: NodeId, target: NodeId) -> Result<(), Diagnostic> {
        let (ti, tt) = (self.ty(input), self.ty(target));
        // Binary form: `[B]` scores (or probabilities) against `[B]` targets.
        if ti.shape.len() == 1 || (ti.shape.len() == 2 && ti.seq().is_some() && tt.shape == ti.shape) {
            if ti.dtype != Dtype::F32 || tt.shape != ti.shape {
                return Err(Diagnostic::at(b.span_of("target"), format!("`{f}` on {ti} predictions needs targets of the same shape, found {tt}"), format!("this is {tt}"))
                    .with_label(self.span(input), format!("predictions are {ti}")));
            }
            return Ok(());
        }
        self.classes_check(f, b, input, target, -100).map(|_| ())
    }
}


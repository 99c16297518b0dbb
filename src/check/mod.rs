//! The checker: names, arguments, types and shapes, against the real data → a typed [`Job`].
//!
//! Order matters only where facts flow: model inputs are declared first (their dtypes decide
//! how data columns parse), then the data is loaded (vocabularies and class counts become
//! `.vocab` / `.classes`), then layers, values, loss and metrics are typed. The optimizer,
//! schedule and train items are independent and report their errors alongside.

mod args;
mod data_bind;
pub mod model;
mod objective;
mod settings;
mod values;

pub use model::*;
pub use values::{MAX_PARAMS, broadcast};

use crate::data::{Dtype, Values as DataValues};
use crate::diag::{Diagnostic, SourceMap, Span};
use crate::syntax::{self, ast};
use data_bind::DeclaredInput;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Reads, parses and checks a `.train` file (loading its data), or returns every diagnostic.
pub fn check_file(path: &Path, sources: &mut SourceMap) -> Result<Job, Vec<Diagnostic>> {
    let display = path.display().to_string();
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return Err(vec![Diagnostic::error(format!("cannot read `{display}`: {e}"))]),
    };
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let lossy = String::from_utf8_lossy(e.as_bytes()).into_owned();
            // Point at the first bad byte in the lossy text (same offset: all before it is valid).
            let file = sources.add(display, lossy);
            return Err(vec![Diagnostic::at(Span::new(file, at, at + 1), "the file is not valid UTF-8", "invalid byte here")
                .with_note(".train files are UTF-8 text")]);
        }
    };
    let file = sources.add(display, text);
    let src = sources.text(file).to_string();
    let ast = syntax::parse_file(file, &src)?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    check_ast(&ast, path, &base, sources)
}

/// Checks a parsed file. `base` is the directory paths in the file are relative to.
pub fn check_ast(file: &ast::File, path: &Path, base: &Path, sources: &mut SourceMap) -> Result<Job, Vec<Diagnostic>> {
    let mut errors = Vec::new();
    let whole = Span::new(file.span.file, 0, 0);
    let missing = |item: &str, example: &str| {
        Diagnostic::at(whole, format!("the file has no `{item}` item"), format!("the `{item}` item is required"))
            .with_note(format!("add one, e.g. `{example}`"))
    };
    if file.data.is_none() {
        errors.push(missing("data", "data { train = csv(\"train.csv\", x = rest, y = \"label\") }"));
    }
    if file.model.is_none() {
        errors.push(missing("model", "model { input x: f32[4] ... }"));
    }
    if file.loss.is_none() {
        errors.push(missing("loss", "loss cross_entropy(logits, y)"));
    }
    if file.optimizer.is_none() {
        errors.push(missing("optimizer", "optimizer sgd(lr = 0.1)"));
    }
    let optimizer = file.optimizer.as_ref().map(settings::optimizer).transpose().map_err(|d| errors.push(d)).ok().flatten();
    let schedule = settings::schedule(file.schedule.as_ref()).map_err(|d| errors.push(d)).ok();
    let train_cfg = settings::train(file.train.as_ref()).map_err(|d| errors.push(d)).ok();
    let (Some(data), Some(model), Some(loss)) = (&file.data, &file.model, &file.loss) else {
        return Err(errors);
    };
    let model_job = check_model(data, model, loss, file.metrics.as_ref(), base, sources);
    let (inputs, layers, nodes, loss_node, metrics, bound) = match model_job {
        Ok(parts) => parts,
        Err(d) => {
            errors.insert(0, d);
            return Err(errors);
        }
    };
    match (optimizer, schedule, train_cfg) {
        (Some(optimizer), Some(schedule), Some(train)) if errors.is_empty() => Ok(Job {
            path: PathBuf::from(path),
            inputs,
            layers,
            nodes,
            loss: loss_node,
            metrics,
            optimizer,
            schedule,
            train,
            data: bound,
        }),
        _ => Err(errors),
    }
}

type ModelParts = (Vec<Input>, Vec<Layer>, Vec<Node>, NodeId, Vec<Metric>, BoundData);

fn check_model(
    data: &ast::Block,
    model: &ast::Model,
    loss: &ast::Single,
    metrics: Option<&ast::Metrics>,
    base: &Path,
    sources: &mut SourceMap,
) -> Result<ModelParts, Diagnostic> {
    // Inputs: dtypes and dims.
    let mut declared = Vec::new();
    for s in &model.stmts {
        if let ast::ModelStmt::Input(d) = s {
            let dtype = match d.dtype.name.as_str() {
                "f32" => Dtype::F32,
                "i64" => Dtype::I64,
                other => {
                    return Err(Diagnostic::at(d.dtype.span, format!("unknown dtype `{other}`"), "expected `f32` or `i64`"));
                }
            };
            for dim in &d.dims {
                if let ast::DimDecl::Fixed(0, s) = dim {
                    return Err(Diagnostic::at(*s, "a dimension must be at least 1", "zero-sized axis"));
                }
                if let ast::DimDecl::Fixed(n, s) = dim
                    && *n > i32::MAX as u64 {
                        return Err(Diagnostic::at(*s, format!("dimension {n} is too large"), "expected a size below 2^31"));
                    }
            }
            let named = d.dims.iter().filter(|x| matches!(x, ast::DimDecl::Named(_))).count();
            if named > 1 || (named == 1 && d.dims.len() > 1) {
                return Err(Diagnostic::at(d.span, "an input may have at most one named (sequence) dimension, alone", "unsupported shape")
                    .with_note("variable-length inputs are declared `i64[seq]`"));
            }
            declared.push(DeclaredInput { decl: d, dtype });
        }
    }
    if declared.is_empty() {
        return Err(Diagnostic::at(model.keyword, "the model declares no inputs", "expected `input NAME: DTYPE[DIMS]` lines"));
    }
    let loaded = data_bind::load(data, &declared, base, sources)?;
    // Inputs in declaration order, each with its field index.
    let mut inputs = Vec::new();
    let mut facts = values::DataFacts { vocab: HashMap::new(), classes: HashMap::new(), pretrained: load_pretrained(model, base, sources)? };
    for d in &declared {
        let field = loaded.train.fields.iter().position(|f| f.name == d.decl.name.name).expect("binding checked");
        let mut shape = vec![Dim::Batch];
        for dim in &d.decl.dims {
            shape.push(match dim {
                ast::DimDecl::Fixed(n, _) => Dim::Fixed(*n as usize),
                ast::DimDecl::Named(id) => Dim::Seq { name: id.name.clone(), offset: 0 },
            });
        }
        let f = &loaded.train.fields[field];
        if let Some(v) = &f.vocab {
            facts.vocab.insert(d.decl.name.name.clone(), v.len());
        }
        if let Some(c) = &f.classes {
            facts.classes.insert(d.decl.name.name.clone(), c.len());
        }
        inputs.push(Input { name: d.decl.name.name.clone(), ty: Ty { dtype: d.dtype, shape }, span: d.decl.span, field });
    }
    check_shared_dims(&inputs, &loaded, sources)?;
    let mut vals = values::Values::new(&model.stmts, inputs, &facts)?;
    let (loss_node, metric_list) = {
        let mut obj = objective::Objective { values: &mut vals, train: &loaded.train, eval: loaded.eval.as_ref(), sources };
        let l = obj.loss(&loss.value)?;
        let m = match metrics {
            Some(m) => obj.metrics(m)?,
            None => Vec::new(),
        };
        (l, m)
    };
    vals.check_remaining()?;
    let mut roots = vec![loss_node];
    roots.extend(metric_list.iter().flat_map(|m| [m.input, m.target]));
    if let Some(d) = vals.first_unused(&roots) {
        return Err(d);
    }
    check_sequence_lengths(&vals, &loaded, sources)?;
    let values::Values { inputs, layers, nodes, .. } = vals;
    let (nodes, remap) = compact(nodes, &roots);
    let metric_list = metric_list.into_iter().map(|m| Metric { input: remap[m.input], target: remap[m.target], ..m }).collect();
    Ok((inputs, layers, nodes, remap[loss_node], metric_list, BoundData { train: loaded.train, eval: loaded.eval }))
}

/// Loads every `embedding(…, from = "file")` of the model: a `.npy` array or the tensor
/// `weight` of a `.safetensors` file, `[num, dim]` f32 (f64 converted), through the same
/// validated loaders as data sources.
fn load_pretrained(model: &ast::Model, base: &Path, sources: &mut SourceMap) -> Result<HashMap<Span, values::Pretrained>, Diagnostic> {
    use crate::data::{FieldKind, FieldSpec, Format, SourceSpec};
    let mut out = HashMap::new();
    for s in &model.stmts {
        let ast::ModelStmt::Assign(b) = s else { continue };
        let ast::ExprKind::Call { callee, args } = &b.value.kind else { continue };
        if !matches!(&callee.kind, ast::ExprKind::Name(n) if n == "embedding") {
            continue;
        }
        for a in args {
            let (Some(name), ast::ExprKind::Str(file)) = (&a.name, &a.value.kind) else { continue };
            if name.name != "from" {
                continue;
            }
            let span = a.value.span;
            let path = base.join(file);
            let spec = if file.ends_with(".safetensors") {
                SourceSpec {
                    format: Format::Safetensors,
                    path: Some((path, span)),
                    span,
                    fields: vec![FieldSpec { name: "weight".into(), name_span: span, dtype: Dtype::F32, kind: FieldKind::SafetensorsTensor { tensor: "weight".into(), span } }],
                }
            } else if file.ends_with(".npy") {
                SourceSpec {
                    format: Format::Npy,
                    path: None,
                    span,
                    fields: vec![FieldSpec { name: "weight".into(), name_span: span, dtype: Dtype::F32, kind: FieldKind::NpyFile { path, span } }],
                }
            } else {
                return Err(Diagnostic::at(span, "pretrained rows come from a `.npy` or `.safetensors` file", "unknown file kind"));
            };
            let table = crate::data::load(&spec, None, sources)?;
            match &table.fields[0].values {
                DataValues::F32 { data, shape } if shape.len() == 1 => {
                    out.insert(span, (data.clone(), table.rows, shape[0]));
                }
                DataValues::F32 { shape, .. } => {
                    return Err(Diagnostic::at(span, format!("pretrained rows must form a matrix [num, dim], found {} axes", shape.len() + 1), "not a matrix"));
                }
                _ => unreachable!("f32 requested"),
            }
        }
    }
    Ok(out)
}

/// Keeps only the nodes the roots use (values typed for diagnostics alone are dropped),
/// preserving order; returns the new nodes and old id → new id.
fn compact(nodes: Vec<Node>, roots: &[NodeId]) -> (Vec<Node>, Vec<NodeId>) {
    let mut live = vec![false; nodes.len()];
    let mut stack = roots.to_vec();
    while let Some(n) = stack.pop() {
        if !std::mem::replace(&mut live[n], true) {
            stack.extend(nodes[n].op.operands());
        }
    }
    let mut remap = vec![usize::MAX; nodes.len()];
    let mut kept = Vec::new();
    for (i, mut node) in nodes.into_iter().enumerate() {
        if !live[i] {
            continue;
        }
        node.op = remap_operands(node.op, &remap);
        remap[i] = kept.len();
        kept.push(node);
    }
    (kept, remap)
}

fn remap_operands(op: Op, r: &[NodeId]) -> Op {
    match op {
        Op::Input(_) | Op::Const(_) => op,
        Op::Apply { layer, x, h0, c0 } => Op::Apply { layer, x: r[x], h0: h0.map(|h| r[h]), c0: c0.map(|c| r[c]) },
        Op::Unary(u, x) => Op::Unary(u, r[x]),
        Op::Dropout { x, p } => Op::Dropout { x: r[x], p },
        Op::Softmax { x, axis } => Op::Softmax { x: r[x], axis },
        Op::LogSoftmax { x, axis } => Op::LogSoftmax { x: r[x], axis },
        Op::Last(x) => Op::Last(r[x]),
        Op::Mean(x) => Op::Mean(r[x]),
        Op::Flatten(x) => Op::Flatten(r[x]),
        Op::Squeeze(x) => Op::Squeeze(r[x]),
        Op::Cat { a, b, axis } => Op::Cat { a: r[a], b: r[b], axis },
        Op::Arith(k, a, b) => Op::Arith(k, r[a], r[b]),
        Op::MatMul(a, b) => Op::MatMul(r[a], r[b]),
        Op::SliceSeq { x, start, end_offset } => Op::SliceSeq { x: r[x], start, end_offset },
        Op::Loss { kind, input, target, reduction } => {
            let kind = match kind {
                LossKind::BceWithLogits { pos_weight } => LossKind::BceWithLogits { pos_weight: pos_weight.map(|w| r[w]) },
                k => k,
            };
            Op::Loss { kind, input: r[input], target: r[target], reduction }
        }
    }
}

/// Row lengths of a sequence field.
fn seq_lengths(values: &DataValues) -> Option<Vec<usize>> {
    match values {
        DataValues::Seq { offsets, .. } => Some(offsets.windows(2).map(|w| w[1] - w[0]).collect()),
        _ => None,
    }
}

/// Two inputs with the same named dimension must agree row by row.
fn check_shared_dims(inputs: &[Input], loaded: &data_bind::Loaded, sources: &mut SourceMap) -> Result<(), Diagnostic> {
    for (i, a) in inputs.iter().enumerate() {
        for b in &inputs[i + 1..] {
            let (Some((na, _)), Some((nb, _))) = (a.ty.seq(), b.ty.seq()) else { continue };
            if na != nb {
                continue;
            }
            for table in [Some(&loaded.train), loaded.eval.as_ref()].into_iter().flatten() {
                let (fa, fb) = (&table.fields[a.field], &table.fields[b.field]);
                let (Some(la), Some(lb)) = (seq_lengths(&fa.values), seq_lengths(&fb.values)) else { continue };
                if let Some(row) = la.iter().zip(&lb).position(|(x, y)| x != y) {
                    return Err(crate::data::row_error(
                        table,
                        fb,
                        row,
                        format!("`{}` and `{}` share the dimension `{na}` but row {} has {} and {} tokens", a.name, b.name, row + 1, la[row], lb[row]),
                        format!("expected {} tokens, like `{}`", la[row], a.name),
                        sources,
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A row of length 0 must not reach a recurrent layer, `last` or `mean`.
fn check_sequence_lengths(vals: &values::Values, loaded: &data_bind::Loaded, sources: &mut SourceMap) -> Result<(), Diagnostic> {
    for node in &vals.nodes {
        let x = match &node.op {
            Op::Last(x) | Op::Mean(x) => *x,
            Op::Apply { layer, x, .. } if matches!(vals.layers[*layer].kind, LayerKind::Recurrent { .. }) => *x,
            _ => continue,
        };
        let Some((name, offset)) = vals.nodes[x].ty.seq() else { continue };
        let Some(input) = vals.inputs.iter().find(|i| i.ty.seq().map(|s| s.0) == Some(name)) else { continue };
        for table in [Some(&loaded.train), loaded.eval.as_ref()].into_iter().flatten() {
            let field = &table.fields[input.field];
            let Some(lens) = seq_lengths(&field.values) else { continue };
            if let Some(row) = lens.iter().position(|&l| l as i64 + offset < 1) {
                let what = match &node.op {
                    Op::Last(_) => "`last`",
                    Op::Mean(_) => "`mean`",
                    _ => "a recurrent layer",
                };
                let d = crate::data::row_error(
                    table,
                    field,
                    row,
                    format!("row {} of `{}` has {} tokens, leaving an empty sequence for {what}", row + 1, input.name, lens[row]),
                    format!("expected at least {} tokens", 1 - offset),
                    sources,
                );
                return Err(d.with_label(node.span, "needs at least one step per row"));
            }
        }
    }
    Ok(())
}

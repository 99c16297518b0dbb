//! The `data` item: sources → [`SourceSpec`]s, loading, and binding fields to model inputs.

use super::args::{Const, Typed, eval_const};
use crate::data::{self, Dtype, FieldKind, FieldSpec, Format, SourceSpec, Table, TokenUnit, TokenizerOpts, Values};
use crate::diag::{Diagnostic, SourceMap, Span};
use crate::syntax::ast::{Arg, Block, Expr, ExprKind, InputDecl};
use std::path::Path;

/// A declared model input before binding: name, dtype, per-example dims.
pub(super) struct DeclaredInput<'a> {
    pub decl: &'a InputDecl,
    pub dtype: Dtype,
}

/// Where each field of a loaded source was declared.
pub(super) struct Loaded {
    pub train: Table,
    pub eval: Option<Table>,
}

fn no_field(e: &Expr) -> Result<Const, Diagnostic> {
    Err(Diagnostic::at(e.span, "a field is not allowed here", "expected a constant"))
}

fn const_str(callee: &str, name: &str, e: &Expr) -> Result<String, Diagnostic> {
    let value = eval_const(e, &mut no_field)?;
    Typed { callee, name, span: e.span, value }.str()
}

/// Splits a source call into its leading path argument and keyword fields.
fn split_args<'e>(callee: &str, call_span: Span, args: &'e [Arg], wants_path: bool) -> Result<(Option<&'e Expr>, Vec<&'e Arg>), Diagnostic> {
    let mut path = None;
    let mut fields = Vec::new();
    for (i, a) in args.iter().enumerate() {
        match (&a.name, i) {
            (None, 0) if wants_path => path = Some(&a.value),
            (Some(n), _) if n.name == "path" && wants_path && path.is_none() => path = Some(&a.value),
            (None, _) => {
                let expected = if wants_path { "a path first, then `FIELD = ...` bindings" } else { "`FIELD = \"file.npy\"` bindings" };
                return Err(Diagnostic::at(a.value.span, format!("unexpected positional argument to `{callee}`"), format!("expected {expected}")));
            }
            (Some(_), _) => fields.push(a),
        }
    }
    if wants_path && path.is_none() {
        return Err(Diagnostic::at(call_span, format!("`{callee}` needs the path of its file"), "missing path")
            .with_note(format!("expected `{callee}(\"data/file\", FIELD = ...)`")));
    }
    if fields.is_empty() {
        return Err(Diagnostic::at(call_span, format!("`{callee}` binds no fields"), "expected at least one `FIELD = ...`"));
    }
    Ok((path, fields))
}

fn encoder(value: &Expr) -> Result<FieldKind, Diagnostic> {
    let ExprKind::Call { callee, args } = &value.kind else {
        return Err(Diagnostic::at(value.span, format!("expected an encoder, found {}", value.describe()), "expected an encoder call")
            .with_note("encoders: chars, words, label, number, numbers"));
    };
    let ExprKind::Name(name) = &callee.kind else {
        return Err(Diagnostic::at(callee.span, "expected an encoder name", "not a name"));
    };
    use super::args::{Kind, Param, bind, nullable, opt, req};
    const TOKENS: &[Param] = &[
        req("field", Kind::Str),
        opt("min_freq", Kind::Int),
        opt("bos", Kind::Bool),
        opt("eos", Kind::Bool),
        nullable("max_len", Kind::Int),
    ];
    const ONE: &[Param] = &[req("field", Kind::Str)];
    match name.as_str() {
        "chars" | "words" => {
            let b = bind(name, value.span, TOKENS, None, args)?;
            let field = const_str(name, "field", b.expr("field").expect("required"))?;
            let mut opts = TokenizerOpts::default();
            let typed = |p: &'static str| -> Result<Option<Typed<'_>>, Diagnostic> {
                match b.expr(p) {
                    None => Ok(None),
                    Some(e) => Ok(Some(Typed { callee: name, name: p, span: e.span, value: eval_const(e, &mut no_field)? })),
                }
            };
            if let Some(t) = typed("min_freq")? {
                let v = t.int()?;
                if v < 1 {
                    return Err(t.out_of_range("a positive integer"));
                }
                opts.min_freq = v as u64;
            }
            if let Some(t) = typed("bos")? {
                opts.bos = t.bool()?;
            }
            if let Some(t) = typed("eos")? {
                opts.eos = t.bool()?;
            }
            if let Some(t) = typed("max_len")?
                && !t.is_none() {
                    let v = t.int()?;
                    if v < 1 || v as usize > data::MAX_SEQ_LEN {
                        return Err(t.out_of_range(&format!("an integer in [1, {}]", data::MAX_SEQ_LEN)));
                    }
                    opts.max_len = Some(v as usize);
                }
            let unit = if name == "chars" { TokenUnit::Chars } else { TokenUnit::Words };
            let span = b.span_of("field");
            Ok(FieldKind::Tokens { field, span, unit, opts })
        }
        "label" | "number" | "numbers" => {
            let b = bind(name, value.span, ONE, None, args)?;
            let e = b.expr("field").expect("required");
            let field = const_str(name, "field", e)?;
            let span = e.span;
            Ok(match name.as_str() {
                "label" => FieldKind::Label { field, span },
                "number" => FieldKind::Number { field, span },
                _ => FieldKind::Numbers { field, span },
            })
        }
        other => Err(Diagnostic::at(callee.span, format!("unknown encoder `{other}`"), "not an encoder")
            .with_note("expected one of: chars, words, label, number, numbers")),
    }
}

fn csv_columns(value: &Expr) -> Result<FieldKind, Diagnostic> {
    match &value.kind {
        ExprKind::Rest => Ok(FieldKind::CsvRest { span: value.span }),
        ExprKind::Str(s) => Ok(FieldKind::CsvColumn { column: s.clone(), span: value.span }),
        ExprKind::Tuple(items) if !items.is_empty() => {
            let mut columns = Vec::new();
            for i in items {
                match &i.kind {
                    ExprKind::Str(s) => columns.push((s.clone(), i.span)),
                    _ => {
                        return Err(Diagnostic::at(i.span, format!("expected a column name, found {}", i.describe()), "expected a string"));
                    }
                }
            }
            Ok(FieldKind::CsvColumns { columns })
        }
        _ => Err(Diagnostic::at(
            value.span,
            format!("expected a column name, a tuple of column names, or `rest`, found {}", value.describe()),
            "expected columns",
        )),
    }
}

/// Resolves one `train = ...` / `eval = ...` source.
fn source_spec(e: &Expr, inputs: &[DeclaredInput], base: &Path) -> Result<SourceSpec, Diagnostic> {
    let ExprKind::Call { callee, args } = &e.kind else {
        return Err(Diagnostic::at(e.span, format!("expected a data source, found {}", e.describe()), "expected e.g. `csv(\"file.csv\", x = rest, y = \"label\")`"));
    };
    let ExprKind::Name(name) = &callee.kind else {
        return Err(Diagnostic::at(callee.span, "expected a data source name", "not a name"));
    };
    let format = match name.as_str() {
        "csv" => Format::Csv,
        "jsonl" => Format::Jsonl,
        "npy" => Format::Npy,
        "safetensors" => Format::Safetensors,
        other => {
            return Err(Diagnostic::at(callee.span, format!("unknown data source `{other}`"), "not a data source")
                .with_note("expected one of: csv, jsonl, npy, safetensors"));
        }
    };
    let (path_expr, field_args) = split_args(name, e.span, args, format != Format::Npy)?;
    let path = match path_expr {
        Some(p) => Some((base.join(const_str(name, "path", p)?), p.span)),
        None => None,
    };
    let mut fields: Vec<FieldSpec> = Vec::new();
    for a in field_args {
        let fname = a.name.as_ref().expect("keyword");
        if let Some(prev) = fields.iter().find(|f| f.name == fname.name) {
            return Err(Diagnostic::at(fname.span, format!("field `{}` is bound twice", fname.name), "bound again here")
                .with_label(prev.name_span, "first bound here"));
        }
        let Some(input) = inputs.iter().find(|i| i.decl.name.name == fname.name) else {
            return Err(Diagnostic::at(fname.span, format!("data field `{}` is not consumed by any model input", fname.name), "no `input` of this name")
                .with_note(format!("declare it in the model (`input {}: ...`) or remove the binding", fname.name)));
        };
        let kind = match format {
            Format::Csv => csv_columns(&a.value)?,
            Format::Jsonl => encoder(&a.value)?,
            Format::Npy => FieldKind::NpyFile { path: base.join(const_str(name, &fname.name, &a.value)?), span: a.value.span },
            Format::Safetensors => FieldKind::SafetensorsTensor { tensor: const_str(name, &fname.name, &a.value)?, span: a.value.span },
        };
        fields.push(FieldSpec { name: fname.name.clone(), name_span: fname.span, dtype: input.dtype, kind });
    }
    Ok(SourceSpec { format, path, span: e.span, fields })
}

/// Encoder arguments must agree between train and eval (spans aside).
fn same_encoder(a: &FieldKind, b: &FieldKind) -> bool {
    match (a, b) {
        (FieldKind::Tokens { field: f1, unit: u1, opts: o1, .. }, FieldKind::Tokens { field: f2, unit: u2, opts: o2, .. }) => {
            f1 == f2 && u1 == u2 && o1 == o2
        }
        (FieldKind::Label { .. }, FieldKind::Label { .. })
        | (FieldKind::Number { .. }, FieldKind::Number { .. })
        | (FieldKind::Numbers { .. }, FieldKind::Numbers { .. }) => true,
        (FieldKind::Tokens { .. } | FieldKind::Label { .. } | FieldKind::Number { .. } | FieldKind::Numbers { .. }, _) => false,
        _ => true,
    }
}

fn kind_span(k: &FieldKind) -> Option<Span> {
    match k {
        FieldKind::CsvColumn { span, .. }
        | FieldKind::CsvRest { span }
        | FieldKind::Tokens { span, .. }
        | FieldKind::Label { span, .. }
        | FieldKind::Number { span, .. }
        | FieldKind::Numbers { span, .. }
        | FieldKind::NpyFile { span, .. }
        | FieldKind::SafetensorsTensor { span, .. } => Some(*span),
        FieldKind::CsvColumns { columns } => columns.first().map(|c| c.1),
    }
}

/// Reads the data item, loads the sources, checks every input is bound with the declared
/// shape. Returns the tables with fields in input order of the train source.
pub(super) fn load(block: &Block, inputs: &[DeclaredInput], base: &Path, sources: &mut SourceMap) -> Result<Loaded, Diagnostic> {
    let mut train = None;
    let mut eval = None;
    for b in &block.bindings {
        let slot = match b.name.name.as_str() {
            "train" => &mut train,
            "eval" => &mut eval,
            other => {
                return Err(Diagnostic::at(b.name.span, format!("unknown data source key `{other}`"), "expected `train` or `eval`"));
            }
        };
        if let Some((prev, _)) = slot {
            return Err(Diagnostic::at(b.name.span, format!("`{}` source is declared twice", b.name.name), "declared again here")
                .with_label(*prev, "first declared here"));
        }
        *slot = Some((b.name.span, &b.value));
    }
    let Some((_, train_expr)) = train else {
        return Err(Diagnostic::at(block.keyword, "the data item has no `train` source", "expected `train = ...` in here"));
    };
    let train_spec = source_spec(train_expr, inputs, base)?;
    for i in inputs {
        if !train_spec.fields.iter().any(|f| f.name == i.decl.name.name) {
            return Err(Diagnostic::at(i.decl.name.span, format!("input `{}` is not bound by the train source", i.decl.name.name), "no data for this input")
                .with_label(train_spec.span, "train source declared here")
                .with_note(format!("bind it, e.g. `{} = ...` in the source call", i.decl.name.name)));
        }
    }
    let eval_spec = match eval {
        None => None,
        Some((_, e)) => {
            let mut spec = source_spec(e, inputs, base)?;
            let mut ordered = Vec::new();
            for tf in &train_spec.fields {
                let Some(pos) = spec.fields.iter().position(|f| f.name == tf.name) else {
                    return Err(Diagnostic::at(spec.span, format!("the eval source does not bind `{}`", tf.name), format!("expected a `{}` binding", tf.name))
                        .with_label(tf.name_span, "bound by the train source here"));
                };
                let ef = spec.fields.remove(pos);
                if !same_encoder(&tf.kind, &ef.kind) {
                    let span = kind_span(&ef.kind).unwrap_or(ef.name_span);
                    let mut d = Diagnostic::at(span, format!("the eval encoder of `{}` differs from its train encoder", tf.name), "differs from train")
                        .with_note("the eval binding must use the same encoder and arguments, so ids mean the same thing");
                    if let Some(ts) = kind_span(&tf.kind) {
                        d = d.with_label(ts, "train encoder here");
                    }
                    return Err(d);
                }
                ordered.push(ef);
            }
            spec.fields = ordered;
            Some(spec)
        }
    };
    let train_table = data::load(&train_spec, None, sources)?;
    let eval_table = match &eval_spec {
        Some(spec) => Some(data::load(spec, Some(&train_table), sources)?),
        None => None,
    };
    // Declared shapes against what the data holds.
    for (fi, f) in train_table.fields.iter().enumerate() {
        let spec = &train_spec.fields[fi];
        let Some(input) = inputs.iter().find(|i| i.decl.name.name == f.name) else { continue };
        check_shape(input, f, spec)?;
    }
    Ok(Loaded { train: train_table, eval: eval_table })
}

fn shape_text(dims: &[usize]) -> String {
    let d: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("[{}]", d.join(", "))
}

fn check_shape(input: &DeclaredInput, field: &data::Field, spec: &FieldSpec) -> Result<(), Diagnostic> {
    use crate::syntax::ast::DimDecl;
    let decl = input.decl;
    let declared = format!("{}{}", input.dtype.name(), dims_text(decl));
    let mismatch = |holds: String| {
        Diagnostic::at(decl.span, format!("input `{}` is declared {declared} but its data holds {holds}", decl.name.name), format!("declared {declared}"))
            .with_label(spec.name_span, "bound here")
    };
    match &field.values {
        Values::Seq { .. } => match decl.dims.as_slice() {
            [DimDecl::Named(_)] => Ok(()),
            _ => Err(mismatch("a variable-length token sequence per row".into()).with_note("declare it `i64[seq]`, with a name for the sequence length")),
        },
        Values::F32 { shape, .. } | Values::I64 { shape, .. } => {
            let mut fixed = Vec::new();
            for d in &decl.dims {
                match d {
                    DimDecl::Fixed(n, _) => fixed.push(*n as usize),
                    DimDecl::Named(id) => {
                        return Err(mismatch(format!("{} per row", shape_text(shape)))
                            .with_note(format!("`{}` names a variable-length axis, but this data has a fixed shape", id.name)));
                    }
                }
            }
            if &fixed != shape {
                let holds = if shape.is_empty() { "one value per row".to_string() } else { format!("{} values per row", shape_text(shape)) };
                return Err(mismatch(holds));
            }
            Ok(())
        }
    }
}

pub(super) fn dims_text(decl: &InputDecl) -> String {
    use crate::syntax::ast::DimDecl;
    if decl.dims.is_empty() {
        return String::new();
    }
    let d: Vec<String> = decl
        .dims
        .iter()
        .map(|d| match d {
            DimDecl::Fixed(n, _) => n.to_string(),
            DimDecl::Named(id) => id.name.clone(),
        })
        .collect();
    format!("[{}]", d.join(", "))
}

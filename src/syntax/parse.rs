//! pest pairs → [`ast::File`], and pest errors → located diagnostics.

use super::ast::*;
use crate::diag::{Diagnostic, FileId, Span};
use pest::Parser;
use pest::iterators::Pair;
use pest::pratt_parser::{Assoc, Op, PrattParser};
use std::sync::OnceLock;

#[derive(pest_derive::Parser)]
#[grammar = "../grammar/kpc.pest"]
struct TrainParser;

/// Longest source we accept; past this a file is surely not a hand-written job.
const MAX_SOURCE_BYTES: usize = 4 << 20;
/// Deepest expression nesting; guards the recursive descent from a stack overflow.
const MAX_NESTING: usize = 64;
/// Most operators in one expression; a longer chain would make the tree too deep to walk.
const MAX_OPERATORS: usize = 1000;

type PResult<T> = Result<T, Diagnostic>;

/// Parses one `.train` file registered as `file` with text `src`.
pub fn parse_file(file: FileId, src: &str) -> Result<File, Vec<Diagnostic>> {
    let whole = Span::new(file, 0, src.len());
    if src.len() > MAX_SOURCE_BYTES {
        return Err(vec![
            Diagnostic::error(format!(
                "the file is {} bytes long; a .train file may be at most {MAX_SOURCE_BYTES} bytes",
                src.len()
            ))
            .with_primary(Span::new(file, 0, 0), "file starts here"),
        ]);
    }
    if let Some(d) = nesting_too_deep(file, src) {
        return Err(vec![d]);
    }
    let pairs = TrainParser::parse(Rule::file, src).map_err(|e| vec![syntax_error(file, src, e)])?;
    let mut out = File { span: whole, ..File::default() };
    let mut errors = Vec::new();
    let Some(file_pair) = pairs.into_iter().next() else {
        return Ok(out);
    };
    for item in file_pair.into_inner() {
        if item.as_rule() == Rule::EOI {
            continue;
        }
        if let Err(d) = add_item(file, &mut out, item) {
            errors.push(d);
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

/// Brackets (and runs of unary minus) nested deeper than [`MAX_NESTING`] would overflow
/// the recursive parser; refuse them up front with a located error.
fn nesting_too_deep(file: FileId, src: &str) -> Option<Diagnostic> {
    let mut depth = 0usize;
    let mut minus_run = 0usize;
    let mut in_string = false;
    let mut in_comment = false;
    let mut escaped = false;
    for (i, c) in src.char_indices() {
        if in_comment {
            in_comment = c != '\n';
            continue;
        }
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') | (false, '\n') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '#' => in_comment = true,
            '"' => in_string = true,
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            '-' => minus_run += 1,
            _ => {}
        }
        if c != '-' && !c.is_whitespace() {
            minus_run = 0;
        }
        if depth + minus_run > MAX_NESTING {
            return Some(Diagnostic::at(
                Span::new(file, i, i + c.len_utf8()),
                format!("expressions nest deeper than {MAX_NESTING} levels"),
                "too deep",
            ));
        }
    }
    None
}

fn span_of(file: FileId, p: &Pair<Rule>) -> Span {
    let s = p.as_span();
    Span::new(file, s.start(), s.end())
}

fn ident(file: FileId, p: Pair<Rule>) -> Ident {
    Ident { name: p.as_str().to_string(), span: span_of(file, &p) }
}

fn add_item(file: FileId, out: &mut File, item: Pair<Rule>) -> PResult<()> {
    let rule = item.as_rule();
    let mut inner = item.into_inner().filter(|p| p.as_rule() != Rule::rbrace);
    let Some(kw) = inner.next() else { return Ok(()) };
    let keyword = span_of(file, &kw);
    let word = kw.as_str().to_string();
    let duplicate = |prev: Span| {
        Diagnostic::at(keyword, format!("the `{word}` item appears twice"), "second `".to_string() + &word + "` item")
            .with_label(prev, "first defined here")
            .with_note("each item may appear at most once in a file")
    };
    match rule {
        Rule::data_item | Rule::train_item => {
            let bindings = inner.map(|b| binding(file, b)).collect::<PResult<Vec<_>>>()?;
            let slot = if rule == Rule::data_item { &mut out.data } else { &mut out.train };
            if let Some(prev) = slot {
                return Err(duplicate(prev.keyword));
            }
            *slot = Some(Block { keyword, bindings });
        }
        Rule::model_item => {
            let mut stmts = Vec::new();
            for s in inner {
                stmts.push(match s.as_rule() {
                    Rule::input_decl => ModelStmt::Input(input_decl(file, s)?),
                    _ => {
                        let b = binding(file, s)?;
                        if b.name.name == "input" {
                            return Err(Diagnostic::at(
                                b.name.span,
                                "`input` is a keyword at the start of a model line",
                                "expected `input NAME: DTYPE[DIMS]`",
                            ));
                        }
                        ModelStmt::Assign(b)
                    }
                });
            }
            if let Some(prev) = &out.model {
                return Err(duplicate(prev.keyword));
            }
            out.model = Some(Model { keyword, stmts });
        }
        Rule::metrics_item => {
            let mut metrics = Vec::new();
            for m in inner {
                let mut parts: Vec<Pair<Rule>> = m.into_inner().collect();
                let value = expr(file, parts.pop().expect("grammar: metric ends in expr"))?;
                let name = parts.pop().map(|p| ident(file, p));
                metrics.push(Metric { name, value });
            }
            if let Some(prev) = &out.metrics {
                return Err(duplicate(prev.keyword));
            }
            out.metrics = Some(Metrics { keyword, metrics });
        }
        Rule::loss_item | Rule::optimizer_item | Rule::schedule_item => {
            let value = expr(file, inner.next().expect("grammar: item has an expression"))?;
            let slot = match rule {
                Rule::loss_item => &mut out.loss,
                Rule::optimizer_item => &mut out.optimizer,
                _ => &mut out.schedule,
            };
            if let Some(prev) = slot {
                return Err(duplicate(prev.keyword));
            }
            *slot = Some(Single { keyword, value });
        }
        _ => {}
    }
    Ok(())
}

fn binding(file: FileId, p: Pair<Rule>) -> PResult<Binding> {
    let mut inner = p.into_inner();
    let name = ident(file, inner.next().expect("grammar: binding has a name"));
    let value = expr(file, inner.next().expect("grammar: binding has a value"))?;
    Ok(Binding { name, value })
}

fn input_decl(file: FileId, p: Pair<Rule>) -> PResult<InputDecl> {
    let span = span_of(file, &p);
    let mut inner = p.into_inner();
    inner.next(); // the `input` keyword
    let name = ident(file, inner.next().expect("grammar: input has a name"));
    let dtype = ident(file, inner.next().expect("grammar: input has a dtype"));
    let mut dims = Vec::new();
    if let Some(ds) = inner.next() {
        for d in ds.into_inner() {
            let d = d.into_inner().next().expect("grammar: dim has content");
            dims.push(match d.as_rule() {
                Rule::integer => {
                    let s = span_of(file, &d);
                    let n = d.as_str().parse::<u64>().map_err(|_| {
                        Diagnostic::at(s, "dimension is too large", "expected a size below 2^63")
                    })?;
                    DimDecl::Fixed(n, s)
                }
                _ => DimDecl::Named(ident(file, d)),
            });
        }
    }
    Ok(InputDecl { name, dtype, dims, span })
}

fn pratt() -> &'static PrattParser<Rule> {
    static PRATT: OnceLock<PrattParser<Rule>> = OnceLock::new();
    PRATT.get_or_init(|| {
        PrattParser::new()
            .op(Op::infix(Rule::pipe, Assoc::Left))
            .op(Op::infix(Rule::add, Assoc::Left) | Op::infix(Rule::sub, Assoc::Left))
            .op(Op::infix(Rule::mul, Assoc::Left) | Op::infix(Rule::div, Assoc::Left) | Op::infix(Rule::matmul, Assoc::Left))
            .op(Op::prefix(Rule::neg))
            .op(Op::postfix(Rule::call_args) | Op::postfix(Rule::slice) | Op::postfix(Rule::field))
    })
}

fn expr(file: FileId, p: Pair<Rule>) -> PResult<Expr> {
    let operators = p.clone().into_inner().filter(|t| t.as_rule() != Rule::term).count();
    if operators > MAX_OPERATORS {
        return Err(Diagnostic::at(
            span_of(file, &p),
            format!("this expression has {operators} operators; at most {MAX_OPERATORS} are allowed"),
            "too long",
        ));
    }
    // Flatten `term`s so the Pratt parser sees prefix/primary/postfix/infix tokens.
    let tokens = p.into_inner().flat_map(|t| {
        if t.as_rule() == Rule::term { t.into_inner().collect::<Vec<_>>() } else { vec![t] }
    });
    pratt()
        .map_primary(|p| primary(file, p))
        .map_prefix(|op, rhs| {
            let rhs = rhs?;
            let span = span_of(file, &op).to(rhs.span);
            Ok(Expr { kind: ExprKind::Neg(Box::new(rhs)), span })
        })
        .map_postfix(|lhs, op| postfix(file, lhs?, op))
        .map_infix(|lhs, op, rhs| {
            let (lhs, rhs) = (lhs?, rhs?);
            let span = lhs.span.to(rhs.span);
            let kind = match op.as_rule() {
                Rule::pipe => ExprKind::Pipe { lhs: Box::new(lhs), rhs: Box::new(rhs) },
                r => {
                    let op = match r {
                        Rule::add => BinOp::Add,
                        Rule::sub => BinOp::Sub,
                        Rule::mul => BinOp::Mul,
                        Rule::div => BinOp::Div,
                        _ => BinOp::MatMul,
                    };
                    ExprKind::Binary { op, lhs: Box::new(lhs), rhs: Box::new(rhs) }
                }
            };
            Ok(Expr { kind, span })
        })
        .parse(tokens)
}

fn primary(file: FileId, p: Pair<Rule>) -> PResult<Expr> {
    let span = span_of(file, &p);
    let kind = match p.as_rule() {
        Rule::number => {
            let text = p.as_str();
            let value: f64 = text
                .parse()
                .map_err(|_| Diagnostic::at(span, "malformed number", "expected a number such as 10, 0.5 or 1e-3"))?;
            if !value.is_finite() {
                return Err(Diagnostic::at(span, "number out of range", "this does not fit in a 64-bit float"));
            }
            let integer = !text.contains(['.', 'e', 'E']);
            ExprKind::Number { value, integer }
        }
        Rule::string => ExprKind::Str(unescape(file, p)?),
        Rule::true_lit => ExprKind::Bool(true),
        Rule::false_lit => ExprKind::Bool(false),
        Rule::none_lit => ExprKind::None,
        Rule::rest_lit => ExprKind::Rest,
        Rule::ident => ExprKind::Name(p.as_str().to_string()),
        Rule::paren => {
            let mut elems = Vec::new();
            let mut trailing = false;
            for e in p.into_inner() {
                if e.as_rule() == Rule::trailing_comma {
                    trailing = true;
                } else {
                    elems.push(expr(file, e)?);
                }
            }
            if elems.len() == 1 && !trailing {
                let mut inner = elems.pop().expect("one element");
                inner.span = span;
                return Ok(inner);
            }
            ExprKind::Tuple(elems)
        }
        _ => unreachable!("grammar: primary rule {:?}", p.as_rule()),
    };
    Ok(Expr { kind, span })
}

fn unescape(file: FileId, p: Pair<Rule>) -> PResult<String> {
    let inner = p.into_inner().next().expect("grammar: string has content");
    let base = inner.as_span().start();
    let mut out = String::new();
    let mut chars = inner.as_str().char_indices();
    while let Some((i, c)) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some((_, '"')) => out.push('"'),
            Some((_, '\\')) => out.push('\\'),
            Some((j, other)) => {
                return Err(Diagnostic::at(
                    Span::new(file, base + i, base + j + other.len_utf8()),
                    format!("unknown escape `\\{other}` in a string"),
                    "expected `\\\"` or `\\\\`",
                ));
            }
            None => {}
        }
    }
    Ok(out)
}

fn postfix(file: FileId, lhs: Expr, op: Pair<Rule>) -> PResult<Expr> {
    let span = lhs.span.to(span_of(file, &op));
    let kind = match op.as_rule() {
        Rule::call_args => {
            let mut args = Vec::new();
            for a in op.into_inner() {
                let mut parts: Vec<Pair<Rule>> = a.into_inner().collect();
                let value = expr(file, parts.pop().expect("grammar: arg has a value"))?;
                let name = parts.pop().map(|n| ident(file, n));
                args.push(Arg { name, value });
            }
            ExprKind::Call { callee: Box::new(lhs), args }
        }
        Rule::slice => {
            let mut inner = op.into_inner();
            let bound = |p: Option<Pair<Rule>>| -> PResult<Option<Box<Expr>>> {
                match p.and_then(|p| p.into_inner().next()) {
                    Some(e) => Ok(Some(Box::new(expr(file, e)?))),
                    None => Ok(None),
                }
            };
            let start = bound(inner.next())?;
            let end = bound(inner.next())?;
            ExprKind::Slice { target: Box::new(lhs), start, end }
        }
        _ => {
            let name = ident(file, op.into_inner().next().expect("grammar: field has a name"));
            ExprKind::Field { target: Box::new(lhs), name }
        }
    };
    Ok(Expr { kind, span })
}

/// What a rule means to a user, for "expected …" lists.
fn describe_rule(r: Rule) -> &'static str {
    match r {
        Rule::EOI => "end of file",
        Rule::data_kw | Rule::model_kw | Rule::loss_kw | Rule::metrics_kw => "an item",
        Rule::optimizer_kw | Rule::schedule_kw | Rule::train_kw => "an item",
        Rule::data_item | Rule::model_item | Rule::loss_item | Rule::metrics_item => "an item",
        Rule::optimizer_item | Rule::schedule_item | Rule::train_item => "an item",
        Rule::input_kw | Rule::input_decl => "`input`",
        Rule::binding | Rule::assign => "`NAME = VALUE`",
        Rule::ident => "a name",
        Rule::integer => "an integer",
        Rule::dim | Rule::dims => "a dimension",
        Rule::expr | Rule::term | Rule::number | Rule::string | Rule::paren => "an expression",
        Rule::true_lit | Rule::false_lit | Rule::none_lit | Rule::rest_lit | Rule::neg => "an expression",
        Rule::pipe | Rule::add | Rule::sub | Rule::mul | Rule::div | Rule::matmul => "an operator",
        Rule::call_args => "`(`",
        Rule::slice => "`[`",
        Rule::field => "`.`",
        Rule::rbrace => "`}`",
        Rule::arg => "an argument",
        Rule::metric => "a metric",
        _ => "something else",
    }
}

fn syntax_error(file: FileId, src: &str, e: pest::error::Error<Rule>) -> Diagnostic {
    use pest::error::{ErrorVariant, InputLocation};
    let pos = match e.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    };
    let found = describe_found(src, pos);
    let span = Span::new(file, pos, (pos + found.1).min(src.len()));
    let expected = match &e.variant {
        ErrorVariant::ParsingError { positives, .. } => {
            let mut names: Vec<&str> = Vec::new();
            // Ways the previous expression could have gone on are noise when something
            // else was possible here too (rustc lists them last, as "or an operator").
            let continuation = |r: &Rule| {
                matches!(r, Rule::pipe | Rule::add | Rule::sub | Rule::mul | Rule::div | Rule::matmul | Rule::call_args | Rule::slice | Rule::field | Rule::dims)
            };
            let positives: Vec<Rule> = if positives.iter().all(continuation) {
                positives.clone()
            } else {
                positives.iter().copied().filter(|r| !continuation(r)).collect()
            };
            for r in &positives {
                let d = describe_rule(*r);
                if !names.contains(&d) {
                    names.push(d);
                }
            }
            join_or(&names)
        }
        ErrorVariant::CustomError { message } => message.clone(),
    };
    let mut d = Diagnostic::at(span, format!("syntax error: expected {expected}, found {}", found.0), format!("expected {expected}"));
    let word = found.0.trim_matches('`');
    if ["true", "false", "none", "rest"].contains(&word) && expected.contains("a name") {
        d = d.with_note(format!("`{word}` is a reserved word and cannot be used as a name"));
    }
    if expected.contains("an item") {
        d = d.with_note("items are: data, model, loss, metrics, optimizer, schedule, train");
    }
    d
}

/// What stands at `pos`, for "found …", and how many bytes the caret should cover.
fn describe_found(src: &str, pos: usize) -> (String, usize) {
    let rest = src.get(pos..).unwrap_or("");
    let Some(c) = rest.chars().next() else { return ("end of file".into(), 0) };
    if c.is_alphanumeric() || c == '_' {
        let word: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.').collect();
        return (format!("`{word}`"), word.len());
    }
    if c == '"' {
        return ("a string".into(), 1);
    }
    for op in ["|>"] {
        if rest.starts_with(op) {
            return (format!("`{op}`"), op.len());
        }
    }
    if c.is_control() {
        return (format!("the character U+{:04X}", c as u32), c.len_utf8());
    }
    (format!("`{c}`"), c.len_utf8())
}

fn join_or(items: &[&str]) -> String {
    match items {
        [] => "something else".into(),
        [one] => (*one).into(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

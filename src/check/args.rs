//! Call arguments: binding positional and keyword arguments to a signature, and constant
//! evaluation of arguments that must be known at compile time.

use crate::diag::{Diagnostic, Span};
use crate::syntax::ast::{Arg, BinOp, Expr, ExprKind};

/// What a parameter accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A model value (a tensor).
    Value,
    Int,
    Float,
    Bool,
    Str,
    /// `(a, b)` of floats.
    FloatPair,
    /// A tuple of integers (a bare integer is accepted as a one-element tuple).
    IntList,
}

impl Kind {
    fn expected(self) -> &'static str {
        match self {
            Kind::Value => "a model value",
            Kind::Int => "an integer",
            Kind::Float => "a number",
            Kind::Bool => "`true` or `false`",
            Kind::Str => "a string",
            Kind::FloatPair => "a pair of numbers such as `(0.9, 0.999)`",
            Kind::IntList => "a tuple of integers such as `(10, 20)`",
        }
    }
}

/// One parameter of a signature.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub kind: Kind,
    /// `none` is accepted (the parameter is optional without a value).
    pub nullable: bool,
    /// Required parameters have no default.
    pub required: bool,
    /// PyTorch's spelling, accepted as a keyword too (`in_features` for `in`).
    pub alias: Option<&'static str>,
}

pub const fn req(name: &'static str, kind: Kind) -> Param {
    Param { name, kind, nullable: false, required: true, alias: None }
}

pub const fn opt(name: &'static str, kind: Kind) -> Param {
    Param { name, kind, nullable: false, required: false, alias: None }
}

pub const fn nullable(name: &'static str, kind: Kind) -> Param {
    Param { name, kind, nullable: true, required: false, alias: None }
}

impl Param {
    pub const fn alias(mut self, alias: &'static str) -> Param {
        self.alias = Some(alias);
        self
    }
}

/// A compile-time constant.
#[derive(Debug, Clone, PartialEq)]
pub enum Const {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    None,
    Tuple(Vec<Const>),
}

/// Arguments bound to a signature: `slots[i]` is the expression for `params[i]`, if given.
pub struct Bound<'e> {
    pub callee: String,
    pub span: Span,
    pub params: &'static [Param],
    pub slots: Vec<Option<&'e Expr>>,
}

impl<'e> Bound<'e> {
    /// The argument given for parameter `name`; `None` when omitted (or, a bug caught in
    /// debug builds, when the signature has no such parameter).
    pub fn expr(&self, name: &str) -> Option<&'e Expr> {
        let i = self.params.iter().position(|p| p.name == name);
        debug_assert!(i.is_some(), "signature of `{}` has no `{name}`", self.callee);
        i.and_then(|i| self.slots[i])
    }

    /// The span to blame for parameter `name`: its argument, or the call.
    pub fn span_of(&self, name: &str) -> Span {
        self.expr(name).map_or(self.span, |e| e.span)
    }
}

/// Binds `args` (after `implicit`, the piped value, if any) to `params`.
pub fn bind<'e>(
    callee: &str,
    span: Span,
    params: &'static [Param],
    implicit: Option<&'e Expr>,
    args: &'e [Arg],
) -> Result<Bound<'e>, Diagnostic> {
    let mut slots: Vec<Option<&'e Expr>> = vec![None; params.len()];
    let mut next = 0usize;
    if let Some(e) = implicit {
        slots[0] = Some(e);
        next = 1;
    }
    let mut seen_keyword = false;
    for arg in args {
        match &arg.name {
            None => {
                if seen_keyword {
                    return Err(Diagnostic::at(
                        arg.value.span,
                        "positional argument after a keyword argument",
                        "expected `name = value` here",
                    ));
                }
                if next >= params.len() {
                    let shown = params.len() - usize::from(implicit.is_some());
                    return Err(Diagnostic::at(
                        arg.value.span,
                        format!("too many arguments to `{callee}`"),
                        format!("`{callee}` takes at most {shown} argument{}", if shown == 1 { "" } else { "s" }),
                    )
                    .with_note(signature_note(callee, params, implicit.is_some())));
                }
                slots[next] = Some(&arg.value);
                next += 1;
            }
            Some(name) => {
                seen_keyword = true;
                let Some(i) = params.iter().position(|p| p.name == name.name || p.alias == Some(name.name.as_str())) else {
                    return Err(Diagnostic::at(
                        name.span,
                        format!("`{callee}` has no argument `{}`", name.name),
                        "unknown argument",
                    )
                    .with_note(signature_note(callee, params, implicit.is_some())));
                };
                if slots[i].is_some() {
                    return Err(Diagnostic::at(
                        name.span,
                        format!("argument `{}` of `{callee}` is given twice", params[i].name),
                        "given again here",
                    ));
                }
                slots[i] = Some(&arg.value);
            }
        }
    }
    for (p, slot) in params.iter().zip(&slots) {
        if let Some(e) = slot
            && e.kind == ExprKind::None && !p.nullable {
                return Err(Diagnostic::at(e.span, format!("argument `{}` of `{callee}` cannot be `none`", p.name), format!("expected {}", p.kind.expected())));
            }
        if p.required && slot.is_none() {
            return Err(Diagnostic::at(span, format!("missing argument `{}` of `{callee}`", p.name), format!("`{}` is required", p.name))
                .with_note(signature_note(callee, params, implicit.is_some())));
        }
    }
    Ok(Bound { callee: callee.to_string(), span, params, slots })
}

fn signature_note(callee: &str, params: &[Param], piped: bool) -> String {
    let names: Vec<&str> = params.iter().skip(usize::from(piped)).map(|p| p.name).collect();
    format!("expected `{callee}({})`", names.join(", "))
}

/// Evaluates a constant expression: literals, tuples, unary minus and arithmetic on numbers.
/// `field` resolves `t.vocab` / `y.classes`.
pub fn eval_const(e: &Expr, field: &mut dyn FnMut(&Expr) -> Result<Const, Diagnostic>) -> Result<Const, Diagnostic> {
    Ok(match &e.kind {
        ExprKind::Number { value, integer: true } if *value <= i64::MAX as f64 => Const::Int(*value as i64),
        ExprKind::Number { value, .. } => Const::Float(*value),
        ExprKind::Str(s) => Const::Str(s.clone()),
        ExprKind::Bool(b) => Const::Bool(*b),
        ExprKind::None => Const::None,
        ExprKind::Tuple(items) => Const::Tuple(items.iter().map(|i| eval_const(i, field)).collect::<Result<_, _>>()?),
        ExprKind::Neg(inner) => match eval_const(inner, field)? {
            Const::Int(i) => Const::Int(-i),
            Const::Float(f) => Const::Float(-f),
            _ => return Err(Diagnostic::at(e.span, "unary minus needs a number", "not a number")),
        },
        ExprKind::Binary { op, lhs, rhs } if *op != BinOp::MatMul => {
            let (a, b) = (eval_const(lhs, field)?, eval_const(rhs, field)?);
            match (a, b) {
                (Const::Int(x), Const::Int(y)) if *op != BinOp::Div => {
                    let r = match op {
                        BinOp::Add => x.checked_add(y),
                        BinOp::Sub => x.checked_sub(y),
                        _ => x.checked_mul(y),
                    };
                    Const::Int(r.ok_or_else(|| Diagnostic::at(e.span, "integer overflow", "this does not fit in 64 bits"))?)
                }
                (a, b) => {
                    let (Some(x), Some(y)) = (as_f64(&a), as_f64(&b)) else {
                        return Err(Diagnostic::at(e.span, "arithmetic needs numbers", "expected numbers on both sides"));
                    };
                    let r = match op {
                        BinOp::Add => x + y,
                        BinOp::Sub => x - y,
                        BinOp::Mul => x * y,
                        _ => x / y,
                    };
                    if !r.is_finite() {
                        return Err(Diagnostic::at(e.span, "this constant is not a finite number", "not finite"));
                    }
                    Const::Float(r)
                }
            }
        }
        ExprKind::Field { .. } => field(e)?,
        _ => {
            return Err(Diagnostic::at(e.span, format!("expected a constant, found {}", e.describe()), "must be known at compile time"));
        }
    })
}

fn as_f64(c: &Const) -> Option<f64> {
    match c {
        Const::Int(i) => Some(*i as f64),
        Const::Float(f) => Some(*f),
        _ => None,
    }
}

fn describe(c: &Const) -> &'static str {
    match c {
        Const::Int(_) => "an integer",
        Const::Float(_) => "a number with a fraction",
        Const::Bool(_) => "a boolean",
        Const::Str(_) => "a string",
        Const::None => "`none`",
        Const::Tuple(_) => "a tuple",
    }
}

/// A type error for argument `name` of `callee`.
pub fn type_error(callee: &str, name: &str, kind: Kind, span: Span, found: &str) -> Diagnostic {
    Diagnostic::at(
        span,
        format!("argument `{name}` of `{callee}` expects {}, found {found}", kind.expected()),
        format!("expected {}", kind.expected()),
    )
}

/// Typed accessors on a constant, with "expected X, found Y" errors.
pub struct Typed<'a> {
    pub callee: &'a str,
    pub name: &'a str,
    pub span: Span,
    pub value: Const,
}

impl Typed<'_> {
    fn err(&self, kind: Kind) -> Diagnostic {
        type_error(self.callee, self.name, kind, self.span, describe(&self.value))
    }

    pub fn is_none(&self) -> bool {
        self.value == Const::None
    }

    pub fn int(&self) -> Result<i64, Diagnostic> {
        match &self.value {
            Const::Int(i) => Ok(*i),
            Const::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(*f as i64),
            _ => Err(self.err(Kind::Int)),
        }
    }

    pub fn float(&self) -> Result<f64, Diagnostic> {
        as_f64(&self.value).ok_or_else(|| self.err(Kind::Float))
    }

    pub fn bool(&self) -> Result<bool, Diagnostic> {
        match &self.value {
            Const::Bool(b) => Ok(*b),
            _ => Err(self.err(Kind::Bool)),
        }
    }

    pub fn str(&self) -> Result<String, Diagnostic> {
        match &self.value {
            Const::Str(s) => Ok(s.clone()),
            _ => Err(self.err(Kind::Str)),
        }
    }

    pub fn float_pair(&self) -> Result<(f64, f64), Diagnostic> {
        match &self.value {
            Const::Tuple(v) if v.len() == 2 => match (as_f64(&v[0]), as_f64(&v[1])) {
                (Some(a), Some(b)) => Ok((a, b)),
                _ => Err(self.err(Kind::FloatPair)),
            },
            _ => Err(self.err(Kind::FloatPair)),
        }
    }

    pub fn int_list(&self) -> Result<Vec<i64>, Diagnostic> {
        match &self.value {
            Const::Int(i) => Ok(vec![*i]),
            Const::Tuple(v) => v
                .iter()
                .map(|c| match c {
                    Const::Int(i) => Ok(*i),
                    _ => Err(self.err(Kind::IntList)),
                })
                .collect(),
            _ => Err(self.err(Kind::IntList)),
        }
    }

    /// An error saying the value is outside `range` (e.g. "in [0, 1]").
    pub fn out_of_range(&self, what: &str) -> Diagnostic {
        let shown = match &self.value {
            Const::Int(i) => i.to_string(),
            Const::Float(f) => f.to_string(),
            Const::Str(s) => format!("{s:?}"),
            other => describe(other).to_string(),
        };
        Diagnostic::at(
            self.span,
            format!("argument `{}` of `{}` must be {what}, found {shown}", self.name, self.callee),
            format!("expected {what}"),
        )
    }
}

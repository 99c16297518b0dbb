//! The syntax tree of a `.train` file. Every node carries the span it was parsed from.

use crate::diag::Span;

#[derive(Debug, Clone, PartialEq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// A whole file: each item at most once (the parser reports repeats).
#[derive(Debug, Clone, Default)]
pub struct File {
    pub data: Option<Block>,
    pub model: Option<Model>,
    pub loss: Option<Single>,
    pub metrics: Option<Metrics>,
    pub optimizer: Option<Single>,
    pub schedule: Option<Single>,
    pub train: Option<Block>,
    /// The span of the whole file (for "missing item" diagnostics).
    pub span: Span,
}

/// `data { k = v ... }` or `train { k = v ... }`.
#[derive(Debug, Clone)]
pub struct Block {
    pub keyword: Span,
    pub bindings: Vec<Binding>,
}

#[derive(Debug, Clone)]
pub struct Binding {
    pub name: Ident,
    pub value: Expr,
}

/// `loss EXPR`, `optimizer CALL`, `schedule CALL`.
#[derive(Debug, Clone)]
pub struct Single {
    pub keyword: Span,
    pub value: Expr,
}

#[derive(Debug, Clone)]
pub struct Metrics {
    pub keyword: Span,
    pub metrics: Vec<Metric>,
}

#[derive(Debug, Clone)]
pub struct Metric {
    /// `name = call`; otherwise the key is derived from the function name.
    pub name: Option<Ident>,
    pub value: Expr,
}

#[derive(Debug, Clone)]
pub struct Model {
    pub keyword: Span,
    pub stmts: Vec<ModelStmt>,
}

#[derive(Debug, Clone)]
pub enum ModelStmt {
    Input(InputDecl),
    Assign(Binding),
}

#[derive(Debug, Clone)]
pub struct InputDecl {
    pub name: Ident,
    pub dtype: Ident,
    pub dims: Vec<DimDecl>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub enum DimDecl {
    Fixed(u64, Span),
    Named(Ident),
}

impl DimDecl {
    pub fn span(&self) -> Span {
        match self {
            DimDecl::Fixed(_, s) => *s,
            DimDecl::Named(id) => id.span,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    MatMul,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::MatMul => "@",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    /// `integer` is true when written without `.` or exponent.
    Number { value: f64, integer: bool },
    Str(String),
    Bool(bool),
    None,
    Rest,
    Name(String),
    Tuple(Vec<Expr>),
    Call { callee: Box<Expr>, args: Vec<Arg> },
    /// `lhs |> rhs`: rhs is a name or a call, resolved by the checker.
    Pipe { lhs: Box<Expr>, rhs: Box<Expr> },
    Binary { op: BinOp, lhs: Box<Expr>, rhs: Box<Expr> },
    Neg(Box<Expr>),
    Slice { target: Box<Expr>, start: Option<Box<Expr>>, end: Option<Box<Expr>> },
    Field { target: Box<Expr>, name: Ident },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
}

impl Expr {
    /// A short description for "expected X, found Y" messages.
    pub fn describe(&self) -> &'static str {
        match &self.kind {
            ExprKind::Number { integer: true, .. } => "an integer",
            ExprKind::Number { .. } => "a number",
            ExprKind::Str(_) => "a string",
            ExprKind::Bool(_) => "a boolean",
            ExprKind::None => "`none`",
            ExprKind::Rest => "`rest`",
            ExprKind::Name(_) => "a name",
            ExprKind::Tuple(_) => "a tuple",
            ExprKind::Call { .. } => "a call",
            ExprKind::Pipe { .. } => "a pipeline",
            ExprKind::Binary { .. } => "an arithmetic expression",
            ExprKind::Neg(_) => "a negation",
            ExprKind::Slice { .. } => "a slice",
            ExprKind::Field { .. } => "a field access",
        }
    }
}

use super::ast::*;
use super::parse_file;

fn parse(src: &str) -> File {
    match parse_file(0, src) {
        Ok(f) => f,
        Err(d) => panic!("parse failed: {d:?}"),
    }
}

/// The model's last assignment's value, for expression tests.
fn value(src_expr: &str) -> Expr {
    let f = parse(&format!("model {{ v = {src_expr} }}"));
    match f.model.expect("model").stmts.pop().expect("stmt") {
        ModelStmt::Assign(b) => b.value,
        other => panic!("{other:?}"),
    }
}

/// A compact s-expression of an expression, to assert structure.
fn sexp(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Number { value, .. } => format!("{value}"),
        ExprKind::Str(s) => format!("{s:?}"),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::None => "none".into(),
        ExprKind::Rest => "rest".into(),
        ExprKind::Name(n) => n.clone(),
        ExprKind::Tuple(items) => format!("(tuple {})", items.iter().map(sexp).collect::<Vec<_>>().join(" ")),
        ExprKind::Call { callee, args } => {
            let args: Vec<String> = args
                .iter()
                .map(|a| match &a.name {
                    Some(n) => format!("{}={}", n.name, sexp(&a.value)),
                    None => sexp(&a.value),
                })
                .collect();
            format!("(call {} {})", sexp(callee), args.join(" "))
        }
        ExprKind::Pipe { lhs, rhs } => format!("(|> {} {})", sexp(lhs), sexp(rhs)),
        ExprKind::Binary { op, lhs, rhs } => format!("({} {} {})", op.symbol(), sexp(lhs), sexp(rhs)),
        ExprKind::Neg(x) => format!("(neg {})", sexp(x)),
        ExprKind::Slice { target, start, end } => format!(
            "(slice {} {} {})",
            sexp(target),
            start.as_ref().map_or("_".into(), |s| sexp(s)),
            end.as_ref().map_or("_".into(), |s| sexp(s))
        ),
        ExprKind::Field { target, name } => format!("(. {} {})", sexp(target), name.name),
    }
}

#[test]
fn pipe_binds_loosest_and_arithmetic_has_precedence() {
    assert_eq!(sexp(&value("x / 16 |> fc1 |> relu")), "(|> (|> (/ x 16) fc1) relu)");
    assert_eq!(sexp(&value("a + b * c - d")), "(- (+ a (* b c)) d)");
    assert_eq!(sexp(&value("a @ b + c")), "(+ (@ a b) c)");
    assert_eq!(sexp(&value("-a * b")), "(* (neg a) b)");
    assert_eq!(sexp(&value("-x.vocab")), "(neg (. x vocab))");
}

#[test]
fn calls_slices_fields_and_tuples() {
    assert_eq!(sexp(&value("name[:-1] |> emb |> dec(h0 = ctx)")), "(|> (|> (slice name _ (neg 1)) emb) (call dec h0=ctx))");
    assert_eq!(sexp(&value("t[1:]")), "(slice t 1 _)");
    assert_eq!(sexp(&value("f((0.9, 0.999), (3,), ())")), "(call f (tuple 0.9 0.999) (tuple 3) (tuple ))");
    assert_eq!(sexp(&value("(a)")), "a");
    assert_eq!(sexp(&value("g(x, dim = -1,)")), "(call g x dim=(neg 1))");
}

#[test]
fn numbers_and_strings() {
    assert_eq!(value("1e-3").kind, ExprKind::Number { value: 1e-3, integer: false });
    assert_eq!(value("10").kind, ExprKind::Number { value: 10.0, integer: true });
    assert_eq!(value("0.5").kind, ExprKind::Number { value: 0.5, integer: false });
    assert_eq!(value(r#""a\"b\\c""#).kind, ExprKind::Str("a\"b\\c".into()));
}

#[test]
fn item_words_are_contextual() {
    let f = parse("data { train = csv(\"t.csv\", x = rest) eval = csv(\"e.csv\", x = rest) }\nmodel { input x: f32[4]; loss = x; rnn = gru(4, 8) }\ntrain { epochs = 3 }");
    let data = f.data.expect("data");
    assert_eq!(data.bindings.len(), 2);
    assert_eq!(data.bindings[0].name.name, "train");
    let model = f.model.expect("model");
    assert_eq!(model.stmts.len(), 3);
    assert!(f.train.is_some());
}

#[test]
fn spans_point_into_the_source() {
    let src = "model { v = foo(1) }";
    let e = value("foo(1)");
    assert_eq!(&src[e.span.start..e.span.end], "foo(1)");
}

#[test]
fn every_item_at_most_once() {
    let err = parse_file(0, "loss a\nloss b\n").expect_err("duplicate item");
    assert!(err[0].message.contains("appears twice"), "{:?}", err[0]);
}

#[test]
fn deep_nesting_and_long_chains_are_errors_not_crashes() {
    let deep = format!("model {{ v = {}x{} }}", "(".repeat(500), ")".repeat(500));
    assert!(parse_file(0, &deep).is_err());
    let minus = format!("model {{ v = {}x }}", "-".repeat(500));
    assert!(parse_file(0, &minus).is_err());
    let chain = format!("model {{ v = x{} }}", " + x".repeat(5000));
    assert!(parse_file(0, &chain).is_err());
}

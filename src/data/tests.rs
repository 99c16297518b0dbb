//! Loader tests: every file is written under the system temp directory with a unique name.

use super::*;
use crate::diag::{SourceMap, Span};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn temp(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kpc-data-test-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("temp file");
    p
}

/// A `.train` file to hang spans on; spans below are arbitrary ranges inside it.
struct Fx {
    map: SourceMap,
    file: usize,
}

const TRAIN_TEXT: &str = "data {\n    train = csv(\"data.csv\", x = rest, y = \"label\", z = \"other\")\n}\n";

impl Fx {
    fn new() -> Fx {
        let mut map = SourceMap::new();
        let file = map.add("t.train", TRAIN_TEXT);
        Fx { map, file }
    }
    fn span(&self, start: usize, end: usize) -> Span {
        Span::new(self.file, start, end)
    }
    fn call(&self) -> Span {
        let start = TRAIN_TEXT.find("csv(").unwrap_or(0);
        let end = TRAIN_TEXT.find(")\n").map_or(start, |e| e + 1);
        self.span(start, end)
    }
    fn path_span(&self) -> Span {
        self.span(24, 34)
    }
    fn spec(&self, format: Format, path: Option<&Path>, fields: Vec<FieldSpec>) -> SourceSpec {
        SourceSpec { format, path: path.map(|p| (p.to_path_buf(), self.path_span())), span: self.call(), fields }
    }
    fn field(&self, name: &str, dtype: Dtype, kind: FieldKind) -> FieldSpec {
        FieldSpec { name: name.into(), name_span: self.span(36, 37), dtype, kind }
    }
    fn col(&self, c: &str) -> FieldKind {
        FieldKind::CsvColumn { column: c.into(), span: self.span(50, 57) }
    }
    fn rest(&self) -> FieldKind {
        FieldKind::CsvRest { span: self.span(40, 44) }
    }
    /// `x = rest` (f32), `y = "label"` (i64).
    fn csv(&mut self, path: &Path) -> Result<Table, String> {
        let spec = self.spec(
            Format::Csv,
            Some(path),
            vec![self.field("x", Dtype::F32, self.rest()), self.field("y", Dtype::I64, self.col("label"))],
        );
        self.load(&spec, None)
    }
    fn load(&mut self, spec: &SourceSpec, train: Option<&Table>) -> Result<Table, String> {
        load(spec, train, &mut self.map).map_err(|d| d.render(&self.map))
    }
}

fn csv_err(content: &[u8]) -> (String, String) {
    let p = temp("d.csv", content);
    let mut fx = Fx::new();
    let e = fx.csv(&p).expect_err("expected an error");
    (e, p.display().to_string())
}

fn assert_has(text: &str, parts: &[&str]) {
    for p in parts {
        assert!(text.contains(p), "missing {p:?} in:\n{text}");
    }
}

fn f32s(v: &Values) -> (&[f32], &[usize]) {
    match v {
        Values::F32 { data, shape } => (data, shape),
        other => panic!("not f32: {other:?}"),
    }
}

fn i64s(v: &Values) -> (&[i64], &[usize]) {
    match v {
        Values::I64 { data, shape } => (data, shape),
        other => panic!("not i64: {other:?}"),
    }
}

fn seqs(v: &Values) -> Vec<Vec<i64>> {
    match v {
        Values::Seq { ids, offsets } => offsets.windows(2).map(|w| ids[w[0]..w[1]].to_vec()).collect(),
        other => panic!("not seq: {other:?}"),
    }
}

// ---------------------------------------------------------------- csv

#[test]
fn csv_crlf_bom_quotes_and_final_empty_line() {
    let p = temp("d.csv", b"\xEF\xBB\xBFa,\"b\",label\r\n1, 2.5 ,3\r\n\"-0.5\",1e3,-4\r\n\r\n");
    let mut fx = Fx::new();
    let t = fx.csv(&p).expect("loads");
    assert_eq!(t.rows, 2);
    assert_eq!(t.format, Format::Csv);
    let x = &t.fields[0];
    assert_eq!(x.name, "x");
    assert_eq!(f32s(&x.values), (&[1.0, 2.5, -0.5, 1000.0][..], &[2][..]));
    assert_eq!(x.columns, vec!["a", "b"]);
    let y = &t.fields[1];
    assert_eq!(i64s(&y.values), (&[3, -4][..], &[][..]));
    assert_eq!(y.columns, vec!["label"]);
    assert_eq!(y.rows, vec![RowPos { line: 2, byte: 16 }, RowPos { line: 3, byte: 27 }]);
}

#[test]
fn csv_tuple_binding_and_rest_excludes_bound_columns() {
    let p = temp("d.csv", b"a,b,c,label\n1,2,3,0\n4,5,6,1\n");
    let mut fx = Fx::new();
    let cols = FieldKind::CsvColumns { columns: vec![("c".into(), fx.span(50, 53)), ("a".into(), fx.span(55, 58))] };
    let spec = fx.spec(
        Format::Csv,
        Some(&p),
        vec![fx.field("t", Dtype::F32, cols), fx.field("x", Dtype::F32, fx.rest()), fx.field("y", Dtype::I64, fx.col("label"))],
    );
    let t = fx.load(&spec, None).expect("loads");
    assert_eq!(f32s(&t.fields[0].values), (&[3.0, 1.0, 6.0, 4.0][..], &[2][..]));
    assert_eq!(f32s(&t.fields[1].values), (&[2.0, 5.0][..], &[1][..]));
    assert_eq!(t.fields[1].columns, vec!["b"]);
}

#[test]
fn csv_f32_is_correctly_rounded() {
    let p = temp("d.csv", b"a,label\n0.1,0\n16777217,0\n3.4028235e38,0\n1e-46,0\n");
    let mut fx = Fx::new();
    let t = fx.csv(&p).expect("loads");
    assert_eq!(f32s(&t.fields[0].values).0, &[0.1f32, 16777216.0, f32::MAX, 0.0]);
}

#[test]
fn csv_missing_column_points_at_the_train_file() {
    let p = temp("d.csv", b"a,b,lbl\n1,2,0\n");
    let mut fx = Fx::new();
    let e = fx.csv(&p).unwrap_err();
    assert_has(&e, &["no column \"label\" in", "t.train:2:", "not a column of the header", "the header has columns \"a\", \"b\", \"lbl\""]);
}

#[test]
fn csv_ragged_row() {
    let (e, name) = csv_err(b"f0,f1,f2,f3,label\n5.1,3.5,1.4,0.2,0\n4.9,3.0,1.4,0\n");
    assert_has(&e, &[&format!("{name}:3:1"), "row 2 of", "has 4 fields, but the header has 5", "expected 5 fields like the header, found 4", "data source declared here", "t.train:2:"]);
}

#[test]
fn csv_not_a_number() {
    let (e, name) = csv_err(b"a,b,label\n1,2,0\n1,abc,0\n");
    assert_has(&e, &[&format!("{name}:3:3"), "invalid number \"abc\" in column \"b\" of row 2", "^^^ expected a number"]);
}

#[test]
fn csv_quoted_field_is_located() {
    let (e, name) = csv_err(b"a,b,label\n\"1,5\",2,0\n");
    assert_has(&e, &[&format!("{name}:2:1"), "invalid number \"1,5\" in column \"a\" of row 1", "^^^^^ expected a number"]);
}

#[test]
fn csv_empty_field() {
    let (e, name) = csv_err(b"a,b,label\n1,,0\n");
    assert_has(&e, &[&format!("{name}:2:3"), "empty field in column \"b\" of row 1", "expected a number"]);
    let (e, _) = csv_err(b"a,b,label\n1,2,  \n");
    assert_has(&e, &["empty field in column \"label\"", "expected an integer"]);
}

#[test]
fn csv_nan_and_infinity_in_any_spelling() {
    for bad in ["nan", "NaN", "inf", "-Infinity", "infinity", "+inf"] {
        let (e, name) = csv_err(format!("a,label\n1,0\n{bad},1\n").as_bytes());
        assert_has(&e, &[&format!("{name}:3:1"), "non-finite value", "of row 2", "expected a finite number"]);
    }
}

#[test]
fn csv_f32_overflow() {
    let (e, name) = csv_err(b"a,label\n1e39,0\n");
    assert_has(&e, &[&format!("{name}:2:1"), "number \"1e39\" overflows f32 in column \"a\" of row 1"]);
}

#[test]
fn csv_i64_rules() {
    let (e, name) = csv_err(b"a,label\n1,1.0\n");
    assert_has(&e, &[&format!("{name}:2:3"), "invalid integer \"1.0\" in column \"label\" of row 1", "expected an integer"]);
    for bad in ["+1", "1e2", "- 1", "0x1", "-"] {
        let (e, _) = csv_err(format!("a,label\n1,{bad}\n").as_bytes());
        assert_has(&e, &["invalid integer"]);
    }
    let (e, _) = csv_err(b"a,label\n1,9223372036854775808\n");
    assert_has(&e, &["does not fit in i64"]);
    let p = temp("d.csv", b"a,label\n1,-9223372036854775808\n2, 007 \n");
    let t = Fx::new().csv(&p).expect("loads");
    assert_eq!(i64s(&t.fields[1].values).0, &[i64::MIN, 7]);
}

#[test]
fn csv_empty_file_and_header_only() {
    let (e, name) = csv_err(b"");
    assert_has(&e, &[&format!("`{name}` is empty"), "t.train:2:", "empty file"]);
    let (e, name) = csv_err(b"\xEF\xBB\xBF\r\n");
    assert_has(&e, &[&format!("`{name}` is empty")]);
    let (e, name) = csv_err(b"a,b,label\r\n");
    assert_has(&e, &[&format!("{name}:1:1"), "has a header but no data rows"]);
}

#[test]
fn csv_invalid_utf8() {
    let (e, name) = csv_err(b"f0,f1,f2,f3,label\n5.1,3.5,1.4,0.2,0\n4.9,3.0,\xff\xfe,0.2,1\n");
    assert_has(&e, &[&format!("{name}:3:9"), "invalid UTF-8 in line 3", "not valid UTF-8"]);
}

#[test]
fn csv_binary_garbage() {
    let (e, name) = csv_err(b"\x7fELF\x02\x01\x01\0\0\0\0\0");
    assert_has(&e, &[&format!("`{name}` is not a text file"), "t.train:2:", "NUL byte"]);
}

#[test]
fn csv_duplicate_header() {
    let (e, name) = csv_err(b"a,b,a,label\n1,2,3,0\n");
    assert_has(&e, &[&format!("{name}:1:5"), "duplicate column name \"a\"", "first used here"]);
}

#[test]
fn csv_missing_file() {
    let p = std::env::temp_dir().join("kpc-data-test-does-not-exist/nothing.csv");
    let e = Fx::new().csv(&p).unwrap_err();
    assert_has(&e, &["cannot read", "nothing.csv", "t.train:2:", "No such file"]);
}

#[test]
fn csv_rest_with_nothing_left() {
    let (e, _) = csv_err(b"label\n1\n");
    assert_has(&e, &["`rest` binds no columns"]);
}

#[test]
fn csv_row_error_points_at_the_field() {
    let p = temp("d.csv", b"\xEF\xBB\xBFa,b,label\r\n1,2,0\r\n3,4,17\r\n");
    let mut fx = Fx::new();
    let t = fx.csv(&p).expect("loads");
    let d = row_error(&t, &t.fields[1], 1, "class id 17 out of range", "expected a class id in [0, 10)", &mut fx.map);
    let text = d.render(&fx.map);
    assert_has(&text, &[&format!("{}:3:5", p.display()), "^^ expected a class id in [0, 10)", "3,4,17"]);
    // A vector field: the whole line.
    let d = row_error(&t, &t.fields[0], 0, "bad", "here", &mut fx.map);
    assert_has(&d.render(&fx.map), &[&format!("{}:2:1", p.display())]);
}

// ---------------------------------------------------------------- jsonl

fn chars(fx: &Fx, key: &str, opts: TokenizerOpts) -> FieldKind {
    FieldKind::Tokens { field: key.into(), span: fx.span(50, 57), unit: TokenUnit::Chars, opts }
}

fn words(fx: &Fx, key: &str, opts: TokenizerOpts) -> FieldKind {
    FieldKind::Tokens { field: key.into(), span: fx.span(50, 57), unit: TokenUnit::Words, opts }
}

fn label(fx: &Fx, key: &str) -> FieldKind {
    FieldKind::Label { field: key.into(), span: fx.span(50, 57) }
}

fn jsonl_spec(fx: &Fx, path: &Path) -> SourceSpec {
    fx.spec(
        Format::Jsonl,
        Some(path),
        vec![fx.field("c", Dtype::I64, chars(fx, "word", TokenizerOpts::default())), fx.field("lang", Dtype::I64, label(fx, "lang"))],
    )
}

fn jsonl_err(content: &str) -> (String, String) {
    let p = temp("d.jsonl", content.as_bytes());
    let mut fx = Fx::new();
    let spec = jsonl_spec(&fx, &p);
    (fx.load(&spec, None).expect_err("expected an error"), p.display().to_string())
}

#[test]
fn jsonl_chars_and_labels() {
    let p = temp("d.jsonl", "{\"word\": \"abba\", \"lang\": \"x\"}\n\n  \r\n{\"lang\": \"a\", \"word\": \"cé\"}\r\n{\"word\": \"\", \"lang\": \"x\"}".as_bytes());
    let mut fx = Fx::new();
    let t = fx.load(&jsonl_spec(&fx, &p), None).expect("loads");
    assert_eq!(t.rows, 3);
    let c = &t.fields[0];
    // a ×2, b ×2, c, é
    assert_eq!(c.vocab.as_deref().unwrap(), &["<pad>", "<unk>", "a", "b", "c", "é"]);
    assert_eq!(seqs(&c.values), vec![vec![2, 3, 3, 2], vec![4, 5], vec![]]);
    assert_eq!(c.columns, vec!["word"]);
    assert_eq!(c.rows.iter().map(|r| r.line).collect::<Vec<_>>(), vec![1, 4, 5]);
    let l = &t.fields[1];
    assert_eq!(l.classes.as_deref().unwrap(), &["a", "x"]);
    assert_eq!(i64s(&l.values), (&[1, 0, 1][..], &[][..]));
}

#[test]
fn jsonl_words_with_options_numbers_and_eval_reuse() {
    let train = temp("t.jsonl", br#"{"doc": "the cat the  dog", "n": 1.5, "v": [1, 2.5], "y": "b"}
{"doc": "a cat", "n": -2, "v": [0, 1e-3], "y": "a"}
"#);
    let eval = temp("e.jsonl", br#"{"doc": "the bird the", "n": 0, "v": [3, 4], "y": "a"}"#);
    let mut fx = Fx::new();
    let opts = TokenizerOpts { min_freq: 2, bos: true, eos: false, max_len: Some(3) };
    let fields = |fx: &Fx| {
        vec![
            fx.field("d", Dtype::I64, words(fx, "doc", opts)),
            fx.field("n", Dtype::F32, FieldKind::Number { field: "n".into(), span: fx.span(50, 57) }),
            fx.field("v", Dtype::F32, FieldKind::Numbers { field: "v".into(), span: fx.span(50, 57) }),
            fx.field("y", Dtype::I64, label(fx, "y")),
        ]
    };
    let spec = fx.spec(Format::Jsonl, Some(&train), fields(&fx));
    let t = fx.load(&spec, None).expect("train loads");
    // after max_len 3: "the cat the" + "a cat": the 2, cat 2, a 1 (min_freq 2 drops a)
    assert_eq!(t.fields[0].vocab.as_deref().unwrap(), &["<pad>", "<unk>", "<bos>", "<eos>", "cat", "the"]);
    assert_eq!(seqs(&t.fields[0].values), vec![vec![2, 5, 4, 5], vec![2, 1, 4]]);
    assert_eq!(f32s(&t.fields[1].values), (&[1.5, -2.0][..], &[][..]));
    assert_eq!(f32s(&t.fields[2].values), (&[1.0, 2.5, 0.0, 1e-3][..], &[2][..]));
    let spec = fx.spec(Format::Jsonl, Some(&eval), fields(&fx));
    let e = fx.load(&spec, Some(&t)).expect("eval loads");
    assert_eq!(e.fields[0].vocab, t.fields[0].vocab);
    assert_eq!(seqs(&e.fields[0].values), vec![vec![2, 5, 1, 5]]);
    assert_eq!(i64s(&e.fields[3].values).0, &[0]);
    assert_eq!(e.fields[3].classes.as_deref().unwrap(), &["a", "b"]);
}

#[test]
fn jsonl_unknown_eval_label() {
    let train = temp("t.jsonl", b"{\"word\": \"abc\", \"lang\": \"dutch\"}\n");
    let eval = temp("e.jsonl", b"{\"word\": \"abc\", \"lang\": \"dutch\"}\n{\"word\": \"def\", \"lang\": \"klingon\"}\n");
    let mut fx = Fx::new();
    let t = fx.load(&jsonl_spec(&fx, &train), None).expect("train loads");
    let e = fx.load(&jsonl_spec(&fx, &eval), Some(&t)).unwrap_err();
    assert_has(&e, &[&format!("{}:2:25", eval.display()), "label \"klingon\" in line 2", "not a class of the train data", "^^^^^^^^^ not seen in train", "the train classes are \"dutch\""]);
}

#[test]
fn jsonl_missing_key() {
    let (e, name) = jsonl_err("{\"word\": \"abc\", \"lang\": \"dutch\"}\n{\"wort\": \"def\", \"lang\": \"german\"}\n");
    assert_has(&e, &[&format!("{name}:2:1"), "line 2 of", "has no \"word\" key", "the object has keys \"lang\", \"wort\"", "data source declared here"]);
}

#[test]
fn jsonl_wrong_type() {
    let (e, name) = jsonl_err("{\"word\": \"abc\", \"lang\": 3}\n");
    assert_has(&e, &[&format!("{name}:1:25"), "\"lang\" in line 1 of", "is a number, expected a string", "^ expected a string"]);
}

#[test]
fn jsonl_bad_json_and_not_an_object() {
    let (e, name) = jsonl_err("{\"word\": \"abc\", \"lang\": \"dutch\"}\n{\"word\": \"def\", \"lang\": \n");
    assert_has(&e, &[&format!("{name}:2:"), "invalid JSON in line 2", "EOF while parsing"]);
    let (e, name) = jsonl_err("{\"word\": \"abc\" \"lang\": \"dutch\"}\n");
    assert_has(&e, &[&format!("{name}:1:16"), "invalid JSON in line 1", "expected `,` or `}`"]);
    let (e, name) = jsonl_err("[1, 2]\n");
    assert_has(&e, &[&format!("{name}:1:1"), "line 1 of", "is not a JSON object", "found an array"]);
}

#[test]
fn jsonl_empty_and_garbage() {
    let (e, name) = jsonl_err("\n \n");
    assert_has(&e, &[&format!("`{name}` is empty")]);
    let (e, name) = jsonl_err("{\"word\": \"a\u{0}\"}");
    assert_has(&e, &[&format!("`{name}` is not a text file")]);
}

#[test]
fn jsonl_ragged_numbers_and_overflow() {
    let p = temp("d.jsonl", b"{\"v\": [1, 2]}\n{\"v\": [1, 2, 3]}\n");
    let mut fx = Fx::new();
    let spec = fx.spec(Format::Jsonl, Some(&p), vec![fx.field("v", Dtype::F32, FieldKind::Numbers { field: "v".into(), span: fx.span(50, 57) })]);
    let e = fx.load(&spec, None).unwrap_err();
    assert_has(&e, &[&format!("{}:2:7", p.display()), "has 3 numbers, but line 1 has 2", "expected 2 numbers like line 1, found 3"]);
    let p = temp("d.jsonl", b"{\"v\": [1, 1e39]}\n");
    let spec = fx.spec(Format::Jsonl, Some(&p), vec![fx.field("v", Dtype::F32, FieldKind::Numbers { field: "v".into(), span: fx.span(50, 57) })]);
    assert_has(&fx.load(&spec, None).unwrap_err(), &["element 1 of \"v\" in line 1", "overflows f32"]);
    let p = temp("d.jsonl", b"{\"v\": [1, \"2\"]}\n");
    let spec = fx.spec(Format::Jsonl, Some(&p), vec![fx.field("v", Dtype::F32, FieldKind::Numbers { field: "v".into(), span: fx.span(50, 57) })]);
    assert_has(&fx.load(&spec, None).unwrap_err(), &["element 1 of \"v\" in line 1", "is a string, expected a number"]);
}

#[test]
fn jsonl_too_long_sequence() {
    let long = "a".repeat(MAX_SEQ_LEN + 1);
    let p = temp("d.jsonl", format!("{{\"word\": \"{long}\", \"lang\": \"x\"}}\n").as_bytes());
    let mut fx = Fx::new();
    let e = fx.load(&jsonl_spec(&fx, &p), None).unwrap_err();
    assert_has(&e, &["has 65537 tokens, more than the limit of 65536"]);
    assert!(e.len() < 4000, "excerpt not capped: {} bytes", e.len());
}

#[test]
fn jsonl_row_error_points_at_the_value() {
    let p = temp("d.jsonl", b"{\"word\": \"abc\", \"lang\": \"dutch\"}\n\n{\"word\": \"de\", \"lang\": \"german\"}\n");
    let mut fx = Fx::new();
    let t = fx.load(&jsonl_spec(&fx, &p), None).expect("loads");
    let d = row_error(&t, &t.fields[0], 1, "row 2 is too short", "expected at least 3 tokens", &mut fx.map);
    assert_has(&d.render(&fx.map), &[&format!("{}:3:10", p.display()), "^^^^ expected at least 3 tokens"]);
}

// ---------------------------------------------------------------- npy

fn npy_spec(fx: &Fx, files: &[(&str, Dtype, &Path)]) -> SourceSpec {
    let fields = files.iter().map(|(n, d, p)| fx.field(n, *d, FieldKind::NpyFile { path: p.to_path_buf(), span: fx.span(50, 57) })).collect();
    fx.spec(Format::Npy, None, fields)
}

fn write_npy<T: ndarray_npy::WritableElement>(name: &str, a: &ndarray::ArrayD<T>) -> PathBuf {
    let p = temp(name, b"");
    ndarray_npy::write_npy(&p, a).expect("write npy");
    p
}

#[test]
fn npy_round_trip_and_conversions() {
    use ndarray::{ArrayD, IxDyn};
    let x = write_npy("x.npy", &ArrayD::from_shape_vec(IxDyn(&[3, 2, 2]), (0..12).map(|v| v as f32 * 0.5).collect()).unwrap());
    let x64 = write_npy("x64.npy", &ArrayD::from_shape_vec(IxDyn(&[3, 1]), vec![0.1f64, 2.0, -3.0]).unwrap());
    let y32 = write_npy("y.npy", &ArrayD::from_shape_vec(IxDyn(&[3]), vec![1i32, -2, 3]).unwrap());
    let mut fx = Fx::new();
    let spec = npy_spec(&fx, &[("x", Dtype::F32, &x), ("w", Dtype::F32, &x64), ("y", Dtype::I64, &y32)]);
    let t = fx.load(&spec, None).expect("loads");
    assert_eq!(t.rows, 3);
    assert_eq!(t.path, x);
    assert_eq!(f32s(&t.fields[0].values).1, &[2, 2]);
    assert_eq!(f32s(&t.fields[0].values).0[5], 2.5);
    assert_eq!(f32s(&t.fields[1].values), (&[0.1f32, 2.0, -3.0][..], &[1][..]));
    assert_eq!(i64s(&t.fields[2].values), (&[1, -2, 3][..], &[][..]));
    let d = row_error(&t, &t.fields[2], 1, "bad label", "expected a class id", &mut fx.map);
    assert_has(&d.render(&fx.map), &["bad label", "row 2 of", "y.npy"]);
}

#[test]
fn npy_errors() {
    use ndarray::{ArrayD, IxDyn};
    let x = write_npy("x.npy", &ArrayD::from_shape_vec(IxDyn(&[3]), vec![1.0f32, 2.0, 3.0]).unwrap());
    let y = write_npy("y.npy", &ArrayD::from_shape_vec(IxDyn(&[2]), vec![1i64, 2]).unwrap());
    let u8s = write_npy("u.npy", &ArrayD::from_shape_vec(IxDyn(&[2]), vec![1u8, 2]).unwrap());
    let nan = write_npy("n.npy", &ArrayD::from_shape_vec(IxDyn(&[2]), vec![1.0f64, f64::NAN]).unwrap());
    let big = write_npy("b.npy", &ArrayD::from_shape_vec(IxDyn(&[1]), vec![1e300f64]).unwrap());
    let text = temp("t.npy", b"hello");
    let mut fx = Fx::new();
    let e = fx.load(&npy_spec(&fx, &[("x", Dtype::F32, &x), ("y", Dtype::I64, &y)]), None).unwrap_err();
    assert_has(&e, &["has 2 rows but", "has 3", "expected 3 rows"]);
    let e = fx.load(&npy_spec(&fx, &[("x", Dtype::I64, &x)]), None).unwrap_err();
    assert_has(&e, &["wrong dtype: found float32, expected int64 (or int32)", "t.train:2:"]);
    let e = fx.load(&npy_spec(&fx, &[("x", Dtype::F32, &u8s)]), None).unwrap_err();
    assert_has(&e, &["found uint8, expected float32"]);
    let e = fx.load(&npy_spec(&fx, &[("x", Dtype::F32, &nan)]), None).unwrap_err();
    assert_has(&e, &["non-finite value"]);
    let e = fx.load(&npy_spec(&fx, &[("x", Dtype::F32, &big)]), None).unwrap_err();
    assert_has(&e, &["non-finite value"]);
    let e = fx.load(&npy_spec(&fx, &[("x", Dtype::F32, &text)]), None).unwrap_err();
    assert_has(&e, &["not an .npy file"]);
    let missing = text.with_file_name("missing.npy");
    let e = fx.load(&npy_spec(&fx, &[("x", Dtype::F32, &missing)]), None).unwrap_err();
    assert_has(&e, &["cannot read", "missing.npy"]);
    // A header claiming a huge shape, with no data behind it.
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    let mut header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 1000), }".to_vec();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(b' ');
    }
    header.push(b'\n');
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header);
    bytes.extend([0u8; 8]);
    let huge = temp("h.npy", &bytes);
    let e = fx.load(&npy_spec(&fx, &[("x", Dtype::F32, &huge)]), None).unwrap_err();
    assert_has(&e, &["the data does not match the header"]);
    // Truncated header length.
    let trunc = temp("tr.npy", b"\x93NUMPY\x02\x00\xff\xff\xff\x7f{");
    let e = fx.load(&npy_spec(&fx, &[("x", Dtype::F32, &trunc)]), None).unwrap_err();
    assert_has(&e, &["not an .npy file", "truncated"]);
}

// ---------------------------------------------------------------- safetensors

#[test]
fn safetensors_round_trip_and_errors() {
    use ::safetensors::tensor::TensorView;
    use ::safetensors::Dtype as St;
    let xb: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let yb: Vec<u8> = [7i64, 8, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
    let zb: Vec<u8> = [0.5f64, 1.5, 2.5].iter().flat_map(|v| v.to_le_bytes()).collect();
    let wb: Vec<u8> = [1i32, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
    let tensors = vec![
        ("x", TensorView::new(St::F32, vec![3, 2], &xb).unwrap()),
        ("y", TensorView::new(St::I64, vec![3], &yb).unwrap()),
        ("z", TensorView::new(St::F64, vec![3], &zb).unwrap()),
        ("w", TensorView::new(St::I32, vec![2], &wb).unwrap()),
    ];
    let bytes = ::safetensors::serialize(tensors, None).unwrap();
    let p = temp("d.safetensors", &bytes);
    let mut fx = Fx::new();
    let st = |fx: &Fx, n: &str, d: Dtype, t: &str| fx.field(n, d, FieldKind::SafetensorsTensor { tensor: t.into(), span: fx.span(50, 57) });
    let spec = fx.spec(Format::Safetensors, Some(&p), vec![st(&fx, "x", Dtype::F32, "x"), st(&fx, "y", Dtype::I64, "y"), st(&fx, "z", Dtype::F32, "z")]);
    let t = fx.load(&spec, None).expect("loads");
    assert_eq!(t.rows, 3);
    assert_eq!(f32s(&t.fields[0].values), (&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0][..], &[2][..]));
    assert_eq!(i64s(&t.fields[1].values), (&[7, 8, 9][..], &[][..]));
    assert_eq!(f32s(&t.fields[2].values).0, &[0.5, 1.5, 2.5]);
    let d = row_error(&t, &t.fields[1], 2, "bad", "expected a class id", &mut fx.map);
    assert_has(&d.render(&fx.map), &["row 3 of tensor \"y\""]);

    let spec = fx.spec(Format::Safetensors, Some(&p), vec![st(&fx, "x", Dtype::F32, "nope")]);
    assert_has(&fx.load(&spec, None).unwrap_err(), &["no tensor \"nope\"", "the file holds \"w\", \"x\", \"y\", \"z\""]);
    let spec = fx.spec(Format::Safetensors, Some(&p), vec![st(&fx, "x", Dtype::I64, "x")]);
    assert_has(&fx.load(&spec, None).unwrap_err(), &["wrong dtype: found f32, expected int64"]);
    let spec = fx.spec(Format::Safetensors, Some(&p), vec![st(&fx, "x", Dtype::F32, "x"), st(&fx, "w", Dtype::I64, "w")]);
    assert_has(&fx.load(&spec, None).unwrap_err(), &["has 2 rows but \"x\" has 3"]);
    let junk = temp("j.safetensors", b"\xff\xff\xff\xff\xff\xff\xff\x7f{}");
    let spec = fx.spec(Format::Safetensors, Some(&junk), vec![st(&fx, "x", Dtype::F32, "x")]);
    assert_has(&fx.load(&spec, None).unwrap_err(), &["is not a safetensors file"]);
}

// ---------------------------------------------------------------- the shared data files

#[test]
fn real_digits_csv() {
    let p = Path::new("/work/shared/data/digits_train.csv");
    if !p.exists() {
        return;
    }
    let t = Fx::new().csv(p).expect("digits loads");
    assert_eq!(t.rows, 1437);
    let (x, shape) = f32s(&t.fields[0].values);
    assert_eq!(shape, &[64]);
    assert_eq!(x.len(), 1437 * 64);
    assert_eq!(t.fields[0].columns.len(), 64);
    let (y, shape) = i64s(&t.fields[1].values);
    assert!(shape.is_empty());
    assert!(y.iter().all(|&v| (0..10).contains(&v)));
}

#[test]
fn real_words_jsonl() {
    let p = Path::new("/work/shared/data/words_train.jsonl");
    if !p.exists() {
        return;
    }
    let mut fx = Fx::new();
    let spec = fx.spec(
        Format::Jsonl,
        Some(p),
        vec![fx.field("c", Dtype::I64, chars(&fx, "word", TokenizerOpts::default())), fx.field("lang", Dtype::I64, label(&fx, "lang"))],
    );
    let t = fx.load(&spec, None).expect("words loads");
    assert!(t.rows > 1000);
    let vocab = t.fields[0].vocab.as_ref().unwrap();
    assert_eq!(&vocab[..2], &["<pad>", "<unk>"]);
    let classes = t.fields[1].classes.as_ref().unwrap();
    assert!(classes.windows(2).all(|w| w[0] < w[1]));
    assert!(classes.iter().any(|c| c == "dutch"));
    let test = Path::new("/work/shared/data/words_test.jsonl");
    if test.exists() {
        let spec = fx.spec(
            Format::Jsonl,
            Some(test),
            vec![fx.field("c", Dtype::I64, chars(&fx, "word", TokenizerOpts::default())), fx.field("lang", Dtype::I64, label(&fx, "lang"))],
        );
        let e = fx.load(&spec, Some(&t)).expect("words eval loads");
        assert_eq!(e.fields[0].vocab.as_ref(), Some(vocab));
    }
}


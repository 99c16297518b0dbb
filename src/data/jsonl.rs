//! `jsonl(path, NAME = ENCODER, ...)`: one JSON object per line, blank lines skipped.

use super::excerpt::{self, DECLARED_HERE, display, excerpt, name_list, quote};
use super::{Field, FieldKind, Format, MAX_SEQ_LEN, RowPos, SourceSpec, Table, Values, vocab};
use crate::diag::{Diagnostic, SourceMap, Span};
use serde_json::Value;
use std::ops::Range;
use std::path::Path;

/// What one field collected from the rows.
enum Column {
    Text(Vec<String>),
    Number(Vec<f32>),
    /// Values, per-row length and the line that fixed it.
    Numbers(Vec<f32>, Option<(usize, u64)>),
}

/// One non-blank line: its line number and byte range in the file (without the line end).
#[derive(Clone, Copy)]
struct Line {
    no: u64,
    start: usize,
    end: usize,
}

struct Ctx<'a> {
    name: String,
    bytes: &'a [u8],
    spec_span: Span,
}

impl Ctx<'_> {
    fn err(&self, sources: &mut SourceMap, line: Line, focus: Range<usize>, message: String, label: impl Into<String>) -> Diagnostic {
        let span = excerpt(sources, &self.name, &self.bytes[line.start..line.end], line.no, focus);
        Diagnostic::at(span, message, label).with_label(self.spec_span, DECLARED_HERE)
    }

    fn line_text(&self, line: Line) -> &str {
        std::str::from_utf8(&self.bytes[line.start..line.end]).unwrap_or_default()
    }

    /// The span of `key`'s value in `line`, or the whole line.
    fn value_range(&self, line: Line, key: &str) -> Range<usize> {
        let text = self.line_text(line);
        value_span(text, key).unwrap_or(0..text.len())
    }
}

fn key_of(kind: &FieldKind) -> Option<(&str, Span)> {
    match kind {
        FieldKind::Tokens { field, span, .. }
        | FieldKind::Label { field, span }
        | FieldKind::Number { field, span }
        | FieldKind::Numbers { field, span } => Some((field.as_str(), *span)),
        _ => None,
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(crate) fn load(spec: &SourceSpec, train: Option<&Table>, path: &Path, path_span: Span, sources: &mut SourceMap) -> Result<Table, Diagnostic> {
    let name = display(path);
    let bytes = excerpt::read_file(path, path_span)?;
    let (text, bom) = excerpt::text_file(&bytes, path, path_span, spec.span, "jsonl", sources)?;
    let cx = Ctx { name: name.clone(), bytes: &bytes, spec_span: spec.span };

    let mut keys = Vec::new();
    let mut columns = Vec::new();
    for f in &spec.fields {
        let Some((key, _)) = key_of(&f.kind) else {
            return Err(Diagnostic::at(f.name_span, format!("`{}` is not bound to an encoder", f.name), "expected `chars`, `words`, `label`, `number` or `numbers`")
                .with_label(spec.span, "in this jsonl source"));
        };
        keys.push(key);
        columns.push(match f.kind {
            FieldKind::Tokens { .. } | FieldKind::Label { .. } => Column::Text(Vec::new()),
            FieldKind::Number { .. } => Column::Number(Vec::new()),
            _ => Column::Numbers(Vec::new(), None),
        });
    }

    let mut lines: Vec<Line> = Vec::new();
    let mut offset = 0;
    for (i, raw_line) in text.split_inclusive('\n').enumerate() {
        let line = Line { no: i as u64 + 1, start: bom + offset, end: bom + offset + raw_line.trim_end_matches(['\n', '\r']).len() };
        offset += raw_line.len();
        let lt = cx.line_text(line);
        if lt.trim().is_empty() {
            continue;
        }
        let object = match serde_json::from_str::<Value>(lt) {
            Ok(Value::Object(map)) => map,
            Ok(other) => {
                return Err(cx.err(sources, line, 0..lt.len(), format!("line {} of `{name}` is not a JSON object", line.no), format!("expected a JSON object, found {}", json_kind(&other))));
            }
            Err(e) => {
                let at = byte_of_column(lt, e.column());
                let end = lt[at..].chars().next().map_or(at, |c| at + c.len_utf8());
                let msg = e.to_string();
                let label = msg.split(" at line ").next().unwrap_or(&msg).to_string();
                return Err(cx.err(sources, line, at..end, format!("invalid JSON in line {} of `{name}`", line.no), label));
            }
        };
        for ((f, key), col) in spec.fields.iter().zip(&keys).zip(columns.iter_mut()) {
            let Some(v) = object.get(*key) else {
                let present: Vec<&String> = object.keys().collect();
                let d = cx.err(sources, line, 0..lt.len(), format!("line {} of `{name}` has no {} key", line.no, quote(key)), format!("no {} in this object", quote(key)));
                return Err(if present.is_empty() { d.with_note("the object is empty") } else { d.with_note(format!("the object has keys {}", name_list(&present, 20))) });
            };
            let wrong = |sources: &mut SourceMap, expected: &str| {
                cx.err(
                    sources,
                    line,
                    cx.value_range(line, key),
                    format!("{} in line {} of `{name}` is {}, expected {expected}", quote(key), line.no, json_kind(v)),
                    format!("expected {expected}"),
                )
            };
            match (col, &f.kind) {
                (Column::Text(out), _) => match v {
                    Value::String(s) => out.push(s.clone()),
                    _ => return Err(wrong(sources, "a string")),
                },
                (Column::Number(out), _) => {
                    let Value::Number(n) = v else { return Err(wrong(sources, "a number")) };
                    let r = cx.value_range(line, key);
                    let x = number_f32(&lt[r.clone()], n);
                    if !x.is_finite() {
                        return Err(cx.err(sources, line, r, format!("{} in line {} of `{name}` overflows f32", quote(key), line.no), format!("expected a number of magnitude at most {:e}", f32::MAX)));
                    }
                    out.push(x);
                }
                (Column::Numbers(out, width), _) => {
                    let Value::Array(items) = v else { return Err(wrong(sources, "an array of numbers")) };
                    let r = cx.value_range(line, key);
                    if let Some((k, item)) = items.iter().enumerate().find(|(_, x)| !x.is_number()) {
                        return Err(cx.err(
                            sources,
                            line,
                            r,
                            format!("element {} of {} in line {} of `{name}` is {}, expected a number", k, quote(key), line.no, json_kind(item)),
                            "expected an array of numbers",
                        ));
                    }
                    match *width {
                        None => *width = Some((items.len(), line.no)),
                        Some((n, first)) if n != items.len() => {
                            return Err(cx.err(
                                sources,
                                line,
                                r,
                                format!("{} in line {} of `{name}` has {} numbers, but line {first} has {n}", quote(key), line.no, items.len()),
                                format!("expected {n} numbers like line {first}, found {}", items.len()),
                            ));
                        }
                        Some(_) => {}
                    }
                    let raw = &lt[r.clone()];
                    let parts: Vec<&str> = raw.trim().trim_start_matches('[').trim_end_matches(']').split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
                    for (k, item) in items.iter().enumerate() {
                        let Value::Number(n) = item else { continue };
                        let x = number_f32(parts.get(k).copied().filter(|_| parts.len() == items.len()).unwrap_or(""), n);
                        if !x.is_finite() {
                            return Err(cx.err(sources, line, r, format!("element {k} of {} in line {} of `{name}` overflows f32", quote(key), line.no), format!("expected numbers of magnitude at most {:e}", f32::MAX)));
                        }
                        out.push(x);
                    }
                }
            }
        }
        lines.push(line);
    }
    if lines.is_empty() {
        return Err(Diagnostic::at(path_span, format!("`{name}` has no rows"), "only blank lines").with_note("a jsonl source needs at least one JSON object"));
    }

    let rows: Vec<RowPos> = lines.iter().map(|l| RowPos { line: l.no, byte: l.start as u64 }).collect();
    let mut fields = Vec::new();
    for ((f, key), col) in spec.fields.iter().zip(keys).zip(columns) {
        let train_field = match train {
            Some(t) => Some(t.fields.iter().find(|tf| tf.name == f.name).ok_or_else(|| {
                Diagnostic::at(f.name_span, format!("the train source has no field `{}` to take its encoding from", f.name), "not bound by the train source")
            })?),
            None => None,
        };
        let mut field = Field { name: f.name.clone(), values: Values::F32 { data: vec![], shape: vec![] }, vocab: None, classes: None, rows: rows.clone(), columns: vec![key.to_string()] };
        match (col, &f.kind) {
            (Column::Text(texts), FieldKind::Tokens { unit, opts, .. }) => {
                let vocab = match train_field {
                    Some(tf) => tf.vocab.clone().ok_or_else(|| Diagnostic::at(f.name_span, format!("the train field `{}` has no vocabulary", f.name), "not tokenized in train"))?,
                    None => vocab::build(texts.iter().map(String::as_str), *unit, opts),
                };
                let index = vocab::index(&vocab, opts);
                let mut ids = Vec::new();
                let mut offsets = vec![0];
                for (text, line) in texts.iter().zip(&lines) {
                    let n = vocab::encode(text, *unit, opts, &index, &mut ids);
                    if n > MAX_SEQ_LEN {
                        return Err(cx.err(
                            sources,
                            *line,
                            cx.value_range(*line, key),
                            format!("{} in line {} of `{name}` has {n} tokens, more than the limit of {MAX_SEQ_LEN}", quote(key), line.no),
                            format!("expected at most {MAX_SEQ_LEN} tokens (use `max_len`)"),
                        ));
                    }
                    offsets.push(ids.len());
                }
                field.values = Values::Seq { ids, offsets };
                field.vocab = Some(vocab);
            }
            (Column::Text(texts), _) => {
                let classes = match train_field {
                    Some(tf) => tf.classes.clone().ok_or_else(|| Diagnostic::at(f.name_span, format!("the train field `{}` has no classes", f.name), "not a `label` in train"))?,
                    None => vocab::classes(texts.iter().map(String::as_str)),
                };
                let mut data = Vec::with_capacity(texts.len());
                for (text, line) in texts.iter().zip(&lines) {
                    match classes.binary_search(text) {
                        Ok(id) => data.push(id as i64),
                        Err(_) => {
                            return Err(cx
                                .err(
                                    sources,
                                    *line,
                                    cx.value_range(*line, key),
                                    format!("label {} in line {} of `{name}` is not a class of the train data", quote(text), line.no),
                                    "not seen in train",
                                )
                                .with_note(format!("the train classes are {}", name_list(&classes, 20))));
                        }
                    }
                }
                field.values = Values::I64 { data, shape: vec![] };
                field.classes = Some(classes);
            }
            (Column::Number(data), _) => field.values = Values::F32 { data, shape: vec![] },
            (Column::Numbers(data, width), _) => field.values = Values::F32 { data, shape: vec![width.map_or(0, |w| w.0)] },
        }
        fields.push(field);
    }
    Ok(Table { path: path.to_path_buf(), rows: lines.len(), fields, format: Format::Jsonl })
}

/// A JSON number as f32: the literal parsed straight to the correctly rounded f32 when
/// available, else through f64. Overflow gives infinity.
fn number_f32(raw: &str, n: &serde_json::Number) -> f32 {
    match raw.trim().parse::<f32>() {
        Ok(x) => x,
        Err(_) => n.as_f64().map_or(f32::NAN, |x| x as f32),
    }
}

/// The byte offset of serde_json's 1-based column (counted in bytes) in `line`.
fn byte_of_column(line: &str, column: usize) -> usize {
    let mut at = column.saturating_sub(1).min(line.len());
    while !line.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The byte range of the value of top-level `key` in the JSON object `line` (the last one
/// if the key repeats, as serde_json keeps), or `None` if the line cannot be scanned.
pub(crate) fn value_span(line: &str, key: &str) -> Option<Range<usize>> {
    let b = line.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let mut found = None;
    loop {
        i = skip_ws(b, i);
        if b.get(i) == Some(&b'}') {
            return found;
        }
        let ks = i;
        let ke = skip_string(b, i)?;
        let k: String = serde_json::from_str(&line[ks..ke]).ok()?;
        i = skip_ws(b, ke);
        if b.get(i) != Some(&b':') {
            return found;
        }
        i = skip_ws(b, i + 1);
        let vs = i;
        let ve = skip_value(b, i)?;
        if k == key {
            found = Some(vs..ve);
        }
        i = skip_ws(b, ve);
        match b.get(i) {
            Some(b',') => i += 1,
            _ => return found,
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\r' | b'\n')) {
        i += 1;
    }
    i
}

fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let mut j = i + 1;
    loop {
        match b.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
}

fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match b.get(j)? {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while let Some(&c) = b.get(j) {
                if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n') {
                    break;
                }
                j += 1;
            }
            (j > i).then_some(i..j).map(|r| r.end)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_value_spans() {
        let line = r#"{"a": "x\"}", "b" : [1, [2, {"c": 3}]], "n": -1.5e3, "s": "é"}"#;
        let get = |k| value_span(line, k).map(|r| &line[r]);
        assert_eq!(get("a"), Some(r#""x\"}""#));
        assert_eq!(get("b"), Some(r#"[1, [2, {"c": 3}]]"#));
        assert_eq!(get("n"), Some("-1.5e3"));
        assert_eq!(get("s"), Some(r#""é""#));
        assert_eq!(get("c"), None);
        assert_eq!(value_span("[1]", "a"), None);
    }
}

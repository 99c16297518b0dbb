//! `csv(path, NAME = COLUMNS, ...)`: a header row, then one example per record.

use super::excerpt::{self, DECLARED_HERE, csv_field_ranges, display, excerpt, name_list, quote};
use super::{Dtype, Field, FieldKind, Format, RowPos, SourceSpec, Table, Values};
use crate::diag::{Diagnostic, SourceMap, Span};
use std::collections::HashMap;
use std::path::Path;

/// Which header columns a field reads, and whether each row is a scalar (`[]`) or a vector.
struct Binding {
    cols: Vec<usize>,
    scalar: bool,
    f32s: Vec<f32>,
    i64s: Vec<i64>,
}

pub(crate) fn load(spec: &SourceSpec, path: &Path, path_span: Span, sources: &mut SourceMap) -> Result<Table, Diagnostic> {
    let name = display(path);
    let bytes = excerpt::read_file(path, path_span)?;
    let (text, bom) = excerpt::text_file(&bytes, path, path_span, spec.span, "csv", sources)?;
    let mut reader = ::csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(text.as_bytes());
    let mut record = ::csv::ByteRecord::new();

    // The raw text of the record just read, for diagnostics.
    let raw = |start: u64, end: u64| &bytes[bom + start as usize..bom + (end as usize).min(text.len())];
    let io_error = |e: ::csv::Error| Diagnostic::at(path_span, format!("cannot read `{name}`: {e}"), "unreadable csv");

    // Header.
    let header_start = reader.position().clone();
    if !reader.read_byte_record(&mut record).map_err(io_error)? {
        return Err(Diagnostic::at(path_span, format!("`{name}` is empty"), "empty file"));
    }
    let header_end = reader.position().byte();
    let header: Vec<String> = record.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect();
    let header_pos = record_start(text.as_bytes(), record.position().unwrap_or(&header_start));
    let header_raw = raw(header_pos.byte(), header_end);
    let header_line = header_pos.line();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, h) in header.iter().enumerate() {
        if let Some(&first) = seen.get(h.as_str()) {
            let ranges = csv_field_ranges(header_raw);
            let r = ranges.get(i).cloned().unwrap_or(0..header_raw.len());
            let span = excerpt(sources, &name, header_raw, header_line, r);
            let mut d = Diagnostic::at(span, format!("duplicate column name {} in the header of `{name}`", quote(h)), "duplicate column name");
            if let Some(r0) = ranges.get(first) {
                d = d.with_label(Span::new(span.file, r0.start, r0.end), "first used here");
            }
            return Err(d.with_label(spec.span, DECLARED_HERE).with_note(format!("columns {} and {} have the same name", first + 1, i + 1)));
        }
        seen.insert(h, i);
    }

    // Bindings.
    let missing = |col: &str, span: Span| {
        Diagnostic::at(span, format!("no column {} in `{name}`", quote(col)), "not a column of the header")
            .with_note(format!("the header has columns {}", name_list(&header, 30)))
    };
    let mut bound = vec![false; header.len()];
    let mut bindings: Vec<Option<Binding>> = Vec::new();
    for f in &spec.fields {
        let b = match &f.kind {
            FieldKind::CsvColumn { column, span } => {
                let &c = seen.get(column.as_str()).ok_or_else(|| missing(column, *span))?;
                Some(Binding { cols: vec![c], scalar: true, f32s: Vec::new(), i64s: Vec::new() })
            }
            FieldKind::CsvColumns { columns } => {
                let mut cols = Vec::new();
                for (column, span) in columns {
                    cols.push(*seen.get(column.as_str()).ok_or_else(|| missing(column, *span))?);
                }
                Some(Binding { cols, scalar: false, f32s: Vec::new(), i64s: Vec::new() })
            }
            FieldKind::CsvRest { .. } => None,
            _ => {
                return Err(Diagnostic::at(f.name_span, format!("`{}` is not bound to csv columns", f.name), "expected a column name, a tuple of names or `rest`")
                    .with_label(spec.span, "in this csv source"));
            }
        };
        if let Some(b) = &b {
            for &c in &b.cols {
                bound[c] = true;
            }
        }
        bindings.push(b);
    }
    let rest: Vec<usize> = (0..header.len()).filter(|&c| !bound[c]).collect();
    let mut bindings: Vec<Binding> = spec
        .fields
        .iter()
        .zip(bindings)
        .map(|(f, b)| match (b, &f.kind) {
            (Some(b), _) => Ok(b),
            (None, FieldKind::CsvRest { span }) if rest.is_empty() => Err(Diagnostic::at(*span, format!("`rest` binds no columns of `{name}`"), "no columns left")
                .with_note("every column of the header is bound by another field")),
            (None, _) => Ok(Binding { cols: rest.clone(), scalar: false, f32s: Vec::new(), i64s: Vec::new() }),
        })
        .collect::<Result<_, _>>()?;

    // Rows.
    let mut rows: Vec<RowPos> = Vec::new();
    loop {
        let start = reader.position().clone();
        if !reader.read_byte_record(&mut record).map_err(io_error)? {
            break;
        }
        let pos = record_start(text.as_bytes(), record.position().unwrap_or(&start));
        let end = reader.position().byte();
        let row_no = rows.len() + 1;
        let row_pos = RowPos { line: pos.line(), byte: bom as u64 + pos.byte() };
        if record.len() != header.len() {
            let rec = raw(pos.byte(), end);
            let span = excerpt(sources, &name, rec, pos.line(), 0..rec.len());
            return Err(Diagnostic::at(
                span,
                format!("row {row_no} of `{name}` has {} fields, but the header has {}", record.len(), header.len()),
                format!("expected {} fields like the header, found {}", header.len(), record.len()),
            )
            .with_label(spec.span, DECLARED_HERE));
        }
        for (f, b) in spec.fields.iter().zip(bindings.iter_mut()) {
            for &c in &b.cols {
                let field = record.get(c).unwrap_or_default();
                let value = std::str::from_utf8(field).unwrap_or_default();
                let parsed = match f.dtype {
                    Dtype::F32 => parse_f32(value).map(|v| b.f32s.push(v)),
                    Dtype::I64 => parse_i64(value).map(|v| b.i64s.push(v)),
                };
                if let Err((message, label)) = parsed {
                    let rec = raw(pos.byte(), end);
                    let r = csv_field_ranges(rec).get(c).cloned().unwrap_or(0..rec.len());
                    let span = excerpt(sources, &name, rec, pos.line(), r);
                    return Err(Diagnostic::at(
                        span,
                        format!("{message} in column {} of row {row_no} of `{name}`", quote(&header[c])),
                        label,
                    )
                    .with_label(spec.span, DECLARED_HERE));
                }
            }
        }
        rows.push(row_pos);
    }
    if rows.is_empty() {
        let span = excerpt(sources, &name, header_raw, header_line, 0..header_raw.len());
        return Err(Diagnostic::at(span, format!("`{name}` has a header but no data rows"), "header only")
            .with_label(spec.span, DECLARED_HERE)
            .with_note("a csv source needs at least one row after the header"));
    }

    let n = rows.len();
    let fields = spec
        .fields
        .iter()
        .zip(bindings)
        .map(|(f, b)| {
            let shape = if b.scalar { vec![] } else { vec![b.cols.len()] };
            let values = match f.dtype {
                Dtype::F32 => Values::F32 { data: b.f32s, shape },
                Dtype::I64 => Values::I64 { data: b.i64s, shape },
            };
            Field {
                name: f.name.clone(),
                values,
                vocab: None,
                classes: None,
                rows: rows.clone(),
                columns: b.cols.iter().map(|&c| header[c].clone()).collect(),
            }
        })
        .collect();
    Ok(Table { path: path.to_path_buf(), rows: n, fields, format: Format::Csv })
}

/// The csv reader reports a record as starting where the previous one ended, which for CRLF
/// is at the `\n` (and before any skipped blank lines): move to the first byte of the record.
fn record_start(text: &[u8], pos: &::csv::Position) -> ::csv::Position {
    let mut byte = pos.byte();
    let mut line = pos.line();
    while let Some(&c) = text.get(byte as usize) {
        match c {
            b'\n' => line += 1,
            b'\r' => {}
            _ => break,
        }
        byte += 1;
    }
    let mut out = ::csv::Position::new();
    out.set_byte(byte).set_line(line).set_record(pos.record());
    out
}

fn trim(s: &str) -> &str {
    s.trim_matches(|c| c == ' ' || c == '\t')
}

/// A csv cell as a finite f32, correctly rounded. The error is (message, label).
pub(crate) fn parse_f32(raw: &str) -> Result<f32, (String, String)> {
    let s = trim(raw);
    if s.is_empty() {
        return Err(("empty field".into(), "expected a number".into()));
    }
    match s.parse::<f32>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => {
            let lower = s.to_ascii_lowercase();
            if lower.contains("inf") || lower.contains("nan") {
                Err((format!("non-finite value {}", quote(s)), "expected a finite number (NaN and infinity are not allowed)".into()))
            } else {
                Err((format!("number {} overflows f32", quote(s)), format!("expected a number of magnitude at most {:e}", f32::MAX)))
            }
        }
        Err(_) => Err((format!("invalid number {}", quote(s)), "expected a number".into())),
    }
}

/// A csv cell bound to an i64 input: `-?[0-9]+` that fits in i64.
pub(crate) fn parse_i64(raw: &str) -> Result<i64, (String, String)> {
    let s = trim(raw);
    if s.is_empty() {
        return Err(("empty field".into(), "expected an integer".into()));
    }
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err((format!("invalid integer {}", quote(s)), "expected an integer (`-?[0-9]+`)".into()));
    }
    s.parse::<i64>().map_err(|_| (format!("integer {} does not fit in i64", quote(s)), "expected an integer in the i64 range".into()))
}

/// The span of column `column` in the csv record `line` (for [`super::row_error`]): the
/// header is re-read from the start of the file to find the column's index.
pub(crate) fn column_range(path: &Path, line: &[u8], column: &str) -> Option<std::ops::Range<usize>> {
    let mut header = excerpt::read_line_at(path, 0)?;
    if header.starts_with(b"\xEF\xBB\xBF") {
        header.drain(..3);
    }
    let mut reader = ::csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(header.as_slice());
    let mut rec = ::csv::ByteRecord::new();
    reader.read_byte_record(&mut rec).ok()?;
    let index = rec.iter().position(|h| h == column.as_bytes())?;
    csv_field_ranges(line).get(index).cloned()
}

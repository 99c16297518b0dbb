//! Data sources (LANGUAGE.md §3): csv, jsonl with encoders, npy, safetensors.
//!
//! The checker turns `train = csv(...)` into a [`SourceSpec`] (it knows which model input each
//! field feeds, hence its dtype) and calls [`load`]. Everything is validated here, before any
//! compilation: a bad file, row or field becomes a [`Diagnostic`] whose primary span is an
//! excerpt of the data file (registered in the [`SourceMap`]) and whose secondary label points
//! at the source in the `.train` file.

use crate::diag::{Diagnostic, SourceMap, Span};
use std::path::PathBuf;

mod csv;
mod excerpt;
mod jsonl;
mod npy;
mod safetensors;
pub mod vocab;
#[cfg(test)]
mod tests;

/// Element type of a model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    I64,
}

impl Dtype {
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::I64 => "i64",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Jsonl,
    Npy,
    Safetensors,
}

/// One `train = ...` or `eval = ...` source, resolved by the checker.
#[derive(Debug, Clone)]
pub struct SourceSpec {
    pub format: Format,
    /// The file of csv, jsonl and safetensors sources (resolved against the .train file's
    /// directory) and the span of the path string; `None` for npy (a file per field).
    pub path: Option<(PathBuf, Span)>,
    /// The whole source call in the .train file.
    pub span: Span,
    pub fields: Vec<FieldSpec>,
}

#[derive(Debug, Clone)]
pub struct FieldSpec {
    pub name: String,
    pub name_span: Span,
    /// The dtype of the model input this field feeds.
    pub dtype: Dtype,
    pub kind: FieldKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FieldKind {
    /// `y = "label"`: one column, one value per row (per-row shape `[]`).
    CsvColumn { column: String, span: Span },
    /// `x = ("a", "b")`: several columns, per-row shape `[n]`.
    CsvColumns { columns: Vec<(String, Span)> },
    /// `x = rest`: every column no other field of this source binds, in header order.
    CsvRest { span: Span },
    /// `chars("field", ...)` / `words("field", ...)` → a variable-length id sequence.
    Tokens { field: String, span: Span, unit: TokenUnit, opts: TokenizerOpts },
    /// `label("field")` → class id (classes numbered in code-point order of the strings).
    Label { field: String, span: Span },
    /// `number("field")` → one f32.
    Number { field: String, span: Span },
    /// `numbers("field")` → f32[n], n equal on every row.
    Numbers { field: String, span: Span },
    /// `npy(x = "file.npy")`: the whole array, first axis = rows.
    NpyFile { path: PathBuf, span: Span },
    /// `safetensors(path, x = "tensor")`.
    SafetensorsTensor { tensor: String, span: Span },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenUnit {
    Chars,
    Words,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenizerOpts {
    pub min_freq: u64,
    pub bos: bool,
    pub eos: bool,
    pub max_len: Option<usize>,
}

impl Default for TokenizerOpts {
    fn default() -> Self {
        TokenizerOpts { min_freq: 1, bos: false, eos: false, max_len: None }
    }
}

/// A loaded source: every field has exactly `rows` rows.
#[derive(Debug, Clone)]
pub struct Table {
    /// The source's file (for npy, the first field's file).
    pub path: PathBuf,
    pub rows: usize,
    /// In the order of the spec's fields.
    pub fields: Vec<Field>,
    /// The file format, so that [`row_error`] knows how to find a field in a row.
    pub format: Format,
}

#[derive(Debug, Clone)]
pub struct Field {
    pub name: String,
    pub values: Values,
    /// Token vocabulary (`chars`/`words`): id → token; ids 0 `<pad>`, 1 `<unk>`, and with
    /// bos/eos 2 `<bos>`, 3 `<eos>`. `vocab.len()` is `t.vocab`.
    pub vocab: Option<Vec<String>>,
    /// Class names of `label(...)`, id → string. `classes.len()` is `y.classes`.
    pub classes: Option<Vec<String>>,
    /// Where each row came from, for errors found after loading (label ranges).
    pub rows: Vec<RowPos>,
    /// Where the field's values come from: for csv the header names of the columns, in
    /// order; for jsonl the object key; for npy the file; for safetensors the tensor name.
    pub columns: Vec<String>,
}

/// Position of one row in its file: 1-based line and the byte offset of the line start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowPos {
    pub line: u64,
    pub byte: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// Row-major, `rows × shape.iter().product()` values.
    F32 { data: Vec<f32>, shape: Vec<usize> },
    I64 { data: Vec<i64>, shape: Vec<usize> },
    /// Variable-length id sequences: row r is `ids[offsets[r]..offsets[r + 1]]`.
    Seq { ids: Vec<i64>, offsets: Vec<usize> },
}

/// Largest data file accepted (bytes): beyond this a job is not "small or mid-size".
pub const MAX_FILE_BYTES: u64 = 2 << 30;
/// Longest token sequence in one row.
pub const MAX_SEQ_LEN: usize = 65_536;

/// Loads and validates one source. When loading `eval`, `train` is the loaded train table:
/// each tokenized field reuses the train field's vocabulary (unknown tokens read as id 1),
/// each `label` field reuses its class list (an eval label not seen in train is an error).
pub fn load(spec: &SourceSpec, train: Option<&Table>, sources: &mut SourceMap) -> Result<Table, Diagnostic> {
    let path = |what: &str| {
        spec.path.as_ref().ok_or_else(|| Diagnostic::at(spec.span, format!("{what} source has no file"), "expected a path as the first argument"))
    };
    match spec.format {
        Format::Csv => {
            let (p, s) = path("a csv")?;
            csv::load(spec, p, *s, sources)
        }
        Format::Jsonl => {
            let (p, s) = path("a jsonl")?;
            jsonl::load(spec, train, p, *s, sources)
        }
        Format::Npy => npy::load(spec),
        Format::Safetensors => {
            let (p, s) = path("a safetensors")?;
            safetensors::load(spec, p, *s)
        }
    }
}

/// A diagnostic located at row `row` of `field` in `table`'s file (that line is re-read from
/// disk and registered as an excerpt), for errors found after loading, e.g. a class id out of
/// range for the loss that uses it.
pub fn row_error(
    table: &Table,
    field: &Field,
    row: usize,
    message: impl Into<String>,
    label: impl Into<String>,
    sources: &mut SourceMap,
) -> Diagnostic {
    let (message, label) = (message.into(), label.into());
    let name = excerpt::display(&table.path);
    let Some(pos) = field.rows.get(row).copied() else {
        return Diagnostic::error(message).with_note(format!("{label}: row {} of `{name}`", row + 1));
    };
    let fallback = |message: String| {
        let at = match table.format {
            Format::Csv | Format::Jsonl => format!("row {} of `{name}` (line {})", row + 1, pos.line),
            Format::Npy => format!("row {} of `{}`", row + 1, field.columns.first().map_or(name.as_str(), String::as_str)),
            Format::Safetensors => format!("row {} of tensor \"{}\" in `{name}`", row + 1, field.columns.first().map_or("", String::as_str)),
        };
        Diagnostic::error(message).with_note(format!("{label}: {at}"))
    };
    if !matches!(table.format, Format::Csv | Format::Jsonl) {
        return fallback(message);
    }
    let Some(line) = excerpt::read_line_at(&table.path, pos.byte) else {
        return fallback(message);
    };
    let range = match (table.format, field.columns.as_slice()) {
        (Format::Csv, [column]) => csv::column_range(&table.path, &line, column),
        (Format::Jsonl, [key]) => std::str::from_utf8(&line).ok().and_then(|l| jsonl::value_span(l, key)),
        _ => None,
    };
    let span = excerpt::excerpt(sources, &name, &line, pos.line, range.unwrap_or(0..line.len()));
    Diagnostic::at(span, message, label)
}

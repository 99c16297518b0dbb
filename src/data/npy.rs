//! `npy(NAME = "file.npy", ...)`: one whole array per field, first axis = rows.

use super::excerpt::{self, DECLARED_HERE, display};
use super::{Dtype, Field, FieldKind, Format, RowPos, SourceSpec, Table, Values};
use crate::diag::{Diagnostic, Span};
use ndarray::ArrayD;
use ndarray_npy::ReadNpyExt;

/// The element types a field accepts, as numpy names.
pub(crate) fn expected(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::F32 => "float32 (or float64)",
        Dtype::I64 => "int64 (or int32)",
    }
}

/// A loaded array: values converted to the field's dtype, and the full shape.
pub(crate) struct Array {
    pub values: Values,
    pub shape: Vec<usize>,
}

impl Array {
    pub fn rows(&self) -> usize {
        self.shape[0]
    }
}

pub(crate) fn load(spec: &SourceSpec) -> Result<Table, Diagnostic> {
    let mut fields = Vec::new();
    let mut first: Option<(usize, Span, String)> = None;
    for f in &spec.fields {
        let FieldKind::NpyFile { path, span } = &f.kind else {
            return Err(Diagnostic::at(f.name_span, format!("`{}` is not bound to an .npy file", f.name), "expected a file name string")
                .with_label(spec.span, "in this npy source"));
        };
        let name = display(path);
        let (words, len) = excerpt::read_file_words(path, *span)?;
        let array = read(words, len, f.dtype).map_err(|(message, label)| {
            Diagnostic::at(*span, format!("{message} in `{name}`"), label).with_label(spec.span, DECLARED_HERE)
        })?;
        let rows = array.rows();
        match &first {
            None => first = Some((rows, *span, name.clone())),
            Some((n, s, other)) if *n != rows => {
                return Err(Diagnostic::at(*span, format!("`{name}` has {rows} rows but `{other}` has {n}"), format!("expected {n} rows"))
                    .with_label(*s, format!("{n} rows")));
            }
            Some(_) => {}
        }
        fields.push(Field {
            name: f.name.clone(),
            values: array.values,
            vocab: None,
            classes: None,
            rows: (0..rows).map(|r| RowPos { line: 0, byte: r as u64 }).collect(),
            columns: vec![name],
        });
    }
    let Some((rows, _, _)) = first else {
        return Err(Diagnostic::at(spec.span, "an npy source needs at least one field", "no fields"));
    };
    let path = match spec.fields.first().map(|f| &f.kind) {
        Some(FieldKind::NpyFile { path, .. }) => path.clone(),
        _ => Default::default(),
    };
    Ok(Table { path, rows, fields, format: Format::Npy })
}

/// numpy's name of a type descriptor such as `<f4`.
fn numpy_name(descr: &str) -> String {
    let code = descr.trim_start_matches(['<', '>', '|', '=']);
    let name = match code {
        "f2" | "e" => "float16",
        "f4" | "f" => "float32",
        "f8" | "d" => "float64",
        "i1" | "b" => "int8",
        "i2" | "h" => "int16",
        "i4" | "i" => "int32",
        "i8" | "q" | "l" => "int64",
        "u1" | "B" => "uint8",
        "u2" | "H" => "uint16",
        "u4" | "I" => "uint32",
        "u8" | "Q" | "L" => "uint64",
        "b1" | "?" => "bool",
        _ => return format!("`{descr}`"),
    };
    name.to_string()
}

/// Parses a whole .npy file held in `words` (its first `len` bytes); the error is
/// (message, label).
pub(crate) fn read(words: Vec<u32>, len: usize, dtype: Dtype) -> Result<Array, (String, String)> {
    let bytes: &[u8] = &bytemuck::cast_slice::<u32, u8>(&words)[..len];
    const MAGIC: &[u8] = b"\x93NUMPY";
    let not_npy = |why: &str| ("not an .npy file".to_string(), why.to_string());
    if !bytes.starts_with(MAGIC) || bytes.len() < 10 {
        return Err(not_npy("expected an .npy file (it does not start with the npy magic string)"));
    }
    // Bound the header length by the file before the reader allocates it.
    let (header_len, prefix) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(not_npy(&format!("unsupported npy format version {v}"))),
    };
    if prefix + header_len > bytes.len() {
        return Err(not_npy("truncated npy header"));
    }
    let header = ndarray_npy::npy::header::Header::from_reader(&mut &bytes[..])
        .map_err(|e| ("malformed npy header".to_string(), e.to_string()))?;
    // The descriptor is a Python literal; a plain dtype is a string such as '<f4'.
    let literal = header.type_descriptor.to_string();
    let descr = match literal.strip_prefix(['\'', '"']).and_then(|s| s.strip_suffix(['\'', '"'])) {
        Some(s) => s.to_string(),
        None => return Err(("unsupported dtype".into(), format!("found a structured dtype, expected {}", expected(dtype)))),
    };
    let code = descr.trim_start_matches(['<', '>', '|', '=']);
    let elem = match (dtype, code) {
        (Dtype::F32, "f4") | (Dtype::I64, "i4") => 4,
        (Dtype::F32, "f8") | (Dtype::I64, "i8") => 8,
        _ => {
            return Err((
                format!("wrong dtype: found {}, expected {}", numpy_name(&descr), expected(dtype)),
                format!("holds {} values, expected {}", numpy_name(&descr), expected(dtype)),
            ));
        }
    };
    let shape = header.shape.clone();
    if shape.is_empty() {
        return Err(("a scalar array has no rows".into(), "expected an array whose first axis is the examples".into()));
    }
    if shape[0] == 0 {
        return Err(("no rows".into(), "the array's first axis has length 0".into()));
    }
    let data_len = bytes.len() - prefix - header_len;
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    match count.and_then(|c| c.checked_mul(elem)) {
        Some(n) if n == data_len => {}
        _ => {
            return Err((
                "the data does not match the header".into(),
                format!("header shape {shape:?} needs {} bytes of data, the file has {data_len}", count.map_or("too many".to_string(), |c| (c as u128 * elem as u128).to_string())),
            ));
        }
    }
    let bad = |e: ndarray_npy::ReadNpyError| ("unreadable npy data".to_string(), e.to_string());
    let data_at = prefix + header_len;
    let in_place = dtype == Dtype::F32
        && elem == 4
        && matches!(header.layout, ndarray_npy::npy::header::Layout::Standard)
        && descr.starts_with('<')
        && data_at.is_multiple_of(4);
    let values = match (dtype, elem) {
        (Dtype::F32, 4) if in_place => {
            // Little-endian f32 in C order (numpy pads headers to 64 bytes), the common case:
            // the file's own words become the values — W2-sized inputs are tens of MB, and
            // every copy is page faults before the first step. (The header was checked
            // against the data length above; the collect reuses the allocation.)
            let count = (len - data_at) / 4;
            let mut data: Vec<f32> = words.into_iter().map(|w| f32::from_bits(u32::from_le(w))).collect();
            data.copy_within(data_at / 4..data_at / 4 + count, 0);
            data.truncate(count);
            finite(data)?
        }
        (Dtype::F32, 4) => f32_values(ArrayD::<f32>::read_npy(bytes).map_err(bad)?.iter().copied())?,
        (Dtype::F32, _) => f32_values(ArrayD::<f64>::read_npy(bytes).map_err(bad)?.iter().map(|&x| x as f32))?,
        (Dtype::I64, 4) => ArrayD::<i32>::read_npy(bytes).map_err(bad)?.iter().map(|&x| x as i64).collect(),
        (Dtype::I64, _) => ArrayD::<i64>::read_npy(bytes).map_err(bad)?.iter().copied().collect(),
    };
    let per_row = shape[1..].to_vec();
    let values = match values {
        Elems::F32(data) => Values::F32 { data, shape: per_row },
        Elems::I64(data) => Values::I64 { data, shape: per_row },
    };
    Ok(Array { values, shape })
}

pub(crate) enum Elems {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl FromIterator<i64> for Elems {
    fn from_iter<I: IntoIterator<Item = i64>>(iter: I) -> Self {
        Elems::I64(iter.into_iter().collect())
    }
}

/// Collects f32 values, rejecting NaN and infinities (also those from an f64 overflowing).
pub(crate) fn f32_values(iter: impl Iterator<Item = f32>) -> Result<Elems, (String, String)> {
    // Collected first, checked in a separate pass: the collect then runs at memory speed.
    finite(iter.collect())
}

/// The values, or an error naming the first NaN or infinity.
fn finite(data: Vec<f32>) -> Result<Elems, (String, String)> {
    match data.iter().enumerate().find(|(_, x)| !x.is_finite()) {
        Some((i, x)) => Err((format!("non-finite value {x} at element {i}"), "expected finite values (NaN, infinity and values beyond the f32 range are not allowed)".into())),
        None => Ok(Elems::F32(data)),
    }
}

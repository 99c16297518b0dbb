//! `safetensors(path, NAME = "tensor", ...)`: whole tensors of one file, first axis = rows.

use super::excerpt::{self, DECLARED_HERE, display, name_list};
use super::npy::{Elems, expected, f32_values};
use super::{Dtype, Field, FieldKind, Format, RowPos, SourceSpec, Table, Values};
use crate::diag::{Diagnostic, Span};
use ::safetensors::{Dtype as StDtype, SafeTensors};
use std::path::Path;

pub(crate) fn load(spec: &SourceSpec, path: &Path, path_span: Span) -> Result<Table, Diagnostic> {
    let name = display(path);
    let bytes = excerpt::read_file(path, path_span)?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        Diagnostic::at(path_span, format!("`{name}` is not a safetensors file"), "not a safetensors file")
            .with_note(e.to_string())
            .with_label(spec.span, DECLARED_HERE)
    })?;
    let mut fields = Vec::new();
    let mut first: Option<(usize, Span, String)> = None;
    for f in &spec.fields {
        let FieldKind::SafetensorsTensor { tensor, span } = &f.kind else {
            return Err(Diagnostic::at(f.name_span, format!("`{}` is not bound to a tensor name", f.name), "expected a tensor name string")
                .with_label(spec.span, "in this safetensors source"));
        };
        let err = |message: String, label: String| {
            Diagnostic::at(*span, format!("{message} (tensor \"{tensor}\" of `{name}`)"), label).with_label(spec.span, DECLARED_HERE)
        };
        let view = match st.tensor(tensor) {
            Ok(v) => v,
            Err(_) => {
                let mut names = st.names();
                names.sort();
                return Err(Diagnostic::at(*span, format!("no tensor \"{tensor}\" in `{name}`"), "not a tensor of the file")
                    .with_label(spec.span, DECLARED_HERE)
                    .with_note(if names.is_empty() { "the file holds no tensors".to_string() } else { format!("the file holds {}", name_list(&names, 30)) }));
            }
        };
        let shape = view.shape().to_vec();
        let data = view.data();
        let elems = match (f.dtype, view.dtype()) {
            (Dtype::F32, StDtype::F32) => f32_values(data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
            (Dtype::F32, StDtype::F64) => f32_values(data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)),
            (Dtype::I64, StDtype::I64) => Ok(data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect()),
            (Dtype::I64, StDtype::I32) => Ok(data.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).collect()),
            (_, found) => {
                let found = format!("{found:?}").to_lowercase();
                return Err(err(format!("wrong dtype: found {found}, expected {}", expected(f.dtype)), format!("holds {found} values, expected {}", expected(f.dtype))));
            }
        }
        .map_err(|(m, l)| err(m, l))?;
        if shape.is_empty() {
            return Err(err("a scalar tensor has no rows".into(), "expected a tensor whose first axis is the examples".into()));
        }
        let rows = shape[0];
        if rows == 0 {
            return Err(err("no rows".into(), "the tensor's first axis has length 0".into()));
        }
        match &first {
            None => first = Some((rows, *span, tensor.clone())),
            Some((n, s, other)) if *n != rows => {
                return Err(Diagnostic::at(*span, format!("tensor \"{tensor}\" has {rows} rows but \"{other}\" has {n}"), format!("expected {n} rows"))
                    .with_label(*s, format!("{n} rows")));
            }
            Some(_) => {}
        }
        let per_row = shape[1..].to_vec();
        let values = match elems {
            Elems::F32(data) => Values::F32 { data, shape: per_row },
            Elems::I64(data) => Values::I64 { data, shape: per_row },
        };
        fields.push(Field {
            name: f.name.clone(),
            values,
            vocab: None,
            classes: None,
            rows: (0..rows).map(|r| RowPos { line: 0, byte: r as u64 }).collect(),
            columns: vec![tensor.clone()],
        });
    }
    let Some((rows, _, _)) = first else {
        return Err(Diagnostic::at(spec.span, "a safetensors source needs at least one field", "no fields"));
    };
    Ok(Table { path: path.to_path_buf(), rows, fields, format: Format::Safetensors })
}

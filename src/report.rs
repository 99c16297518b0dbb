//! Human-readable summaries printed by the CLI (`kpc check`, the `kpc run` header).

use crate::check::{Job, TensorRole};
use crate::data::{Format, Values};
use std::fmt::Write;

/// Thousands separators: 1234567 → "1,234,567".
pub fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn shape_text(shape: &[usize]) -> String {
    let d: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", d.join(", "))
}

/// What `kpc check` prints: the bound inputs and the state_dict table.
pub fn check_summary(job: &Job) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}: ok", job.path.display());
    let train = &job.data.train;
    let _ = writeln!(out, "\ndata:");
    let mut rows = vec![["train".to_string(), format!("{} rows", group_digits(train.rows as u64)), train.path.display().to_string()]];
    if let Some(e) = &job.data.eval {
        rows.push(["eval".to_string(), format!("{} rows", group_digits(e.rows as u64)), e.path.display().to_string()]);
    }
    out.push_str(&table(&rows));
    let _ = writeln!(out, "\ninputs:");
    let mut rows = Vec::new();
    for input in &job.inputs {
        let field = &train.fields[input.field];
        let mut what = source_text(train.format, &field.columns);
        if let Some(v) = &field.vocab {
            let _ = write!(what, ", vocab {}", v.len());
        }
        if let Some(c) = &field.classes {
            let _ = write!(what, ", {} classes", c.len());
        }
        if let Values::Seq { offsets, .. } = &field.values {
            let longest = offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
            let _ = write!(what, ", longest {longest}");
        }
        rows.push([input.name.clone(), input.ty.to_string(), what]);
    }
    out.push_str(&table(&rows));
    let _ = writeln!(out, "\nparameters (state_dict):");
    let mut rows = Vec::new();
    let (mut trainable, mut frozen, mut buffers) = (0u64, 0u64, 0u64);
    for t in job.state() {
        let n: u64 = t.shape.iter().map(|d| *d as u64).product();
        let role = match t.role {
            TensorRole::Param => {
                trainable += n;
                "parameter"
            }
            TensorRole::Frozen => {
                frozen += n;
                "frozen"
            }
            TensorRole::RunningMean | TensorRole::RunningVar => {
                buffers += n;
                "buffer"
            }
            TensorRole::NumBatchesTracked => {
                buffers += n;
                "buffer (i64)"
            }
        };
        rows.push([t.name.clone(), shape_text(&t.shape), format!("{:>9}  {role}", group_digits(n))]);
    }
    out.push_str(&table(&rows));
    let _ = write!(out, "\ntotal: {} trainable parameters", group_digits(trainable));
    if frozen > 0 {
        let _ = write!(out, ", {} frozen", group_digits(frozen));
    }
    let _ = writeln!(out, ", {} buffer elements", group_digits(buffers));
    out
}

/// Where a field's values come from, in a few words.
fn source_text(format: Format, columns: &[String]) -> String {
    match (format, columns) {
        (Format::Csv, [one]) => format!("csv column {one:?}"),
        (Format::Csv, [first, .., last]) => format!("csv columns {first:?} … {last:?} ({})", columns.len()),
        (Format::Jsonl, [key, ..]) => format!("jsonl key {key:?}"),
        (Format::Npy, [file, ..]) => format!("npy {file}"),
        (Format::Safetensors, [tensor, ..]) => format!("safetensors tensor {tensor:?}"),
        (f, _) => format!("{f:?}").to_lowercase(),
    }
}

/// Left-aligned columns separated by two spaces, indented by two.
fn table(rows: &[[String; 3]]) -> String {
    let w0 = rows.iter().map(|r| r[0].chars().count()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r[1].chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    for r in rows {
        let _ = writeln!(out, "  {:<w0$}  {:<w1$}  {}", r[0], r[1], r[2]);
    }
    out
}

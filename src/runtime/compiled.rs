//! A job compiled to native code: its programs scheduled and JIT-compiled into one
//! [`Executable`], with the layout that maps state tensors and outputs to memory.

use crate::check::Job;
use crate::codegen::exec::{BatchView, Executable, Layout};
use crate::codegen::schedule::{StateLayout, schedule};
use crate::data::{Table, Values};
use crate::diag::Diagnostic;
use crate::ir::op::Runtime;
use crate::passes::programs::{Programs, build};
use crate::runtime::state::StateValues;
use std::time::Instant;

pub struct CompiledJob {
    pub programs: Programs,
    pub layout: StateLayout,
    pub exec: Executable,
    /// Program indices in `exec`: train (1 or 2 programs), then eval.
    pub train: Vec<usize>,
    pub eval: Option<usize>,
    pub compile_ms: f64,
}

/// The longest sequence of each named dimension over train and eval data (arena planning).
fn max_lengths(job: &Job, layout: &StateLayout) -> Vec<i64> {
    layout
        .seq_names
        .iter()
        .map(|name| {
            let mut longest = 0usize;
            for input in job.inputs.iter().filter(|i| i.ty.seq().is_some_and(|(n, _)| n == name)) {
                for table in [Some(&job.data.train), job.data.eval.as_ref()].into_iter().flatten() {
                    if let Values::Seq { offsets, .. } = &table.fields[input.field].values {
                        longest = longest.max(offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0));
                    }
                }
            }
            longest as i64
        })
        .collect()
}

/// The most rows a train or eval batch of `job` can have.
pub fn max_batch_rows(job: &Job) -> usize {
    let most = job.data.train.rows.max(job.data.eval.as_ref().map_or(0, |e| e.rows));
    job.train.batch_size.min(most).max(1)
}

/// Builds, schedules and compiles every program of `job`.
pub fn compile(job: &Job) -> Result<CompiledJob, Diagnostic> {
    compile_with(job, false)
}

/// [`compile`], with profile marks after every kernel when `profile` is set (`--profile`).
pub fn compile_with(job: &Job, profile: bool) -> Result<CompiledJob, Diagnostic> {
    let t0 = Instant::now();
    let programs = build(job).map_err(|u| Diagnostic::at(u.span, u.what, "not supported yet"))?;
    let layout = StateLayout::new(job, &programs.opt_slots);
    let mut specs = Vec::new();
    let bug = |e: crate::codegen::jit::CodegenError| {
        if e.0.starts_with(crate::codegen::exec::TOO_MUCH_MEMORY) {
            let gib = e.0.trim_start_matches(crate::codegen::exec::TOO_MUCH_MEMORY);
            return Diagnostic::error(format!(
                "`{}` needs {gib} of working memory (parameters, gradients, optimizer state and batches of up to {} rows), more than the 8 GiB limit",
                job.path.display(),
                job.train.batch_size
            ))
            .with_note("reduce `batch_size`, the layer sizes, or the sequence length (`max_len` for words)");
        }
        if e.0.starts_with(crate::codegen::schedule::UNSUPPORTED_SEQUENCES) {
            return Diagnostic::error(format!("`{}` uses recurrent layers or sequence operations, which `kpc run` cannot compile yet", job.path.display()))
                .with_note(format!("{} (`kpc check` and `kpc graph` work on this job)", e.0));
        }
        Diagnostic::error(format!("internal compiler error: {e}")).with_note("this is a bug in kpc; please report it with the .train file")
    };
    for p in &programs.train {
        specs.push(schedule(p, job, &layout).map_err(bug)?);
    }
    let train: Vec<usize> = (0..specs.len()).collect();
    let eval = match &programs.eval {
        Some(p) => {
            specs.push(schedule(p, job, &layout).map_err(bug)?);
            Some(specs.len() - 1)
        }
        None => None,
    };
    let exec_layout = Layout {
        state: layout.state_len,
        grad: layout.state_len,
        opt: layout.opt_len,
        out: programs.outputs.len,
        scalars: Runtime::ALL.len(),
        seq_dims: layout.seq_names.len(),
    };
    let max_rows = max_batch_rows(job);
    let max_seq = max_lengths(job, &layout);
    let exec = Executable::compile(exec_layout, specs, max_rows, max_seq, profile).map_err(bug)?;
    Ok(CompiledJob { programs, layout, exec, train, eval, compile_ms: t0.elapsed().as_secs_f64() * 1e3 })
}

impl CompiledJob {
    /// Copies state values into the executable's state region.
    pub fn set_state(&mut self, v: &StateValues) {
        let state = self.exec.state.as_mut_slice();
        for (k, t) in v.tensors.iter().enumerate() {
            let off = self.layout.offset[k];
            state[off..off + t.len()].copy_from_slice(t);
        }
    }

    /// Reads the state back (for `--save`).
    pub fn state(&self, batches_tracked: i64) -> StateValues {
        let state = self.exec.state.as_slice();
        let tensors = (0..self.layout.offset.len()).map(|k| state[self.layout.offset[k]..self.layout.offset[k] + self.layout.numel[k]].to_vec()).collect();
        StateValues { tensors, batches_tracked }
    }

    pub fn set_scalar(&mut self, r: Runtime, v: f64) {
        self.exec.scalars[r.slot()] = v as f32;
    }

    pub fn output(&self, slot: usize) -> f32 {
        self.exec.out.as_slice()[slot]
    }
}

/// Contiguous batch buffers, allocated once for the largest batch and reused every step.
/// Sequences are padded with id 0 to the batch's longest row; their lengths go alongside.
pub struct BatchBuffers {
    f32s: Vec<Vec<f32>>,
    i64s: Vec<Vec<i64>>,
    /// Per input: (kind, index into the typed buffers, values per row or sequence dim).
    slots: Vec<(Slot, usize, usize)>,
    ptrs: Vec<*const u8>,
    /// Per sequence dimension: lengths of the current batch's rows.
    lengths: Vec<Vec<i32>>,
    length_ptrs: Vec<*const i32>,
    /// Per sequence dimension: the current batch's padded length.
    padded: Vec<i64>,
    /// The field whose sequence lengths order each batch (longest first), when the job
    /// has recurrent layers: their time loops skip the rows that have finished, which is
    /// a tight prefix of rows only in that order (see `codegen::kernel::Kernel::Loop`).
    order_by: Option<usize>,
    /// The current batch's rows in that order.
    order: Vec<usize>,
}

#[derive(Clone, Copy, PartialEq)]
enum Slot {
    F32,
    I64,
    Seq,
}

impl BatchBuffers {
    pub fn new(job: &Job, max_rows: usize) -> Result<BatchBuffers, Diagnostic> {
        let names = job.seq_names();
        let mut b = BatchBuffers {
            f32s: Vec::new(),
            i64s: Vec::new(),
            slots: Vec::new(),
            ptrs: Vec::new(),
            lengths: vec![vec![0; max_rows.max(1)]; names.len()],
            length_ptrs: Vec::new(),
            padded: vec![0; names.len()],
            order_by: None,
            order: Vec::with_capacity(max_rows),
        };
        let longest = |field: usize| {
            [Some(&job.data.train), job.data.eval.as_ref()]
                .into_iter()
                .flatten()
                .map(|t| match &t.fields[field].values {
                    Values::Seq { offsets, .. } => offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0),
                    _ => 0,
                })
                .max()
                .unwrap_or(0)
        };
        for input in &job.inputs {
            match &job.data.train.fields[input.field].values {
                Values::F32 { shape, .. } => {
                    let w = shape.iter().product::<usize>().max(1);
                    b.f32s.push(vec![0.0; max_rows * w]);
                    b.slots.push((Slot::F32, b.f32s.len() - 1, w));
                }
                Values::I64 { shape, .. } => {
                    let w = shape.iter().product::<usize>().max(1);
                    b.i64s.push(vec![0; max_rows * w]);
                    b.slots.push((Slot::I64, b.i64s.len() - 1, w));
                }
                Values::Seq { .. } => {
                    let (name, _) = input.ty.seq().expect("a sequence input");
                    let dim = names.iter().position(|n| n == name).expect("registered");
                    b.i64s.push(vec![0; max_rows * longest(input.field).max(1)]);
                    b.slots.push((Slot::Seq, b.i64s.len() - 1, dim));
                }
            }
        }
        // Order by the sequence input with the longest rows: it has the longest time loops,
        // where skipping finished rows saves the most.
        let recurrent = job.layers.iter().any(|l| matches!(l.kind, crate::check::LayerKind::Recurrent { .. }));
        if recurrent {
            b.order_by = job
                .inputs
                .iter()
                .filter(|i| matches!(job.data.train.fields[i.field].values, Values::Seq { .. }))
                .max_by_key(|i| longest(i.field))
                .map(|i| i.field);
        }
        Ok(b)
    }

    /// Gathers `rows` of `table` into the buffers and returns the batch view. With
    /// recurrent layers the rows are placed longest first (ties in the given order); every
    /// loss, metric and gradient is a sum over rows, so only rounding can tell.
    pub fn fill<'a>(&'a mut self, job: &Job, table: &Table, rows: &[usize], rng_key: u64) -> BatchView<'a> {
        let mut order = std::mem::take(&mut self.order);
        order.clear();
        order.extend_from_slice(rows);
        if let Some(field) = self.order_by
            && let Values::Seq { offsets, .. } = &table.fields[field].values
        {
            order.sort_by_key(|&r| std::cmp::Reverse(offsets[r + 1] - offsets[r]));
        }
        self.fill_in_order(job, table, &order);
        self.order = order;
        self.view(rows.len(), rng_key)
    }

    fn fill_in_order(&mut self, job: &Job, table: &Table, rows: &[usize]) {
        for (input, &(slot, k, w)) in job.inputs.iter().zip(&self.slots) {
            match (&table.fields[input.field].values, slot) {
                (Values::F32 { data, .. }, Slot::F32) => {
                    let dst = &mut self.f32s[k];
                    for (i, r) in rows.iter().enumerate() {
                        dst[i * w..(i + 1) * w].copy_from_slice(&data[r * w..(r + 1) * w]);
                    }
                }
                (Values::I64 { data, .. }, Slot::I64) => {
                    let dst = &mut self.i64s[k];
                    for (i, r) in rows.iter().enumerate() {
                        dst[i * w..(i + 1) * w].copy_from_slice(&data[r * w..(r + 1) * w]);
                    }
                }
                (Values::Seq { ids, offsets }, Slot::Seq) => {
                    let dim = w;
                    let t = rows.iter().map(|&r| offsets[r + 1] - offsets[r]).max().unwrap_or(0);
                    self.padded[dim] = t as i64;
                    let dst = &mut self.i64s[k][..rows.len() * t];
                    dst.fill(0);
                    for (i, r) in rows.iter().enumerate() {
                        let row = &ids[offsets[*r]..offsets[r + 1]];
                        dst[i * t..i * t + row.len()].copy_from_slice(row);
                        self.lengths[dim][i] = row.len() as i32;
                    }
                }
                _ => unreachable!("train and eval fields have the same kind"),
            }
        }
    }

    fn view(&mut self, rows: usize, rng_key: u64) -> BatchView<'_> {
        self.ptrs.clear();
        for &(slot, k, _) in &self.slots {
            self.ptrs.push(if slot == Slot::F32 { self.f32s[k].as_ptr() as *const u8 } else { self.i64s[k].as_ptr() as *const u8 });
        }
        self.length_ptrs.clear();
        self.length_ptrs.extend(self.lengths.iter().map(|l| l.as_ptr()));
        BatchView { inputs: &self.ptrs, lengths: &self.length_ptrs, rows, seq: &self.padded, rng_key }
    }
}

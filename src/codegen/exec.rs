//! An executable: the compiled step functions of one job together with the memory they run
//! on (state, gradients, optimizer state, arena, outputs, runtime scalars), allocated once.
//! The training loop only fills input pointers, sizes and scalars and calls steps.

use super::emit_kernels::Frame;
use super::jit::{CodegenError, Compiled, Jit};
use super::kernel::Kernel;
use super::memory::{self, Temp};
use super::step::{StepFn, define_step};

/// Most working memory a job may plan (arena, state, gradients, optimizer state): beyond
/// this a job is refused with a message rather than attempting the allocation.
pub const MAX_WORKING_BYTES: u64 = 8 << 30;

/// The prefix of the error for a job that would need more than [`MAX_WORKING_BYTES`].
pub const TOO_MUCH_MEMORY: &str = "working memory: ";

/// One program before compilation (a train step, an eval step, a micro-step, …).
pub struct ProgramSpec {
    pub name: String,
    pub kernels: Vec<Kernel>,
    pub temps: Vec<Temp>,
}

/// Sizes of the regions every program of a job shares (in f32 elements).
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub state: usize,
    pub grad: usize,
    pub opt: usize,
    pub out: usize,
    pub scalars: usize,
    pub seq_dims: usize,
}

/// 64-byte-aligned f32 storage (vector loads and the GEMM kernel like aligned rows).
pub struct Aligned {
    words: Vec<[f32; 16]>,
    len: usize,
}

impl Aligned {
    pub fn zeros(len: usize) -> Aligned {
        Aligned { words: vec![[0.0; 16]; len.div_ceil(16).max(1)], len }
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.words.as_flattened()[..self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.words.as_flattened_mut()[..self.len]
    }

    fn ptr(&mut self) -> *mut u8 {
        self.words.as_mut_ptr() as *mut u8
    }
}

/// A batch as the compiled code sees it: one pointer per input buffer, one per sequence
/// dimension's lengths, the row count and the padded lengths.
pub struct BatchView<'a> {
    pub inputs: &'a [*const u8],
    pub lengths: &'a [*const i32],
    pub rows: usize,
    pub seq: &'a [i64],
    /// The dropout key for this step and micro-batch.
    pub rng_key: u64,
}

pub struct Executable {
    _code: Compiled,
    steps: Vec<StepFn>,
    pub layout: Layout,
    pub state: Aligned,
    pub grad: Aligned,
    pub opt: Aligned,
    pub out: Aligned,
    pub scalars: Vec<f32>,
    arena: Aligned,
    /// Batch size and padded lengths the arena was planned for.
    max_rows: usize,
    max_seq: Vec<i64>,
}

impl Executable {
    /// Plans memory for batches of at most `max_rows` rows and padded lengths `max_seq`,
    /// then compiles every program (in order: `step(i)` runs `programs[i]`), with profile
    /// marks after every kernel when `profile` is set (see [`super::profile`]).
    pub fn compile(layout: Layout, mut programs: Vec<ProgramSpec>, max_rows: usize, max_seq: Vec<i64>, profile: bool) -> Result<Executable, CodegenError> {
        let mut arena_bytes = 0usize;
        for p in &mut programs {
            arena_bytes = arena_bytes.max(memory::plan(&mut p.kernels, &p.temps, max_rows as i64, &max_seq));
        }
        let total = arena_bytes as u64 + 4 * (2 * layout.state + layout.opt) as u64;
        if total > MAX_WORKING_BYTES {
            return Err(CodegenError(format!("{TOO_MUCH_MEMORY}{:.1} GiB", total as f64 / (1u64 << 30) as f64)));
        }
        let mut jit = Jit::new()?;
        let mut ids = Vec::new();
        for (i, p) in programs.iter().enumerate() {
            ids.push(define_step(&mut jit, &p.name, layout.seq_dims, &p.kernels, profile.then_some(i as i64))?);
        }
        let code = jit.finish()?;
        // SAFETY: each id was defined by define_step in this module; `code` lives in `self`.
        let steps = ids.into_iter().map(|id| unsafe { StepFn::new(&code, id) }).collect();
        Ok(Executable {
            _code: code,
            steps,
            state: Aligned::zeros(layout.state),
            grad: Aligned::zeros(layout.grad),
            opt: Aligned::zeros(layout.opt),
            out: Aligned::zeros(layout.out),
            scalars: vec![0.0; layout.scalars.max(1)],
            arena: Aligned::zeros(arena_bytes / 4),
            layout,
            max_rows,
            max_seq,
        })
    }

    /// Runs program `i` on `batch`.
    ///
    /// # Panics
    /// If the batch exceeds the sizes memory was planned for: that is a bug in the caller
    /// (the batcher is built from the same data), never a user error.
    pub fn run(&mut self, i: usize, batch: &BatchView) {
        assert!(batch.rows <= self.max_rows, "batch of {} rows exceeds the planned {}", batch.rows, self.max_rows);
        assert_eq!(batch.seq.len(), self.max_seq.len());
        assert!(batch.seq.iter().zip(&self.max_seq).all(|(t, m)| t <= m), "padded length exceeds the planned one");
        assert_eq!(batch.lengths.len(), self.layout.seq_dims);
        let frame = Frame {
            state: self.state.ptr(),
            grad: self.grad.ptr(),
            opt: self.opt.ptr(),
            arena: self.arena.ptr(),
            out: self.out.ptr(),
            inputs: batch.inputs.as_ptr(),
            lengths: batch.lengths.as_ptr(),
            scalars: self.scalars.as_ptr(),
            batch: batch.rows as i64,
            seq: batch.seq.as_ptr(),
            rng_key: batch.rng_key,
        };
        // SAFETY: every region is allocated at the layout's sizes and the arena at the
        // planned size for batches up to max_rows/max_seq, checked above.
        unsafe { self.steps[i].call(&frame) };
    }
}

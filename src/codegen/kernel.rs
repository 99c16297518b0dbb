//! The loop-level program codegen consumes: buffers with symbolic sizes and a list of
//! kernels (GEMM calls, fused elementwise maps, reductions, gathers and scatters).
//!
//! The scheduling pass (`passes::schedule`) turns a graph program into this form: it fuses
//! elementwise chains into one [`Kernel::Map`], maps matrix products to [`Kernel::Gemm`]
//! with transposes as strides, and plans memory. Keeping this level separate lets every
//! kernel be tested against plain Rust, independent of the graph.

/// A runtime size: `factor · B^batch · (T[seq] + offset)` where `B` is the batch size and
/// `T[k]` the padded length of sequence dimension `k` of the current batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Size {
    pub factor: i64,
    pub batch: bool,
    pub seq: Option<(usize, i64)>,
}

impl Size {
    /// The largest value this size takes for batches up to `b` rows and padded sequence
    /// lengths up to `t`.
    pub fn max(self, b: i64, t: &[i64]) -> i64 {
        self.eval(b, t)
    }

    pub const fn fixed(n: i64) -> Size {
        Size { factor: n, batch: false, seq: None }
    }

    pub const fn batch(factor: i64) -> Size {
        Size { factor, batch: true, seq: None }
    }

    /// The product of two sizes (at most one batch factor and one sequence factor).
    pub fn times(self, o: Size) -> Size {
        debug_assert!(!(self.batch && o.batch) && (self.seq.is_none() || o.seq.is_none()), "{self:?} * {o:?}");
        Size { factor: self.factor * o.factor, batch: self.batch || o.batch, seq: self.seq.or(o.seq) }
    }

    /// Evaluated for concrete `b` and padded lengths `t`.
    pub fn eval(self, b: i64, t: &[i64]) -> i64 {
        let mut v = self.factor;
        if self.batch {
            v *= b;
        }
        if let Some((k, off)) = self.seq {
            v *= (t[k] + off).max(0);
        }
        v
    }

    pub fn is_fixed(self) -> bool {
        !self.batch && self.seq.is_none()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Elem {
    F32,
    /// Class ids and token ids.
    I64,
    /// Sequence lengths.
    I32,
}

/// Where a buffer lives. Offsets are in bytes from the region's base pointer; arena offsets
/// are planned for the largest batch and sequence lengths the data can produce, so a
/// smaller batch uses a prefix of its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Region {
    /// Parameters and batchnorm running statistics (state_dict order).
    State,
    /// Gradients of the trainable parameters.
    Grad,
    /// Optimizer state (momentum buffers, Adam moments).
    OptState,
    /// Intermediates, placed by the memory planner.
    Arena,
    /// Intermediate `k` before memory planning ([`super::memory::plan`] rewrites every
    /// `Temp` into an `Arena` offset).
    Temp(usize),
    /// Batch input `k` (its own pointer).
    Input(usize),
    /// Per-row valid lengths of sequence dimension `k` (i32).
    Lengths(usize),
    /// Program outputs (f64 accumulators: loss sums, counts, metric sums).
    Out,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Buf {
    pub region: Region,
    pub offset: usize,
    pub elem: Elem,
}

/// Runtime scalars a program reads (learning rate, bias corrections, …), by index into the
/// scalar array the caller passes.
pub type ScalarSlot = usize;

/// A scalar expression evaluated per element of a map.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// Input `k` of the map at the current index.
    In(usize),
    Const(f32),
    /// A runtime scalar.
    Scalar(ScalarSlot),
    /// The enclosing [`Kernel::Loop`]'s step index `t`, as f32.
    LoopVar,
    /// The index along the innermost axis of the iteration space, as f32 (arg-max and
    /// top-k need column numbers). Loops using it run scalar.
    InnerIndex,
    Neg(Box<Expr>),
    Add(Box<Expr>, Box<Expr>),
    Sub(Box<Expr>, Box<Expr>),
    Mul(Box<Expr>, Box<Expr>),
    Div(Box<Expr>, Box<Expr>),
    Max(Box<Expr>, Box<Expr>),
    Min(Box<Expr>, Box<Expr>),
    Sqrt(Box<Expr>),
    Abs(Box<Expr>),
    Exp(Box<Expr>),
    Log(Box<Expr>),
    Tanh(Box<Expr>),
    Erf(Box<Expr>),
    /// `if a > b { t } else { f }`.
    SelectGt(Box<Expr>, Box<Expr>, Box<Expr>, Box<Expr>),
    /// `if a == b { t } else { f }`.
    SelectEq(Box<Expr>, Box<Expr>, Box<Expr>, Box<Expr>),
}

/// Short constructors, so kernel templates read like the formulas they implement.
pub mod ex {
    use super::Expr;

    pub fn input(k: usize) -> Expr {
        Expr::In(k)
    }
    pub fn c(v: f32) -> Expr {
        Expr::Const(v)
    }
    pub fn add(a: Expr, b: Expr) -> Expr {
        Expr::Add(Box::new(a), Box::new(b))
    }
    pub fn sub(a: Expr, b: Expr) -> Expr {
        Expr::Sub(Box::new(a), Box::new(b))
    }
    pub fn mul(a: Expr, b: Expr) -> Expr {
        Expr::Mul(Box::new(a), Box::new(b))
    }
    pub fn div(a: Expr, b: Expr) -> Expr {
        Expr::Div(Box::new(a), Box::new(b))
    }
    pub fn neg(a: Expr) -> Expr {
        Expr::Neg(Box::new(a))
    }
    pub fn exp(a: Expr) -> Expr {
        Expr::Exp(Box::new(a))
    }
    pub fn log(a: Expr) -> Expr {
        Expr::Log(Box::new(a))
    }
    pub fn max(a: Expr, b: Expr) -> Expr {
        Expr::Max(Box::new(a), Box::new(b))
    }
    pub fn min(a: Expr, b: Expr) -> Expr {
        Expr::Min(Box::new(a), Box::new(b))
    }
    pub fn sqrt(a: Expr) -> Expr {
        Expr::Sqrt(Box::new(a))
    }
    pub fn abs(a: Expr) -> Expr {
        Expr::Abs(Box::new(a))
    }
    pub fn tanh(a: Expr) -> Expr {
        Expr::Tanh(Box::new(a))
    }
    pub fn erf(a: Expr) -> Expr {
        Expr::Erf(Box::new(a))
    }
    pub fn sigmoid(a: Expr) -> Expr {
        div(c(1.0), add(c(1.0), exp(neg(a))))
    }
    /// `if a > b { t } else { f }`
    pub fn gt(a: Expr, b: Expr, t: Expr, f: Expr) -> Expr {
        Expr::SelectGt(Box::new(a), Box::new(b), Box::new(t), Box::new(f))
    }
    /// `if a == b { t } else { f }`
    pub fn eq(a: Expr, b: Expr, t: Expr, f: Expr) -> Expr {
        Expr::SelectEq(Box::new(a), Box::new(b), Box::new(t), Box::new(f))
    }
}

/// How a map or reduction reads a buffer: element (i0, i1, …) of the iteration space is at
/// `buf + t · step + Σ i_k · strides[k]` (in elements), `t` being the enclosing
/// [`Kernel::Loop`]'s index (0 outside loops). A zero stride broadcasts.
#[derive(Debug, Clone, PartialEq)]
pub struct Access {
    pub buf: Buf,
    pub strides: Vec<Size>,
    pub step: Size,
}

impl Access {
    pub fn new(buf: Buf, strides: Vec<Size>) -> Access {
        Access { buf, strides, step: Size::fixed(0) }
    }

    /// Contiguous row-major access over `shape` (the last axis has stride 1).
    pub fn contiguous(buf: Buf, shape: &[Size]) -> Access {
        let mut strides = vec![Size::fixed(1); shape.len()];
        for k in (0..shape.len().saturating_sub(1)).rev() {
            strides[k] = strides[k + 1].times(shape[k + 1]);
        }
        Access::new(buf, strides)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
}

/// A strided matrix view: element (r, c) at `buf + r·rs + c·cs` (elements), and for batched
/// products matrix `i` starts `i · batch_stride` further.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatView {
    pub buf: Buf,
    pub rs: Size,
    pub cs: Size,
    pub batch_stride: Size,
    /// Offset per step of the enclosing [`Kernel::Loop`] (elements).
    pub step: Size,
}

#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // a program holds tens of kernels; boxing buys nothing
pub enum Kernel {
    /// `C = C·accumulate + A·B` (`m×k` times `k×n`), repeated `batch` times.
    Gemm { m: Size, n: Size, k: Size, batch: Size, a: MatView, b: MatView, c: MatView, accumulate: bool },
    /// `outputs[j][idx] = exprs[j](inputs at idx)` over the iteration space `shape`.
    Map { shape: Vec<Size>, inputs: Vec<Access>, outputs: Vec<(Access, Expr)> },
    /// `out[idx with reduced axes dropped] (op)= expr(inputs at idx)`; `out` strides are zero
    /// along the reduced axes. With `init`, the output is first set to the op's identity.
    Reduce { shape: Vec<Size>, inputs: Vec<Access>, expr: Expr, op: ReduceOp, out: Access, init: bool },
    /// `dst[r, :] = table[ids[r], :]` for `rows` rows of `width` (an embedding lookup).
    Gather { rows: Size, width: usize, ids: Buf, table: Buf, dst: Buf },
    /// `table[ids[r], :] += src[r, :]`, skipping `skip` ids (the padding row).
    ScatterAdd { rows: Size, width: usize, ids: Buf, src: Buf, table: Buf, skip: Option<i64> },
    /// Zero `len` elements.
    Zero { buf: Buf, len: Size },
    /// `out[r] = x[r, ids[r]]` for `rows` rows of `cols` (0 where the id is outside
    /// `[0, cols)`, e.g. an ignored target).
    Pick { rows: Size, cols: usize, x: Buf, ids: Buf, out: Buf },
    /// `dx[r, ids[r]] += g[r]` (skipping ids outside `[0, cols)`).
    PutAdd { rows: Size, cols: usize, g: Buf, ids: Buf, dx: Buf },
    /// Dropout's keep-and-scale mask: `out[i] = 1/(1−p)` when the counter-based hash of
    /// (frame key, site, i) clears `p`, else 0 — see [`dropout_keep`].
    DropoutMask { len: Size, p: f32, site: u64, out: Buf },
    /// For each of `rows` rows, copies `len` elements from `src + r·src_stride` to
    /// `dst + r·dst_stride` (any element type: slices of id sequences).
    CopyRows { rows: Size, len: Size, src: Buf, src_stride: Size, dst: Buf, dst_stride: Size },
    /// `out[b, :] = x[b, len_b − 1, :]` (or, with `scatter`, `out[b, len_b − 1, :] = x[b, :]`)
    /// for `[B, steps, width]` sequences; `lengths` holds f32 lengths.
    LastStep { steps: Size, width: usize, x: Buf, lengths: Buf, out: Buf, scatter: bool },
    /// Runs `body` for t = 0, 1, …, count − 1 (or backwards), the time loop of recurrent
    /// layers; accesses inside offset by `t · step`. With `rows` (per-row f32 lengths), the
    /// body's batch size `B` is, at step t, the number of leading rows up to the last one
    /// still running (`1 + max{i : rows[i] > t}`): rows after it are skipped, not computed
    /// and masked. The runtime orders each batch by decreasing length so that this prefix
    /// is tight; rows inside it that have finished are still masked by the body.
    Loop { count: Size, reverse: bool, rows: Option<Buf>, body: Vec<Kernel> },
}

/// SplitMix64's finaliser: a bijective mix with good avalanche.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// MurmurHash3's 32-bit finaliser: a bijective mix that vectorises on i32 lanes.
pub fn mix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The 32-bit seed of one dropout site in one step: the high half of
/// `mix64(key ^ site · 0x9E3779B97F4A7C15)`.
pub fn dropout_seed(key: u64, site: u64) -> u32 {
    (mix64(key ^ site.wrapping_mul(0x9e37_79b9_7f4a_7c15)) >> 32) as u32
}

/// The dropout generator, shared by generated code and tests: element `i` of a dropout site
/// is kept when the top 24 bits of `mix32(seed + i)` (wrapping, `seed` from
/// [`dropout_seed`]), as a fraction of 2^24, are at least `p`. `key` mixes the seed's dropout
/// stream, the optimizer step and the micro-batch (the runtime computes it per step).
/// Counting on 32-bit lanes lets the mask be drawn four elements at a time.
pub fn dropout_keep(key: u64, site: u64, i: u64, p: f32) -> bool {
    let h = mix32(dropout_seed(key, site).wrapping_add(i as u32));
    ((h >> 8) as f32) * (1.0 / 16_777_216.0) >= p
}

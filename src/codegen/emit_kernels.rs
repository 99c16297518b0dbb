//! Kernels → Cranelift instructions inside one step function.
//!
//! A compiled step is `extern "C" fn(&Frame)`. The entry block loads the frame's fields once;
//! each kernel becomes a loop nest (or a GEMM call) reading and writing buffers at
//! `region base + offset`. The innermost loop is vectorised (f32x4 plus a scalar tail) when
//! every access is contiguous or broadcast along it and the expression has a vector form.

use super::emit::{counted_loop, counted_loop_carry, mem};
use super::jit::Imports;
use super::kernel::*;
use super::expr_dag::Dag;
use super::profile;
use super::vmath;
use cranelift_codegen::ir::{BlockArg, InstBuilder, MemFlagsData, Type, Value, condcodes::FloatCC, condcodes::IntCC, types};
use cranelift_frontend::FunctionBuilder;

/// What a compiled step reads. The layout is shared with the runtime (`#[repr(C)]`).
#[repr(C)]
#[derive(Debug)]
pub struct Frame {
    pub state: *mut u8,
    pub grad: *mut u8,
    pub opt: *mut u8,
    pub arena: *mut u8,
    pub out: *mut u8,
    /// One pointer per batch input.
    pub inputs: *const *const u8,
    /// One pointer per sequence dimension: per-row valid lengths (i32).
    pub lengths: *const *const i32,
    pub scalars: *const f32,
    /// Rows in this batch.
    pub batch: i64,
    /// Padded length per sequence dimension for this batch.
    pub seq: *const i64,
    /// The dropout generator's key for this step (see `kernel::dropout_keep`).
    pub rng_key: u64,
}

const FRAME_STATE: i32 = 0;
const FRAME_GRAD: i32 = 8;
const FRAME_OPT: i32 = 16;
const FRAME_ARENA: i32 = 24;
const FRAME_OUT: i32 = 32;
const FRAME_INPUTS: i32 = 40;
const FRAME_LENGTHS: i32 = 48;
const FRAME_SCALARS: i32 = 56;
const FRAME_BATCH: i32 = 64;
const FRAME_SEQ: i32 = 72;
const FRAME_KEY: i32 = 80;

/// Values loaded from the frame at function entry.
#[derive(Clone)]
pub struct Env {
    pub ptr: Type,
    state: Value,
    grad: Value,
    opt: Value,
    arena: Value,
    out: Value,
    inputs: Value,
    lengths: Value,
    scalars: Value,
    pub batch: Value,
    seq_ptr: Value,
    seq: Vec<Value>,
    key: Value,
    /// The index of the enclosing time loop, if any.
    loop_var: Option<Value>,
    /// When compiled for `--profile`: this program's index in the profile table.
    pub profile: Option<i64>,
}

fn trusted() -> MemFlagsData {
    MemFlagsData::trusted()
}

impl Env {
    /// Loads the frame (`frame` is the function's pointer argument).
    pub fn load(b: &mut FunctionBuilder, ptr: Type, frame: Value, seq_dims: usize) -> Env {
        let ld = |b: &mut FunctionBuilder, off: i32| b.ins().load(ptr, trusted(), frame, off);
        let state = ld(b, FRAME_STATE);
        let grad = ld(b, FRAME_GRAD);
        let opt = ld(b, FRAME_OPT);
        let arena = ld(b, FRAME_ARENA);
        let out = ld(b, FRAME_OUT);
        let inputs = ld(b, FRAME_INPUTS);
        let lengths = ld(b, FRAME_LENGTHS);
        let scalars = ld(b, FRAME_SCALARS);
        let batch = b.ins().load(types::I64, trusted(), frame, FRAME_BATCH);
        let seq_ptr = ld(b, FRAME_SEQ);
        let seq = (0..seq_dims).map(|k| b.ins().load(types::I64, trusted(), seq_ptr, (k * 8) as i32)).collect();
        let key = b.ins().load(types::I64, trusted(), frame, FRAME_KEY);
        Env { ptr, state, grad, opt, arena, out, inputs, lengths, scalars, batch, seq_ptr, seq, key, loop_var: None, profile: None }
    }

    /// A runtime size as an `i64` value.
    pub fn size(&self, b: &mut FunctionBuilder, s: Size) -> Value {
        let mut v = b.ins().iconst(types::I64, s.factor);
        if s.batch {
            v = b.ins().imul(v, self.batch);
        }
        if let Some((k, off)) = s.seq {
            let t = b.ins().iadd_imm_s(self.seq[k], off);
            let zero = b.ins().iconst(types::I64, 0);
            let t = b.ins().smax(t, zero);
            v = b.ins().imul(v, t);
        }
        v
    }

    /// The base address of a buffer.
    pub fn base(&self, b: &mut FunctionBuilder, buf: Buf) -> Value {
        let region = match buf.region {
            Region::State => self.state,
            Region::Grad => self.grad,
            Region::OptState => self.opt,
            Region::Arena => self.arena,
            Region::Temp(k) => panic!("temporary {k} reached codegen unplanned: run memory::plan first"),
            Region::Out => self.out,
            Region::Input(k) => b.ins().load(self.ptr, trusted(), self.inputs, (k * 8) as i32),
            Region::Lengths(k) => b.ins().load(self.ptr, trusted(), self.lengths, (k * 8) as i32),
        };
        if buf.offset == 0 { region } else { b.ins().iadd_imm_s(region, buf.offset as i64) }
    }

    /// The address of a buffer for the current time step: `base + t · step`.
    pub fn stepped(&self, b: &mut FunctionBuilder, buf: Buf, step: Size) -> Value {
        let base = self.base(b, buf);
        match self.loop_var {
            Some(t) if !(step.is_fixed() && step.factor == 0) => {
                let s = self.size(b, step);
                let off = b.ins().imul(t, s);
                let off = b.ins().imul_imm_s(off, elem_bytes(buf.elem));
                b.ins().iadd(base, off)
            }
            _ => base,
        }
    }

    /// The time loop's index as f32 (0 outside loops).
    pub fn loop_index_f32(&self, b: &mut FunctionBuilder) -> Value {
        match self.loop_var {
            Some(t) => b.ins().fcvt_from_sint(types::F32, t),
            None => b.ins().f32const(0.0),
        }
    }

    pub fn scalar(&self, b: &mut FunctionBuilder, slot: ScalarSlot) -> Value {
        b.ins().load(types::F32, trusted(), self.scalars, (slot * 4) as i32)
    }

    pub fn seq_ptr(&self) -> Value {
        self.seq_ptr
    }
}

fn elem_bytes(e: Elem) -> i64 {
    match e {
        Elem::F32 | Elem::I32 => 4,
        Elem::I64 => 8,
    }
}

/// Emits one kernel, followed by a profile mark when profiling (a time loop's body kernels
/// are marked one by one instead).
pub fn emit(b: &mut FunctionBuilder, env: &Env, imports: &mut Imports, k: &Kernel) {
    emit_kernel(b, env, imports, k);
    if let Some(program) = env.profile
        && !matches!(k, Kernel::Loop { .. })
    {
        let class = profile::class_of(k) + if env.loop_var.is_some() { profile::IN_LOOP } else { 0 };
        profile_mark(b, imports, program, class);
    }
}

/// A call to [`profile::kpc_profile_mark`].
pub fn profile_mark(b: &mut FunctionBuilder, imports: &mut Imports, program: i64, class: i64) {
    let f = imports.func(b, "kpc_profile_mark");
    let p = b.ins().iconst(types::I64, program);
    let c = b.ins().iconst(types::I64, class);
    b.ins().call(f, &[p, c]);
}

fn emit_kernel(b: &mut FunctionBuilder, env: &Env, imports: &mut Imports, k: &Kernel) {
    match k {
        Kernel::Gemm { m, n, k, batch, a, b: bm, c, accumulate } => emit_gemm(b, env, imports, *m, *n, *k, *batch, a, bm, c, *accumulate),
        Kernel::Map { shape, inputs, outputs } => emit_map(b, env, shape, inputs, outputs),
        Kernel::Reduce { shape, inputs, expr, op, out, init } => emit_reduce(b, env, shape, inputs, expr, *op, out, *init),
        Kernel::Gather { rows, width, ids, table, dst } => emit_gather(b, env, *rows, *width, *ids, *table, *dst, None, false),
        Kernel::ScatterAdd { rows, width, ids, src, table, skip } => emit_gather(b, env, *rows, *width, *ids, *table, *src, *skip, true),
        Kernel::Zero { buf, len } => {
            let f = imports.func(b, "kpc_zero");
            let p = env.stepped(b, *buf, Size::fixed(0));
            let n = env.size(b, *len);
            let bytes = b.ins().imul_imm_s(n, elem_bytes(buf.elem));
            b.ins().call(f, &[p, bytes]);
        }
        Kernel::Pick { rows, cols, x, ids, out } => emit_pick(b, env, *rows, *cols, *x, *ids, *out, false),
        Kernel::PutAdd { rows, cols, g, ids, dx } => emit_pick(b, env, *rows, *cols, *dx, *ids, *g, true),
        Kernel::DropoutMask { len, p, site, out } => emit_dropout(b, env, *len, *p, *site, *out),
        Kernel::CopyRows { rows, len, src, src_stride, dst, dst_stride } => {
            let eb = elem_bytes(src.elem);
            let (n, l) = (env.size(b, *rows), env.size(b, *len));
            let (ss, ds) = (env.size(b, *src_stride), env.size(b, *dst_stride));
            let (sb, db) = (env.stepped(b, *src, Size::fixed(0)), env.stepped(b, *dst, Size::fixed(0)));
            let zero = b.ins().iconst(types::I64, 0);
            let ty = if eb == 8 { types::I64 } else { types::I32 };
            counted_loop(b, types::I64, zero, n, 1, |b, r| {
                let so = b.ins().imul(r, ss);
                let doff = b.ins().imul(r, ds);
                counted_loop(b, types::I64, zero, l, 1, |b, i| {
                    let si = b.ins().iadd(so, i);
                    let di = b.ins().iadd(doff, i);
                    let sp = b.ins().imul_imm_s(si, eb);
                    let dp = b.ins().imul_imm_s(di, eb);
                    let sp = b.ins().iadd(sb, sp);
                    let dp = b.ins().iadd(db, dp);
                    let v = b.ins().load(ty, mem(), sp, 0);
                    b.ins().store(mem(), v, dp, 0);
                });
            });
        }
        Kernel::LastStep { steps, width, x, lengths, out, scatter } => {
            let n = env.batch;
            let t = env.size(b, *steps);
            let (xb, lb, ob) = (env.base(b, *x), env.base(b, *lengths), env.base(b, *out));
            let zero = b.ins().iconst(types::I64, 0);
            let w = *width as i64;
            counted_loop(b, types::I64, zero, n, 1, |b, r| {
                let lp = b.ins().imul_imm_s(r, 4);
                let lp = b.ins().iadd(lb, lp);
                let lf = b.ins().load(types::F32, mem(), lp, 0);
                let len = b.ins().fcvt_to_sint_sat(types::I64, lf);
                let last = b.ins().iadd_imm_s(len, -1);
                // Row r of the sequence tensor at step `last`, and row r of the per-row tensor.
                let seq_row = b.ins().imul(r, t);
                let seq_row = b.ins().iadd(seq_row, last);
                let seq_off = b.ins().imul_imm_s(seq_row, w * 4);
                let seq_ptr = b.ins().iadd(if *scatter { ob } else { xb }, seq_off);
                let row_off = b.ins().imul_imm_s(r, w * 4);
                let row_ptr = b.ins().iadd(if *scatter { xb } else { ob }, row_off);
                let wv = b.ins().iconst(types::I64, w);
                super::emit::f32_loop(b, types::I64, wv, |b, byte, lane| {
                    let (from, to) = if *scatter { (row_ptr, seq_ptr) } else { (seq_ptr, row_ptr) };
                    let fp = b.ins().iadd(from, byte);
                    let tp = b.ins().iadd(to, byte);
                    let v = b.ins().load(lane, mem(), fp, 0);
                    b.ins().store(mem(), v, tp, 0);
                });
            });
        }
        Kernel::Loop { count, reverse, rows, body } => {
            let n = env.size(b, *count);
            let zero = b.ins().iconst(types::I64, 0);
            counted_loop(b, types::I64, zero, n, 1, |b, i| {
                let t = if *reverse {
                    let last = b.ins().iadd_imm_s(n, -1);
                    b.ins().isub(last, i)
                } else {
                    i
                };
                let batch = match rows {
                    Some(lengths) => running_rows(b, env, *lengths, t),
                    None => env.batch,
                };
                let inner = Env { loop_var: Some(t), batch, ..env.clone() };
                for k in body {
                    emit(b, &inner, imports, k);
                }
            });
        }
    }
}

/// `1 + max{i : lengths[i] > t}` (0 if none): the rows a packed time loop computes at step
/// `t`, found by scanning down from the last row.
fn running_rows(b: &mut FunctionBuilder, env: &Env, lengths: Buf, t: Value) -> Value {
    let base = env.base(b, lengths);
    let tf = b.ins().fcvt_from_sint(types::F32, t);
    let header = b.create_block();
    let check = b.create_block();
    let exit = b.create_block();
    b.append_block_param(header, types::I64);
    b.append_block_param(exit, types::I64);
    b.ins().jump(header, &[BlockArg::Value(env.batch)]);
    b.switch_to_block(header);
    let r = b.block_params(header)[0];
    let any = b.ins().icmp_imm_s(IntCC::SignedGreaterThan, r, 0);
    b.ins().brif(any, check, &[], exit, &[BlockArg::Value(r)]);
    b.switch_to_block(check);
    let prev = b.ins().iadd_imm_s(r, -1);
    let p = super::emit::element_ptr(b, env.ptr, base, prev, 4);
    let len = b.ins().load(types::F32, mem(), p, 0);
    let running = b.ins().fcmp(FloatCC::GreaterThan, len, tf);
    b.ins().brif(running, exit, &[BlockArg::Value(r)], header, &[BlockArg::Value(prev)]);
    b.switch_to_block(exit);
    b.block_params(exit)[0]
}

#[allow(clippy::too_many_arguments)]
fn emit_gemm(b: &mut FunctionBuilder, env: &Env, imports: &mut Imports, m: Size, n: Size, k: Size, batch: Size, a: &MatView, bm: &MatView, c: &MatView, accumulate: bool) {
    let f = imports.func(b, "kpc_sgemm");
    let (mv, nv, kv) = (env.size(b, m), env.size(b, n), env.size(b, k));
    let count = env.size(b, batch);
    let bases = [env.stepped(b, c.buf, c.step), env.stepped(b, a.buf, a.step), env.stepped(b, bm.buf, bm.step)];
    let views = [c, a, bm];
    let strides: Vec<[Value; 3]> = views.iter().map(|v| [env.size(b, v.rs), env.size(b, v.cs), env.size(b, v.batch_stride)]).collect();
    let read_c = b.ins().iconst(types::I32, i64::from(accumulate));
    let one = b.ins().f32const(1.0);
    let zero = b.ins().iconst(types::I64, 0);
    counted_loop(b, types::I64, zero, count, 1, |b, i| {
        let mut ptrs = [bases[0], bases[1], bases[2]];
        for (p, s) in ptrs.iter_mut().zip(&strides) {
            let off = b.ins().imul(i, s[2]);
            let off = b.ins().ishl_imm_s(off, 2);
            *p = b.ins().iadd(*p, off);
        }
        b.ins().call(f, &[mv, nv, kv, ptrs[0], strides[0][0], strides[0][1], read_c, ptrs[1], strides[1][0], strides[1][1], ptrs[2], strides[2][0], strides[2][1], one, one]);
    });
}

/// Per-access pointer of the current element, maintained across the loop nest.
struct Cursor {
    elem: Elem,
    /// Byte strides per axis.
    strides: Vec<Value>,
    base: Value,
}

fn cursors(b: &mut FunctionBuilder, env: &Env, accesses: &[&Access]) -> Vec<Cursor> {
    accesses
        .iter()
        .map(|a| {
            let base = env.stepped(b, a.buf, a.step);
            let strides = a
                .strides
                .iter()
                .map(|s| {
                    let v = env.size(b, *s);
                    b.ins().imul_imm_s(v, elem_bytes(a.buf.elem))
                })
                .collect();
            Cursor { elem: a.buf.elem, strides, base }
        })
        .collect()
}

/// Can the innermost axis run four lanes at a time?
fn vectorizable(accesses: &[&Access], exprs: &[&Expr]) -> bool {
    let unit = |s: &Size| s.is_fixed() && (s.factor == 1 || s.factor == 0);
    // Integer buffers (ids, lengths) vectorise only when broadcast along the inner axis.
    let ok = |a: &&Access| match a.buf.elem {
        Elem::F32 => a.strides.last().is_none_or(unit),
        Elem::I64 | Elem::I32 => is_zero_stride(a.strides.last()),
    };
    accesses.iter().all(ok) && exprs.iter().all(|e| !uses_inner_index(e))
}

fn uses_inner_index(e: &Expr) -> bool {
    match e {
        Expr::InnerIndex => true,
        Expr::In(_) | Expr::Const(_) | Expr::Scalar(_) | Expr::LoopVar => false,
        Expr::Neg(a) | Expr::Sqrt(a) | Expr::Abs(a) | Expr::Exp(a) | Expr::Log(a) | Expr::Tanh(a) | Expr::Erf(a) => uses_inner_index(a),
        Expr::Add(a, b) | Expr::Sub(a, b) | Expr::Mul(a, b) | Expr::Div(a, b) | Expr::Max(a, b) | Expr::Min(a, b) => {
            uses_inner_index(a) || uses_inner_index(b)
        }
        Expr::SelectGt(a, b, c, d) | Expr::SelectEq(a, b, c, d) => [a, b, c, d].iter().any(|x| uses_inner_index(x)),
    }
}

/// How the innermost loop of a nest runs.
#[derive(Clone, Copy, PartialEq)]
enum Vectorise {
    No,
    /// Four lanes at a time.
    Lanes,
    /// Four lanes at a time, four vectors per iteration: for short bodies, where the loop's
    /// own compare, branch and increments are a large share (long bodies are not unrolled:
    /// it would only make more code to compile).
    Unrolled,
}

impl Vectorise {
    fn choose(vectorizable: bool, dag: &Dag) -> Vectorise {
        match (vectorizable, dag.cost() <= 24) {
            (false, _) => Vectorise::No,
            (true, true) => Vectorise::Unrolled,
            (true, false) => Vectorise::Lanes,
        }
    }
}

/// The body of a loop nest: (builder, each cursor's pointer, lane type, innermost index).
type InnerBody<'a> = dyn FnMut(&mut FunctionBuilder, &[Value], Type, Value) + 'a;

/// Walks the loop nest over `shape`, calling `inner(b, pointers, lane_type)` at each innermost
/// position with the current pointer of every cursor.
fn loop_nest(
    b: &mut FunctionBuilder,
    env: &Env,
    shape: &[Size],
    cursors: &[Cursor],
    vector: Vectorise,
    inner: &mut InnerBody,
) {
    let extents: Vec<Value> = shape.iter().map(|s| env.size(b, *s)).collect();
    let starts: Vec<Value> = cursors.iter().map(|c| c.base).collect();
    let inner_extent = shape.last().filter(|s| s.is_fixed()).map(|s| s.factor);
    nest(b, &extents, inner_extent, cursors, 0, &starts, vector, inner);
}

/// `inner_extent`, when the innermost extent is known at compile time, leaves out the
/// loops that would run zero times (less code, faster compiles).
#[allow(clippy::too_many_arguments)]
fn nest(
    b: &mut FunctionBuilder,
    extents: &[Value],
    inner_extent: Option<i64>,
    cursors: &[Cursor],
    axis: usize,
    ptrs: &[Value],
    vector: Vectorise,
    inner: &mut InnerBody,
) {
    if extents.is_empty() {
        let zero = b.ins().iconst(types::I64, 0);
        inner(b, ptrs, types::F32, zero);
        return;
    }
    let zero = b.ins().iconst(types::I64, 0);
    let last = axis + 1 == extents.len();
    let at = |b: &mut FunctionBuilder, i: Value| advance(b, cursors, ptrs, axis, i);
    if !last {
        counted_loop(b, types::I64, zero, extents[axis], 1, |b, i| {
            let p = at(b, i);
            nest(b, extents, inner_extent, cursors, axis + 1, &p, vector, inner);
        });
        return;
    }
    let n = extents[axis];
    // Which of the three loops can run at all (all of them when the extent is symbolic).
    let may = |runs: fn(i64) -> bool| inner_extent.is_none_or(runs);
    let scalar_from = if vector != Vectorise::No {
        // Unrolled: four vectors per iteration, then single vectors, then scalars.
        let unrolled_end = if vector == Vectorise::Unrolled { b.ins().band_imm_s(n, !15i64) } else { zero };
        if vector == Vectorise::Unrolled && may(|n| n >= 16) {
            counted_loop(b, types::I64, zero, unrolled_end, 16, |b, i| {
                for u in 0..4 {
                    let iu = if u == 0 { i } else { b.ins().iadd_imm_s(i, 4 * u) };
                    let p = at(b, iu);
                    inner(b, &p, types::F32X4, iu);
                }
            });
        }
        let vec_end = b.ins().band_imm_s(n, !3i64);
        if may(if vector == Vectorise::Unrolled { |n| n % 16 >= 4 } else { |n| n >= 4 }) {
            counted_loop(b, types::I64, unrolled_end, vec_end, 4, |b, i| {
                let p = at(b, i);
                inner(b, &p, types::F32X4, i);
            });
        }
        if !may(|n| n % 4 != 0) {
            return;
        }
        vec_end
    } else {
        zero
    };
    counted_loop(b, types::I64, scalar_from, n, 1, |b, i| {
        let p = at(b, i);
        inner(b, &p, types::F32, i);
    });
}

/// Every cursor's pointer moved to index `i` along `axis` from `ptrs`.
fn advance(b: &mut FunctionBuilder, cursors: &[Cursor], ptrs: &[Value], axis: usize, i: Value) -> Vec<Value> {
    cursors
        .iter()
        .zip(ptrs)
        .map(|(c, p)| {
            let off = b.ins().imul(i, c.strides[axis]);
            b.ins().iadd(*p, off)
        })
        .collect()
}

/// Loads an access at `ptr` as lanes of `lane` (a broadcast access is loaded once and splat).
fn load(b: &mut FunctionBuilder, c: &Cursor, ptr: Value, lane: Type, broadcast_inner: bool) -> Value {
    match c.elem {
        Elem::F32 if lane == types::F32X4 && broadcast_inner => {
            let s = b.ins().load(types::F32, mem(), ptr, 0);
            b.ins().splat(types::F32X4, s)
        }
        Elem::F32 => b.ins().load(lane, mem(), ptr, 0),
        Elem::I64 | Elem::I32 => {
            let ty = if c.elem == Elem::I64 { types::I64 } else { types::I32 };
            let i = b.ins().load(ty, mem(), ptr, 0);
            let f = b.ins().fcvt_from_sint(types::F32, i);
            if lane == types::F32 { f } else { b.ins().splat(lane, f) }
        }
    }
}

fn is_zero_stride(s: Option<&Size>) -> bool {
    matches!(s, Some(s) if s.is_fixed() && s.factor == 0)
}

fn select_cmp(b: &mut FunctionBuilder, lane: Type, cc: FloatCC, p: Value, q: Value, t: Value, f: Value) -> Value {
    vmath::select(b, lane, cc, p, q, t, f)
}

fn emit_map(b: &mut FunctionBuilder, env: &Env, shape: &[Size], inputs: &[Access], outputs: &[(Access, Expr)]) {
    let mut all: Vec<&Access> = inputs.iter().collect();
    all.extend(outputs.iter().map(|(a, _)| a));
    let exprs: Vec<&Expr> = outputs.iter().map(|(_, e)| e).collect();
    let vector = vectorizable(&all, &exprs);
    let curs = cursors(b, env, &all);
    let broadcast: Vec<bool> = all.iter().map(|a| is_zero_stride(a.strides.last())).collect();
    let n_in = inputs.len();
    let dag = Dag::new(&exprs);
    let read: Vec<bool> = (0..n_in).map(|k| dag.reads(k)).collect();
    let vector = Vectorise::choose(vector, &dag);
    loop_nest(b, env, shape, &curs, vector, &mut |b, ptrs, lane, index| {
        let vals: Vec<Value> = (0..n_in).map(|k| if read[k] { load(b, &curs[k], ptrs[k], lane, broadcast[k]) } else { ptrs[k] }).collect();
        for (j, v) in dag.eval(b, lane, &vals, index, env).into_iter().enumerate() {
            b.ins().store(mem(), v, ptrs[n_in + j], 0);
        }
    });
}

#[allow(clippy::too_many_arguments)]
fn emit_reduce(b: &mut FunctionBuilder, env: &Env, shape: &[Size], inputs: &[Access], expr: &Expr, op: ReduceOp, out: &Access, init: bool) {
    let identity = match op {
        ReduceOp::Sum => 0.0,
        ReduceOp::Max => f32::NEG_INFINITY,
        ReduceOp::Min => f32::INFINITY,
    };
    if init {
        // The output's own index space: the reduced axes (zero stride) collapse to extent 1.
        let out_shape: Vec<Size> = shape.iter().zip(&out.strides).map(|(s, st)| if st.is_fixed() && st.factor == 0 { Size::fixed(1) } else { *s }).collect();
        emit_map(b, env, &out_shape, &[], &[(out.clone(), Expr::Const(identity))]);
    }
    let mut all: Vec<&Access> = inputs.iter().collect();
    all.push(out);
    let inner_reduced = is_zero_stride(out.strides.last());
    let vector = vectorizable(&all, &[expr]);
    let curs = cursors(b, env, &all);
    let broadcast: Vec<bool> = all.iter().map(|a| is_zero_stride(a.strides.last())).collect();
    let n_in = inputs.len();
    let dag = Dag::new(&[expr]);
    if inner_reduced && vector && !shape.is_empty() {
        return emit_row_reduce(b, env, shape, &curs, &broadcast, &dag, op, identity);
    }
    // Along a kept inner axis, four outputs accumulate at once; along a reduced inner axis
    // (argmax-style expressions that need the column index) the loop runs scalar.
    let vector = Vectorise::choose(vector && !inner_reduced, &dag);
    loop_nest(b, env, shape, &curs, vector, &mut |b, ptrs, lane, index| {
        let vals: Vec<Value> = (0..n_in).map(|k| load(b, &curs[k], ptrs[k], lane, broadcast[k])).collect();
        let v = dag.eval(b, lane, &vals, index, env)[0];
        let old = b.ins().load(lane, mem(), ptrs[n_in], 0);
        let new = combine(b, lane, op, old, v);
        b.ins().store(mem(), new, ptrs[n_in], 0);
    });
}

fn combine(b: &mut FunctionBuilder, lane: Type, op: ReduceOp, acc: Value, v: Value) -> Value {
    match op {
        ReduceOp::Sum => b.ins().fadd(acc, v),
        ReduceOp::Max => select_cmp(b, lane, FloatCC::GreaterThan, v, acc, v, acc),
        ReduceOp::Min => select_cmp(b, lane, FloatCC::LessThan, v, acc, v, acc),
    }
}

/// A reduction along the innermost axis (row sums, row maxima): per row, four lanes
/// accumulate in a register, are combined pairwise at the end of the row, then the scalar
/// tail and the output's old value are folded in. The last cursor is the output's.
#[allow(clippy::too_many_arguments)]
fn emit_row_reduce(b: &mut FunctionBuilder, env: &Env, shape: &[Size], curs: &[Cursor], broadcast: &[bool], dag: &Dag, op: ReduceOp, identity: f32) {
    let n_in = curs.len() - 1;
    let (outer, last) = shape.split_at(shape.len() - 1);
    let n = env.size(b, last[0]);
    let axis = shape.len() - 1;
    loop_nest(b, env, outer, curs, Vectorise::No, &mut |b, row, _, _| {
        // One element (or four) of the row folded into the accumulator.
        let fold = |lane: Type| {
            move |b: &mut FunctionBuilder, i: Value, acc: Value| {
                let p = advance(b, curs, row, axis, i);
                let vals: Vec<Value> = (0..n_in).map(|k| load(b, &curs[k], p[k], lane, broadcast[k])).collect();
                let v = dag.eval(b, lane, &vals, i, env)[0];
                combine(b, lane, op, acc, v)
            }
        };
        let zero = b.ins().iconst(types::I64, 0);
        let vec_end = b.ins().band_imm_s(n, !3i64);
        let id = b.ins().f32const(identity);
        let init = b.ins().splat(types::F32X4, id);
        let lanes = counted_loop_carry(b, zero, vec_end, 4, init, fold(types::F32X4));
        let l: Vec<Value> = (0..4u8).map(|k| b.ins().extractlane(lanes, k)).collect();
        let lo = combine(b, types::F32, op, l[0], l[1]);
        let hi = combine(b, types::F32, op, l[2], l[3]);
        let folded = combine(b, types::F32, op, lo, hi);
        let total = counted_loop_carry(b, vec_end, n, 1, folded, fold(types::F32));
        let old = b.ins().load(types::F32, mem(), row[n_in], 0);
        let new = combine(b, types::F32, op, old, total);
        b.ins().store(mem(), new, row[n_in], 0);
    });
}

/// `row[r] = m[r, ids[r]]` (pick) or `m[r, ids[r]] += row[r]` (put-add), for ids in range.
#[allow(clippy::too_many_arguments)]
fn emit_pick(b: &mut FunctionBuilder, env: &Env, rows: Size, cols: usize, m: Buf, ids: Buf, row: Buf, put: bool) {
    let n = env.size(b, rows);
    let ids_base = env.base(b, ids);
    let m_base = env.base(b, m);
    let row_base = env.base(b, row);
    let zero = b.ins().iconst(types::I64, 0);
    counted_loop(b, types::I64, zero, n, 1, |b, r| {
        let id_off = b.ins().imul_imm_s(r, 8);
        let id_ptr = b.ins().iadd(ids_base, id_off);
        let id = b.ins().load(types::I64, mem(), id_ptr, 0);
        let row_off = b.ins().imul_imm_s(r, 4);
        let row_ptr = b.ins().iadd(row_base, row_off);
        // Unsigned comparison folds `id < 0` into `id >= cols`.
        let in_range = b.ins().icmp_imm_s(IntCC::UnsignedLessThan, id, cols as i64);
        let hit = b.create_block();
        let miss = b.create_block();
        let done = b.create_block();
        b.ins().brif(in_range, hit, &[], miss, &[]);
        b.switch_to_block(hit);
        let base = b.ins().imul_imm_s(r, cols as i64);
        let idx = b.ins().iadd(base, id);
        let off = b.ins().imul_imm_s(idx, 4);
        let p = b.ins().iadd(m_base, off);
        if put {
            let g = b.ins().load(types::F32, mem(), row_ptr, 0);
            let old = b.ins().load(types::F32, mem(), p, 0);
            let new = b.ins().fadd(old, g);
            b.ins().store(mem(), new, p, 0);
        } else {
            let v = b.ins().load(types::F32, mem(), p, 0);
            b.ins().store(mem(), v, row_ptr, 0);
        }
        b.ins().jump(done, &[]);
        b.switch_to_block(miss);
        if !put {
            let z = b.ins().f32const(0.0);
            b.ins().store(mem(), z, row_ptr, 0);
        }
        b.ins().jump(done, &[]);
        b.switch_to_block(done);
    });
}

/// SplitMix64's finaliser in Cranelift (see `kernel::mix64`).
fn mix64(b: &mut FunctionBuilder, z: Value) -> Value {
    let t = b.ins().ushr_imm_s(z, 30);
    let z = b.ins().bxor(z, t);
    let z = b.ins().imul_imm_s(z, 0xbf58_476d_1ce4_e5b9_u64 as i64);
    let t = b.ins().ushr_imm_s(z, 27);
    let z = b.ins().bxor(z, t);
    let z = b.ins().imul_imm_s(z, 0x94d0_49bb_1331_11eb_u64 as i64);
    let t = b.ins().ushr_imm_s(z, 31);
    b.ins().bxor(z, t)
}

/// MurmurHash3's finaliser (see `kernel::mix32`) on i32 or i32x4 values.
fn mix32(b: &mut FunctionBuilder, h: Value, c1: Value, c2: Value) -> Value {
    let t = b.ins().ushr_imm_s(h, 16);
    let h = b.ins().bxor(h, t);
    let h = b.ins().imul(h, c1);
    let t = b.ins().ushr_imm_s(h, 13);
    let h = b.ins().bxor(h, t);
    let h = b.ins().imul(h, c2);
    let t = b.ins().ushr_imm_s(h, 16);
    b.ins().bxor(h, t)
}

/// `out[i] = keep(i) ? 1/(1−p) : 0` with `kernel::dropout_keep`'s generator, four lanes at
/// a time with a scalar tail.
fn emit_dropout(b: &mut FunctionBuilder, env: &Env, len: Size, p: f32, site: u64, out: Buf) {
    let n = env.size(b, len);
    let base = env.base(b, out);
    let scale = if p < 1.0 { 1.0 / (1.0 - p) } else { 0.0 };
    // The site's 32-bit seed for this step, once per kernel.
    let salt = b.ins().iconst(types::I64, site.wrapping_mul(0x9e37_79b9_7f4a_7c15) as i64);
    let k = b.ins().bxor(env.key, salt);
    let k = mix64(b, k);
    let k = b.ins().ushr_imm_s(k, 32);
    let seed = b.ins().ireduce(types::I32, k);
    for (lane_ty, float_ty, step) in [(types::I32X4, types::F32X4, 4i64), (types::I32, types::F32, 1)] {
        let splat_i = |b: &mut FunctionBuilder, v: Value| if step == 4 { b.ins().splat(lane_ty, v) } else { v };
        let splat_f = |b: &mut FunctionBuilder, v: f32| {
            let c = b.ins().f32const(v);
            if step == 4 { b.ins().splat(float_ty, c) } else { c }
        };
        let c1 = b.ins().iconst(types::I32, 0x85eb_ca6b_u32 as i32 as i64);
        let c2 = b.ins().iconst(types::I32, 0xc2b2_ae35_u32 as i32 as i64);
        let (c1, c2) = (splat_i(b, c1), splat_i(b, c2));
        let seedv = splat_i(b, seed);
        // Lane offsets 0, 1, 2, 3 (or 0 for the scalar tail).
        let lanes = if step == 4 {
            let z = b.ins().iconst(types::I32, 0);
            let mut v = b.ins().splat(types::I32X4, z);
            for l in 1..4u8 {
                let c = b.ins().iconst(types::I32, i64::from(l));
                v = b.ins().insertlane(v, c, l);
            }
            v
        } else {
            b.ins().iconst(types::I32, 0)
        };
        let unit = splat_f(b, 1.0 / 16_777_216.0);
        let pv = splat_f(b, p);
        let keep_v = splat_f(b, scale);
        let drop_v = splat_f(b, 0.0);
        let (start, end) = if step == 4 {
            let zero = b.ins().iconst(types::I64, 0);
            (zero, b.ins().band_imm_s(n, !3i64))
        } else {
            (b.ins().band_imm_s(n, !3i64), n)
        };
        counted_loop(b, types::I64, start, end, step, |b, i| {
            let i32v = b.ins().ireduce(types::I32, i);
            let iv = splat_i(b, i32v);
            let idx = b.ins().iadd(iv, lanes);
            let h = b.ins().iadd(seedv, idx);
            let h = mix32(b, h, c1, c2);
            let top = b.ins().ushr_imm_s(h, 8);
            let f = b.ins().fcvt_from_sint(float_ty, top);
            let u = b.ins().fmul(f, unit);
            let v = vmath::select(b, float_ty, FloatCC::GreaterThanOrEqual, u, pv, keep_v, drop_v);
            let off = b.ins().ishl_imm_s(i, 2);
            let ptr = b.ins().iadd(base, off);
            b.ins().store(mem(), v, ptr, 0);
        });
    }
}

/// Gather (`dst[r] = table[ids[r]]`) or scatter-add (`table[ids[r]] += src[r]`) of rows.
#[allow(clippy::too_many_arguments)]
fn emit_gather(b: &mut FunctionBuilder, env: &Env, rows: Size, width: usize, ids: Buf, table: Buf, rowbuf: Buf, skip: Option<i64>, scatter: bool) {
    let n = env.size(b, rows);
    let ids_base = env.base(b, ids);
    let table_base = env.base(b, table);
    let row_base = env.base(b, rowbuf);
    let zero = b.ins().iconst(types::I64, 0);
    let w = width as i64;
    counted_loop(b, types::I64, zero, n, 1, |b, r| {
        let id_ptr = b.ins().imul_imm_s(r, 8);
        let id_ptr = b.ins().iadd(ids_base, id_ptr);
        let id = b.ins().load(types::I64, mem(), id_ptr, 0);
        let body = |b: &mut FunctionBuilder| {
            let t_off = b.ins().imul_imm_s(id, w * 4);
            let t_row = b.ins().iadd(table_base, t_off);
            let r_off = b.ins().imul_imm_s(r, w * 4);
            let r_row = b.ins().iadd(row_base, r_off);
            let wv = b.ins().iconst(types::I64, w);
            super::emit::f32_loop(b, types::I64, wv, |b, byte, lane| {
                let tp = b.ins().iadd(t_row, byte);
                let rp = b.ins().iadd(r_row, byte);
                if scatter {
                    let old = b.ins().load(lane, mem(), tp, 0);
                    let add = b.ins().load(lane, mem(), rp, 0);
                    let new = b.ins().fadd(old, add);
                    b.ins().store(mem(), new, tp, 0);
                } else {
                    let v = b.ins().load(lane, mem(), tp, 0);
                    b.ins().store(mem(), v, rp, 0);
                }
            });
        };
        match skip {
            Some(s) => {
                let is_skip = b.ins().icmp_imm_s(IntCC::Equal, id, s);
                let then_b = b.create_block();
                let done = b.create_block();
                b.ins().brif(is_skip, done, &[], then_b, &[]);
                b.switch_to_block(then_b);
                body(b);
                b.ins().jump(done, &[]);
                b.switch_to_block(done);
            }
            None => body(b),
        }
    });
}


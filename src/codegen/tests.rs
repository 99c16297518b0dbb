#![allow(clippy::needless_range_loop)] // index loops mirror the buffer layouts being tested
use super::emit::{f32_loop, mem};
use super::emit_kernels::Frame;
use super::jit::Jit;
use super::kernel::*;
use super::step::{StepFn, define_step};
use cranelift_codegen::ir::{InstBuilder, types};

#[test]
fn generated_relu_affine_matches_rust() {
    let mut jit = Jit::new().expect("jit");
    let ptr = jit.ptr;
    let id = jit
        .define("relu_affine", jit.signature(3), |b, _| {
            let entry = b.create_block();
            b.append_block_params_for_function_params(entry);
            b.switch_to_block(entry);
            let (src, dst, n) = (b.block_params(entry)[0], b.block_params(entry)[1], b.block_params(entry)[2]);
            f32_loop(b, ptr, n, |b, byte, ty| {
                let s = b.ins().iadd(src, byte);
                let d = b.ins().iadd(dst, byte);
                let x = b.ins().load(ty, mem(), s, 0);
                let (two, zero) = if ty == types::F32 {
                    (b.ins().f32const(2.0), b.ins().f32const(0.0))
                } else {
                    let t = b.ins().f32const(2.0);
                    let z = b.ins().f32const(0.0);
                    (b.ins().splat(ty, t), b.ins().splat(ty, z))
                };
                let y = b.ins().fmul(x, two);
                let y = b.ins().fmax(y, zero);
                b.ins().store(mem(), y, d, 0);
            });
            b.ins().return_(&[]);
            Ok(())
        })
        .expect("define");
    let code = jit.finish().expect("finish");
    let f: extern "C" fn(*const f32, *mut f32, usize) = unsafe { std::mem::transmute(code.address(id)) };
    let src: Vec<f32> = (0..11).map(|i| i as f32 - 5.0).collect();
    let mut dst = vec![0.0f32; 11];
    f(src.as_ptr(), dst.as_mut_ptr(), src.len());
    let want: Vec<f32> = src.iter().map(|x| (x * 2.0).max(0.0)).collect();
    assert_eq!(dst, want);
}

#[test]
fn gemm_kernel_handles_transposed_strides() {
    // C[2×3] = A[2×4] · Bᵀ where B is stored 3×4 (a transposed product by strides).
    let a: Vec<f32> = (0..8).map(|i| i as f32).collect();
    let bt: Vec<f32> = (0..12).map(|i| (i as f32) * 0.5).collect();
    let mut c = vec![1.0f32; 6];
    unsafe { super::host::kpc_sgemm(2, 3, 4, c.as_mut_ptr(), 3, 1, 1, a.as_ptr(), 4, 1, bt.as_ptr(), 1, 4, 1.0, 1.0) };
    for i in 0..2 {
        for j in 0..3 {
            let dot: f32 = (0..4).map(|k| a[i * 4 + k] * bt[j * 4 + k]).sum();
            assert_eq!(c[i * 3 + j], 1.0 + dot);
        }
    }
}

/// An empty frame over `arena`: one row, no inputs, no sequences. Tests override fields.
fn frame(arena: *mut u8) -> Frame {
    static NO_SEQ: [i64; 0] = [];
    Frame {
        state: std::ptr::null_mut(),
        grad: std::ptr::null_mut(),
        opt: std::ptr::null_mut(),
        arena,
        out: std::ptr::null_mut(),
        inputs: std::ptr::null(),
        lengths: std::ptr::null(),
        scalars: std::ptr::null(),
        batch: 1,
        seq: NO_SEQ.as_ptr(),
        rng_key: 0,
    }
}

/// Compiles `kernels` into one step and runs it once on `frame`.
fn execute(kernels: &[Kernel], seq_dims: usize, frame: &Frame) {
    let mut jit = Jit::new().expect("jit");
    let id = define_step(&mut jit, "step", seq_dims, kernels, None).expect("define");
    let code = jit.finish().expect("finish");
    let step = unsafe { StepFn::new(&code, id) };
    unsafe { step.call(frame) };
}

/// Runs `kernels` once with an arena of `arena` f32s and batch size `batch`.
fn run(kernels: &[Kernel], arena: &mut [f32], ids: &[i64], batch: i64, scalars: &[f32]) {
    let inputs = [ids.as_ptr() as *const u8];
    let lens: [*const i32; 1] = [std::ptr::null()];
    let seq = [0i64];
    let f = Frame { inputs: inputs.as_ptr(), lengths: lens.as_ptr(), scalars: scalars.as_ptr(), batch, seq: seq.as_ptr(), ..frame(arena.as_mut_ptr() as *mut u8) };
    execute(kernels, 1, &f);
}

fn arena(offset_f32: usize) -> Buf {
    Buf { region: Region::Arena, offset: offset_f32 * 4, elem: Elem::F32 }
}

#[test]
fn map_broadcasts_a_bias_and_applies_relu() {
    // y[b, c] = max(x[b, c] + bias[c], 0) for B = 3 rows of 7 (vector body and scalar tail).
    let (b, c) = (3i64, 7usize);
    let mut mem = vec![0.0f32; 64];
    for i in 0..21 {
        mem[i] = i as f32 - 10.0;
    }
    for j in 0..c {
        mem[21 + j] = j as f32 * 0.5;
    }
    let shape = vec![Size::batch(1), Size::fixed(c as i64)];
    let k = Kernel::Map {
        shape,
        inputs: vec![
            Access::new(arena(0), vec![Size::fixed(c as i64), Size::fixed(1)]),
            Access::new(arena(21), vec![Size::fixed(0), Size::fixed(1)]),
        ],
        outputs: vec![(
            Access::new(arena(32), vec![Size::fixed(c as i64), Size::fixed(1)]),
            Expr::Max(Box::new(Expr::Add(Box::new(Expr::In(0)), Box::new(Expr::In(1)))), Box::new(Expr::Const(0.0))),
        )],
    };
    let snapshot = mem.clone();
    run(&[k], &mut mem, &[], b, &[]);
    for r in 0..3 {
        for j in 0..c {
            let want = (snapshot[r * c + j] + snapshot[21 + j]).max(0.0);
            assert_eq!(mem[32 + r * c + j], want, "({r}, {j})");
        }
    }
}

#[test]
fn reduce_sums_rows_and_columns_and_takes_row_max() {
    let (rows, cols) = (5usize, 6usize);
    let mut mem = vec![0.0f32; 64];
    for i in 0..rows * cols {
        mem[i] = ((i * 7) % 11) as f32 - 3.0;
    }
    let x = Access::new(arena(0), vec![Size::fixed(cols as i64), Size::fixed(1)]);
    let shape = vec![Size::batch(1), Size::fixed(cols as i64)];
    let col_sum = Kernel::Reduce {
        shape: shape.clone(),
        inputs: vec![x.clone()],
        expr: Expr::In(0),
        op: ReduceOp::Sum,
        out: Access::new(arena(40), vec![Size::fixed(0), Size::fixed(1)]),
        init: true,
    };
    let row_max = Kernel::Reduce {
        shape,
        inputs: vec![x],
        expr: Expr::In(0),
        op: ReduceOp::Max,
        out: Access::new(arena(50), vec![Size::fixed(1), Size::fixed(0)]),
        init: true,
    };
    let snapshot = mem.clone();
    run(&[col_sum, row_max], &mut mem, &[], rows as i64, &[]);
    for j in 0..cols {
        let want: f32 = (0..rows).map(|r| snapshot[r * cols + j]).sum();
        assert_eq!(mem[40 + j], want);
    }
    for r in 0..rows {
        let want = (0..cols).map(|j| snapshot[r * cols + j]).fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(mem[50 + r], want);
    }
}

#[test]
fn gather_and_scatter_rows_by_id() {
    let width = 5usize;
    let mut mem = vec![0.0f32; 64];
    for i in 0..15 {
        mem[i] = i as f32; // a 3×5 table
    }
    let ids = [2i64, 0, 2, 1];
    let idbuf = Buf { region: Region::Input(0), offset: 0, elem: Elem::I64 };
    let gather = Kernel::Gather { rows: Size::batch(1), width, ids: idbuf, table: arena(0), dst: arena(20) };
    let scatter = Kernel::ScatterAdd { rows: Size::batch(1), width, ids: idbuf, src: arena(20), table: arena(0), skip: Some(1) };
    let snapshot = mem.clone();
    run(&[gather, scatter], &mut mem, &ids, 4, &[]);
    for (r, id) in ids.iter().enumerate() {
        for j in 0..width {
            assert_eq!(mem[20 + r * width + j], snapshot[*id as usize * width + j]);
        }
    }
    // Row 2 was gathered twice and added back twice; row 1 is skipped; row 0 once.
    for j in 0..width {
        assert_eq!(mem[2 * width + j], snapshot[2 * width + j] * 3.0);
        assert_eq!(mem[width + j], snapshot[width + j]);
        assert_eq!(mem[j], snapshot[j] * 2.0);
    }
}

#[test]
fn gemm_kernel_with_batch_sized_rows_and_transposed_weight() {
    // y[B×3] = x[B×4] · Wᵀ with W stored [3, 4] (nn.Linear's layout).
    let mut mem = vec![0.0f32; 64];
    for i in 0..8 {
        mem[i] = i as f32 * 0.25; // x: 2×4
    }
    for i in 0..12 {
        mem[10 + i] = (i as f32) - 6.0; // W: 3×4
    }
    let k = Kernel::Gemm {
        m: Size::batch(1),
        n: Size::fixed(3),
        k: Size::fixed(4),
        batch: Size::fixed(1),
        a: MatView { buf: arena(0), rs: Size::fixed(4), cs: Size::fixed(1), batch_stride: Size::fixed(0), step: Size::fixed(0) },
        b: MatView { buf: arena(10), rs: Size::fixed(1), cs: Size::fixed(4), batch_stride: Size::fixed(0), step: Size::fixed(0) },
        c: MatView { buf: arena(30), rs: Size::fixed(3), cs: Size::fixed(1), batch_stride: Size::fixed(0), step: Size::fixed(0) },
        accumulate: false,
    };
    let snapshot = mem.clone();
    run(&[k], &mut mem, &[], 2, &[]);
    for r in 0..2 {
        for o in 0..3 {
            let want: f32 = (0..4).map(|i| snapshot[r * 4 + i] * snapshot[10 + o * 4 + i]).sum();
            assert!((mem[30 + r * 3 + o] - want).abs() < 1e-5);
        }
    }
}

#[test]
fn time_loop_steps_accesses_and_masks_by_length() {
    // h[b] = h[b] + x[b, t] while t < len[b]; y[b, t] = h[b] at valid steps, 0 after.
    // B = 2 rows, T = 3 (padded), lengths 3 and 1; x is [B, T], h is [B], y is [B, T].
    let mut mem = vec![0.0f32; 32];
    let x = [1.0f32, 2.0, 3.0, 10.0, 20.0, 30.0];
    mem[..6].copy_from_slice(&x);
    let lens = [3i32, 1];
    let lbuf = Buf { region: Region::Lengths(0), offset: 0, elem: Elem::I32 };
    let seq = Size { factor: 1, batch: false, seq: Some((0, 0)) };
    let row = |buf, step| Access { buf, strides: vec![seq], step };
    let valid = |then: Expr, other: Expr| Expr::SelectGt(Box::new(Expr::In(2)), Box::new(Expr::LoopVar), Box::new(then), Box::new(other));
    let body = vec![Kernel::Map {
        shape: vec![Size::batch(1)],
        inputs: vec![row(arena(0), Size::fixed(1)), Access::new(arena(10), vec![Size::fixed(1)]), Access::new(lbuf, vec![Size::fixed(1)])],
        outputs: vec![
            (Access::new(arena(10), vec![Size::fixed(1)]), valid(Expr::Add(Box::new(Expr::In(1)), Box::new(Expr::In(0))), Expr::In(1))),
            (row(arena(20), Size::fixed(1)), valid(Expr::Add(Box::new(Expr::In(1)), Box::new(Expr::In(0))), Expr::Const(0.0))),
        ],
    }];
    let k = Kernel::Loop { count: seq, reverse: false, rows: None, body };
    let lens_ptr: [*const i32; 1] = [lens.as_ptr()];
    let seqs = [3i64];
    let f = Frame { lengths: lens_ptr.as_ptr(), batch: 2, seq: seqs.as_ptr(), ..frame(mem.as_mut_ptr() as *mut u8) };
    execute(&[k], 1, &f);
    assert_eq!(&mem[10..12], &[6.0, 10.0]);
    assert_eq!(&mem[20..26], &[1.0, 3.0, 6.0, 10.0, 0.0, 0.0]);
}

/// Applies `f` (one of the vmath functions) to every value, through a compiled map that
/// runs the vector body for the first multiple of four and the scalar tail for the rest.
fn vmath_map(expr: fn(Box<Expr>) -> Expr, xs: &[f32]) -> Vec<f32> {
    let n = xs.len();
    let mut mem = vec![0.0f32; 2 * n];
    mem[..n].copy_from_slice(xs);
    let k = Kernel::Map {
        shape: vec![Size::fixed(n as i64)],
        inputs: vec![Access::new(arena(0), vec![Size::fixed(1)])],
        outputs: vec![(Access::new(arena(n), vec![Size::fixed(1)]), expr(Box::new(Expr::In(0))))],
    };
    run(&[k], &mut mem, &[], 1, &[]);
    mem[n..].to_vec()
}

fn sweep() -> Vec<f32> {
    let mut v: Vec<f32> = (-4000..=4000).map(|i| i as f32 * 0.0231).collect();
    v.extend([0.0, -0.0, 1e-30, -1e-30, 1e-6, 0.625, -0.625, 9.5, -9.5, 87.0, -87.0, 88.5, -100.0, -200.0, 200.0, 3e38]);
    v.extend([f32::INFINITY, f32::NEG_INFINITY, f32::NAN]);
    v.push(1.5); // odd count: exercises the scalar tail
    v
}

fn close(got: f32, want: f32, rel: f32, abs: f32) -> bool {
    (got.is_nan() && want.is_nan()) || got == want || (got - want).abs() <= abs + rel * want.abs()
}

#[test]
fn inline_exp_log_tanh_erf_match_libm() {
    let xs = sweep();
    let exp = vmath_map(Expr::Exp, &xs);
    let tanh = vmath_map(Expr::Tanh, &xs);
    let erf = vmath_map(Expr::Erf, &xs);
    for (i, x) in xs.iter().enumerate() {
        // Near the overflow edge the clamped range reduction is allowed to be coarse.
        if x.abs() < 87.0 || !x.is_finite() {
            assert!(close(exp[i], x.exp(), 3e-7, 0.0), "exp({x}) = {} vs {}", exp[i], x.exp());
        }
        assert!(close(tanh[i], x.tanh(), 3e-7, 1e-37), "tanh({x}) = {} vs {}", tanh[i], x.tanh());
        assert!(close(erf[i], libm::erff(*x), 0.0, 5e-7), "erf({x}) = {} vs {}", erf[i], libm::erff(*x));
    }
    let pos: Vec<f32> = xs.iter().map(|x| x.abs() * 3.7).chain([0.0, 1.0, f32::MIN_POSITIVE, 1e-20, 3e38, -1.0, f32::NAN, f32::INFINITY]).collect();
    let log = vmath_map(Expr::Log, &pos);
    for (i, x) in pos.iter().enumerate() {
        assert!(close(log[i], x.ln(), 3e-7, 1e-7), "log({x}) = {} vs {}", log[i], x.ln());
    }
}

/// Plans `b`'s temporaries, compiles its kernels and runs them once over `state` (the
/// buffers the test reads and writes, addressed as `Region::State`) with `ids` as input 0.
fn run_templates(mut b: super::templates::Builder, state: &mut [f32], ids: &[i64], batch: i64) {
    let arena_bytes = super::memory::plan(&mut b.kernels, &b.temps, batch, &[]);
    let mut arena = vec![0.0f32; arena_bytes / 4 + 16];
    let inputs = [ids.as_ptr() as *const u8];
    let f = Frame { state: state.as_mut_ptr() as *mut u8, inputs: inputs.as_ptr(), batch, ..frame(arena.as_mut_ptr() as *mut u8) };
    execute(&b.kernels, 0, &f);
}

fn st(offset_f32: usize) -> Buf {
    Buf { region: Region::State, offset: offset_f32 * 4, elem: Elem::F32 }
}

fn logits_fixture(rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols).map(|i| ((i * 37) % 23) as f32 * 0.37 - 4.0).collect()
}

fn ref_log_softmax(x: &[f32], cols: usize) -> Vec<f32> {
    x.chunks(cols)
        .flat_map(|r| {
            let m = r.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let s: f64 = r.iter().map(|v| ((v - m) as f64).exp()).sum();
            r.iter().map(move |v| (v - m) - (s.ln() as f32)).collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn softmax_family_matches_reference() {
    use super::templates::*;
    let (rows, cols) = (5usize, 11usize);
    let x = logits_fixture(rows, cols);
    let dy: Vec<f32> = (0..rows * cols).map(|i| ((i * 13) % 7) as f32 * 0.1 - 0.3).collect();
    let n = rows * cols;
    let mut state = vec![0.0f32; 6 * n];
    state[..n].copy_from_slice(&x);
    state[n..2 * n].copy_from_slice(&dy);
    let mut b = Builder::default();
    let r = Size::batch(1);
    log_softmax_rows(&mut b, st(0), st(2 * n), r, cols);
    softmax_rows(&mut b, st(0), st(3 * n), r, cols);
    log_softmax_rows_backward(&mut b, st(2 * n), st(n), st(4 * n), r, cols);
    softmax_rows_backward(&mut b, st(3 * n), st(n), st(5 * n), r, cols);
    run_templates(b, &mut state, &[], rows as i64);
    let lsm = ref_log_softmax(&x, cols);
    for i in 0..n {
        assert!((state[2 * n + i] - lsm[i]).abs() < 2e-6, "log_softmax[{i}]");
        assert!((state[3 * n + i] - lsm[i].exp()).abs() < 2e-6, "softmax[{i}]");
    }
    for r in 0..rows {
        let row = r * cols..(r + 1) * cols;
        let sum_dy: f32 = dy[row.clone()].iter().sum();
        let dot: f32 = row.clone().map(|i| dy[i] * lsm[i].exp()).sum();
        for i in row {
            let want_l = dy[i] - lsm[i].exp() * sum_dy;
            let want_s = lsm[i].exp() * (dy[i] - dot);
            assert!((state[4 * n + i] - want_l).abs() < 2e-6, "log_softmax backward[{i}]");
            assert!((state[5 * n + i] - want_s).abs() < 2e-6, "softmax backward[{i}]");
        }
    }
}

#[test]
fn cross_entropy_with_ignore_and_smoothing_matches_reference() {
    use super::templates::*;
    let (rows, cols) = (6usize, 5usize);
    let lsm = ref_log_softmax(&logits_fixture(rows, cols), cols);
    let ids: Vec<i64> = vec![0, 4, 0, 2, 3, 1];
    let (ignore, eps) = (0i64, 0.1f32);
    let n = rows * cols;
    let g: Vec<f32> = (0..rows).map(|r| 0.25 + r as f32 * 0.1).collect();
    let mut state = vec![0.0f32; 2 * n + 2 * rows];
    state[..n].copy_from_slice(&lsm);
    state[2 * n + rows..].copy_from_slice(&g);
    let idbuf = Buf { region: Region::Input(0), offset: 0, elem: Elem::I64 };
    let mut b = Builder::default();
    nll_per_row(&mut b, st(0), idbuf, Size::batch(1), cols, ignore, eps, st(2 * n));
    nll_per_row_backward(&mut b, idbuf, Size::batch(1), cols, ignore, eps, st(2 * n + rows), st(n));
    run_templates(b, &mut state, &ids, rows as i64);
    for r in 0..rows {
        let row = &lsm[r * cols..(r + 1) * cols];
        let want = if ids[r] == ignore { 0.0 } else { -(1.0 - eps) * row[ids[r] as usize] - eps / cols as f32 * row.iter().sum::<f32>() };
        assert!((state[2 * n + r] - want).abs() < 1e-5, "row {r}: {} vs {want}", state[2 * n + r]);
        for k in 0..cols {
            let want = if ids[r] == ignore { 0.0 } else { -g[r] * ((1.0 - eps) * f32::from(u8::from(k as i64 == ids[r])) + eps / cols as f32) };
            assert!((state[n + r * cols + k] - want).abs() < 1e-7, "dlogp[{r}, {k}]");
        }
    }
}

#[test]
fn batch_statistics_match_reference() {
    use super::templates::*;
    let (rows, cols) = (7usize, 9usize);
    let x = logits_fixture(rows, cols);
    let n = rows * cols;
    let mut state = vec![0.0f32; n + 2 * cols + 1];
    state[..n].copy_from_slice(&x);
    state[n + 2 * cols] = rows as f32;
    let mut b = Builder::default();
    batch_stats(&mut b, st(0), Size::batch(1), cols, st(n + 2 * cols), st(n), st(n + cols));
    run_templates(b, &mut state, &[], rows as i64);
    for c in 0..cols {
        let col: Vec<f32> = (0..rows).map(|r| x[r * cols + c]).collect();
        let mean = col.iter().sum::<f32>() / rows as f32;
        let var = col.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / rows as f32;
        assert!((state[n + c] - mean).abs() < 1e-5);
        assert!((state[n + cols + c] - var).abs() < 1e-5);
    }
}

#[test]
fn dropout_mask_matches_the_documented_generator() {
    // 1003: the vector body and a scalar tail of three.
    let n = 1003usize;
    let mut mem = vec![0.0f32; n];
    let k = Kernel::DropoutMask { len: Size::fixed(n as i64), p: 0.25, site: 3, out: arena(0) };
    execute(&[k], 0, &Frame { rng_key: 0x1234_5678_9abc, ..frame(mem.as_mut_ptr() as *mut u8) });
    let kept = mem.iter().filter(|v| **v != 0.0).count();
    for (i, v) in mem.iter().enumerate() {
        let want = if super::kernel::dropout_keep(0x1234_5678_9abc, 3, i as u64, 0.25) { 1.0 / 0.75 } else { 0.0 };
        assert_eq!(*v, want, "element {i}");
    }
    assert!((700..805).contains(&kept), "kept {kept} of 1003 at p = 0.25");
}

//! Host functions generated code calls: the f32 GEMM kernel and the profiler's clock. (Transcendentals are inline,
//! see `vmath`.) Every one is `extern "C"` with plain arguments.

use super::jit::HostFn;
use cranelift_codegen::ir::types::{F32, I32, I64};
use std::sync::atomic::{AtomicUsize, Ordering};

/// `C = alpha·C + beta·(A·B)` for row/column-strided f32 matrices (`gemm` crate, one thread
/// unless `threads > 1` was requested at start-up). Strides are in elements. `read_c = 0`
/// ignores C's old contents (alpha is then irrelevant).
///
/// # Safety
/// The pointers and strides must describe valid, non-overlapping (C against A and B) f32
/// matrices of the given sizes; generated code derives them from the planned arena.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn kpc_sgemm(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    c_rs: isize,
    c_cs: isize,
    read_c: i32,
    a: *const f32,
    a_rs: isize,
    a_cs: isize,
    b: *const f32,
    b_rs: isize,
    b_cs: isize,
    alpha: f32,
    beta: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // gemm requires k > 0 for the product; an empty sum is zero.
        for i in 0..m {
            for j in 0..n {
                // SAFETY: (i, j) is inside the m×n matrix C described by the caller.
                unsafe {
                    let p = c.offset(i as isize * c_rs + j as isize * c_cs);
                    *p = if read_c != 0 { alpha * *p } else { 0.0 };
                }
            }
        }
        return;
    }
    // B column-major with columns a multiple of 2 KiB apart (a linear layer's `X·Wᵀ` with
    // 512 or 1024 inputs): the kernel reads such columns at half speed or worse (cache sets
    // alias; bench/gemm.rs measures it), so B is first copied with its columns 16 floats
    // further apart; k·n copied elements against 2·m·n·k flops.
    let aliasing = b_rs == 1 && b_cs >= 512 && b_cs % 512 == 0 && m > 16;
    SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        let (b, b_cs) = if aliasing {
            let stride = k + 16;
            scratch.resize(stride * n, 0.0);
            for j in 0..n {
                // SAFETY: column j of the k×n matrix B is k contiguous floats.
                let col = unsafe { std::slice::from_raw_parts(b.offset(j as isize * b_cs), k) };
                scratch[j * stride..j * stride + k].copy_from_slice(col);
            }
            (scratch.as_ptr(), stride as isize)
        } else {
            (b, b_cs)
        };
        // SAFETY: forwarded contract of this function; a copied B lives in the scratch,
        // borrowed until the call returns.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                c,
                c_cs,
                c_rs,
                read_c != 0,
                a,
                a_cs,
                a_rs,
                b,
                b_cs,
                b_rs,
                alpha,
                beta,
                false,
                false,
                false,
                parallelism(),
            )
        }
    })
}

thread_local! {
    /// B re-laid-out (see [`kpc_sgemm`]); grows to the largest such operand once.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Sets `bytes` bytes at `p` to zero (the C library's memset: wider stores than generated
/// f32x4 loops).
///
/// # Safety
/// `p` must be valid for `bytes` bytes of writes; generated code derives both from the plan.
pub unsafe extern "C" fn kpc_zero(p: *mut u8, bytes: usize) {
    // SAFETY: forwarded contract.
    unsafe { std::ptr::write_bytes(p, 0, bytes) }
}

/// Threads the GEMM kernel may use (`--threads`); 1 until [`set_threads`] says otherwise.
static THREADS: AtomicUsize = AtomicUsize::new(1);

/// Lets GEMMs use `n` threads (rayon's global pool, built here with `n` workers). The
/// kernel splits the output into blocks and never splits the sum over `k`, so results are
/// bit-identical for every thread count.
pub fn set_threads(n: usize) {
    let n = n.max(1);
    THREADS.store(n, Ordering::Relaxed);
    if n > 1 {
        // A second call keeps the first pool (build_global fails once one exists); the
        // GEMM still asks for at most `n` tasks.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    }
}

fn parallelism() -> gemm::Parallelism {
    match THREADS.load(Ordering::Relaxed) {
        1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

/// Every host function, with its Cranelift signature (`I64` stands for a pointer-sized
/// integer).
pub fn functions() -> Vec<HostFn> {
    vec![
        HostFn {
            name: "kpc_sgemm",
            ptr: kpc_sgemm as *const u8,
            params: &[I64, I64, I64, I64, I64, I64, I32, I64, I64, I64, I64, I64, I64, F32, F32],
            returns: &[],
        },
        HostFn { name: "kpc_zero", ptr: kpc_zero as *const u8, params: &[I64, I64], returns: &[] },
        HostFn { name: "kpc_profile_mark", ptr: super::profile::kpc_profile_mark as *const u8, params: &[I64, I64], returns: &[] },
    ]
}

//! GEMM throughput of the kernel kpc's generated code calls (`kpc_sgemm`, the `gemm` crate
//! with AVX-512 kernels), one thread, at the shapes the benchmarks care about.
//!
//!     cargo bench --bench gemm
//!
//! Prints one JSON line per shape: the median GFLOP/s over repetitions.

use std::time::Instant;

/// GFLOP/s of `C[m×n] = A·B` with A stored transposed (`[k, m]` row-major) when `ta` and B
/// stored transposed (`[n, k]`, as a linear layer's weight) when `tb`: the layouts a train
/// step uses (forward `X·Wᵀ`, weight gradient `dYᵀ·X`).
fn measure(m: usize, k: usize, n: usize) -> f64 {
    measure_layout(m, k, n, false, false)
}

fn measure_layout(m: usize, k: usize, n: usize, ta: bool, tb: bool) -> f64 {
    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut c = vec![0.0f32; m * n];
    let flops = 2.0 * (m * n * k) as f64;
    let mut rates = Vec::new();
    // Enough repetitions for about a second per shape.
    let reps = ((2e10 / flops) as usize).clamp(5, 2000);
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..reps {
            // SAFETY: a, b, c are m×k, k×n, m×n row-major buffers.
            unsafe {
                let (a_rs, a_cs) = if ta { (1, m as isize) } else { (k as isize, 1) };
                let (b_rs, b_cs) = if tb { (1, k as isize) } else { (n as isize, 1) };
                kpc::codegen::host::kpc_sgemm(m, n, k, c.as_mut_ptr(), n as isize, 1, 0, a.as_ptr(), a_rs, a_cs, b.as_ptr(), b_rs, b_cs, 1.0, 1.0)
            };
        }
        rates.push(flops * reps as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

fn main() {
    for (m, k, n) in [(128, 784, 1024), (1024, 1024, 1024), (64, 64, 128), (64, 128, 384)] {
        let g = measure(m, k, n);
        println!("{{\"shape\":\"{m}x{k}x{n}\",\"impl\":\"kpc_sgemm\",\"threads\":1,\"gflops\":{g:.1}}}");
    }
    // W2's train-step products in the layouts the step uses.
    for (name, m, k, n, ta, tb) in [
        ("w2_fc1_forward_XWt", 128, 784, 1024, false, true),
        ("w2_fc2_forward_XWt", 128, 1024, 1024, false, true),
        ("w2_fc2_dW_dYtX", 1024, 128, 1024, true, false),
        ("w2_fc1_dW_dYtX", 1024, 128, 784, true, false),
        ("w2_fc2_dX_dYW", 128, 1024, 1024, false, false),
        ("w4_proj_forward_HWt", 384, 128, 2156, false, true),
        ("w4_proj_dW_dYtH", 2156, 384, 128, true, false),
        ("w4_proj_dH_dYW", 384, 2156, 128, false, false),
        ("w3_step_hWt", 64, 128, 384, false, true),
        ("w3_inproj_XWt", 832, 32, 384, false, true),
        ("w3_dWhh_dGtH", 384, 832, 128, true, false),
    ] {
        let g = measure_layout(m, k, n, ta, tb);
        println!("{{\"shape\":\"{name}\",\"impl\":\"kpc_sgemm\",\"threads\":1,\"gflops\":{g:.1}}}");
    }
}

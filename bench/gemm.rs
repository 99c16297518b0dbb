//! GEMM throughput of the kernel kpc's generated code calls (`kpc_sgemm`, the `gemm` crate
//! with AVX-512 kernels), one thread, at the shapes the benchmarks care about.
//!
//!     cargo bench --bench gemm
//!
//! Prints one JSON line per shape: the median GFLOP/s over repetitions.

use std::time::Instant;

fn measure(m: usize, k: usize, n: usize) -> f64 {
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
                kpc::codegen::host::kpc_sgemm(m, n, k, c.as_mut_ptr(), n as isize, 1, 0, a.as_ptr(), k as isize, 1, b.as_ptr(), n as isize, 1, 1.0, 1.0)
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
}

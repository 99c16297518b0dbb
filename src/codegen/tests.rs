use super::emit::{f32_loop, mem};
use super::jit::Jit;
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

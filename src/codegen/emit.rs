//! Small building blocks for generated loops: counted loops, f32x4 vector loops with a scalar
//! tail, pointer arithmetic. Cranelift neither unrolls nor hoists constants out of loops, so
//! callers create splats before the loop and unroll where it pays.

use cranelift_codegen::ir::{BlockArg, InstBuilder, MemFlagsData, Type, Value, condcodes::IntCC, types};
use cranelift_frontend::FunctionBuilder;

/// Memory flags for accesses into kpc's own buffers: they never trap (the arena and the
/// state buffers are sized by the planner) but need not be vector-aligned.
pub fn mem() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// `for i in (start..end).step_by(step) { body(i) }` with `i` of type `ty`.
pub fn counted_loop(
    b: &mut FunctionBuilder,
    ty: Type,
    start: Value,
    end: Value,
    step: i64,
    mut body: impl FnMut(&mut FunctionBuilder, Value),
) {
    let header = b.create_block();
    let body_block = b.create_block();
    let exit = b.create_block();
    b.append_block_param(header, ty);
    b.ins().jump(header, &[BlockArg::Value(start)]);
    b.switch_to_block(header);
    let i = b.block_params(header)[0];
    let go_on = b.ins().icmp(IntCC::SignedLessThan, i, end);
    b.ins().brif(go_on, body_block, &[], exit, &[]);
    b.switch_to_block(body_block);
    body(b, i);
    let next = b.ins().iadd_imm_s(i, step);
    b.ins().jump(header, &[BlockArg::Value(next)]);
    b.switch_to_block(exit);
}

/// [`counted_loop`] carrying one value from iteration to iteration: `body(i, acc)` returns
/// the next `acc`; the result is the value after the last iteration (`init` if none ran).
pub fn counted_loop_carry(
    b: &mut FunctionBuilder,
    start: Value,
    end: Value,
    step: i64,
    init: Value,
    mut body: impl FnMut(&mut FunctionBuilder, Value, Value) -> Value,
) -> Value {
    let ty = b.func.dfg.value_type(start);
    let acc_ty = b.func.dfg.value_type(init);
    let header = b.create_block();
    let body_block = b.create_block();
    let exit = b.create_block();
    b.append_block_param(header, ty);
    b.append_block_param(header, acc_ty);
    b.append_block_param(exit, acc_ty);
    b.ins().jump(header, &[BlockArg::Value(start), BlockArg::Value(init)]);
    b.switch_to_block(header);
    let (i, acc) = (b.block_params(header)[0], b.block_params(header)[1]);
    let go_on = b.ins().icmp(IntCC::SignedLessThan, i, end);
    b.ins().brif(go_on, body_block, &[], exit, &[BlockArg::Value(acc)]);
    b.switch_to_block(body_block);
    let next_acc = body(b, i, acc);
    let next = b.ins().iadd_imm_s(i, step);
    b.ins().jump(header, &[BlockArg::Value(next), BlockArg::Value(next_acc)]);
    b.switch_to_block(exit);
    b.block_params(exit)[0]
}

/// `base + index * scale` as a pointer.
pub fn element_ptr(b: &mut FunctionBuilder, ptr_ty: Type, base: Value, index: Value, scale: i64) -> Value {
    let off = if scale == 1 { index } else { b.ins().imul_imm_s(index, scale) };
    let off = if b.func.dfg.value_type(off) != ptr_ty { b.ins().sextend(ptr_ty, off) } else { off };
    b.ins().iadd(base, off)
}

/// An elementwise loop over `n` f32 elements, four at a time with a scalar tail: `body`
/// gets the byte offset of the current element and the lane type (`F32X4` or `F32`).
pub fn f32_loop(b: &mut FunctionBuilder, ptr_ty: Type, n: Value, mut body: impl FnMut(&mut FunctionBuilder, Value, Type)) {
    let zero = b.ins().iconst(ptr_ty, 0);
    let vec_end = b.ins().band_imm_s(n, !3i64);
    counted_loop(b, ptr_ty, zero, vec_end, 4, |b, i| {
        let byte = b.ins().ishl_imm_s(i, 2);
        body(b, byte, types::F32X4);
    });
    counted_loop(b, ptr_ty, vec_end, n, 1, |b, i| {
        let byte = b.ins().ishl_imm_s(i, 2);
        body(b, byte, types::F32);
    });
}

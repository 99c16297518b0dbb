//! A list of kernels compiled into one step function `extern "C" fn(&Frame)`.

use super::emit_kernels::{Env, Frame, emit, profile_mark};
use super::jit::{CodegenError, Compiled, Jit};
use super::kernel::Kernel;
use cranelift_codegen::ir::InstBuilder;
use cranelift_module::FuncId;

/// Declares and defines `name` running `kernels` in order; with `profile = Some(i)`, marks
/// the time of every kernel in row `i` of the profile table (see [`super::profile`]).
pub fn define_step(jit: &mut Jit, name: &str, seq_dims: usize, kernels: &[Kernel], profile: Option<i64>) -> Result<FuncId, CodegenError> {
    let sig = jit.signature(1);
    let ptr = jit.ptr;
    jit.define(name, sig, |b, imports| {
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        let frame = b.block_params(entry)[0];
        let mut env = Env::load(b, ptr, frame, seq_dims);
        env.profile = profile;
        if let Some(p) = profile {
            profile_mark(b, imports, p, super::profile::START);
        }
        for k in kernels {
            emit(b, &env, imports, k);
        }
        b.ins().return_(&[]);
        Ok(())
    })
}

/// A finalised step function.
pub struct StepFn {
    f: unsafe extern "C" fn(*const Frame),
}

impl StepFn {
    /// # Safety
    /// `id` must have been defined by [`define_step`] in the module `code` was finalised from,
    /// and `code` must outlive the returned value.
    pub unsafe fn new(code: &Compiled, id: FuncId) -> StepFn {
        // SAFETY: define_step gives every step the signature fn(*const Frame).
        StepFn { f: unsafe { std::mem::transmute::<*const u8, unsafe extern "C" fn(*const Frame)>(code.address(id)) } }
    }

    /// Runs the step.
    ///
    /// # Safety
    /// Every buffer the step's kernels address must be allocated at the frame's pointers with
    /// at least the planned size for `frame.batch` and `frame.seq`.
    pub unsafe fn call(&self, frame: &Frame) {
        // SAFETY: forwarded contract.
        unsafe { (self.f)(frame) }
    }
}

//! The Cranelift JIT module: native ISA with `opt_level = speed`, the host symbols generated
//! code may call (the GEMM kernel, libm functions Cranelift has no instruction for), and
//! function declaration, definition and finalisation.

use super::host;
use cranelift_codegen::ir::{AbiParam, Signature, Type, types};
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::{Context, isa::CallConv};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{FuncId, Linkage, Module, default_libcall_names};
use std::collections::HashMap;

/// A compilation error is a bug of ours (the checker has accepted the job), but it is still
/// reported as a value rather than a panic.
#[derive(Debug)]
pub struct CodegenError(pub String);

impl std::fmt::Display for CodegenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "code generation failed: {}", self.0)
    }
}

impl std::error::Error for CodegenError {}

fn err(e: impl std::fmt::Display) -> CodegenError {
    CodegenError(e.to_string())
}

/// One host function generated code may call.
pub struct HostFn {
    pub name: &'static str,
    pub ptr: *const u8,
    pub params: &'static [Type],
    pub returns: &'static [Type],
}

/// A JIT module being filled with functions.
pub struct Jit {
    module: JITModule,
    ctx: Context,
    fctx: FunctionBuilderContext,
    host: HashMap<&'static str, (FuncId, Signature)>,
    pub ptr: Type,
    call_conv: CallConv,
}

impl Jit {
    pub fn new() -> Result<Jit, CodegenError> {
        let mut flags = settings::builder();
        flags.set("opt_level", "speed").map_err(err)?;
        // The verifier costs ~50% of compile time; keep it in debug builds and tests.
        flags.set("enable_verifier", if cfg!(debug_assertions) { "true" } else { "false" }).map_err(err)?;
        flags.set("use_colocated_libcalls", "false").map_err(err)?;
        flags.set("is_pic", "false").map_err(err)?;
        let isa_builder = cranelift_native::builder().map_err(err)?;
        let isa = isa_builder.finish(settings::Flags::new(flags)).map_err(err)?;
        let mut builder = JITBuilder::with_isa(isa, default_libcall_names());
        let hosts = host::functions();
        for h in &hosts {
            builder.symbol(h.name, h.ptr);
        }
        let mut module = JITModule::new(builder);
        let ptr = module.target_config().pointer_type();
        let call_conv = module.target_config().default_call_conv;
        let mut host = HashMap::new();
        for h in &hosts {
            let mut sig = Signature::new(call_conv);
            sig.params.extend(h.params.iter().map(|t| AbiParam::new(if *t == types::I64 { ptr } else { *t })));
            sig.returns.extend(h.returns.iter().map(|t| AbiParam::new(*t)));
            let id = module.declare_function(h.name, Linkage::Import, &sig).map_err(err)?;
            host.insert(h.name, (id, sig));
        }
        let ctx = module.make_context();
        Ok(Jit { module, ctx, fctx: FunctionBuilderContext::new(), host, ptr, call_conv })
    }

    /// A signature of pointer-sized integer parameters and no results: every compiled step
    /// takes (buffer pointers…, sizes…) this way.
    pub fn signature(&self, params: usize) -> Signature {
        let mut sig = Signature::new(self.call_conv);
        sig.params.extend((0..params).map(|_| AbiParam::new(self.ptr)));
        sig
    }

    /// Declares and defines function `name` with `sig`, its body written by `body`.
    pub fn define(
        &mut self,
        name: &str,
        sig: Signature,
        body: impl FnOnce(&mut FunctionBuilder, &mut Imports) -> Result<(), CodegenError>,
    ) -> Result<FuncId, CodegenError> {
        let id = self.module.declare_function(name, Linkage::Local, &sig).map_err(err)?;
        self.ctx.func.signature = sig;
        let frontend = self.module.target_config();
        {
            let mut b = FunctionBuilder::new(&mut self.ctx.func, &mut self.fctx);
            let mut imports = Imports { module: &mut self.module, host: &self.host, refs: HashMap::new() };
            body(&mut b, &mut imports)?;
            b.seal_all_blocks();
            b.finalize(frontend);
        }
        self.module.define_function(id, &mut self.ctx).map_err(|e| CodegenError(format!("{e:?}")))?;
        self.module.clear_context(&mut self.ctx);
        Ok(id)
    }

    /// Finalises every defined function and hands out their addresses.
    pub fn finish(mut self) -> Result<Compiled, CodegenError> {
        self.module.finalize_definitions().map_err(err)?;
        Ok(Compiled { module: Some(self.module) })
    }
}

/// Host functions imported into the function being built, by name.
pub struct Imports<'m> {
    module: &'m mut JITModule,
    host: &'m HashMap<&'static str, (FuncId, Signature)>,
    refs: HashMap<&'static str, cranelift_codegen::ir::FuncRef>,
}

impl Imports<'_> {
    /// A `FuncRef` for host function `name` (see [`host::functions`]).
    pub fn func(&mut self, b: &mut FunctionBuilder, name: &'static str) -> cranelift_codegen::ir::FuncRef {
        if let Some(r) = self.refs.get(name) {
            return *r;
        }
        let (id, _) = self.host.get(name).unwrap_or_else(|| panic!("unknown host function {name}"));
        let r = self.module.declare_func_in_func(*id, b.func);
        self.refs.insert(name, r);
        r
    }
}

/// Finalised machine code. Function pointers stay valid while this value lives.
pub struct Compiled {
    module: Option<JITModule>,
}

impl Compiled {
    pub fn address(&self, id: FuncId) -> *const u8 {
        self.module.as_ref().expect("module lives until drop").get_finalized_function(id)
    }
}

impl Drop for Compiled {
    fn drop(&mut self) {
        if let Some(m) = self.module.take() {
            // SAFETY: nothing calls into the module's code after its owner is dropped; callers
            // hold function pointers only as long as they hold this value.
            unsafe { m.free_memory() };
        }
    }
}

//! `kpc run --profile`: where a step's time goes, by kernel class.
//!
//! When a job is compiled for profiling, every kernel (also each kernel inside a recurrent
//! time loop) is followed by a call to [`kpc_profile_mark`] naming the program and the
//! kernel's class; the time since the previous mark is charged to that class. A step starts
//! with a mark of class [`START`], which charges nothing. The marks cost about 20–40 ns each
//! (a clock read), so profiles of steps made of many tiny kernels overstate those kernels a
//! little; the report shows the total time with and without profiling for that reason.
//!
//! Programs run on the thread that calls them, so the table is thread-local.

use super::kernel::{Kernel, Region};
use std::cell::RefCell;
use std::time::Instant;

/// Charges nothing: a step's first mark.
pub const START: i64 = -1;

/// Kernel classes, in report order. `IN_LOOP` is added for kernels inside a time loop.
pub const CLASSES: [&str; 10] = [
    "gemm",
    "elementwise map",
    "optimizer update",
    "reduction (sums, softmax, statistics)",
    "embedding gather / scatter",
    "loss pick / put",
    "dropout mask",
    "copies (slices, last step)",
    "zero fill",
    "other",
];
pub const IN_LOOP: i64 = CLASSES.len() as i64;

/// The class of a kernel outside any loop (a `Loop` itself is never marked: its body is).
pub fn class_of(k: &Kernel) -> i64 {
    match k {
        Kernel::Gemm { .. } => 0,
        Kernel::Map { outputs, .. } if outputs.iter().any(|(a, _)| matches!(a.buf.region, Region::State | Region::OptState)) => 2,
        Kernel::Map { .. } => 1,
        Kernel::Reduce { .. } => 3,
        Kernel::Gather { .. } | Kernel::ScatterAdd { .. } => 4,
        Kernel::Pick { .. } | Kernel::PutAdd { .. } => 5,
        Kernel::DropoutMask { .. } => 6,
        Kernel::CopyRows { .. } | Kernel::LastStep { .. } => 7,
        Kernel::Zero { .. } => 8,
        Kernel::Loop { .. } => 9,
    }
}

struct Table {
    last: Instant,
    /// `[program][class]` nanoseconds and calls.
    nanos: Vec<Vec<(u64, u64)>>,
}

thread_local! {
    static TABLE: RefCell<Option<Table>> = const { RefCell::new(None) };
}

/// Called by profiled generated code after each kernel.
pub extern "C" fn kpc_profile_mark(program: i64, class: i64) {
    let now = Instant::now();
    TABLE.with(|t| {
        let mut t = t.borrow_mut();
        let table = t.get_or_insert_with(|| Table { last: now, nanos: Vec::new() });
        if class >= 0 && program >= 0 {
            let (p, c) = (program as usize, class as usize);
            if table.nanos.len() <= p {
                table.nanos.resize(p + 1, Vec::new());
            }
            if table.nanos[p].len() <= c {
                table.nanos[p].resize(c + 1, (0, 0));
            }
            let e = &mut table.nanos[p][c];
            e.0 += now.duration_since(table.last).as_nanos() as u64;
            e.1 += 1;
        }
        // The clock is read again so that this function's own bookkeeping is not charged
        // to the next kernel.
        table.last = Instant::now();
    });
}

/// Time charged so far on this thread, `[program][class] = (nanoseconds, calls)`, and resets.
pub fn take() -> Vec<Vec<(u64, u64)>> {
    TABLE.with(|t| t.borrow_mut().take().map(|t| t.nanos).unwrap_or_default())
}

/// The name of class `c` (possibly offset by [`IN_LOOP`]).
pub fn class_name(c: usize) -> String {
    let n = CLASSES.len();
    if c >= n { format!("{} (in time loop)", CLASSES[c - n]) } else { CLASSES[c].to_string() }
}

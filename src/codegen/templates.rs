//! Kernel templates for the operations that are more than one elementwise map: row-wise
//! softmax and log-softmax with their backward rules, cross-entropy with `ignore_index` and
//! label smoothing, and batch-norm statistics. Each is a short list of kernels over
//! contiguous row-major buffers, written to read like the formula it implements.

use super::kernel::ex::*;
use super::kernel::*;
use super::memory::Temp;

/// Collects kernels and the temporaries they need.
#[derive(Default)]
pub struct Builder {
    pub kernels: Vec<Kernel>,
    pub temps: Vec<Temp>,
}

impl Builder {
    pub fn temp(&mut self, elem: Elem, len: Size) -> Buf {
        self.temps.push(Temp { elem, len });
        Buf { region: Region::Temp(self.temps.len() - 1), offset: 0, elem }
    }

    pub fn push(&mut self, k: Kernel) {
        self.kernels.push(k);
    }
}

/// `[rows, cols]` row-major.
fn mat(buf: Buf, cols: usize) -> Access {
    Access::new(buf, vec![Size::fixed(cols as i64), Size::fixed(1)])
}

/// A per-row value broadcast along the columns of a `[rows, cols]` iteration space.
fn per_row(buf: Buf) -> Access {
    Access::new(buf, vec![Size::fixed(1), Size::fixed(0)])
}

/// A scalar broadcast over a `[rows, cols]` (or `[rows]`) iteration space.
fn scalar(buf: Buf, rank: usize) -> Access {
    Access::new(buf, vec![Size::fixed(0); rank])
}

fn vector(buf: Buf) -> Access {
    Access::new(buf, vec![Size::fixed(1)])
}

fn space(rows: Size, cols: usize) -> Vec<Size> {
    vec![rows, Size::fixed(cols as i64)]
}

/// `m[r] = max_c x[r, c]`, `s[r] = Σ_c exp(x[r, c] − m[r])`.
fn max_and_sum_exp(b: &mut Builder, x: Buf, rows: Size, cols: usize) -> (Buf, Buf) {
    let m = b.temp(Elem::F32, rows);
    let s = b.temp(Elem::F32, rows);
    b.push(Kernel::Reduce { shape: space(rows, cols), inputs: vec![mat(x, cols)], expr: input(0), op: ReduceOp::Max, out: per_row(m), init: true });
    b.push(Kernel::Reduce {
        shape: space(rows, cols),
        inputs: vec![mat(x, cols), per_row(m)],
        expr: exp(sub(input(0), input(1))),
        op: ReduceOp::Sum,
        out: per_row(s),
        init: true,
    });
    (m, s)
}

/// `y = x − max − log Σ exp(x − max)` per row (a numerically stable log-softmax).
pub fn log_softmax_rows(b: &mut Builder, x: Buf, y: Buf, rows: Size, cols: usize) {
    let (m, s) = max_and_sum_exp(b, x, rows, cols);
    b.push(Kernel::Map {
        shape: space(rows, cols),
        inputs: vec![mat(x, cols), per_row(m), per_row(s)],
        outputs: vec![(mat(y, cols), sub(sub(input(0), input(1)), log(input(2))))],
    });
}

/// `y = exp(x − max) / Σ exp(x − max)` per row.
pub fn softmax_rows(b: &mut Builder, x: Buf, y: Buf, rows: Size, cols: usize) {
    let (m, s) = max_and_sum_exp(b, x, rows, cols);
    b.push(Kernel::Map {
        shape: space(rows, cols),
        inputs: vec![mat(x, cols), per_row(m), per_row(s)],
        outputs: vec![(mat(y, cols), div(exp(sub(input(0), input(1))), input(2)))],
    });
}

/// Softmax backward from its output `y`: `dx = y · (dy − Σ_c dy·y)`.
pub fn softmax_rows_backward(b: &mut Builder, y: Buf, dy: Buf, dx: Buf, rows: Size, cols: usize) {
    let dot = b.temp(Elem::F32, rows);
    b.push(Kernel::Reduce {
        shape: space(rows, cols),
        inputs: vec![mat(y, cols), mat(dy, cols)],
        expr: mul(input(0), input(1)),
        op: ReduceOp::Sum,
        out: per_row(dot),
        init: true,
    });
    b.push(Kernel::Map {
        shape: space(rows, cols),
        inputs: vec![mat(y, cols), mat(dy, cols), per_row(dot)],
        outputs: vec![(mat(dx, cols), mul(input(0), sub(input(1), input(2))))],
    });
}

/// Log-softmax backward from its output `y`: `dx = dy − exp(y) · Σ_c dy`.
pub fn log_softmax_rows_backward(b: &mut Builder, y: Buf, dy: Buf, dx: Buf, rows: Size, cols: usize) {
    let sum = b.temp(Elem::F32, rows);
    b.push(Kernel::Reduce { shape: space(rows, cols), inputs: vec![mat(dy, cols)], expr: input(0), op: ReduceOp::Sum, out: per_row(sum), init: true });
    b.push(Kernel::Map {
        shape: space(rows, cols),
        inputs: vec![mat(y, cols), mat(dy, cols), per_row(sum)],
        outputs: vec![(mat(dx, cols), sub(input(1), mul(exp(input(0)), input(2))))],
    });
}

/// Batch-norm statistics over `rows` rows of `cols` channels: `mean[c]` and the biased
/// variance `var[c]` (two passes, as PyTorch's CPU kernel, for accuracy).
pub fn batch_stats(b: &mut Builder, x: Buf, rows: Size, cols: usize, count: Buf, mean: Buf, var: Buf) {
    let col = |buf: Buf| Access::new(buf, vec![Size::fixed(0), Size::fixed(1)]);
    b.push(Kernel::Reduce { shape: space(rows, cols), inputs: vec![mat(x, cols)], expr: input(0), op: ReduceOp::Sum, out: col(mean), init: true });
    b.push(Kernel::Map { shape: vec![Size::fixed(cols as i64)], inputs: vec![vector(mean), scalar(count, 1)], outputs: vec![(vector(mean), div(input(0), input(1)))] });
    b.push(Kernel::Reduce {
        shape: space(rows, cols),
        inputs: vec![mat(x, cols), col(mean)],
        expr: mul(sub(input(0), input(1)), sub(input(0), input(1))),
        op: ReduceOp::Sum,
        out: col(var),
        init: true,
    });
    b.push(Kernel::Map { shape: vec![Size::fixed(cols as i64)], inputs: vec![vector(var), scalar(count, 1)], outputs: vec![(vector(var), div(input(0), input(1)))] });
}

/// Per row `out[r] = −(1 − ε)·logp[r, y_r] − (ε/C)·Σ_c logp[r, c]`, 0 where `y_r == ignore`.
#[allow(clippy::too_many_arguments)]
pub fn nll_per_row(b: &mut Builder, logp: Buf, ids: Buf, rows: Size, cols: usize, ignore: i64, eps: f32, out: Buf) {
    let picked = b.temp(Elem::F32, rows);
    b.push(Kernel::Pick { rows, cols, x: logp, ids, out: picked });
    let counted = |e: Expr| eq(input(1), c(ignore as f32), c(0.0), e);
    if eps != 0.0 {
        let all = b.temp(Elem::F32, rows);
        b.push(Kernel::Reduce { shape: space(rows, cols), inputs: vec![mat(logp, cols)], expr: input(0), op: ReduceOp::Sum, out: per_row(all), init: true });
        b.push(Kernel::Map {
            shape: vec![rows],
            inputs: vec![vector(picked), vector(ids), vector(all)],
            outputs: vec![(vector(out), counted(neg(add(mul(c(1.0 - eps), input(0)), mul(c(eps / cols as f32), input(2))))))],
        });
    } else {
        b.push(Kernel::Map { shape: vec![rows], inputs: vec![vector(picked), vector(ids)], outputs: vec![(vector(out), counted(neg(input(0))))] });
    }
}

/// Gradient of [`nll_per_row`] given the per-row upstream gradient `g`:
/// `dlogp[r, c] = −g_r·((1 − ε)·[c = y_r] + ε/C)`, 0 on ignored rows.
#[allow(clippy::too_many_arguments)]
pub fn nll_per_row_backward(b: &mut Builder, ids: Buf, rows: Size, cols: usize, ignore: i64, eps: f32, g: Buf, dlogp: Buf) {
    b.push(Kernel::Map {
        shape: space(rows, cols),
        inputs: vec![per_row(g), per_row(ids)],
        outputs: vec![(mat(dlogp, cols), eq(input(1), c(ignore as f32), c(0.0), mul(neg(input(0)), c(eps / cols as f32))))],
    });
    let masked = b.temp(Elem::F32, rows);
    b.push(Kernel::Map {
        shape: vec![rows],
        inputs: vec![vector(g), vector(ids)],
        outputs: vec![(vector(masked), eq(input(1), c(ignore as f32), c(0.0), mul(neg(input(0)), c(1.0 - eps))))],
    });
    b.push(Kernel::PutAdd { rows, cols, g: masked, ids, dx: dlogp });
}

/// Per row 1 when class `y_r` ranks among the `k` best scores, else 0. A class's rank counts
/// the scores above it and the equal scores at lower indices, so `k = 1` is arg-max with
/// ties resolved to the first index (as `torch.argmax`).
pub fn top_k_hits(b: &mut Builder, x: Buf, ids: Buf, rows: Size, cols: usize, k: usize, out: Buf) {
    let picked = b.temp(Elem::F32, rows);
    b.push(Kernel::Pick { rows, cols, x, ids, out: picked });
    let rank = b.temp(Elem::F32, rows);
    let above = gt(input(0), input(1), c(1.0), c(0.0));
    let tie_before = eq(input(0), input(1), gt(input(2), Expr::InnerIndex, c(1.0), c(0.0)), c(0.0));
    b.push(Kernel::Reduce {
        shape: space(rows, cols),
        inputs: vec![mat(x, cols), per_row(picked), per_row(ids)],
        expr: add(above, tie_before),
        op: ReduceOp::Sum,
        out: per_row(rank),
        init: true,
    });
    b.push(Kernel::Map { shape: vec![rows], inputs: vec![vector(rank)], outputs: vec![(vector(out), gt(c(k as f32 - 0.5), input(0), c(1.0), c(0.0)))] });
}

//! Recurrent layers as kernels. Forward: one GEMM projects every step's input at once
//! (`X·W_ihᵀ + b_ih` over `B·T` rows); a time loop then runs, per step, one small GEMM
//! (`h·W_hhᵀ`) and one fused map for the gates, which also freezes rows past their length,
//! zeroes their outputs and saves what the backward pass needs. Backward: a reverse time
//! loop produces the gate gradients of every step; the weight, bias and input gradients
//! are then single GEMMs and reductions over all `B·T` rows.

use super::kernel::ex::*;
use super::kernel::*;
use super::templates::Builder;
use crate::check::Cell;

/// The buffers of one recurrent layer application.
#[derive(Debug, Clone, Copy)]
pub struct Layer {
    pub cell: Cell,
    pub x: Buf,
    pub lengths: Buf,
    pub w_ih: Buf,
    pub w_hh: Buf,
    pub b_ih: Option<Buf>,
    pub b_hh: Option<Buf>,
    pub h0: Option<Buf>,
    pub c0: Option<Buf>,
    pub input: usize,
    pub hidden: usize,
    /// The padded length of this batch's sequences.
    pub steps: Size,
}

/// What the forward pass keeps for the backward pass.
#[derive(Debug, Clone, Copy)]
pub struct Saved {
    /// `[B, T, H]`: the state before each step.
    h_prev: Buf,
    /// `[B, T, H]`: the cell state before each step (lstm).
    c_prev: Buf,
    /// `[B, T, S·H]`: gate values per step (gru: r, z, n, W_hn·h + b_hn; lstm: i, f, g, o, c′;
    /// rnn: h′).
    gates: Buf,
}

/// Gradients w.r.t. (x, w_ih, w_hh, b_ih, b_hh, h0, c0).
#[derive(Debug, Clone, Copy)]
pub struct Grads {
    pub x: Buf,
    pub w_ih: Buf,
    pub w_hh: Buf,
    pub b_ih: Buf,
    pub b_hh: Buf,
    pub h0: Buf,
    pub c0: Buf,
}

fn gates(cell: Cell) -> usize {
    cell.gates()
}

/// Saved gate slots per step.
fn saved_slots(cell: Cell) -> usize {
    match cell {
        Cell::Rnn { .. } => 1,
        Cell::Gru | Cell::Lstm => cell.gates() + 1,
    }
}

fn at(buf: Buf, elems: usize) -> Buf {
    Buf { offset: buf.offset + elems * 4, ..buf }
}

fn zero() -> Size {
    Size::fixed(0)
}

fn fx(n: usize) -> Size {
    Size::fixed(n as i64)
}

/// A `[B, H]` view of column block `k` (width H) of a `[B, T, W]` per-step buffer at the
/// loop's current step.
fn step_block(buf: Buf, steps: Size, width: usize, hidden: usize, k: usize) -> Access {
    Access { buf: at(buf, k * hidden), strides: vec![steps.times(fx(width)), fx(1)], step: fx(width) }
}

/// A `[B, H]` view of column block `k` of a `[B, W]` buffer.
fn block(buf: Buf, width: usize, hidden: usize, k: usize) -> Access {
    Access::new(at(buf, k * hidden), vec![fx(width), fx(1)])
}

fn bias_block(buf: Buf, hidden: usize, k: usize) -> Access {
    Access::new(at(buf, k * hidden), vec![zero(), fx(1)])
}

fn rows(buf: Buf) -> Access {
    Access::new(buf, vec![fx(1), zero()])
}

/// `C = A·Bᵀ`-style products over row-major buffers (`accumulate` adds into C).
#[allow(clippy::too_many_arguments)]
fn gemm(b: &mut Builder, m: Size, n: Size, k: Size, a: (Buf, Size, Size, Size), bm: (Buf, Size, Size), c: (Buf, Size, Size)) {
    b.push(Kernel::Gemm {
        m,
        n,
        k,
        batch: fx(1),
        a: MatView { buf: a.0, rs: a.1, cs: a.2, batch_stride: zero(), step: a.3 },
        b: MatView { buf: bm.0, rs: bm.1, cs: bm.2, batch_stride: zero(), step: zero() },
        c: MatView { buf: c.0, rs: c.1, cs: c.2, batch_stride: zero(), step: zero() },
        accumulate: false,
    });
}

/// The forward pass; writes `y` (`[B, T, H]`) and returns what backward needs.
pub fn forward(b: &mut Builder, l: &Layer, y: Buf) -> Saved {
    let (h, g) = (l.hidden, gates(l.cell) * l.hidden);
    let bt = Size::batch(1).times(l.steps);
    let sw = saved_slots(l.cell) * h;
    let xp = b.temp(Elem::F32, bt.times(fx(g)));
    let saved = Saved {
        h_prev: b.temp(Elem::F32, bt.times(fx(h))),
        c_prev: b.temp(Elem::F32, bt.times(fx(h))),
        gates: b.temp(Elem::F32, bt.times(fx(sw))),
    };
    // Every step's input projection at once: xp = X·W_ihᵀ (+ b_ih).
    gemm(b, bt, fx(g), fx(l.input), (l.x, fx(l.input), fx(1), zero()), (l.w_ih, fx(1), fx(l.input)), (xp, fx(g), fx(1)));
    if let Some(bi) = l.b_ih {
        b.push(Kernel::Map {
            shape: vec![bt, fx(g)],
            inputs: vec![Access::new(xp, vec![fx(g), fx(1)]), Access::new(bi, vec![zero(), fx(1)])],
            outputs: vec![(Access::new(xp, vec![fx(g), fx(1)]), add(input(0), input(1)))],
        });
    }
    let state = b.temp(Elem::F32, Size::batch(h as i64));
    let cell_state = b.temp(Elem::F32, Size::batch(h as i64));
    for (dst, init) in [(state, l.h0), (cell_state, l.c0)] {
        match init {
            Some(src) => b.push(Kernel::Map {
                shape: vec![Size::batch(1), fx(h)],
                inputs: vec![Access::new(src, vec![fx(h), fx(1)])],
                outputs: vec![(Access::new(dst, vec![fx(h), fx(1)]), input(0))],
            }),
            None => b.push(Kernel::Zero { buf: dst, len: Size::batch(h as i64) }),
        }
    }
    let hp = b.temp(Elem::F32, Size::batch(g as i64));
    let mut body = Vec::new();
    let mut inner = Builder::default();
    // hp = h·W_hhᵀ for this step.
    gemm(&mut inner, Size::batch(1), fx(g), fx(h), (state, fx(h), fx(1), zero()), (l.w_hh, fx(1), fx(h)), (hp, fx(g), fx(1)));
    // Inputs of the gate map: xp blocks, hp blocks, b_hh blocks, h, c, lengths.
    let nb = gates(l.cell);
    let mut inputs: Vec<Access> = Vec::new();
    for k in 0..nb {
        inputs.push(step_block(xp, l.steps, g, h, k));
    }
    for k in 0..nb {
        inputs.push(block(hp, g, h, k));
    }
    let has_bias = l.b_hh.is_some();
    if let Some(bh) = l.b_hh {
        for k in 0..nb {
            inputs.push(bias_block(bh, h, k));
        }
    }
    let h_in = inputs.len();
    inputs.push(Access::new(state, vec![fx(h), fx(1)]));
    let c_in = inputs.len();
    inputs.push(Access::new(cell_state, vec![fx(h), fx(1)]));
    let len_in = inputs.len();
    inputs.push(rows(l.lengths));
    let xk = |k: usize| input(k);
    let hk = |k: usize| if has_bias { add(input(nb + k), input(2 * nb + k)) } else { input(nb + k) };
    let hprev = input(h_in);
    let cprev = input(c_in);
    let valid = |t: Expr, f: Expr| gt(input(len_in), Expr::LoopVar, t, f);
    let (h_new, c_new, saved_exprs): (Expr, Expr, Vec<Expr>) = match l.cell {
        Cell::Rnn { relu } => {
            let pre = add(xk(0), hk(0));
            let h2 = if relu { gt(pre.clone(), c(0.0), pre, c(0.0)) } else { tanh(pre) };
            (h2.clone(), cprev.clone(), vec![h2])
        }
        Cell::Gru => {
            let r = sigmoid(add(xk(0), hk(0)));
            let z = sigmoid(add(xk(1), hk(1)));
            let hn = hk(2);
            let n = tanh(add(xk(2), mul(r.clone(), hn.clone())));
            let h2 = add(mul(sub(c(1.0), z.clone()), n.clone()), mul(z.clone(), hprev.clone()));
            (h2, cprev.clone(), vec![r, z, n, hn])
        }
        Cell::Lstm => {
            let i = sigmoid(add(xk(0), hk(0)));
            let f = sigmoid(add(xk(1), hk(1)));
            let gg = tanh(add(xk(2), hk(2)));
            let o = sigmoid(add(xk(3), hk(3)));
            let c2 = add(mul(f.clone(), cprev.clone()), mul(i.clone(), gg.clone()));
            let h2 = mul(o.clone(), tanh(c2.clone()));
            (h2, c2.clone(), vec![i, f, gg, o, c2])
        }
    };
    let lstm = matches!(l.cell, Cell::Lstm);
    let mut outputs = vec![
        (Access { buf: y, strides: vec![l.steps.times(fx(h)), fx(1)], step: fx(h) }, valid(h_new.clone(), c(0.0))),
        (step_block(saved.h_prev, l.steps, h, h, 0), hprev.clone()),
    ];
    if lstm {
        outputs.push((step_block(saved.c_prev, l.steps, h, h, 0), cprev.clone()));
    }
    for (k, e) in saved_exprs.into_iter().enumerate() {
        outputs.push((step_block(saved.gates, l.steps, sw, h, k), valid(e, c(0.0))));
    }
    // The state writes come last: every output above reads the old state.
    if lstm {
        outputs.push((Access::new(cell_state, vec![fx(h), fx(1)]), valid(c_new, cprev)));
    }
    outputs.push((Access::new(state, vec![fx(h), fx(1)]), valid(h_new, hprev)));
    inner.push(Kernel::Map { shape: vec![Size::batch(1), fx(h)], inputs, outputs });
    body.extend(inner.kernels);
    // The loop skips rows past the last running one (see `Kernel::Loop`): what is read
    // outside the loop at every row — the output, and the states the weight gradient
    // multiplies by zero gate gradients — starts at zero.
    for buf in [y, saved.h_prev] {
        b.push(Kernel::Zero { buf, len: bt.times(fx(h)) });
    }
    b.push(Kernel::Loop { count: l.steps, reverse: false, rows: Some(l.lengths), body });
    saved
}

/// The backward pass through time given `dy` (`[B, T, H]`).
pub fn backward(b: &mut Builder, l: &Layer, saved: &Saved, dy: Buf) -> Grads {
    let (h, g) = (l.hidden, gates(l.cell) * l.hidden);
    let bt = Size::batch(1).times(l.steps);
    let sw = saved_slots(l.cell) * h;
    let dgi = b.temp(Elem::F32, bt.times(fx(g)));
    let dgh = b.temp(Elem::F32, bt.times(fx(g)));
    let dh = b.temp(Elem::F32, Size::batch(h as i64));
    let dc = b.temp(Elem::F32, Size::batch(h as i64));
    let direct = b.temp(Elem::F32, Size::batch(h as i64));
    let tmp = b.temp(Elem::F32, Size::batch(h as i64));
    for buf in [dh, dc] {
        b.push(Kernel::Zero { buf, len: Size::batch(h as i64) });
    }
    // Per step: gate-gradient map, then dh = dgh·W_hh + direct on valid rows.
    let mut inputs = vec![
        Access::new(dh, vec![fx(h), fx(1)]),
        Access::new(dc, vec![fx(h), fx(1)]),
        step_block(dy, l.steps, h, h, 0),
        step_block(saved.h_prev, l.steps, h, h, 0),
        step_block(saved.c_prev, l.steps, h, h, 0),
        rows(l.lengths),
    ];
    let gate0 = inputs.len();
    for k in 0..saved_slots(l.cell) {
        inputs.push(step_block(saved.gates, l.steps, sw, h, k));
    }
    let sv = |k: usize| input(gate0 + k);
    let dht = add(input(0), input(2));
    let hprev = input(3);
    let cprev = input(4);
    let valid = |t: Expr, f: Expr| gt(input(5), Expr::LoopVar, t, f);
    let one = || c(1.0);
    let (d_gi, d_gh, dir, dc_new): (Vec<Expr>, Vec<Expr>, Expr, Expr) = match l.cell {
        Cell::Rnn { relu } => {
            let h2 = sv(0);
            let dpre = if relu { gt(h2, c(0.0), dht, c(0.0)) } else { mul(dht, sub(one(), mul(h2.clone(), h2))) };
            (vec![dpre.clone()], vec![dpre], c(0.0), input(1))
        }
        Cell::Gru => {
            let (r, z, n, hn) = (sv(0), sv(1), sv(2), sv(3));
            let dn = mul(dht.clone(), sub(one(), z.clone()));
            let dz = mul(dht.clone(), sub(hprev, n.clone()));
            let dpre_n = mul(dn, sub(one(), mul(n.clone(), n)));
            let dr = mul(dpre_n.clone(), hn);
            let dpre_r = mul(dr, mul(r.clone(), sub(one(), r.clone())));
            let dpre_z = mul(dz, mul(z.clone(), sub(one(), z.clone())));
            (vec![dpre_r.clone(), dpre_z.clone(), dpre_n.clone()], vec![dpre_r, dpre_z, mul(dpre_n, r)], mul(dht, z), input(1))
        }
        Cell::Lstm => {
            let (i, f, gg, o, c2) = (sv(0), sv(1), sv(2), sv(3), sv(4));
            let tc = tanh(c2);
            let dct = add(input(1), mul(mul(dht.clone(), o.clone()), sub(one(), mul(tc.clone(), tc.clone()))));
            let d_o = mul(dht, tc);
            let pre = vec![
                mul(mul(dct.clone(), gg.clone()), mul(i.clone(), sub(one(), i.clone()))),
                mul(mul(dct.clone(), cprev), mul(f.clone(), sub(one(), f.clone()))),
                mul(mul(dct.clone(), i), sub(one(), mul(gg.clone(), gg))),
                mul(d_o, mul(o.clone(), sub(one(), o))),
            ];
            (pre.clone(), pre, c(0.0), mul(dct, f))
        }
    };
    let mut outputs = Vec::new();
    for (k, e) in d_gi.into_iter().enumerate() {
        outputs.push((step_block(dgi, l.steps, g, h, k), valid(e, c(0.0))));
    }
    for (k, e) in d_gh.into_iter().enumerate() {
        outputs.push((step_block(dgh, l.steps, g, h, k), valid(e, c(0.0))));
    }
    outputs.push((Access::new(direct, vec![fx(h), fx(1)]), valid(dir, c(0.0))));
    outputs.push((Access::new(dc, vec![fx(h), fx(1)]), valid(dc_new, input(1))));
    let mut inner = Builder::default();
    inner.push(Kernel::Map { shape: vec![Size::batch(1), fx(h)], inputs, outputs });
    // tmp = dgh_t·W_hh (W_hh is [G·H, H]).
    gemm(&mut inner, Size::batch(1), fx(h), fx(g), (dgh, l.steps.times(fx(g)), fx(1), fx(g)), (l.w_hh, fx(h), fx(1)), (tmp, fx(h), fx(1)));
    inner.push(Kernel::Map {
        shape: vec![Size::batch(1), fx(h)],
        inputs: vec![Access::new(tmp, vec![fx(h), fx(1)]), Access::new(direct, vec![fx(h), fx(1)]), Access::new(dh, vec![fx(h), fx(1)]), rows(l.lengths)],
        outputs: vec![(Access::new(dh, vec![fx(h), fx(1)]), gt(input(3), Expr::LoopVar, add(input(0), input(1)), input(2)))],
    });
    // Skipped rows get no gate gradients; the whole-sequence products below read all rows.
    for buf in [dgi, dgh] {
        b.push(Kernel::Zero { buf, len: bt.times(fx(g)) });
    }
    b.push(Kernel::Loop { count: l.steps, reverse: true, rows: Some(l.lengths), body: inner.kernels });
    // Whole-sequence gradients.
    let grads = Grads {
        x: b.temp(Elem::F32, bt.times(fx(l.input))),
        w_ih: b.temp(Elem::F32, fx(g * l.input)),
        w_hh: b.temp(Elem::F32, fx(g * h)),
        b_ih: b.temp(Elem::F32, fx(g)),
        b_hh: b.temp(Elem::F32, fx(g)),
        h0: dh,
        c0: dc,
    };
    // dX = dGI·W_ih; dW_ih = dGIᵀ·X; dW_hh = dGHᵀ·H_prev.
    gemm(b, bt, fx(l.input), fx(g), (dgi, fx(g), fx(1), zero()), (l.w_ih, fx(l.input), fx(1)), (grads.x, fx(l.input), fx(1)));
    gemm(b, fx(g), fx(l.input), bt, (dgi, fx(1), fx(g), zero()), (l.x, fx(l.input), fx(1)), (grads.w_ih, fx(l.input), fx(1)));
    gemm(b, fx(g), fx(h), bt, (dgh, fx(1), fx(g), zero()), (saved.h_prev, fx(h), fx(1)), (grads.w_hh, fx(h), fx(1)));
    for (src, dst) in [(dgi, grads.b_ih), (dgh, grads.b_hh)] {
        b.push(Kernel::Reduce {
            shape: vec![bt, fx(g)],
            inputs: vec![Access::new(src, vec![fx(g), fx(1)])],
            expr: input(0),
            op: ReduceOp::Sum,
            out: Access::new(dst, vec![zero(), fx(1)]),
            init: true,
        });
    }
    grads
}

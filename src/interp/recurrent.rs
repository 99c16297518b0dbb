//! rnn / gru / lstm over padded batches with packed semantics, forward and backward through
//! time, for the interpreter. Written per row and per step for clarity, not speed.

use super::Real;
use crate::check::Cell;
use ndarray::{Array1, Array2, ArrayD, Axis, IxDyn};

/// The operands of a recurrent layer, unpacked.
pub struct Operands<T: Real> {
    pub x: ArrayD<T>,
    pub lengths: Vec<usize>,
    pub w_ih: Array2<T>,
    pub w_hh: Array2<T>,
    pub b_ih: Option<Array1<T>>,
    pub b_hh: Option<Array1<T>>,
    pub h0: Option<Array2<T>>,
    pub c0: Option<Array2<T>>,
}

fn sigmoid<T: Real>(x: T) -> T {
    T::one() / (T::one() + (-x).exp())
}

/// One row's step: returns (h', c', gate values for backward).
struct Step<T> {
    h_prev: Array1<T>,
    c_prev: Array1<T>,
    /// gru: [r, z, n, gh_n]; lstm: [i, f, g, o, c']; rnn: [h'].
    gates: Vec<Array1<T>>,
}

fn step<T: Real>(cell: Cell, ops: &Operands<T>, xt: &Array1<T>, h: &Array1<T>, c: &Array1<T>) -> (Array1<T>, Array1<T>, Vec<Array1<T>>) {
    let hs = ops.w_hh.ncols();
    let mut gi = ops.w_ih.dot(xt);
    let mut gh = ops.w_hh.dot(h);
    if let (Some(bi), Some(bh)) = (&ops.b_ih, &ops.b_hh) {
        gi += bi;
        gh += bh;
    }
    let part = |v: &Array1<T>, k: usize| v.slice(ndarray::s![k * hs..(k + 1) * hs]).to_owned();
    match cell {
        Cell::Rnn { relu } => {
            let pre = &gi + &gh;
            let h2 = pre.mapv(|v| if relu { if v > T::zero() { v } else { T::zero() } } else { v.tanh() });
            (h2.clone(), c.clone(), vec![h2])
        }
        Cell::Gru => {
            let r = (&part(&gi, 0) + &part(&gh, 0)).mapv(sigmoid);
            let z = (&part(&gi, 1) + &part(&gh, 1)).mapv(sigmoid);
            let ghn = part(&gh, 2);
            let n = (&part(&gi, 2) + &(&r * &ghn)).mapv(|v| v.tanh());
            let h2 = &z.mapv(|v| T::one() - v) * &n + &(&z * h);
            (h2, c.clone(), vec![r, z, n, ghn])
        }
        Cell::Lstm => {
            let pre = &gi + &gh;
            let i = part(&pre, 0).mapv(sigmoid);
            let f = part(&pre, 1).mapv(sigmoid);
            let g = part(&pre, 2).mapv(|v| v.tanh());
            let o = part(&pre, 3).mapv(sigmoid);
            let c2 = &f * c + &(&i * &g);
            let h2 = &o * &c2.mapv(|v| v.tanh());
            (h2, c2.clone(), vec![i, f, g, o, c2])
        }
    }
}

fn row<T: Real>(a: &ArrayD<T>, b: usize, t: usize) -> Array1<T> {
    a.index_axis(Axis(0), b).index_axis(Axis(0), t).iter().copied().collect()
}

/// The layer's output `[B, T, H]` (zeros at padded steps).
pub fn forward<T: Real>(cell: Cell, ops: &Operands<T>) -> ArrayD<T> {
    let (b, t) = (ops.x.shape()[0], ops.x.shape()[1]);
    let hs = ops.w_hh.ncols();
    let mut y = ArrayD::<T>::zeros(IxDyn(&[b, t, hs]));
    for r in 0..b {
        let mut h = ops.h0.as_ref().map_or_else(|| Array1::zeros(hs), |h| h.row(r).to_owned());
        let mut c = ops.c0.as_ref().map_or_else(|| Array1::zeros(hs), |c| c.row(r).to_owned());
        for s in 0..ops.lengths[r].min(t) {
            let (h2, c2, _) = step(cell, ops, &row(&ops.x, r, s), &h, &c);
            h = h2;
            c = c2;
            y.index_axis_mut(Axis(0), r).index_axis_mut(Axis(0), s).assign(&h);
        }
    }
    y
}

/// Gradients of `Σ y ⊙ dy` w.r.t. (x, w_ih, w_hh, b_ih, b_hh, h0, c0).
#[allow(clippy::type_complexity)]
pub fn backward<T: Real>(cell: Cell, ops: &Operands<T>, dy: &ArrayD<T>) -> (ArrayD<T>, Array2<T>, Array2<T>, Array1<T>, Array1<T>, Array2<T>, Array2<T>) {
    let (b, t) = (ops.x.shape()[0], ops.x.shape()[1]);
    let hs = ops.w_hh.ncols();
    let g = ops.w_hh.nrows();
    let mut dx = ArrayD::<T>::zeros(ops.x.raw_dim());
    let mut dw_ih = Array2::<T>::zeros(ops.w_ih.raw_dim());
    let mut dw_hh = Array2::<T>::zeros(ops.w_hh.raw_dim());
    let mut db_ih = Array1::<T>::zeros(g);
    let mut db_hh = Array1::<T>::zeros(g);
    let mut dh0 = Array2::<T>::zeros((b, hs));
    let mut dc0 = Array2::<T>::zeros((b, hs));
    let one = T::one();
    for r in 0..b {
        // Forward again, keeping each step's inputs and gates.
        let mut h = ops.h0.as_ref().map_or_else(|| Array1::zeros(hs), |h| h.row(r).to_owned());
        let mut c = ops.c0.as_ref().map_or_else(|| Array1::zeros(hs), |c| c.row(r).to_owned());
        let len = ops.lengths[r].min(t);
        let mut steps = Vec::new();
        for s in 0..len {
            let (h2, c2, gates) = step(cell, ops, &row(&ops.x, r, s), &h, &c);
            steps.push(Step { h_prev: h.clone(), c_prev: c.clone(), gates });
            h = h2;
            c = c2;
        }
        let mut dh = Array1::<T>::zeros(hs);
        let mut dc = Array1::<T>::zeros(hs);
        for s in (0..len).rev() {
            let st = &steps[s];
            let dht = &dh + &row(dy, r, s);
            let (d_gi, d_gh, dh_direct, dc_prev) = match cell {
                Cell::Rnn { relu } => {
                    let h2 = &st.gates[0];
                    let dpre = if relu {
                        ndarray::Zip::from(&dht).and(h2).map_collect(|d, h| if *h > T::zero() { *d } else { T::zero() })
                    } else {
                        ndarray::Zip::from(&dht).and(h2).map_collect(|d, h| *d * (one - *h * *h))
                    };
                    (dpre.clone(), dpre, Array1::zeros(hs), Array1::zeros(hs))
                }
                Cell::Gru => {
                    let (rg, z, n, ghn) = (&st.gates[0], &st.gates[1], &st.gates[2], &st.gates[3]);
                    let dn = &dht * &z.mapv(|v| one - v);
                    let dz = &dht * &(&st.h_prev - n);
                    let dpre_n = &dn * &n.mapv(|v| one - v * v);
                    let dr = &dpre_n * ghn;
                    let dpre_r = &dr * &rg.mapv(|v| v * (one - v));
                    let dpre_z = &dz * &z.mapv(|v| v * (one - v));
                    let mut gi = Array1::zeros(g);
                    let mut gh = Array1::zeros(g);
                    gi.slice_mut(ndarray::s![0..hs]).assign(&dpre_r);
                    gi.slice_mut(ndarray::s![hs..2 * hs]).assign(&dpre_z);
                    gi.slice_mut(ndarray::s![2 * hs..3 * hs]).assign(&dpre_n);
                    gh.slice_mut(ndarray::s![0..hs]).assign(&dpre_r);
                    gh.slice_mut(ndarray::s![hs..2 * hs]).assign(&dpre_z);
                    gh.slice_mut(ndarray::s![2 * hs..3 * hs]).assign(&(&dpre_n * rg));
                    (gi, gh, &dht * z, Array1::zeros(hs))
                }
                Cell::Lstm => {
                    let (i, f, gg, o, c2) = (&st.gates[0], &st.gates[1], &st.gates[2], &st.gates[3], &st.gates[4]);
                    let tc = c2.mapv(|v| v.tanh());
                    let dct = &dc + &(&(&dht * o) * &tc.mapv(|v| one - v * v));
                    let d_o = &dht * &tc;
                    let d_i = &dct * gg;
                    let d_g = &dct * i;
                    let d_f = &dct * &st.c_prev;
                    let mut pre = Array1::zeros(g);
                    pre.slice_mut(ndarray::s![0..hs]).assign(&(&d_i * &i.mapv(|v| v * (one - v))));
                    pre.slice_mut(ndarray::s![hs..2 * hs]).assign(&(&d_f * &f.mapv(|v| v * (one - v))));
                    pre.slice_mut(ndarray::s![2 * hs..3 * hs]).assign(&(&d_g * &gg.mapv(|v| one - v * v)));
                    pre.slice_mut(ndarray::s![3 * hs..4 * hs]).assign(&(&d_o * &o.mapv(|v| v * (one - v))));
                    (pre.clone(), pre, Array1::zeros(hs), &dct * f)
                }
            };
            let xt = row(&ops.x, r, s);
            for a in 0..g {
                for k in 0..xt.len() {
                    dw_ih[[a, k]] += d_gi[a] * xt[k];
                }
                for k in 0..hs {
                    dw_hh[[a, k]] += d_gh[a] * st.h_prev[k];
                }
            }
            db_ih += &d_gi;
            db_hh += &d_gh;
            let dxt = ops.w_ih.t().dot(&d_gi);
            dx.index_axis_mut(Axis(0), r).index_axis_mut(Axis(0), s).assign(&dxt);
            dh = ops.w_hh.t().dot(&d_gh) + dh_direct;
            dc = dc_prev;
        }
        dh0.row_mut(r).assign(&dh);
        dc0.row_mut(r).assign(&dc);
    }
    (dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0)
}

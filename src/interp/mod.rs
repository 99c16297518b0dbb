//! An ndarray interpreter of IR programs, generic over f32 and f64 — the test oracle for
//! gradients (finite differences in f64) and for the JIT (same inputs, same results within
//! f32 rounding). It is never an execution path of `kpc run`.

use crate::check::Dim;
use crate::codegen::kernel::dropout_keep;
use crate::ir::op::{Elementwise as E, Op, Runtime, Update};
use crate::ir::{NodeId, Program};
use ndarray::{ArrayD, Axis, IxDyn, NdFloat, Zip};
use std::collections::HashMap;

mod recurrent;

/// The element types the interpreter runs in.
pub trait Real: NdFloat {
    fn erf(self) -> Self;
    fn of(v: f64) -> Self;
    fn to64(self) -> f64;
}

impl Real for f32 {
    fn erf(self) -> f32 {
        libm::erff(self)
    }
    fn of(v: f64) -> f32 {
        v as f32
    }
    fn to64(self) -> f64 {
        self as f64
    }
}

impl Real for f64 {
    fn erf(self) -> f64 {
        libm::erf(self)
    }
    fn of(v: f64) -> f64 {
        v
    }
    fn to64(self) -> f64 {
        self
    }
}

/// Everything a program reads and writes.
#[derive(Debug, Clone)]
pub struct Env<T: Real> {
    /// Batch inputs (class ids stored as exact small integers).
    pub inputs: Vec<ArrayD<T>>,
    /// State tensors in state order (with their state_dict shapes).
    pub state: Vec<ArrayD<T>>,
    pub grads: HashMap<usize, ArrayD<T>>,
    pub opt: HashMap<(usize, usize), ArrayD<T>>,
    /// Runtime scalars by `Runtime::slot`.
    pub scalars: Vec<f64>,
    pub rng_key: u64,
    pub outputs: HashMap<usize, T>,
    /// Rows of the current batch.
    pub batch: usize,
    /// Per sequence dimension (in the job's order), each row's valid length.
    pub seq: Vec<Vec<usize>>,
    /// Sequence dimension names, in the same order.
    pub seq_names: Vec<String>,
}

impl<T: Real> Env<T> {
    /// Concrete sizes of a symbolic shape for this batch (padded lengths = the longest row).
    pub fn shape_of(&self, dims: &[Dim]) -> Vec<usize> {
        dims.iter()
            .map(|d| match d {
                Dim::Batch => self.batch,
                Dim::Fixed(n) => *n,
                Dim::Seq { name, offset } => {
                    let k = self.seq_names.iter().position(|n| n == name).expect("sequence dimension");
                    let t = self.seq[k].iter().copied().max().unwrap_or(0) as i64;
                    (t + offset).max(0) as usize
                }
            })
            .collect()
    }
}

/// Broadcasts two arrays to their common shape (PyTorch rules) and applies `f` per element.
fn zip2<T: Real>(a: &ArrayD<T>, b: &ArrayD<T>, f: impl Fn(T, T) -> T) -> ArrayD<T> {
    let n = a.ndim().max(b.ndim());
    let dim = |x: &ArrayD<T>, i: usize| if i + x.ndim() >= n { x.shape()[i + x.ndim() - n] } else { 1 };
    let shape: Vec<usize> = (0..n).map(|i| dim(a, i).max(dim(b, i))).collect();
    let av = a.broadcast(IxDyn(&shape)).expect("broadcastable");
    let bv = b.broadcast(IxDyn(&shape)).expect("broadcastable");
    let mut out = ArrayD::<T>::zeros(IxDyn(&shape));
    Zip::from(&mut out).and(&av).and(&bv).for_each(|o, &x, &y| *o = f(x, y));
    out
}

/// Sums `x` down to `shape` (reverse broadcasting).
fn sum_to<T: Real>(x: &ArrayD<T>, shape: &[usize]) -> ArrayD<T> {
    let mut v = x.clone();
    while v.ndim() > shape.len() {
        v = v.sum_axis(Axis(0));
    }
    for (i, &s) in shape.iter().enumerate() {
        if s == 1 && v.shape()[i] != 1 {
            v = v.sum_axis(Axis(i)).insert_axis(Axis(i));
        }
    }
    v
}

/// `[rows, cols]` view of an array (all leading axes merged).
fn as2<T: Real>(x: &ArrayD<T>) -> ndarray::Array2<T> {
    let cols = *x.shape().last().unwrap_or(&1);
    let rows = x.len() / cols.max(1);
    x.as_standard_layout().to_owned().into_shape_with_order((rows, cols)).expect("contiguous")
}

fn ew<T: Real>(e: E, a: &ArrayD<T>, b: Option<&ArrayD<T>>) -> ArrayD<T> {
    let one = T::one();
    let zero = T::zero();
    let half = T::of(0.5);
    let b = || b.expect("binary op");
    match e {
        E::Add => zip2(a, b(), |x, y| x + y),
        E::Sub => zip2(a, b(), |x, y| x - y),
        E::Mul => zip2(a, b(), |x, y| x * y),
        E::Div => zip2(a, b(), |x, y| x / y),
        E::Max => zip2(a, b(), |x, y| if x > y { x } else { y }),
        E::Neg => a.mapv(|x| -x),
        E::Exp => a.mapv(|x| x.exp()),
        E::Log => a.mapv(|x| x.ln()),
        E::Sqrt => a.mapv(|x| x.sqrt()),
        E::Abs => a.mapv(|x| x.abs()),
        E::Relu => a.mapv(|x| if x > zero { x } else { zero }),
        E::Tanh => a.mapv(|x| x.tanh()),
        E::Sigmoid => a.mapv(|x| one / (one + (-x).exp())),
        E::Gelu => a.mapv(|x| x * half * (one + (x * T::of(std::f64::consts::FRAC_1_SQRT_2)).erf())),
        E::ReluGrad => zip2(a, b(), |x, dy| if x > zero { dy } else { zero }),
        E::GeluGrad => zip2(a, b(), |x, dy| {
            let cdf = half * (one + (x * T::of(std::f64::consts::FRAC_1_SQRT_2)).erf());
            let pdf = T::of(0.398_942_280_401_432_7) * (-(x * x) * half).exp();
            dy * (cdf + x * pdf)
        }),
        E::AbsGrad => zip2(a, b(), |x, dy| if x > zero { dy } else if x < zero { -dy } else { zero }),
        E::Greater => zip2(a, b(), |x, y| if x > y { one } else { zero }),
        E::Equal => zip2(a, b(), |x, y| if x == y { one } else { zero }),
    }
}

fn rows_apply<T: Real>(x: &ArrayD<T>, f: impl Fn(&[T], &mut [T])) -> ArrayD<T> {
    let shape = x.shape().to_vec();
    let x2 = as2(x);
    let mut out = x2.clone();
    for (src, mut dst) in x2.outer_iter().zip(out.outer_iter_mut()) {
        let s: Vec<T> = src.to_vec();
        let mut d: Vec<T> = vec![T::zero(); s.len()];
        f(&s, &mut d);
        for (o, v) in dst.iter_mut().zip(d) {
            *o = v;
        }
    }
    out.into_shape_with_order(IxDyn(&shape)).expect("same size")
}

fn log_softmax_row<T: Real>(s: &[T], d: &mut [T]) {
    let m = s.iter().copied().fold(T::neg_infinity(), |a, b| if b > a { b } else { a });
    let sum = s.iter().map(|v| (*v - m).exp()).fold(T::zero(), |a, b| a + b);
    for (o, v) in d.iter_mut().zip(s) {
        *o = *v - m - sum.ln();
    }
}

/// Runs `p` on `env`; returns every node's value (for tests that inspect intermediates).
pub fn run<T: Real>(p: &Program, env: &mut Env<T>) -> HashMap<NodeId, ArrayD<T>> {
    let mut v: HashMap<NodeId, ArrayD<T>> = HashMap::new();
    let g = &p.graph;
    for n in p.schedule() {
        let node = g.node(n);
        let ops = g.operands(n);
        let arg = |k: usize| -> &ArrayD<T> { &v[&ops[k]] };
        let shape = env.shape_of(&node.shape);
        let scalar = |x: T| ArrayD::from_elem(IxDyn(&[]), x);
        let value: ArrayD<T> = match &node.op {
            Op::Input(k) => env.inputs[*k].clone(),
            Op::State(k) => env.state[*k].clone().into_shape_with_order(IxDyn(&shape)).expect("state shape"),
            Op::GradOf(k) => env.grads.get(k).cloned().unwrap_or_else(|| ArrayD::zeros(IxDyn(&shape))),
            Op::OptState { tensor, slot } => env.opt.get(&(*tensor, *slot)).cloned().unwrap_or_else(|| ArrayD::zeros(IxDyn(&shape))),
            Op::Const(c) => scalar(T::of(*c as f64)),
            Op::Runtime(r) => scalar(T::of(env.scalars[r.slot()])),
            Op::Elementwise(e) => ew(*e, arg(0), ops.get(1).map(|o| &v[o])),
            Op::MatMul { trans_a, trans_b } => {
                let (a, b) = (as2(arg(0)), as2(arg(1)));
                let a = if *trans_a { a.t().to_owned() } else { a };
                let b = if *trans_b { b.t().to_owned() } else { b };
                a.dot(&b).as_standard_layout().to_owned().into_dyn().into_shape_with_order(IxDyn(&shape)).expect("matmul shape")
            }
            Op::Reshape => arg(0).clone().into_shape_with_order(IxDyn(&shape)).expect("reshape"),
            Op::Broadcast => arg(0).broadcast(IxDyn(&shape)).expect("broadcast").to_owned(),
            Op::SumTo => sum_to(arg(0), &shape),
            Op::Softmax => rows_apply(arg(0), |s, d| {
                log_softmax_row(s, d);
                d.iter_mut().for_each(|x| *x = x.exp());
            }),
            Op::LogSoftmax => rows_apply(arg(0), log_softmax_row),
            Op::SoftmaxGrad | Op::LogSoftmaxGrad => {
                let (y, dy) = (as2(arg(0)), as2(arg(1)));
                let mut out = dy.clone();
                for ((yr, dyr), mut o) in y.outer_iter().zip(dy.outer_iter()).zip(out.outer_iter_mut()) {
                    if node.op == Op::SoftmaxGrad {
                        let dot = yr.iter().zip(dyr.iter()).map(|(a, b)| *a * *b).fold(T::zero(), |a, b| a + b);
                        for ((o, y), d) in o.iter_mut().zip(yr.iter()).zip(dyr.iter()) {
                            *o = *y * (*d - dot);
                        }
                    } else {
                        let sum = dyr.iter().copied().fold(T::zero(), |a, b| a + b);
                        for ((o, y), d) in o.iter_mut().zip(yr.iter()).zip(dyr.iter()) {
                            *o = *d - y.exp() * sum;
                        }
                    }
                }
                out.into_dyn().into_shape_with_order(IxDyn(&shape)).expect("shape")
            }
            Op::Cat => ndarray::concatenate(Axis(shape.len() - 1), &[arg(0).view(), arg(1).view()]).expect("cat"),
            Op::SliceLast { start } => {
                let w = *shape.last().expect("rank ≥ 1");
                arg(0).slice_axis(Axis(shape.len() - 1), ndarray::Slice::from(*start..start + w)).to_owned()
            }
            Op::DropoutMask { p, site } => {
                let scale = if *p < 1.0 { T::of(1.0 / (1.0 - *p as f64)) } else { T::zero() };
                let n: usize = shape.iter().product();
                let flat: Vec<T> = (0..n).map(|i| if dropout_keep(env.rng_key, *site as u64, i as u64, *p) { scale } else { T::zero() }).collect();
                ArrayD::from_shape_vec(IxDyn(&shape), flat).expect("mask")
            }
            Op::Gather { .. } => {
                let table = as2(arg(0));
                let ids = arg(1);
                let width = table.ncols();
                let mut out = Vec::with_capacity(ids.len() * width);
                for id in ids.iter() {
                    out.extend(table.row(id.to64() as usize).iter().copied());
                }
                ArrayD::from_shape_vec(IxDyn(&shape), out).expect("gather")
            }
            Op::ScatterAdd { skip } => {
                let ids = arg(0);
                let dy = as2(arg(1));
                let mut table = ndarray::Array2::<T>::zeros((shape[0], shape[1]));
                for (r, id) in ids.iter().enumerate() {
                    let id = id.to64() as i64;
                    if Some(id) == *skip {
                        continue;
                    }
                    let mut row = table.row_mut(id as usize);
                    row += &dy.row(r);
                }
                table.into_dyn()
            }
            Op::NllRows { ignore, eps } => {
                let logp = as2(arg(0));
                let ids = arg(1);
                let c = T::of(logp.ncols() as f64);
                let e = T::of(*eps as f64);
                let vals: Vec<T> = ids
                    .iter()
                    .enumerate()
                    .map(|(r, id)| {
                        let id = id.to64() as i64;
                        if id == *ignore {
                            return T::zero();
                        }
                        let row = logp.row(r);
                        let all = row.iter().copied().fold(T::zero(), |a, b| a + b);
                        -((T::one() - e) * row[id as usize] + e / c * all)
                    })
                    .collect();
                ArrayD::from_shape_vec(IxDyn(&shape), vals).expect("rows")
            }
            Op::CountedRows { ignore } => arg(0).mapv(|id| if id.to64() as i64 == *ignore { T::zero() } else { T::one() }),
            Op::NllRowsGrad { ignore, eps } => {
                let ids = arg(0);
                let gr = arg(1);
                let cols = *shape.last().expect("rank 2");
                let e = T::of(*eps as f64);
                let mut out = ndarray::Array2::<T>::zeros((ids.len(), cols));
                for (r, (id, g)) in ids.iter().zip(gr.iter()).enumerate() {
                    let id = id.to64() as i64;
                    if id == *ignore {
                        continue;
                    }
                    for k in 0..cols {
                        let hot = if k as i64 == id { T::one() - e } else { T::zero() };
                        out[[r, k]] = -*g * (hot + e / T::of(cols as f64));
                    }
                }
                out.into_dyn().into_shape_with_order(IxDyn(&shape)).expect("shape")
            }
            Op::ArgmaxHit | Op::TopKHit { .. } => {
                let k = if let Op::TopKHit { k } = node.op { k } else { 1 };
                let x = as2(arg(0));
                let vals: Vec<T> = arg(1)
                    .iter()
                    .enumerate()
                    .map(|(r, id)| {
                        let id = id.to64() as usize;
                        let row = x.row(r);
                        let rank = row.iter().enumerate().filter(|(c, v)| **v > row[id] || (**v == row[id] && *c < id)).count();
                        if rank < k { T::one() } else { T::zero() }
                    })
                    .collect();
                ArrayD::from_shape_vec(IxDyn(&shape), vals).expect("hits")
            }
            Op::ToFloat => arg(0).clone(),
            Op::ClipScale { max_norm } => {
                let total = arg(1).iter().next().copied().unwrap_or(T::zero());
                let coef = T::of(*max_norm as f64) / (total.sqrt() + T::of(1e-6));
                let coef = if coef < T::one() { coef } else { T::one() };
                arg(0).mapv(|g| g * coef)
            }
            Op::Update(_) | Op::Assign | Op::Output(_) => ArrayD::zeros(IxDyn(&[])),
            Op::Dropout { .. } | Op::BatchNorm { .. } => panic!("the interpreter runs specialised programs"),
            Op::Lengths { dim, offset } => {
                ArrayD::from_shape_vec(IxDyn(&shape), env.seq[*dim].iter().map(|l| T::of((*l as i64 + offset) as f64)).collect()).expect("lengths")
            }
            Op::SeqMask => {
                let lens = arg(0);
                let mut m = ArrayD::<T>::zeros(IxDyn(&shape));
                for b in 0..shape[0] {
                    let len = lens[[b]].to64() as usize;
                    for t in 0..shape[1].min(len) {
                        m.index_axis_mut(Axis(0), b).index_axis_mut(Axis(0), t).fill(T::one());
                    }
                }
                m
            }
            Op::SliceSeq { start } => arg(0).slice_axis(Axis(1), ndarray::Slice::from(*start..*start + shape[1])).to_owned(),
            Op::SliceSeqGrad { start } => {
                let dy = arg(0);
                let mut dx = ArrayD::<T>::zeros(IxDyn(&shape));
                let t = dy.shape()[1];
                dx.slice_axis_mut(Axis(1), ndarray::Slice::from(*start..*start + t)).assign(dy);
                dx
            }
            Op::Last => {
                let (x, lens) = (arg(0), arg(1));
                let mut y = ArrayD::<T>::zeros(IxDyn(&shape));
                for b in 0..shape[0] {
                    let t = lens[[b]].to64() as usize - 1;
                    y.index_axis_mut(Axis(0), b).assign(&x.index_axis(Axis(0), b).index_axis(Axis(0), t));
                }
                y
            }
            Op::LastGrad => {
                let (dy, lens) = (arg(0), arg(1));
                let mut dx = ArrayD::<T>::zeros(IxDyn(&shape));
                for b in 0..shape[0] {
                    let t = lens[[b]].to64() as usize - 1;
                    dx.index_axis_mut(Axis(0), b).index_axis_mut(Axis(0), t).assign(&dy.index_axis(Axis(0), b));
                }
                dx
            }
            Op::Recurrent { cell, bias, h0, c0 } => recurrent::forward(*cell, &recurrent_operands(&ops, &v, *bias, *h0, *c0)),
            Op::RecurrentGrad { cell, bias, h0, c0, wrt } => {
                let o = recurrent_operands(&ops, &v, *bias, *h0, *c0);
                let dy = &v[ops.last().expect("dy")];
                let (dx, dwi, dwh, dbi, dbh, dh0, dc0) = recurrent::backward(*cell, &o, dy);
                // Operand order: x, lengths, w_ih, w_hh, [b_ih, b_hh], [h0], [c0].
                let mut order: Vec<ArrayD<T>> = vec![dx, ArrayD::zeros(IxDyn(&[])), dwi.into_dyn(), dwh.into_dyn()];
                if *bias {
                    order.push(dbi.into_dyn());
                    order.push(dbh.into_dyn());
                }
                if *h0 {
                    order.push(dh0.into_dyn());
                }
                if *c0 {
                    order.push(dc0.into_dyn());
                }
                order.swap_remove(*wrt)
            }
        };
        v.insert(n, value);
    }
    // Effects, in order, after every value they read was computed.
    for &n in &p.effects {
        let ops = g.operands(n);
        match &g.node(n).op {
            Op::Assign => {
                let new = v[&ops[1]].clone();
                match g.node(ops[0]).op {
                    Op::State(k) => {
                        let shape = env.state[k].shape().to_vec();
                        env.state[k] = new.broadcast(IxDyn(&shape)).expect("assign").to_owned();
                    }
                    Op::GradOf(k) => {
                        let shape = env.shape_of(&g.node(ops[0]).shape);
                        env.grads.insert(k, new.broadcast(IxDyn(&shape)).expect("assign").to_owned());
                    }
                    ref other => panic!("assign to {}", other.name()),
                }
            }
            Op::Output(slot) => {
                let x = v[&ops[0]].iter().next().copied().unwrap_or(T::zero());
                env.outputs.insert(*slot, x);
            }
            Op::Update(rule) => {
                let Op::State(k) = g.node(ops[0]).op else { panic!("update of a non-state value") };
                let grad = v[&ops[1]].clone();
                update(env, k, &grad, *rule);
            }
            other => panic!("{} is not an effect", other.name()),
        }
    }
    v
}

fn recurrent_operands<T: Real>(ops: &[NodeId], v: &HashMap<NodeId, ArrayD<T>>, bias: bool, h0: bool, c0: bool) -> recurrent::Operands<T> {
    let two = |k: usize| -> ndarray::Array2<T> { as2(&v[&ops[k]]) };
    let one = |k: usize| -> ndarray::Array1<T> { v[&ops[k]].iter().copied().collect() };
    let mut next = 4;
    let (b_ih, b_hh) = if bias {
        next += 2;
        (Some(one(4)), Some(one(5)))
    } else {
        (None, None)
    };
    let h = if h0 {
        next += 1;
        Some(two(next - 1))
    } else {
        None
    };
    let c = if c0 { Some(two(next)) } else { None };
    recurrent::Operands {
        x: v[&ops[0]].clone(),
        lengths: v[&ops[1]].iter().map(|l| l.to64() as usize).collect(),
        w_ih: two(2),
        w_hh: two(3),
        b_ih,
        b_hh,
        h0: h,
        c0: c,
    }
}

/// `torch.lerp(a, b, w)`: `a + w·(b − a)` for `w < 0.5`, else `b − (b − a)·(1 − w)`.
fn lerp<T: Real>(a: T, b: T, w: T) -> T {
    if w < T::of(0.5) { a + w * (b - a) } else { b - (b - a) * (T::one() - w) }
}

/// PyTorch's update rules (LANGUAGE.md §10) on state tensor `k`.
fn update<T: Real>(env: &mut Env<T>, k: usize, grad: &ArrayD<T>, rule: Update) {
    let s = |r: Runtime, env: &Env<T>| T::of(env.scalars[r.slot()]);
    let lr = s(Runtime::Lr, env);
    let p = env.state[k].clone().into_shape_with_order(IxDyn(grad.shape())).expect("param shape");
    let zeros = || ArrayD::<T>::zeros(IxDyn(grad.shape()));
    let slot = |i: usize, env: &mut Env<T>| env.opt.get(&(k, i)).cloned().unwrap_or_else(zeros);
    let c = |x: f64| T::of(x);
    let new_p = match rule {
        Update::Sgd { momentum, dampening, weight_decay, nesterov } => {
            let g = zip2(grad, &p, |g, p| g + c(weight_decay) * p);
            let dir = if momentum != 0.0 {
                let buf = if s(Runtime::FirstStep, env) > T::of(0.5) { g.clone() } else { zip2(&slot(0, env), &g, |b, g| b * c(momentum) + c(1.0 - dampening) * g) };
                env.opt.insert((k, 0), buf.clone());
                if nesterov { zip2(&g, &buf, |g, b| g + c(momentum) * b) } else { buf }
            } else {
                g
            };
            zip2(&p, &dir, |p, d| p - lr * d)
        }
        Update::Adam { beta1, beta2, eps, weight_decay, amsgrad, decoupled } => {
            let p1 = if decoupled { p.mapv(|x| x * s(Runtime::DecayFactor, env)) } else { p.clone() };
            let g = if decoupled { grad.clone() } else { zip2(grad, &p, |g, p| g + c(weight_decay) * p) };
            // PyTorch's operation order: exp_avg.lerp_(g, 1 − β1), exp_avg_sq·β2 + (1 − β2)·g·g.
            let m = zip2(&slot(0, env), &g, |m, g| lerp(m, g, c(1.0 - beta1)));
            let vv = zip2(&slot(1, env), &g, |v, g| v * c(beta2) + c(1.0 - beta2) * g * g);
            env.opt.insert((k, 0), m.clone());
            env.opt.insert((k, 1), vv.clone());
            let vhat = if amsgrad {
                let vmax = zip2(&slot(2, env), &vv, |a, b| if a > b { a } else { b });
                env.opt.insert((k, 2), vmax.clone());
                vmax
            } else {
                vv
            };
            let (b2, step) = (s(Runtime::AdamBias2Sqrt, env), s(Runtime::AdamStepSize, env));
            let denom = vhat.mapv(|v| v.sqrt() / b2 + c(eps));
            let upd = zip2(&m, &denom, |m, d| (-step) * m / d);
            zip2(&p1, &upd, |p, u| p + u)
        }
        Update::RmsProp { alpha, eps, weight_decay, momentum, centered } => {
            let g = zip2(grad, &p, |g, p| g + c(weight_decay) * p);
            let sq = zip2(&slot(0, env), &g, |s, g| s * c(alpha) + c(1.0 - alpha) * g * g);
            env.opt.insert((k, 0), sq.clone());
            let ga_slot = 1 + usize::from(momentum != 0.0);
            let avg = if centered {
                let ga = zip2(&slot(ga_slot, env), &g, |a, g| lerp(a, g, c(1.0 - alpha)));
                env.opt.insert((k, ga_slot), ga.clone());
                zip2(&sq, &ga, |s, a| (s - a * a).sqrt() + c(eps))
            } else {
                sq.mapv(|s| s.sqrt() + c(eps))
            };
            if momentum != 0.0 {
                let buf = zip2(&slot(1, env), &zip2(&g, &avg, |g, a| g / a), |b, q| b * c(momentum) + q);
                env.opt.insert((k, 1), buf.clone());
                zip2(&p, &buf, |p, b| p - lr * b)
            } else {
                zip2(&p, &zip2(&g, &avg, |g, a| g / a), |p, q| p - lr * q)
            }
        }
    };
    let shape = env.state[k].shape().to_vec();
    env.state[k] = new_p.into_shape_with_order(IxDyn(&shape)).expect("param shape");
}

//! The programs of a job: the train step (or, with `accumulate = k`, a micro-step and an
//! apply step) and the eval step, built from the forward IR by specialisation, autodiff,
//! clipping and the optimizer update.

use super::specialise::{Mode, specialise};
use crate::autodiff;
use crate::check::{Job, Optimizer, TensorRole};
use crate::data::Dtype;
use crate::ir::lower::{Aggregate, Forward, Formula, Unsupported, lower};
use crate::ir::op::{Elementwise as E, Op, Runtime, Update};
use crate::ir::{Graph, NodeId, Program};

/// Where each program writes its outputs (f32 slots of the output region).
#[derive(Debug, Clone)]
pub struct Outputs {
    /// The step's (unscaled) loss, in train programs.
    pub loss: usize,
    /// Per loss term, (sum slot, count slot), in eval programs.
    pub terms: Vec<(usize, usize)>,
    pub term_mean: Vec<bool>,
    /// Per metric: key, sum slot, count slot, mean.
    pub metrics: Vec<(String, usize, usize, bool)>,
    pub len: usize,
}

/// Everything the code generator and the loop need.
#[derive(Debug, Clone)]
pub struct Programs {
    /// The train-mode forward pass and loss (what `kpc graph --mode forward` shows).
    pub forward: Program,
    /// `[step]`, or `[micro_step, apply]` with accumulation.
    pub train: Vec<Program>,
    pub eval: Option<Program>,
    pub outputs: Outputs,
    pub formula: Formula,
    /// Optimizer-state tensors per state tensor index (0 for buffers and frozen tensors).
    pub opt_slots: Vec<usize>,
}

fn update_rule(o: &Optimizer) -> Update {
    match *o {
        Optimizer::Sgd { momentum, dampening, weight_decay, nesterov, .. } => Update::Sgd { momentum, dampening, weight_decay, nesterov },
        Optimizer::Adam { betas, eps, weight_decay, amsgrad, decoupled, .. } => {
            Update::Adam { beta1: betas.0, beta2: betas.1, eps, weight_decay, amsgrad, decoupled }
        }
        Optimizer::RmsProp { alpha, eps, weight_decay, momentum, centered, .. } => Update::RmsProp { alpha, eps, weight_decay, momentum, centered },
    }
}

fn scalar(g: &mut Graph, op: Op, operands: &[NodeId]) -> NodeId {
    g.add(op, operands, vec![], Dtype::F32)
}

/// Trainable state tensors and their IR leaf nodes in `g`.
fn trainable(job: &Job, g: &Graph) -> Vec<(usize, NodeId)> {
    let state = job.state();
    let mut v: Vec<(usize, NodeId)> = g
        .ids()
        .into_iter()
        .filter_map(|n| match g.node(n).op {
            Op::State(k) if state[k].role == TensorRole::Param => Some((k, n)),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

/// Clipping (if any) and the optimizer update of every gradient; returns the update effects.
fn clip_and_update(job: &Job, g: &mut Graph, grads: &[(usize, NodeId, NodeId)], rule: Update) -> Vec<NodeId> {
    let mut grads: Vec<(usize, NodeId, NodeId)> = grads.to_vec();
    if let Some(max_norm) = job.train.clip_grad_norm {
        // total = Σ over every gradient of Σ g² (torch.nn.utils.clip_grad_norm_).
        let mut total: Option<NodeId> = None;
        for (_, _, d) in &grads {
            let sq = g.add(Op::Elementwise(E::Mul), &[*d, *d], g.node(*d).shape.clone(), Dtype::F32);
            let s = scalar(g, Op::SumTo, &[sq]);
            total = Some(match total {
                Some(t) => scalar(g, Op::Elementwise(E::Add), &[t, s]),
                None => s,
            });
        }
        if let Some(total) = total {
            for (_, _, d) in grads.iter_mut() {
                let shape = g.node(*d).shape.clone();
                *d = g.add(Op::ClipScale { max_norm: max_norm as f32 }, &[*d, total], shape, Dtype::F32);
            }
        }
    }
    let mut effects = Vec::new();
    for (k, param, d) in grads {
        let shape = g.node(param).shape.clone();
        let mut operands = vec![param, d];
        for slot in 0..rule.state_slots() {
            operands.push(g.add(Op::OptState { tensor: k, slot }, &[], shape.clone(), Dtype::F32));
        }
        effects.push(g.add(Op::Update(rule), &operands, shape, Dtype::F32));
    }
    effects
}

fn output(g: &mut Graph, slot: usize, v: NodeId) -> NodeId {
    scalar(g, Op::Output(slot), &[v])
}

/// Builds every program of `job`.
pub fn build(job: &Job) -> Result<Programs, Unsupported> {
    let fwd: Forward = lower(job)?;
    let rule = update_rule(&job.optimizer);
    let state = job.state();
    let opt_slots: Vec<usize> = state.iter().map(|t| if t.role == TensorRole::Param { rule.state_slots() } else { 0 }).collect();

    // The train-mode forward (shown by `kpc graph --mode forward`).
    let mut forward = Program { name: "forward".into(), graph: fwd.graph.clone(), effects: vec![] };
    let mut fx = specialise(&mut forward.graph, Mode::Train);
    fx.push(output(&mut forward.graph, 0, fwd.loss));
    forward.effects = fx;

    let k = job.train.accumulate;
    let mut train = Vec::new();
    {
        let mut p = Program { name: if k == 1 { "train_step".into() } else { "micro_step".into() }, graph: fwd.graph.clone(), effects: vec![] };
        let g = &mut p.graph;
        let mut effects = specialise(g, Mode::Train);
        let seed = if k == 1 { scalar(g, Op::Const(1.0), &[]) } else { scalar(g, Op::Runtime(Runtime::AccumScale), &[]) };
        let params = trainable(job, g);
        let wrt: Vec<NodeId> = params.iter().map(|(_, n)| *n).collect();
        let grads = autodiff::backward(g, fwd.loss, seed, &wrt);
        let mut with_grads: Vec<(usize, NodeId, NodeId)> = Vec::new();
        for (t, n) in &params {
            let d = match grads.get(n) {
                Some(d) => *d,
                // A parameter the loss does not reach has a zero gradient (PyTorch: None,
                // which optimizers skip; weight decay then does not apply either).
                None => continue,
            };
            with_grads.push((*t, *n, d));
        }
        effects.push(output(g, 0, fwd.loss));
        if k == 1 {
            effects.extend(clip_and_update(job, g, &with_grads, rule));
        } else {
            for (t, _, d) in &with_grads {
                let shape = g.node(*d).shape.clone();
                let acc = g.add(Op::GradOf(*t), &[], shape.clone(), Dtype::F32);
                let sum = g.add(Op::Elementwise(E::Add), &[acc, *d], shape.clone(), Dtype::F32);
                effects.push(g.add(Op::Assign, &[acc, sum], shape, Dtype::F32));
            }
        }
        p.effects = effects;
        train.push(p);
        if k > 1 {
            let mut apply = Program { name: "apply".into(), graph: Graph::default(), effects: vec![] };
            let g = &mut apply.graph;
            let mut gs = Vec::new();
            for (t, _, _) in &with_grads {
                let shape: Vec<crate::check::Dim> = state[*t].shape.iter().map(|d| crate::check::Dim::Fixed(*d)).collect();
                let param = g.add(Op::State(*t), &[], shape.clone(), Dtype::F32);
                let acc = g.add(Op::GradOf(*t), &[], shape, Dtype::F32);
                gs.push((*t, param, acc));
            }
            let mut effects = clip_and_update(job, g, &gs, rule);
            for (_, _, acc) in &gs {
                let shape = g.node(*acc).shape.clone();
                let zero = scalar(g, Op::Const(0.0), &[]);
                let z = g.add(Op::Broadcast, &[zero], shape.clone(), Dtype::F32);
                effects.push(g.add(Op::Assign, &[*acc, z], shape, Dtype::F32));
            }
            apply.effects = effects;
            train.push(apply);
        }
    }

    // Outputs: slot 0 the train loss; then (sum, count) per term and per metric.
    let mut next = 1usize;
    let mut slots = |n: usize| {
        let s = next;
        next += n;
        s
    };
    let term_slots: Vec<(usize, usize)> = fwd.terms.iter().map(|_| {
        let s = slots(2);
        (s, s + 1)
    }).collect();
    let metric_slots: Vec<(String, usize, usize, bool)> = fwd
        .metrics
        .iter()
        .map(|(key, a)| {
            let s = slots(2);
            (key.clone(), s, s + 1, a.mean)
        })
        .collect();
    let eval = if job.data.eval.is_some() {
        let mut p = Program { name: "eval_step".into(), graph: fwd.graph.clone(), effects: vec![] };
        let g = &mut p.graph;
        let written = specialise(g, Mode::Eval);
        debug_assert!(written.is_empty(), "eval mode writes nothing");
        let mut effects = Vec::new();
        let aggregates: Vec<(Aggregate, (usize, usize))> = fwd
            .terms
            .iter()
            .copied()
            .zip(term_slots.iter().copied())
            .chain(fwd.metrics.iter().map(|(_, a)| *a).zip(metric_slots.iter().map(|m| (m.1, m.2))))
            .collect();
        for (a, (s, c)) in aggregates {
            effects.push(output(g, s, a.sum));
            effects.push(output(g, c, a.count));
        }
        p.effects = effects;
        Some(p)
    } else {
        None
    };
    let outputs = Outputs {
        loss: 0,
        term_mean: fwd.terms.iter().map(|t| t.mean).collect(),
        terms: term_slots,
        metrics: metric_slots,
        len: next,
    };
    let mut eval = eval;
    for p in train.iter_mut().chain(eval.iter_mut()).chain(std::iter::once(&mut forward)) {
        super::simplify::simplify(p);
    }
    Ok(Programs { forward, train, eval, outputs, formula: fwd.formula, opt_slots })
}

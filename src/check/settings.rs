//! The optimizer, schedule and train items.

use super::args::{Kind, Param, Typed, bind, eval_const, nullable, opt, req};
use super::model::*;
use crate::diag::{Diagnostic, Span};
use crate::syntax::ast::{Block, Expr, ExprKind, Single};

/// A call `name(args)` in an item that takes one (optimizer, schedule).
pub(super) fn callee_of(e: &Expr) -> Option<(&str, Span, &[crate::syntax::ast::Arg])> {
    match &e.kind {
        ExprKind::Call { callee, args } => match &callee.kind {
            ExprKind::Name(n) => Some((n.as_str(), callee.span, args.as_slice())),
            _ => None,
        },
        ExprKind::Name(n) => Some((n.as_str(), e.span, &[])),
        _ => None,
    }
}

/// Constant-evaluates parameter `name` of a bound call, if given.
pub(super) fn get<'a>(b: &'a super::args::Bound<'_>, name: &'a str) -> Result<Option<Typed<'a>>, Diagnostic> {
    let Some(e) = b.expr(name) else { return Ok(None) };
    let value = eval_const(e, &mut |f| Err(Diagnostic::at(f.span, "a field is not allowed here", "expected a constant")))?;
    Ok(Some(Typed { callee: &b.callee, name, span: e.span, value }))
}

fn float_or(b: &super::args::Bound<'_>, name: &str, default: f64) -> Result<f64, Diagnostic> {
    get(b, name)?.map_or(Ok(default), |t| t.float())
}

fn nonneg(b: &super::args::Bound<'_>, name: &str, default: f64) -> Result<f64, Diagnostic> {
    match get(b, name)? {
        None => Ok(default),
        Some(t) => {
            let v = t.float()?;
            if v < 0.0 { Err(t.out_of_range("≥ 0")) } else { Ok(v) }
        }
    }
}

fn bool_or(b: &super::args::Bound<'_>, name: &str, default: bool) -> Result<bool, Diagnostic> {
    get(b, name)?.map_or(Ok(default), |t| t.bool())
}

fn positive_int(b: &super::args::Bound<'_>, name: &str, default: Option<u64>) -> Result<u64, Diagnostic> {
    match get(b, name)? {
        None => Ok(default.unwrap_or(1)),
        Some(t) => {
            let v = t.int()?;
            if v < 1 { Err(t.out_of_range("a positive integer")) } else { Ok(v as u64) }
        }
    }
}

const SGD: &[Param] = &[
    opt("lr", Kind::Float),
    opt("momentum", Kind::Float),
    opt("dampening", Kind::Float),
    opt("weight_decay", Kind::Float),
    opt("nesterov", Kind::Bool),
];
const ADAM: &[Param] = &[
    opt("lr", Kind::Float),
    opt("betas", Kind::FloatPair),
    opt("eps", Kind::Float),
    opt("weight_decay", Kind::Float),
    opt("amsgrad", Kind::Bool),
];
const RMSPROP: &[Param] = &[
    opt("lr", Kind::Float),
    opt("alpha", Kind::Float),
    opt("eps", Kind::Float),
    opt("weight_decay", Kind::Float),
    opt("momentum", Kind::Float),
    opt("centered", Kind::Bool),
];

pub(super) fn optimizer(item: &Single) -> Result<Optimizer, Diagnostic> {
    let Some((name, span, args)) = callee_of(&item.value) else {
        return Err(Diagnostic::at(item.value.span, "expected an optimizer call", "expected e.g. `sgd(lr = 0.1)`")
            .with_note("optimizers: sgd, adam, adamw, rmsprop"));
    };
    let whole = item.value.span;
    match name {
        "sgd" => {
            let b = bind(name, whole, SGD, None, args)?;
            let o = Optimizer::Sgd {
                lr: nonneg(&b, "lr", 1e-3)?,
                momentum: nonneg(&b, "momentum", 0.0)?,
                dampening: float_or(&b, "dampening", 0.0)?,
                weight_decay: nonneg(&b, "weight_decay", 0.0)?,
                nesterov: bool_or(&b, "nesterov", false)?,
            };
            if let Optimizer::Sgd { nesterov: true, momentum, dampening, .. } = o
                && (momentum <= 0.0 || dampening != 0.0) {
                    return Err(Diagnostic::at(
                        b.span_of("nesterov"),
                        "nesterov momentum requires a momentum and zero dampening",
                        "nesterov = true here",
                    )
                    .with_note("as in PyTorch's torch.optim.SGD"));
                }
            Ok(o)
        }
        "adam" | "adamw" => {
            let b = bind(name, whole, ADAM, None, args)?;
            let betas = match get(&b, "betas")? {
                None => (0.9, 0.999),
                Some(t) => {
                    let (b1, b2) = t.float_pair()?;
                    if !(0.0..1.0).contains(&b1) || !(0.0..1.0).contains(&b2) {
                        return Err(t.out_of_range("a pair of numbers in [0, 1)"));
                    }
                    (b1, b2)
                }
            };
            Ok(Optimizer::Adam {
                lr: nonneg(&b, "lr", 1e-3)?,
                betas,
                eps: nonneg(&b, "eps", 1e-8)?,
                weight_decay: nonneg(&b, "weight_decay", if name == "adamw" { 1e-2 } else { 0.0 })?,
                amsgrad: bool_or(&b, "amsgrad", false)?,
                decoupled: name == "adamw",
            })
        }
        "rmsprop" => {
            let b = bind(name, whole, RMSPROP, None, args)?;
            Ok(Optimizer::RmsProp {
                lr: nonneg(&b, "lr", 1e-2)?,
                alpha: nonneg(&b, "alpha", 0.99)?,
                eps: nonneg(&b, "eps", 1e-8)?,
                weight_decay: nonneg(&b, "weight_decay", 0.0)?,
                momentum: nonneg(&b, "momentum", 0.0)?,
                centered: bool_or(&b, "centered", false)?,
            })
        }
        other => Err(Diagnostic::at(span, format!("unknown optimizer `{other}`"), "not an optimizer")
            .with_note("expected one of: sgd, adam, adamw, rmsprop")),
    }
}

const EVERY_WARMUP: [Param; 2] = [opt("every", Kind::Str), opt("warmup", Kind::Int)];
const CONSTANT: &[Param] = &EVERY_WARMUP;
const STEP_LR: &[Param] = &[req("step_size", Kind::Int), opt("gamma", Kind::Float), EVERY_WARMUP[0], EVERY_WARMUP[1]];
const MULTISTEP_LR: &[Param] =
    &[req("milestones", Kind::IntList), opt("gamma", Kind::Float), EVERY_WARMUP[0], EVERY_WARMUP[1]];
const EXPONENTIAL_LR: &[Param] = &[req("gamma", Kind::Float), EVERY_WARMUP[0], EVERY_WARMUP[1]];
const COSINE_LR: &[Param] =
    &[req("t_max", Kind::Int).alias("T_max"), opt("eta_min", Kind::Float), EVERY_WARMUP[0], EVERY_WARMUP[1]];

pub(super) fn schedule(item: Option<&Single>) -> Result<Schedule, Diagnostic> {
    let Some(item) = item else {
        return Ok(Schedule { kind: ScheduleKind::Constant, every: Every::Epoch, warmup: 0 });
    };
    let Some((name, span, args)) = callee_of(&item.value) else {
        return Err(Diagnostic::at(item.value.span, "expected a schedule call", "expected e.g. `step_lr(step_size = 10)`")
            .with_note("schedules: constant, step_lr, multistep_lr, exponential_lr, cosine_lr"));
    };
    let whole = item.value.span;
    let sig = match name {
        "constant" => CONSTANT,
        "step_lr" => STEP_LR,
        "multistep_lr" => MULTISTEP_LR,
        "exponential_lr" => EXPONENTIAL_LR,
        "cosine_lr" => COSINE_LR,
        other => {
            return Err(Diagnostic::at(span, format!("unknown schedule `{other}`"), "not a schedule")
                .with_note("expected one of: constant, step_lr, multistep_lr, exponential_lr, cosine_lr"));
        }
    };
    let b = bind(name, whole, sig, None, args)?;
    let gamma = |default: f64| nonneg(&b, "gamma", default);
    let kind = match name {
        "constant" => ScheduleKind::Constant,
        "step_lr" => ScheduleKind::StepLr { step_size: positive_int(&b, "step_size", None)?, gamma: gamma(0.1)? },
        "multistep_lr" => {
            let t = get(&b, "milestones")?.expect("required");
            let list = t.int_list()?;
            if list.iter().any(|m| *m < 0) {
                return Err(t.out_of_range("non-negative integers"));
            }
            ScheduleKind::MultiStepLr { milestones: list.into_iter().map(|m| m as u64).collect(), gamma: gamma(0.1)? }
        }
        "exponential_lr" => ScheduleKind::ExponentialLr { gamma: gamma(0.0)? },
        _ => ScheduleKind::CosineLr { t_max: positive_int(&b, "t_max", None)?, eta_min: nonneg(&b, "eta_min", 0.0)? },
    };
    let every = match get(&b, "every")? {
        None => Every::Epoch,
        Some(t) => match t.str()?.as_str() {
            "epoch" => Every::Epoch,
            "step" => Every::Step,
            _ => return Err(t.out_of_range("\"epoch\" or \"step\"")),
        },
    };
    let warmup = match get(&b, "warmup")? {
        None => 0,
        Some(t) => {
            let w = t.int()?;
            if w < 0 {
                return Err(t.out_of_range("≥ 0"));
            }
            w as u64
        }
    };
    Ok(Schedule { kind, every, warmup })
}

const TRAIN_KEYS: &[Param] = &[
    opt("epochs", Kind::Int),
    opt("batch_size", Kind::Int),
    opt("shuffle", Kind::Bool),
    opt("drop_last", Kind::Bool),
    opt("accumulate", Kind::Int),
    nullable("clip_grad_norm", Kind::Float),
    opt("eval_every", Kind::Int),
    opt("seed", Kind::Int),
];

/// Largest batch the runtime plans memory for.
pub const MAX_BATCH: i64 = 1 << 20;

pub(super) fn train(block: Option<&Block>) -> Result<TrainConfig, Diagnostic> {
    let mut cfg = TrainConfig::default();
    let Some(block) = block else { return Ok(cfg) };
    let mut seen: Vec<(&str, Span)> = Vec::new();
    for b in &block.bindings {
        let key = b.name.name.as_str();
        let Some(param) = TRAIN_KEYS.iter().find(|p| p.name == key) else {
            let names: Vec<&str> = TRAIN_KEYS.iter().map(|p| p.name).collect();
            return Err(Diagnostic::at(b.name.span, format!("unknown train setting `{key}`"), "unknown key")
                .with_note(format!("expected one of: {}", names.join(", "))));
        };
        if let Some((_, prev)) = seen.iter().find(|(k, _)| *k == key) {
            return Err(Diagnostic::at(b.name.span, format!("train setting `{key}` is set twice"), "set again here")
                .with_label(*prev, "first set here"));
        }
        seen.push((key, b.name.span));
        let value = eval_const(&b.value, &mut |f| Err(Diagnostic::at(f.span, "a field is not allowed here", "expected a constant")))?;
        let t = Typed { callee: "train", name: param.name, span: b.value.span, value };
        let int_at_least = |min: i64, max: i64, what: &str| -> Result<i64, Diagnostic> {
            let v = t.int()?;
            if v < min || v > max { Err(t.out_of_range(what)) } else { Ok(v) }
        };
        match key {
            "epochs" => cfg.epochs = int_at_least(1, 1_000_000_000, "a positive integer (at most 10^9)")? as u64,
            "batch_size" => {
                cfg.batch_size = int_at_least(1, MAX_BATCH, &format!("a positive integer (at most {MAX_BATCH})"))? as usize
            }
            "shuffle" => cfg.shuffle = t.bool()?,
            "drop_last" => cfg.drop_last = t.bool()?,
            "accumulate" => cfg.accumulate = int_at_least(1, 1 << 20, "a positive integer")? as usize,
            "clip_grad_norm" => {
                cfg.clip_grad_norm = if t.is_none() {
                    None
                } else {
                    let v = t.float()?;
                    if v <= 0.0 {
                        return Err(t.out_of_range("a positive number or `none`"));
                    }
                    Some(v)
                }
            }
            "eval_every" => cfg.eval_every = int_at_least(1, i64::MAX, "a positive integer")? as u64,
            _ => cfg.seed = int_at_least(0, i64::MAX, "a non-negative integer")? as u64,
        }
    }
    Ok(cfg)
}

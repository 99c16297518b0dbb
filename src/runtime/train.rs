//! The training loop (LANGUAGE.md §8–§10): epochs of batches in file or shuffled order,
//! micro-steps and optimizer steps, the learning-rate schedule, evaluation, the metrics log,
//! the console report and checkpoints. Every step runs compiled code; this loop only moves
//! batches and scalars.

use super::compiled::{BatchBuffers, CompiledJob, compile, compile_with, max_batch_rows};
use super::state::{self, StateValues};
use crate::check::{Every, Job, Optimizer, ScheduleKind};
use crate::codegen::kernel::mix64;
use crate::diag::Diagnostic;
use crate::ir::op::Runtime;
use rand::RngExt;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub epochs: Option<u64>,
    pub seed: Option<u64>,
    pub init: Option<PathBuf>,
    pub save: Option<PathBuf>,
    pub metrics: Option<PathBuf>,
    pub quiet: bool,
    /// Compile with profile marks and report where the steps' time went (`--profile`).
    pub profile: bool,
    /// When the process started (for the `first_step` record); the start of [`run`] if unset.
    pub started: Option<Instant>,
}

/// The learning rate of optimizer step `s` (from 1) after `epochs_done` epochs, in f64.
pub fn learning_rate(job: &Job, epochs_done: u64, steps_done: u64) -> f64 {
    let base = job.optimizer.lr();
    let s = &job.schedule;
    let t = match s.every {
        Every::Epoch => epochs_done,
        Every::Step => steps_done,
    } as f64;
    let lr = match &s.kind {
        ScheduleKind::Constant => base,
        ScheduleKind::StepLr { step_size, gamma } => base * gamma.powf((t / *step_size as f64).floor()),
        ScheduleKind::MultiStepLr { milestones, gamma } => base * gamma.powi(milestones.iter().filter(|m| (**m as f64) <= t).count() as i32),
        ScheduleKind::ExponentialLr { gamma } => base * gamma.powf(t),
        ScheduleKind::CosineLr { t_max, eta_min } => eta_min + (base - eta_min) * (1.0 + (std::f64::consts::PI * t / *t_max as f64).cos()) / 2.0,
    };
    if s.warmup > 0 { lr * ((steps_done + 1) as f64 / s.warmup as f64).min(1.0) } else { lr }
}

/// The shortest decimal that reads back to the same f32; `null` if not finite.
pub fn json_f32(v: f32) -> String {
    if v.is_finite() { format!("{v}") } else { "null".into() }
}

/// The runtime scalars (by `Runtime::slot`) of optimizer step `t` (from 1) at learning rate
/// `lr` for a batch of `rows` rows: everything is computed in f64, as PyTorch computes its
/// Python-float scalars, and rounded to f32 where it meets a tensor.
pub fn step_scalars(job: &Job, lr: f64, t: u64, rows: usize) -> Vec<f64> {
    let mut s = vec![0.0; Runtime::ALL.len()];
    s[Runtime::Lr.slot()] = lr;
    s[Runtime::AccumScale.slot()] = 1.0 / job.train.accumulate as f64;
    s[Runtime::FirstStep.slot()] = if t == 1 { 1.0 } else { 0.0 };
    s[Runtime::BatchRows.slot()] = rows as f64;
    if let Optimizer::Adam { betas, weight_decay, .. } = job.optimizer {
        let bc1 = 1.0 - betas.0.powi(t as i32);
        let bc2 = 1.0 - betas.1.powi(t as i32);
        s[Runtime::AdamStepSize.slot()] = lr / bc1;
        s[Runtime::AdamBias2Sqrt.slot()] = bc2.sqrt();
        s[Runtime::DecayFactor.slot()] = 1.0 - lr * weight_decay;
    }
    s
}

fn set_step_scalars(c: &mut CompiledJob, job: &Job, lr: f64, t: u64) {
    for (slot, v) in step_scalars(job, lr, t, 0).into_iter().enumerate() {
        if slot != Runtime::BatchRows.slot() {
            c.exec.scalars[slot] = v as f32;
        }
    }
}

/// Eval loss and metrics over the whole eval set (§5: per term, sums and counts add up).
pub fn evaluate(c: &mut CompiledJob, job: &Job, buffers: &mut BatchBuffers) -> Vec<(String, f64)> {
    let (Some(eval_prog), Some(table)) = (c.eval, job.data.eval.as_ref()) else { return Vec::new() };
    let outs = c.programs.outputs.clone();
    let mut term_sums = vec![(0.0f64, 0.0f64); outs.terms.len()];
    let mut metric_sums = vec![(0.0f64, 0.0f64); outs.metrics.len()];
    let rows: Vec<usize> = (0..table.rows).collect();
    for chunk in rows.chunks(job.train.batch_size) {
        c.set_scalar(Runtime::BatchRows, chunk.len() as f64);
        let batch = buffers.fill(job, table, chunk, 0);
        c.exec.run(eval_prog, &batch);
        for (k, (s, n)) in outs.terms.iter().enumerate() {
            term_sums[k].0 += c.output(*s) as f64;
            term_sums[k].1 += c.output(*n) as f64;
        }
        for (k, (_, s, n, _)) in outs.metrics.iter().enumerate() {
            metric_sums[k].0 += c.output(*s) as f64;
            metric_sums[k].1 += c.output(*n) as f64;
        }
    }
    let term_values: Vec<f64> = term_sums.iter().zip(&outs.term_mean).map(|((s, n), mean)| if *mean { s / n } else { *s }).collect();
    let mut result = vec![("eval_loss".to_string(), c.programs.formula.eval(&term_values))];
    for ((key, _, _, mean), (s, n)) in outs.metrics.iter().zip(metric_sums) {
        result.push((key.clone(), if *mean { s / n } else { s }));
    }
    result
}

/// Starting state: `--init`, else kpc's initialisation for the seed.
fn starting_state(job: &Job, opts: &RunOptions, seed: u64) -> Result<StateValues, Diagnostic> {
    match &opts.init {
        Some(p) => state::load(job, p),
        None => Ok(state::init(job, seed)),
    }
}

fn line(out: &mut Option<std::io::BufWriter<std::fs::File>>, text: String) -> Result<(), Diagnostic> {
    if let Some(f) = out {
        writeln!(f, "{text}").map_err(cannot_write)?;
    }
    Ok(())
}

/// Writes out the buffered records (at the end of each epoch and of the run).
fn flush(out: &mut Option<std::io::BufWriter<std::fs::File>>) -> Result<(), Diagnostic> {
    if let Some(f) = out {
        f.flush().map_err(cannot_write)?;
    }
    Ok(())
}

fn cannot_write(e: std::io::Error) -> Diagnostic {
    Diagnostic::error(format!("cannot write the metrics file: {e}"))
}

/// Trains `job`; returns the final eval results.
pub fn run(job: &Job, opts: &RunOptions) -> Result<Vec<(String, f64)>, Diagnostic> {
    let started = opts.started.unwrap_or_else(Instant::now);
    let seed = opts.seed.unwrap_or(job.train.seed);
    let epochs = opts.epochs.unwrap_or(job.train.epochs);
    let mut c = compile_with(job, opts.profile)?;
    let start = starting_state(job, opts, seed)?;
    c.set_state(&start);
    let mut batches_tracked = start.batches_tracked;
    let has_batchnorm = job.layers.iter().any(|l| matches!(l.kind, crate::check::LayerKind::BatchNorm { .. }));
    let mut metrics_file = match &opts.metrics {
        // Buffered: a step record per step must not cost a system call per step.
        Some(p) => Some(std::io::BufWriter::new(std::fs::File::create(p).map_err(|e| Diagnostic::error(format!("cannot create `{}`: {e}", p.display())))?)),
        None => None,
    };
    line(&mut metrics_file, format!("{{\"kind\":\"compile\",\"ms\":{:.3}}}", c.compile_ms))?;
    let train = &job.data.train;
    let bs = job.train.batch_size;
    let k = job.train.accumulate;
    let mut buffers = BatchBuffers::new(job, max_batch_rows(job))?;
    let mut shuffle = state::stream(seed, state::SHUFFLE_STREAM);
    let dropout_base = state::stream(seed, state::DROPOUT_STREAM).random::<u64>();
    let mut per_epoch = train.rows / bs;
    if !job.train.drop_last && !train.rows.is_multiple_of(bs) {
        per_epoch += 1;
    }
    let steps_per_epoch = per_epoch.div_ceil(k);
    if !opts.quiet {
        let params: usize = job.state().iter().filter(|t| t.role == crate::check::TensorRole::Param).map(|t| t.shape.iter().product::<usize>()).sum();
        let eval_rows = job.data.eval.as_ref().map_or("no eval set".into(), |e| format!("{} eval rows", e.rows));
        say(&format!(
            "{}: {} parameters, {} train rows, {eval_rows}, {steps_per_epoch} steps per epoch, compiled in {:.1} ms",
            job.path.display(),
            crate::report::group_digits(params as u64),
            train.rows,
            c.compile_ms
        ));
    }
    let mut step = 0u64;
    let mut train_steps = 0u64;
    let mut results = Vec::new();
    // A progress bar only where someone is watching: on a terminal, and not with --quiet.
    let show_bar = !opts.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    for epoch in 1..=epochs {
        let t0 = Instant::now();
        let bar = if show_bar {
            let b = indicatif::ProgressBar::new(steps_per_epoch as u64);
            let style = indicatif::ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> ");
            b.set_style(style);
            b.set_prefix(format!("{epoch}/{epochs}"));
            Some(b)
        } else {
            None
        };
        let mut order: Vec<usize> = (0..train.rows).collect();
        if job.train.shuffle {
            // Fisher–Yates from the shuffle stream (ChaCha8): the same seed, the same order.
            for i in (1..order.len()).rev() {
                let j = shuffle.random_range(0..=i);
                order.swap(i, j);
            }
        }
        let mut chunks: Vec<&[usize]> = order.chunks(bs).collect();
        if job.train.drop_last && chunks.last().is_some_and(|c| c.len() < bs) {
            chunks.pop();
        }
        let mut step_losses = Vec::new();
        let mut lr = learning_rate(job, epoch - 1, step);
        for group in chunks.chunks(k) {
            lr = learning_rate(job, epoch - 1, step);
            set_step_scalars(&mut c, job, lr, step + 1);
            let mut micro_losses = 0.0f64;
            for (m, rows) in group.iter().enumerate() {
                if has_batchnorm && rows.len() == 1 {
                    return Err(Diagnostic::error(format!(
                        "epoch {epoch}, step {}: a training batch of one row gives batchnorm one value per channel",
                        step + 1
                    ))
                    .with_note("as in PyTorch, batchnorm needs more than one value per channel in training; set `drop_last = true` or change `batch_size`"));
                }
                let key = mix64(dropout_base ^ mix64((step << 16) | m as u64));
                c.set_scalar(Runtime::BatchRows, rows.len() as f64);
                let batch = buffers.fill(job, train, rows, key);
                c.exec.run(c.train[0], &batch);
                batches_tracked += 1;
                micro_losses += c.output(c.programs.outputs.loss) as f64;
            }
            if k > 1 {
                let batch = buffers.fill(job, train, &[], 0);
                c.exec.run(c.train[1], &batch);
            }
            step += 1;
            train_steps += group.len() as u64;
            if step == 1 {
                let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
                line(&mut metrics_file, format!("{{\"kind\":\"first_step\",\"ms\":{:.3},\"unix_s\":{unix:.6}}}", started.elapsed().as_secs_f64() * 1e3))?;
            }
            let loss = (micro_losses / group.len() as f64) as f32;
            line(&mut metrics_file, format!("{{\"kind\":\"step\",\"epoch\":{epoch},\"step\":{step},\"loss\":{},\"lr\":{}}}", json_f32(loss), json_f32(lr as f32)))?;
            if !loss.is_finite() {
                return Err(Diagnostic::error(format!("the loss became non-finite ({loss}) at epoch {epoch}, step {step}"))
                    .with_note("lower the learning rate or add `clip_grad_norm`; the last saved checkpoint is unchanged"));
            }
            if let Some(name) = first_non_finite(&c, job) {
                return Err(Diagnostic::error(format!("`{name}` became non-finite at epoch {epoch}, step {step}"))
                    .with_note("a gradient or update overflowed; lower the learning rate or add `clip_grad_norm`"));
            }
            step_losses.push(loss as f64);
            if let Some(b) = &bar {
                let rate = (step_losses.len() * bs * k) as f64 / t0.elapsed().as_secs_f64().max(1e-9);
                b.set_message(format!("loss {loss:.4}  lr {}  {rate:.0} samples/s", json_f32(lr as f32)));
                b.inc(1);
            }
            if job.schedule.every == Every::Step {
                lr = learning_rate(job, epoch - 1, step - 1);
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let train_loss = step_losses.iter().sum::<f64>() / step_losses.len().max(1) as f64;
        // Throughput counts training only: the samples trained on over the time spent on them.
        let train_seconds = t0.elapsed().as_secs_f64();
        let samples: usize = chunks.iter().map(|rows| rows.len()).sum();
        let samples_per_s = samples as f64 / train_seconds.max(1e-9);
        let due = epoch % job.train.eval_every == 0 || epoch == epochs;
        results = if due { evaluate(&mut c, job, &mut buffers) } else { Vec::new() };
        let seconds = t0.elapsed().as_secs_f64();
        let mut rec = format!("{{\"kind\":\"epoch\",\"epoch\":{epoch},\"train_loss\":{}", json_f32(train_loss as f32));
        let mut console = format!("epoch {epoch}/{epochs}  train_loss {train_loss:.4}");
        for (key, v) in &results {
            rec.push_str(&format!(",\"{key}\":{}", json_f32(*v as f32)));
            console.push_str(&format!("  {key} {v:.4}"));
        }
        rec.push_str(&format!(
            ",\"lr\":{},\"seconds\":{seconds:.3},\"train_seconds\":{train_seconds:.4},\"samples_per_s\":{samples_per_s:.0}}}",
            json_f32(lr as f32)
        ));
        line(&mut metrics_file, rec)?;
        flush(&mut metrics_file)?;
        if !opts.quiet {
            say(&format!("{console}  lr {}  {seconds:.2}s", json_f32(lr as f32)));
        }
        if let Some(p) = &opts.save {
            state::save(job, &c.state(batches_tracked), p)?;
        }
    }
    if let Some(mib) = peak_rss_mib() {
        line(&mut metrics_file, format!("{{\"kind\":\"end\",\"peak_rss_mib\":{mib:.1}}}"))?;
    }
    if opts.profile {
        report_profile(&c, train_steps, &mut metrics_file)?;
    }
    flush(&mut metrics_file)?;
    Ok(results)
}

/// `--profile`: a table per program of the time spent in each kernel class, on stdout, and
/// one `{"kind":"profile"}` record per (program, class) in the metrics file.
fn report_profile(c: &CompiledJob, train_steps: u64, metrics: &mut Option<std::io::BufWriter<std::fs::File>>) -> Result<(), Diagnostic> {
    let table = crate::codegen::profile::take();
    let name = |p: usize| {
        if Some(p) == c.eval {
            "eval step"
        } else if c.train.len() == 1 {
            "train step"
        } else if p == c.train[0] {
            "micro-step"
        } else {
            "accumulated update"
        }
    };
    for (p, classes) in table.iter().enumerate() {
        let total: u64 = classes.iter().map(|(ns, _)| ns).sum();
        if total == 0 {
            continue;
        }
        let runs = if c.train.first() == Some(&p) { format!(", {train_steps} runs, {:.1} µs per run", total as f64 / 1e3 / train_steps.max(1) as f64) } else { String::new() };
        let mut text = format!("profile of the {}: {:.1} ms in kernels{runs}\n", name(p), total as f64 / 1e6);
        let mut rows: Vec<(usize, u64, u64)> = classes.iter().enumerate().filter(|(_, (ns, _))| *ns > 0).map(|(k, (ns, n))| (k, *ns, *n)).collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1));
        for (k, ns, calls) in rows {
            let class = crate::codegen::profile::class_name(k);
            text.push_str(&format!("  {class:<48} {:>10.2} ms {:>6.1}%  {calls:>9} kernels\n", ns as f64 / 1e6, 100.0 * ns as f64 / total as f64));
            line(metrics, format!("{{\"kind\":\"profile\",\"program\":\"{}\",\"class\":\"{class}\",\"ms\":{:.3},\"share\":{:.4},\"kernels\":{calls}}}", name(p), ns as f64 / 1e6, ns as f64 / total as f64))?;
        }
        say(text.trim_end());
    }
    Ok(())
}

/// The process's peak resident set so far (Linux's `VmHWM`), in MiB; `None` elsewhere.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}

/// A report line on stdout; a closed pipe (`kpc run f | head`) ends the report, not the run.
fn say(text: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// The first state tensor holding a NaN or infinity, by state_dict name.
fn first_non_finite(c: &CompiledJob, job: &Job) -> Option<String> {
    let state = c.exec.state.as_slice();
    for (k, t) in job.state().iter().enumerate() {
        let (o, n) = (c.layout.offset[k], c.layout.numel[k]);
        if state[o..o + n].iter().any(|v| !v.is_finite()) {
            return Some(t.name.clone());
        }
    }
    None
}

/// `kpc eval`: the eval step over the eval set from given weights.
pub fn eval_only(job: &Job, weights: &std::path::Path) -> Result<Vec<(String, f64)>, Diagnostic> {
    if job.data.eval.is_none() {
        return Err(Diagnostic::error(format!("`{}` has no eval source to evaluate on", job.path.display())));
    }
    let mut c = compile(job)?;
    let start = state::load(job, weights)?;
    c.set_state(&start);
    let mut buffers = BatchBuffers::new(job, max_batch_rows(job))?;
    Ok(evaluate(&mut c, job, &mut buffers))
}

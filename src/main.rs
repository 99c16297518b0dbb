//! The `kpc` command line (LANGUAGE.md §9). Exit status: 0 success, 1 a user error with a
//! diagnostic, 2 bad command-line usage (clap's own exit code for usage errors).

use clap::{Parser, Subcommand};
use kpc::diag::{Diagnostic, SourceMap, render_all};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "kpc", version, about = "Compile and run declarative training jobs (.train files)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse, bind the data and infer shapes; print the inputs and the parameter table.
    Check {
        /// The .train file.
        file: PathBuf,
    },
    /// Train a job: compile its train and eval steps and run the training loop.
    Run {
        /// The .train file.
        file: PathBuf,
        /// Override the file's `epochs`.
        #[arg(long)]
        epochs: Option<u64>,
        /// Start from these weights (safetensors, PyTorch state_dict names) instead of random ones.
        #[arg(long, value_name = "W.safetensors")]
        init: Option<PathBuf>,
        /// Write the final weights here (after every epoch, atomically).
        #[arg(long, value_name = "W.safetensors")]
        save: Option<PathBuf>,
        /// Write one JSON line per step and per epoch here.
        #[arg(long, value_name = "M.jsonl")]
        metrics: Option<PathBuf>,
        /// Override the file's `seed`.
        #[arg(long)]
        seed: Option<u64>,
        /// Print only errors.
        #[arg(long)]
        quiet: bool,
        /// Threads for matrix products (default: the machine's cores). Results do not depend
        /// on it.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
        threads: Option<u16>,
        /// Report where the steps' time went, by kernel class (adds a clock read per kernel).
        #[arg(long)]
        profile: bool,
    },
    /// Evaluate given weights on the job's eval set.
    Eval {
        /// The .train file.
        file: PathBuf,
        /// The weights to evaluate (safetensors).
        #[arg(long, value_name = "W.safetensors")]
        weights: PathBuf,
        /// Print the `eval_*` values as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Write the initial weights `kpc run` would start from.
    Init {
        /// The .train file.
        file: PathBuf,
        /// Where to write them (safetensors).
        #[arg(short = 'o', long = "output", value_name = "W.safetensors")]
        output: PathBuf,
        /// Override the file's `seed`.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Print a compiled program of a job, one node per line (or as Graphviz DOT).
    Graph {
        /// The .train file.
        file: PathBuf,
        /// Which program: the train-mode forward pass, the train step, or the eval step.
        #[arg(long, value_enum, default_value_t = GraphMode::Train)]
        mode: GraphMode,
        /// `text` (one node per line) or `dot` (for `dot -Tsvg`).
        #[arg(long, value_enum, default_value_t = GraphFormat::Text)]
        format: GraphFormat,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum GraphMode {
    Forward,
    Train,
    Eval,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum GraphFormat {
    Text,
    Dot,
}

/// A failed command: diagnostics to render against the sources.
struct Failure {
    diags: Vec<Diagnostic>,
    sources: SourceMap,
}

fn main() -> ExitCode {
    let started = std::time::Instant::now();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { file } => check(&file),
        Command::Run { file, epochs, init, save, metrics, seed, quiet, threads, profile } => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            kpc::codegen::host::set_threads(threads.map_or(cores, usize::from));
            run(&file, kpc::runtime::train::RunOptions { epochs, seed, init, save, metrics, quiet, profile, started: Some(started) })
        }
        Command::Eval { file, weights, json } => eval(&file, &weights, json),
        Command::Init { file, output, seed } => init(&file, &output, seed),
        Command::Graph { file, mode, format } => graph(&file, mode, format),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            let text = render_all(&f.diags, &f.sources);
            let _ = std::io::stderr().lock().write_all(text.as_bytes());
            ExitCode::from(1)
        }
    }
}

/// Writes to stdout; a closed pipe (`kpc check f | head`) is not worth a panic.
fn print(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

fn load(file: &std::path::Path) -> Result<(kpc::check::Job, SourceMap), Failure> {
    let mut sources = SourceMap::new();
    match kpc::check::check_file(file, &mut sources) {
        Ok(job) => Ok((job, sources)),
        Err(diags) => Err(Failure { diags, sources }),
    }
}

fn check(file: &std::path::Path) -> Result<(), Failure> {
    let (job, _) = load(file)?;
    print(&kpc::report::check_summary(&job));
    Ok(())
}

/// Builds the programs of a job, or a located "not supported yet" diagnostic.
fn programs(job: &kpc::check::Job, sources: SourceMap) -> Result<(kpc::passes::programs::Programs, SourceMap), Failure> {
    match kpc::passes::programs::build(job) {
        Ok(p) => Ok((p, sources)),
        Err(u) => Err(Failure { diags: vec![Diagnostic::at(u.span, u.what, "not supported yet")], sources }),
    }
}

fn graph(file: &std::path::Path, mode: GraphMode, format: GraphFormat) -> Result<(), Failure> {
    let (job, sources) = load(file)?;
    let (p, sources) = programs(&job, sources)?;
    let chosen: Vec<&kpc::ir::Program> = match mode {
        GraphMode::Forward => vec![&p.forward],
        GraphMode::Train => p.train.iter().collect(),
        GraphMode::Eval => match &p.eval {
            Some(e) => vec![e],
            None => {
                let d = Diagnostic::error(format!("`{}` has no eval source, so it has no eval program", file.display()));
                return Err(Failure { diags: vec![d], sources });
            }
        },
    };
    for prog in chosen {
        print(&match format {
            GraphFormat::Text => kpc::ir::print::text(prog),
            GraphFormat::Dot => kpc::ir::print::dot(prog),
        });
    }
    Ok(())
}

fn run(file: &std::path::Path, opts: kpc::runtime::train::RunOptions) -> Result<(), Failure> {
    let (job, sources) = load(file)?;
    match kpc::runtime::train::run(&job, &opts) {
        Ok(_) => Ok(()),
        Err(d) => Err(Failure { diags: vec![d], sources }),
    }
}

fn eval(file: &std::path::Path, weights: &std::path::Path, json: bool) -> Result<(), Failure> {
    let (job, sources) = load(file)?;
    let results = kpc::runtime::train::eval_only(&job, weights).map_err(|d| Failure { diags: vec![d], sources })?;
    let text = if json {
        let fields: Vec<String> = results.iter().map(|(k, v)| format!("\"{k}\":{}", kpc::runtime::train::json_f32(*v as f32))).collect();
        format!("{{{}}}\n", fields.join(","))
    } else {
        results.iter().map(|(k, v)| format!("{k} {v:.4}\n")).collect()
    };
    print(&text);
    Ok(())
}

fn init(file: &std::path::Path, output: &std::path::Path, seed: Option<u64>) -> Result<(), Failure> {
    let (job, sources) = load(file)?;
    let values = kpc::runtime::state::init(&job, seed.unwrap_or(job.train.seed));
    kpc::runtime::state::save(&job, &values, output).map_err(|d| Failure { diags: vec![d], sources })
}

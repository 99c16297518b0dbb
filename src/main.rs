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
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { file } => check(&file),
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

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

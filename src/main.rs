//! The `kpc` command line (LANGUAGE.md §9). Exit status: 0 success, 1 a user error with a
//! diagnostic, 2 bad command-line usage (clap's own exit code for usage errors).

use clap::{Parser, Subcommand};
use kpc::diag::{SourceMap, render_all};
use std::io::{IsTerminal, Write};
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { file } => check(&file),
    }
}

fn check(file: &std::path::Path) -> ExitCode {
    let mut sources = SourceMap::new();
    match kpc::check::check_file(file, &mut sources) {
        Ok(job) => {
            let mut out = std::io::stdout().lock();
            // A closed pipe (`kpc check f | head`) is not an error worth a panic.
            let _ = out.write_all(kpc::report::check_summary(&job).as_bytes());
            ExitCode::SUCCESS
        }
        Err(diags) => {
            let text = render_all(&diags, &sources);
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(text.as_bytes());
            let _ = std::io::stderr().is_terminal();
            ExitCode::from(1)
        }
    }
}

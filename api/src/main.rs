//! `mrank`: the Matryoshka re-ranking service and its tools, one binary with subcommands.

mod inspect;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "mrank",
    version,
    about = "Matryoshka re-ranker: one model, cut in depth and width at run time"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Describe a checkpoint: family, sizes, and the sub-structure space with the FLOPs of
    /// each configuration relative to the full model.
    Inspect(inspect::InspectArgs),
}

/// Where the embedded default base model lives: `MRANK_BASE_MODEL`, else the set-up
/// script's cache in the source tree this binary was built from.
pub fn default_model_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MRANK_BASE_MODEL") {
        return PathBuf::from(dir);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/all-minilm-l6-v2")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => inspect::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

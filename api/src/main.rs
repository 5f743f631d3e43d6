//! `mrank`: the Matryoshka re-ranking service and its tools, one binary with subcommands.

mod bench;
mod default_export;
mod eval;
mod export;
mod inspect;
mod model_args;
mod replay_cmd;
mod serve;
mod train;

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
    /// Serve POST /rerank (TEI and Cohere/Jina shapes) with an adaptive scheduler that
    /// holds a latency target.
    Serve(serve::ServeArgs),
    /// Describe a checkpoint: family, sizes, and the sub-structure space with the FLOPs of
    /// each configuration relative to the full model.
    Inspect(inspect::InspectArgs),
    /// nDCG@10 and MRR@10 of sub-structures on candidate lists with judgments.
    Eval(eval::EvalArgs),
    /// Train a Matryoshka re-ranker (both stages) from a base checkpoint.
    Train(train::TrainArgs),
    /// Write one ONNX graph per configuration plus manifest.json (cost and quality).
    Export(export::ExportArgs),
    /// Send real DL19 queries to a running server under a load profile and report
    /// latency per second, refusals and the quality of what was served.
    Replay(replay_cmd::ReplayArgs),
    /// Throughput (pairs/s) of each exported configuration on real pairs, beside a peer
    /// ONNX graph run by the same ONNX Runtime.
    Bench(bench::BenchArgs),
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
        Command::Serve(args) => serve::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Train(args) => train::run(args),
        Command::Export(args) => export::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Replay(args) => replay_cmd::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

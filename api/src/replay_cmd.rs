//! `mrank replay`: load a running server with real DL19 traffic (see the `replay`
//! crate) and write a JSON report.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use trainer::data::{read_candidates, Qrels};

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// Server address, host:port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub target: String,
    /// `ramp` (open loop, rate from --from-rps to --to-rps, or along --profile) or
    /// `saturate` (closed loop).
    #[arg(long, default_value = "ramp")]
    pub mode: String,
    /// Open-loop load as keyframes `SECONDS:RPS,...`, linear in between, e.g.
    /// `0:0.4,20:6,60:6,62:0.4,150:0.4` (calm, a spike, calm again); replaces
    /// --from-rps, --to-rps and --duration-s.
    #[arg(long, conflicts_with_all = ["from_rps", "to_rps", "duration_s"])]
    pub profile: Option<String>,
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long)]
    pub qrels: PathBuf,
    /// `auto` or a configuration id to pin.
    #[arg(long, default_value = "auto")]
    pub config: String,
    #[arg(long, default_value_t = 0.2)]
    pub from_rps: f64,
    #[arg(long, default_value_t = 2.0)]
    pub to_rps: f64,
    #[arg(long, default_value_t = 120.0)]
    pub duration_s: f64,
    /// Clients of the closed loop.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// The latency target the report checks windows against (ms).
    #[arg(long, default_value_t = 3000.0)]
    pub slo_ms: f64,
    #[arg(long, env = "MRANK_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Write the report (with every sample) here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: ReplayArgs) -> Result<()> {
    // The load shape is checked before any data is read, so a typo fails at once.
    let open_loop = match (&args.profile, args.mode.as_str()) {
        (Some(text), "ramp") => Some((
            replay::LoadProfile::parse(text)
                .map_err(|e| anyhow::anyhow!("--profile {text:?}: {e}"))?,
            "profile",
        )),
        (Some(_), _) => bail!("--profile shapes an open-loop run; use it with --mode ramp"),
        (None, "ramp") => Some((
            replay::LoadProfile::ramp(args.from_rps, args.to_rps, args.duration_s)
                .map_err(|e| anyhow::anyhow!("--from-rps, --to-rps, --duration-s: {e}"))?,
            "ramp",
        )),
        (None, "saturate") => {
            if !(args.duration_s.is_finite() && args.duration_s > 0.0) {
                bail!(
                    "--duration-s must be a positive number of seconds, got {}",
                    args.duration_s
                );
            }
            if args.concurrency == 0 {
                bail!("--concurrency must be at least 1 client");
            }
            None
        }
        (None, other) => bail!("--mode must be ramp or saturate, got {other:?}"),
    };
    let queries = read_candidates(&args.data)?;
    let qrels = Qrels::read(&args.qrels)?;
    let target = replay::Target {
        host: args.target.clone(),
        api_key: args.api_key.clone(),
    };
    let slo = args.slo_ms / 1000.0;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let traffic = replay::Traffic {
        queries,
        qrels,
        config: args.config.clone(),
        slo_s: slo,
        seed: args.seed,
    };
    let report = rt.block_on(async {
        match open_loop {
            Some((profile, mode)) => replay::open_loop(target, traffic, profile, mode).await,
            None => replay::saturate(target, traffic, args.concurrency, args.duration_s).await,
        }
    })?;
    println!(
        "{} {}: {} requests, {} answered, {} refused (429), {} other errors; {:.1} pairs/s; p50 {:.2}s p99 {:.2}s; windows with p99 ≤ {:.1}s: {:.1}%; mean nDCG@10 {:.4}; mix {:?}",
        report.mode,
        report.config,
        report.requests,
        report.answered,
        report.refused_429,
        report.other_errors,
        report.pairs_per_s,
        report.p50_s,
        report.p99_s,
        slo,
        report.windows_within_slo * 100.0,
        report.mean_ndcg10,
        report.config_mix
    );
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    Ok(())
}

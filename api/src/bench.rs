//! `mrank bench`: engine throughput (pairs/s) of exported configurations on real
//! (query, passage) pairs, in token-budget batches sorted by length, beside a peer ONNX
//! graph run by the same ONNX Runtime with the same threads on the same batches.
//! Repeats are interleaved (every configuration once per round) so drift on a shared
//! machine hits all of them alike; medians are reported.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use models::runtime::{init_onnxruntime, RuntimeOptions};
use models::{EncodedPair, PaddedBatch, Runtime};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::Tensor;
use trainer::data::read_candidates;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Export directory (manifest.json); default: the embedded default's export.
    #[arg(long)]
    pub export: Option<PathBuf>,
    /// Candidate lists (TREC-DL JSONL) whose (query, passage) pairs are the traffic.
    #[arg(long)]
    pub data: PathBuf,
    /// Use the first N queries of `--data` (all when 0).
    #[arg(long, default_value_t = 10)]
    pub queries: usize,
    /// Configurations to run: `all` or comma-separated ids.
    #[arg(long, default_value = "all")]
    pub configs: String,
    /// A peer ONNX graph of the full model (e.g. `fixtures/peer_baseline.py` output).
    #[arg(long)]
    pub peer: Option<PathBuf>,
    /// Intra-op threads for every session (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Padded tokens per batch.
    #[arg(long, default_value_t = 8192)]
    pub batch_tokens: usize,
    /// `request`: each query's candidates are one re-rank request, split into
    /// token-budget batches sorted by length (how the server batches, and what a
    /// re-ranker receives); `global`: all pairs sorted by length across queries.
    #[arg(long, default_value = "request")]
    pub batching: String,
    /// Timed rounds (median reported).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Let every session load its own copy of the base weights (to measure sharing).
    #[arg(long)]
    pub no_share_weights: bool,
    /// Load the configurations, print resident memory, and exit (no inference).
    #[arg(long)]
    pub load_only: bool,
    /// Run the sessions without ONNX Runtime's CPU arena (as `mrank serve` does; see
    /// its `--cpu-arena`).
    #[arg(long)]
    pub no_cpu_arena: bool,
    /// Run every session, the peer's too, on the CUDA execution provider (an mrank built
    /// with `--features cuda`, onnxruntime-gpu as ORT_DYLIB_PATH).
    #[arg(long)]
    pub cuda: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

struct Peer {
    session: Session,
    inputs: Vec<String>,
    pad_id: u32,
}

impl Peer {
    fn load(path: &PathBuf, threads: usize, pad_id: u32, cuda: bool) -> Result<Self> {
        // The same process-wide thread pool and execution provider as mrank's sessions.
        let env = init_onnxruntime(threads)?;
        let build = || -> ort::Result<Session> {
            let mut builder =
                Session::builder(env)?.with_optimization_level(GraphOptimizationLevel::Level3)?;
            if cuda {
                builder = models::runtime::with_cuda(builder)?;
            }
            builder.commit_from_file(path)
        };
        let session = build().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let inputs = session
            .inputs()
            .iter()
            .map(|i| i.name().to_string())
            .collect();
        Ok(Peer {
            session,
            inputs,
            pad_id,
        })
    }

    /// Scores of one batch (the peer's single output).
    fn run(&mut self, batch: &PaddedBatch) -> Result<Vec<f32>> {
        let (b, t) = (batch.batch_size as i64, batch.seq_len as i64);
        let ints = |v: &[u32]| v.iter().map(|&x| x as i64).collect::<Vec<i64>>();
        let spans = |s: &[models::Span]| {
            s.iter()
                .flat_map(|s| [s.start as i64, s.end() as i64])
                .collect::<Vec<i64>>()
        };
        let mut values: Vec<(String, ort::value::DynValue)> = Vec::new();
        // A peer of isolated-segment adapters takes each row's query and passage as
        // separate sequences (no sharing of a query between rows).
        let split = if self.inputs.iter().any(|i| i == "query_ids") {
            models::runtime::split_inputs(batch, self.pad_id, false)
        } else {
            Vec::new()
        };
        for name in &self.inputs {
            if let Some((_, data, shape)) = split.iter().find(|(n, _, _)| n == name) {
                values.push((
                    name.clone(),
                    Tensor::from_array((shape.clone(), data.clone()))?.into_dyn(),
                ));
                continue;
            }
            let (shape, data) = match name.as_str() {
                "input_ids" => (vec![b, t], ints(&batch.input_ids)),
                "attention_mask" => (vec![b, t], ints(&batch.attention_mask())),
                "token_type_ids" => (vec![b, t], ints(&batch.token_type_ids)),
                "query_span" => (vec![b, 2], spans(&batch.query)),
                "passage_span" => (vec![b, 2], spans(&batch.passage)),
                other => bail!("peer graph input {other:?} is not one mrank can feed"),
            };
            values.push((name.clone(), Tensor::from_array((shape, data))?.into_dyn()));
        }
        let outputs = self.session.run(values)?;
        let (_, scores) = outputs[0].try_extract_tensor::<f32>()?;
        Ok(scores.to_vec())
    }
}

/// Resident set size of this process (Linux `/proc/self/status`), MiB.
pub fn resident_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(args: BenchArgs) -> Result<()> {
    let dir = match &args.export {
        Some(d) => d.clone(),
        None => crate::default_export::ensure()?,
    };
    let wanted: Option<Vec<String>> = (args.configs != "all").then(|| {
        args.configs
            .split(',')
            .map(|s| s.trim().to_string())
            .collect()
    });
    let runtime = Runtime::load(
        &dir,
        &RuntimeOptions {
            intra_threads: args.threads,
            share_weights: !args.no_share_weights,
            configs: wanted,
            cuda: args.cuda,
            cpu_arena: !args.no_cpu_arena,
        },
    )
    .context("--configs")?;
    let ids = runtime.config_ids();
    let rss = resident_mib();
    eprintln!(
        "loaded {} configurations from {}: resident memory {rss:.1} MiB{}",
        ids.len(),
        dir.display(),
        if args.no_share_weights {
            " (weights not shared)"
        } else {
            ""
        }
    );
    if args.load_only {
        println!(
            "{{\"configs\": {}, \"shared_weights\": {}, \"rss_mib\": {rss:.1}}}",
            ids.len(),
            !args.no_share_weights
        );
        return Ok(());
    }
    let mut queries = read_candidates(&args.data)?;
    if args.queries > 0 {
        queries.truncate(args.queries);
    }
    // As the server encodes a request: the query tokenized once for all its passages.
    let requests: Vec<Vec<EncodedPair>> = queries
        .iter()
        .map(|q| {
            let texts: Vec<&str> = q.candidates.iter().map(|c| c.text.as_str()).collect();
            Ok(runtime
                .encoder
                .encode_request(&q.query, &texts, None, false)?
                .pairs)
        })
        .collect::<models::Result<_>>()?;
    let groups: Vec<Vec<EncodedPair>> = match args.batching.as_str() {
        "request" => requests,
        "global" => vec![requests.into_iter().flatten().collect()],
        other => bail!("--batching {other}: use request or global"),
    };
    let mut batches: Vec<PaddedBatch> = Vec::new();
    for group in &groups {
        for idx in models::encoding::token_budget_batches(group, args.batch_tokens) {
            let chunk: Vec<EncodedPair> = idx.iter().map(|&i| group[i].clone()).collect();
            batches.push(PaddedBatch::new(&chunk, runtime.encoder.pad_id));
        }
    }
    let pairs: Vec<EncodedPair> = groups.into_iter().flatten().collect();
    let tokens: usize = pairs.iter().map(|p| p.len()).sum();
    eprintln!(
        "bench: {} pairs from {} queries ({:.0} tokens/pair), {} batches of ≤{} padded tokens ({} batching), {} threads, {}, {} rounds",
        pairs.len(),
        queries.len(),
        tokens as f64 / pairs.len().max(1) as f64,
        batches.len(),
        args.batch_tokens,
        args.batching,
        if args.threads == 0 { "all".to_string() } else { args.threads.to_string() },
        if args.cuda { "CUDA provider" } else { "CPU provider" },
        args.repeats
    );
    let mut peer = match &args.peer {
        Some(p) => Some(
            Peer::load(p, args.threads, runtime.encoder.pad_id, args.cuda)
                .with_context(|| format!("loading the peer graph {}", p.display()))?,
        ),
        None => None,
    };
    // Warm-up: every session sees the largest batch once.
    let largest = batches
        .iter()
        .max_by_key(|b| b.batch_size * b.seq_len)
        .context("no pairs in --data")?;
    for id in &ids {
        runtime.run(id, largest)?;
    }
    if let Some(p) = peer.as_mut() {
        // The peer must compute the same function as mrank's full configuration.
        let theirs = p.run(largest)?;
        if let Some(full) = ids.iter().find(|id| id.as_str() == "full") {
            let ours = runtime.run(full, largest)?;
            let scale = ours.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            let err = ours
                .iter()
                .zip(&theirs)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
                / scale;
            if ours.len() != theirs.len() || err > 1e-3 {
                bail!(
                    "the peer graph does not compute mrank's full configuration (relative \
                     difference {err:e} on a batch of {}); rebuild it from the same adapters",
                    ours.len()
                );
            }
            eprintln!("peer agrees with full: relative difference {err:.1e}");
        }
    }
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); ids.len()];
    let mut peer_rates = Vec::new();
    for round in 0..args.repeats.max(1) {
        for (i, id) in ids.iter().enumerate() {
            let t = Instant::now();
            for b in &batches {
                runtime.run(id, b)?;
            }
            rates[i].push(pairs.len() as f64 / t.elapsed().as_secs_f64());
            eprint!(
                "\rround {}/{}: {:<20} {:>7.1} pairs/s   ",
                round + 1,
                args.repeats,
                id,
                rates[i].last().unwrap()
            );
        }
        if let Some(p) = peer.as_mut() {
            let t = Instant::now();
            for b in &batches {
                p.run(b)?;
            }
            peer_rates.push(pairs.len() as f64 / t.elapsed().as_secs_f64());
        }
    }
    eprintln!();
    let medians: Vec<f64> = rates.into_iter().map(median).collect();
    let full_rate = ids.iter().position(|i| i == "full").map(|i| medians[i]);
    let peer_rate = (!peer_rates.is_empty()).then(|| median(peer_rates));
    println!(
        "{:<20} {:>7} {:>9} {:>10} {:>8} {:>8}",
        "config", "flops", "ndcg@10", "pairs/s", "× full", "× peer"
    );
    let mut rows = Vec::new();
    for (id, rate) in ids.iter().zip(&medians) {
        let entry = &runtime.config(id).expect("checked").entry;
        let x_full = full_rate.map(|f| rate / f);
        let x_peer = peer_rate.map(|p| rate / p);
        println!(
            "{:<20} {:>7.3} {:>9} {:>10.1} {:>8} {:>8}",
            id,
            entry.flops_ratio,
            entry
                .ndcg_at_10
                .map(|v| format!("{v:.4}"))
                .unwrap_or("-".into()),
            rate,
            x_full.map(|v| format!("{v:.2}")).unwrap_or("-".into()),
            x_peer.map(|v| format!("{v:.2}")).unwrap_or("-".into()),
        );
        rows.push(serde_json::json!({
            "id": id, "flops_ratio": entry.flops_ratio, "ndcg@10": entry.ndcg_at_10,
            "pairs_per_s": rate, "x_full": x_full, "x_peer": x_peer,
        }));
    }
    if let Some(p) = peer_rate {
        println!(
            "{:<20} {:>7} {:>9} {:>10.1} {:>8} {:>8}",
            "peer",
            "",
            "",
            p,
            full_rate
                .map(|f| format!("{:.2}", p / f))
                .unwrap_or("-".into()),
            "1.00"
        );
    }
    // What the runs left resident: the arenas keep each session's largest working set.
    let rss_after = resident_mib();
    eprintln!(
        "resident memory after the runs: {rss_after:.1} MiB (CPU arena {})",
        if args.no_cpu_arena { "off" } else { "on" }
    );
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "export": dir.display().to_string(),
            "rss_mib_loaded": rss,
            "rss_mib_after": rss_after,
            "cpu_arena": !args.no_cpu_arena,
            "data": args.data.display().to_string(),
            "pairs": pairs.len(),
            "threads": args.threads,
            "provider": if args.cuda { "cuda" } else { "cpu" },
            "batch_tokens": args.batch_tokens,
            "batching": args.batching,
            "repeats": args.repeats,
            "peer": args.peer.as_ref().map(|p| p.display().to_string()),
            "peer_pairs_per_s": peer_rate,
            "configs": rows,
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("{}: cannot write", path.display()))?;
    }
    Ok(())
}

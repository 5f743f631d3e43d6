//! Replay: real queries sent to a running server under a load profile, and the report
//! that says whether it held its latency target and at what quality.
//!
//! - **Open loop** (`ramp`): Poisson arrivals whose rate moves linearly from `from` to
//!   `to` requests per second; each request is one DL19 query with its first 20-100
//!   BM25 candidates. Latency is measured from the moment a request was due, so a slow
//!   client never hides queueing.
//! - **Closed loop** (`saturate`): `concurrency` clients send back to back; the report's
//!   pairs/s is the server's HTTP throughput.
//!
//! Each answer's ranking is scored against the qrels (nDCG@10 of the re-ranked
//! candidates), so the report gives the quality of the mix actually served.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trainer::data::{Qrels, QueryCandidates};
use trainer::metrics::ndcg_at_k;

#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub api_key: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds from the start of the run when the request was due.
    pub sent_s: f64,
    pub latency_s: f64,
    pub status: u16,
    pub config: String,
    pub documents: usize,
    pub ndcg10: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub start_s: f64,
    pub offered_rps: f64,
    pub answered: usize,
    pub refused: usize,
    pub p99_s: f64,
    pub full_share: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: String,
    pub config: String,
    pub duration_s: f64,
    pub slo_s: f64,
    pub requests: usize,
    pub answered: usize,
    pub refused_429: usize,
    pub other_errors: usize,
    pub pairs_per_s: f64,
    pub p50_s: f64,
    pub p99_s: f64,
    /// Windows (1 s, by due time) with at least one answer whose p99 ≤ the SLO.
    pub windows_within_slo: f64,
    pub mean_ndcg10: f64,
    pub config_mix: BTreeMap<String, usize>,
    pub windows: Vec<Window>,
    pub samples: Vec<Sample>,
}

/// One HTTP/1.1 POST over a fresh connection; returns (status, body).
async fn post(target: &Target, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(&target.host).await?;
    let auth = target
        .api_key
        .as_ref()
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        target.host,
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

struct Workload {
    queries: Vec<QueryCandidates>,
    qrels: Qrels,
}

impl Workload {
    /// A random judged query with its first 20-100 candidates.
    fn pick(&self, rng: &mut StdRng) -> (usize, usize) {
        let q = rng.random_range(0..self.queries.len());
        let n = rng
            .random_range(20..=100)
            .min(self.queries[q].candidates.len());
        (q, n)
    }

    fn body(&self, q: usize, n: usize, config: &str) -> String {
        let query = &self.queries[q];
        let docs: Vec<&str> = query.candidates[..n]
            .iter()
            .map(|c| c.text.as_str())
            .collect();
        serde_json::json!({"query": query.query, "documents": docs, "config": config, "top_n": n.min(10)})
            .to_string()
    }

    fn ndcg(&self, q: usize, n: usize, body: &str) -> Option<f64> {
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        let query = &self.queries[q];
        let ranking: Vec<&str> = v["results"]
            .as_array()?
            .iter()
            .filter_map(|r| r["index"].as_u64())
            .filter(|&i| (i as usize) < n)
            .map(|i| query.candidates[i as usize].docid.as_str())
            .collect();
        let judgments = self.qrels.by_query.get(&query.qid)?;
        Some(ndcg_at_k(&ranking, judgments, 10))
    }
}

async fn one(
    target: Arc<Target>,
    work: Arc<Workload>,
    q: usize,
    n: usize,
    config: String,
    due: Instant,
    start: Instant,
) -> Sample {
    let body = work.body(q, n, &config);
    let result = post(&target, "/v2/rerank", &body).await;
    let latency_s = due.elapsed().as_secs_f64();
    let (status, text) = result.unwrap_or((0, String::new()));
    let served = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["meta"]["config"].as_str().map(String::from))
        .unwrap_or_default();
    Sample {
        sent_s: due.duration_since(start).as_secs_f64(),
        latency_s,
        status,
        config: served,
        documents: n,
        ndcg10: if status == 200 {
            work.ndcg(q, n, &text)
        } else {
            None
        },
    }
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

fn report(
    mode: &str,
    config: &str,
    duration_s: f64,
    slo_s: f64,
    samples: Vec<Sample>,
    rate: impl Fn(f64) -> f64,
) -> Report {
    let ok: Vec<&Sample> = samples.iter().filter(|s| s.status == 200).collect();
    let mut lat: Vec<f64> = ok.iter().map(|s| s.latency_s).collect();
    let pairs: usize = ok.iter().map(|s| s.documents).sum();
    let mut mix = BTreeMap::new();
    for s in &ok {
        *mix.entry(s.config.clone()).or_insert(0) += 1;
    }
    let ndcgs: Vec<f64> = ok.iter().filter_map(|s| s.ndcg10).collect();
    let mut windows = Vec::new();
    let mut by_window: HashMap<usize, Vec<&Sample>> = HashMap::new();
    for s in &samples {
        by_window.entry(s.sent_s as usize).or_default().push(s);
    }
    for w in 0..(duration_s.ceil() as usize) {
        let list = by_window.get(&w).cloned().unwrap_or_default();
        let mut l: Vec<f64> = list
            .iter()
            .filter(|s| s.status == 200)
            .map(|s| s.latency_s)
            .collect();
        let answered = l.len();
        windows.push(Window {
            start_s: w as f64,
            offered_rps: rate(w as f64 + 0.5),
            answered,
            refused: list.iter().filter(|s| s.status == 429).count(),
            p99_s: percentile(&mut l, 0.99),
            full_share: list
                .iter()
                .filter(|s| s.status == 200 && s.config == "full")
                .count() as f64
                / answered.max(1) as f64,
        });
    }
    let active: Vec<&Window> = windows.iter().filter(|w| w.answered > 0).collect();
    let within =
        active.iter().filter(|w| w.p99_s <= slo_s).count() as f64 / active.len().max(1) as f64;
    Report {
        mode: mode.into(),
        config: config.into(),
        duration_s,
        slo_s,
        requests: samples.len(),
        answered: ok.len(),
        refused_429: samples.iter().filter(|s| s.status == 429).count(),
        other_errors: samples
            .iter()
            .filter(|s| s.status != 200 && s.status != 429)
            .count(),
        // Per second of wall time until the last answer (a backlog keeps answering
        // after the offered period ends).
        pairs_per_s: pairs as f64
            / samples
                .iter()
                .map(|s| s.sent_s + s.latency_s)
                .fold(duration_s, f64::max),
        p50_s: percentile(&mut lat.clone(), 0.5),
        p99_s: percentile(&mut lat, 0.99),
        windows_within_slo: within,
        mean_ndcg10: ndcgs.iter().sum::<f64>() / ndcgs.len().max(1) as f64,
        config_mix: mix,
        windows,
        samples,
    }
}

/// What to send and how to judge it.
pub struct Traffic {
    pub queries: Vec<QueryCandidates>,
    pub qrels: Qrels,
    /// `auto` or a pinned configuration id.
    pub config: String,
    pub slo_s: f64,
    pub seed: u64,
}

/// Open-loop ramp from `from_rps` to `to_rps` over `duration_s`.
pub async fn ramp(
    target: Target,
    traffic: Traffic,
    from_rps: f64,
    to_rps: f64,
    duration_s: f64,
) -> Result<Report> {
    let Traffic {
        queries,
        qrels,
        config,
        slo_s,
        seed,
    } = traffic;
    let config = config.as_str();
    let work = Arc::new(Workload {
        queries: judged(queries, &qrels)?,
        qrels,
    });
    let target = Arc::new(target);
    let mut rng = StdRng::seed_from_u64(seed);
    let rate = move |t: f64| from_rps + (to_rps - from_rps) * (t / duration_s).clamp(0.0, 1.0);
    let start = Instant::now();
    let mut t = 0.0;
    let mut tasks = Vec::new();
    loop {
        t += -rng.random::<f64>().max(1e-12).ln() / rate(t).max(1e-6);
        if t >= duration_s {
            break;
        }
        let due = start + Duration::from_secs_f64(t);
        tokio::time::sleep_until(due.into()).await;
        let (q, n) = work.pick(&mut rng);
        tasks.push(tokio::spawn(one(
            target.clone(),
            work.clone(),
            q,
            n,
            config.to_string(),
            due,
            start,
        )));
        if tasks.len() % 20 == 0 {
            eprint!(
                "\rramp {config}: {:.0}/{duration_s:.0} s, {} requests sent, offered {:.2}/s   ",
                t,
                tasks.len(),
                rate(t)
            );
        }
    }
    let mut samples = Vec::with_capacity(tasks.len());
    for task in tasks {
        samples.push(task.await.context("request task")?);
    }
    eprintln!();
    Ok(report("ramp", config, duration_s, slo_s, samples, rate))
}

/// Closed loop: `concurrency` clients back to back for `duration_s`.
pub async fn saturate(
    target: Target,
    traffic: Traffic,
    concurrency: usize,
    duration_s: f64,
) -> Result<Report> {
    let Traffic {
        queries,
        qrels,
        config,
        slo_s,
        seed,
    } = traffic;
    let config = config.as_str();
    let work = Arc::new(Workload {
        queries: judged(queries, &qrels)?,
        qrels,
    });
    let target = Arc::new(target);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(duration_s);
    let mut clients = Vec::new();
    for c in 0..concurrency {
        let (work, target, config) = (work.clone(), target.clone(), config.to_string());
        clients.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed + c as u64);
            let mut out = Vec::new();
            while Instant::now() < end {
                let (q, n) = work.pick(&mut rng);
                out.push(
                    one(
                        target.clone(),
                        work.clone(),
                        q,
                        n,
                        config.clone(),
                        Instant::now(),
                        start,
                    )
                    .await,
                );
            }
            out
        }));
    }
    let mut samples = Vec::new();
    for c in clients {
        samples.extend(c.await.context("client task")?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(report("saturate", config, elapsed, slo_s, samples, |_| {
        f64::NAN
    }))
}

fn judged(queries: Vec<QueryCandidates>, qrels: &Qrels) -> Result<Vec<QueryCandidates>> {
    let judged: Vec<QueryCandidates> = queries
        .into_iter()
        .filter(|q| qrels.by_query.contains_key(&q.qid))
        .collect();
    anyhow::ensure!(
        !judged.is_empty(),
        "no query of the data has judgments in the qrels"
    );
    Ok(judged)
}

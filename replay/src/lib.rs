//! Replay: real queries sent to a running server under a load profile, and the report
//! that says whether it held its latency target and at what quality.
//!
//! - **Open loop** (`open_loop`): Poisson arrivals whose rate follows a `LoadProfile`,
//!   piecewise linear in time: a ramp from `from` to `to` requests per second, or any
//!   shape of keyframes such as a spike and the calm after it; each request is one DL19
//!   query with its first 20-100 BM25 candidates. Latency is measured from the moment a
//!   request was due, so a slow client never hides queueing.
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
    /// Mean nDCG@10 of the window's judged answers (null without any): the quality
    /// actually served, second by second, so a plot shows the fall and the return.
    pub ndcg10: Option<f64>,
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

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
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
            ndcg10: mean(
                list.iter()
                    .filter(|s| s.status == 200)
                    .filter_map(|s| s.ndcg10),
            ),
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

/// Offered load over time: requests per second at keyframe times, linear in between.
/// The run lasts until the last keyframe.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadProfile {
    /// `(seconds from the start, requests per second)`, times strictly increasing from 0.
    points: Vec<(f64, f64)>,
}

impl LoadProfile {
    /// A linear ramp from `from_rps` to `to_rps` over `duration_s`.
    pub fn ramp(from_rps: f64, to_rps: f64, duration_s: f64) -> Result<Self, String> {
        Self::new(vec![(0.0, from_rps), (duration_s, to_rps)])
    }

    /// Parses `SECONDS:RPS,SECONDS:RPS,...`, e.g. `0:0.5,20:6,60:6,65:0.5,120:0.5` (calm,
    /// a spike from 20 s to 60 s, calm again). The first time must be 0.
    pub fn parse(text: &str) -> Result<Self, String> {
        let points = text
            .split(',')
            .map(|part| {
                let (t, r) = part.trim().split_once(':').ok_or_else(|| {
                    format!("`{part}` is not SECONDS:RPS (e.g. `20:6` for 6 requests/s at 20 s)")
                })?;
                let number = |v: &str, what: &str| {
                    v.trim()
                        .parse::<f64>()
                        .map_err(|_| format!("`{part}`: {what} `{v}` is not a number"))
                };
                Ok((number(t, "time")?, number(r, "rate")?))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Self::new(points)
    }

    fn new(points: Vec<(f64, f64)>) -> Result<Self, String> {
        if points.len() < 2 {
            return Err("a load profile needs at least two keyframes (a start and an end)".into());
        }
        if points[0].0 != 0.0 {
            return Err(format!(
                "the first keyframe must be at 0 s, not {} s",
                points[0].0
            ));
        }
        if let Some(&(t, _)) = points.iter().find(|(t, _)| !t.is_finite()) {
            return Err(format!(
                "keyframe time {t} is not a finite number of seconds"
            ));
        }
        for w in points.windows(2) {
            if w[1].0 <= w[0].0 {
                return Err(format!(
                    "keyframe times must increase: {} s follows {} s",
                    w[1].0, w[0].0
                ));
            }
        }
        if let Some(&(t, r)) = points.iter().find(|(_, r)| !(r.is_finite() && *r >= 0.0)) {
            return Err(format!(
                "the rate at {t} s is {r}; rates are requests per second, 0 or more"
            ));
        }
        if points.iter().all(|&(_, r)| r == 0.0) {
            return Err("every rate of the profile is 0: nothing would be sent".into());
        }
        Ok(LoadProfile { points })
    }

    pub fn duration_s(&self) -> f64 {
        self.points[self.points.len() - 1].0
    }

    pub fn peak_rps(&self) -> f64 {
        self.points.iter().map(|&(_, r)| r).fold(0.0, f64::max)
    }

    /// Requests per second at `t` (the last keyframe's rate after the end).
    pub fn rate(&self, t: f64) -> f64 {
        let i = self.points.partition_point(|&(at, _)| at <= t);
        if i == 0 {
            return self.points[0].1;
        }
        if i == self.points.len() {
            return self.points[i - 1].1;
        }
        let ((t0, r0), (t1, r1)) = (self.points[i - 1], self.points[i]);
        r0 + (r1 - r0) * (t - t0) / (t1 - t0)
    }

    /// Arrival times of a Poisson process with this rate, by thinning: candidates at the
    /// peak rate, each kept with probability rate(t) / peak. Exact for any shape, where
    /// stepping by 1/rate(t) would carry a calm gap far into a spike.
    pub fn arrivals(&self, rng: &mut StdRng) -> Vec<f64> {
        let peak = self.peak_rps();
        let mut out = Vec::new();
        let mut t = 0.0;
        loop {
            t += -rng.random::<f64>().max(1e-12).ln() / peak;
            if t >= self.duration_s() {
                return out;
            }
            if rng.random::<f64>() * peak < self.rate(t) {
                out.push(t);
            }
        }
    }
}

/// Open loop: Poisson arrivals whose rate follows `profile`. `mode` names the run in the
/// report (`ramp` or `profile`).
pub async fn open_loop(
    target: Target,
    traffic: Traffic,
    profile: LoadProfile,
    mode: &str,
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
    let arrivals = profile.arrivals(&mut rng);
    let duration_s = profile.duration_s();
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(arrivals.len());
    for &t in &arrivals {
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
                "\r{mode} {config}: {t:.0}/{duration_s:.0} s, {}/{} requests sent, offered {:.2}/s   ",
                tasks.len(),
                arrivals.len(),
                profile.rate(t)
            );
        }
    }
    let mut samples = Vec::with_capacity(tasks.len());
    for task in tasks {
        samples.push(task.await.context("request task")?);
    }
    eprintln!();
    Ok(report(mode, config, duration_s, slo_s, samples, |t| {
        profile.rate(t)
    }))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_interpolates_between_keyframes_and_holds_the_last_rate() {
        let p = LoadProfile::parse("0:1, 10:3,20:3,30:0").unwrap();
        assert_eq!(p.duration_s(), 30.0);
        assert_eq!(p.peak_rps(), 3.0);
        assert_eq!(p.rate(0.0), 1.0);
        assert!((p.rate(5.0) - 2.0).abs() < 1e-12);
        assert_eq!(p.rate(15.0), 3.0);
        assert!((p.rate(27.5) - 0.75).abs() < 1e-12);
        assert_eq!(p.rate(40.0), 0.0);
        assert_eq!(LoadProfile::ramp(0.2, 2.2, 100.0).unwrap().rate(50.0), 1.2);
    }

    #[test]
    fn bad_profiles_say_what_is_wrong() {
        let err = |text: &str| LoadProfile::parse(text).unwrap_err();
        assert!(err("0:1").contains("at least two"), "{}", err("0:1"));
        assert!(err("5:1,10:2").contains("first keyframe must be at 0"));
        assert!(err("0:1,10:2,10:3").contains("must increase"));
        assert!(err("0:1,10:-2").contains("0 or more"));
        assert!(err("0:1,ten:2").contains("time `ten` is not a number"));
        assert!(err("0:1,10").contains("is not SECONDS:RPS"));
        assert!(err("0:0,10:0").contains("nothing would be sent"));
        assert!(err("0:1,inf:2").contains("not a finite number"));
        assert!(err("0:1,10:NaN").contains("0 or more"));
    }

    /// Thinning gives each stretch of the profile its own rate: a calm before a spike
    /// does not carry into it. Counts over a long seeded run, within 5 standard
    /// deviations of the Poisson means.
    #[test]
    fn arrivals_follow_a_step_profile() {
        let p = LoadProfile::parse("0:1,1000:1,1000.001:10,1500:10").unwrap();
        let arrivals = p.arrivals(&mut StdRng::seed_from_u64(3));
        let calm = arrivals.iter().filter(|&&t| t < 1000.0).count() as f64;
        let spike = arrivals.iter().filter(|&&t| t >= 1000.0).count() as f64;
        assert!((calm - 1000.0).abs() < 5.0 * 1000f64.sqrt(), "calm {calm}");
        assert!(
            (spike - 5000.0).abs() < 5.0 * 5000f64.sqrt(),
            "spike {spike}"
        );
        assert!(arrivals.windows(2).all(|w| w[0] < w[1]));
        assert!(arrivals.iter().all(|&t| t < p.duration_s()));
    }

    #[test]
    fn windows_report_the_quality_served_in_each_second() {
        let sample = |sent_s: f64, status: u16, ndcg10: Option<f64>| Sample {
            sent_s,
            latency_s: 0.5,
            status,
            config: "full".into(),
            documents: 10,
            ndcg10,
        };
        let samples = vec![
            sample(0.1, 200, Some(0.4)),
            sample(0.7, 200, Some(0.8)),
            sample(1.2, 429, None),
            sample(2.5, 200, None),
        ];
        let r = report("profile", "auto", 3.0, 3.0, samples, |_| 1.0);
        let q: Vec<Option<f64>> = r.windows.iter().map(|w| w.ndcg10).collect();
        assert!((q[0].unwrap() - 0.6).abs() < 1e-12);
        assert_eq!(q[1], None);
        assert_eq!(q[2], None);
        assert_eq!(r.windows[1].refused, 1);
    }
}

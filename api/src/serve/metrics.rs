//! Prometheus metrics, rendered in the text exposition format at `/metrics`. Names
//! (prefix `mrank_`) are documented in docs/SERVING.md.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use scheduler::Stats;

const DURATION_BUCKETS: [f64; 14] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0,
];
const SIZE_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

#[derive(Default, Clone)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, buckets: &[f64], v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; buckets.len()];
        }
        for (i, b) in buckets.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

#[derive(Default)]
struct Inner {
    request_duration: BTreeMap<(String, String), Histogram>,
    inference: BTreeMap<String, Histogram>,
    batch_pairs: Histogram,
    selections: BTreeMap<String, u64>,
    slo_misses: BTreeMap<String, u64>,
    rejections: BTreeMap<String, u64>,
    stats: Stats,
}

pub struct Metrics {
    inner: Mutex<Inner>,
    pub slo_target_s: f64,
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let body: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("{{{}}}", body.join(","))
}

fn histogram(out: &mut String, name: &str, base: &[(&str, &str)], buckets: &[f64], h: &Histogram) {
    for (i, b) in buckets.iter().enumerate() {
        let mut l = base.to_vec();
        let le = format!("{b}");
        l.push(("le", &le));
        let _ = writeln!(
            out,
            "{name}_bucket{} {}",
            labels(&l),
            h.counts.get(i).copied().unwrap_or(0)
        );
    }
    let mut l = base.to_vec();
    l.push(("le", "+Inf"));
    let _ = writeln!(out, "{name}_bucket{} {}", labels(&l), h.count);
    let _ = writeln!(out, "{name}_sum{} {}", labels(base), h.sum);
    let _ = writeln!(out, "{name}_count{} {}", labels(base), h.count);
}

impl Metrics {
    pub fn new(slo_target_s: f64) -> Self {
        Metrics {
            inner: Mutex::new(Inner::default()),
            slo_target_s,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A finished HTTP request of a rerank route (`config` empty when refused).
    pub fn request(&self, config: &str, status: u16, seconds: f64) {
        let mut m = self.lock();
        m.request_duration
            .entry((config.to_string(), status.to_string()))
            .or_default()
            .observe(&DURATION_BUCKETS, seconds);
        if status == 200 && seconds > self.slo_target_s {
            *m.slo_misses.entry(config.to_string()).or_default() += 1;
        }
    }

    pub fn rejection(&self, reason: &str) {
        *self
            .lock()
            .rejections
            .entry(reason.to_string())
            .or_default() += 1;
    }

    pub fn selection(&self, config: &str) {
        *self
            .lock()
            .selections
            .entry(config.to_string())
            .or_default() += 1;
    }

    pub fn batch(&self, config: &str, pairs: usize, _padded_tokens: usize, seconds: f64) {
        let mut m = self.lock();
        m.batch_pairs.observe(&SIZE_BUCKETS, pairs as f64);
        m.inference
            .entry(config.to_string())
            .or_default()
            .observe(&DURATION_BUCKETS, seconds);
    }

    pub fn queue(&self, stats: &Stats) {
        self.lock().stats = stats.clone();
    }

    pub fn render(&self) -> String {
        let m = self.lock();
        let mut out = String::new();
        let _ = writeln!(out, "# HELP mrank_request_duration_seconds Time from request received to response, by configuration and HTTP status.\n# TYPE mrank_request_duration_seconds histogram");
        for ((config, status), h) in &m.request_duration {
            histogram(
                &mut out,
                "mrank_request_duration_seconds",
                &[("config", config), ("status", status)],
                &DURATION_BUCKETS,
                h,
            );
        }
        let _ = writeln!(out, "# HELP mrank_inference_seconds Time of one batch on ONNX Runtime, by configuration.\n# TYPE mrank_inference_seconds histogram");
        for (config, h) in &m.inference {
            histogram(
                &mut out,
                "mrank_inference_seconds",
                &[("config", config)],
                &DURATION_BUCKETS,
                h,
            );
        }
        let _ = writeln!(out, "# HELP mrank_batch_size_pairs Pairs per batch.\n# TYPE mrank_batch_size_pairs histogram");
        histogram(
            &mut out,
            "mrank_batch_size_pairs",
            &[],
            &SIZE_BUCKETS,
            &m.batch_pairs,
        );
        let _ = writeln!(out, "# HELP mrank_config_selections_total Requests admitted per configuration.\n# TYPE mrank_config_selections_total counter");
        for (config, n) in &m.selections {
            let _ = writeln!(
                out,
                "mrank_config_selections_total{} {n}",
                labels(&[("config", config)])
            );
        }
        let _ = writeln!(out, "# HELP mrank_slo_misses_total Answered requests slower than the SLO target.\n# TYPE mrank_slo_misses_total counter");
        for (config, n) in &m.slo_misses {
            let _ = writeln!(
                out,
                "mrank_slo_misses_total{} {n}",
                labels(&[("config", config)])
            );
        }
        let _ = writeln!(out, "# HELP mrank_rejections_total Requests refused before inference, by reason.\n# TYPE mrank_rejections_total counter");
        for (reason, n) in &m.rejections {
            let _ = writeln!(
                out,
                "mrank_rejections_total{} {n}",
                labels(&[("reason", reason)])
            );
        }
        let s = &m.stats;
        let _ = writeln!(out, "# HELP mrank_queue_pairs Pairs waiting for a batch.\n# TYPE mrank_queue_pairs gauge\nmrank_queue_pairs {}", s.queued_pairs);
        let _ = writeln!(out, "# HELP mrank_queue_tokens Tokens waiting for a batch.\n# TYPE mrank_queue_tokens gauge\nmrank_queue_tokens {}", s.queued_tokens);
        let _ = writeln!(out, "# HELP mrank_queue_requests Requests admitted and not finished.\n# TYPE mrank_queue_requests gauge\nmrank_queue_requests {}", s.queued_requests);
        let _ = writeln!(out, "# HELP mrank_degradation_level Share of requests admitted below the best configuration over the sliding window (the autoscaling signal).\n# TYPE mrank_degradation_level gauge\nmrank_degradation_level {}", s.degradation);
        let _ = writeln!(out, "# HELP mrank_quality_rung Current rung of the quality ladder (0 = best).\n# TYPE mrank_quality_rung gauge\nmrank_quality_rung {}", s.level);
        let _ = writeln!(out, "# HELP mrank_slo_target_seconds The latency target requests are scheduled against.\n# TYPE mrank_slo_target_seconds gauge\nmrank_slo_target_seconds {}", self.slo_target_s);
        out
    }
}

//! Scheduler: request admission, per-request sub-structure choice, token-budget batching
//! and the latency control loop (DESIGN.md "Serving"). No HTTP and no ONNX Runtime: the
//! server drives it with wall-clock time and a real executor, the tests with simulated
//! time and a simulated executor.
//!
//! - **Admission.** A request's pairs are counted in tokens; the queue is bounded in
//!   tokens. A request gets one configuration when admitted (scores of different
//!   configurations are not comparable, so one request never mixes them).
//! - **Choice (`auto`).** The configurations form a quality ladder (the manifest
//!   frontier, best first). For each rung the scheduler predicts when the request would
//!   finish given the work ahead of it, and picks the best rung predicted to finish
//!   within `headroom` of the request's deadline or the server's SLO target. A shared
//!   *level* gives hysteresis: it drops at once when the current rung would miss, and
//!   climbs one rung only when the better rung would finish well inside the target
//!   (`up_margin` of `admit_headroom`).
//! - **Refusal.** When even the cheapest rung would miss `admit_headroom` of the SLO,
//!   or the queue is full,
//!   the request is refused with a retry delay (HTTP 429) rather than admitted to miss;
//!   a request whose own deadline cannot be met gets `DeadlineUnmeetable` (HTTP 504).
//! - **Batching.** Batches hold pairs of one configuration, at most `token_budget`
//!   padded tokens, longest-first within a request so lengths in a batch are close.
//!   Requests run earliest deadline first. A request's deadline is its own, else its
//!   admission time plus the SLO target, or plus its own predicted work when that alone
//!   exceeds the target: an oversized request waits behind the short ones that arrive
//!   after it instead of starving them.
//! - **Latency model.** Per configuration, `per_batch + per_token · padded tokens`,
//!   recalibrated after every batch. A configuration that caps passages is costed, and
//!   batched, on the tokens it runs: each pair's passage cut to the cap.

pub mod latency;

use std::collections::{BTreeMap, VecDeque};

pub use latency::LatencyModel;

/// Seconds without work after which the level returns to the best rung.
const IDLE_RESET_S: f64 = 2.0;

/// One rung of the quality ladder.
#[derive(Debug, Clone)]
pub struct ConfigInfo {
    pub id: String,
    /// Dev quality (higher is better); the ladder is sorted by it.
    pub quality: f64,
    pub latency: LatencyModel,
    /// Passage tokens the configuration keeps (`models::precision`); all when `None`.
    pub passage_tokens: Option<usize>,
}

impl ConfigInfo {
    /// Tokens of a pair of `pair` tokens, `passage` of them its passage's, under this
    /// configuration.
    pub fn tokens_run(&self, pair: usize, passage: usize) -> usize {
        match self.passage_tokens {
            Some(cap) if passage > cap => pair - (passage - cap),
            _ => pair,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Seconds from admission to the last score, for requests without a deadline.
    pub slo_target_s: f64,
    /// Padded tokens per batch.
    pub token_budget: usize,
    /// Bound on queued (not yet run) tokens.
    pub max_queued_tokens: usize,
    /// Climb to a better rung only when it is predicted to finish within this share
    /// of `admit_headroom` of the target.
    pub up_margin: f64,
    /// Sliding window of the degradation level, seconds.
    pub degradation_window_s: f64,
    /// Choose a rung only when predicted to finish within this share of the target:
    /// room for prediction error (batch mixing, noise, work arriving with earlier
    /// deadlines).
    pub headroom: f64,
    /// When no rung fits within `headroom`, still admit at the cheapest rung if it is
    /// predicted within this (larger) share; refuse with 429 only beyond it.
    pub admit_headroom: f64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            slo_target_s: 1.0,
            // Small batches keep head-of-line blocking short; on CPU, throughput is flat
            // beyond a few thousand tokens per batch.
            token_budget: 2048,
            max_queued_tokens: 2_000_000,
            up_margin: 0.6,
            degradation_window_s: 30.0,
            // With 0.75 for both, p99 held the target in 95.7-100% of 1-s windows over
            // seven ramps on the 2-core bench machine (docs/BENCHMARKS.md): step down
            // earlier, but refuse no sooner than before.
            headroom: 0.65,
            admit_headroom: 0.75,
        }
    }
}

/// How a request's configuration is chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    Auto,
    Pinned(String),
}

#[derive(Debug, Clone)]
pub struct RequestSpec {
    /// Tokens of each (query, document) pair.
    pub pair_tokens: Vec<usize>,
    /// How many of each pair's tokens are its passage's, for configurations that cap
    /// passages; empty when unknown (then no cap shortens a pair).
    pub passage_tokens: Vec<usize>,
    pub choice: Choice,
    /// Own deadline, seconds from admission (else the SLO target applies).
    pub deadline_s: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    /// Over capacity even at the cheapest configuration, or the queue is full.
    Overloaded {
        retry_after_s: f64,
    },
    /// The request's own deadline cannot be met even at the cheapest configuration.
    DeadlineUnmeetable {
        predicted_s: f64,
        deadline_s: f64,
    },
    UnknownConfig(String),
    Empty,
    /// The request alone holds more tokens than the queue may: no wait would help.
    TooLarge {
        tokens: usize,
        max_queued_tokens: usize,
    },
}

#[derive(Debug, Clone)]
pub struct Admitted {
    pub id: u64,
    pub config: String,
    /// Predicted seconds until the last score.
    pub predicted_s: f64,
}

/// A batch to run: pairs (request id, pair index) of one configuration.
#[derive(Debug, Clone)]
pub struct BatchPlan {
    pub config: String,
    pub items: Vec<(u64, usize)>,
    pub padded_tokens: usize,
    pub predicted_s: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub queued_requests: usize,
    pub queued_pairs: usize,
    pub queued_tokens: usize,
    /// Index of the current rung (0 = best).
    pub level: usize,
    /// Share of requests admitted below the best configuration over the window.
    pub degradation: f64,
}

struct Pending {
    config: usize,
    /// Absolute time by which it should finish (the EDF key).
    deadline: f64,
    /// Pair indices not yet batched, longest first.
    remaining: VecDeque<usize>,
    tokens: Vec<usize>,
    /// Pairs batched but not completed.
    in_flight: usize,
}

pub struct Scheduler {
    pub configs: Vec<ConfigInfo>,
    pub settings: SchedulerConfig,
    level: usize,
    next_id: u64,
    pending: BTreeMap<u64, Pending>,
    queued_tokens: usize,
    in_flight_until: f64,
    recent: VecDeque<(f64, bool)>,
    /// Running mean of request sizes (tokens): the yardstick of the climb test, so a
    /// large request does not pin the level down nor a tiny one lift it.
    typical_tokens: f64,
}

impl Scheduler {
    /// `configs` in any order: they are ranked by quality, best first; at equal quality
    /// the rung that reads more of the passage first (a cap serves only when cheaper).
    pub fn new(mut configs: Vec<ConfigInfo>, settings: SchedulerConfig) -> Self {
        let reads = |c: &ConfigInfo| c.passage_tokens.unwrap_or(usize::MAX);
        configs.sort_by(|a, b| {
            b.quality
                .total_cmp(&a.quality)
                .then(reads(b).cmp(&reads(a)))
        });
        Scheduler {
            configs,
            settings,
            level: 0,
            next_id: 1,
            pending: BTreeMap::new(),
            queued_tokens: 0,
            in_flight_until: 0.0,
            recent: VecDeque::new(),
            typical_tokens: 0.0,
        }
    }

    pub fn config_index(&self, id: &str) -> Option<usize> {
        self.configs.iter().position(|c| c.id == id)
    }

    /// Predicted seconds of `tokens` under configuration `c` (its own work only).
    fn own_cost(&self, c: usize, tokens: usize) -> f64 {
        self.configs[c]
            .latency
            .predict_work(tokens, self.settings.token_budget)
    }

    /// The EDF deadline of a new request: its own, else the SLO target, or its own
    /// predicted work when that alone exceeds the target.
    fn deadline_for(&self, c: usize, tokens: usize, own_deadline: Option<f64>, now: f64) -> f64 {
        now + own_deadline.unwrap_or_else(|| {
            self.settings
                .slo_target_s
                .max(self.own_cost(c, tokens) * 1.5)
        })
    }

    /// Predicted seconds until a new request of `tokens` under `c`, due at `deadline`,
    /// finishes: the batch in flight, the queued work due before it, its own work.
    fn predict_due(&self, c: usize, tokens: usize, deadline: f64, now: f64) -> f64 {
        let own = self.own_cost(c, tokens);
        let ahead: f64 = self
            .pending
            .values()
            .filter(|p| p.deadline <= deadline)
            .map(|p| {
                let left: usize = p.remaining.iter().map(|&i| p.tokens[i]).sum();
                self.own_cost(p.config, left)
            })
            .sum();
        (self.in_flight_until - now).max(0.0) + ahead + own
    }

    fn predict(&self, c: usize, tokens: usize, now: f64) -> f64 {
        let deadline = self.deadline_for(c, tokens, None, now);
        self.predict_due(c, tokens, deadline, now)
    }

    /// Whether a request would meet the target under `c` (oversized requests, which
    /// exceed the target even alone, only need to fit their own stretched deadline).
    fn fits(&self, c: usize, tokens: usize, now: f64) -> bool {
        self.fits_within(c, tokens, self.settings.headroom, now)
    }

    fn fits_within(&self, c: usize, tokens: usize, share: f64, now: f64) -> bool {
        let deadline = self.deadline_for(c, tokens, None, now);
        self.predict_due(c, tokens, deadline, now) <= share * (deadline - now)
    }

    pub fn admit(&mut self, spec: RequestSpec, now: f64) -> Result<Admitted, Rejection> {
        if spec.pair_tokens.is_empty() {
            return Err(Rejection::Empty);
        }
        // Uncapped: the queue bound is checked before a rung is chosen, against the most
        // this request could add.
        let tokens: usize = spec.pair_tokens.iter().sum();
        // Each pair's tokens under each rung (a rung that caps passages runs fewer).
        let mut run_tokens: Vec<Vec<usize>> = self
            .configs
            .iter()
            .map(|c| {
                spec.pair_tokens
                    .iter()
                    .enumerate()
                    .map(|(i, &t)| {
                        c.tokens_run(t, spec.passage_tokens.get(i).copied().unwrap_or(0))
                    })
                    .collect()
            })
            .collect();
        let rung_tokens: Vec<usize> = run_tokens.iter().map(|t| t.iter().sum()).collect();
        if tokens > self.settings.max_queued_tokens {
            return Err(Rejection::TooLarge {
                tokens,
                max_queued_tokens: self.settings.max_queued_tokens,
            });
        }
        if self.queued_tokens + tokens > self.settings.max_queued_tokens {
            return Err(Rejection::Overloaded {
                retry_after_s: self.drain_time(now),
            });
        }
        let cheapest = self.configs.len() - 1;
        let config = match &spec.choice {
            Choice::Pinned(id) => {
                let c = self
                    .config_index(id)
                    .ok_or_else(|| Rejection::UnknownConfig(id.clone()))?;
                if let Some(deadline) = spec.deadline_s {
                    let predicted = self.predict_due(c, rung_tokens[c], now + deadline, now);
                    if predicted > deadline {
                        return Err(Rejection::DeadlineUnmeetable {
                            predicted_s: predicted,
                            deadline_s: deadline,
                        });
                    }
                }
                c
            }
            Choice::Auto => match spec.deadline_s {
                None => self.choose_for_slo(&rung_tokens, now)?,
                Some(deadline) => {
                    // A request's own deadline picks its rung but never moves the
                    // shared level, and never beats the level the load has set.
                    match (self.level..=cheapest).find(|&c| {
                        self.predict_due(c, rung_tokens[c], now + deadline, now) <= deadline
                    }) {
                        Some(c) => c,
                        None => {
                            return Err(Rejection::DeadlineUnmeetable {
                                predicted_s: self.predict_due(
                                    cheapest,
                                    rung_tokens[cheapest],
                                    now + deadline,
                                    now,
                                ),
                                deadline_s: deadline,
                            })
                        }
                    }
                }
            },
        };
        let tokens = rung_tokens[config];
        let deadline = self.deadline_for(config, tokens, spec.deadline_s, now);
        let predicted_s = self.predict_due(config, tokens, deadline, now);
        let id = self.next_id;
        self.next_id += 1;
        let pair_tokens = run_tokens.swap_remove(config);
        let mut order: Vec<usize> = (0..pair_tokens.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(pair_tokens[i]));
        self.pending.insert(
            id,
            Pending {
                config,
                deadline,
                remaining: order.into(),
                tokens: pair_tokens,
                in_flight: 0,
            },
        );
        self.queued_tokens += tokens;
        self.recent.push_back((now, config != 0));
        self.trim_window(now);
        Ok(Admitted {
            id,
            config: self.configs[config].id.clone(),
            predicted_s,
        })
    }

    /// The hysteresis rule for SLO-bound requests (see the crate docs); `rung_tokens`:
    /// the request's tokens under each rung.
    fn choose_for_slo(&mut self, rung_tokens: &[usize], now: f64) -> Result<usize, Rejection> {
        let cheapest = self.configs.len() - 1;
        // The climb yardstick counts the best rung's tokens (uncapped unless it caps).
        let tokens = rung_tokens[0];
        self.typical_tokens = if self.typical_tokens == 0.0 {
            tokens as f64
        } else {
            0.9 * self.typical_tokens + 0.1 * tokens as f64
        };
        if self.pending.is_empty() && now - self.in_flight_until >= IDLE_RESET_S {
            // Idle for a while: nothing to protect, start from the best rung. (A
            // momentary gap between batches under load is not idleness.)
            self.level = 0;
        }
        let up = self.settings.up_margin * self.settings.admit_headroom;
        // A typical request under rung `c`: shortened as this request is by its cap.
        let typical = |c: usize| {
            (self.typical_tokens * rung_tokens[c] as f64 / tokens.max(1) as f64).round() as usize
        };
        if self.level > 0
            && self.fits_within(self.level - 1, typical(self.level - 1), up, now)
            && self.fits(self.level - 1, rung_tokens[self.level - 1], now)
        {
            self.level -= 1;
            return Ok(self.level);
        }
        match (self.level..=cheapest).find(|&c| self.fits(c, rung_tokens[c], now)) {
            Some(c) => {
                self.level = c;
                Ok(c)
            }
            None => {
                self.level = cheapest;
                let tokens = rung_tokens[cheapest];
                if self.fits_within(cheapest, tokens, self.settings.admit_headroom, now) {
                    Ok(cheapest)
                } else {
                    Err(Rejection::Overloaded {
                        retry_after_s: self.drain_time(now),
                    })
                }
            }
        }
    }

    /// Seconds until the queue would be empty (the Retry-After of a refusal).
    pub fn drain_time(&self, now: f64) -> f64 {
        let queued: f64 = self
            .pending
            .values()
            .map(|p| {
                let left: usize = p.remaining.iter().map(|&i| p.tokens[i]).sum();
                self.own_cost(p.config, left)
            })
            .sum();
        (self.in_flight_until - now).max(0.0) + queued
    }

    /// The next batch to run, if any work is queued.
    pub fn next_batch(&mut self, now: f64) -> Option<BatchPlan> {
        // Earliest deadline first.
        let first = self
            .pending
            .iter()
            .filter(|(_, p)| !p.remaining.is_empty())
            .min_by(|a, b| a.1.deadline.total_cmp(&b.1.deadline).then(a.0.cmp(b.0)))
            .map(|(&id, p)| (id, p.config))?;
        let config = first.1;
        let mut order: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.config == config && !p.remaining.is_empty())
            .map(|(&id, _)| id)
            .collect();
        order.sort_by(|a, b| {
            self.pending[a]
                .deadline
                .total_cmp(&self.pending[b].deadline)
                .then(a.cmp(b))
        });
        let budget = self.settings.token_budget;
        let mut items = Vec::new();
        let mut longest = 0usize;
        // The most urgent request's longest pair sets the batch length; other pairs
        // join only when no shorter than MIN_FILL of it, so padding stays small even when
        // a batch mixes requests.
        const MIN_FILL: f64 = 0.5;
        'fill: for id in order {
            let p = self.pending.get_mut(&id).expect("listed");
            let mut k = 0;
            while k < p.remaining.len() {
                let i = p.remaining[k];
                let t = p.tokens[i];
                if !items.is_empty() {
                    if t > longest || (t as f64) < MIN_FILL * longest as f64 {
                        k += 1;
                        continue;
                    }
                    if (items.len() + 1) * longest > budget {
                        break 'fill;
                    }
                }
                longest = longest.max(t);
                items.push((id, i));
                p.remaining.remove(k);
                p.in_flight += 1;
                self.queued_tokens -= t;
            }
        }
        let padded_tokens = items.len() * longest;
        let predicted_s = self.configs[config].latency.predict(padded_tokens);
        self.in_flight_until = now + predicted_s;
        Some(BatchPlan {
            config: self.configs[config].id.clone(),
            items,
            padded_tokens,
            predicted_s,
        })
    }

    /// Records a finished batch; returns the requests it completed.
    pub fn complete(&mut self, plan: &BatchPlan, elapsed_s: f64, now: f64) -> Vec<u64> {
        if let Some(c) = self.config_index(&plan.config) {
            self.configs[c]
                .latency
                .observe(plan.padded_tokens, elapsed_s);
        }
        self.release(plan, now)
    }

    /// Like `complete`, for a batch whose time says nothing about the configuration's
    /// speed (it failed, or none of its requests was left to run): the pairs leave the
    /// queue's accounting, the latency model learns nothing.
    pub fn release(&mut self, plan: &BatchPlan, now: f64) -> Vec<u64> {
        self.in_flight_until = now;
        let mut done = Vec::new();
        for &(id, _) in &plan.items {
            if let Some(p) = self.pending.get_mut(&id) {
                p.in_flight -= 1;
                if p.in_flight == 0 && p.remaining.is_empty() {
                    self.pending.remove(&id);
                    done.push(id);
                }
            }
        }
        done
    }

    /// Drops a request's queued work (its client went away). Pairs already in a batch
    /// finish, but nothing more of it runs.
    pub fn cancel(&mut self, id: u64) {
        if let Some(p) = self.pending.get_mut(&id) {
            let left: usize = p.remaining.iter().map(|&i| p.tokens[i]).sum();
            self.queued_tokens -= left;
            p.remaining.clear();
            if p.in_flight == 0 {
                self.pending.remove(&id);
            }
        }
    }

    fn trim_window(&mut self, now: f64) {
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| now - t > self.settings.degradation_window_s)
        {
            self.recent.pop_front();
        }
    }

    pub fn stats(&mut self, now: f64) -> Stats {
        self.trim_window(now);
        let degraded = self.recent.iter().filter(|(_, d)| *d).count();
        Stats {
            queued_requests: self.pending.len(),
            queued_pairs: self.pending.values().map(|p| p.remaining.len()).sum(),
            queued_tokens: self.queued_tokens,
            level: self.level,
            degradation: if self.recent.is_empty() {
                0.0
            } else {
                degraded as f64 / self.recent.len() as f64
            },
        }
    }

    /// Current predicted seconds of a reference request of `pairs` pairs of
    /// `pair_tokens` tokens (`passage_tokens` of them the passage's) under each
    /// configuration.
    pub fn estimates(
        &self,
        pairs: usize,
        pair_tokens: usize,
        passage_tokens: usize,
        now: f64,
    ) -> Vec<(String, f64)> {
        self.configs
            .iter()
            .enumerate()
            .map(|(c, info)| {
                let tokens = pairs * info.tokens_run(pair_tokens, passage_tokens);
                (info.id.clone(), self.predict(c, tokens, now))
            })
            .collect()
    }
}

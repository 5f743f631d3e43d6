//! The bridge between HTTP handlers and inference: requests are admitted by the
//! scheduler, one executor thread runs the batches it plans on ONNX Runtime, and each
//! request's scores go back through a oneshot channel. A handler dropped mid-request
//! (client gone) cancels its queued work.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use models::{EncodedPair, PaddedBatch, Runtime};
use scheduler::{Admitted, BatchPlan, Choice, Rejection, RequestSpec, Scheduler, Stats};
use tokio::sync::oneshot;

use super::metrics::Metrics;

/// Scores of a finished request with its timings.
#[derive(Debug)]
pub struct Finished {
    pub scores: Vec<f32>,
    pub config: String,
    pub queue_s: f64,
    pub inference_s: f64,
}

struct Job {
    pairs: Vec<EncodedPair>,
    scores: Vec<f32>,
    config: String,
    admitted_at: Instant,
    started_at: Option<Instant>,
    inference_s: f64,
    reply: Option<oneshot::Sender<Result<Finished, String>>>,
}

struct State {
    scheduler: Scheduler,
    jobs: HashMap<u64, Job>,
    stopping: bool,
}

pub struct Engine {
    pub runtime: Arc<Runtime>,
    state: Mutex<State>,
    wake: Condvar,
    epoch: Instant,
    metrics: Arc<Metrics>,
}

/// Cancels a request's queued work when dropped before it finished.
pub struct Ticket {
    engine: Arc<Engine>,
    pub id: u64,
    done: bool,
}

impl Ticket {
    pub fn finish(mut self) {
        self.done = true;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done {
            self.engine.cancel(self.id);
        }
    }
}

impl Engine {
    pub fn new(runtime: Arc<Runtime>, scheduler: Scheduler, metrics: Arc<Metrics>) -> Arc<Self> {
        let engine = Arc::new(Engine {
            runtime,
            state: Mutex::new(State {
                scheduler,
                jobs: HashMap::new(),
                stopping: false,
            }),
            wake: Condvar::new(),
            epoch: Instant::now(),
            metrics,
        });
        let worker = engine.clone();
        std::thread::Builder::new()
            .name("mrank-executor".into())
            .spawn(move || worker.executor_loop())
            .expect("spawn the executor thread");
        engine
    }

    fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a request; its scores arrive on the returned receiver.
    pub fn submit(
        self: &Arc<Self>,
        pairs: Vec<EncodedPair>,
        choice: Choice,
        deadline_s: Option<f64>,
    ) -> Result<(Ticket, oneshot::Receiver<Result<Finished, String>>), Rejection> {
        let now = self.now();
        let mut state = self.lock();
        if state.stopping {
            return Err(Rejection::Overloaded { retry_after_s: 1.0 });
        }
        let spec = RequestSpec {
            pair_tokens: pairs.iter().map(|p| p.len()).collect(),
            passage_tokens: pairs.iter().map(|p| p.passage.len).collect(),
            choice,
            deadline_s,
        };
        let Admitted { id, config, .. } = state.scheduler.admit(spec, now)?;
        let (tx, rx) = oneshot::channel();
        let n = pairs.len();
        state.jobs.insert(
            id,
            Job {
                pairs,
                scores: vec![0.0; n],
                config: config.clone(),
                admitted_at: Instant::now(),
                started_at: None,
                inference_s: 0.0,
                reply: Some(tx),
            },
        );
        self.metrics.selection(&config);
        self.publish(&mut state, now);
        drop(state);
        self.wake.notify_one();
        Ok((
            Ticket {
                engine: self.clone(),
                id,
                done: false,
            },
            rx,
        ))
    }

    fn cancel(&self, id: u64) {
        let now = self.now();
        let mut state = self.lock();
        state.scheduler.cancel(id);
        state.jobs.remove(&id);
        self.publish(&mut state, now);
    }

    fn publish(&self, state: &mut State, now: f64) {
        let stats: Stats = state.scheduler.stats(now);
        self.metrics.queue(&stats);
    }

    pub fn stats(&self) -> Stats {
        let now = self.now();
        self.lock().scheduler.stats(now)
    }

    /// Predicted seconds for a reference request (60 pairs of 100 tokens, 88 of them
    /// the passage's) per configuration, plus the calibrated latency model of each.
    pub fn estimates(&self) -> Vec<(String, f64, f64, f64)> {
        let now = self.now();
        let state = self.lock();
        let s = &state.scheduler;
        s.estimates(60, 100, 88, now)
            .into_iter()
            .map(|(id, predicted)| {
                let m = &s.configs[s.config_index(&id).expect("listed")].latency;
                (id, predicted, m.per_batch_s, m.per_token_s)
            })
            .collect()
    }

    /// Stops admitting; the executor finishes everything admitted, then exits.
    pub fn stop(&self) {
        self.lock().stopping = true;
        self.wake.notify_all();
    }

    pub fn idle(&self) -> bool {
        self.lock().jobs.is_empty()
    }

    fn executor_loop(self: Arc<Self>) {
        loop {
            let (plan, batch) = {
                let mut state = self.lock();
                loop {
                    let now = self.now();
                    if let Some(plan) = state.scheduler.next_batch(now) {
                        let pairs: Vec<EncodedPair> = plan
                            .items
                            .iter()
                            .filter_map(|(id, i)| state.jobs.get(id).map(|j| j.pairs[*i].clone()))
                            .collect();
                        for (id, _) in &plan.items {
                            if let Some(j) = state.jobs.get_mut(id) {
                                j.started_at.get_or_insert_with(Instant::now);
                            }
                        }
                        self.publish(&mut state, now);
                        break (plan, pairs);
                    }
                    if state.stopping && state.jobs.is_empty() {
                        return;
                    }
                    state = self
                        .wake
                        .wait_timeout(state, Duration::from_millis(200))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            };
            self.run_batch(plan, batch);
        }
    }

    fn run_batch(&self, plan: BatchPlan, pairs: Vec<EncodedPair>) {
        let started = Instant::now();
        // Planned and copied under one lock, so every pair of the plan is here.
        let padded = PaddedBatch::new(&pairs, self.runtime.encoder.pad_id);
        let result = self
            .runtime
            .run(&plan.config, &padded)
            .map_err(|e| e.to_string());
        let took = started.elapsed().as_secs_f64();
        self.metrics
            .batch(&plan.config, plan.items.len(), plan.padded_tokens, took);
        let now = self.now();
        let mut state = self.lock();
        match &result {
            Ok(scores) => {
                for ((id, i), s) in plan.items.iter().zip(scores) {
                    if let Some(j) = state.jobs.get_mut(id) {
                        j.scores[*i] = *s;
                        j.inference_s += took / plan.items.len() as f64;
                    }
                }
            }
            Err(message) => {
                tracing_error(&plan.config, message);
                for (id, _) in &plan.items {
                    if let Some(mut j) = state.jobs.remove(id) {
                        if let Some(tx) = j.reply.take() {
                            let _ = tx.send(Err(format!("inference failed: {message}")));
                        }
                    }
                }
            }
        }
        let finished = state.scheduler.complete(&plan, took, now);
        for id in finished {
            if let Some(mut j) = state.jobs.remove(&id) {
                let queue_s = j
                    .started_at
                    .map(|s| s.duration_since(j.admitted_at).as_secs_f64())
                    .unwrap_or(0.0);
                if let Some(tx) = j.reply.take() {
                    let _ = tx.send(Ok(Finished {
                        scores: std::mem::take(&mut j.scores),
                        config: j.config.clone(),
                        queue_s,
                        inference_s: j.inference_s,
                    }));
                }
            }
        }
        self.publish(&mut state, now);
    }
}

fn tracing_error(config: &str, message: &str) {
    super::log::error(&format!("batch on {config} failed: {message}"));
}

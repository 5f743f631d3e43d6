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

/// Where a request's scores (or its error) arrive.
type Reply = oneshot::Receiver<Result<Finished, String>>;

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
    ) -> Result<(Ticket, Reply), Rejection> {
        let now = self.now();
        let mut state = self.lock();
        if state.stopping {
            return Err(Rejection::Overloaded { retry_after_s: 1.0 });
        }
        let (id, rx) = state.admit(pairs, choice, deadline_s, now)?;
        self.metrics.selection(&state.jobs[&id].config);
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
            let batch = {
                let mut state = self.lock();
                loop {
                    let now = self.now();
                    if let Some(batch) = state.take_batch(now) {
                        self.publish(&mut state, now);
                        break batch;
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
            self.run_batch(batch);
        }
    }

    fn run_batch(&self, batch: Batch) {
        if batch.items.is_empty() {
            // Every request of the plan is gone: nothing to run, and no time to learn from.
            let now = self.now();
            let mut state = self.lock();
            state.scheduler.release(&batch.plan, now);
            self.publish(&mut state, now);
            return;
        }
        let started = Instant::now();
        let padded = PaddedBatch::new(&batch.pairs, self.runtime.encoder.pad_id);
        let result = self
            .runtime
            .run(&batch.plan.config, &padded)
            .map_err(|e| e.to_string())
            .and_then(|scores| {
                if scores.len() == batch.items.len() {
                    Ok(scores)
                } else {
                    Err(format!(
                        "the graph returned {} scores for {} pairs",
                        scores.len(),
                        batch.items.len()
                    ))
                }
            });
        let took = started.elapsed().as_secs_f64();
        self.metrics.batch(
            &batch.plan.config,
            batch.items.len(),
            batch.plan.padded_tokens,
            took,
        );
        let now = self.now();
        let mut state = self.lock();
        let finished = match result {
            Ok(scores) => state.record(&batch, &scores, took, now),
            Err(message) => {
                tracing_error(&batch.plan.config, &message);
                state.fail(&batch, &message, now)
            }
        };
        for (mut job, queue_s) in finished {
            if let Some(tx) = job.reply.take() {
                let _ = tx.send(Ok(Finished {
                    scores: std::mem::take(&mut job.scores),
                    config: job.config.clone(),
                    queue_s,
                    inference_s: job.inference_s,
                }));
            }
        }
        self.publish(&mut state, now);
    }
}

/// A batch as the executor runs it: the scheduler's plan, and the pairs of the requests
/// still alive, `items[k]` the (request, pair index) that owns `pairs[k]`.
struct Batch {
    plan: BatchPlan,
    items: Vec<(u64, usize)>,
    pairs: Vec<EncodedPair>,
}

impl State {
    /// Admits a request through the scheduler and holds its pairs until they are scored;
    /// returns its id and the channel its scores will arrive on.
    fn admit(
        &mut self,
        pairs: Vec<EncodedPair>,
        choice: Choice,
        deadline_s: Option<f64>,
        now: f64,
    ) -> Result<(u64, Reply), Rejection> {
        let spec = RequestSpec {
            pair_tokens: pairs.iter().map(|p| p.len()).collect(),
            passage_tokens: pairs.iter().map(|p| p.passage.len).collect(),
            choice,
            deadline_s,
        };
        let Admitted { id, config, .. } = self.scheduler.admit(spec, now)?;
        let (tx, rx) = oneshot::channel();
        let n = pairs.len();
        self.jobs.insert(
            id,
            Job {
                pairs,
                scores: vec![0.0; n],
                config,
                admitted_at: Instant::now(),
                started_at: None,
                inference_s: 0.0,
                reply: Some(tx),
            },
        );
        Ok((id, rx))
    }

    /// The next batch the scheduler plans, each pair copied from its request under the
    /// same lock. An item whose request is gone is left out of `items` and `pairs`
    /// together: a score must never land on another request's pair.
    fn take_batch(&mut self, now: f64) -> Option<Batch> {
        let plan = self.scheduler.next_batch(now)?;
        let mut items = Vec::with_capacity(plan.items.len());
        let mut pairs = Vec::with_capacity(plan.items.len());
        for &(id, i) in &plan.items {
            if let Some(job) = self.jobs.get_mut(&id) {
                job.started_at.get_or_insert_with(Instant::now);
                items.push((id, i));
                pairs.push(job.pairs[i].clone());
            }
        }
        Some(Batch { plan, items, pairs })
    }

    /// Stores a batch's scores and returns the requests it finished, each with its
    /// seconds in the queue.
    fn record(&mut self, batch: &Batch, scores: &[f32], took: f64, now: f64) -> Vec<(Job, f64)> {
        for (&(id, i), &score) in batch.items.iter().zip(scores) {
            if let Some(job) = self.jobs.get_mut(&id) {
                job.scores[i] = score;
                job.inference_s += took / batch.items.len() as f64;
            }
        }
        let done = self.scheduler.complete(&batch.plan, took, now);
        done.into_iter()
            .filter_map(|id| self.jobs.remove(&id))
            .map(|job| {
                let queue_s = job
                    .started_at
                    .map(|s| s.duration_since(job.admitted_at).as_secs_f64())
                    .unwrap_or(0.0);
                (job, queue_s)
            })
            .collect()
    }

    /// A batch failed: each request with a pair in it gets the error, and its work still
    /// queued leaves the scheduler, which would otherwise plan pairs of a request that
    /// has no job any more. A failure's time says nothing about the model's speed, so
    /// the latency model does not learn from it. Returns what else finished (nothing of
    /// the failed requests).
    fn fail(&mut self, batch: &Batch, message: &str, now: f64) -> Vec<(Job, f64)> {
        for &(id, _) in &batch.items {
            self.scheduler.cancel(id);
            if let Some(mut job) = self.jobs.remove(&id) {
                if let Some(tx) = job.reply.take() {
                    let _ = tx.send(Err(format!("inference failed: {message}")));
                }
            }
        }
        self.scheduler.release(&batch.plan, now);
        Vec::new()
    }
}

fn tracing_error(config: &str, message: &str) {
    super::log::error(&format!("batch on {config} failed: {message}"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use models::Span;
    use scheduler::{ConfigInfo, LatencyModel, SchedulerConfig};

    /// A pair of `tokens` tokens whose first id is `tag`, so a test can tell pairs apart.
    fn pair(tag: u32, tokens: usize) -> EncodedPair {
        let mut input_ids = vec![1; tokens];
        input_ids[0] = tag;
        EncodedPair {
            input_ids,
            token_type_ids: vec![0; tokens],
            query: Span { start: 1, len: 1 },
            passage: Span {
                start: 3,
                len: tokens - 4,
            },
            prompt: None,
            score_pos: 0,
            truncated: false,
            keeps_end: false,
        }
    }

    /// One configuration, batches of at most 64 tokens: two 32-token pairs each.
    fn state() -> State {
        let configs = vec![ConfigInfo {
            id: "full".into(),
            quality: 1.0,
            latency: LatencyModel::new(0.001, 1e-6),
            passage_tokens: None,
        }];
        let settings = SchedulerConfig {
            slo_target_s: 10.0,
            token_budget: 64,
            ..Default::default()
        };
        State {
            scheduler: Scheduler::new(configs, settings),
            jobs: HashMap::new(),
            stopping: false,
        }
    }

    fn admit(state: &mut State, tags: &[u32]) -> (u64, Reply) {
        let pairs: Vec<EncodedPair> = tags.iter().map(|&t| pair(t, 32)).collect();
        state.admit(pairs, Choice::Auto, None, 0.0).unwrap()
    }

    /// Scores a batch as a model would: each pair's score is its tag.
    fn run(batch: &Batch) -> Vec<f32> {
        batch.pairs.iter().map(|p| p.input_ids[0] as f32).collect()
    }

    /// A request spans three batches; its first one fails. It gets the error, none of
    /// its queued pairs runs afterwards, and the request behind it is scored with its
    /// own scores (before the fix, the next plan still held the failed request's pairs,
    /// and scores shifted onto the wrong requests).
    #[test]
    fn a_failed_batch_ends_its_request_and_never_shifts_scores() {
        let mut state = state();
        let (a, mut a_reply) = admit(&mut state, &[10, 11, 12, 13, 14, 15]);
        let (b, mut b_reply) = admit(&mut state, &[20, 21]);
        let first = state.take_batch(0.0).unwrap();
        assert!(
            first.items.iter().all(|&(id, _)| id == a),
            "{:?}",
            first.items
        );
        assert!(state.fail(&first, "out of memory", 0.1).is_empty());
        match a_reply.try_recv() {
            Ok(Err(message)) => assert!(message.contains("out of memory"), "{message}"),
            other => panic!("the failed request got {other:?}"),
        }
        let mut finished = Vec::new();
        while let Some(batch) = state.take_batch(0.2) {
            // Not even planned: the failed request's queued pairs left the scheduler.
            let planned = &batch.plan.items;
            assert!(planned.iter().all(|&(id, _)| id == b), "{planned:?}");
            finished.extend(state.record(&batch, &run(&batch), 0.01, 0.3));
        }
        assert_eq!(finished.len(), 1);
        let (job, _) = &finished[0];
        assert_eq!(job.scores, vec![20.0, 21.0]);
        assert!(
            b_reply.try_recv().is_err(),
            "the engine replies, not `record`"
        );
        assert_eq!(state.scheduler.stats(0.3).queued_tokens, 0);
        assert!(state.jobs.is_empty());
    }

    /// Should a request's job vanish while the scheduler still plans its pairs, the
    /// batch leaves them out, and every remaining pair keeps its own request.
    #[test]
    fn a_batch_keeps_items_and_pairs_aligned_when_a_request_is_gone() {
        let mut state = state();
        let (a, _a_reply) = admit(&mut state, &[10]);
        let (b, _b_reply) = admit(&mut state, &[20]);
        state.jobs.remove(&a);
        let batch = state.take_batch(0.0).unwrap();
        assert_eq!(batch.plan.items.len(), 2);
        assert_eq!(batch.items, vec![(b, 0)]);
        assert_eq!(run(&batch), vec![20.0]);
        let finished = state.record(&batch, &run(&batch), 0.01, 0.1);
        assert_eq!(finished.len(), 1);
        assert_eq!(finished[0].0.scores, vec![20.0]);
    }
}

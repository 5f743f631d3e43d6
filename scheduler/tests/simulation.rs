//! The scheduler under simulated load: a simulated executor whose batches take
//! `per_batch + per_token · padded tokens` (with noise) per configuration, Poisson
//! arrivals of requests with 20-100 documents, and simulated time. Costs are those
//! measured for the embedded default on this machine's class (full ≈ 250 µs per token).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use scheduler::{
    Choice, ConfigInfo, LatencyModel, Rejection, RequestSpec, Scheduler, SchedulerConfig,
};

/// (id, quality, true seconds per padded token)
const LADDER: [(&str, f64, f64); 4] = [
    ("full", 0.60, 250e-6),
    ("d6-r4@2", 0.49, 125e-6),
    ("d3-r8@1", 0.30, 65e-6),
    ("d2-r8@1", 0.29, 45e-6),
];
const PER_BATCH: f64 = 0.003;
const SLO: f64 = 5.0;
const TOKENS_PER_PAIR: (usize, usize) = (40, 160);

fn scheduler(initial_error: f64) -> Scheduler {
    let configs = LADDER
        .iter()
        .map(|&(id, q, per_token)| ConfigInfo {
            id: id.into(),
            quality: q,
            latency: LatencyModel::new(PER_BATCH, per_token * initial_error),
            passage_tokens: None,
        })
        .collect();
    Scheduler::new(
        configs,
        SchedulerConfig {
            slo_target_s: SLO,
            ..Default::default()
        },
    )
}

/// Mean seconds of one request at full width alone: the unit of load.
fn full_request_seconds() -> f64 {
    60.0 * ((TOKENS_PER_PAIR.0 + TOKENS_PER_PAIR.1) as f64 / 2.0) * 1.1 * LADDER[0].2
}

struct Outcome {
    /// (arrival, finish, config) of served requests.
    served: Vec<(f64, f64, String)>,
    rejected: Vec<(f64, Rejection)>,
    levels: Vec<(f64, usize)>,
}

impl Outcome {
    fn latencies(&self, from: f64, to: f64) -> Vec<f64> {
        let mut v: Vec<f64> = self
            .served
            .iter()
            .filter(|(a, _, _)| *a >= from && *a < to)
            .map(|(a, f, _)| f - a)
            .collect();
        v.sort_by(f64::total_cmp);
        v
    }
    fn p99(&self, from: f64, to: f64) -> f64 {
        let v = self.latencies(from, to);
        if v.is_empty() {
            return 0.0;
        }
        v[((v.len() as f64 * 0.99).ceil() as usize).min(v.len()) - 1]
    }
    fn share_full(&self, from: f64, to: f64) -> f64 {
        let v: Vec<_> = self
            .served
            .iter()
            .filter(|(a, _, _)| *a >= from && *a < to)
            .collect();
        v.iter().filter(|(_, _, c)| c == "full").count() as f64 / v.len().max(1) as f64
    }
}

/// Runs `duration` simulated seconds; `load(t)` is the offered load in multiples of
/// the full configuration's capacity.
fn simulate(
    s: &mut Scheduler,
    duration: f64,
    load: impl Fn(f64) -> f64,
    choice: impl Fn(usize) -> Choice,
    seed: u64,
) -> Outcome {
    simulate_arrivals(s, duration, load, choice, seed, true)
}

/// `poisson`: exponential gaps between arrivals, else regular gaps.
fn simulate_arrivals(
    s: &mut Scheduler,
    duration: f64,
    load: impl Fn(f64) -> f64,
    choice: impl Fn(usize) -> Choice,
    seed: u64,
    poisson: bool,
) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let unit = full_request_seconds();
    let mut out = Outcome {
        served: Vec::new(),
        rejected: Vec::new(),
        levels: Vec::new(),
    };
    let mut arrivals = std::collections::HashMap::new();
    let mut now = 0.0;
    let mut next_arrival = 0.0;
    let mut busy: Option<(f64, scheduler::BatchPlan, f64)> = None; // (done at, plan, took)
    let mut n = 0usize;
    while now < duration || busy.is_some() || s.stats(now).queued_pairs > 0 {
        let done_at = busy.as_ref().map(|b| b.0).unwrap_or(f64::INFINITY);
        if next_arrival <= done_at && next_arrival < duration {
            now = next_arrival;
            let docs = rng.random_range(20..=100);
            let tokens: Vec<usize> = (0..docs)
                .map(|_| rng.random_range(TOKENS_PER_PAIR.0..=TOKENS_PER_PAIR.1))
                .collect();
            match s.admit(
                RequestSpec {
                    pair_tokens: tokens,
                    passage_tokens: Vec::new(),
                    choice: choice(n),
                    deadline_s: None,
                },
                now,
            ) {
                Ok(a) => {
                    arrivals.insert(a.id, (now, a.config));
                }
                Err(r) => out.rejected.push((now, r)),
            }
            n += 1;
            let rate = load(now).max(1e-3) / unit;
            next_arrival = if poisson {
                now - rng.random::<f64>().max(1e-12).ln() / rate
            } else {
                now + 1.0 / rate
            };
        } else if let Some((t, plan, took)) = busy.take() {
            now = t;
            for id in s.complete(&plan, took, now) {
                let (a, c) = arrivals.remove(&id).unwrap();
                out.served.push((a, now, c));
            }
        } else {
            now = next_arrival.min(duration);
            if now >= duration && s.stats(now).queued_pairs == 0 {
                break;
            }
        }
        if busy.is_none() {
            if let Some(plan) = s.next_batch(now) {
                let per_token = LADDER.iter().find(|c| c.0 == plan.config).unwrap().2;
                let noise = 1.0 + 0.1 * (rng.random::<f64>() - 0.5);
                let took = (PER_BATCH + per_token * plan.padded_tokens as f64) * noise;
                busy = Some((now + took, plan, took));
            }
        }
        out.levels.push((now, s.stats(now).level));
    }
    out
}

#[test]
fn light_load_is_served_at_full_quality() {
    let mut s = scheduler(1.0);
    // Regular arrivals at 30% of full capacity: requests never overlap much.
    let out = simulate_arrivals(&mut s, 240.0, |_| 0.3, |_| Choice::Auto, 1, false);
    assert!(out.served.len() > 10, "{} served", out.served.len());
    assert!(out.rejected.is_empty());
    assert_eq!(
        out.share_full(0.0, 240.0),
        1.0,
        "every request at full under light load"
    );
    assert!(out.p99(0.0, 240.0) <= SLO);
}

/// Offered load: 0.3× → 3× full capacity over 60 s, 3× for 30 s, back to 0.3× over
/// 60 s, then 60 s at 0.3×.
fn ramp(t: f64) -> f64 {
    match t {
        t if t < 60.0 => 0.3 + 2.7 * t / 60.0,
        t if t < 90.0 => 3.0,
        t if t < 150.0 => 3.0 - 2.7 * (t - 90.0) / 60.0,
        _ => 0.3,
    }
}

#[test]
fn rising_load_steps_down_and_holds_the_target_then_steps_back_up() {
    let mut s = scheduler(1.0);
    let out = simulate(&mut s, 210.0, ramp, |_| Choice::Auto, 2);
    // Peak: mostly below full, and the tail still within the target.
    assert!(
        out.share_full(60.0, 90.0) < 0.5,
        "peak full share {}",
        out.share_full(60.0, 90.0)
    );
    assert!(out.p99(0.0, 210.0) <= SLO, "p99 {}", out.p99(0.0, 210.0));
    // 3× full capacity is within the cheapest rung's capacity: almost nothing refused.
    assert!(
        out.rejected.len() * 100 <= out.served.len() * 5,
        "{} refused of {}",
        out.rejected.len(),
        out.served.len()
    );
    // After the load falls: back to full.
    assert!(
        out.share_full(170.0, 210.0) > 0.9,
        "late full share {}",
        out.share_full(170.0, 210.0)
    );
    assert_eq!(out.levels.last().unwrap().1, 0);
    // Hysteresis: the level does not flap request to request at steady low load.
    let changes = out
        .levels
        .windows(2)
        .filter(|w| w[0].1 != w[1].1 && w[0].0 > 170.0)
        .count();
    assert!(changes <= 2, "{changes} level changes at steady light load");
}

#[test]
fn the_same_ramp_pinned_to_full_misses_the_target() {
    let mut s = scheduler(1.0);
    let out = simulate(&mut s, 210.0, ramp, |_| Choice::Pinned("full".into()), 2);
    assert!(
        out.p99(30.0, 120.0) > SLO,
        "pinned p99 {}",
        out.p99(30.0, 120.0)
    );
    assert!(
        out.served.iter().all(|(_, _, c)| c == "full"),
        "pins never change"
    );
}

#[test]
fn pins_never_change_under_load_while_auto_requests_adapt() {
    let mut s = scheduler(1.0);
    let out = simulate(
        &mut s,
        120.0,
        |_| 2.0,
        |n| {
            if n % 5 == 0 {
                Choice::Pinned("d6-r4@2".into())
            } else {
                Choice::Auto
            }
        },
        3,
    );
    let configs: std::collections::BTreeSet<&str> =
        out.served.iter().map(|(_, _, c)| c.as_str()).collect();
    assert!(configs.contains("d6-r4@2"));
    assert!(
        configs.len() > 1,
        "auto requests used more than the pinned rung"
    );
}

#[test]
fn beyond_the_cheapest_capacity_requests_are_refused_not_all_late() {
    let mut s = scheduler(1.0);
    // Cheapest rung ≈ 5.5× full capacity; offer 12×.
    let out = simulate(&mut s, 60.0, |_| 12.0, |_| Choice::Auto, 4);
    let refused = out.rejected.len();
    assert!(
        refused > out.served.len() / 2,
        "refused {refused}, served {}",
        out.served.len()
    );
    assert!(out.rejected.iter().all(
        |(_, r)| matches!(r, Rejection::Overloaded { retry_after_s } if *retry_after_s >= 0.0)
    ));
    // Those admitted still meet the target.
    assert!(
        out.p99(10.0, 60.0) <= SLO * 1.1,
        "admitted p99 {}",
        out.p99(10.0, 60.0)
    );
}

#[test]
fn latency_model_recalibrates_a_wrong_start() {
    // The scheduler starts believing every configuration is 3× faster than it is.
    let mut s = scheduler(1.0 / 3.0);
    let out = simulate(&mut s, 120.0, |_| 1.5, |_| Choice::Auto, 5);
    assert!(
        out.p99(30.0, 120.0) <= SLO,
        "p99 after calibration {}",
        out.p99(30.0, 120.0)
    );
    let full = &s.configs.iter().find(|c| c.id == "full").unwrap().latency;
    assert!(
        (full.per_token_s / LADDER[0].2 - 1.0).abs() < 0.15,
        "calibrated {full:?}"
    );
}

#[test]
fn a_long_request_does_not_starve_a_short_one() {
    let mut s = scheduler(1.0);
    let long = s
        .admit(
            RequestSpec {
                pair_tokens: vec![120; 1000],
                passage_tokens: Vec::new(),
                choice: Choice::Pinned("full".into()),
                deadline_s: None,
            },
            0.0,
        )
        .unwrap();
    let short = s
        .admit(
            RequestSpec {
                pair_tokens: vec![120; 20],
                passage_tokens: Vec::new(),
                choice: Choice::Pinned("full".into()),
                deadline_s: None,
            },
            0.01,
        )
        .unwrap();
    let mut now = 0.01;
    let mut finished = Vec::new();
    while let Some(plan) = s.next_batch(now) {
        let took = PER_BATCH + LADDER[0].2 * plan.padded_tokens as f64;
        now += took;
        for id in s.complete(&plan, took, now) {
            finished.push((id, now));
        }
    }
    assert_eq!(finished.len(), 2);
    assert_eq!(finished[0].0, short.id, "the short request finishes first");
    assert!(
        finished[0].1 < 1.5,
        "short request done after {}s",
        finished[0].1
    );
    assert_eq!(finished[1].0, long.id);
}

#[test]
fn cancelled_work_is_dropped() {
    let mut s = scheduler(1.0);
    let a = s
        .admit(
            RequestSpec {
                pair_tokens: vec![100; 300],
                passage_tokens: Vec::new(),
                choice: Choice::Auto,
                deadline_s: None,
            },
            0.0,
        )
        .unwrap();
    let plan = s.next_batch(0.0).unwrap();
    s.cancel(a.id);
    assert_eq!(s.stats(0.0).queued_pairs, 0);
    s.complete(&plan, 0.1, 0.1);
    assert!(
        s.next_batch(0.1).is_none(),
        "nothing of the cancelled request runs"
    );
    assert_eq!(s.stats(0.1).queued_requests, 0);
}

#[test]
fn deadlines_and_bad_requests_are_refused_with_reasons() {
    let mut s = scheduler(1.0);
    assert_eq!(
        s.admit(
            RequestSpec {
                pair_tokens: vec![],
                passage_tokens: Vec::new(),
                choice: Choice::Auto,
                deadline_s: None
            },
            0.0
        )
        .unwrap_err(),
        Rejection::Empty
    );
    assert_eq!(
        s.admit(
            RequestSpec {
                pair_tokens: vec![10],
                passage_tokens: Vec::new(),
                choice: Choice::Pinned("d9".into()),
                deadline_s: None
            },
            0.0
        )
        .unwrap_err(),
        Rejection::UnknownConfig("d9".into())
    );
    // 1000 pairs cannot finish in 10 ms even at the cheapest rung.
    let err = s
        .admit(
            RequestSpec {
                pair_tokens: vec![150; 1000],
                passage_tokens: Vec::new(),
                choice: Choice::Auto,
                deadline_s: Some(0.01),
            },
            0.0,
        )
        .unwrap_err();
    assert!(
        matches!(err, Rejection::DeadlineUnmeetable { deadline_s, .. } if deadline_s == 0.01),
        "{err:?}"
    );
    // A generous deadline is admitted at full.
    let ok = s
        .admit(
            RequestSpec {
                pair_tokens: vec![150; 10],
                passage_tokens: Vec::new(),
                choice: Choice::Auto,
                deadline_s: Some(30.0),
            },
            0.0,
        )
        .unwrap();
    assert_eq!(ok.config, "full");
}

/// A rung that caps passages is costed and batched on the tokens it runs: long
/// passages make the uncapped best rung miss the target while the capped one fits,
/// and its batches pack pairs by their capped length.
#[test]
fn a_capped_rung_is_costed_and_batched_on_its_capped_tokens() {
    let ladder = || {
        let configs = vec![
            ConfigInfo {
                id: "full".into(),
                quality: 0.68,
                latency: LatencyModel::new(PER_BATCH, 250e-6),
                passage_tokens: None,
            },
            ConfigInfo {
                id: "full-p64".into(),
                quality: 0.67,
                latency: LatencyModel::new(PER_BATCH, 250e-6),
                passage_tokens: Some(64),
            },
        ];
        Scheduler::new(
            configs,
            SchedulerConfig {
                slo_target_s: 1.0,
                ..Default::default()
            },
        )
    };
    // 30 pairs of 300 tokens, 290 of them the passage's: about 2.5 s at full and 0.62 s
    // capped (74 tokens a pair), against a target of 1 s with 0.65 headroom.
    let request = |passages: Vec<usize>| RequestSpec {
        pair_tokens: vec![300; 30],
        passage_tokens: passages,
        choice: Choice::Auto,
        deadline_s: None,
    };
    let mut s = ladder();
    let admitted = s.admit(request(vec![290; 30]), 0.0).unwrap();
    assert_eq!(admitted.config, "full-p64");
    assert!(admitted.predicted_s < 0.65, "{}", admitted.predicted_s);
    assert_eq!(s.stats(0.0).queued_tokens, 30 * 74);
    let plan = s.next_batch(0.0).unwrap();
    assert_eq!(plan.config, "full-p64");
    // The default 2,048-token budget holds 27 capped pairs (6 uncapped).
    assert_eq!(plan.items.len(), 2048 / 74);
    assert_eq!(plan.padded_tokens, 27 * 74);
    // Without the passages' lengths the cap cannot be counted on: the request is
    // costed as it would run uncapped (about 2.5 s on either rung; an oversized request
    // gets a stretched deadline).
    let unknown = ladder().admit(request(Vec::new()), 0.0).unwrap();
    assert!(unknown.predicted_s > 2.0, "{unknown:?}");
}

/// The queue bound: a request that fits alone but not behind the queue is refused as
/// overloaded (worth a retry); one larger than the whole queue is refused as too large.
#[test]
fn queue_bound_refuses_a_full_queue_and_an_oversized_request_differently() {
    let mut s = Scheduler::new(
        vec![ConfigInfo {
            id: "full".into(),
            quality: 1.0,
            latency: LatencyModel::new(0.001, 1e-6),
            passage_tokens: None,
        }],
        SchedulerConfig {
            slo_target_s: 100.0,
            max_queued_tokens: 100,
            ..Default::default()
        },
    );
    let spec = |tokens: usize| RequestSpec {
        pair_tokens: vec![tokens],
        passage_tokens: Vec::new(),
        choice: Choice::Auto,
        deadline_s: None,
    };
    s.admit(spec(60), 0.0).unwrap();
    match s.admit(spec(60), 0.0) {
        Err(Rejection::Overloaded { retry_after_s }) => assert!(retry_after_s > 0.0),
        other => panic!("a full queue gave {other:?}"),
    }
    match s.admit(spec(120), 0.0) {
        Err(Rejection::TooLarge {
            tokens: 120,
            max_queued_tokens: 100,
        }) => {}
        other => panic!("an oversized request gave {other:?}"),
    }
    s.admit(spec(40), 0.0).unwrap();
}

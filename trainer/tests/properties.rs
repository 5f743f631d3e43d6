//! Width-merge reference cases and the properties every sub-structure must keep.

mod common;

use candle_core::{Device, Tensor};
use common::{fixture, ints, load, max_abs_diff, rel_err_real, tiny};
use models::{EncodedPair, PaddedBatch, PairEncoder, Span, SubStructure};
use rand::{Rng, SeedableRng};
use trainer::merge::{apply_merge, plan_merge};
use trainer::reranker::Reranker;
use trainer::{forward, load_backbone, MergeMode, ModelInput, Readout, RowLayout};

/// The merge function against the fixture script's reference implementation.
#[test]
fn merge_matches_reference_cases() {
    let cases = load(&fixture("merge_cases.safetensors"));
    let mut count = 0;
    for i in 0.. {
        let key = |k: &str| format!("case{i}.{k}");
        let Some(hidden) = cases.get(&key("hidden")) else {
            break;
        };
        let (b, t, _) = hidden.dims3().unwrap();
        let mask = cases[&key("mask")]
            .to_dtype(candle_core::DType::I64)
            .unwrap()
            .to_vec2::<i64>()
            .unwrap();
        let starts = ints(&cases[&key("passage_start")]);
        let lens = ints(&cases[&key("passage_len")]);
        let ratio = ints(&cases[&key("ratio")])[0];
        let layout = RowLayout {
            seq_len: t,
            query: vec![Span::default(); b],
            lengths: mask
                .iter()
                .map(|r| r.iter().sum::<i64>() as usize)
                .collect(),
            passage: starts
                .iter()
                .zip(&lens)
                .map(|(&start, &len)| Span { start, len })
                .collect(),
            score_pos: vec![0; b],
        };
        let weights: Vec<f32> = cases[&key("weights")]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let plan = plan_merge(&layout, &weights, ratio, MergeMode::Attention);
        let merged = apply_merge(&plan, hidden, &Device::Cpu).unwrap();
        let out_mask = cases[&key("out_mask")]
            .to_dtype(candle_core::DType::I64)
            .unwrap()
            .to_vec2::<i64>()
            .unwrap();
        let out_lengths: Vec<usize> = out_mask
            .iter()
            .map(|r| r.iter().sum::<i64>() as usize)
            .collect();
        assert_eq!(plan.layout.lengths, out_lengths, "case {i}: lengths");
        let out_passage: Vec<usize> = plan.layout.passage.iter().map(|s| s.len).collect();
        assert_eq!(
            out_passage,
            ints(&cases[&key("out_passage_len")]),
            "case {i}: passage lengths"
        );
        let err = rel_err_real(&merged, &cases[&key("out_hidden")], &out_lengths);
        assert!(
            err <= 1e-6,
            "case {i} (ratio {ratio}): merged states differ: {err:e}"
        );
        count += 1;
    }
    assert!(count >= 4, "expected at least 4 merge cases, found {count}");
}

fn random_layout(rng: &mut rand::rngs::StdRng) -> (RowLayout, Tensor, Vec<f32>) {
    let b = 3;
    let lengths: Vec<usize> = (0..b).map(|_| rng.random_range(12..=24)).collect();
    let t = *lengths.iter().max().unwrap();
    let passage: Vec<Span> = lengths
        .iter()
        .map(|&len| {
            let start = rng.random_range(2..5);
            Span {
                start,
                len: len - start - rng.random_range(1..4),
            }
        })
        .collect();
    let hidden = Tensor::randn(0f32, 1.0, (b, t, 8), &Device::Cpu).unwrap();
    let weights: Vec<f32> = (0..b * t).map(|_| rng.random_range(0.01..1.0)).collect();
    let score_pos = lengths.iter().map(|&l| l - 1).collect();
    (
        RowLayout {
            seq_len: t,
            lengths,
            query: vec![Span { start: 1, len: 1 }; b],
            passage,
            score_pos,
        },
        hidden,
        weights,
    )
}

#[test]
fn ratio_one_equals_no_merging() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let (layout, hidden, weights) = random_layout(&mut rng);
    let plan = plan_merge(&layout, &weights, 1, MergeMode::Attention);
    let merged = apply_merge(&plan, &hidden, &Device::Cpu).unwrap();
    assert_eq!(plan.layout, layout);
    assert_eq!(rel_err_real(&merged, &hidden, &layout.lengths), 0.0);
}

#[test]
fn a_group_of_identical_tokens_is_unchanged_by_merging() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    for ratio in [2, 4, 8] {
        let (layout, hidden, weights) = random_layout(&mut rng);
        // Make every passage group hold copies of its first token.
        let mut data: Vec<Vec<Vec<f32>>> = hidden.to_vec3().unwrap();
        for (b, span) in layout.passage.iter().enumerate() {
            for start in (span.start..span.end()).step_by(ratio) {
                for i in start..(start + ratio).min(span.end()) {
                    data[b][i] = data[b][start].clone();
                }
            }
        }
        let hidden = Tensor::new(data.clone(), &Device::Cpu).unwrap();
        let plan = plan_merge(&layout, &weights, ratio, MergeMode::Attention);
        let merged: Vec<Vec<Vec<f32>>> = apply_merge(&plan, &hidden, &Device::Cpu)
            .unwrap()
            .to_vec3()
            .unwrap();
        for (b, span) in layout.passage.iter().enumerate() {
            for (g, start) in (span.start..span.end()).step_by(ratio).enumerate() {
                for (x, y) in merged[b][span.start + g].iter().zip(&data[b][start]) {
                    assert!(
                        (x - y).abs() <= 1e-6 * y.abs().max(1.0),
                        "ratio {ratio} row {b} group {g}"
                    );
                }
            }
        }
    }
}

#[test]
fn query_and_prompt_tokens_are_never_merged() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for ratio in [2, 4, 8] {
        let (layout, hidden, weights) = random_layout(&mut rng);
        let plan = plan_merge(&layout, &weights, ratio, MergeMode::Attention);
        let merged: Vec<Vec<Vec<f32>>> = apply_merge(&plan, &hidden, &Device::Cpu)
            .unwrap()
            .to_vec3()
            .unwrap();
        let original: Vec<Vec<Vec<f32>>> = hidden.to_vec3().unwrap();
        for (b, span) in layout.passage.iter().enumerate() {
            for i in 0..span.start {
                assert_eq!(merged[b][i], original[b][i], "prefix token {i} of row {b}");
            }
            let removed = span.len - plan.layout.passage[b].len;
            for i in span.end()..layout.lengths[b] {
                assert_eq!(
                    merged[b][i - removed],
                    original[b][i],
                    "suffix token {i} of row {b}"
                );
            }
            assert_eq!(plan.layout.score_pos[b], layout.score_pos[b] - removed);
        }
    }
}

/// One row scores the same alone as padded inside a batch (≤ 1e-5), for every family,
/// at full width and with merging.
#[test]
fn a_row_scores_the_same_alone_and_padded_in_a_batch() {
    for name in [
        "tiny-bert",
        "tiny-llama",
        "tiny-mistral",
        "tiny-qwen2",
        "tiny-gemma2",
    ] {
        let f = tiny(name);
        let layers = f.checkpoint.config.dimensions().num_layers;
        let backbone = load_backbone(&f.checkpoint, &Device::Cpu).unwrap();
        let subs = [
            SubStructure::full(layers),
            SubStructure {
                depth: layers,
                ratio: 2,
                compress_layers: vec![1],
            },
            SubStructure {
                depth: layers,
                ratio: 4,
                compress_layers: vec![1],
            },
        ];
        for sub in &subs {
            let batch = forward(
                backbone.as_ref(),
                &f.heads,
                &f.input,
                sub,
                MergeMode::Attention,
                false,
            )
            .unwrap();
            let layout = &f.input.layout;
            for row in 0..layout.lengths.len() {
                let len = layout.lengths[row];
                let single = ModelInput {
                    input_ids: f
                        .input
                        .input_ids
                        .get(row)
                        .unwrap()
                        .narrow(0, 0, len)
                        .unwrap()
                        .unsqueeze(0)
                        .unwrap(),
                    token_type_ids: f
                        .input
                        .token_type_ids
                        .get(row)
                        .unwrap()
                        .narrow(0, 0, len)
                        .unwrap()
                        .unsqueeze(0)
                        .unwrap(),
                    layout: RowLayout {
                        seq_len: len,
                        lengths: vec![len],
                        query: vec![layout.query[row]],
                        passage: vec![layout.passage[row]],
                        score_pos: vec![layout.score_pos[row]],
                    },
                };
                let alone = forward(
                    backbone.as_ref(),
                    &f.heads,
                    &single,
                    sub,
                    MergeMode::Attention,
                    false,
                )
                .unwrap();
                for (depth, scores) in &batch.scores {
                    let a: f32 = alone.scores[depth].get(0).unwrap().to_scalar().unwrap();
                    let b: f32 = scores.get(row).unwrap().to_scalar().unwrap();
                    assert!(
                        (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                        "{name} {sub} depth {depth} row {row}: {a} alone vs {b} in batch"
                    );
                }
            }
        }
    }
}

/// Segment isolation: a passage's hidden states do not depend on the query (changing a
/// query token leaves them bit-for-bit comparable), while joint attention mixes them;
/// uniform merging keeps the property; families without isolation refuse it.
#[test]
fn isolated_segments_encode_the_passage_independently_of_the_query() {
    let f = tiny("tiny-bert");
    let layers = f.checkpoint.config.dimensions().num_layers;
    let (b, t) = f.input.input_ids.dims2().unwrap();
    let mut ids: Vec<u32> = f.input.input_ids.flatten_all().unwrap().to_vec1().unwrap();
    for row in 0..b {
        // Position 1 is a query token in every row (after [CLS], before the passage).
        assert!(f.input.layout.passage[row].start > 2);
        ids[row * t + 1] = (ids[row * t + 1] + 7) % 50;
    }
    let changed = ModelInput {
        input_ids: Tensor::from_vec(ids, (b, t), &Device::Cpu).unwrap(),
        token_type_ids: f.input.token_type_ids.clone(),
        layout: f.input.layout.clone(),
    };
    let passage_gap = |isolated: bool, sub: &SubStructure| -> f32 {
        let mut backbone = load_backbone(&f.checkpoint, &Device::Cpu).unwrap();
        backbone.isolate_segments(isolated).unwrap();
        let run = |input: &ModelInput| {
            forward(
                backbone.as_ref(),
                &f.heads,
                input,
                sub,
                MergeMode::Uniform,
                true,
            )
            .unwrap()
        };
        let (a, c) = (run(&f.input), run(&changed));
        let (last_a, last_c) = (a.hidden.last().unwrap(), c.hidden.last().unwrap());
        let layout = a.layouts.last().unwrap();
        let mut gap = 0f32;
        for row in 0..b {
            let span = layout.passage[row];
            let rows = |h: &Tensor| h.get(row).unwrap().narrow(0, span.start, span.len).unwrap();
            gap = gap.max(max_abs_diff(&rows(last_a), &rows(last_c)));
        }
        gap
    };
    let merged = SubStructure {
        depth: layers,
        ratio: 2,
        compress_layers: vec![1],
    };
    for sub in [SubStructure::full(layers), merged] {
        assert!(
            passage_gap(true, &sub) < 1e-6,
            "{sub}: isolated passage saw the query"
        );
        assert!(
            passage_gap(false, &sub) > 1e-4,
            "{sub}: joint attention should mix"
        );
    }
    let llama = tiny("tiny-llama");
    let mut decoder = load_backbone(&llama.checkpoint, &Device::Cpu).unwrap();
    let err = decoder.isolate_segments(true).unwrap_err().to_string();
    assert!(err.contains("bert only"), "{err}");
    let encoder = PairEncoder::new(&llama.checkpoint, 64).unwrap();
    assert!(encoder.with_isolated_segments(true).is_err());
}

/// Under isolation each segment of `[CLS] q [SEP] [CLS] p [SEP]` gets exactly the hidden
/// states the base gives the lone text `[CLS] q [SEP]` or `[CLS] p [SEP]`: what the base
/// computed as a bi-encoder, so training starts from its similarity.
#[test]
fn isolated_segments_equal_the_lone_texts() {
    let f = tiny("tiny-bert");
    let layers = f.checkpoint.config.dimensions().num_layers;
    let encoder = PairEncoder::new(&f.checkpoint, 64)
        .unwrap()
        .with_isolated_segments(true)
        .unwrap();
    let pairs = [
        ("how long do fleas live", "a flea can live up to a year"),
        (
            "cost",
            "the price of a ticket depends on the season and the route",
        ),
    ];
    let encoded: Vec<EncodedPair> = pairs
        .iter()
        .map(|(q, p)| encoder.encode(q, p, None).unwrap())
        .collect();
    let lone = |ids: &[u32]| EncodedPair {
        input_ids: ids.to_vec(),
        token_type_ids: vec![0; ids.len()],
        query: Span {
            start: 1,
            len: ids.len() - 2,
        },
        passage: Span {
            start: ids.len(),
            len: 0,
        },
        prompt: None,
        score_pos: 0,
        truncated: false,
        keeps_end: false,
    };
    let last_hidden = |rows: &[EncodedPair], isolated: bool| -> Tensor {
        let mut backbone = load_backbone(&f.checkpoint, &Device::Cpu).unwrap();
        backbone.isolate_segments(isolated).unwrap();
        let batch = PaddedBatch::new(rows, encoder.pad_id);
        let input = ModelInput::new(&batch, &Device::Cpu).unwrap();
        let out = forward(
            backbone.as_ref(),
            &f.heads,
            &input,
            &SubStructure::full(layers),
            MergeMode::Uniform,
            true,
        )
        .unwrap();
        out.hidden.last().unwrap().clone()
    };
    let joint = last_hidden(&encoded, true);
    for (row, pair) in encoded.iter().enumerate() {
        let segment = pair.passage.start - 1;
        assert_eq!(pair.input_ids[segment], pair.input_ids[0], "passage [CLS]");
        let (q, p) = pair.input_ids.split_at(segment);
        for (ids, start) in [(q, 0), (p, segment)] {
            let alone = last_hidden(&[lone(ids)], false);
            let want = alone.get(0).unwrap().narrow(0, 0, ids.len()).unwrap();
            let got = joint.get(row).unwrap().narrow(0, start, ids.len()).unwrap();
            let gap = max_abs_diff(&got, &want);
            assert!(gap < 1e-5, "row {row} segment at {start}: {gap}");
        }
    }
}

/// The max-sim teacher (the base's own late interaction, each text encoded alone) is the
/// untrained max-sim readout at full depth on isolated segments, so distilling from it
/// pulls the sub-structures towards where the full model starts.
#[test]
fn the_max_sim_teacher_is_the_untrained_max_sim_readout() {
    let dir = fixture("tiny-bert");
    let mut reranker = Reranker::load(&dir, None, 64, &Device::Cpu).unwrap();
    reranker.backbone.isolate_segments(true).unwrap();
    reranker.encoder.set_isolated_segments(true).unwrap();
    reranker.adapters.heads.readout = Readout::MaxSim;
    let query = "how long do fleas live";
    let passages = [
        "a flea can live up to a year",
        "the price of a ticket depends on the season and the route",
        "fleas",
    ];
    let full = SubStructure::full(reranker.num_layers());
    let readout = reranker.score(query, &passages, &full, 4096).unwrap();
    let teacher = trainer::biencoder::max_sim_scores(
        reranker.backbone.as_ref(),
        &reranker.encoder,
        query,
        &passages,
        64,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(readout.len(), passages.len());
    // Unit heads (head scale 1) score the mean best cosine itself.
    for (row, (r, t)) in readout.iter().zip(&teacher).enumerate() {
        assert!(
            (r - t).abs() < 1e-5,
            "passage {row}: readout {r}, teacher {t}"
        );
        assert!(t.abs() <= 1.0 + 1e-6, "a mean of cosines: {t}");
    }
    // The passages are not scored alike (the comparison above is not vacuous).
    assert!((teacher[0] - teacher[1]).abs() > 1e-4, "{teacher:?}");
    // Both teachers encode each text as the base does, whether or not the backbone
    // isolates segments (training isolates it before computing the teacher).
    let plain = Reranker::load(&dir, None, 64, &Device::Cpu).unwrap();
    for teacher in [
        trainer::biencoder::cosine_scores,
        trainer::biencoder::max_sim_scores,
    ] {
        let score = |r: &Reranker| {
            teacher(
                r.backbone.as_ref(),
                &r.encoder,
                query,
                &passages,
                64,
                &Device::Cpu,
            )
            .unwrap()
        };
        let (isolated, base) = (score(&reranker), score(&plain));
        for (a, b) in isolated.iter().zip(&base) {
            assert!(
                (a - b).abs() < 1e-5,
                "isolated {isolated:?}, plain {base:?}"
            );
        }
    }
}

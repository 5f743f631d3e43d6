//! Parity with Hugging Face `transformers` (fixtures from `fixtures/make_fixtures.py`):
//! every layer's hidden state and every depth's score, at full width and with width
//! merging (whose reference is the fixture script's own few-line implementation run on
//! the transformers layer modules). Tolerance: norm-relative error ≤ 1e-4 in f32 over
//! real positions, per layer.

mod common;

use common::{ints, rel_err, rel_err_real, tiny, Fixture};
use models::SubStructure;
use trainer::{forward, load_backbone, MergeMode, Readout};

const TOLERANCE: f32 = 1e-4;

fn check_scenario(
    name: &str,
    f: &Fixture,
    prefix: &str,
    sub: &SubStructure,
    mode: MergeMode,
    readout: Readout,
) {
    let backbone = load_backbone(&f.checkpoint, &candle_core::Device::Cpu).unwrap();
    let mut heads = f.heads.clone();
    heads.readout = readout;
    let out = forward(backbone.as_ref(), &heads, &f.input, sub, mode, true).unwrap();
    let score_key = if readout == Readout::Mean {
        "score_mean"
    } else {
        "score"
    };
    for k in 0..=sub.depth {
        // The input of layer 0 is the same in every scenario; only `full` stores it.
        let key = if k == 0 {
            "full.hidden.0".to_string()
        } else {
            format!("{prefix}.hidden.{k}")
        };
        let layout = &out.layouts[k];
        let err = rel_err_real(&out.hidden[k], &f.reference[&key], &layout.lengths);
        assert!(
            err <= TOLERANCE,
            "{name} {prefix}: hidden state after {k} layers differs: {err:e}"
        );
        if let Some(mask) = f.reference.get(&format!("{prefix}.mask.{k}")) {
            let lengths: Vec<usize> = mask
                .to_vec2::<i64>()
                .unwrap()
                .iter()
                .map(|r| r.iter().sum::<i64>() as usize)
                .collect();
            assert_eq!(
                &lengths, &layout.lengths,
                "{name} {prefix}: row lengths after {k} layers"
            );
        }
    }
    for (depth, score) in &out.scores {
        let reference = &f.reference[&format!("{prefix}.{score_key}.{depth}")];
        let err = rel_err(score, reference);
        assert!(
            err <= TOLERANCE,
            "{name} {prefix}: depth-{depth} {score_key} differs: {err:e}"
        );
    }
    assert_eq!(
        out.scores.len(),
        f.heads.by_depth.range(..=sub.depth).count()
    );
}

/// Full width, then every merge scenario the fixture defines (`S.ratio`,
/// `S.compress_layers`, `S.uniform`): ratios 2 and 4, compounding, uniform weights, and
/// for gemma2 a merge right before a sliding-window layer.
fn parity(name: &str) {
    let f = tiny(name);
    let layers = f.checkpoint.config.dimensions().num_layers;
    let bert = name == "tiny-bert";
    let readouts: &[Readout] = if bert {
        &[Readout::ScoringPosition, Readout::Mean]
    } else {
        &[Readout::ScoringPosition]
    };
    for &readout in readouts {
        check_scenario(
            name,
            &f,
            "full",
            &SubStructure::full(layers),
            MergeMode::Attention,
            readout,
        );
    }
    let mut scenarios: Vec<&str> = f
        .reference
        .keys()
        .filter_map(|k| k.strip_suffix(".ratio"))
        .collect();
    scenarios.sort();
    assert!(
        scenarios.len() >= 3,
        "{name}: expected merge scenarios m2, m4, u2; found {scenarios:?}"
    );
    for scenario in scenarios {
        let ratio = ints(&f.reference[&format!("{scenario}.ratio")])[0];
        let compress_layers = ints(&f.reference[&format!("{scenario}.compress_layers")]);
        let uniform = ints(&f.reference[&format!("{scenario}.uniform")])[0] == 1;
        let sub = SubStructure {
            depth: layers,
            ratio,
            compress_layers,
        };
        sub.validate(layers, 1).unwrap();
        let mode = if uniform {
            MergeMode::Uniform
        } else {
            MergeMode::Attention
        };
        for &readout in readouts {
            check_scenario(name, &f, scenario, &sub, mode, readout);
        }
    }
}

#[test]
fn parity_bert() {
    parity("tiny-bert");
}

#[test]
fn parity_llama() {
    parity("tiny-llama");
}

#[test]
fn parity_mistral() {
    parity("tiny-mistral");
}

#[test]
fn parity_qwen2() {
    parity("tiny-qwen2");
}

#[test]
fn parity_gemma2() {
    parity("tiny-gemma2");
}

/// Attention rows (the merge weights) match transformers' `output_attentions`.
#[test]
fn parity_scoring_attention_all_families() {
    for name in [
        "tiny-bert",
        "tiny-llama",
        "tiny-mistral",
        "tiny-qwen2",
        "tiny-gemma2",
    ] {
        let f = tiny(name);
        let backbone = load_backbone(&f.checkpoint, &candle_core::Device::Cpu).unwrap();
        let mut hidden = backbone.embed(&f.input).unwrap();
        for layer in 0..backbone.num_layers() {
            let (next, attn) = backbone
                .layer(layer, &hidden, &f.input.layout, true)
                .unwrap();
            let reference = &f.reference[&format!("full.attn.{}", layer + 1)];
            let err = rel_err_real(
                &attn.unwrap().unsqueeze(2).unwrap(),
                &reference.unsqueeze(2).unwrap(),
                &f.input.layout.lengths,
            );
            assert!(
                err <= TOLERANCE,
                "{name}: attention of layer {} differs: {err:e}",
                layer + 1
            );
            hidden = next;
        }
    }
}

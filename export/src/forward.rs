//! Builds the graph of one configuration, driving a family like the trainer's
//! `forward()` drives a `Backbone`: layers up to the depth, merges before compress
//! layers, the depth's head on the readout.

use models::SubStructure;
use trainer::MergeMode;

use crate::blocks::{layout_from_inputs, merge, readout};
use crate::error::Result;
use crate::families::{GraphFamily, Inputs};
use crate::graph::GraphBuilder;
use crate::onnx::{data_type, DimSpec};
use crate::weights::ModelWeights;

/// Names of the graph inputs, in order. `query_span` only exists for the span-product
/// readout, `token_type_ids` only for BERT.
pub fn input_names(family: &dyn GraphFamily, readout_kind: &str) -> Vec<String> {
    let mut names = vec!["input_ids".to_string(), "attention_mask".to_string()];
    if family.has_token_types() {
        names.push("token_type_ids".into());
    }
    names.push("passage_span".into());
    if readout_kind == "span-product" {
        names.push("query_span".into());
    }
    names
}

pub fn build(
    g: &mut GraphBuilder,
    family: &dyn GraphFamily,
    w: &ModelWeights,
    sub: &SubStructure,
    readout_kind: &str,
    mode: MergeMode,
) -> Result<()> {
    use DimSpec::{Fixed, Named};
    let ids = g.input(
        "input_ids",
        data_type::INT64,
        &[Named("batch"), Named("sequence")],
    );
    let mask = g.input(
        "attention_mask",
        data_type::INT64,
        &[Named("batch"), Named("sequence")],
    );
    let types = family.has_token_types().then(|| {
        g.input(
            "token_type_ids",
            data_type::INT64,
            &[Named("batch"), Named("sequence")],
        )
    });
    let passage = g.input(
        "passage_span",
        data_type::INT64,
        &[Named("batch"), Fixed(2)],
    );
    let query = (readout_kind == "span-product")
        .then(|| g.input("query_span", data_type::INT64, &[Named("batch"), Fixed(2)]));
    let mut layout =
        layout_from_inputs(g, &ids, &mask, &passage, query.as_deref(), family.scoring());
    let inputs = Inputs {
        input_ids: ids,
        token_type_ids: types,
        layout: layout.clone(),
    };
    let mut hidden = family.embed(g, w, &inputs)?;
    let mut prepared = family.prepare(g, &layout)?;
    let compress = |layer: usize| sub.ratio > 1 && sub.compress_layers.contains(&layer);
    let mut attention: Option<String> = None;
    for layer in 0..sub.depth {
        if compress(layer) {
            let weights = match mode {
                MergeMode::Attention => attention.as_deref(),
                MergeMode::Uniform => None,
            };
            let (merged, next) = merge(g, &hidden, &layout, weights, sub.ratio);
            hidden = merged;
            layout = next;
            prepared = family.prepare(g, &layout)?;
        }
        let want = mode == MergeMode::Attention && compress(layer + 1);
        let (next, attn) = family.layer(g, w, layer, &hidden, &layout, &prepared, want)?;
        hidden = next;
        attention = attn;
    }
    let normed = family.pre_readout(g, w, &hidden)?;
    let features = readout(g, &normed, &layout, readout_kind);
    let (head_w, head_b) = w.head(g, sub.depth)?;
    let mut score = g.matmul(&features, &head_w);
    if let Some(b) = head_b {
        score = g.add(&score, &b);
    }
    let score = g.squeeze(&score, &[1]);
    let score = family.transform_score(g, &score);
    g.output(&score, "scores", data_type::FLOAT, &[Named("batch")]);
    Ok(())
}

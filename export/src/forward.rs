//! Builds the graph of one configuration, driving a family like the trainer's
//! `forward()` drives a `Backbone`: layers up to the depth, merges before compress
//! layers, the depth's head on the readout.

use models::SubStructure;
use trainer::{MergeMode, Readout};

use crate::blocks::{
    idf_span_weights, idf_token_weights, layout_from_inputs, max_sim, merge, read_features,
    span_vector, span_weights, Layout, ScoringPosition,
};
use crate::error::{ExportError, Result};
use crate::families::{GraphFamily, Inputs};
use crate::graph::GraphBuilder;
use crate::onnx::{data_type, DimSpec};
use crate::weights::ModelWeights;

/// Names of the graph inputs, in order. `query_span` only exists for the span readouts
/// (span-product, max-sim), `token_type_ids` only for BERT.
pub fn input_names(family: &dyn GraphFamily, readout: Readout) -> Vec<String> {
    let mut names = vec!["input_ids".to_string(), "attention_mask".to_string()];
    if family.has_token_types() {
        names.push("token_type_ids".into());
    }
    names.push("passage_span".into());
    if readout.reads_spans() {
        names.push("query_span".into());
    }
    names
}

pub fn build(
    g: &mut GraphBuilder,
    family: &dyn GraphFamily,
    w: &ModelWeights,
    sub: &SubStructure,
    readout: Readout,
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
    let query = readout
        .reads_spans()
        .then(|| g.input("query_span", data_type::INT64, &[Named("batch"), Fixed(2)]));
    let mut layout =
        layout_from_inputs(g, &ids, &mask, &passage, query.as_deref(), family.scoring());
    let inputs = Inputs {
        input_ids: ids,
        token_type_ids: types,
    };
    let mut hidden = family.embed(g, w, &inputs)?;
    let mut prepared = family.prepare(g, &layout)?;
    let compress = |layer: usize| sub.ratio > 1 && sub.compress_layers.contains(&layer);
    let mut idf_weights = match mode {
        MergeMode::Idf if sub.ratio > 1 => {
            let (log_idf, beta) = w.merge_idf(g)?;
            Some(idf_token_weights(g, &inputs.input_ids, &log_idf, &beta))
        }
        _ => None,
    };
    let mut attention: Option<String> = None;
    for layer in 0..sub.depth {
        if compress(layer) {
            let weights = match mode {
                MergeMode::Attention => attention.as_deref(),
                MergeMode::Uniform => None,
                MergeMode::Idf => idf_weights.as_deref(),
            };
            let merged = merge(g, &hidden, &layout, weights, sub.ratio);
            if let Some(weights) = &idf_weights {
                idf_weights = Some(merged.carry(g, weights));
            }
            hidden = merged.hidden;
            layout = merged.layout;
            prepared = family.prepare(g, &layout)?;
        }
        let want = mode == MergeMode::Attention && compress(layer + 1);
        let (next, attn) = family.layer(g, w, layer, &hidden, &layout, &prepared, want)?;
        hidden = next;
        attention = attn;
    }
    let normed = family.pre_readout(g, w, &hidden)?;
    let query_idf = w.query_idf(g, sub.depth)?;
    let features = read_features(
        g,
        &normed,
        &layout,
        readout,
        query_idf
            .as_ref()
            .map(|idf| (idf, inputs.input_ids.as_str())),
    );
    score_output(g, family, w, sub.depth, &features)
}

/// Inputs of a graph with isolated segments (`build_split`), in order.
pub const SPLIT_INPUTS: [&str; 5] = [
    "query_ids",
    "query_mask",
    "passage_ids",
    "passage_mask",
    "query_index",
];

/// The graph of adapters trained with isolated segments (bert, span-product or max-sim
/// readout).
/// Query and passage never attend to each other, so they are encoded as separate
/// sequences: `query_ids` `[Q, Tq]` holds each distinct `[CLS] query [SEP]` of the
/// batch once, `passage_ids` `[B, Tp]` each row's `passage [SEP]`, and `query_index`
/// `[B]` the query row of each passage row. A request's candidates share one query
/// encoding. Scores equal the trainer's joint sequence under `segment_mask` and
/// `segment_positions`: passage positions start at 1, token type 0 throughout, and
/// widths merge only passage tokens.
pub fn build_split(
    g: &mut GraphBuilder,
    family: &dyn GraphFamily,
    w: &ModelWeights,
    sub: &SubStructure,
    readout: Readout,
    mode: MergeMode,
) -> Result<()> {
    use DimSpec::Named;
    if mode == MergeMode::Attention && sub.ratio > 1 {
        return Err(ExportError::Input(
            "adapters trained with isolated segments cannot merge by attention (no scoring \
             position attends to the passage); they merge uniformly or by idf"
                .into(),
        ));
    }
    let matrix = |g: &mut GraphBuilder, name: &str, rows: &'static str, cols: &'static str| {
        g.input(name, data_type::INT64, &[Named(rows), Named(cols)])
    };
    let query_ids = matrix(g, SPLIT_INPUTS[0], "queries", "query_sequence");
    let query_mask = matrix(g, SPLIT_INPUTS[1], "queries", "query_sequence");
    let passage_ids = matrix(g, SPLIT_INPUTS[2], "batch", "passage_sequence");
    let passage_mask = matrix(g, SPLIT_INPUTS[3], "batch", "passage_sequence");
    let query_index = g.input(SPLIT_INPUTS[4], data_type::INT64, &[Named("batch")]);
    let one = g.scalar_i64(1);

    // Query: `[CLS] q [SEP]`, positions 0.., read over the query tokens `1..len-1`.
    let q_len = g.reduce_sum(&query_mask, &[1], false);
    let q_end = g.sub(&q_len, &one);
    let q_zeros = zeros_like(g, &q_len);
    let q_start = g.add(&q_zeros, &one);
    let q_layout = Layout {
        lengths: q_len.clone(),
        passage_start: q_len.clone(),
        passage_end: q_len.clone(),
        query_start: q_start,
        query_end: q_end,
        seq_len: g.dim(&query_ids, 1),
        scoring: ScoringPosition::First,
    };
    // Passage: `[CLS] p [SEP]`, positions 0.., read (and merged) over `1..len-1`.
    let p_len = g.reduce_sum(&passage_mask, &[1], false);
    let p_end = g.sub(&p_len, &one);
    let p_zeros = zeros_like(g, &p_len);
    let p_start = g.add(&p_zeros, &one);
    let mut p_layout = Layout {
        lengths: p_len,
        passage_start: p_start.clone(),
        passage_end: p_end,
        query_start: p_start.clone(),
        query_end: p_start,
        seq_len: g.dim(&passage_ids, 1),
        scoring: ScoringPosition::First,
    };
    let mut q_hidden = family.embed(
        g,
        w,
        &Inputs {
            input_ids: query_ids.clone(),
            token_type_ids: None,
        },
    )?;
    let mut p_hidden = family.embed(
        g,
        w,
        &Inputs {
            input_ids: passage_ids.clone(),
            token_type_ids: None,
        },
    )?;
    let q_prepared = family.prepare(g, &q_layout)?;
    let mut p_prepared = family.prepare(g, &p_layout)?;
    let mut p_idf_weights = match mode {
        MergeMode::Idf if sub.ratio > 1 => {
            let (log_idf, beta) = w.merge_idf(g)?;
            Some(idf_token_weights(g, &passage_ids, &log_idf, &beta))
        }
        _ => None,
    };
    for layer in 0..sub.depth {
        if sub.ratio > 1 && sub.compress_layers.contains(&layer) {
            let merged = merge(g, &p_hidden, &p_layout, p_idf_weights.as_deref(), sub.ratio);
            if let Some(weights) = &p_idf_weights {
                p_idf_weights = Some(merged.carry(g, weights));
            }
            p_hidden = merged.hidden;
            p_layout = merged.layout;
            p_prepared = family.prepare(g, &p_layout)?;
        }
        q_hidden = family
            .layer(g, w, layer, &q_hidden, &q_layout, &q_prepared, false)?
            .0;
        p_hidden = family
            .layer(g, w, layer, &p_hidden, &p_layout, &p_prepared, false)?
            .0;
    }
    let features = match readout {
        Readout::MaxSim => {
            // Each passage row meets its query's token states (gathered, `[B, Tq, H]`).
            let mut q_weights =
                span_weights(g, &q_layout.query_start, &q_layout.query_end, &q_layout);
            if let Some(idf) = w.query_idf(g, sub.depth)? {
                q_weights = idf_span_weights(g, &q_weights, &query_ids, &q_layout, &idf);
            }
            let q_rows = g.gather(&q_hidden, &query_index, 0);
            let q_weights = g.gather(&q_weights, &query_index, 0);
            max_sim(
                g,
                &q_rows,
                &q_weights,
                &p_hidden,
                &p_layout.passage_start,
                &p_layout.passage_end,
                &p_layout,
            )
        }
        Readout::SpanProduct => {
            let q_vec = span_vector(
                g,
                &q_hidden,
                &q_layout.query_start,
                &q_layout.query_end,
                &q_layout,
            );
            let p_vec = span_vector(
                g,
                &p_hidden,
                &p_layout.passage_start,
                &p_layout.passage_end,
                &p_layout,
            );
            let q_rows = g.gather(&q_vec, &query_index, 0);
            g.mul(&q_rows, &p_vec)
        }
        other => {
            return Err(ExportError::Input(format!(
                "split graphs (isolated segments) need a span readout, span-product or \
                 max-sim; the adapters use {}",
                other.name()
            )))
        }
    };
    score_output(g, family, w, sub.depth, &features)
}

/// `[B]` int64 zeros shaped like `lengths`.
fn zeros_like(g: &mut GraphBuilder, lengths: &str) -> String {
    let zero = g.scalar_i64(0);
    g.mul(lengths, &zero)
}

/// The depth's head on the `[B, H]` features, the family's score transform, and the
/// `scores` output `[B]`.
fn score_output(
    g: &mut GraphBuilder,
    family: &dyn GraphFamily,
    w: &ModelWeights,
    depth: usize,
    features: &str,
) -> Result<()> {
    let (head_w, head_b) = w.head(g, depth)?;
    let mut score = g.matmul(features, &head_w);
    if let Some(b) = head_b {
        score = g.add(&score, &b);
    }
    let score = g.squeeze(&score, &[1]);
    let score = family.transform_score(g, &score);
    g.output(
        &score,
        "scores",
        data_type::FLOAT,
        &[DimSpec::Named("batch")],
    );
    Ok(())
}

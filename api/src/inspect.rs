//! `mrank inspect`: what a checkpoint is and what its sub-structures cost.

use std::path::PathBuf;

use anyhow::{Context, Result};
use models::{pair_flops, Checkpoint, PairEncoder, SubStructureSpace};

#[derive(clap::Args)]
pub struct InspectArgs {
    /// Checkpoint directory (config.json, *.safetensors, tokenizer.json); the embedded
    /// default base model when omitted.
    pub dir: Option<PathBuf>,
    /// Maximum tokens per pair used to build the encoder.
    #[arg(long, default_value_t = 512)]
    pub max_length: usize,
}

pub fn run(args: InspectArgs) -> Result<()> {
    let dir = args.dir.unwrap_or_else(crate::default_model_dir);
    let checkpoint = Checkpoint::open(&dir)
        .with_context(|| format!("cannot open checkpoint {}", dir.display()))?;
    let dims = checkpoint.config.dimensions();
    let params: usize = checkpoint
        .stored_tensors()
        .values()
        .map(|s| s.iter().product::<usize>())
        .sum();
    println!("checkpoint     {}", dir.display());
    println!(
        "family         {} ({})",
        checkpoint.family().name(),
        checkpoint.config.variant_name()
    );
    println!("layers         {}", dims.num_layers);
    println!("hidden size    {}", dims.hidden_size);
    println!(
        "heads          {} (key/value heads {}, head dim {})",
        dims.num_heads, dims.num_kv_heads, dims.head_dim
    );
    println!(
        "intermediate   {}{}",
        dims.intermediate_size,
        if dims.gated_mlp { " (gated)" } else { "" }
    );
    println!(
        "vocabulary     {} (tokenizer {})",
        dims.vocab_size,
        checkpoint.tokenizer.get_vocab_size(true)
    );
    println!("parameters     {:.2}M stored", params as f64 / 1e6);

    let encoder = PairEncoder::new(&checkpoint, args.max_length.max(8))?;
    let lengths = encoder.reference_lengths();
    let space = SubStructureSpace::default_for(dims.num_layers);
    let configs = space.enumerate();
    println!(
        "sub-structures {} (depths {}..={}, ratios 1/{}, compress layers {:?})",
        configs.len(),
        space.min_depth,
        space.num_layers,
        space
            .ratios
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("/"),
        space.compress_layers
    );
    // A bare checkpoint is priced as a cross-encoder would run it (one joint sequence
    // per pair); exports of isolated-segment adapters price widths and caps lower.
    let segments = models::Segments::Joint;
    let full = pair_flops(
        &dims,
        lengths,
        segments,
        &models::SubStructure::full(dims.num_layers),
    );
    println!(
        "FLOPs per pair at query {} + passage {} tokens ({} tokens with the template): full = {:.3} GFLOP",
        models::flops::REFERENCE_QUERY_TOKENS,
        models::flops::REFERENCE_PASSAGE_TOKENS,
        lengths.prefix + lengths.passage + lengths.suffix,
        full / 1e9
    );
    println!("{:<16} {:>10} {:>10}", "config", "GFLOP", "vs full");
    for s in &configs {
        let f = pair_flops(&dims, lengths, segments, s);
        println!(
            "{:<16} {:>10.4} {:>9.1}%",
            s.id(dims.num_layers),
            f / 1e9,
            100.0 * f / full
        );
    }
    Ok(())
}

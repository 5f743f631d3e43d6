//! `mrank train`: both Matryoshka training stages from one TOML config.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use trainer::adapters::Adapters;
use trainer::config::TrainConfig;
use trainer::data::{read_candidates, Qrels};
use trainer::eval::evaluate;
use trainer::reranker::Reranker;
use trainer::train::{load_data, phases, Trainer};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Training config (TOML); every field has a default.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a config value, e.g. `--set stage1.steps=50` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Output directory: adapters.safetensors, train.toml, log.jsonl, checkpoints, eval.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run in `--out` from its last checkpoint, with its saved config.
    #[arg(long)]
    pub resume: bool,
    /// Replace an existing run in `--out`.
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// CPU threads (default: the config's run.threads, 0 = all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(args: TrainArgs) -> Result<()> {
    let saved = args.out.join("train.toml");
    let cfg = if args.resume {
        if args.config.is_some() {
            bail!("--resume continues with {}; drop --config", saved.display());
        }
        // What the checkpoint was trained as ([model], [data], [lora], [space]) cannot
        // change under it; the stages' schedules can, for phases not yet started
        // (checked against the checkpoint below).
        if let Some(o) = args.overrides.iter().find(|o| {
            let key = o.split_once('=').map_or(o.as_str(), |(k, _)| k).trim();
            // The dev data only feeds the evaluation at the end.
            let later = ["stage1.", "stage2.", "run.", "data.dev"];
            !later.iter().any(|prefix| key.starts_with(prefix))
        }) {
            bail!(
                "--resume continues the run saved in {}; `--set {o}` would change what its checkpoint \
                 was trained as. Start a new run (another --out, or --force) to change it",
                saved.display()
            );
        }
        let text = std::fs::read_to_string(&saved)
            .with_context(|| format!("{}: nothing to resume", saved.display()))?;
        TrainConfig::from_toml(&text, &args.overrides, &saved.display().to_string())?
    } else {
        if saved.exists() && !args.force {
            bail!("{} already holds a training run; pass --resume to continue it or --force to replace it", args.out.display());
        }
        let (text, origin) = match &args.config {
            Some(p) => (
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?,
                p.display().to_string(),
            ),
            None => (String::new(), "defaults".to_string()),
        };
        TrainConfig::from_toml(&text, &args.overrides, &origin)?
    };
    // Everything the run will read is checked before `--force` deletes anything: a typo
    // must not cost the previous run. That includes the config's ranges, which need the
    // base model's layer count.
    let base = if cfg.model.base.is_empty() {
        crate::default_model_dir()
    } else {
        PathBuf::from(&cfg.model.base)
    };
    let layers = models::Checkpoint::open(&base)
        .with_context(|| format!("model.base: cannot open {}", base.display()))?
        .config
        .dimensions()
        .num_layers;
    let mut resolved = cfg.clone();
    resolved.resolve(layers)?;
    if !cfg.data.teacher_base.is_empty() {
        models::Checkpoint::open(Path::new(&cfg.data.teacher_base))
            .with_context(|| format!("data.teacher_base: cannot open {}", cfg.data.teacher_base))?;
    }
    let (data, notes) = load_data(&cfg)?;
    let dev = if cfg.data.dev.is_empty() {
        None
    } else {
        Some((
            read_candidates(Path::new(&cfg.data.dev))?,
            Qrels::read(Path::new(&cfg.data.dev_qrels))?,
        ))
    };
    let saved_config = if args.resume {
        let text = std::fs::read_to_string(&saved)
            .with_context(|| format!("{}: nothing to resume", saved.display()))?;
        let mut before = TrainConfig::from_toml(&text, &[], &saved.display().to_string())?;
        // Resolved alike, so defaults filled in at the first start compare equal.
        before.resolve(layers)?;
        Some(before)
    } else {
        None
    };
    if args.force && args.out.exists() {
        let empty = std::fs::read_dir(&args.out)
            .with_context(|| format!("cannot read {}", args.out.display()))?
            .next()
            .is_none();
        if !saved.is_file() && !empty {
            bail!(
                "--force replaces a training run, and {} holds none (no train.toml); not deleting it. \
                 Pick another --out",
                args.out.display()
            );
        }
        std::fs::remove_dir_all(&args.out)
            .with_context(|| format!("cannot clear {}", args.out.display()))?;
    }
    let threads = args.threads.unwrap_or(cfg.run.threads);
    if threads > 0 {
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    let device = Device::Cpu;
    for n in notes {
        eprintln!("{n}");
    }
    // A trained model as teacher is scored through ONNX Runtime when it is set up (as
    // the end-of-run evaluation is): several times faster than the candle forward.
    let onnx_teacher = cfg.data.teacher == trainer::config::Teacher::Model
        && models::runtime::init_onnxruntime(threads).is_ok();
    let mut trainer = Trainer::with_model_teacher(
        cfg,
        &base,
        &args.out,
        data,
        &device,
        onnx_teacher.then_some(&onnx_model_teacher as &trainer::train::ModelTeacher),
    )?;
    if dev.is_some() {
        // The end-of-run evaluation's configurations, checked before hours of training.
        crate::eval::select_configs(
            &trainer.cfg.run.eval_configs,
            trainer.num_layers(),
            trainer.cfg.space.min_depth,
        )
        .context("run.eval_configs")?;
    }
    if let Some(saved_config) = &saved_config {
        trainer.resume()?;
        // Phases done, and the current one once started, must run as they were: the
        // checkpoint's phase index, step and optimizer moments refer to them. The
        // vertical phase's sets are named by the depth buckets, so those stay too once
        // it has run.
        let (before, now) = (phases(saved_config), phases(&resolved));
        let done = trainer.phase_index + usize::from(trainer.step > 0);
        let ran = &before[..done.min(before.len())];
        let kept = before.len() >= done && now.len() >= done && before[..done] == now[..done];
        let buckets_kept = saved_config.stage2.depth_buckets == resolved.stage2.depth_buckets
            || !ran
                .iter()
                .any(|(p, _)| *p == trainer::train::Phase::Vertical);
        if !buckets_kept {
            bail!(
                "--resume: stage2.depth_buckets name the vertical adapters the checkpoint has \
                 already trained ({:?}); they cannot change now",
                saved_config.stage2.depth_buckets
            );
        }
        if !kept {
            let list = |p: &[(trainer::train::Phase, usize)]| {
                p.iter()
                    .map(|(phase, steps)| format!("{} {steps}", phase.name()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            bail!(
                "--resume: the overrides change phases the checkpoint has already run (it is at \
                 phase {} step {}; saved: {}; with the overrides: {}); only phases not yet \
                 started may change",
                trainer.phase_index,
                trainer.step,
                list(&before),
                list(&now)
            );
        }
        eprintln!(
            "resuming at phase {} step {}",
            trainer.phase_index, trainer.step
        );
    }
    // The exact config used, with model-dependent defaults resolved.
    std::fs::write(&saved, trainer.cfg.to_toml())
        .with_context(|| format!("cannot write {}", saved.display()))?;
    let started = Instant::now();
    let total: usize = trainer.phases().iter().map(|(_, s)| s).sum();
    let done_before: usize = trainer
        .phases()
        .iter()
        .take(trainer.phase_index)
        .map(|(_, s)| s)
        .sum::<usize>()
        + trainer.step;
    let mut done = done_before;
    let finished = trainer.run(|r| {
        done += 1;
        let elapsed = started.elapsed().as_secs_f64();
        let eta = elapsed / (done - done_before).max(1) as f64 * total.saturating_sub(done) as f64;
        eprint!(
            "\r{:<14} {:>4}/{:<4} loss {:>7.4} · {:>5.1} pairs/s · total {}/{} · eta {:.0}m   ",
            r.phase,
            r.step,
            r.steps,
            r.loss,
            r.pairs_per_second,
            done,
            total,
            eta / 60.0
        );
        let _ = std::io::stderr().flush();
    })?;
    eprintln!();
    if finished.is_none() {
        eprintln!("stopped early; continue with --resume");
        return Ok(());
    }
    let adapters_path = args.out.join("adapters.safetensors");
    eprintln!(
        "wrote {} ({:.0}s)",
        adapters_path.display(),
        started.elapsed().as_secs_f64()
    );
    let cfg = trainer.cfg.clone();
    drop(trainer);
    if let Some((queries, qrels)) = dev {
        write_eval(
            &cfg,
            threads,
            &queries,
            &qrels,
            &base,
            &adapters_path,
            &args.out,
            &device,
        )?;
    }
    Ok(())
}

/// Scores a trained model's full configuration through ONNX Runtime, for the teacher
/// term: the model is exported (full configuration only) to a temporary directory that
/// lives as long as the scorer.
fn onnx_model_teacher(
    base: &Path,
    adapters: &Path,
    max_length: usize,
) -> trainer::Result<Box<trainer::train::TeacherScorer<'static>>> {
    eprintln!(
        "teacher: scoring {} through ONNX Runtime",
        adapters.display()
    );
    let checkpoint = models::Checkpoint::open(base)?;
    let trained = Adapters::for_base(&checkpoint, Some(adapters), &Device::Cpu)?;
    let layers = checkpoint.config.dimensions().num_layers;
    let full = models::Configuration::f32(models::SubStructure::full(layers));
    let (dir, runtime) =
        crate::eval::temporary_runtime(&checkpoint, base, &trained, vec![full], max_length, 0)
            .map_err(|e| {
                trainer::TrainerError::Input(format!("the teacher for ONNX Runtime: {e:#}"))
            })?;
    let id = models::SubStructure::full(layers).id(layers);
    Ok(Box::new(move |q: &trainer::data::QueryCandidates| {
        let _export = &dir; // the graphs stay on disk while the sessions run
        let texts: Vec<&str> = q.candidates.iter().map(|c| c.text.as_str()).collect();
        let pairs = runtime
            .encoder
            .encode_request(&q.query, &texts, None, false)?
            .pairs;
        Ok(runtime.score_pairs(&id, &pairs, 8192)?)
    }))
}

/// Evaluates the finished run on the dev data and writes eval.json (each judged query's
/// figures included, for `scripts/compare_quality.py`) and eval.md.
#[allow(clippy::too_many_arguments)]
fn write_eval(
    cfg: &TrainConfig,
    threads: usize,
    queries: &[trainer::data::QueryCandidates],
    qrels: &Qrels,
    base: &Path,
    adapters: &Path,
    out: &Path,
    device: &Device,
) -> Result<()> {
    // Through ONNX Runtime when its library is set up (what serving runs, and several
    // times faster; it needs only the adapters, not the candle model), else the candle
    // forward.
    let results = if models::runtime::init_onnxruntime(threads).is_ok() {
        let checkpoint = models::Checkpoint::open(base)
            .with_context(|| format!("cannot open {} to export it", base.display()))?;
        let trained = export::load_adapters(&checkpoint, Some(adapters))?;
        crate::eval::evaluate_onnx(
            &checkpoint,
            base,
            &trained,
            &cfg.run.eval_configs,
            queries,
            qrels,
            cfg.model.max_length,
            threads,
            8192,
            true,
            None,
        )?
    } else {
        eprintln!("ONNX Runtime not set up (make setup): evaluating with the candle forward");
        let mut reranker = Reranker::load(base, Some(adapters), cfg.model.max_length, device)?;
        let configs = crate::eval::select_configs(
            &cfg.run.eval_configs,
            reranker.num_layers(),
            reranker.min_depth(),
        )?;
        let configs = crate::eval::candle_configs(&configs, reranker.num_layers())?;
        evaluate(&mut reranker, queries, qrels, &configs, 8192, true)?
    };
    let json = serde_json::json!({"model": out.display().to_string(), "data": cfg.data.dev, "configs": results});
    std::fs::write(out.join("eval.json"), serde_json::to_string_pretty(&json)?)?;
    let mut md = "| config | nDCG@10 | MRR@10 | FLOPs vs full |
| --- | --- | --- | --- |
"
    .to_string();
    for r in &results {
        md.push_str(&format!(
            "| {} | {:.4} | {:.4} | {:.1}% |\n",
            r.id,
            r.ndcg10,
            r.mrr10,
            100.0 * r.flops_ratio
        ));
    }
    std::fs::write(out.join("eval.md"), &md)?;
    eprintln!("{md}");
    Ok(())
}

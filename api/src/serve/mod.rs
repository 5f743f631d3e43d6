//! `mrank serve`: the HTTP re-ranking service. Routes, validation and error mapping
//! live here; admission, configuration choice and batching are the scheduler's; the
//! model math is the runtime's.

mod body;
mod docs;
mod engine;
mod error;
pub mod log;
mod metrics;
mod otlp;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use models::runtime::RuntimeOptions;
use models::Runtime;
use scheduler::{Choice, ConfigInfo, LatencyModel, Rejection, Scheduler, SchedulerConfig};

use body::{Limits, RerankRequest, Shape};
use engine::Engine;
use error::ApiError;
use metrics::Metrics;
use otlp::{now_ns, SpanData, Tracer};

/// Padded tokens per inference batch by default (`--batch-tokens`): what serves best on
/// CPU, and the batch `mrank export --dev` measures quality at, since int8 scores depend
/// on their batch.
pub const DEFAULT_BATCH_TOKENS: usize = 2048;

#[derive(clap::Args, Clone)]
pub struct ServeArgs {
    /// Export directory (manifest.json from `mrank export`). Default: the embedded
    /// default model, exported on first start into the set-up cache.
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub addr: SocketAddr,
    /// Latency target (ms) for requests without `deadline_ms`: `auto` picks the best
    /// configuration predicted to answer within it.
    #[arg(long, default_value_t = 3000.0)]
    pub slo_ms: f64,
    /// Documents per request (at most 10000).
    #[arg(long, default_value_t = 1000)]
    pub max_documents: usize,
    /// Request body limit in bytes.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Padded tokens per inference batch.
    #[arg(long, default_value_t = DEFAULT_BATCH_TOKENS)]
    pub batch_tokens: usize,
    /// Bound on queued tokens; beyond it requests get 429.
    #[arg(long, default_value_t = 2_000_000)]
    pub max_queued_tokens: usize,
    /// ONNX Runtime intra-op threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Give every configuration's session ONNX Runtime's CPU arena (`true`/`false`).
    /// Each arena keeps the largest working set its rung ever needed, so with arenas
    /// memory grows to the sum of every rung's peak (docs/BENCHMARKS.md "Memory").
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub cpu_arena: bool,
    /// Require `Authorization: Bearer <key>` on every route but health, readiness,
    /// metrics and docs.
    #[arg(long, env = "MRANK_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Allow cross-origin requests from this origin (repeatable; `*` for any). CORS is
    /// off by default.
    #[arg(long)]
    pub cors_origin: Vec<String>,
    /// `plain` or `json` logs on stderr.
    #[arg(long, default_value = "plain")]
    pub log_format: String,
    /// Configurations to load (comma-separated ids; default: every one in the manifest).
    #[arg(long)]
    pub configs: Option<String>,
    /// Serve the configurations that cut passages to their first N tokens (`-p<N>`
    /// ids) as rungs of the ladder (`true`/`false`). Their quality was measured on the
    /// dev set's passages (DL19: 85 tokens on average); with longer documents a cut
    /// costs more than the manifest says, so turn this off: the server then serves the
    /// export's frontier without caps.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub passage_caps: bool,
}

pub struct App {
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    tracer: Tracer,
    args: ServeArgs,
    ready: AtomicBool,
    model_name: String,
    started: Instant,
}

type Shared = Arc<App>;

pub fn run(args: ServeArgs) -> Result<()> {
    if args.max_documents == 0 || args.max_documents > 10_000 {
        bail!(
            "--max-documents must be between 1 and 10000, got {}",
            args.max_documents
        );
    }
    if args.slo_ms <= 0.0 {
        bail!("--slo-ms must be positive");
    }
    // Calibration builds batches of this size at start: a typo of a few zeros would
    // exhaust memory before the server ever listens.
    if !(1..=65_536).contains(&args.batch_tokens) {
        bail!(
            "--batch-tokens must be between 1 and 65536 padded tokens, got {} (2048 serves best on CPU)",
            args.batch_tokens
        );
    }
    if args.max_queued_tokens == 0 {
        bail!("--max-queued-tokens must be at least 1");
    }
    if args.threads > 1024 {
        bail!(
            "--threads {} is more than any machine has; 0 uses all cores",
            args.threads
        );
    }
    match args.log_format.as_str() {
        "plain" => {}
        "json" => log::set_json(true),
        other => bail!("--log-format must be plain or json, got {other:?}"),
    }
    let dir = match &args.model {
        Some(d) => d.clone(),
        None => crate::default_export::ensure()?,
    };
    if !dir.join(models::manifest::MANIFEST_FILE).is_file() {
        bail!(
            "{}: no manifest.json; serve an export directory (`mrank export --model {} --out DIR`)",
            dir.display(),
            dir.display()
        );
    }
    // What to load: the configurations named, else the frontier of the manifest's
    // configurations (without passage caps when they are turned off).
    let manifest = models::Manifest::read(&dir)?;
    let capped = |id: &str| {
        manifest
            .config(id)
            .is_some_and(|c| c.passage_tokens.is_some())
    };
    let wanted: Vec<String> = match &args.configs {
        Some(list) => {
            let ids: Vec<String> = list.split(',').map(|s| s.trim().to_string()).collect();
            if let Some(id) = ids.iter().find(|id| !args.passage_caps && capped(id)) {
                bail!("--configs names {id}, which cuts passages, and --passage-caps is false");
            }
            ids
        }
        None => {
            let on = manifest.frontier_of(|c| args.passage_caps || c.passage_tokens.is_none());
            manifest
                .configs
                .iter()
                .zip(on)
                .filter(|(_, on)| *on)
                .map(|(c, _)| c.id.clone())
                .collect()
        }
    };
    let runtime = Runtime::load(
        &dir,
        &RuntimeOptions {
            intra_threads: args.threads,
            configs: Some(wanted),
            cpu_arena: args.cpu_arena,
            ..Default::default()
        },
    )?;
    // Warm every session and fit its latency model on this process, at serving batch
    // sizes: first runs do one-time work (kernel choice, arenas when on; a cold first
    // request would miss its target), and the manifest's reference batch was timed
    // elsewhere, at another size.
    log::info(&format!(
        "warming {} configurations and calibrating their latency",
        runtime.configs.len()
    ));
    // Ranked by the manifest (a cap never above a longer read of its graph); the
    // scheduler orders ties by how much of the passage a rung reads.
    let manifest = &runtime.manifest;
    // In the manifest's rank order, best first: the scheduler keeps the input order
    // among rungs it ranks equal, and only the manifest knows that an f32 rung goes
    // before its int8 twin at equal quality.
    let mut loaded: Vec<_> = runtime
        .configs
        .iter()
        .map(|c| (manifest.rank_key(&c.entry), c))
        .collect();
    loaded.sort_by(|(a, _), (b, _)| models::manifest::rank_order(*b, *a));
    let ladder: Vec<ConfigInfo> = loaded
        .into_iter()
        .map(|(_, c)| {
            let e = &c.entry;
            let latency = calibrate(&runtime, &e.id, args.batch_tokens).unwrap_or_else(|err| {
                log::error(&format!(
                    "calibrating {}: {err}; using the manifest's figure",
                    e.id
                ));
                let m = &runtime.manifest.reference_lengths;
                // The reference batch ran its passages cut to the configuration's cap.
                let passage = e.passage_tokens.map_or(m.passage, |cap| m.passage.min(cap));
                let reference_tokens = export::measure::REFERENCE_BATCH * (m.query + passage + 3);
                match e.latency_ms {
                    Some(ms) => LatencyModel::from_reference(ms / 1000.0, reference_tokens),
                    None => LatencyModel::new(0.002, 250e-6 * e.flops_ratio),
                }
            });
            ConfigInfo {
                id: e.id.clone(),
                quality: manifest.ranking_quality(e),
                latency,
                passage_tokens: e.passage_tokens,
            }
        })
        .collect();
    let settings = SchedulerConfig {
        slo_target_s: args.slo_ms / 1000.0,
        token_budget: args.batch_tokens,
        max_queued_tokens: args.max_queued_tokens,
        ..Default::default()
    };
    let largest = args.max_documents * runtime.manifest.max_length;
    if largest > args.max_queued_tokens {
        log::info(&format!(
            "note: a request of --max-documents {} documents at {} tokens each ({largest} tokens) \
             exceeds --max-queued-tokens {}; such requests are refused with 422 too_many_tokens",
            args.max_documents, runtime.manifest.max_length, args.max_queued_tokens
        ));
    }
    let metrics = Arc::new(Metrics::new(settings.slo_target_s));
    let scheduler = Scheduler::new(ladder, settings);
    let ladder_ids: Vec<String> = scheduler.configs.iter().map(|c| c.id.clone()).collect();
    let model_name = format!("mrank-{}", runtime.manifest.architecture);
    let runtime = Arc::new(runtime);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    tokio.block_on(async move {
        let tracer = Tracer::from_env().map_err(anyhow::Error::msg)?;
        let engine = Engine::new(runtime.clone(), scheduler, metrics.clone());
        let app = Arc::new(App {
            engine,
            metrics,
            tracer,
            args: args.clone(),
            ready: AtomicBool::new(false),
            model_name,
            started: Instant::now(),
        });
        let router = router(app.clone())?;
        let listener = tokio::net::TcpListener::bind(args.addr)
            .await
            .with_context(|| format!("cannot listen on {}", args.addr))?;
        log::info(&format!(
            "serving {} from {} on http://{} (SLO {} ms; quality ladder {}; {} max documents; traces {})",
            app.model_name,
            dir.display(),
            listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            args.slo_ms,
            ladder_ids.join(" > "),
            args.max_documents,
            if app.tracer.enabled() { "on" } else { "off" }
        ));
        app.ready.store(true, Ordering::SeqCst);
        let shutdown_app = app.clone();
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                shutdown_signal().await;
                shutdown_app.ready.store(false, Ordering::SeqCst);
                log::info("shutting down: no new connections; answering accepted requests");
            })
            .await
            .context("server failed")?;
        app.engine.stop();
        while !app.engine.idle() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        log::info("stopped");
        anyhow::Ok(())
    })
}

/// Times a small and a budget-sized batch of 100-token pairs, or shorter when the
/// configuration caps passages (after a warm-up run of
/// each; mean of two runs) and fits `per_batch + per_token · tokens` through the two points.
fn calibrate(runtime: &Runtime, id: &str, budget: usize) -> models::Result<LatencyModel> {
    let passage = vec!["water"; 90].join(" ");
    // Cut as the configuration cuts it, so the fit is over the tokens that run (the
    // scheduler counts a capped configuration's tokens the same way).
    let cap = runtime.config(id).and_then(|c| c.entry.passage_tokens);
    let pair = runtime.encoder.encode("river flow", &passage, cap)?;
    let len = pair.len();
    let time = |n: usize| -> models::Result<(usize, f64)> {
        let batch = models::PaddedBatch::new(&vec![pair.clone(); n], runtime.encoder.pad_id);
        runtime.run(id, &batch)?;
        // The mean, not the best, of the timed runs: serving sees the typical case.
        let mut total = 0.0;
        for _ in 0..2 {
            let t = Instant::now();
            runtime.run(id, &batch)?;
            total += t.elapsed().as_secs_f64();
        }
        Ok((n * len, total / 2.0))
    };
    let (x1, y1) = time(2)?;
    let (x2, y2) = time((budget / len).max(4))?;
    let per_token = ((y2 - y1) / (x2 - x1) as f64).max(1e-9);
    let per_batch = (y1 - per_token * x1 as f64).max(0.0);
    Ok(LatencyModel::new(per_batch, per_token))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

fn router(app: Shared) -> Result<Router> {
    let mut router = Router::new()
        .route("/rerank", post(rerank_detect))
        .route("/v1/rerank", post(rerank_cohere))
        .route("/v2/rerank", post(rerank_cohere))
        .route("/info", get(info))
        .route("/configs", get(configs))
        // Before the auth layer, so that a wrong method without a key is still a 401.
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), auth))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_route))
        .route("/openapi.json", get(|| async { Json(docs::openapi()) }))
        .route("/docs", get(|| async { Html(docs::DOCS_PAGE) }))
        .fallback(not_found)
        // The open routes (the ones above already have it, and keep it).
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app.clone());
    if !app.args.cors_origin.is_empty() {
        use tower_http::cors::{AllowOrigin, CorsLayer};
        let origins = &app.args.cors_origin;
        let allow = if origins.iter().any(|o| o == "*") {
            AllowOrigin::any()
        } else {
            let values = origins
                .iter()
                .map(|o| HeaderValue::from_str(o).with_context(|| format!("--cors-origin {o:?}")))
                .collect::<Result<Vec<_>>>()?;
            AllowOrigin::list(values)
        };
        router = router.layer(
            CorsLayer::new()
                .allow_origin(allow)
                .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
                .allow_headers([
                    axum::http::header::CONTENT_TYPE,
                    axum::http::header::AUTHORIZATION,
                ]),
        );
    }
    Ok(router)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "not_found",
        "no such route; see /docs",
    )
}

/// A known route with the wrong method (`GET /v1/rerank`): a JSON error like every
/// other, where axum would answer an empty 405.
async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method_not_allowed",
        format!(
            "{method} is not allowed on {}; the rerank routes take POST, the others GET (see /docs)",
            uri.path()
        ),
    )
}

async fn auth(State(app): State<Shared>, req: Request, next: axum::middleware::Next) -> Response {
    if let Some(key) = &app.args.api_key {
        let given = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_api_key",
                "missing or wrong API key: send `Authorization: Bearer <key>`",
            )
            .into_response();
        }
    }
    next.run(req).await
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn ready(State(app): State<Shared>) -> Response {
    if app.ready.load(Ordering::SeqCst) {
        Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "not_ready",
            "not ready (starting or shutting down)",
        )
        .into_response()
    }
}

async fn info(State(app): State<Shared>) -> Json<serde_json::Value> {
    let m = &app.engine.runtime.manifest;
    Json(serde_json::json!({
        "model": app.model_name,
        "family": m.family,
        "architecture": m.architecture,
        "source": m.model,
        "configs": app.engine.runtime.config_ids(),
        "limits": {
            "max_documents": app.args.max_documents,
            "max_tokens_per_pair": m.max_length,
            "max_body_bytes": app.args.max_body_bytes,
            "batch_tokens": app.args.batch_tokens,
            "max_queued_tokens": app.args.max_queued_tokens,
        },
        "slo_target_ms": app.args.slo_ms,
        "auth": app.args.api_key.is_some(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": app.started.elapsed().as_secs_f64(),
    }))
}

async fn configs(State(app): State<Shared>) -> Json<serde_json::Value> {
    let m = &app.engine.runtime.manifest;
    let live: Vec<serde_json::Value> = app
        .engine
        .estimates()
        .into_iter()
        .map(|(id, predicted, per_batch, per_token)| {
            serde_json::json!({
                "id": id,
                "predicted_ms_reference_request": predicted * 1000.0,
                "per_batch_ms": per_batch * 1000.0,
                "per_token_us": per_token * 1e6,
            })
        })
        .collect();
    let stats = app.engine.stats();
    Json(serde_json::json!({
        "manifest": m,
        "ladder": live,
        "reference_request": "60 pairs of 100 tokens, 88 of them the passage's",
        "level": stats.level,
        "degradation": stats.degradation,
        "queue": {"requests": stats.queued_requests, "pairs": stats.queued_pairs, "tokens": stats.queued_tokens},
    }))
}

async fn metrics_route(State(app): State<Shared>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        app.metrics.render(),
    )
        .into_response()
}

async fn rerank_detect(State(app): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    rerank(app, headers, body, None).await
}

async fn rerank_cohere(State(app): State<Shared>, headers: HeaderMap, body: Body) -> Response {
    rerank(app, headers, body, Some(Shape::Cohere)).await
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn ms(s: f64) -> String {
    format!("{}", (s * 1000.0).round() as u64)
}

struct Timings {
    tokenize_s: f64,
    queue_s: f64,
    inference_s: f64,
}

async fn rerank(app: Shared, headers: HeaderMap, body: Body, shape: Option<Shape>) -> Response {
    let started = Instant::now();
    let start_ns = now_ns();
    let (trace_id, parent) = match headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(otlp::parse_traceparent)
    {
        Some((t, p)) => (t, Some(p)),
        None => (otlp::new_trace_id(), None),
    };
    let request_span = otlp::new_span_id();
    let result = rerank_inner(&app, body, shape, trace_id, request_span).await;
    let seconds = started.elapsed().as_secs_f64();
    let (response, config, status) = match result {
        Ok((response, config)) => (response, config, 200),
        Err(e) => {
            let status = e.status.as_u16();
            app.metrics.rejection(e.code);
            (e.into_response(), String::new(), status)
        }
    };
    app.metrics.request(&config, status, seconds);
    app.tracer.record(SpanData {
        trace_id,
        span_id: request_span,
        parent,
        name: "request",
        start_ns,
        end_ns: now_ns(),
        attributes: vec![
            ("http.response.status_code", status.to_string()),
            ("mrank.config", config),
        ],
        error: status >= 500,
    });
    response
}

async fn rerank_inner(
    app: &Shared,
    body: Body,
    shape: Option<Shape>,
    trace_id: [u8; 16],
    request_span: [u8; 8],
) -> Result<(Response, String), ApiError> {
    let limit = app.args.max_body_bytes;
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "body_too_large",
            format!("request body over {limit} bytes (--max-body-bytes)"),
        )
    })?;
    let req: RerankRequest = body::parse(
        &bytes,
        shape,
        &Limits {
            max_documents: app.args.max_documents,
        },
    )?;
    let choice = match req.config.as_deref() {
        None | Some("auto") => Choice::Auto,
        Some(id) => {
            if app.engine.runtime.config(id).is_none() {
                return Err(ApiError::invalid(
                    "config",
                    "unknown_config",
                    format!(
                        "unknown configuration {id:?}; this server has auto, {}",
                        app.engine.runtime.config_ids().join(", ")
                    ),
                ));
            }
            Choice::Pinned(id.to_string())
        }
    };
    // Tokenize off the async threads.
    let t0 = Instant::now();
    let tok_start = now_ns();
    let runtime = app.engine.runtime.clone();
    let (query, documents, max_doc, left) = (
        req.query.clone(),
        req.documents.clone(),
        req.max_tokens_per_doc,
        req.truncate_left,
    );
    let encoded = tokio::task::spawn_blocking(move || {
        runtime
            .encoder
            .encode_request(&query, &documents, max_doc, left)
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "tokenizer_failed",
            e.to_string(),
        )
    })?
    .map_err(|e| ApiError::invalid("query", "encoding_failed", e.to_string()))?;
    let tokenize_s = t0.elapsed().as_secs_f64();
    app.tracer.record(SpanData {
        trace_id,
        span_id: otlp::new_span_id(),
        parent: Some(request_span),
        name: "tokenize",
        start_ns: tok_start,
        end_ns: now_ns(),
        attributes: vec![("mrank.pairs", encoded.pairs.len().to_string())],
        error: false,
    });
    let docs_field = if req.shape == Shape::Tei {
        "texts"
    } else {
        "documents"
    };
    if encoded.query_is_blank {
        // Not blank, yet nothing the tokenizer keeps (zero-width or control characters):
        // every document would be scored against an empty query.
        return Err(ApiError::invalid(
            "query",
            "empty_query",
            "`query` has no token the model reads (only control or zero-width characters)",
        ));
    }
    let max_length = app.engine.runtime.manifest.max_length;
    if !req.truncate {
        let query_cap = app.engine.runtime.encoder.query_cap();
        if encoded.query_tokens > query_cap {
            return Err(ApiError::invalid(
                "query",
                "input_too_long",
                format!("the query is {} tokens; at most {query_cap} fit beside a document in {max_length}; shorten it or send `truncate: true` to cut it", encoded.query_tokens),
            ));
        }
        if let Some(i) = encoded.pairs.iter().position(|p| p.truncated) {
            return Err(ApiError::invalid(
                &format!("{docs_field}[{i}]"),
                "input_too_long",
                format!("query and `{docs_field}[{i}]` exceed {max_length} tokens; send `truncate: true` to cut the document"),
            ));
        }
    }
    let pairs = encoded.pairs;
    let total_tokens: usize = pairs.iter().map(|p| p.len()).sum();
    let deadline_s = req.deadline_ms.map(|ms| ms / 1000.0);
    let queue_start = now_ns();
    let (ticket, rx) = app
        .engine
        .submit(pairs, choice, deadline_s)
        .map_err(|r| rejection(r, docs_field))?;
    let finished = rx
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "shutting_down",
                "the server stopped before answering",
            )
        })?
        .map_err(|m| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "inference_failed",
                m,
            )
        })?;
    ticket.finish();
    let infer_start = queue_start + (finished.queue_s * 1e9) as u64;
    app.tracer.record(SpanData {
        trace_id,
        span_id: otlp::new_span_id(),
        parent: Some(request_span),
        name: "queue",
        start_ns: queue_start,
        end_ns: infer_start,
        attributes: vec![],
        error: false,
    });
    app.tracer.record(SpanData {
        trace_id,
        span_id: otlp::new_span_id(),
        parent: Some(request_span),
        name: "inference",
        start_ns: infer_start,
        end_ns: now_ns(),
        attributes: vec![("mrank.config", finished.config.clone())],
        error: false,
    });
    let timings = Timings {
        tokenize_s,
        queue_s: finished.queue_s,
        inference_s: finished.inference_s,
    };
    let config = finished.config.clone();
    Ok((respond(app, &req, finished, total_tokens, &timings), config))
}

fn rejection(r: Rejection, docs_field: &str) -> ApiError {
    match r {
        Rejection::Overloaded { retry_after_s } => {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                "overloaded",
                format!(
                    "over capacity even at the cheapest configuration; retry in {:.1} s",
                    retry_after_s
                ),
            );
            e.retry_after_s = Some(retry_after_s.ceil().max(1.0) as u64);
            e
        }
        Rejection::DeadlineUnmeetable {
            predicted_s,
            deadline_s,
        } => {
            let mut e = ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "deadline_exceeded",
                "deadline_unmeetable",
                format!(
                    "`deadline_ms` {:.0} cannot be met: the cheapest configuration is predicted to take {:.0} ms",
                    deadline_s * 1000.0,
                    predicted_s * 1000.0
                ),
            );
            e.param = Some("deadline_ms".into());
            e
        }
        Rejection::UnknownConfig(id) => ApiError::invalid(
            "config",
            "unknown_config",
            format!("unknown configuration {id:?}"),
        ),
        Rejection::TooLarge {
            tokens,
            max_queued_tokens,
        } => ApiError::invalid(
            docs_field,
            "too_many_tokens",
            format!("the request is {tokens} tokens; the server queues at most {max_queued_tokens} (--max-queued-tokens); split it into smaller requests"),
        ),
        Rejection::Empty => ApiError::invalid(
            docs_field,
            "empty_documents",
            format!("`{docs_field}` is empty"),
        ),
    }
}

fn respond(
    app: &Shared,
    req: &RerankRequest,
    finished: engine::Finished,
    total_tokens: usize,
    t: &Timings,
) -> Response {
    let mut order: Vec<usize> = (0..finished.scores.len()).collect();
    order.sort_by(|&a, &b| finished.scores[b].total_cmp(&finished.scores[a]));
    if let Some(n) = req.top_n {
        order.truncate(n);
    }
    let body = match req.shape {
        Shape::Tei => {
            let items: Vec<serde_json::Value> = order
                .iter()
                .map(|&i| {
                    let s = finished.scores[i];
                    let mut v = serde_json::json!({
                        "index": i,
                        "score": if req.raw_scores { s } else { sigmoid(s) },
                    });
                    if req.return_documents {
                        v["text"] = serde_json::Value::String(req.documents[i].clone());
                    }
                    v
                })
                .collect();
            serde_json::Value::Array(items)
        }
        Shape::Cohere => {
            let results: Vec<serde_json::Value> = order
                .iter()
                .map(|&i| {
                    let mut v = serde_json::json!({"index": i, "relevance_score": sigmoid(finished.scores[i])});
                    if req.return_documents {
                        v["document"] = serde_json::json!({"text": req.documents[i]});
                    }
                    v
                })
                .collect();
            let id: u128 = rand::random();
            serde_json::json!({
                "id": format!("{id:032x}"),
                "model": req.model.clone().unwrap_or_else(|| app.model_name.clone()),
                "results": results,
                "usage": {"total_tokens": total_tokens},
                "meta": {
                    "config": finished.config,
                    "queue_ms": t.queue_s * 1000.0,
                    "inference_ms": t.inference_s * 1000.0,
                    "tokenization_ms": t.tokenize_s * 1000.0,
                },
            })
        }
    };
    let mut response = Json(body).into_response();
    let h = response.headers_mut();
    let chars: usize = req
        .documents
        .iter()
        .map(|d| d.chars().count())
        .sum::<usize>()
        + req.query.chars().count();
    let compute = t.tokenize_s + t.queue_s + t.inference_s;
    for (k, v) in [
        ("x-mrank-config", finished.config.clone()),
        ("x-compute-type", "cpu".to_string()),
        ("x-compute-time", ms(compute)),
        ("x-compute-characters", chars.to_string()),
        ("x-total-time", ms(compute)),
        ("x-tokenization-time", ms(t.tokenize_s)),
        ("x-queue-time", ms(t.queue_s)),
        ("x-inference-time", ms(t.inference_s)),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use axum::response::IntoResponse;

    use super::*;

    /// A full queue is worth retrying: 429 with a whole-second Retry-After, never 0.
    /// A request larger than the queue is not: 422, no Retry-After.
    #[test]
    fn queue_rejections_map_to_429_with_retry_after_or_to_422() {
        let r =
            rejection(Rejection::Overloaded { retry_after_s: 2.3 }, "documents").into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()["retry-after"], "3");
        let r =
            rejection(Rejection::Overloaded { retry_after_s: 0.0 }, "documents").into_response();
        assert_eq!(r.headers()["retry-after"], "1");
        let r = rejection(
            Rejection::TooLarge {
                tokens: 90,
                max_queued_tokens: 60,
            },
            "texts",
        );
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(r.param.as_deref(), Some("texts"));
        assert!(
            r.message.contains("90 tokens") && r.message.contains("60"),
            "{}",
            r.message
        );
        assert!(r.into_response().headers().get("retry-after").is_none());
    }
}

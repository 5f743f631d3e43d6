//! `mrank serve` end to end: a real server on 127.0.0.1 running the embedded default,
//! spoken to over plain HTTP/1.1 by a minimal client (no mocks).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `mrank serve` with `args` and waits until `/ready` answers 200.
fn start(args: &[&str], env: &[(&str, &str)]) -> Server {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mrank"));
    cmd.args(["serve", "--addr", &addr, "--threads", "2"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let mut server = Server { child, port };
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Ok(r) = try_request(port, "GET", "/ready", &[], b"") {
            if r.status == 200 {
                return server;
            }
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("mrank serve exited with {status} before it was ready");
        }
        assert!(
            Instant::now() < deadline,
            "server not ready after 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The embedded default export every server here uses (exported once by the first).
fn export_dir() -> String {
    static DIR: OnceLock<String> = OnceLock::new();
    DIR.get_or_init(|| {
        let server = start(&[], &[]);
        drop(server);
        let dir = std::env::var("MRANK_EXPORT")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo().join(".cache/export/minilm-l6"));
        dir.to_string_lossy().into_owned()
    })
    .clone()
}

/// A server of the embedded default with default settings (one per test: a process
/// kept in a static would outlive the test binary).
fn shared() -> Server {
    let dir = export_dir();
    start(&["--model", &dir], &[])
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// `{"error": {...}}` with the given status, code and (when given) param.
    fn assert_error(&self, status: u16, code: &str, param: Option<&str>) {
        assert_eq!(self.status, status, "{}", self.body);
        let e = &self.json()["error"];
        assert_eq!(e["code"], code, "{}", self.body);
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            self.body
        );
        assert!(e["type"].is_string(), "{}", self.body);
        if let Some(p) = param {
            assert_eq!(e["param"], p, "{}", self.body);
        }
    }
}

fn try_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(300)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: body.to_string(),
    })
}

fn post(port: u16, path: &str, body: &Value) -> Response {
    try_request(
        port,
        "POST",
        path,
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
    .unwrap()
}

fn get(port: u16, path: &str) -> Response {
    try_request(port, "GET", path, &[], b"").unwrap()
}

const QUERY: &str = "what is the capital of france";
fn docs() -> Vec<&'static str> {
    vec![
        "Berlin is the capital and largest city of Germany.",
        "Paris is the capital and most populous city of France.",
        "The Loire is the longest river in France.",
        "Bananas are rich in potassium.",
    ]
}

#[test]
fn tei_shape_sorted_with_text_and_timing_headers() {
    let s = shared();
    let r = post(
        s.port,
        "/rerank",
        &json!({"query": QUERY, "texts": docs(), "return_text": true}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let items = r.json();
    let items = items.as_array().unwrap();
    assert_eq!(items.len(), 4);
    let scores: Vec<f64> = items.iter().map(|i| i["score"].as_f64().unwrap()).collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "sorted by score: {scores:?}"
    );
    assert!(
        scores.iter().all(|s| (0.0..=1.0).contains(s)),
        "sigmoid scores: {scores:?}"
    );
    let mut idx: Vec<u64> = items.iter().map(|i| i["index"].as_u64().unwrap()).collect();
    for i in items {
        assert_eq!(i["text"], docs()[i["index"].as_u64().unwrap() as usize]);
    }
    assert_eq!(
        items[0]["index"], 1,
        "the Paris passage ranks first: {}",
        r.body
    );
    idx.sort();
    assert_eq!(idx, vec![0, 1, 2, 3]);
    for h in [
        "x-compute-time",
        "x-queue-time",
        "x-inference-time",
        "x-tokenization-time",
        "x-mrank-config",
    ] {
        assert!(r.header(h).is_some(), "missing {h}");
    }
    // Raw scores are the logits the sigmoid maps.
    let raw = post(
        s.port,
        "/rerank",
        &json!({"query": QUERY, "texts": docs(), "raw_scores": true, "config": "full"}),
    );
    assert_eq!(raw.status, 200);
    assert!(raw.json()[0].get("text").is_none());
}

#[test]
fn cohere_shape_on_every_route_with_top_n_and_documents() {
    let s = shared();
    let mixed: Vec<Value> = docs()
        .iter()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 0 {
                json!(d)
            } else {
                json!({"text": d})
            }
        })
        .collect();
    for route in ["/v1/rerank", "/v2/rerank", "/rerank"] {
        let r = post(
            s.port,
            route,
            &json!({"model": "mine", "query": QUERY, "documents": mixed, "top_n": 2, "return_documents": true}),
        );
        assert_eq!(r.status, 200, "{route}: {}", r.body);
        let v = r.json();
        assert_eq!(v["model"], "mine");
        assert!(v["id"].as_str().is_some_and(|s| !s.is_empty()));
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), 2);
        assert_eq!(results[0]["index"], 1);
        assert_eq!(results[0]["document"]["text"], docs()[1]);
        assert!(
            results[0]["relevance_score"].as_f64().unwrap()
                >= results[1]["relevance_score"].as_f64().unwrap()
        );
        assert!(v["usage"]["total_tokens"].as_u64().unwrap() > 20);
        assert!(v["meta"]["config"].is_string());
    }
    let r = post(
        s.port,
        "/v2/rerank",
        &json!({"query": QUERY, "documents": docs()}),
    );
    assert!(
        r.json()["results"][0].get("document").is_none(),
        "documents only on request"
    );
}

#[test]
fn pinned_configuration_is_used() {
    let s = shared();
    // The served set is the measured quality/latency frontier, which depends on
    // the machine's timings; pin the cheapest rung it actually serves, and full.
    let ladder = get(s.port, "/configs").json()["ladder"].clone();
    let cheapest = ladder.as_array().unwrap().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(cheapest, "full", "the default serves more than full");
    for id in [cheapest.as_str(), "full"] {
        let r = post(
            s.port,
            "/v2/rerank",
            &json!({"query": QUERY, "documents": docs(), "config": id}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["meta"]["config"], id);
        assert_eq!(r.header("x-mrank-config"), Some(id));
    }
}

/// The embedded default serves passage caps as rungs (its committed quality table
/// has them); `--passage-caps false` serves none, and refuses to load one by name.
#[test]
fn passage_caps_can_be_left_out_of_the_ladder() {
    // The loaded configurations whose manifest entry caps passages.
    let capped = |s: &Server| -> Vec<String> {
        let manifest = get(s.port, "/configs").json()["manifest"].clone();
        let loaded = get(s.port, "/info").json()["configs"].clone();
        manifest["configs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["passage_tokens"].is_u64())
            .map(|c| c["id"].as_str().unwrap().to_string())
            .filter(|id| loaded.as_array().unwrap().iter().any(|l| l == id.as_str()))
            .collect()
    };
    let dir = export_dir();
    let with = start(&["--model", &dir], &[]);
    let some = capped(&with);
    assert!(!some.is_empty(), "the default serves capped rungs");
    // At equal quality the longer read ranks first: full tops the ladder.
    assert_eq!(get(with.port, "/configs").json()["ladder"][0]["id"], "full");
    drop(with);
    let without = start(&["--model", &dir, "--passage-caps", "false"], &[]);
    assert_eq!(capped(&without), Vec::<String>::new());
    let ladder = get(without.port, "/configs").json()["ladder"].clone();
    let ladder = ladder.as_array().unwrap();
    assert!(ladder
        .iter()
        .all(|r| !r["id"].as_str().unwrap().contains("-p")));
    // The export keeps the frontier without caps too: still a ladder to step down.
    assert!(ladder.len() > 2, "{ladder:?}");
    assert_eq!(ladder[0]["id"], "full");
    drop(without);
    let out = Command::new(env!("CARGO_BIN_EXE_mrank"))
        .args([
            "serve",
            "--model",
            &dir,
            "--passage-caps",
            "false",
            "--configs",
        ])
        .arg(format!("full,{}", some[0]))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&some[0]) && stderr.contains("--passage-caps"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn truncation_controls() {
    let s = shared();
    let long = "france paris capital ".repeat(400);
    let r = post(
        s.port,
        "/rerank",
        &json!({"query": QUERY, "texts": [docs()[0], long]}),
    );
    r.assert_error(422, "input_too_long", Some("texts[1]"));
    // A query too long to fit is the query's fault, not the document's.
    let r = post(
        s.port,
        "/rerank",
        &json!({"query": long, "texts": [docs()[0]]}),
    );
    r.assert_error(422, "input_too_long", Some("query"));
    assert!(r.body.contains("tokens; at most"), "{}", r.body);
    // A cut asked for with `max_tokens_per_doc` is not an over-long input.
    let r = post(
        s.port,
        "/rerank",
        &json!({"query": QUERY, "texts": [docs()[0]], "max_tokens_per_doc": 1}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(
        s.port,
        "/rerank",
        &json!({"query": QUERY, "texts": [docs()[0], long], "truncate": true}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(
        s.port,
        "/rerank",
        &json!({"query": QUERY, "texts": [docs()[0], long], "truncate": true, "truncation_direction": "left"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let full = post(
        s.port,
        "/v2/rerank",
        &json!({"query": QUERY, "documents": [long]}),
    );
    let capped = post(
        s.port,
        "/v2/rerank",
        &json!({"query": QUERY, "documents": [long], "max_tokens_per_doc": 8}),
    );
    let tokens = |r: &Response| r.json()["usage"]["total_tokens"].as_u64().unwrap();
    assert!(
        tokens(&capped) < 30 && tokens(&full) > 200,
        "{} vs {}",
        tokens(&capped),
        tokens(&full)
    );
}

#[test]
fn client_errors_are_4xx_json_naming_the_field() {
    let s = shared();
    let p = s.port;
    post(p, "/v2/rerank", &json!({"query": "", "documents": ["a"]})).assert_error(
        422,
        "empty_query",
        Some("query"),
    );
    post(
        p,
        "/v2/rerank",
        &json!({"query": "\u{200b}\u{0000}", "documents": ["a"]}),
    )
    .assert_error(422, "empty_query", Some("query"));
    post(
        p,
        "/rerank",
        &json!({"query": "q", "texts": ["a"], "documents": ["b"]}),
    )
    .assert_error(422, "ambiguous_shape", Some("documents"));
    let r = post(
        p,
        "/rerank",
        &json!({"query": "q", "texts": null, "documents": ["b"]}),
    );
    assert_eq!(r.status, 200, "a null `texts` is absent: {}", r.body);
    post(p, "/v2/rerank", &json!({"documents": ["a"]})).assert_error(
        422,
        "missing_field",
        Some("query"),
    );
    post(p, "/v2/rerank", &json!({"query": "q", "documents": []})).assert_error(
        422,
        "empty_documents",
        Some("documents"),
    );
    post(p, "/rerank", &json!({"query": "q", "texts": []})).assert_error(
        422,
        "empty_documents",
        Some("texts"),
    );
    post(p, "/v2/rerank", &json!({"query": "q", "documents": 5})).assert_error(
        422,
        "invalid_type",
        Some("documents"),
    );
    post(
        p,
        "/v2/rerank",
        &json!({"query": "q", "documents": ["a", 3]}),
    )
    .assert_error(422, "invalid_type", Some("documents[1]"));
    post(p, "/v2/rerank", &json!({"query": 7, "documents": ["a"]})).assert_error(
        422,
        "invalid_type",
        Some("query"),
    );
    post(
        p,
        "/v2/rerank",
        &json!({"query": "q", "documents": ["a"], "config": "d99"}),
    )
    .assert_error(422, "unknown_config", Some("config"));
    post(
        p,
        "/v2/rerank",
        &json!({"query": "q", "documents": ["a", "b"], "top_n": 0}),
    )
    .assert_error(422, "top_n_out_of_range", Some("top_n"));
    post(
        p,
        "/v2/rerank",
        &json!({"query": "q", "documents": ["a", "b"], "top_n": 3}),
    )
    .assert_error(422, "top_n_out_of_range", Some("top_n"));
    post(
        p,
        "/v2/rerank",
        &json!({"query": "q", "documents": ["a"], "top_n": "2"}),
    )
    .assert_error(422, "invalid_type", Some("top_n"));
    post(
        p,
        "/v2/rerank",
        &json!({"query": "q", "documents": ["a"], "deadline_ms": -1}),
    )
    .assert_error(422, "out_of_range", Some("deadline_ms"));
    post(p, "/rerank", &json!({"query": "q"})).assert_error(
        422,
        "missing_field",
        Some("documents"),
    );
    let r = try_request(
        p,
        "POST",
        "/v2/rerank",
        &[("content-type", "application/json")],
        b"{not json",
    )
    .unwrap();
    r.assert_error(400, "invalid_json", None);
    let r = try_request(
        p,
        "POST",
        "/v2/rerank",
        &[("content-type", "application/json")],
        b"[1,2]",
    )
    .unwrap();
    r.assert_error(400, "invalid_json", None);
    let too_many: Vec<&str> = vec!["a"; 1001];
    post(
        p,
        "/v2/rerank",
        &json!({"query": "q", "documents": too_many}),
    )
    .assert_error(422, "too_many_documents", Some("documents"));
    get(p, "/nope").assert_error(404, "not_found", None);
    get(p, "/v1/rerank").assert_error(405, "method_not_allowed", None);
    // A deadline no configuration can meet is refused before any work.
    let many: Vec<String> = (0..200)
        .map(|i| format!("passage number {i} about rivers and cities"))
        .collect();
    post(
        p,
        "/v2/rerank",
        &json!({"query": "q", "documents": many, "deadline_ms": 1}),
    )
    .assert_error(504, "deadline_unmeetable", Some("deadline_ms"));
}

#[test]
fn service_routes() {
    let s = shared();
    let p = s.port;
    assert_eq!(get(p, "/health").status, 200);
    assert_eq!(get(p, "/ready").json()["status"], "ready");
    let info = get(p, "/info").json();
    assert_eq!(info["family"], "bert");
    assert_eq!(info["limits"]["max_documents"], 1000);
    assert!(info["configs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == "full"));
    assert!(info["version"].is_string());
    let configs = get(p, "/configs").json();
    assert!(configs["manifest"]["configs"].as_array().unwrap().len() >= 2);
    assert!(
        configs["ladder"][0]["predicted_ms_reference_request"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let spec = get(p, "/openapi.json").json();
    assert!(spec["paths"]["/v2/rerank"]["post"].is_object());
    let docs_page = get(p, "/docs");
    assert_eq!(docs_page.status, 200);
    assert!(docs_page.body.contains("openapi.json"));
    post(
        p,
        "/v2/rerank",
        &json!({"query": QUERY, "documents": docs()}),
    );
    let m = get(p, "/metrics");
    assert_eq!(m.status, 200);
    for name in [
        "mrank_request_duration_seconds_bucket",
        "mrank_inference_seconds_count",
        "mrank_queue_pairs",
        "mrank_queue_tokens",
        "mrank_batch_size_pairs_count",
        "mrank_config_selections_total",
        "mrank_degradation_level",
        "mrank_slo_target_seconds 3",
    ] {
        assert!(m.body.contains(name), "metrics lack {name}");
    }
    assert!(m.body.contains("status=\"200\""));
}

#[test]
fn limits_overload_and_auth_on_a_configured_server() {
    let dir = export_dir();
    let s = start(
        &[
            "--model",
            &dir,
            "--api-key",
            "sesame",
            "--max-body-bytes",
            "2000",
            "--max-documents",
            "5",
            "--max-queued-tokens",
            "60",
        ],
        &[],
    );
    let p = s.port;
    let body = json!({"query": QUERY, "documents": docs()}).to_string();
    let auth = [
        ("content-type", "application/json"),
        ("authorization", "Bearer sesame"),
    ];
    let r = try_request(
        p,
        "POST",
        "/v2/rerank",
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
    .unwrap();
    r.assert_error(401, "invalid_api_key", None);
    let r = try_request(
        p,
        "POST",
        "/v2/rerank",
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer wrong"),
        ],
        body.as_bytes(),
    )
    .unwrap();
    r.assert_error(401, "invalid_api_key", None);
    let small = json!({"query": "capital", "documents": ["Paris"]}).to_string();
    let r = try_request(p, "POST", "/v2/rerank", &auth, small.as_bytes()).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        try_request(p, "GET", "/info", &[], b"").unwrap().status,
        401
    );
    // A wrong method on a guarded route is still refused for the key first.
    try_request(p, "GET", "/v2/rerank", &[], b"")
        .unwrap()
        .assert_error(401, "invalid_api_key", None);
    try_request(p, "GET", "/v2/rerank", &auth, b"")
        .unwrap()
        .assert_error(405, "method_not_allowed", None);
    try_request(p, "POST", "/health", &[], b"")
        .unwrap()
        .assert_error(405, "method_not_allowed", None);
    assert_eq!(get(p, "/health").status, 200, "health stays open");
    assert_eq!(get(p, "/metrics").status, 200, "metrics stay open");
    let big = json!({"query": QUERY, "documents": ["x".repeat(3000)]}).to_string();
    try_request(p, "POST", "/v2/rerank", &auth, big.as_bytes())
        .unwrap()
        .assert_error(413, "body_too_large", None);
    let six = json!({"query": QUERY, "documents": ["a", "b", "c", "d", "e", "f"]}).to_string();
    try_request(p, "POST", "/v2/rerank", &auth, six.as_bytes())
        .unwrap()
        .assert_error(422, "too_many_documents", Some("documents"));
    // More tokens than the queue holds, alone: no retry would help, so not a 429.
    let heavy = json!({"query": QUERY, "documents": vec!["paris is the capital of france and its largest city by far"; 5]}).to_string();
    let r = try_request(p, "POST", "/v2/rerank", &auth, heavy.as_bytes()).unwrap();
    r.assert_error(422, "too_many_tokens", Some("documents"));
    assert!(r.body.contains("--max-queued-tokens"), "{}", r.body);
    assert_eq!(r.header("retry-after"), None);
}

#[test]
fn sigterm_answers_accepted_requests_then_exits_zero() {
    let dir = export_dir();
    let mut s = start(&["--model", &dir], &[]);
    let port = s.port;
    let many: Vec<String> = (0..150)
        .map(|i| format!("passage {i}: the river flows past the old town and its harbour"))
        .collect();
    let body = json!({"query": QUERY, "documents": many, "config": "full"});
    let handle = std::thread::spawn(move || post(port, "/v2/rerank", &body));
    std::thread::sleep(Duration::from_millis(400));
    let pid = s.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let r = handle.join().unwrap();
    assert_eq!(
        r.status, 200,
        "accepted request answered during shutdown: {}",
        r.body
    );
    assert_eq!(r.json()["results"].as_array().unwrap().len(), 150);
    let status = s.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "no longer accepting"
    );
}

#[test]
fn otlp_spans_reach_a_collector_and_honour_traceparent() {
    let collector = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", collector.local_addr().unwrap());
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = bodies.clone();
    std::thread::spawn(move || {
        for stream in collector.incoming() {
            let Ok(mut stream) = stream else { continue };
            stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 65536];
            loop {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                let text = String::from_utf8_lossy(&buf);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        assert!(head.starts_with("POST /v1/traces"), "{head}");
                        sink.lock().unwrap().push_str(body);
                        break;
                    }
                }
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
        }
    });
    let dir = export_dir();
    let s = start(
        &["--model", &dir],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    );
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let r = try_request(
        s.port,
        "POST",
        "/v2/rerank",
        &[
            ("content-type", "application/json"),
            ("traceparent", &format!("00-{trace}-{parent}-01")),
        ],
        json!({"query": QUERY, "documents": docs()})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = bodies.lock().unwrap().clone();
        if ["\"request\"", "\"tokenize\"", "\"queue\"", "\"inference\""]
            .iter()
            .all(|n| text.contains(n))
        {
            assert!(text.contains(trace), "trace id propagated: {text}");
            assert!(
                text.contains(&format!("\"parentSpanId\":\"{parent}\"")),
                "request span is a child of the caller's: {text}"
            );
            assert!(text.contains("service.name"));
            break;
        }
        assert!(Instant::now() < deadline, "spans not received: {text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

//! OpenTelemetry traces over OTLP/HTTP (JSON encoding), enabled when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set (plain `http://` endpoints). Spans: `request`
//! (child of the caller's W3C `traceparent` when given), `tokenize`, `queue`,
//! `inference`. Spans are sent in the background, batched; a collector that is down
//! costs dropped spans, never a failed request.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

#[derive(Debug, Clone)]
pub struct SpanData {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub name: &'static str,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: Vec<(&'static str, String)>,
    pub error: bool,
}

#[derive(Clone)]
pub struct Tracer {
    tx: Option<mpsc::UnboundedSender<SpanData>>,
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a W3C `traceparent` header: `00-<32 hex trace id>-<16 hex span id>-<flags>`.
pub fn parse_traceparent(value: &str) -> Option<([u8; 16], [u8; 8])> {
    let parts: Vec<&str> = value.trim().split('-').collect();
    if parts.len() != 4 || parts[0].len() != 2 || parts[1].len() != 32 || parts[2].len() != 16 {
        return None;
    }
    let decode = |s: &str, out: &mut [u8]| -> Option<()> {
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(())
    };
    let mut trace = [0u8; 16];
    let mut span = [0u8; 8];
    decode(parts[1], &mut trace)?;
    decode(parts[2], &mut span)?;
    if trace == [0; 16] || span == [0; 8] {
        return None;
    }
    Some((trace, span))
}

pub fn new_span_id() -> [u8; 8] {
    rand::rng().random()
}

pub fn new_trace_id() -> [u8; 16] {
    rand::rng().random()
}

impl Tracer {
    pub fn disabled() -> Self {
        Tracer { tx: None }
    }

    /// From `OTEL_EXPORTER_OTLP_ENDPOINT` (and `OTEL_SERVICE_NAME`), if set.
    pub fn from_env() -> Result<Self, String> {
        let Ok(endpoint) = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") else {
            return Ok(Self::disabled());
        };
        let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "mrank".into());
        let rest = endpoint.strip_prefix("http://").ok_or_else(|| {
            format!("OTEL_EXPORTER_OTLP_ENDPOINT={endpoint}: mrank exports OTLP/HTTP to http:// endpoints only")
        })?;
        let (host, base) = match rest.split_once('/') {
            Some((h, p)) => (h.to_string(), format!("/{}", p.trim_end_matches('/'))),
            None => (rest.to_string(), String::new()),
        };
        let path = format!("{base}/v1/traces");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(export_loop(rx, host, path, service));
        Ok(Tracer { tx: Some(tx) })
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn record(&self, span: SpanData) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(span);
        }
    }
}

async fn export_loop(
    mut rx: mpsc::UnboundedReceiver<SpanData>,
    host: String,
    path: String,
    service: String,
) {
    loop {
        let Some(first) = rx.recv().await else { return };
        let mut spans = vec![first];
        tokio::time::sleep(Duration::from_millis(200)).await;
        while let Ok(s) = rx.try_recv() {
            spans.push(s);
        }
        let body = encode(&spans, &service);
        if let Err(e) = post(&host, &path, &body).await {
            super::log::error(&format!("OTLP export to http://{host}{path} failed: {e}"));
        }
    }
}

fn encode(spans: &[SpanData], service: &str) -> String {
    let spans: Vec<serde_json::Value> = spans
        .iter()
        .map(|s| {
            let mut v = serde_json::json!({
                "traceId": hex(&s.trace_id),
                "spanId": hex(&s.span_id),
                "name": s.name,
                "kind": if s.name == "request" { 2 } else { 1 },
                "startTimeUnixNano": s.start_ns.to_string(),
                "endTimeUnixNano": s.end_ns.to_string(),
                "attributes": s.attributes.iter().map(|(k, v)| serde_json::json!({"key": k, "value": {"stringValue": v}})).collect::<Vec<_>>(),
                "status": {"code": if s.error { 2 } else { 1 }},
            });
            if let Some(p) = s.parent {
                v["parentSpanId"] = serde_json::Value::String(hex(&p));
            }
            v
        })
        .collect();
    serde_json::json!({
        "resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
            "scopeSpans": [{"scope": {"name": "mrank", "version": env!("CARGO_PKG_VERSION")}, "spans": spans}],
        }]
    })
    .to_string()
}

async fn post(host: &str, path: &str, body: &str) -> std::io::Result<()> {
    let mut stream =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(host))
            .await
            .map_err(|_| std::io::Error::other("connect timed out"))??;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = [0u8; 12];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut head))
        .await
        .map_err(|_| std::io::Error::other("no answer"))??;
    let status = String::from_utf8_lossy(&head[..n]);
    if !status.starts_with("HTTP/1.1 2") && !status.starts_with("HTTP/1.0 2") {
        return Err(std::io::Error::other(format!(
            "collector answered {status:?}"
        )));
    }
    Ok(())
}

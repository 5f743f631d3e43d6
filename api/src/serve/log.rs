//! Start-up and error logs on stderr: plain lines, or one JSON object per line with
//! `--log-format json` (for log collectors).

use std::sync::atomic::{AtomicBool, Ordering};

static JSON: AtomicBool = AtomicBool::new(false);

pub fn set_json(json: bool) {
    JSON.store(json, Ordering::Relaxed);
}

fn emit(level: &str, message: &str) {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    if JSON.load(Ordering::Relaxed) {
        eprintln!(
            "{}",
            serde_json::json!({"ts": ts, "level": level, "target": "mrank", "message": message})
        );
    } else {
        eprintln!("{level:>5} mrank: {message}");
    }
}

pub fn info(message: &str) {
    emit("INFO", message);
}

pub fn error(message: &str) {
    emit("ERROR", message);
}

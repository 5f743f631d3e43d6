//! `mrank inspect` end to end: every fixture and the embedded default describe
//! themselves; a broken directory gives a clear error and a non-zero exit, never a panic.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn mrank(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mrank"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn inspect_every_fixture() {
    for (name, family) in [
        ("tiny-bert", "bert (bert)"),
        ("tiny-llama", "llama (llama)"),
        ("tiny-mistral", "llama (mistral)"),
        ("tiny-qwen2", "llama (qwen2)"),
        ("tiny-gemma2", "gemma2 (gemma2)"),
    ] {
        let dir = repo().join("fixtures").join(name);
        let (ok, stdout, stderr) = mrank(&["inspect", dir.to_str().unwrap()]);
        assert!(ok, "{name}: {stderr}");
        assert!(
            stdout.contains(&format!("family         {family}")),
            "{name}: {stdout}"
        );
        assert!(
            stdout.contains("full ") && stdout.contains("100.0%"),
            "{name}: {stdout}"
        );
    }
}

#[test]
fn inspect_the_embedded_default() {
    let (ok, stdout, stderr) = mrank(&["inspect"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("layers         6"), "{stdout}");
    assert!(stdout.contains("hidden size    384"), "{stdout}");
    assert!(stdout.contains("vocabulary     30522"), "{stdout}");
    // d3 runs half the layers: half the FLOPs.
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("d3 ") && l.ends_with("50.0%")),
        "{stdout}"
    );
}

#[test]
fn inspect_a_broken_directory_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"architectures": ["BertModel"], "hidden_size": 8"#,
    )
    .unwrap();
    let (ok, _, stderr) = mrank(&["inspect", dir.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("config.json") && stderr.contains("invalid JSON"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    let (ok, _, stderr) = mrank(&["inspect", "/nonexistent/model"]);
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/model"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

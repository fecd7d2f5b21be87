//! The one-shot modes of the real binary: `--diagnose` and `--once`.

use std::process::Command;

fn agent() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_infiniservice"));
    c.env_remove("INFINISERVICE_DEVICE")
        .env("RUST_LOG", "error");
    c
}

fn config(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn diagnose_fails_with_a_reason_when_the_port_is_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(&dir, "[policy]\nallow_unsafe = false\n");
    let out = agent()
        .arg("--config")
        .arg(&cfg)
        .arg("--diagnose")
        .arg("--device")
        .arg(dir.path().join("no-such-port"))
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("FAILED") && text.contains("no such device"),
        "{text}"
    );
    assert!(text.contains("allow_unsafe = false"), "{text}");
}

#[test]
fn diagnose_succeeds_when_the_port_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(&dir, "");
    let port = dir.path().join("port");
    std::fs::write(&port, b"").expect("fake port");
    let out = agent()
        .arg("--config")
        .arg(&cfg)
        .arg("--diagnose")
        .env("INFINISERVICE_DEVICE", &port)
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("from INFINISERVICE_DEVICE"), "{text}");
}

#[test]
fn a_bad_config_is_refused_at_start_with_its_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        &dir,
        "[policy]\nallow_unsafe = true\ndenied_safe_actions = [\"Rebot\"]\n",
    );
    let out = agent()
        .arg("--config")
        .arg(&cfg)
        .arg("--once")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Rebot"));
}

#[test]
fn once_prints_every_collector_as_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(&dir, "");
    let out = agent()
        .arg("--config")
        .arg(&cfg)
        .arg("--once")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snapshot: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    for key in [
        "vm_identification",
        "system_metrics",
        "process_snapshot",
        "port_usage",
        "application_usage",
        "service_inventory",
    ] {
        assert!(snapshot.get(key).is_some(), "{key} missing");
    }
    assert!(
        snapshot["system_metrics"]["metrics"]["memory"]["total_kb"]
            .as_u64()
            .unwrap_or(0)
            > 0
    );
    assert!(
        !snapshot["process_snapshot"]["processes"]
            .as_array()
            .expect("processes")
            .is_empty()
    );
}

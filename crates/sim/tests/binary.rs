//! The `infinibay-sim` binary as a script would run it.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn sockets_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .expect("socket dir readable")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".sock"))
        .count()
}

#[test]
fn sigterm_removes_every_socket_and_prints_totals() {
    let dir = tempfile::tempdir().expect("temp dir");
    let child = Command::new(env!("CARGO_BIN_EXE_infinibay-sim"))
        .args([
            "--vms",
            "600",
            "--interval",
            "0.5",
            "--seed",
            "9",
            "--socket-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("simulator binary starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while sockets_in(dir.path()) < 600 {
        assert!(Instant::now() < deadline, "600 sockets not bound in 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: plain kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0, "SIGTERM delivered");
    let output = child.wait_with_output().expect("simulator exits");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}: {stderr}",
        output.status
    );
    assert!(
        stderr.contains("bound 500/600 sockets"),
        "progress line missing: {stderr}"
    );
    assert_eq!(sockets_in(dir.path()), 0, "sockets left after SIGTERM");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let totals: serde_json::Value = serde_json::from_str(stdout.trim()).expect("totals are JSON");
    assert!(totals["sim_totals"]["bytes"].is_u64());
}

#[test]
fn more_vms_than_descriptors_fail_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_infinibay-sim"))
        .args(["--vms", "10000", "--socket-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|child| child.wait_with_output())
        .expect("simulator binary runs");
    let (_, hard) = infinibay_sim::limits::get_nofile();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if hard >= infinibay_sim::limits::fds_needed(10_000) {
        eprintln!("hard limit {hard} is high enough here; nothing to check");
        return;
    }
    assert!(!output.status.success());
    assert!(
        stderr.contains("file descriptors") && stderr.contains("--first-index"),
        "{stderr}"
    );
    assert_eq!(sockets_in(dir.path()), 0);
}

//! Commands sent by a host over `--listen-unix` to the real agent binary: safe actions that are
//! harmless on this machine, policy refusals, validation, and raw commands with timeouts,
//! cancel, capped output and the concurrency limit. Power and package changes are never run:
//! every test config denies them (see `common::SAFE_DENY`).
#![cfg(target_os = "linux")]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Agent, error_code, wait_group_gone};
use serde_json::json;

const T: Duration = Duration::from_secs(20);

fn safe(id: &str, action: serde_json::Value) -> serde_json::Value {
    json!({"type":"SafeCommand","id":id,"command_type":action})
}

#[test]
fn harmless_safe_actions_succeed_with_structured_data() {
    let agent = Agent::start(false, "");
    let mut host = agent.connect();
    host.send_json(safe("sys", json!({"action":"SystemInfo"})));
    host.send_json(safe("os", json!({"action":"OsInfo"})));
    host.send_json(safe("plist", json!({"action":"ProcessList","limit":5})));
    host.send_json(safe(
        "ptop",
        json!({"action":"ProcessTop","limit":3,"sort_by":"memory"}),
    ));
    host.send_json(safe("svc", json!({"action":"ServiceList"})));

    let sys = host.response("sys", T);
    assert!(sys.success);
    let data = sys.data.expect("data");
    assert_eq!(data["os_type"], "Linux");
    assert!(data["total_memory_kb"].as_u64().unwrap_or(0) > 0);
    assert!(data["cpu_count"].as_u64().unwrap_or(0) >= 1);

    let os = host.response("os", T);
    assert!(os.success);
    assert!(os.data.expect("data")["pretty_name"].is_string());

    let plist = host.response("plist", T);
    assert!(plist.success);
    let procs = plist.data.expect("data");
    let procs = procs.as_array().expect("array of processes");
    assert!(
        !procs.is_empty() && procs.len() <= 5,
        "{} processes",
        procs.len()
    );
    assert!(procs[0]["pid"].as_u64().is_some());

    let ptop = host.response("ptop", T);
    assert!(ptop.success);
    let top = ptop.data.expect("data");
    let top = top.as_array().expect("array");
    assert!(!top.is_empty() && top.len() <= 3);
    let mem: Vec<u64> = top
        .iter()
        .map(|p| p["memory_kb"].as_u64().unwrap_or(0))
        .collect();
    assert!(
        mem.windows(2).all(|w| w[0] >= w[1]),
        "sorted by memory: {mem:?}"
    );

    let svc = host.response("svc", T);
    assert!(svc.success);
    assert!(svc.data.expect("data").is_array());
}

#[test]
fn package_list_and_search_use_the_package_manager() {
    let agent = Agent::start(false, "");
    let mut host = agent.connect();
    host.send_json(safe("list", json!({"action":"PackageList"})));
    host.send_json(safe(
        "search",
        json!({"action":"PackageSearch","query":"coreutils"}),
    ));
    let list = host.response("list", T);
    assert!(list.success, "{list:?}");
    let packages = list.data.expect("data");
    let packages = packages.as_array().expect("array");
    assert!(packages.iter().any(|p| p["name"] == "coreutils"));
    // apt-cache searches the local package lists: no network needed. On a guest without
    // lists (never ran `apt-get update`) it succeeds with no hits.
    let search = host.response("search", T);
    assert!(search.success, "{search:?}");
    let hits = search.data.expect("data");
    let hits = hits.as_array().expect("array");
    let have_lists = std::fs::read_dir("/var/lib/apt/lists")
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with("_Packages"))
        })
        .unwrap_or(false);
    if have_lists {
        assert!(hits.iter().any(|h| h["name"] == "coreutils"), "{hits:?}");
    }
}

#[test]
fn service_status_runs_systemctl_or_says_unsupported_without_systemd() {
    let agent = Agent::start(false, "");
    let mut host = agent.connect();
    host.send_json(safe(
        "st",
        json!({"action":"ServiceControl","service":"ssh","operation":"status"}),
    ));
    let r = host.response("st", T);
    if std::path::Path::new("/run/systemd/system").is_dir() {
        assert!(r.exit_code.is_some(), "systemctl ran: {r:?}");
    } else {
        assert_eq!(error_code(&r), Some("unsupported"), "{r:?}");
    }
}

#[test]
fn process_kill_signals_a_process_we_started() {
    let agent = Agent::start(false, "");
    let mut host = agent.connect();
    let mut child = Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("spawn sleep");
    host.send_json(safe(
        "kill",
        json!({"action":"ProcessKill","pid":child.id(),"signal":"TERM"}),
    ));
    let r = host.response("kill", T);
    assert!(r.success, "{r:?}");
    let status = child.wait().expect("wait");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGTERM));
}

#[test]
fn power_and_package_changes_are_forbidden_by_policy() {
    let agent = Agent::start(false, "");
    let mut host = agent.connect();
    host.send_json(safe("off", json!({"action":"Shutdown"})));
    host.send_json(safe("reboot", json!({"action":"Reboot"})));
    host.send_json(safe(
        "inst",
        json!({"action":"PackageInstall","package":"cowsay"}),
    ));
    host.send_json(safe("upd", json!({"action":"PackageUpdate"})));
    for id in ["off", "reboot", "inst", "upd"] {
        assert_eq!(error_code(&host.response(id, T)), Some("forbidden"), "{id}");
    }
}

#[test]
fn option_like_names_and_windows_only_service_names_are_invalid() {
    let agent = Agent::start(false, "");
    let mut host = agent.connect();
    host.send_json(safe(
        "opt",
        json!({"action":"PackageInstall","package":"-oDebug::NoLocking=1"}),
    ));
    host.send_json(safe(
        "svc",
        json!({"action":"ServiceControl","service":"--all","operation":"stop"}),
    ));
    // The protocol lets a Windows instance name through (for Windows guests); the Linux agent
    // answers `invalid` itself: it is no systemd unit name.
    host.send_json(safe(
        "win",
        json!({"action":"ServiceControl","service":"MSSQL$SQLEXPRESS","operation":"status"}),
    ));
    assert_eq!(error_code(&host.response("opt", T)), Some("invalid"));
    assert_eq!(error_code(&host.response("svc", T)), Some("invalid"));
    let windows_only = host.response("win", T);
    assert_eq!(error_code(&windows_only), Some("invalid"));
    let message = windows_only.error.map(|e| e.message).unwrap_or_default();
    assert!(message.contains("systemd unit name"), "{message}");
}

#[test]
fn unknown_action_gets_unknown_action() {
    let agent = Agent::start(false, "");
    let mut host = agent.connect();
    host.send_json(safe("x", json!({"action":"FormatDisk"})));
    assert_eq!(error_code(&host.response("x", T)), Some("unknown_action"));
}

#[test]
fn an_allow_list_refuses_other_actions() {
    let agent = Agent::start_with_config(
        "[policy]\nallowed_safe_actions = [\"OsInfo\"]\ndenied_safe_actions = [\"Shutdown\", \"Reboot\"]\n",
    );
    let mut host = agent.connect();
    host.send_json(safe("os", json!({"action":"OsInfo"})));
    host.send_json(safe("sys", json!({"action":"SystemInfo"})));
    assert!(host.response("os", T).success);
    assert_eq!(error_code(&host.response("sys", T)), Some("forbidden"));
}

#[test]
fn unsafe_commands_are_forbidden_by_default() {
    let agent = Agent::start(false, "");
    let mut host = agent.connect();
    let marker = agent.dir.path().join("ran");
    host.send_json(json!({"type":"UnsafeCommand","id":"u","raw_command":format!("touch {}", marker.display())}));
    let r = host.response("u", T);
    assert_eq!(error_code(&r), Some("forbidden"));
    std::thread::sleep(Duration::from_millis(200));
    assert!(!marker.exists(), "a forbidden command ran");
}

#[test]
fn unsafe_commands_run_when_the_policy_allows_them() {
    let agent = Agent::start(true, "");
    let mut host = agent.connect();
    let dir = agent.dir.path().display().to_string();
    host.send_json(json!({
        "type":"UnsafeCommand","id":"sh",
        "raw_command":"echo \"$GREETING from $(pwd)\"; echo oops >&2; exit 7",
        "env_vars":{"GREETING":"hi"},"working_dir":dir,"timeout":10
    }));
    host.send_json(json!({"type":"UnsafeCommand","id":"argv","argv":["printf","%s","a;b"]}));
    let r = host.response("sh", T);
    assert!(!r.success);
    assert_eq!(r.exit_code, Some(7));
    assert_eq!(r.stdout, format!("hi from {dir}\n"));
    assert_eq!(r.stderr, "oops\n");
    assert!(r.error.is_none(), "a non-zero exit is not an agent error");
    let r = host.response("argv", T);
    assert!(r.success);
    assert_eq!(r.stdout, "a;b", "argv runs without a shell");
    assert!(
        !agent.log().contains("hi from"),
        "command output must never be logged"
    );
}

/// The pid the command printed first (`echo $$`): its process group id.
fn printed_pgid(stdout: &str) -> u32 {
    stdout
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("the command printed its pid")
}

#[test]
fn a_timeout_kills_the_whole_process_group() {
    let agent = Agent::start(true, "");
    let mut host = agent.connect();
    host.send_json(json!({
        "type":"UnsafeCommand","id":"t",
        "raw_command":"echo $$; sleep 100 & sleep 100","timeout":1
    }));
    let r = host.response("t", T);
    assert_eq!(error_code(&r), Some("timeout"), "{r:?}");
    let pgid = printed_pgid(&r.stdout);
    let left = wait_group_gone(pgid, Duration::from_secs(3));
    assert!(
        left.is_empty(),
        "processes of group {pgid} survived: {left:?}"
    );
}

#[test]
fn cancel_kills_the_process_group_and_answers_cancelled() {
    let agent = Agent::start(true, "");
    let mut host = agent.connect();
    host.send_json(json!({
        "type":"UnsafeCommand","id":"c",
        "raw_command":"echo $$; sleep 100 & sleep 100","timeout":60
    }));
    std::thread::sleep(Duration::from_millis(500));
    host.send_json(json!({"type":"cancel","id":"c"}));
    let r = host.response("c", Duration::from_secs(5));
    assert_eq!(error_code(&r), Some("cancelled"), "{r:?}");
    let pgid = printed_pgid(&r.stdout);
    let left = wait_group_gone(pgid, Duration::from_secs(3));
    assert!(
        left.is_empty(),
        "processes of group {pgid} survived: {left:?}"
    );
}

#[test]
fn twenty_megabytes_of_output_are_capped_and_flagged() {
    let agent = Agent::start(true, "");
    let mut host = agent.connect();
    host.send_json(json!({
        "type":"UnsafeCommand","id":"big",
        "raw_command":"head -c 20000000 /dev/zero | tr '\\0' a; echo tail >&2","timeout":60
    }));
    let r = host.response("big", T);
    assert!(r.success, "{:?}", r.error);
    // 1 MiB per stream, then cut a little more so the whole line fits the host's 1 MiB limit.
    assert!(
        r.stdout.len() <= 1024 * 1024 && r.stdout.len() > 1024 * 1024 - 4096,
        "{} bytes kept",
        r.stdout.len()
    );
    assert!(r.stdout_truncated);
    assert!(r.stdout.bytes().all(|b| b == b'a'));
    assert_eq!(r.stderr, "tail\n");
    assert!(!r.stderr_truncated);
}

#[test]
fn too_many_concurrent_commands_are_answered_busy() {
    let agent = Agent::start(true, "[limits]\nmax_concurrent_commands = 1");
    let mut host = agent.connect();
    host.send_json(json!({"type":"UnsafeCommand","id":"one","raw_command":"sleep 30"}));
    std::thread::sleep(Duration::from_millis(200));
    host.send_json(json!({"type":"UnsafeCommand","id":"two","raw_command":"true"}));
    assert_eq!(error_code(&host.response("two", T)), Some("busy"));
    // Answers that need no process are not limited.
    host.send_json(safe("os", json!({"action":"OsInfo"})));
    assert!(host.response("os", T).success);
    host.send_json(json!({"type":"cancel","id":"one"}));
    assert_eq!(error_code(&host.response("one", T)), Some("cancelled"));
}

#[test]
fn a_duplicate_id_of_a_running_command_is_invalid_and_the_first_still_answers() {
    let agent = Agent::start(true, "");
    let mut host = agent.connect();
    host.send_json(json!({"type":"UnsafeCommand","id":"d","raw_command":"sleep 1; echo first"}));
    std::thread::sleep(Duration::from_millis(200));
    host.send_json(json!({"type":"UnsafeCommand","id":"d","raw_command":"echo second"}));
    let dup = host.response("d", T);
    assert_eq!(error_code(&dup), Some("invalid"));
    let first = host.response("d", T);
    assert_eq!(first.stdout, "first\n");
}

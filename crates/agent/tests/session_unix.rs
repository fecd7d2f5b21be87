//! The agent's session seen from a host over `--listen-unix`: handshake, ping while busy,
//! framing, reconnects and the backlog, live configuration.
#![cfg(target_os = "linux")]

mod common;

use std::time::{Duration, Instant};

use common::{Agent, error_code};
use infinibay_protocol::GuestMessage;
use serde_json::json;

const T: Duration = Duration::from_secs(10);

#[test]
fn hello_is_answered_with_vm_identification() {
    let agent = Agent::start(false, "");
    let mut host = agent.connect();
    // Drain what the agent sent at start (its own identification, first samples).
    let _ = host.collect(Duration::from_millis(300));
    host.hello();
    let id = host.wait_for(T, "vm_identification", |m| {
        matches!(m, GuestMessage::VmIdentification(_))
    });
    let GuestMessage::VmIdentification(id) = id else {
        unreachable!()
    };
    assert_eq!(id.protocol_version, 1);
    assert_eq!(id.os, "linux");
    assert_eq!(id.claimed_vm_id.as_deref(), Some("test-vm"));
    assert!(!id.kernel.is_empty() && !id.hostname.is_empty());
    assert!(id.capabilities.iter().any(|c| c == "safe_commands"));
    assert!(
        !id.capabilities.iter().any(|c| c == "unsafe_commands"),
        "unsafe is off by default and must not be advertised"
    );
}

#[test]
fn the_agent_identifies_itself_at_start_without_being_asked() {
    let agent = Agent::start(false, "");
    let mut host = agent.connect();
    host.wait_for(T, "vm_identification", |m| {
        matches!(m, GuestMessage::VmIdentification(_))
    });
}

#[test]
fn ping_is_answered_quickly_while_a_ten_second_command_runs() {
    let agent = Agent::start(true, "");
    let mut host = agent.connect();
    host.hello();
    host.send_json(
        json!({"type":"UnsafeCommand","id":"long","raw_command":"sleep 10","timeout":30}),
    );
    std::thread::sleep(Duration::from_millis(300));
    let mut worst = Duration::ZERO;
    for i in 0..5 {
        let id = format!("p{i}");
        let sent = Instant::now();
        host.send_json(json!({"type":"ping","id":id}));
        host.wait_for(
            T,
            "pong",
            |m| matches!(m, GuestMessage::Pong(p) if p.id.as_deref() == Some(id.as_str())),
        );
        worst = worst.max(sent.elapsed());
    }
    println!("ping round trip while a command runs: worst of 5 = {worst:?}");
    assert!(worst < Duration::from_millis(500), "pong took {worst:?}");
    host.send_json(json!({"type":"cancel","id":"long"}));
    let r = host.response("long", T);
    assert_eq!(error_code(&r), Some("cancelled"));
}

#[test]
fn two_commands_in_one_write_are_both_answered() {
    let agent = Agent::start(false, "");
    let mut host = agent.connect();
    host.send(
        b"{\"type\":\"SafeCommand\",\"id\":\"a\",\"command_type\":{\"action\":\"OsInfo\"}}\n{\"type\":\"SafeCommand\",\"id\":\"b\",\"command_type\":{\"action\":\"SystemInfo\"}}\n",
    );
    assert!(host.response("a", T).success);
    assert!(host.response("b", T).success);
}

#[test]
fn a_command_split_across_writes_is_answered() {
    let agent = Agent::start(false, "");
    let mut host = agent.connect();
    let line =
        b"{\"type\":\"SafeCommand\",\"id\":\"split\",\"command_type\":{\"action\":\"OsInfo\"}}\n";
    for part in line.chunks(7) {
        host.send(part);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(host.response("split", T).success);
}

#[test]
fn response_finished_while_the_host_is_away_is_delivered_after_reconnect() {
    let agent = Agent::start(true, "");
    {
        let mut host = agent.connect();
        host.hello();
        host.send_json(json!({"type":"UnsafeCommand","id":"late","raw_command":"sleep 1; echo done-late","timeout":10}));
        // Let the agent read it, then hang up before it finishes.
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let mut host = agent.connect();
    host.hello();
    let r = host.response("late", T);
    assert!(r.success);
    assert_eq!(r.stdout, "done-late\n");
}

#[test]
fn while_the_host_is_away_only_the_newest_sample_of_each_kind_is_kept() {
    let agent = Agent::start(false, "");
    {
        let mut host = agent.connect();
        host.send_json(json!({"type":"configure","id":"c","collection_interval":1}));
        host.response("c", T);
    }
    // About five samples are taken while nobody listens.
    std::thread::sleep(Duration::from_millis(5500));
    let reconnect = chrono::Utc::now();
    let mut host = agent.connect();
    let first = host.collect(Duration::from_millis(500));
    let taken_while_away = first
        .iter()
        .filter(|m| {
            matches!(m, GuestMessage::SystemMetrics(s)
                if s.timestamp.as_ref().is_some_and(|t| t.0 < reconnect))
        })
        .count();
    assert_eq!(
        taken_while_away, 1,
        "backlog must hold one system_metrics, got {taken_while_away}"
    );
}

#[test]
fn configure_changes_interval_and_collectors_live() {
    let agent = Agent::start(false, "");
    let mut host = agent.connect();
    let _ = host.collect(Duration::from_millis(300));
    host.send_json(json!({
        "type":"configure","id":"cfg","collection_interval":1,
        "collectors":{"process_snapshot":false}
    }));
    let r = host.response("cfg", T);
    assert!(r.success);
    let data = r.data.expect("effective settings");
    assert_eq!(data["collection_interval"], 1);
    assert_eq!(data["collectors"]["process_snapshot"], false);
    let after = host.collect(Duration::from_millis(2600));
    let metrics = after
        .iter()
        .filter(|m| matches!(m, GuestMessage::SystemMetrics(_)))
        .count();
    let snapshots = after
        .iter()
        .filter(|m| matches!(m, GuestMessage::ProcessSnapshot(_)))
        .count();
    assert!(metrics >= 2, "expected samples every second, got {metrics}");
    assert_eq!(snapshots, 0);

    host.send_json(json!({"type":"configure","id":"bad","collection_interval":0}));
    assert_eq!(error_code(&host.response("bad", T)), Some("invalid"));
}

#[test]
fn one_host_at_a_time_like_qemu_server_chardev() {
    let agent = Agent::start(false, "");
    let mut first = agent.connect();
    first.hello();
    first.wait_for(T, "vm_identification", |m| {
        matches!(m, GuestMessage::VmIdentification(_))
    });
    let mut second = agent.connect();
    second.send_json(json!({"type":"ping","id":"second"}));
    assert!(
        second
            .collect(Duration::from_millis(700))
            .iter()
            .all(|m| !matches!(m, GuestMessage::Pong(_))),
        "a second client must wait while the first is connected"
    );
    drop(first);
    second.wait_for(
        T,
        "pong",
        |m| matches!(m, GuestMessage::Pong(p) if p.id.as_deref() == Some("second")),
    );
}

#[test]
fn garbage_and_unknown_types_are_ignored_and_the_stream_goes_on() {
    let agent = Agent::start(false, "");
    let mut host = agent.connect();
    host.send(
        b"hello world, not json\n{\"type\":\"Frobnicate\"}\n{\"type\":\"ping\",\"id\":\"after\"}\n",
    );
    let got = host.collect(Duration::from_millis(800));
    // The protocol: the agent logs and ignores lines it cannot answer.
    assert!(
        !got.iter()
            .any(|m| matches!(m, GuestMessage::Response(_) | GuestMessage::Error(_)))
    );
    assert!(agent.log().contains("bad line from the host ignored"));
    assert!(
        got.iter()
            .any(|m| matches!(m, GuestMessage::Pong(p) if p.id.as_deref() == Some("after")))
    );
}

#[test]
fn an_unreadable_command_with_an_id_is_answered_invalid() {
    let agent = Agent::start(false, "");
    let mut host = agent.connect();
    host.send_json(
        json!({"type":"SafeCommand","id":"bad","command_type":{"action":"ProcessKill","pid":"x"}}),
    );
    assert_eq!(error_code(&host.response("bad", T)), Some("invalid"));
}

/// Every line the original backend sent its agent, replayed: each command id is answered
/// exactly once, garbage is ignored, `{"type":"Metrics"}` gets a sample.
#[test]
fn the_original_backends_commands_are_each_answered_once() {
    let agent = Agent::start(true, "");
    let mut host = agent.connect();
    let _ = host.collect(Duration::from_millis(300));
    let text = include_str!("data/legacy_host_commands.jsonl");
    // The capture shows command c5 split over two writes; a newline was the split point.
    let (head, tail) = text
        .split_once("\"id\"\n")
        .expect("the split line is in the capture");
    host.send(head.as_bytes());
    host.send(b"\"id\"");
    std::thread::sleep(Duration::from_millis(50));
    host.send(tail.as_bytes());
    let ids = [
        "c1", "c2", "c3", "c4a", "c4b", "c5", "c6", "c7", "c8", "c9", "c10", "c11", "c12",
    ];
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(m) = host.next(Duration::from_millis(200)) {
            got.push(m);
        }
        let answered = got
            .iter()
            .filter(|m| matches!(m, GuestMessage::Response(_)))
            .count();
        if answered >= ids.len() {
            got.extend(host.collect(Duration::from_millis(500)));
            break;
        }
    }
    let responses: Vec<_> = got
        .iter()
        .filter_map(|m| match m {
            GuestMessage::Response(r) => Some(r),
            _ => None,
        })
        .collect();
    for id in ids {
        let n = responses.iter().filter(|r| r.id == id).count();
        assert_eq!(n, 1, "command {id} answered {n} times");
    }
    let by_id = |id: &str| responses.iter().find(|r| r.id == id).expect("answered");
    assert_eq!(by_id("c3").stdout, "hello\n0\n");
    assert_eq!(by_id("c5").stdout, "split-line-test\n");
    assert_eq!(by_id("c7").stdout, "slept\n");
    assert_eq!(error_code(by_id("c9")), Some("forbidden"));
    assert_eq!(error_code(by_id("c10")), Some("invalid"));
    assert_eq!(by_id("c11").stdout.len(), 30000);
    assert!(
        got.iter()
            .any(|m| matches!(m, GuestMessage::SystemMetrics(_))),
        "the legacy Metrics request gets a sample"
    );
}

#[test]
fn inventories_are_sent_only_when_changed_and_again_after_hello() {
    let agent = Agent::start(false, "[limits]\ninventory_interval = 1");
    let mut host = agent.connect();
    let apps = |messages: &[GuestMessage]| {
        messages
            .iter()
            .filter(|m| matches!(m, GuestMessage::ApplicationUsage(_)))
            .count()
    };
    // The first check is ~2 s after start; then one check a second, each unchanged.
    let first = host.collect(Duration::from_millis(5000));
    assert_eq!(apps(&first), 1, "an unchanged inventory is sent once");
    host.hello();
    let after_hello = host.collect(Duration::from_millis(2000));
    assert_eq!(
        apps(&after_hello),
        1,
        "a hello makes the agent send it again"
    );
}

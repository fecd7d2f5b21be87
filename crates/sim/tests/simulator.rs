//! The simulator seen from the host's side, over its real UNIX sockets.

mod common;

use std::time::{Duration, Instant};

use common::{HostSide, response_of};
use infinibay_protocol::message::{
    Cancel, Configure, ErrorCode, Ping, SafeAction, SafeCommand, UnsafeCommand,
};
use infinibay_protocol::{GuestMessage, HostMessage};
use infinibay_sim::{Profile, SimArgs, Simulator};

fn args(dir: &std::path::Path, vms: usize, interval_ms: u64, profile: Profile) -> SimArgs {
    let mut args = SimArgs::new(vms, dir);
    args.interval = Duration::from_millis(interval_ms);
    args.profile = profile;
    args
}

fn is_identification(m: &GuestMessage) -> bool {
    matches!(m, GuestMessage::VmIdentification(_))
}

fn is_metrics(m: &GuestMessage) -> bool {
    matches!(m, GuestMessage::SystemMetrics(_))
}

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_hello_gets_identification_and_ping_gets_pong() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sim = Simulator::start(&args(dir.path(), 3, 1000, Profile::Small))
        .await
        .expect("simulator starts");
    let vm = &sim.vms()[1];
    assert_eq!(
        vm.socket,
        dir.path().join(format!("vm-{}.sock", vm.id)),
        "socket is named vm-<uuid>.sock"
    );
    let mut host = HostSide::connect(&vm.socket).await;
    // The identification the agent wrote at its start, held until the first client.
    host.wait_for(WAIT, is_identification)
        .await
        .expect("identification at first connect");
    host.hello().await;
    let line = host
        .wait_for(WAIT, is_identification)
        .await
        .expect("hello is answered with vm_identification");
    let GuestMessage::VmIdentification(ident) = &line.messages[0] else {
        unreachable!()
    };
    assert_eq!(ident.protocol_version, 1);
    assert_eq!(ident.hostname, "sim-00001");

    let sent = Instant::now();
    host.send(&HostMessage::Ping(Ping {
        id: Some("p-1".into()),
        timestamp: None,
    }))
    .await;
    let pong = host
        .wait_for(WAIT, |m| matches!(m, GuestMessage::Pong(_)))
        .await
        .expect("ping is answered");
    let GuestMessage::Pong(pong) = &pong.messages[0] else {
        unreachable!()
    };
    assert_eq!(pong.id.as_deref(), Some("p-1"));
    eprintln!("ping round trip {:?}", sent.elapsed());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_profile_sends_one_kilobyte_metrics_at_the_interval() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sim = Simulator::start(&args(dir.path(), 2, 200, Profile::Small))
        .await
        .expect("simulator starts");
    let mut host = HostSide::connect(&sim.vms()[0].socket).await;
    host.wait_for(WAIT, is_metrics)
        .await
        .expect("a first sample");
    let lines = host.collect_for(Duration::from_millis(2100)).await;
    let samples: Vec<_> = lines
        .iter()
        .filter(|l| l.messages.iter().any(is_metrics))
        .collect();
    // 2.1 s at 0.2 s: about 10; lenient for a loaded 2-core machine.
    assert!(
        (7..=13).contains(&samples.len()),
        "{} samples in 2.1 s at a 0.2 s interval",
        samples.len()
    );
    for sample in &samples {
        assert!(
            (700..1600).contains(&sample.raw.len()),
            "system_metrics of {} bytes is not ~1 KB",
            sample.raw.len()
        );
    }
    let gaps: Vec<_> = samples
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at))
        .collect();
    let mean = gaps.iter().sum::<Duration>() / gaps.len() as u32;
    assert!(
        mean > Duration::from_millis(150) && mean < Duration::from_millis(260),
        "mean gap {mean:?} at a 200 ms interval"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typical_profile_sends_about_64_kb_per_interval() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sim = Simulator::start(&args(dir.path(), 1, 300, Profile::Typical))
        .await
        .expect("simulator starts");
    let mut host = HostSide::connect(&sim.vms()[0].socket).await;
    host.wait_for(WAIT, is_metrics)
        .await
        .expect("a first sample");
    // The rest of that interval's sample follows the system_metrics line.
    let mut bytes = 0;
    let (mut processes, mut services, mut ports) = (0, 0, 0);
    for _ in 0..3 {
        let line = host.next_line(WAIT).await.expect("the rest of the sample");
        bytes += line.raw.len();
        match &line.messages[0] {
            GuestMessage::ProcessSnapshot(p) => processes = p.processes.len(),
            GuestMessage::ServiceInventory(s) => services = s.services.len(),
            GuestMessage::PortUsage(p) => ports = p.ports.len(),
            other => panic!("unexpected {}", other.kind()),
        }
    }
    assert_eq!((processes, services, ports), (150, 100, 40));
    let metrics = host.wait_for(WAIT, is_metrics).await.expect("next sample");
    bytes += metrics.raw.len();
    assert!(
        (48_000..90_000).contains(&bytes),
        "typical sample is {bytes} bytes, not ~64 KB"
    );
    sim.shutdown().await;
}

async fn command(
    host: &mut HostSide,
    message: HostMessage,
) -> infinibay_protocol::message::CommandResponse {
    let id = message.id().expect("commands have ids").to_owned();
    host.send(&message).await;
    let line = host
        .wait_for(
            WAIT,
            |m| matches!(m, GuestMessage::Response(r) if r.id == id),
        )
        .await
        .unwrap_or_else(|| panic!("command {id} answered"));
    response_of(&line).expect("a response").clone()
}

fn safe(id: &str, action: SafeAction) -> HostMessage {
    HostMessage::SafeCommand(SafeCommand {
        id: id.into(),
        command_type: action,
        timeout: None,
    })
}

fn shell(id: &str, command: &str, timeout: Option<u64>) -> HostMessage {
    HostMessage::UnsafeCommand(UnsafeCommand {
        id: id.into(),
        raw_command: Some(command.into()),
        timeout,
        ..UnsafeCommand::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_answered_with_plausible_responses() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sim = Simulator::start(&args(dir.path(), 2, 1000, Profile::Small))
        .await
        .expect("simulator starts");
    let mut host = HostSide::connect(&sim.vms()[0].socket).await;
    host.hello().await;

    let info = command(&mut host, safe("c1", SafeAction::SystemInfo)).await;
    assert!(info.success);
    assert_eq!(
        info.data.as_ref().and_then(|d| d["hostname"].as_str()),
        Some("sim-00000")
    );

    let echo = command(&mut host, shell("c2", "echo hello world", Some(5))).await;
    assert!(echo.success);
    assert_eq!(echo.stdout, "hello world\n");
    assert_eq!(echo.exit_code, Some(0));

    let failed = command(&mut host, shell("c3", "false", None)).await;
    assert!(!failed.success);
    assert_eq!(failed.exit_code, Some(1));

    let list = command(
        &mut host,
        safe("c4", SafeAction::ProcessList { limit: Some(2) }),
    )
    .await;
    assert_eq!(
        list.data.as_ref().and_then(|d| d.as_array()).map(Vec::len),
        Some(2)
    );

    let unknown = command(
        &mut host,
        safe(
            "c5",
            SafeAction::Unknown {
                action: "FormatDisk".into(),
            },
        ),
    )
    .await;
    assert_eq!(
        unknown.error.map(|e| e.code),
        Some(ErrorCode::UnknownAction)
    );

    let init = command(
        &mut host,
        safe(
            "c6",
            SafeAction::ProcessKill {
                pid: 1,
                force: None,
                signal: None,
            },
        ),
    )
    .await;
    assert_eq!(init.error.map(|e| e.code), Some(ErrorCode::Invalid));

    // A command with bad parameters still gets its `invalid` answer by id.
    host.send_raw(
        r#"{"type":"SafeCommand","id":"c7","command_type":{"action":"ProcessKill","pid":"x"}}"#,
    )
    .await;
    host.send_raw("\n").await;
    let line = host
        .wait_for(
            WAIT,
            |m| matches!(m, GuestMessage::Response(r) if r.id == "c7"),
        )
        .await
        .expect("malformed command answered");
    assert_eq!(
        response_of(&line)
            .and_then(|r| r.error.as_ref())
            .map(|e| e.code),
        Some(ErrorCode::Invalid)
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_command_can_be_cancelled_or_time_out_while_ping_is_answered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sim = Simulator::start(&args(dir.path(), 1, 1000, Profile::Small))
        .await
        .expect("simulator starts");
    let mut host = HostSide::connect(&sim.vms()[0].socket).await;

    host.send(&shell("long", "sleep 30", Some(60))).await;
    host.send(&shell("short", "sleep 5", Some(1))).await;
    // Ping is answered while both run.
    let sent = Instant::now();
    host.send(&HostMessage::Ping(Ping {
        id: Some("p".into()),
        timestamp: None,
    }))
    .await;
    host.wait_for(WAIT, |m| matches!(m, GuestMessage::Pong(_)))
        .await
        .expect("pong while commands run");
    let ping_latency = sent.elapsed();
    assert!(
        ping_latency < Duration::from_millis(500),
        "ping took {ping_latency:?}"
    );

    host.send(&HostMessage::Cancel(Cancel { id: "long".into() }))
        .await;
    let cancelled = host
        .wait_for(
            WAIT,
            |m| matches!(m, GuestMessage::Response(r) if r.id == "long"),
        )
        .await
        .expect("cancelled command answers");
    assert_eq!(
        response_of(&cancelled)
            .and_then(|r| r.error.as_ref())
            .map(|e| e.code),
        Some(ErrorCode::Cancelled)
    );
    let timed_out = host
        .wait_for(
            WAIT,
            |m| matches!(m, GuestMessage::Response(r) if r.id == "short"),
        )
        .await
        .expect("timed-out command answers");
    assert_eq!(
        response_of(&timed_out)
            .and_then(|r| r.error.as_ref())
            .map(|e| e.code),
        Some(ErrorCode::Timeout)
    );
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "timeout after {took:?}"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configure_is_acknowledged_and_switches_collectors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sim = Simulator::start(&args(dir.path(), 1, 200, Profile::Typical))
        .await
        .expect("simulator starts");
    let mut host = HostSide::connect(&sim.vms()[0].socket).await;
    let configure = Configure {
        id: Some("cfg".into()),
        collection_interval: Some(1),
        collectors: Some(infinibay_protocol::message::CollectorSwitches {
            process_snapshot: Some(false),
            service_inventory: Some(false),
            port_usage: Some(false),
            ..Default::default()
        }),
        ..Configure::default()
    };
    host.send(&HostMessage::Configure(configure)).await;
    let ack = host
        .wait_for(
            WAIT,
            |m| matches!(m, GuestMessage::Response(r) if r.id == "cfg"),
        )
        .await
        .expect("configure with an id is answered");
    let data = response_of(&ack)
        .and_then(|r| r.data.clone())
        .expect("settings");
    assert_eq!(data["collection_interval_secs"].as_f64(), Some(1.0));
    // Lines already in flight may still carry inventories; after them only system_metrics.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = host.collect_for(Duration::from_millis(2600)).await;
    let kinds: Vec<_> = lines
        .iter()
        .skip_while(|l| !l.messages.iter().any(is_metrics))
        .flat_map(|l| l.messages.iter().map(|m| m.kind()))
        .collect();
    let metrics = kinds.iter().filter(|k| **k == "system_metrics").count();
    assert!(kinds.iter().all(|k| *k == "system_metrics"), "{kinds:?}");
    assert!(
        (1..=4).contains(&metrics),
        "{metrics} samples in 2.6 s at 1 s"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_profile_speaks_the_original_agents_format() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sim = Simulator::start(&args(dir.path(), 1, 200, Profile::Legacy))
        .await
        .expect("simulator starts");
    let mut host = HostSide::connect(&sim.vms()[0].socket).await;
    host.hello().await;
    host.send(&HostMessage::Ping(Ping {
        id: Some("p".into()),
        timestamp: None,
    }))
    .await;
    host.send(&safe("c1", SafeAction::SystemInfo)).await;
    let lines = host.collect_for(Duration::from_millis(1100)).await;
    let mut saw_metrics = 0;
    let mut saw_response = false;
    for line in &lines {
        let raw: serde_json::Value =
            serde_json::from_slice(&line.raw).expect("legacy lines are JSON");
        match raw.get("type").and_then(|t| t.as_str()) {
            Some("metrics") => {
                saw_metrics += 1;
                let kinds: Vec<_> = line.messages.iter().map(|m| m.kind()).collect();
                assert!(
                    kinds.contains(&"system_metrics")
                        && kinds.contains(&"process_snapshot")
                        && kinds.contains(&"port_usage"),
                    "{kinds:?}"
                );
                assert!(raw["data"]["system"]["processes"].as_array().map(Vec::len) == Some(60));
            }
            Some("connection_status") => {}
            None => {
                // The original agent's responses carry no `type`.
                let response = response_of(line).expect("untyped line is a response");
                assert_eq!(response.id, "c1");
                assert!(response.success);
                saw_response = true;
            }
            Some(other) => panic!("legacy agent sent `{other}`"),
        }
        assert!(
            !line
                .messages
                .iter()
                .any(|m| matches!(m, GuestMessage::Pong(p) if p.id.is_some())),
            "the original agent does not answer ping"
        );
    }
    assert!(saw_response, "SafeCommand answered");
    assert!(
        saw_metrics >= 3,
        "{saw_metrics} metrics lines in 1.1 s at 0.2 s"
    );
    // No vm_identification on the wire: the host synthesises it from the first metrics.
    assert!(
        !lines
            .iter()
            .any(|l| l.raw.starts_with(br#"{"type":"vm_identification""#))
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_vm_sends_as_fast_as_read_and_stops_when_not_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut sim_args = args(dir.path(), 2, 1000, Profile::Small);
    sim_args.flood = 1;
    let sim = Simulator::start(&sim_args).await.expect("simulator starts");
    assert!(sim.vms()[0].flood && !sim.vms()[1].flood);

    let mut flooder = HostSide::connect(&sim.vms()[0].socket).await;
    let mut calm = HostSide::connect(&sim.vms()[1].socket).await;
    let lines = flooder.collect_for(Duration::from_secs(1)).await;
    let bytes: usize = lines.iter().map(|l| l.raw.len()).sum();
    eprintln!("flood: {} lines, {bytes} bytes in 1 s", lines.len());
    assert!(
        lines.len() > 100,
        "only {} lines in a second of flood",
        lines.len()
    );
    assert!(lines.iter().any(|l| {
        l.messages
            .iter()
            .any(|m| matches!(m, GuestMessage::ProcessSnapshot(p) if p.processes.len() == 150))
    }));
    // The other VM keeps its pace.
    let calm_lines = calm.collect_for(Duration::from_millis(100)).await;
    assert!(calm_lines.len() <= 3);

    // Stop reading: the flooder must block on the full socket, not queue in memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = sim.stats().snapshot().bytes;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let after = sim.stats().snapshot().bytes;
    assert!(
        after - before < 1_000_000,
        "{} bytes written in 0.7 s to a client that does not read",
        after - before
    );
    // And a command to the flooding VM is still answered between its messages.
    flooder
        .send(&HostMessage::Ping(Ping {
            id: Some("fp".into()),
            timestamp: None,
        }))
        .await;
    flooder
        .wait_for(
            Duration::from_secs(10),
            |m| matches!(m, GuestMessage::Pong(p) if p.id.as_deref() == Some("fp")),
        )
        .await
        .expect("flooding VM answers ping");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_at_a_time_and_the_next_is_served_after_a_disconnect() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sim = Simulator::start(&args(dir.path(), 1, 100, Profile::Small))
        .await
        .expect("simulator starts");
    let socket = sim.vms()[0].socket.clone();
    let mut first = HostSide::connect(&socket).await;
    first
        .wait_for(WAIT, is_metrics)
        .await
        .expect("first client gets samples");
    // Like QEMU, a second client waits in the backlog while the first is connected.
    let mut second = HostSide::connect(&socket).await;
    assert!(
        second.next_line(Duration::from_millis(400)).await.is_none(),
        "second client served while the first is connected"
    );
    drop(first);
    second
        .wait_for(WAIT, is_metrics)
        .await
        .expect("second client served after the first left");
    drop(second);
    let mut third = HostSide::connect(&socket).await;
    third.hello().await;
    third
        .wait_for(WAIT, is_identification)
        .await
        .expect("a reconnecting host gets identification after hello");
    assert!(sim.stats().snapshot().connections >= 3);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_client_only_the_newest_sample_is_kept() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sim = Simulator::start(&args(dir.path(), 1, 100, Profile::Small))
        .await
        .expect("simulator starts");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut host = HostSide::connect(&sim.vms()[0].socket).await;
    let lines = host.collect_for(Duration::from_millis(150)).await;
    let samples = lines
        .iter()
        .filter(|l| l.messages.iter().any(is_metrics))
        .count();
    // One kept sample, plus at most two fresh ticks in 150 ms at 100 ms.
    assert!(
        (1..=3).contains(&samples),
        "{samples} samples delivered after 1 s without a client"
    );
    let coalesced = sim.stats().snapshot().ticks_coalesced;
    assert!(
        coalesced >= 6,
        "only {coalesced} ticks coalesced in 1 s at 100 ms"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_stable_per_seed_and_sockets_are_removed_at_shutdown() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut first_args = args(dir.path(), 20, 1000, Profile::Small);
    first_args.seed = 42;
    let sim = Simulator::start(&first_args)
        .await
        .expect("simulator starts");
    let ids: Vec<_> = sim.vms().iter().map(|v| v.id).collect();
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 20);
    sim.shutdown().await;
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("dir").count(),
        0,
        "sockets left behind"
    );

    let sim = Simulator::start(&first_args)
        .await
        .expect("simulator restarts");
    let again: Vec<_> = sim.vms().iter().map(|v| v.id).collect();
    assert_eq!(ids, again, "same seed, same ids");
    sim.shutdown().await;

    let mut split = first_args.clone();
    split.first_index = 10;
    split.vms = 10;
    let sim = Simulator::start(&split).await.expect("second half starts");
    let half: Vec<_> = sim.vms().iter().map(|v| v.id).collect();
    assert_eq!(half, ids[10..], "--first-index continues the same sequence");
    sim.shutdown().await;
}

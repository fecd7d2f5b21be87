//! The original InfiniService agent's real messages decode into the v1 model.

use infinibay_protocol::message::{ErrorCode, GuestMessage, HostMessage, SafeAction};
use infinibay_protocol::sanitize::{Limits, sanitize};
use infinibay_protocol::{DecodeError, GuestStreamDecoder, HostStreamDecoder, decode_guest_line};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/legacy");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).expect("fixture present")
}

/// The pretty-printed capture as the one line the agent really sends.
fn metrics_line() -> Vec<u8> {
    let value: serde_json::Value =
        serde_json::from_slice(&fixture("metrics_full_redacted_pretty.json")).expect("json");
    let mut line = serde_json::to_vec(&value).expect("serializes");
    line.push(b'\n');
    line
}

fn decode_stream(bytes: &[u8]) -> Vec<Result<GuestMessage, DecodeError>> {
    let mut decoder = GuestStreamDecoder::default();
    let mut out = Vec::new();
    decoder.decode(bytes, |item| out.push(item));
    out
}

#[test]
fn legacy_metrics_split_into_identification_metrics_processes_and_ports() {
    let messages: Vec<GuestMessage> = decode_stream(&metrics_line())
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("decodes");
    let kinds: Vec<&str> = messages.iter().map(GuestMessage::kind).collect();
    assert_eq!(
        kinds,
        [
            "vm_identification",
            "system_metrics",
            "process_snapshot",
            "port_usage"
        ]
    );

    let GuestMessage::VmIdentification(id) = &messages[0] else {
        unreachable!()
    };
    assert_eq!(id.hostname, "vm");
    assert_eq!(id.kernel, "6.18.44-fc-v595");
    assert_eq!(id.os_version, "Debian GNU/Linux 12");
    assert_eq!(id.protocol_version, 0);

    let GuestMessage::SystemMetrics(m) = &messages[1] else {
        unreachable!()
    };
    assert!((m.metrics.cpu.usage_percent - 45.35117).abs() < 1e-9);
    assert_eq!(m.metrics.memory.total_kb, 24_684_096);
    assert_eq!(m.metrics.memory.swap_total_kb, None);
    assert_eq!(m.metrics.system.uptime, 404);
    assert!((m.metrics.system.load_average.load1min - 1.75).abs() < 1e-9);
    let eth0 = &m.metrics.network.stats[0];
    assert_eq!(eth0.interface, "eth0");
    assert_eq!(eth0.ip_addresses, ["192.0.2.2"]);
    // The first legacy message carries totals.
    assert_eq!(eth0.bytes_received, Some(0));
    assert_eq!(eth0.bytes_received_per_sec, None);

    let GuestMessage::ProcessSnapshot(p) = &messages[2] else {
        unreachable!()
    };
    assert_eq!(p.processes.len(), 20);
    assert_eq!(p.processes[0].pid, 1);
    assert_eq!(p.processes[0].ppid, Some(0));
    assert_eq!(p.processes[0].state.as_deref(), Some("sleeping"));

    let GuestMessage::PortUsage(ports) = &messages[3] else {
        unreachable!()
    };
    assert_eq!(ports.ports[0].port, 2024);
    assert_eq!(ports.ports[0].protocol, "tcp");
}

/// The capture has no Windows services (it is from a Linux guest); these records have the
/// fields the original agent's Windows build writes (`name`, `display_name`, `state`,
/// `start_type`), in the console's words and WMI's.
#[test]
fn legacy_windows_services_keep_their_start_type_in_our_words() {
    let mut value: serde_json::Value =
        serde_json::from_slice(&fixture("metrics_full_redacted_pretty.json")).expect("json");
    value["data"]["system"]["windows_services"] = serde_json::json!([
        {"name":"Spooler","display_name":"Print Spooler","state":"Running","start_type":"Automatic"},
        {"name":"MSSQL$SQLEXPRESS","display_name":"SQL Server (SQLEXPRESS)","state":"Stopped","start_type":"Manual"},
        {"name":"BITS","state":"Running","start_type":"Automatic (Delayed Start)"},
        {"name":"Fax","state":"Stopped","start_type":"Disabled"},
        {"name":"odd","state":"Stopped","start_type":"Sometimes"},
    ]);
    let mut line = serde_json::to_vec(&value).expect("serializes");
    line.push(b'\n');
    let messages: Vec<GuestMessage> = decode_stream(&line)
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("decodes");
    let Some(GuestMessage::ServiceInventory(inventory)) = messages.last() else {
        panic!("no service inventory: {messages:?}")
    };
    let summary: Vec<_> = inventory
        .services
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.start_type.as_deref(),
                s.enabled,
                s.load_state.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("Spooler", Some("auto"), Some(true), None),
            ("MSSQL$SQLEXPRESS", Some("manual"), Some(false), None),
            ("BITS", Some("auto-delayed"), Some(true), None),
            ("Fax", Some("disabled"), Some(false), None),
            ("odd", Some("sometimes"), Some(false), None),
        ]
    );
}

#[test]
fn later_legacy_metrics_on_a_connection_are_read_as_rates() {
    let mut twice = metrics_line();
    twice.extend(metrics_line());
    let messages: Vec<GuestMessage> = decode_stream(&twice)
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("decodes");
    // Identification only once per connection.
    assert_eq!(
        messages
            .iter()
            .filter(|m| m.kind() == "vm_identification")
            .count(),
        1
    );
    let second = messages
        .iter()
        .filter_map(|m| match m {
            GuestMessage::SystemMetrics(m) => Some(m),
            _ => None,
        })
        .nth(1)
        .expect("two samples");
    let eth0 = &second.metrics.network.stats[0];
    assert_eq!(eth0.bytes_received, None);
    assert_eq!(eth0.bytes_received_per_sec, Some(0.0));
}

#[test]
fn legacy_process_cpu_above_all_cores_is_clamped_by_sanitize() {
    let mut messages = decode_guest_line(&metrics_line()).expect("decodes");
    let limits = Limits {
        max_cores: 2,
        ..Limits::default()
    };
    let report = sanitize(&mut messages[2], &limits);
    let GuestMessage::ProcessSnapshot(p) = &messages[2] else {
        unreachable!()
    };
    assert!(!report.is_clean());
    assert_eq!(p.processes[0].cpu_percent, 200.0);
}

#[test]
fn untyped_legacy_responses_decode_as_responses() {
    for (file, id, command_type) in [
        ("command_response_c1.json", "c1", "safe"),
        ("command_response_c2.json", "c2", "safe"),
        ("command_response_c3.json", "c3", "unsafe"),
        ("command_response_c8.json", "c8", "safe"),
    ] {
        let messages = decode_guest_line(&fixture(file)).expect(file);
        let [GuestMessage::Response(r)] = messages.as_slice() else {
            panic!("{file}: expected one response, got {messages:?}")
        };
        assert_eq!(r.id, id);
        assert_eq!(r.command_type.as_deref(), Some(command_type));
    }
    let c3 = decode_guest_line(&fixture("command_response_c3.json")).expect("c3");
    let GuestMessage::Response(r) = &c3[0] else {
        unreachable!()
    };
    assert_eq!(r.stdout, "hello\n0\n");
    assert_eq!(r.exit_code, Some(0));
}

#[test]
fn connection_status_and_prebuilt_heartbeats_are_liveness_only() {
    let status = decode_guest_line(&fixture("connection_status.json")).expect("decodes");
    assert!(matches!(status.as_slice(), [GuestMessage::Pong(p)] if p.id.is_none()));

    let prebuilt = decode_stream(&fixture("prebuilt_binary_message_real_virtio.json"));
    assert_eq!(prebuilt.len(), 3);
    assert!(
        prebuilt
            .iter()
            .all(|m| matches!(m, Ok(GuestMessage::Pong(_))))
    );
}

#[test]
fn error_report_becomes_an_error_with_its_type_as_code() {
    let messages = decode_guest_line(&fixture("error_report.json")).expect("decodes");
    let [GuestMessage::Error(e)] = messages.as_slice() else {
        panic!("expected one error, got {messages:?}")
    };
    assert_eq!(e.code.as_deref(), Some("IO_ERROR_WouldBlock"));
    assert!(e.error.contains("limited retries"));
}

#[test]
fn a_partial_json_line_followed_by_a_full_one_loses_only_the_partial_line() {
    // The original agent restarts a message after a partial write: the host sees a line of
    // partial JSON followed by more JSON on the same line, then the next good line.
    let good = fixture("connection_status.json");
    let mut stream = good[..40].to_vec();
    stream.extend_from_slice(&good);
    stream.push(b'\n');
    stream.extend_from_slice(&good);
    stream.push(b'\n');
    let items = decode_stream(&stream);
    assert_eq!(items.len(), 2);
    assert!(matches!(items[0], Err(DecodeError::InvalidJson { .. })));
    assert!(matches!(items[1], Ok(GuestMessage::Pong(_))));
}

#[test]
fn the_original_backends_commands_decode_for_our_agent() {
    let mut decoder = HostStreamDecoder::default();
    let mut items = Vec::new();
    decoder.decode(&fixture("host_to_guest_commands_sent.jsonl"), |item| {
        items.push(item)
    });
    let ids: Vec<String> = items
        .iter()
        .filter_map(|i| i.as_ref().ok().and_then(|m| m.id().map(String::from)))
        .collect();
    assert_eq!(
        ids,
        [
            "c1", "c2", "c3", "c4a", "c4b", "c6", "c7", "c8", "c9", "c10", "c11", "c12"
        ]
    );
    // The line split in two, the garbage line and the unknown `Metrics` type are errors.
    assert_eq!(items.iter().filter(|i| i.is_err()).count(), 4);

    let package = items
        .iter()
        .find_map(|i| match i {
            Ok(HostMessage::SafeCommand(c)) if c.id == "c10" => Some(c),
            _ => None,
        })
        .expect("c10 decodes");
    // `-oDebug::NoLocking=1` decodes, and validation refuses it before anything runs.
    assert!(matches!(
        package.command_type,
        SafeAction::PackageInstall { .. }
    ));
    assert!(package.command_type.validate().is_err());
    assert_eq!(ErrorCode::Invalid.as_str(), "invalid");
}

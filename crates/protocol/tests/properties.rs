//! Property tests: every message survives encode → decode unchanged, and the stream decoder,
//! fed arbitrary bytes in arbitrary chunkings, never panics, never holds more than its limit,
//! and recovers at the next newline or 0xFF.

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use infinibay_protocol::message::command::KNOWN_SAFE_ACTIONS;
use infinibay_protocol::message::*;
use infinibay_protocol::{
    Frame, GuestStreamDecoder, HostStreamDecoder, LineDecoder, RESYNC, Timestamp,
    decode_guest_line, decode_host_line, encode_line,
};
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;

// ----- strategies ------------------------------------------------------------------------------

fn text() -> impl Strategy<Value = String> {
    // Printable ASCII, escapes, and some multi-byte characters.
    "[ -~]{0,16}|[a-zé€😀\"\\\\\n\t]{0,8}"
}

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9._-]{0,15}"
}

/// Windows service names: instance names with `$`, spaces, parentheses, braces, non-ASCII.
fn windows_service_name() -> impl Strategy<Value = String> {
    "[A-Za-z{!][A-Za-z0-9 $(){}_.é-]{0,20}"
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    // Whole milliseconds: the precision we write.
    (0i64..4_000_000_000_000).prop_map(|ms| {
        Timestamp(
            Utc.timestamp_millis_opt(ms)
                .single()
                .expect("in chrono's range"),
        )
    })
}

fn number() -> impl Strategy<Value = f64> {
    // Decimal values with two places, as agents print them.
    (-1_000_000i64..1_000_000_000).prop_map(|n| n as f64 / 100.0)
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        text().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            vec((name(), inner), 0..4)
                .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn identification() -> impl Strategy<Value = VmIdentification> {
    (
        of(timestamp()),
        name(),
        0u32..5,
        vec(name(), 0..5),
        (text(), text(), text(), text(), text()),
        of(text()),
    )
        .prop_map(
            |(timestamp, agent_version, protocol_version, capabilities, s, claimed_vm_id)| {
                VmIdentification {
                    timestamp,
                    agent_version,
                    protocol_version,
                    capabilities,
                    os: s.0,
                    os_version: s.1,
                    kernel: s.2,
                    hostname: s.3,
                    architecture: s.4,
                    claimed_vm_id,
                }
            },
        )
}

fn interface() -> impl Strategy<Value = InterfaceStats> {
    (
        text(),
        vec(of(any::<u64>()), 6),
        vec(of(number()), 5),
        any::<bool>(),
        vec(text(), 0..3),
    )
        .prop_map(|(interface, c, r, is_up, ip_addresses)| InterfaceStats {
            interface,
            bytes_received: c[0],
            bytes_sent: c[1],
            packets_received: c[2],
            packets_sent: c[3],
            errors_in: c[4],
            errors_out: c[5],
            bytes_received_per_sec: r[0],
            bytes_sent_per_sec: r[1],
            packets_received_per_sec: r[2],
            packets_sent_per_sec: r[3],
            errors_per_sec: r[4],
            is_up,
            ip_addresses,
        })
}

fn system_metrics() -> impl Strategy<Value = SystemMetrics> {
    let cpu = (number(), vec(number(), 0..8), of(number())).prop_map(|(u, c, t)| CpuMetrics {
        usage_percent: u,
        cores_usage: c,
        temperature: t,
    });
    let memory = (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        of(any::<u64>()),
        of(any::<u64>()),
    )
        .prop_map(|(t, u, a, st, su)| MemoryMetrics {
            total_kb: t,
            used_kb: u,
            available_kb: a,
            swap_total_kb: st,
            swap_used_kb: su,
        });
    let usage = (text(), of(text()), of(text()), number(), number(), number()).prop_map(
        |(mount_point, filesystem, device, total_gb, used_gb, available_gb)| DiskUsage {
            mount_point,
            filesystem,
            device,
            total_gb,
            used_gb,
            available_gb,
        },
    );
    let device =
        (text(), number(), number(), number(), number()).prop_map(|(d, a, b, c, e)| DeviceIo {
            device: d,
            read_bytes_per_sec: a,
            write_bytes_per_sec: b,
            read_ops_per_sec: c,
            write_ops_per_sec: e,
        });
    let disk = (
        vec(usage, 0..4),
        (number(), number(), number(), number()),
        vec(device, 0..3),
    )
        .prop_map(|(usage_stats, io, devices)| DiskMetrics {
            usage_stats,
            io_stats: DiskIo {
                read_bytes_per_sec: io.0,
                write_bytes_per_sec: io.1,
                read_ops_per_sec: io.2,
                write_ops_per_sec: io.3,
                devices,
            },
        });
    let system =
        (any::<u64>(), number(), number(), number()).prop_map(|(up, a, b, c)| SystemLoad {
            uptime: up,
            load_average: LoadAverage {
                load1min: a,
                load5min: b,
                load15min: c,
            },
        });
    (
        of(timestamp()),
        of(text()),
        cpu,
        memory,
        disk,
        vec(interface(), 0..4),
        system,
    )
        .prop_map(
            |(timestamp, claimed_vm_id, cpu, memory, disk, stats, system)| SystemMetrics {
                timestamp,
                claimed_vm_id,
                metrics: MetricsBody {
                    cpu,
                    memory,
                    disk,
                    network: NetworkMetrics { stats },
                    system,
                },
            },
        )
}

fn process() -> impl Strategy<Value = ProcessInfo> {
    (
        any::<u32>(),
        of(any::<u32>()),
        text(),
        of(text()),
        of(text()),
        of(text()),
        number(),
        any::<u64>(),
        of(any::<i64>()),
    )
        .prop_map(
            |(pid, ppid, name, cmdline, user, state, cpu_percent, memory_kb, start_time)| {
                ProcessInfo {
                    pid,
                    ppid,
                    name,
                    cmdline,
                    user,
                    state,
                    cpu_percent,
                    memory_kb,
                    start_time,
                }
            },
        )
}

fn guest_message() -> impl Strategy<Value = GuestMessage> {
    let port = (
        any::<u16>(),
        name(),
        of(text()),
        of(text()),
        of(any::<u32>()),
        of(text()),
        any::<bool>(),
    )
        .prop_map(|(port, protocol, a, s, pid, pname, l)| PortInfo {
            port,
            protocol,
            local_address: a,
            state: s,
            process_id: pid,
            process_name: pname,
            is_listening: l,
        });
    let app =
        (text(), of(text()), of(any::<u64>()), of(text())).prop_map(|(n, v, s, a)| Application {
            name: n,
            version: v,
            size_kb: s,
            architecture: a,
        });
    let service = (
        text(),
        of(text()),
        of(text()),
        of(text()),
        of(text()),
        of(any::<bool>()),
        of(text()),
    )
        .prop_map(|(name, d, l, a, s, e, t)| ServiceInfo {
            name,
            description: d,
            load_state: l,
            active_state: a,
            sub_state: s,
            enabled: e,
            start_type: t,
        });
    let code = prop_oneof![
        Just(ErrorCode::Forbidden),
        Just(ErrorCode::Invalid),
        Just(ErrorCode::Timeout),
        Just(ErrorCode::Cancelled),
        Just(ErrorCode::UnknownAction),
        Just(ErrorCode::Busy),
        Just(ErrorCode::Unsupported),
        Just(ErrorCode::SpawnFailed),
        Just(ErrorCode::Failed),
        Just(ErrorCode::Internal),
    ];
    let response = (
        text(),
        any::<bool>(),
        of(any::<i32>()),
        (text(), text(), any::<bool>(), any::<bool>()),
        of(json_value().prop_filter("null reads back as absent", |v| !v.is_null())),
        any::<u32>(),
        of((code, text())),
        of(name()),
    )
        .prop_map(
            |(id, success, exit_code, out, data, ms, error, ct)| CommandResponse {
                id,
                success,
                exit_code,
                stdout: out.0,
                stderr: out.1,
                stdout_truncated: out.2,
                stderr_truncated: out.3,
                data,
                execution_time_ms: u64::from(ms),
                error: error.map(|(code, message)| ResponseError { code, message }),
                command_type: ct,
            },
        );
    prop_oneof![
        identification().prop_map(GuestMessage::VmIdentification),
        system_metrics().prop_map(GuestMessage::SystemMetrics),
        (of(timestamp()), of(any::<u64>()), vec(process(), 0..5)).prop_map(|(t, n, p)| {
            GuestMessage::ProcessSnapshot(ProcessSnapshot {
                timestamp: t,
                total_processes: n,
                processes: p,
            })
        }),
        (of(timestamp()), vec(port, 0..5)).prop_map(|(t, ports)| GuestMessage::PortUsage(
            PortUsage {
                timestamp: t,
                ports
            }
        )),
        (of(timestamp()), of(name()), vec(app, 0..5)).prop_map(|(t, s, a)| {
            GuestMessage::ApplicationUsage(ApplicationUsage {
                timestamp: t,
                source: s,
                applications: a,
            })
        }),
        (of(timestamp()), vec(service, 0..5)).prop_map(|(t, s)| {
            GuestMessage::ServiceInventory(ServiceInventory {
                timestamp: t,
                services: s,
            })
        }),
        response.prop_map(GuestMessage::Response),
        (of(timestamp()), of(text()), text(), of(text())).prop_map(|(t, c, e, d)| {
            GuestMessage::Error(GuestError {
                timestamp: t,
                code: c,
                error: e,
                details: d,
            })
        }),
        (of(text()), of(timestamp()))
            .prop_map(|(id, timestamp)| GuestMessage::Pong(Pong { id, timestamp })),
    ]
}

fn safe_action() -> impl Strategy<Value = SafeAction> {
    let op = prop_oneof![
        Just(ServiceOperation::Start),
        Just(ServiceOperation::Stop),
        Just(ServiceOperation::Restart),
        Just(ServiceOperation::Enable),
        Just(ServiceOperation::Disable),
        Just(ServiceOperation::Status),
    ];
    prop_oneof![
        Just(SafeAction::ServiceList),
        (prop_oneof![name(), windows_service_name()], op)
            .prop_map(|(service, operation)| SafeAction::ServiceControl { service, operation }),
        Just(SafeAction::PackageList),
        name().prop_map(|query| SafeAction::PackageSearch { query }),
        name().prop_map(|package| SafeAction::PackageInstall { package }),
        name().prop_map(|package| SafeAction::PackageRemove { package }),
        of(name()).prop_map(|package| SafeAction::PackageUpdate { package }),
        of(0usize..1000).prop_map(|limit| SafeAction::ProcessList { limit }),
        (of(0usize..1000), of(name()))
            .prop_map(|(limit, sort_by)| SafeAction::ProcessTop { limit, sort_by }),
        (any::<u32>(), of(any::<bool>()), of(name()))
            .prop_map(|(pid, force, signal)| SafeAction::ProcessKill { pid, force, signal }),
        Just(SafeAction::SystemInfo),
        Just(SafeAction::OsInfo),
        Just(SafeAction::Shutdown),
        Just(SafeAction::Reboot),
        "Custom[A-Z][a-z]{2,8}".prop_map(|action| SafeAction::Unknown { action }),
    ]
}

fn host_message() -> impl Strategy<Value = HostMessage> {
    let unsafe_command = (
        text(),
        of(text()),
        of(vec(text(), 0..4)),
        of(name()),
        of(any::<u64>()),
        of(text()),
        of(vec((name(), text()), 0..3).prop_map(|kv| kv.into_iter().collect::<BTreeMap<_, _>>())),
    )
        .prop_map(
            |(id, raw_command, argv, shell, timeout, working_dir, env_vars)| UnsafeCommand {
                id,
                raw_command,
                argv,
                shell,
                timeout,
                working_dir,
                env_vars,
            },
        );
    let switches = (
        of(any::<bool>()),
        of(any::<bool>()),
        of(any::<bool>()),
        of(any::<bool>()),
        of(any::<bool>()),
    )
        .prop_map(|(a, b, c, d, e)| CollectorSwitches {
            system_metrics: a,
            process_snapshot: b,
            port_usage: c,
            application_usage: d,
            service_inventory: e,
        });
    prop_oneof![
        (any::<u32>(), of(timestamp())).prop_map(|(protocol_version, timestamp)| {
            HostMessage::Hello(Hello {
                protocol_version,
                timestamp,
            })
        }),
        (any::<u32>(), of(timestamp())).prop_map(|(protocol_version, timestamp)| {
            HostMessage::Welcome(Welcome {
                protocol_version,
                timestamp,
            })
        }),
        (of(text()), of(timestamp()))
            .prop_map(|(id, timestamp)| HostMessage::Ping(Ping { id, timestamp })),
        (text(), safe_action(), of(any::<u64>())).prop_map(|(id, command_type, timeout)| {
            HostMessage::SafeCommand(SafeCommand {
                id,
                command_type,
                timeout,
            })
        }),
        unsafe_command.prop_map(HostMessage::UnsafeCommand),
        text().prop_map(|id| HostMessage::Cancel(Cancel { id })),
        (of(text()), of(any::<u64>()), of(any::<u64>()), of(switches)).prop_map(
            |(id, collection_interval, inventory_interval, collectors)| {
                HostMessage::Configure(Configure {
                    id,
                    collection_interval,
                    inventory_interval,
                    collectors,
                })
            }
        ),
    ]
}

/// Arbitrary bytes, biased towards the bytes framing cares about.
fn stream_bytes() -> impl Strategy<Value = Vec<u8>> {
    vec(
        prop_oneof![
            6 => any::<u8>(),
            2 => Just(b'\n'),
            1 => Just(RESYNC),
            2 => Just(b'{'),
            2 => Just(b'"'),
        ],
        0..600,
    )
}

/// Split `bytes` at the given cut points.
fn chunked(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| c % (bytes.len() + 1))
        .collect::<Vec<_>>();
    points.sort_unstable();
    points.dedup();
    let mut out = Vec::new();
    let mut start = 0;
    for p in points {
        out.push(bytes[start..p].to_vec());
        start = p;
    }
    out.push(bytes[start..].to_vec());
    out
}

#[derive(Debug, PartialEq)]
enum OwnedFrame {
    Line(Vec<u8>),
    Oversize(usize),
    Resynced(usize),
}

fn frames(decoder: &mut LineDecoder, chunks: &[Vec<u8>]) -> Vec<OwnedFrame> {
    let mut out = Vec::new();
    for chunk in chunks {
        decoder.decode(chunk, |f| {
            out.push(match f {
                Frame::Line(l) => OwnedFrame::Line(l.to_vec()),
                Frame::Oversize { discarded } => OwnedFrame::Oversize(discarded),
                Frame::Resynced { dropped } => OwnedFrame::Resynced(dropped),
            })
        });
        assert!(decoder.buffered() <= decoder.max_line());
    }
    out
}

// ----- properties --------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_guest_message_round_trips(message in guest_message()) {
        let line = encode_line(&message).expect("encodes");
        prop_assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let decoded = decode_guest_line(&line[..line.len() - 1]).expect("decodes");
        prop_assert_eq!(decoded, vec![message]);
    }

    #[test]
    fn the_fast_path_and_the_full_path_decode_a_message_alike(message in guest_message()) {
        // Our encoder puts `type` first (fast path); re-serialised through a `Value` the keys
        // come out sorted, `type` after the others (full path: envelope scan, then typed parse).
        let fast = encode_line(&message).expect("encodes");
        let mut sorted = serde_json::to_vec(&serde_json::to_value(&message).expect("to value"))
            .expect("encodes");
        sorted.push(b'\n');
        let via_fast = decode_guest_line(&fast[..fast.len() - 1]);
        let via_full = decode_guest_line(&sorted[..sorted.len() - 1]);
        prop_assert_eq!(via_fast, via_full);
    }

    #[test]
    fn every_host_message_round_trips(message in host_message()) {
        let line = encode_line(&message).expect("encodes");
        prop_assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let decoded = decode_host_line(&line[..line.len() - 1]).expect("decodes");
        prop_assert_eq!(decoded, message);
    }

    #[test]
    fn framing_is_independent_of_chunking(
        bytes in stream_bytes(),
        cuts in vec(any::<usize>(), 0..12),
        max_line in 1usize..64,
    ) {
        let whole = frames(&mut LineDecoder::new(max_line), std::slice::from_ref(&bytes));
        let pieces = frames(&mut LineDecoder::new(max_line), &chunked(&bytes, &cuts));
        prop_assert_eq!(whole, pieces);
    }

    #[test]
    fn decoders_never_panic_and_never_hold_more_than_the_limit(
        bytes in stream_bytes(),
        cuts in vec(any::<usize>(), 0..12),
        max_line in 1usize..256,
    ) {
        let mut guest = GuestStreamDecoder::new(max_line);
        let mut host = HostStreamDecoder::new(max_line);
        for chunk in chunked(&bytes, &cuts) {
            guest.decode(&chunk, |_| {});
            host.decode(&chunk, |_| {});
            prop_assert!(guest.buffered() <= max_line);
            prop_assert!(host.buffered() <= max_line);
        }
    }

    #[test]
    fn the_stream_recovers_at_the_next_newline_or_resync(
        garbage in stream_bytes(),
        delimiter in prop_oneof![Just(b'\n'), Just(RESYNC)],
        messages in vec(guest_message(), 1..4),
        cuts in vec(any::<usize>(), 0..12),
    ) {
        let mut stream = garbage;
        stream.push(delimiter);
        for m in &messages {
            stream.extend(encode_line(m).expect("encodes"));
        }
        let max_line = 64 * 1024;
        let mut decoder = GuestStreamDecoder::new(max_line);
        let mut decoded = Vec::new();
        for chunk in chunked(&stream, &cuts) {
            decoder.decode(&chunk, |item| {
                if let Ok(m) = item {
                    decoded.push(m);
                }
            });
        }
        // Garbage may by chance decode to messages of its own; ours must be the tail.
        prop_assert!(decoded.len() >= messages.len());
        prop_assert_eq!(&decoded[decoded.len() - messages.len()..], &messages[..]);
    }
}

#[test]
fn every_known_safe_action_is_covered_by_the_strategy() {
    // Guards the strategy above: a new action must be added to it.
    assert_eq!(KNOWN_SAFE_ACTIONS.len(), 14);
}

/// `start_type` came after v1 first shipped: an older agent's record (without it) still decodes,
/// and a field a receiver does not know is skipped, which is how an older host reads a newer
/// agent's `start_type`.
#[test]
fn a_services_start_type_is_optional_and_unknown_service_fields_are_skipped() {
    let decode_services = |line: &str| match decode_guest_line(line.as_bytes()) {
        Ok(messages) => match messages.as_slice() {
            [GuestMessage::ServiceInventory(inventory)] => inventory.services.clone(),
            other => panic!("{line}: decoded as {other:?}"),
        },
        Err(e) => panic!("{line}: {e:?}"),
    };
    let older = decode_services(
        r#"{"type":"service_inventory","services":[{"name":"ssh.service","load_state":"loaded","enabled":true}]}"#,
    );
    assert_eq!(older[0].start_type, None);
    assert_eq!(older[0].enabled, Some(true));
    let newer = decode_services(
        r#"{"type":"service_inventory","services":[{"name":"MSSQL$SQLEXPRESS","start_type":"auto-delayed","enabled":true,"recovery":"restart"}]}"#,
    );
    assert_eq!(newer[0].start_type.as_deref(), Some("auto-delayed"));
    assert_eq!(newer[0].load_state, None);
    // Written only when known: an older receiver sees no new key for an agent that has none.
    let line = encode_line(&GuestMessage::ServiceInventory(ServiceInventory {
        timestamp: None,
        services: older,
    }))
    .expect("encodes");
    assert!(!String::from_utf8_lossy(&line).contains("start_type"));
}

/// Lines the fast path picks up by their prefix but cannot parse must give exactly the errors
/// of the full path: the right variant, the kind, and the id of a response.
#[test]
fn invalid_lines_starting_like_v1_messages_keep_their_precise_errors() {
    use infinibay_protocol::DecodeError;
    type Expected = fn(&DecodeError) -> bool;
    let cases: [(&str, Expected); 4] = [
        (r#"{"type":"response","id":"cmd-7","success":"yes"}"#, |e| {
            matches!(e, DecodeError::InvalidMessage { kind, id: Some(id), .. }
                if kind == "response" && id == "cmd-7")
        }),
        (
            r#"{"type":"system_metrics","metrics":{"memory":{"total_kb":-1}}}"#,
            |e| matches!(e, DecodeError::InvalidMessage { kind, .. } if kind == "system_metrics"),
        ),
        (r#"{"type":"system_metrics","metrics":{"cpu":"#, |e| {
            matches!(e, DecodeError::InvalidJson { .. })
        }),
        (
            r#"{"type":"no_such_type","id":"x"}"#,
            |e| matches!(e, DecodeError::UnknownType { kind } if kind == "no_such_type"),
        ),
    ];
    for (line, expected) in cases {
        match decode_guest_line(line.as_bytes()) {
            Err(e) => assert!(expected(&e), "{line}: unexpected error {e:?}"),
            Ok(m) => panic!("{line}: decoded as {m:?}"),
        }
    }
}

/// Seed 001 refuses a sample without `cpu` or `memory`; reading it as zeros would put invented
/// 0 % points into charts and roll-ups. Missing `usage_percent`, `total_kb` or `used_kb` is the
/// same invention, and refused too; the v1 fast path, the full path and the original agent's
/// dialect agree.
#[test]
fn a_system_metrics_without_cpu_or_memory_is_refused_not_read_as_zeros() {
    use infinibay_protocol::DecodeError;
    let cpu = r#""cpu":{"usage_percent":12.5}"#;
    let memory = r#""memory":{"total_kb":1000,"used_kb":400}"#;
    let refused = [
        format!(r#"{{"type":"system_metrics","metrics":{{{memory}}}}}"#),
        format!(r#"{{"type":"system_metrics","metrics":{{{cpu}}}}}"#),
        format!(r#"{{"type":"system_metrics","metrics":{{"cpu":{{}},{memory}}}}}"#),
        format!(r#"{{"type":"system_metrics","metrics":{{{cpu},"memory":{{"total_kb":1000}}}}}}"#),
        format!(r#"{{"timestamp":1,"type":"system_metrics","metrics":{{{memory}}}}}"#),
        r#"{"type":"metrics","data":{"system":{"memory":{"total_kb":1,"used_kb":1}}}}"#.to_owned(),
    ];
    for line in &refused {
        match decode_guest_line(line.as_bytes()) {
            Err(DecodeError::InvalidMessage { kind, message, .. }) => {
                assert!(
                    kind == "system_metrics" || kind == "metrics",
                    "{line}: {kind}"
                );
                assert!(message.contains("missing field"), "{line}: {message}");
            }
            other => panic!("{line}: expected a refusal, got {other:?}"),
        }
    }
    let whole = format!(r#"{{"type":"system_metrics","metrics":{{{cpu},{memory}}}}}"#);
    match decode_guest_line(whole.as_bytes())
        .expect("a complete sample decodes")
        .as_slice()
    {
        [GuestMessage::SystemMetrics(m)] => {
            assert_eq!(m.metrics.cpu.usage_percent, 12.5);
            assert_eq!(m.metrics.memory.used_kb, 400);
        }
        other => panic!("decoded as {other:?}"),
    }
}

/// The one documented difference of the fast path (docs/protocol.md): a repeated `type` after
/// a leading one is ignored there; the message is validated as the first `type` names. With
/// `type` elsewhere the envelope scan still refuses the duplicate.
#[test]
fn a_repeated_type_is_read_as_the_leading_one_and_refused_elsewhere() {
    let leading = decode_guest_line(br#"{"type":"pong","id":"p","type":"error"}"#)
        .expect("leading type wins");
    assert_eq!(
        leading,
        vec![GuestMessage::Pong(Pong {
            id: Some("p".into()),
            timestamp: None
        })]
    );
    assert!(matches!(
        decode_guest_line(br#"{"id":"p","type":"pong","type":"error"}"#),
        Err(infinibay_protocol::DecodeError::InvalidJson { .. })
    ));
}

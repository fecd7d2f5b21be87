//! What a seed client needs from the core beyond samples, over real sockets and SQLite:
//! incomplete samples refused and never stored, every command's end published once, guest
//! errors stored and published, collection settings sent when set and after every reconnect,
//! and a deleted VM's socket removed.

mod common;

use std::time::Duration;

use common::*;
use infinibay_core::control::command::CommandStatus;
use infinibay_core::control::{ControlError, TelemetryRequest, VmControl};
use infinibay_core::protocol::message::{GuestError, GuestMessage, SafeAction};
use infinibay_core::protocol::samples::{Jitter, identification, small_metrics};
use infinibay_core::{BusEvent, Command, CommandError, CommandKind, CommandSpec, Filter, Topic};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sample_without_cpu_or_memory_is_refused_counted_and_never_stored() {
    let env = TestEnv::new();
    let mut jitter = Jitter::new(1);
    let mut whole = small_metrics(&mut jitter, 1);
    whole.metrics.cpu.usage_percent = 42.0;
    let mut lines = line(&GuestMessage::VmIdentification(identification("partial")));
    lines.extend_from_slice(
        br#"{"type":"system_metrics","metrics":{"memory":{"total_kb":1000,"used_kb":10}}}
{"type":"system_metrics","metrics":{"cpu":{"usage_percent":5}}}
{"type":"system_metrics","metrics":{"cpu":{},"memory":{"total_kb":1000,"used_kb":10}}}
"#,
    );
    lines.extend(line(&GuestMessage::SystemMetrics(whole)));
    let vm = FakeVm::spawn(
        &env.sockets,
        None,
        scripted(vec![(lines, Duration::from_millis(10))]),
    );
    let host = env.start(env.config()).await;
    let store = host.store();
    wait_samples(&store, &vm.id, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        stored_cpus(&store, &vm.id).await,
        vec![42.0],
        "only the complete sample is stored: no invented 0 % point"
    );
    let stats = host.vm(&vm.id).expect("known").stats;
    assert_eq!(stats.samples_rejected, 3);
    assert_eq!(host.stats().totals.samples_rejected, 3);
    host.shutdown().await;
    vm.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_end_is_published_once_with_its_user_kind_and_status() {
    let env = TestEnv::new();
    let (vm, host) = env.start_with_one_agent().await;
    let mut ends = host.subscribe(Filter::topic(Topic::CommandEnded));

    let answered = host
        .execute(
            &vm.id,
            CommandSpec::from(&Command::safe(SafeAction::SystemInfo)),
            Some(7),
        )
        .await
        .expect("answered");
    let refused = host
        .execute(
            &vm.id,
            CommandSpec {
                kind: CommandKind::Unsafe,
                ..CommandSpec::default()
            },
            Some(8),
        )
        .await;
    assert!(matches!(refused, Err(CommandError::Invalid(_))));

    let mut seen = Vec::new();
    for _ in 0..2 {
        match tokio::time::timeout(Duration::from_secs(5), ends.next_event()).await {
            Ok(Some(BusEvent::CommandEnded(e))) => seen.push(e),
            other => panic!("expected a command end, got {other:?}"),
        }
    }
    assert_eq!(seen[0].id, answered.id);
    assert_eq!(seen[0].vm_id, vm.id);
    assert_eq!(seen[0].user_id, Some(7));
    assert_eq!(seen[0].kind, CommandKind::Safe);
    assert_eq!(seen[0].status, CommandStatus::Success);
    assert_eq!(seen[1].user_id, Some(8));
    assert_eq!(seen[1].kind, CommandKind::Unsafe);
    assert_eq!(seen[1].status, CommandStatus::Error);
    assert_eq!(seen[1].code.as_deref(), Some("invalid"));
    // Each is the command log's entry: the same ids, once.
    wait_for("both commands logged", Duration::from_secs(5), || async {
        host.store()
            .command_logs(&vm.id, 10)
            .await
            .expect("log")
            .len()
            == 2
    })
    .await;
    let logged: Vec<String> = host
        .store()
        .command_logs(&vm.id, 10)
        .await
        .expect("log")
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert!(logged.contains(&seen[0].id) && logged.contains(&seen[1].id));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), ends.next_event())
            .await
            .is_err(),
        "a command end was published twice"
    );
    host.shutdown().await;
    vm.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_errors_are_stored_and_published_only_as_far_as_they_are_stored() {
    let env = TestEnv::new();
    let mut lines = line(&GuestMessage::VmIdentification(identification("noisy")));
    for n in 0..40 {
        lines.extend(line(&GuestMessage::Error(GuestError {
            code: Some("collector_failed".into()),
            error: format!("<b>boom</b> {n}"),
            details: Some("permission denied".into()),
            ..GuestError::default()
        })));
    }
    let vm = FakeVm::spawn(
        &env.sockets,
        None,
        scripted(vec![(lines, Duration::from_millis(10))]),
    );
    let mut config = env.config();
    config.store.pending_errors_per_vm = 5;
    // A long flush interval: the burst meets a full queue.
    config.store.flush_interval_ms = 2_000;
    config.ingest.burst = 100;
    let host = env.start(config).await;
    let mut errors = host.subscribe(Filter::vm(vm.id.clone()));
    let mut published = Vec::new();
    while let Ok(Some(e)) =
        tokio::time::timeout(Duration::from_millis(2_500), errors.next_event()).await
    {
        if let BusEvent::Error(e) = e {
            published.push(e);
        }
    }
    wait_for("the errors stored", Duration::from_secs(5), || async {
        !host
            .store()
            .vm_errors(&vm.id, 100)
            .await
            .expect("errors")
            .is_empty()
    })
    .await;
    let stored = host.store().vm_errors(&vm.id, 100).await.expect("errors");
    assert_eq!(published.len(), 5, "what is pushed is what is stored");
    assert_eq!(stored.len(), 5);
    assert_eq!(
        stored[4].message, "<b>boom</b> 0",
        "kept as text, oldest last"
    );
    assert_eq!(host.stats().queue.errors_dropped, 35);
    host.shutdown().await;
    vm.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collection_settings_are_sent_when_set_and_again_after_every_reconnect() {
    let env = TestEnv::new();
    let opts = AgentOpts::default();
    let configures = opts.configures.clone();
    let vm = FakeVm::spawn(&env.sockets, None, agent(opts.clone()));
    let id = vm.id.clone();
    let host = env.start(env.config()).await;
    wait_online(&host, &id).await;

    let outcome = VmControl::set_telemetry(
        &host,
        &id,
        TelemetryRequest {
            interval_secs: 7,
            collectors: vec!["system_metrics".into(), "port_usage".into()],
        },
        Some(3),
    )
    .await
    .expect("set");
    assert!(outcome.applied, "{outcome:?}");
    assert!(outcome.settings.applied_at.is_some());
    // Counted before the reconnect below. A second identical `configure` may already have
    // gone out (the start-up load of the stored settings, or the answer to the host's `hello`,
    // can land just after the settings were set); `configure` is idempotent.
    let before_reconnect = {
        let got = configures.lock().await;
        assert!(!got.is_empty(), "sent when set");
        assert!(
            got.iter().all(|c| c.collection_interval == Some(7)),
            "{got:?}"
        );
        assert!(got[0].id.is_some(), "the first is answered");
        assert_eq!(got[0].collection_interval, Some(7));
        let switches = got[0].collectors.clone().expect("switches");
        assert_eq!(switches.port_usage, Some(true));
        assert_eq!(switches.process_snapshot, Some(false));
        got.len()
    };
    let stored = host.store().vm_telemetry(None).await.expect("stored");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].updated_by, Some(3));
    assert!(stored[0].applied_at.is_some());

    // The agent reconnects (QEMU restarted, the agent restarted): it is told again.
    let path = vm.kill_keep_file().await;
    let _ = std::fs::remove_file(&path);
    let vm = FakeVm::spawn_at(id.clone(), path, agent(opts));
    wait_for(
        "configure sent after the reconnect",
        Duration::from_secs(10),
        || async { configures.lock().await.len() > before_reconnect },
    )
    .await;
    assert_eq!(
        configures.lock().await[before_reconnect].collection_interval,
        Some(7)
    );

    for (request, vm_id) in [
        (
            TelemetryRequest {
                interval_secs: 0,
                collectors: vec![],
            },
            id.as_str(),
        ),
        (
            TelemetryRequest {
                interval_secs: 5,
                collectors: vec!["keylogger".into()],
            },
            id.as_str(),
        ),
    ] {
        match VmControl::set_telemetry(&host, vm_id, request, None).await {
            Err(ControlError::Invalid(_)) => {}
            other => panic!("expected INVALID, got {other:?}"),
        }
    }
    match VmControl::set_telemetry(
        &host,
        "00000000-0000-4000-8000-00000000dead",
        TelemetryRequest {
            interval_secs: 5,
            collectors: vec![],
        },
        None,
    )
    .await
    {
        Err(ControlError::NotFound(_)) => {}
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }
    let stored = host.store().vm_telemetry(None).await.expect("stored");
    assert_eq!(
        stored[0].interval_secs, 7,
        "refused settings changed nothing"
    );
    host.shutdown().await;
    vm.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_vm_removes_its_socket_and_it_does_not_come_back() {
    let env = TestEnv::new();
    let (vm, host) = env.start_with_one_agent().await;
    wait_samples(&host.store(), &vm.id, 1).await;
    let path = vm.path.clone();
    let deleted = VmControl::delete_vm(&host, &vm.id, None)
        .await
        .expect("delete");
    assert!(deleted.known);
    assert!(!path.exists(), "the socket file is gone");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(host.vm(&vm.id).is_none(), "a rescan found it again");
    // A regular file with a socket's name is never removed.
    let fake = env
        .sockets
        .join("vm-00000000-0000-4000-8000-000000000abc.sock");
    std::fs::write(&fake, b"not a socket").expect("file");
    let _ = VmControl::delete_vm(&host, "00000000-0000-4000-8000-000000000abc", None).await;
    assert!(fake.exists());
    host.shutdown().await;
    vm.remove().await;
}

//! Discovery, connections, liveness, restart and legacy guests over real UNIX sockets, with the
//! real SQLite store.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use infinibay_core::control::event::{BusEvent, Filter, Topic};
use infinibay_core::store::{InventoryKind, VmStatus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_present_before_start_and_created_after_are_both_ingested() {
    let env = TestEnv::new();
    let (before, host) = env.start_with_one_agent().await;

    // The `<uuid>.socket` form, created while the host runs.
    let id = uuid::Uuid::new_v4().to_string();
    let after = FakeVm::spawn_at(
        id.clone(),
        env.sockets.join(format!("{id}.socket")),
        agent(AgentOpts::default()),
    );
    wait_online(&host, &after.id).await;

    let store = host.store();
    wait_samples(&store, &before.id, 3).await;
    wait_samples(&store, &after.id, 3).await;
    let vms = store.list_vms().await.expect("list vms");
    let ids: Vec<&str> = vms.iter().map(|v| v.id.as_str()).collect();
    assert!(ids.contains(&before.id.as_str()) && ids.contains(&after.id.as_str()));
    assert_eq!(vms.len(), 2);
    let agent = store
        .get_vm(&before.id)
        .await
        .expect("get vm")
        .and_then(|v| v.agent)
        .expect("agent info stored");
    assert_eq!(agent.hostname, "fake-guest");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_keeps_each_vms_newest_sample_with_nobody_subscribed() {
    let env = TestEnv::new();
    let (vm, host) = env.start_with_one_agent().await;
    let store = host.store();
    wait_samples(&store, &vm.id, 3).await;
    // No API and no Socket.IO: nothing subscribes to the bus, and the newest sample is still
    // there (what `/metrics` and `latestMetrics` read).
    let newest = host.latest_sample(&vm.id).expect("a newest sample");
    let all = host.latest_samples();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].vm_id, vm.id);
    let stored = stored_cpus(&store, &vm.id).await;
    let newest_stored = stored.iter().copied().fold(f64::MIN, f64::max);
    assert!(
        newest.cpu_percent >= newest_stored,
        "the newest in memory ({}) is older than a stored one ({newest_stored})",
        newest.cpu_percent
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_socket_takes_its_vm_offline_and_others_continue() {
    let env = TestEnv::new();
    let host = env.start(env.config()).await;
    let mut status = host.subscribe(Filter::topic(Topic::Status));
    let stays = FakeVm::spawn(&env.sockets, None, agent(AgentOpts::default()));
    let goes = FakeVm::spawn(&env.sockets, None, agent(AgentOpts::default()));
    wait_online(&host, &stays.id).await;
    wait_online(&host, &goes.id).await;
    let gone_id = goes.id.clone();
    goes.remove().await;

    let h = host.clone();
    let g = gone_id.clone();
    wait_for("removed VM offline", Duration::from_secs(5), || {
        let v = h.vm(&g).expect("still listed");
        async move { v.status == VmStatus::Offline && !v.connected && !v.socket_present }
    })
    .await;
    // The status events: online for both, then offline for the removed one.
    let mut saw_offline = false;
    while let Ok(Some(e)) =
        tokio::time::timeout(Duration::from_millis(500), status.next_event()).await
    {
        if let BusEvent::Status(s) = e
            && s.vm_id == gone_id
            && s.event() == "vm:offline"
        {
            saw_offline = true;
        }
    }
    assert!(saw_offline, "vm:offline published");
    let store = host.store();
    let n = stored_cpus(&store, &stays.id).await.len();
    wait_samples(&store, &stays.id, n + 3).await;
    wait_for("offline stored", Duration::from_secs(5), || {
        let store = store.clone();
        let g = gone_id.clone();
        async move {
            store
                .get_vm(&g)
                .await
                .ok()
                .flatten()
                .is_some_and(|v| v.status == VmStatus::Offline)
        }
    })
    .await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_restart_continues_the_data_without_duplicates() {
    let env = TestEnv::new();
    let opts = AgentOpts {
        interval: Duration::from_millis(150),
        ..AgentOpts::default()
    };
    let vm = FakeVm::spawn(&env.sockets, None, agent(opts.clone()));

    let first = env.start(env.config()).await;
    let store = first.store();
    wait_samples(&store, &vm.id, 5).await;
    first.shutdown().await;
    drop(first);
    let before = stored_cpus(&store, &vm.id).await;
    let seq_at_stop = opts.seq.load(Ordering::SeqCst);

    let second = env.start(env.config()).await;
    wait_online(&second, &vm.id).await;
    wait_samples(&store, &vm.id, before.len() + 5).await;
    second.shutdown().await;

    let after = stored_cpus(&store, &vm.id).await;
    let mut seqs: Vec<i64> = after.iter().map(|c| (c * 100.0).round() as i64).collect();
    let total = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), total, "no sample stored twice");
    assert!(
        seqs.iter().any(|s| *s as u64 >= seq_at_stop),
        "samples sent after the restart were stored"
    );
    assert_eq!(store.list_vms().await.expect("vms").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_backoff_grows_against_a_dead_socket() {
    let env = TestEnv::new();
    // A socket file whose QEMU is gone: connect() is refused.
    let dead = FakeVm::spawn(&env.sockets, None, silent());
    let id = dead.id.clone();
    dead.kill_keep_file().await;
    let mut config = env.config();
    config.connection.backoff_initial_secs = 0.05;
    config.connection.backoff_max_secs = 10.0;
    let host = env.start(config).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let attempts = host
        .vm(&id)
        .expect("registered on first sight")
        .stats
        .connect_attempts;
    // A fixed 50 ms retry would make ~50 attempts; a doubling one (25–50, 50–100, 100–200,
    // 200–400, 400–800, 800–1600 ms …) fits 5 to 8 into 2.5 s.
    assert!((4..=9).contains(&attempts), "attempts in 2.5 s: {attempts}");
    assert_eq!(host.vm(&id).expect("vm").status, VmStatus::Offline);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_accepts_and_never_speaks_stays_offline() {
    let env = TestEnv::new();
    let mute = FakeVm::spawn(&env.sockets, None, silent());
    let mut config = env.config();
    config.connection.ping_interval_secs = 0.1;
    let host = env.start(config).await;
    wait_connected(&host, &mute.id).await;
    let rss_before = rss_kb();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let v = host.vm(&mute.id).expect("vm");
    assert_eq!(
        v.status,
        VmStatus::Offline,
        "QEMU accepting is not an agent"
    );
    assert_eq!(v.stats.connections, 1, "one connection, no reconnect churn");
    assert_eq!(v.stats.messages, 0);
    // Pings pile up in a bounded queue and then are dropped, not buffered.
    // Generous: other tests of this binary run in the same process at the same time.
    assert!(rss_kb() < rss_before + 64_000, "memory stayed flat");
    assert_eq!(mute.accepted.load(Ordering::SeqCst), 1);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_goes_offline_after_missed_pings_and_back_online_when_it_speaks() {
    let env = TestEnv::new();
    // Identification, then silence for 1.5 s, then a metrics line.
    let id_line = line(&infinibay_core::protocol::GuestMessage::VmIdentification(
        infinibay_core::protocol::samples::identification("quiet"),
    ));
    let mut jitter = infinibay_core::protocol::samples::Jitter::new(1);
    let metrics = line(&infinibay_core::protocol::GuestMessage::SystemMetrics(
        infinibay_core::protocol::samples::small_metrics(&mut jitter, 1),
    ));
    let vm = FakeVm::spawn(
        &env.sockets,
        None,
        scripted(vec![
            (id_line, Duration::from_millis(1_500)),
            (metrics, Duration::ZERO),
        ]),
    );
    let mut config = env.config();
    config.connection.ping_interval_secs = 0.2;
    config.connection.missed_pings = 3;
    let host = env.start(config).await;
    let mut events = host.subscribe(Filter::vm(vm.id.clone()));
    wait_online(&host, &vm.id).await;
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(BusEvent::Status(s))) =
            tokio::time::timeout(Duration::from_millis(200), events.next_event()).await
        {
            seen.push((s.event(), s.reason.as_str()));
        }
        let offline = seen
            .iter()
            .position(|e| *e == ("vm:offline", "missed pings"));
        if offline.is_some_and(|i| seen[i..].iter().any(|e| e.0 == "vm:online")) {
            break;
        }
    }
    let offline = seen
        .iter()
        .position(|e| *e == ("vm:offline", "missed pings"))
        .unwrap_or_else(|| panic!("no offline for missed pings: {seen:?}"));
    assert!(
        seen[offline..].iter().any(|e| e.0 == "vm:online"),
        "back online when it spoke again: {seen:?}"
    );
    assert!(
        host.vm(&vm.id).expect("vm").connected,
        "the connection itself stayed open"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_agent_is_stored_like_ours() {
    let env = TestEnv::new();
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocol/tests/fixtures/legacy");
    let read = |name: &str| std::fs::read_to_string(fixtures.join(name)).expect("fixture");
    // The pretty-printed capture is one message: send it as one line, as the agent does.
    let metrics: serde_json::Value =
        serde_json::from_str(&read("metrics_full_redacted_pretty.json")).expect("json");
    let mut bytes = serde_json::to_vec(&metrics).expect("json");
    bytes.push(b'\n');
    for name in [
        "connection_status.json",
        "error_report.json",
        "prebuilt_binary_message_real_virtio.json",
    ] {
        bytes.extend_from_slice(read(name).as_bytes());
        if !bytes.ends_with(b"\n") {
            bytes.push(b'\n');
        }
    }
    let vm = FakeVm::spawn(&env.sockets, None, scripted(vec![(bytes, Duration::ZERO)]));
    let host = env.start(env.config()).await;
    wait_online(&host, &vm.id).await;
    let store = host.store();
    wait_samples(&store, &vm.id, 1).await;
    let sample = store
        .latest_sample(&vm.id)
        .await
        .expect("query")
        .expect("legacy metrics stored as a sample");
    assert_eq!(sample.mem_total_kb, 24_684_096);
    let s = store.clone();
    let id = vm.id.clone();
    wait_for(
        "legacy inventories and error stored",
        Duration::from_secs(5),
        || {
            let s = s.clone();
            let id = id.clone();
            async move {
                let procs = s
                    .inventory(&id, InventoryKind::Processes)
                    .await
                    .ok()
                    .flatten();
                let errors = s.vm_errors(&id, 10).await.unwrap_or_default();
                let agent = s.get_vm(&id).await.ok().flatten().and_then(|v| v.agent);
                procs.is_some() && !errors.is_empty() && agent.is_some()
            }
        },
    )
    .await;
    let errors = store.vm_errors(&vm.id, 10).await.expect("errors");
    assert_eq!(errors[0].code.as_deref(), Some("IO_ERROR_WouldBlock"));
    // The vm_id fields inside the legacy messages name other VMs: nothing lands there.
    let vms = store.list_vms().await.expect("vms");
    assert_eq!(vms.len(), 1);
    assert_eq!(vms[0].id, vm.id);
    host.shutdown().await;
}

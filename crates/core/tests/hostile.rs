//! Every guest is hostile. Each case runs a hostile guest next to a well-behaved "witness" VM
//! and checks that the host stays up, the witness's samples keep arriving, nothing is stored
//! under a VM other than the socket's, and memory stays bounded.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use infinibay_core::Core;
use infinibay_core::protocol::GuestMessage;
use infinibay_core::protocol::message::{CommandResponse, ProcessInfo, ProcessSnapshot};
use infinibay_core::protocol::samples::{Jitter, identification, small_metrics};
use infinibay_core::store::{InventoryKind, Store, VmStatus};
use tokio::io::AsyncWriteExt;

fn metrics_line(seq: u64) -> Vec<u8> {
    let mut jitter = Jitter::new(seq);
    let mut m = small_metrics(&mut jitter, seq);
    m.metrics.cpu.usage_percent = cpu_for(seq);
    line(&GuestMessage::SystemMetrics(m))
}

fn id_line(hostname: &str) -> Vec<u8> {
    line(&GuestMessage::VmIdentification(identification(hostname)))
}

struct Case {
    env: TestEnv,
    host: Core,
    store: Arc<dyn Store>,
    witness: FakeVm,
    hostile: FakeVm,
    rss_before: u64,
}

/// Start a witness and the hostile guest; wait for the witness to be online.
async fn start(hostile: GuestFn) -> Case {
    let env = TestEnv::new();
    let witness = FakeVm::spawn(
        &env.sockets,
        None,
        agent(AgentOpts {
            interval: Duration::from_millis(100),
            ..AgentOpts::default()
        }),
    );
    let rss_before = rss_kb();
    let hostile = FakeVm::spawn(&env.sockets, None, hostile);
    let host = env.start(env.config()).await;
    let store = host.store();
    wait_online(&host, &witness.id).await;
    Case {
        env,
        host,
        store,
        witness,
        hostile,
        rss_before,
    }
}

impl Case {
    /// The common assertions, after the hostile guest had `for_at_least` to do its worst.
    async fn check_contained(&self, for_at_least: Duration) {
        tokio::time::sleep(for_at_least).await;
        let before = stored_cpus(&self.store, &self.witness.id).await.len();
        // Still up and the witness unaffected: fresh samples keep arriving.
        wait_samples(&self.store, &self.witness.id, before + 3).await;
        assert_eq!(
            self.host.vm(&self.witness.id).expect("witness").status,
            VmStatus::Online
        );
        // Nothing stored under any VM but the two sockets.
        let mut ids: Vec<String> = self
            .store
            .list_vms()
            .await
            .expect("vms")
            .into_iter()
            .map(|v| v.id)
            .collect();
        ids.sort();
        let mut expected = vec![self.witness.id.clone(), self.hostile.id.clone()];
        expected.sort();
        assert_eq!(ids, expected);
        // The witness's samples are all its own sequence (cpu = seq/100 with small seqs).
        for cpu in stored_cpus(&self.store, &self.witness.id).await {
            assert!(cpu < 10.0, "a foreign sample under the witness: cpu {cpu}");
        }
        let hostile = self.host.vm(&self.hostile.id).expect("hostile listed");
        assert!(
            hostile.stats.buffered_bytes <= self.host.config().ingest.max_line_bytes as u64,
            "decoder holds {} bytes",
            hostile.stats.buffered_bytes
        );
        let grown = rss_kb().saturating_sub(self.rss_before);
        assert!(grown < 250_000, "RSS grew by {grown} kB");
        let q = self.host.stats().queue;
        assert!(q.pending_samples <= self.host.config().store.pending_samples_max + 2);
    }

    async fn finish(self) {
        self.host.shutdown().await;
        drop(self.env);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlong_line_is_dropped_and_the_stream_goes_on() {
    let mut huge = vec![b'x'; 3 * 1024 * 1024];
    huge.push(b'\n');
    let case = start(scripted(vec![
        (huge, Duration::ZERO),
        (metrics_line(5000), Duration::ZERO),
    ]))
    .await;
    let store = case.store.clone();
    let id = case.hostile.id.clone();
    wait_samples(&store, &id, 1).await;
    case.check_contained(Duration::from_millis(200)).await;
    let v = case.host.vm(&id).expect("vm");
    assert!(v.stats.decode_errors >= 1);
    assert_eq!(stored_cpus(&store, &id).await, vec![cpu_for(5000)]);
    case.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_and_deeply_nested_json_are_rejected_per_line() {
    let mut bad = b"{\"type\":\"system_metrics\",\"x\":\"\xc3\x28\xff\xfe\"}\n".to_vec();
    let depth = 100_000;
    bad.extend(std::iter::repeat_n(b'[', depth));
    bad.extend(std::iter::repeat_n(b']', depth));
    bad.push(b'\n');
    let mut nested = b"{\"type\":\"system_metrics\",\"metrics\":{\"cpu\":".to_vec();
    nested.extend(std::iter::repeat_n(b"{\"a\":".as_slice(), 5000).flatten());
    nested.extend(b"1");
    nested.extend(std::iter::repeat_n(b'}', 5002));
    nested.push(b'\n');
    bad.extend(nested);
    let case = start(scripted(vec![
        (bad, Duration::ZERO),
        (metrics_line(5001), Duration::ZERO),
    ]))
    .await;
    let id = case.hostile.id.clone();
    wait_samples(&case.store, &id, 1).await;
    case.check_contained(Duration::from_millis(100)).await;
    assert!(case.host.vm(&id).expect("vm").stats.decode_errors >= 3);
    case.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nan_infinite_negative_and_absurd_numbers_never_reach_storage() {
    let lines = [
        r#"{"type":"system_metrics","metrics":{"cpu":{"usage_percent":NaN}}}"#,
        r#"{"type":"system_metrics","metrics":{"cpu":{"usage_percent":1e309}}}"#,
        r#"{"type":"system_metrics","metrics":{"memory":{"total_kb":-5}}}"#,
        r#"{"type":"system_metrics","metrics":{"cpu":{"usage_percent":1e300,"cores_usage":[-1e300,1e300]},"memory":{"total_kb":1000,"used_kb":18446744073709551615,"available_kb":5},"system":{"load_average":{"load1min":-7}},"disk":{"usage_stats":[{"mount_point":"/","total_gb":-1,"used_gb":1e300}]}}}"#,
    ];
    let mut bytes = lines.join("\n").into_bytes();
    bytes.push(b'\n');
    let case = start(scripted(vec![(bytes, Duration::ZERO)])).await;
    let id = case.hostile.id.clone();
    wait_samples(&case.store, &id, 1).await;
    case.check_contained(Duration::from_millis(100)).await;
    let s = case
        .store
        .latest_sample(&id)
        .await
        .expect("query")
        .expect("the absurd-but-typed sample is stored, clamped");
    assert!(s.cpu_percent.is_finite() && (0.0..=100.0).contains(&s.cpu_percent));
    assert!(
        s.mem_used_kb <= s.mem_total_kb,
        "{} > {}",
        s.mem_used_kb,
        s.mem_total_kb
    );
    assert!(s.load1 >= 0.0);
    assert!(
        s.detail
            .cpu
            .cores_usage
            .iter()
            .all(|c| (0.0..=100.0).contains(c))
    );
    assert!(
        s.disk_used_percent
            .is_none_or(|p| (0.0..=100.0).contains(&p))
    );
    assert_eq!(
        stored_cpus(&case.store, &id).await.len(),
        1,
        "NaN/1e309/negative lines refused"
    );
    let v = case.host.vm(&id).expect("vm");
    assert!(
        v.stats.decode_errors >= 3 && v.stats.sanitized_fixes >= 3,
        "{:?}",
        v.stats
    );
    case.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_fields_are_survived() {
    let mut obj = serde_json::Map::new();
    obj.insert("type".into(), "system_metrics".into());
    let mut jitter = Jitter::new(1);
    let mut metrics = serde_json::to_value(small_metrics(&mut jitter, 1).metrics).expect("value");
    metrics["cpu"]["usage_percent"] = serde_json::json!(cpu_for(5002));
    for i in 0..10_000 {
        metrics[format!("field_{i}")] = serde_json::json!(i);
        obj.insert(format!("extra_{i}"), serde_json::json!("x"));
    }
    obj.insert("metrics".into(), metrics);
    let mut bytes = serde_json::to_vec(&obj).expect("json");
    bytes.push(b'\n');
    let case = start(scripted(vec![(bytes, Duration::ZERO)])).await;
    let id = case.hostile.id.clone();
    wait_samples(&case.store, &id, 1).await;
    case.check_contained(Duration::from_millis(100)).await;
    assert_eq!(stored_cpus(&case.store, &id).await, vec![cpu_for(5002)]);
    case.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_and_html_in_process_names_are_stored_as_clean_text() {
    let evil = "evil\u{0}\u{1b}[31m\u{7}<script>alert(1)</script>\r\n";
    let snapshot = GuestMessage::ProcessSnapshot(ProcessSnapshot {
        timestamp: None,
        total_processes: Some(1),
        processes: vec![ProcessInfo {
            pid: 66,
            name: evil.into(),
            cmdline: Some(format!("/bin/{evil} --x")),
            ..ProcessInfo::default()
        }],
    });
    let case = start(scripted(vec![(line(&snapshot), Duration::ZERO)])).await;
    let id = case.hostile.id.clone();
    let store = case.store.clone();
    let i2 = id.clone();
    wait_for("inventory stored", Duration::from_secs(5), || {
        let store = store.clone();
        let id = i2.clone();
        async move {
            store
                .inventory(&id, InventoryKind::Processes)
                .await
                .ok()
                .flatten()
                .is_some()
        }
    })
    .await;
    case.check_contained(Duration::from_millis(100)).await;
    let inv = case
        .store
        .inventory(&id, InventoryKind::Processes)
        .await
        .expect("query")
        .expect("stored");
    let name = inv.items[0]["name"].as_str().expect("name");
    assert!(!name.chars().any(char::is_control), "{name:?}");
    assert!(
        name.contains("<script>"),
        "HTML is data, escaped by the renderer: {name:?}"
    );
    case.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_guest_is_paused_not_buffered() {
    let flood: GuestFn = Arc::new(|mut stream| {
        Box::pin(async move {
            let _ = stream.write_all(&id_line("flood")).await;
            let mut seq = 10_000u64;
            loop {
                seq += 1;
                if stream.write_all(&metrics_line(seq)).await.is_err() {
                    return;
                }
            }
        })
    });
    let case = start(flood).await;
    let id = case.hostile.id.clone();
    wait_online(&case.host, &id).await;
    let started = std::time::Instant::now();
    case.check_contained(Duration::from_secs(2)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let v = case.host.vm(&id).expect("vm");
    // Burst 50 + 10/s, plus at most one read buffer of messages of debt.
    let allowed = 50.0 + 10.0 * elapsed + 70.0;
    assert!(
        (v.stats.messages as f64) <= allowed,
        "{} messages read in {elapsed:.1} s (allowed {allowed:.0})",
        v.stats.messages
    );
    assert!(v.stats.read_pauses >= 1);
    case.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_claiming_another_vms_id_is_stored_under_its_own_socket() {
    // The impostor claims the witness's id; the case knows the witness only after start, so
    // it reads the id from the socket directory at connection time.
    let claimed = Arc::new(std::sync::Mutex::new(String::new()));
    let claimed_by_guest = claimed.clone();
    let claim: GuestFn = Arc::new(move |mut stream| {
        let claimed = claimed_by_guest.clone();
        Box::pin(async move {
            // The witness is the other socket in the directory the host connected us from.
            let mut victim = String::new();
            if let Ok(peer) = stream.local_addr()
                && let Some(path) = peer.as_pathname()
                && let Some(parent) = path.parent()
                && let Ok(entries) = std::fs::read_dir(parent)
            {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().to_string();
                    if e.path() != path {
                        victim = name
                            .trim_start_matches("vm-")
                            .trim_end_matches(".sock")
                            .to_owned();
                    }
                }
            }
            *claimed.lock().expect("lock") = victim.clone();
            let mut id = identification("impostor");
            id.claimed_vm_id = Some(victim.clone());
            let _ = stream
                .write_all(&line(&GuestMessage::VmIdentification(id)))
                .await;
            let mut jitter = Jitter::new(3);
            for seq in 0..20u64 {
                let mut m = small_metrics(&mut jitter, seq);
                m.claimed_vm_id = Some(victim.clone());
                m.metrics.cpu.usage_percent = 77.0;
                if stream
                    .write_all(&line(&GuestMessage::SystemMetrics(m)))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            std::future::pending::<()>().await
        })
    });
    let case = start(claim).await;
    let id = case.hostile.id.clone();
    wait_samples(&case.store, &id, 5).await;
    case.check_contained(Duration::from_millis(100)).await;
    assert_eq!(
        *claimed.lock().expect("lock"),
        case.witness.id,
        "it claimed the witness"
    );
    let v = case.host.vm(&id).expect("vm");
    assert!(v.stats.identity_mismatches >= 1);
    assert!(
        stored_cpus(&case.store, &id)
            .await
            .iter()
            .all(|c| *c == 77.0)
    );
    let witness = case
        .store
        .get_vm(&case.witness.id)
        .await
        .expect("query")
        .expect("witness");
    assert_eq!(
        witness.agent.expect("witness agent").hostname,
        "fake-guest",
        "the impostor did not overwrite the witness"
    );
    case.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_with_ids_the_host_never_sent_are_dropped_and_counted() {
    let mut bytes = id_line("liar");
    for i in 0..30 {
        let r = CommandResponse {
            id: format!("never-sent-{i}"),
            success: true,
            stdout: "x".repeat(1000),
            ..CommandResponse::default()
        };
        bytes.extend(line(&GuestMessage::Response(r)));
    }
    let case = start(scripted(vec![(bytes, Duration::ZERO)])).await;
    let id = case.hostile.id.clone();
    let h = case.host.clone();
    let i2 = id.clone();
    wait_for(
        "30 unmatched responses counted",
        Duration::from_secs(10),
        || {
            let n = h.vm(&i2).map_or(0, |v| v.stats.unmatched_responses);
            async move { n == 30 }
        },
    )
    .await;
    case.check_contained(Duration::from_millis(100)).await;
    case.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_line_then_silence_holds_only_that_half() {
    let half = b"{\"type\":\"system_metrics\",\"metrics\":{\"cpu\":{\"usage_percent\":".to_vec();
    let case = start(scripted(vec![(half.clone(), Duration::from_secs(3600))])).await;
    let id = case.hostile.id.clone();
    let h = case.host.clone();
    let i2 = id.clone();
    wait_for("half line buffered", Duration::from_secs(5), || {
        let b = h.vm(&i2).map_or(0, |v| v.stats.buffered_bytes);
        async move { b > 0 }
    })
    .await;
    case.check_contained(Duration::from_millis(300)).await;
    let v = case.host.vm(&id).expect("vm");
    assert_eq!(v.stats.buffered_bytes, half.len() as u64);
    assert_eq!(v.status, VmStatus::Offline, "half a message proves nothing");
    assert!(v.connected);
    case.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_never_speaks_costs_nothing_and_harms_no_one() {
    let case = start(silent()).await;
    let id = case.hostile.id.clone();
    case.check_contained(Duration::from_millis(500)).await;
    let v = case.host.vm(&id).expect("vm");
    assert_eq!(v.status, VmStatus::Offline);
    assert_eq!(v.stats.messages, 0);
    assert_eq!(v.stats.connections, 1);
    assert_eq!(stored_cpus(&case.store, &id).await.len(), 0);
    case.finish().await;
}

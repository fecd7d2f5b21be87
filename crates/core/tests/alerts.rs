//! The alert engine against real sockets, a real SQLite store and a real local HTTP receiver
//! for webhooks: rules raise and resolve on the data's path, a failing receiver is retried, a
//! hostile guest raises alerts only for itself and cannot flood a receiver, agent-offline
//! alerts follow the VM's socket, and bad rules store nothing.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

use common::*;
use infinibay_core::control::{AlertTransition, ControlError, NewAlertRule, VmControl};
use infinibay_core::protocol::message::{GuestError, GuestMessage};
use infinibay_core::protocol::samples::{Jitter, identification, small_metrics};
use infinibay_core::store::{AlertKind, AlertQuery, AlertRecord};
use infinibay_core::{BusEvent, Core, CoreConfig, Filter, Topic};

/// The timed tests take turns: each runs a host with sub-second alert timers, and several of
/// them at once on a loaded 2-core machine starve each other's timers and guests.
static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

/// A webhook receiver on a free local port: records what it accepts, refuses the first
/// `fail_first` requests with 500.
struct Receiver {
    url: String,
    accepted: Arc<Mutex<Vec<(Instant, Value)>>>,
    requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct ReceiverState {
    accepted: Arc<Mutex<Vec<(Instant, Value)>>>,
    requests: Arc<AtomicU64>,
    fail_first: u64,
}

async fn hook(State(s): State<ReceiverState>, body: axum::Json<Value>) -> StatusCode {
    let n = s.requests.fetch_add(1, Ordering::SeqCst);
    if n < s.fail_first {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    s.accepted.lock().await.push((Instant::now(), body.0));
    StatusCode::NO_CONTENT
}

impl Receiver {
    async fn start(fail_first: u64) -> Self {
        let state = ReceiverState {
            accepted: Arc::new(Mutex::new(Vec::new())),
            requests: Arc::new(AtomicU64::new(0)),
            fail_first,
        };
        let app = Router::new()
            .route("/hook", post(hook))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            accepted: state.accepted,
            requests: state.requests,
            task,
        }
    }

    async fn bodies(&self) -> Vec<(Instant, Value)> {
        self.accepted.lock().await.clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Fast checks, fast retries, a short rate-bound interval.
fn alert_config(env: &TestEnv, notify_interval_secs: f64) -> CoreConfig {
    let mut c = env.config();
    c.alerts.notify_interval_secs = notify_interval_secs;
    c.alerts.check_interval_secs = 0.1;
    c.alerts.webhook_backoff_secs = 0.1;
    c.alerts.webhook_timeout_secs = 2.0;
    c
}

fn rule(
    kind: AlertKind,
    vm: Option<&str>,
    threshold: Option<f64>,
    secs: i64,
    hook: &str,
) -> NewAlertRule {
    NewAlertRule {
        vm_id: vm.map(str::to_owned),
        kind,
        threshold,
        mount_point: None,
        duration_secs: secs,
        webhook_urls: vec![hook.to_owned()],
    }
}

async fn stored_alerts(host: &Core) -> Vec<AlertRecord> {
    host.store()
        .alerts()
        .alerts(&AlertQuery {
            limit: 10_000,
            ..AlertQuery::default()
        })
        .await
        .expect("alerts")
}

async fn wait_stored<F: Fn(&[AlertRecord]) -> bool>(host: &Core, what: &str, check: F) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let alerts = stored_alerts(host).await;
        if check(&alerts) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {alerts:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_rule_raises_after_its_duration_resolves_below_it_and_a_failing_webhook_is_retried() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::new();
    let receiver = Receiver::start(2).await;
    let dial = cpu_dial(20.0);
    let vm = FakeVm::spawn(
        &env.sockets,
        None,
        agent(AgentOpts {
            interval: Duration::from_millis(100),
            cpu: Some(dial.clone()),
            ..AgentOpts::default()
        }),
    );
    let host = env.start(alert_config(&env, 0.5)).await;
    wait_online(&host, &vm.id).await;
    let mut events = host.subscribe(Filter::topic(Topic::Alert));
    let created = VmControl::create_alert_rule(
        &host,
        rule(AlertKind::Cpu, Some(&vm.id), Some(80.0), 1, &receiver.url),
        Some(1),
    )
    .await
    .expect("rule");

    set_cpu(&dial, 95.0);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        stored_alerts(&host).await.is_empty(),
        "raised before the value held for the rule's duration"
    );
    let raised = match tokio::time::timeout(Duration::from_secs(10), events.next_event()).await {
        Ok(Some(BusEvent::Alert(e))) => e,
        other => panic!("no alert event: {other:?}"),
    };
    assert_eq!(raised.transition, AlertTransition::Raised);
    assert_eq!(raised.alert.vm_id, vm.id);
    assert_eq!(raised.alert.rule_id, created.id);
    assert!(raised.alert.value.is_some_and(|v| v > 80.0));
    wait_stored(&host, "the raised alert stored", |a| {
        a.len() == 1 && a[0].resolved_at.is_none()
    })
    .await;

    set_cpu(&dial, 10.0);
    let resolved = match tokio::time::timeout(Duration::from_secs(10), events.next_event()).await {
        Ok(Some(BusEvent::Alert(e))) => e,
        other => panic!("no resolution: {other:?}"),
    };
    assert_eq!(resolved.transition, AlertTransition::Resolved);
    assert_eq!(resolved.alert.id, raised.alert.id);
    wait_stored(&host, "the alert resolved in the store", |a| {
        a.len() == 1 && a[0].resolved_at.is_some()
    })
    .await;

    // The receiver refused the first two attempts; both notifications arrived in the end.
    wait_for(
        "both notifications delivered",
        Duration::from_secs(10),
        || async { receiver.bodies().await.len() == 2 },
    )
    .await;
    let mut bodies: Vec<Value> = receiver
        .bodies()
        .await
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    bodies.sort_by_key(|b| b["event"].as_str().map(str::to_owned));
    assert_eq!(bodies[0]["event"], json!("alert:raised"));
    assert_eq!(bodies[1]["event"], json!("alert:resolved"));
    for body in &bodies {
        assert_eq!(body["alert"]["vmId"], json!(vm.id));
        assert_eq!(body["alert"]["kind"], json!("cpu"));
        assert_eq!(body["alert"]["id"], json!(raised.alert.id));
    }
    assert!(
        receiver.requests.load(Ordering::SeqCst) >= 4,
        "two refusals, then two deliveries"
    );
    // The receiver records a body before it answers; the notifier counts the delivery after.
    wait_for(
        "both deliveries counted",
        Duration::from_secs(10),
        || async { host.stats().alerts.notifications_delivered == 2 },
    )
    .await;
    let stats = host.stats().alerts;
    assert_eq!((stats.raised, stats.resolved), (1, 1));
    assert_eq!(stats.notifications_delivered, 2);
    assert!(stats.notification_retries >= 2, "{stats:?}");
    host.shutdown().await;
    vm.remove().await;
}

/// A guest that claims to be `victim` in every message, flaps its cpu between 100 and 0 and
/// floods errors, every 20 ms.
fn impostor(victim: String) -> GuestFn {
    Arc::new(move |stream| {
        let victim = victim.clone();
        Box::pin(async move {
            let (mut rd, mut wr) = stream.into_split();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
            });
            let mut id = identification("impostor");
            id.claimed_vm_id = Some(victim.clone());
            if wr
                .write_all(&line(&GuestMessage::VmIdentification(id)))
                .await
                .is_err()
            {
                return;
            }
            let mut jitter = Jitter::new(3);
            for seq in 0u64.. {
                let mut m = small_metrics(&mut jitter, seq);
                m.claimed_vm_id = Some(victim.clone());
                m.metrics.cpu.usage_percent = if seq % 2 == 0 { 100.0 } else { 0.0 };
                let error = GuestMessage::Error(GuestError {
                    code: Some("spoofed".into()),
                    error: format!("error {seq} from {victim}"),
                    ..GuestError::default()
                });
                let mut bytes = line(&GuestMessage::SystemMetrics(m));
                bytes.extend(line(&error));
                if wr.write_all(&bytes).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_guest_raises_alerts_only_for_itself_and_cannot_flood_a_webhook() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::new();
    let receiver = Receiver::start(0).await;
    let victim = FakeVm::spawn(
        &env.sockets,
        None,
        agent(AgentOpts {
            cpu: Some(cpu_dial(10.0)),
            ..AgentOpts::default()
        }),
    );
    let hostile = FakeVm::spawn(&env.sockets, None, impostor(victim.id.clone()));
    let hostile_id = hostile.id.clone();
    let interval = Duration::from_secs(1);
    let mut config = alert_config(&env, interval.as_secs_f64());
    // Let the flood in at full speed: the rate bound under test is the notifier's.
    config.ingest.rate_per_sec = 1_000.0;
    config.ingest.burst = 1_000;
    let host = env.start(config).await;
    wait_online(&host, &victim.id).await;
    wait_online(&host, &hostile.id).await;
    for r in [
        rule(AlertKind::Cpu, None, Some(50.0), 0, &receiver.url),
        rule(AlertKind::GuestError, None, None, 1, &receiver.url),
        rule(
            AlertKind::Cpu,
            Some(&victim.id),
            Some(50.0),
            0,
            &receiver.url,
        ),
    ] {
        VmControl::create_alert_rule(&host, r, None)
            .await
            .expect("rule");
    }
    let flood = Duration::from_millis(3_500);
    tokio::time::sleep(flood).await;
    hostile.remove().await;
    // Let the held notifications go out and the store catch up.
    tokio::time::sleep(interval + Duration::from_millis(800)).await;

    let alerts = stored_alerts(&host).await;
    assert!(
        alerts.iter().all(|a| a.vm_id == hostile_id),
        "an alert was raised for a VM the guest only claimed to be: {alerts:#?}"
    );
    assert!(
        alerts.iter().filter(|a| a.kind == AlertKind::Cpu).count() >= 10,
        "the flapping cpu raised its own alerts ({} stored)",
        alerts.len()
    );
    let bodies = receiver.bodies().await;
    assert!(
        !bodies.is_empty(),
        "the hostile VM's own alerts were notified"
    );
    let mut by_rule: std::collections::HashMap<String, Vec<Instant>> = Default::default();
    for (at, body) in &bodies {
        assert_eq!(body["alert"]["vmId"], json!(hostile_id), "{body}");
        let rule = body["alert"]["ruleId"].as_str().expect("ruleId").to_owned();
        by_rule.entry(rule).or_default().push(*at);
    }
    let window = flood + interval + Duration::from_millis(800);
    let bound = (window.as_secs_f64() / interval.as_secs_f64()).ceil() as usize + 1;
    for (rule, times) in &by_rule {
        assert!(
            times.len() <= bound,
            "rule {rule}: {} notifications in {window:?}, at most {bound} allowed",
            times.len()
        );
        for pair in times.windows(2) {
            let gap = pair[1].duration_since(pair[0]);
            // One per interval at the sender; arrival times jitter by a delivery's latency.
            assert!(
                gap >= interval.mul_f64(0.7),
                "rule {rule}: two notifications {gap:?} apart (interval {interval:?})"
            );
        }
    }
    assert!(host.stats().alerts.notifications_deferred > 0);
    host.shutdown().await;
    victim.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_offline_alerts_follow_the_vms_socket_and_resolve_when_the_agent_returns() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::new();
    let receiver = Receiver::start(0).await;
    let opts = AgentOpts::default();
    let vm = FakeVm::spawn(&env.sockets, None, agent(opts.clone()));
    let id = vm.id.clone();
    let host = env.start(alert_config(&env, 0.2)).await;
    wait_online(&host, &id).await;
    VmControl::create_alert_rule(
        &host,
        rule(AlertKind::AgentOffline, None, None, 2, &receiver.url),
        None,
    )
    .await
    .expect("rule");

    // QEMU still holds the socket (the VM runs) but the agent is gone: raised after 2 s.
    let path = vm.kill_keep_file().await;
    let went_offline = Instant::now();
    wait_stored(&host, "an agent-offline alert", |a| a.len() == 1).await;
    assert!(went_offline.elapsed() >= Duration::from_millis(1_900));
    assert_eq!(stored_alerts(&host).await[0].kind, AlertKind::AgentOffline);

    // The agent answers again: resolved.
    let _ = std::fs::remove_file(&path);
    let vm = FakeVm::spawn_at(id.clone(), path, agent(opts));
    wait_online(&host, &id).await;
    wait_stored(&host, "the alert resolved", |a| {
        a.len() == 1 && a[0].resolved_at.is_some()
    })
    .await;

    // The VM stops (its socket goes away): offline, but not running, so no alert.
    vm.remove().await;
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert_eq!(
        stored_alerts(&host).await.len(),
        1,
        "a stopped VM raised an alert"
    );
    host.shutdown().await;
}

/// Identification, then `errors` errors 100 ms apart, then samples only.
fn erring(errors: usize) -> GuestFn {
    Arc::new(move |stream| {
        Box::pin(async move {
            let (mut rd, mut wr) = stream.into_split();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
            });
            let id = GuestMessage::VmIdentification(identification("erring"));
            if wr.write_all(&line(&id)).await.is_err() {
                return;
            }
            let mut jitter = Jitter::new(5);
            for seq in 0u64.. {
                let mut bytes = line(&GuestMessage::SystemMetrics(small_metrics(
                    &mut jitter,
                    seq,
                )));
                if (seq as usize) < errors {
                    bytes.extend(line(&GuestMessage::Error(GuestError {
                        code: Some("collector_failed".into()),
                        error: format!("reading /proc/diskstats failed ({seq})"),
                        ..GuestError::default()
                    })));
                }
                if wr.write_all(&bytes).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_errors_raise_one_alert_that_resolves_after_a_quiet_period() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let env = TestEnv::new();
    let receiver = Receiver::start(0).await;
    let host = env.start(alert_config(&env, 0.2)).await;
    VmControl::create_alert_rule(
        &host,
        rule(AlertKind::GuestError, None, None, 1, &receiver.url),
        None,
    )
    .await
    .expect("rule");
    let vm = FakeVm::spawn(&env.sockets, None, erring(3));
    wait_stored(
        &host,
        "one guest-error alert, resolved after 1 s without errors",
        |a| a.len() == 1 && a[0].resolved_at.is_some(),
    )
    .await;
    let alert = &stored_alerts(&host).await[0];
    assert_eq!(alert.vm_id, vm.id);
    assert!(
        alert.message.contains("collector_failed"),
        "{}",
        alert.message
    );
    let open_for = alert.resolved_at.expect("resolved") - alert.raised_at;
    assert!(
        open_for >= chrono::Duration::milliseconds(1_150),
        "{open_for}"
    );
    let errors = host.store().vm_errors(&vm.id, 10).await.expect("errors");
    assert_eq!(errors.len(), 3, "every error is stored");
    host.shutdown().await;
    vm.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rules_and_rules_over_the_limits_are_refused_and_store_nothing() {
    let env = TestEnv::new();
    let (vm, host) = env.start_with_one_agent().await;
    let hook = "http://127.0.0.1:9/hook";
    let bad = [
        rule(AlertKind::Cpu, None, Some(150.0), 60, hook),
        rule(AlertKind::Cpu, None, None, 60, hook),
        rule(AlertKind::Memory, None, Some(50.0), 100_000, hook),
        rule(AlertKind::AgentOffline, None, Some(1.0), 60, hook),
        rule(AlertKind::GuestError, None, None, 60, "file:///etc/passwd"),
        NewAlertRule {
            webhook_urls: vec![hook.into(); 5],
            ..rule(AlertKind::Cpu, None, Some(90.0), 60, hook)
        },
    ];
    for r in bad {
        match VmControl::create_alert_rule(&host, r.clone(), None).await {
            Err(ControlError::Invalid(_)) => {}
            other => panic!("{r:?} gave {other:?}"),
        }
    }
    match VmControl::create_alert_rule(
        &host,
        rule(
            AlertKind::Cpu,
            Some("00000000-0000-4000-8000-00000000dead"),
            Some(90.0),
            60,
            hook,
        ),
        None,
    )
    .await
    {
        Err(ControlError::NotFound(_)) => {}
        other => panic!("a rule for an unknown VM gave {other:?}"),
    }
    assert!(
        host.store()
            .alerts()
            .alert_rules()
            .await
            .expect("rules")
            .is_empty()
    );

    for n in 0..32 {
        VmControl::create_alert_rule(
            &host,
            rule(
                AlertKind::Cpu,
                Some(&vm.id),
                Some(50.0 + f64::from(n)),
                60,
                hook,
            ),
            None,
        )
        .await
        .expect("within the limit");
    }
    match VmControl::create_alert_rule(
        &host,
        rule(AlertKind::Memory, Some(&vm.id), Some(90.0), 60, hook),
        None,
    )
    .await
    {
        Err(ControlError::Invalid(m)) => assert!(m.contains("at most 32"), "{m}"),
        other => panic!("the 33rd rule of a VM gave {other:?}"),
    }
    assert_eq!(
        host.store()
            .alerts()
            .alert_rules()
            .await
            .expect("rules")
            .len(),
        32
    );
    let first = host.store().alerts().alert_rules().await.expect("rules")[0]
        .id
        .clone();
    assert!(
        VmControl::delete_alert_rule(&host, &first)
            .await
            .expect("delete")
    );
    assert!(
        !VmControl::delete_alert_rule(&host, &first)
            .await
            .expect("again")
    );
    assert_eq!(host.stats().alerts.rules, 31);
    host.shutdown().await;
    vm.remove().await;
}

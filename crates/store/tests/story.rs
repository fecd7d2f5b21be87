//! One story of the storage layer, written once and run against both backends.
//!
//! Every scenario is an `async fn(Arc<dyn Store>)` in `story`; the `both_backends!` macro makes
//! a `sqlite::<name>` and a `postgres::<name>` test of each.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, DurationRound, Utc};
use infinibay_store::protocol::samples::{Jitter, identification, small_metrics};
use infinibay_store::{
    AlertChange, AlertKind, AlertQuery, AlertRecord, AlertRule, CommandLogEntry, Inventory,
    InventoryKind, MetricSample, MetricSeries, NameSource, Resolution, Retention, Store,
    StoreError, VmErrorRecord, VmStatus, VmStatusUpdate, VmTelemetry,
};
use serde_json::json;

/// Now, to the millisecond (the precision both backends keep).
fn now_ms() -> DateTime<Utc> {
    Utc::now()
        .duration_trunc(Duration::milliseconds(1))
        .expect("truncate to ms")
}

fn sample(vm: &str, at: DateTime<Utc>, cpu: f64, mem_used_kb: i64) -> MetricSample {
    let mut jitter = Jitter::new(at.timestamp_millis() as u64);
    let mut detail = small_metrics(&mut jitter, 1000).metrics;
    detail.cpu.usage_percent = cpu;
    MetricSample {
        vm_id: vm.to_owned(),
        received_at: at,
        guest_time: Some(at - Duration::milliseconds(250)),
        cpu_percent: cpu,
        mem_used_kb,
        mem_total_kb: 4_028_440,
        swap_used_kb: Some(0),
        disk_used_percent: Some(41.5),
        disk_read_bps: cpu * 10.0,
        disk_write_bps: cpu * 5.0,
        net_rx_bps: 1000.0 + cpu,
        net_tx_bps: 500.0,
        load1: 0.25,
        detail: std::sync::Arc::new(detail),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * (1.0 + a.abs().max(b.abs()))
}

/// avg, min, max, count of a list.
fn stats(values: &[f64]) -> (f64, f64, f64, i64) {
    let sum: f64 = values.iter().sum();
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (sum / values.len() as f64, min, max, values.len() as i64)
}

fn floor_to(t: DateTime<Utc>, step: Duration) -> DateTime<Utc> {
    let ms = t.timestamp_millis();
    let step = step.num_milliseconds();
    DateTime::from_timestamp_millis(ms.div_euclid(step) * step).expect("valid time")
}

/// Registers one VM (a batch of one).
async fn register(store: &Arc<dyn Store>, vm: &str, first_seen: DateTime<Utc>) {
    store
        .upsert_vms(&[(vm.to_owned(), first_seen)])
        .await
        .expect("register");
}

fn status(vm: &str, status: VmStatus, last_seen: Option<DateTime<Utc>>) -> VmStatusUpdate {
    VmStatusUpdate {
        vm_id: vm.to_owned(),
        status,
        last_seen,
    }
}

mod story {
    use super::*;

    pub async fn vms_register_once_and_keep_status_agent_and_owner(store: Arc<dyn Store>) {
        let t0 = now_ms() - Duration::minutes(5);
        register(&store, "vm-b", t0).await;
        let vm = store
            .get_vm("vm-b")
            .await
            .expect("get")
            .expect("registered");
        assert_eq!(vm.name, "vm-b", "the name defaults to the id");
        assert_eq!(vm.status, VmStatus::Offline);
        assert_eq!(vm.created_at, t0);
        assert_eq!(vm.last_seen, None);

        register(&store, "vm-b", t0 + Duration::minutes(1)).await;
        let again = store
            .get_vm("vm-b")
            .await
            .expect("get")
            .expect("registered");
        assert_eq!(
            again.created_at, t0,
            "registering twice keeps the first sighting"
        );
        register(&store, "vm-a", t0).await;

        let seen = t0 + Duration::minutes(2);
        assert_eq!(
            store
                .set_vm_statuses(&[status("vm-b", VmStatus::Online, Some(seen))])
                .await
                .expect("online"),
            1
        );
        let mut agent = identification("web-01");
        agent.timestamp = None;
        assert_eq!(
            store
                .set_vm_agents(&[("vm-b".into(), agent.clone())])
                .await
                .expect("agent"),
            1
        );
        store
            .set_vm_owner("vm-b", Some(7), Some("engineering"))
            .await
            .expect("owner");

        let vm = store.get_vm("vm-b").await.expect("get").expect("exists");
        assert_eq!(vm.status, VmStatus::Online);
        assert_eq!(vm.last_seen, Some(seen));
        assert_eq!(
            vm.name, "web-01",
            "the agent's host name replaces the default name"
        );
        assert_eq!(vm.agent, Some(agent.clone()));
        assert_eq!(vm.owner_id, Some(7));
        assert_eq!(vm.department.as_deref(), Some("engineering"));

        store
            .set_vm_statuses(&[status("vm-b", VmStatus::Offline, None)])
            .await
            .expect("offline");
        let vm = store.get_vm("vm-b").await.expect("get").expect("exists");
        assert_eq!(vm.status, VmStatus::Offline);
        assert_eq!(vm.last_seen, Some(seen), "no time given keeps last_seen");

        let ids: Vec<String> = store
            .list_vms()
            .await
            .expect("list")
            .into_iter()
            .map(|v| v.id)
            .collect();
        assert_eq!(ids, ["vm-a", "vm-b"]);
        assert!(store.get_vm("nope").await.expect("get").is_none());
        assert_eq!(
            store
                .set_vm_statuses(&[status("nope", VmStatus::Online, None)])
                .await
                .expect("status of an unknown VM"),
            0,
            "an unknown VM is not updated"
        );
        assert_eq!(
            store
                .set_vm_agents(&[("nope".into(), agent)])
                .await
                .expect("agent of an unknown VM"),
            0,
            "an unknown VM is not updated"
        );
        assert!(
            store.get_vm("nope").await.expect("get").is_none(),
            "nor registered"
        );
        assert!(matches!(
            store.set_vm_owner("nope", Some(7), None).await,
            Err(StoreError::NotFound(_))
        ));
    }

    pub async fn a_persons_name_beats_the_domain_name_which_beats_the_agents_host_name(
        store: Arc<dyn Store>,
    ) {
        let t0 = now_ms();
        for id in ["dom", "made", "plain"] {
            register(&store, id, t0).await;
        }
        let name = |id: &str| {
            let store = store.clone();
            let id = id.to_owned();
            async move { store.get_vm(&id).await.expect("get").expect("exists").name }
        };
        let hostname = |vm: &str| (vm.to_owned(), identification("guest-host"));

        // A domain name replaces the id, and the agent's host name does not replace it.
        let named = store
            .set_vm_names(&[("dom".into(), "web <1>".into())], NameSource::Hypervisor)
            .await
            .expect("domain name");
        assert_eq!(named, 1);
        store
            .set_vm_agents(&[hostname("dom"), hostname("plain")])
            .await
            .expect("agents");
        assert_eq!(name("dom").await, "web <1>");
        assert_eq!(
            name("plain").await,
            "guest-host",
            "no domain: the host name"
        );
        // The hypervisor's name replaces the agent's; the same name again changes nothing.
        let named = store
            .set_vm_names(
                &[("plain".into(), "plain-domain".into())],
                NameSource::Hypervisor,
            )
            .await
            .expect("domain name");
        assert_eq!(named, 1);
        assert_eq!(name("plain").await, "plain-domain");
        let again = store
            .set_vm_names(
                &[("plain".into(), "plain-domain".into())],
                NameSource::Hypervisor,
            )
            .await
            .expect("same name");
        assert_eq!(again, 0, "an unchanged name is not rewritten");

        // A person's choice wins over both, and stays.
        store
            .set_vm_names(&[("made".into(), "chosen".into())], NameSource::Person)
            .await
            .expect("person");
        let named = store
            .set_vm_names(&[("made".into(), "domain".into())], NameSource::Hypervisor)
            .await
            .expect("domain name");
        assert_eq!(
            named, 0,
            "the hypervisor does not rename what a person named"
        );
        store
            .set_vm_agents(&[hostname("made")])
            .await
            .expect("agent");
        assert_eq!(name("made").await, "chosen");
        assert_eq!(
            store
                .set_vm_names(&[("nope".into(), "x".into())], NameSource::Person)
                .await
                .expect("unknown"),
            0,
            "an unknown VM is not named"
        );
        assert!(store.get_vm("nope").await.expect("get").is_none());
    }

    pub async fn samples_land_and_latest_sample_keeps_full_detail(store: Arc<dyn Store>) {
        let t = now_ms() - Duration::seconds(30);
        let newest = sample("vm-a", t - Duration::seconds(1), 42.5, 2_000_000);
        let batch = vec![
            sample("vm-a", t - Duration::seconds(3), 10.0, 1_000_000),
            newest.clone(),
            sample("vm-a", t - Duration::seconds(2), 20.0, 1_500_000),
            sample("vm-new", t, 5.0, 100),
        ];
        store.insert_samples(&batch).await.expect("insert");
        let latest = store.latest_sample("vm-a").await.expect("latest");
        assert_eq!(
            latest,
            Some(newest.clone()),
            "newest sample, detail included"
        );

        let vm = store
            .get_vm("vm-a")
            .await
            .expect("get")
            .expect("auto-registered");
        assert_eq!(vm.last_seen, Some(newest.received_at));
        assert!(
            store.get_vm("vm-new").await.expect("get").is_some(),
            "samples register unknown VMs instead of being dropped"
        );

        store
            .insert_samples(&[sample("vm-a", t - Duration::seconds(10), 99.0, 1)])
            .await
            .expect("late insert");
        assert_eq!(
            store.latest_sample("vm-a").await.expect("latest"),
            Some(newest),
            "an older sample arriving late does not replace the latest"
        );
        assert!(store.latest_sample("nope").await.expect("latest").is_none());
    }

    pub async fn metrics_query_returns_raw_samples_or_raw_buckets(store: Arc<dyn Store>) {
        let end = floor_to(now_ms() - Duration::minutes(10), Duration::minutes(1));
        let start = end - Duration::seconds(120);
        let samples: Vec<MetricSample> = (0..120)
            .map(|i| {
                sample(
                    "vm-a",
                    start + Duration::seconds(i),
                    (i % 100) as f64,
                    1000 + i,
                )
            })
            .collect();
        store.insert_samples(&samples).await.expect("insert");
        store
            .insert_samples(&[sample("vm-other", start, 1.0, 1)])
            .await
            .expect("insert other");

        let MetricSeries {
            resolution, points, ..
        } = store
            .metrics_series("vm-a", start, end, 1000)
            .await
            .expect("raw query");
        assert_eq!(resolution, Resolution::Raw);
        assert_eq!(points.len(), 120);
        for (i, point) in points.iter().enumerate() {
            assert_eq!(point.at, start + Duration::seconds(i as i64));
            assert_eq!(point.cpu_avg, (i % 100) as f64);
            assert_eq!(point.samples, 1);
            assert_eq!(point.mem_used_kb_avg, (1000 + i) as f64);
        }

        let series = store
            .metrics_series("vm-a", start, end, 10)
            .await
            .expect("bucketed query");
        assert_eq!(series.resolution, Resolution::Raw);
        assert_eq!(series.bucket_seconds, Some(12));
        assert!(series.points.len() <= 11, "about max_points points");
        let mut expected: BTreeMap<DateTime<Utc>, Vec<f64>> = BTreeMap::new();
        for s in &samples {
            expected
                .entry(floor_to(s.received_at, Duration::seconds(12)))
                .or_default()
                .push(s.cpu_percent);
        }
        assert_eq!(series.points.len(), expected.len());
        for (point, (at, cpus)) in series.points.iter().zip(&expected) {
            let (avg, min, max, count) = stats(cpus);
            assert_eq!(point.at, *at);
            assert!(close(point.cpu_avg, avg), "{} vs {avg}", point.cpu_avg);
            assert_eq!(
                (point.cpu_min, point.cpu_max, point.samples),
                (min, max, count)
            );
        }
        assert_eq!(series.points.iter().map(|p| p.samples).sum::<i64>(), 120);

        let MetricSeries { points: empty, .. } = store
            .metrics_series("vm-a", end, start, 100)
            .await
            .expect("inverted");
        assert!(empty.is_empty());
    }

    /// Each VM's rollup holds its own samples only, whichever part of the minute they fell in
    /// (a backend may group a bucket in several reads and merge them).
    pub async fn rollups_keep_each_vms_samples_apart_across_the_minute(store: Arc<dyn Store>) {
        let now = now_ms();
        let minute = floor_to(now, Duration::minutes(1)) - Duration::minutes(10);
        let mut expected: BTreeMap<&str, Vec<(f64, i64)>> = BTreeMap::new();
        let mut samples = Vec::new();
        // Three VMs, one sample each every 3 s, offset from each other, with different values.
        for (v, vm) in ["vm-a", "vm-b", "vm-c"].into_iter().enumerate() {
            for i in 0..20i64 {
                let at = minute + Duration::milliseconds(3_000 * i + 700 * v as i64);
                let cpu = (10 * v as i64 + (i * 7) % 13) as f64;
                let mem = 500_000 * (v as i64 + 1) + i;
                samples.push(sample(vm, at, cpu, mem));
                expected.entry(vm).or_default().push((cpu, mem));
            }
        }
        samples.sort_by_key(|s| s.received_at);
        store.insert_samples(&samples).await.expect("insert");
        store
            .maintain(now, Retention::default(), 1000)
            .await
            .expect("maintain");
        let short_raw = Retention {
            raw: Duration::minutes(5),
            ..Retention::default()
        };
        store
            .maintain(now, short_raw, 1000)
            .await
            .expect("prune raw");
        for (vm, values) in &expected {
            let MetricSeries {
                resolution, points, ..
            } = store
                .metrics_series(vm, minute, minute + Duration::minutes(1), 1000)
                .await
                .expect("minute query");
            assert_eq!(resolution, Resolution::Minute, "{vm}");
            assert_eq!(points.len(), 1, "{vm}: one minute");
            let cpus: Vec<f64> = values.iter().map(|v| v.0).collect();
            let mems: Vec<f64> = values.iter().map(|v| v.1 as f64).collect();
            let (avg, min, max, count) = stats(&cpus);
            let point = &points[0];
            assert_eq!(point.samples, count, "{vm}");
            assert!(
                close(point.cpu_avg, avg),
                "{vm}: {} vs {avg}",
                point.cpu_avg
            );
            assert_eq!((point.cpu_min, point.cpu_max), (min, max), "{vm}");
            assert!(close(point.mem_used_kb_avg, stats(&mems).0), "{vm}");
        }
    }

    pub async fn maintain_rolls_up_minutes_and_hours_without_double_counting(
        store: Arc<dyn Store>,
    ) {
        let now = now_ms();
        let base = floor_to(now, Duration::hours(1)) - Duration::hours(3);
        // Two full hours, a sample every 10 s.
        let mut samples: Vec<MetricSample> = (0..720)
            .map(|i| {
                sample(
                    "vm-a",
                    base + Duration::seconds(10 * i),
                    ((i * 37) % 101) as f64,
                    1_000_000 + i * 10,
                )
            })
            .collect();
        for chunk in samples.chunks(100) {
            store.insert_samples(chunk).await.expect("insert");
        }
        let report = store
            .maintain(now, Retention::default(), 1000)
            .await
            .expect("maintain");
        assert!(report.minute_buckets >= 120, "{report:?}");
        assert!(report.hour_buckets >= 2, "{report:?}");
        assert_eq!(report.pruned, 0);
        let again = store
            .maintain(now, Retention::default(), 1000)
            .await
            .expect("maintain again");
        assert_eq!(again.minute_buckets, 0, "nothing new to roll: {again:?}");

        // A late sample for an already rolled minute: that minute (and its hour) is
        // recomputed from the raw rows, so it counts once, and nothing else doubles.
        let late = sample("vm-a", base + Duration::seconds(5), 100.0, 5);
        store
            .insert_samples(std::slice::from_ref(&late))
            .await
            .expect("late insert");
        samples.push(late);
        let recomputed = store
            .maintain(now, Retention::default(), 1000)
            .await
            .expect("maintain after late sample");
        assert!(recomputed.minute_buckets >= 1, "{recomputed:?}");

        // Shorter raw retention: raw rows go, the minute rollups answer.
        let short_raw = Retention {
            raw: Duration::minutes(30),
            ..Retention::default()
        };
        let pruned = store
            .maintain(now, short_raw, 100)
            .await
            .expect("prune raw");
        assert_eq!(pruned.pruned, samples.len() as u64, "{pruned:?}");
        let MetricSeries {
            resolution, points, ..
        } = store
            .metrics_series("vm-a", base, base + Duration::hours(2), 1000)
            .await
            .expect("minute query");
        assert_eq!(resolution, Resolution::Minute);
        assert_eq!(points.len(), 120);
        let mut by_minute: BTreeMap<DateTime<Utc>, Vec<&MetricSample>> = BTreeMap::new();
        for s in &samples {
            by_minute
                .entry(floor_to(s.received_at, Duration::minutes(1)))
                .or_default()
                .push(s);
        }
        for (point, (at, group)) in points.iter().zip(&by_minute) {
            let cpus: Vec<f64> = group.iter().map(|s| s.cpu_percent).collect();
            let mems: Vec<f64> = group.iter().map(|s| s.mem_used_kb as f64).collect();
            let (avg, min, max, count) = stats(&cpus);
            assert_eq!(point.at, *at);
            assert_eq!(point.samples, count, "minute {at}");
            assert!(
                close(point.cpu_avg, avg),
                "minute {at}: {} vs {avg}",
                point.cpu_avg
            );
            assert_eq!((point.cpu_min, point.cpu_max), (min, max));
            assert!(close(point.mem_used_kb_avg, stats(&mems).0));
            assert_eq!(point.mem_total_kb, 4_028_440);
        }
        assert_eq!(points[0].samples, 7, "the late sample counted exactly once");

        // Shorter minute retention too: the hour rollups answer.
        let short_minute = Retention {
            raw: Duration::minutes(30),
            minute: Duration::minutes(90),
            ..Retention::default()
        };
        store
            .maintain(now, short_minute, 100)
            .await
            .expect("prune minutes");
        let MetricSeries {
            resolution,
            points: hours,
            ..
        } = store
            .metrics_series("vm-a", base, base + Duration::hours(2), 1000)
            .await
            .expect("hour query");
        assert_eq!(resolution, Resolution::Hour);
        assert_eq!(hours.len(), 2);
        for (h, point) in hours.iter().enumerate() {
            let start = base + Duration::hours(h as i64);
            let cpus: Vec<f64> = samples
                .iter()
                .filter(|s| floor_to(s.received_at, Duration::hours(1)) == start)
                .map(|s| s.cpu_percent)
                .collect();
            let (avg, min, max, count) = stats(&cpus);
            assert_eq!(point.at, start);
            assert_eq!(point.samples, count);
            assert!(close(point.cpu_avg, avg), "{} vs {avg}", point.cpu_avg);
            assert_eq!((point.cpu_min, point.cpu_max), (min, max));
        }

        // Many points asked for fewer: hours merged into wider buckets, weights kept.
        let series = store
            .metrics_series("vm-a", base, base + Duration::hours(2), 1)
            .await
            .expect("merged hours");
        assert_eq!(series.bucket_seconds, Some(7200));
        assert_eq!(
            series.points.iter().map(|p| p.samples).sum::<i64>(),
            samples.len() as i64
        );
    }

    pub async fn retention_prunes_only_old_rows(store: Arc<dyn Store>) {
        let now = now_ms();
        let old = floor_to(now - Duration::days(40), Duration::hours(1));
        let old_samples: Vec<MetricSample> = (0..30)
            .map(|i| sample("vm-a", old + Duration::seconds(20 * i), i as f64, 1))
            .collect();
        let recent: Vec<MetricSample> = (0..10)
            .map(|i| {
                sample(
                    "vm-a",
                    now - Duration::minutes(20) + Duration::seconds(i),
                    1.0,
                    1,
                )
            })
            .collect();
        store
            .insert_samples(&old_samples)
            .await
            .expect("insert old");
        store.insert_samples(&recent).await.expect("insert recent");

        // Back then, maintenance rolled the old samples up (10 minutes, 1 hour).
        let back_then = old + Duration::hours(2);
        let rolled = store
            .maintain(back_then, Retention::default(), 1000)
            .await
            .expect("maintain back then");
        assert_eq!((rolled.minute_buckets, rolled.hour_buckets), (10, 1));

        // Today: old raw rows (> 48 h) and minute rollups (> 30 days) go, 7 per statement;
        // the hour rollup (< 1 year) and the recent raw rows stay.
        let today = store
            .maintain(now, Retention::default(), 7)
            .await
            .expect("maintain today");
        assert_eq!(today.pruned, 30 + 10, "{today:?}");
        let MetricSeries {
            resolution, points, ..
        } = store
            .metrics_series("vm-a", now - Duration::hours(1), now, 1000)
            .await
            .expect("recent raw");
        assert_eq!((resolution, points.len()), (Resolution::Raw, 10));
        let MetricSeries {
            resolution,
            points: hours,
            ..
        } = store
            .metrics_series("vm-a", old, old + Duration::hours(1), 1000)
            .await
            .expect("old hours");
        assert_eq!(resolution, Resolution::Hour);
        assert_eq!(hours.len(), 1);
        assert_eq!(hours[0].samples, 30);

        // A year later even the hour rollup is gone.
        let later = store
            .maintain(now + Duration::days(400), Retention::default(), 7)
            .await
            .expect("maintain a year later");
        assert!(later.pruned >= 1, "{later:?}");
        let MetricSeries { points: hours, .. } = store
            .metrics_series("vm-a", old, old + Duration::hours(1), 1000)
            .await
            .expect("old hours");
        assert!(hours.is_empty());
    }

    pub async fn inventories_are_replaced_and_service_changes_derived(store: Arc<dyn Store>) {
        let t = now_ms();
        let inv = |kind, items: serde_json::Value, at| Inventory {
            vm_id: "vm-a".into(),
            kind,
            received_at: at,
            items,
        };
        let procs_a = json!([{"pid": 1, "name": "init", "cpu_percent": 0.0, "memory_kb": 10}]);
        let procs_b = json!([{"pid": 2, "name": "sshd", "cpu_percent": 1.5, "memory_kb": 20}]);
        let services_1 = json!([
            {"name": "ssh.service", "active_state": "active"},
            {"name": "cron.service", "active_state": "active"},
            {"name": "old.service", "active_state": "inactive"}
        ]);
        let services_2 = json!([
            {"name": "ssh.service", "active_state": "active"},
            {"name": "cron.service", "active_state": "failed"},
            {"name": "new.service", "active_state": "active"}
        ]);

        let first = store
            .replace_inventories(&[
                inv(InventoryKind::Processes, procs_a.clone(), t),
                inv(InventoryKind::Services, services_1.clone(), t),
            ])
            .await
            .expect("first inventories");
        assert!(
            first.is_empty(),
            "a first service list has nothing to compare with"
        );
        let stored = store
            .inventory("vm-a", InventoryKind::Processes)
            .await
            .expect("read")
            .expect("stored");
        assert_eq!((stored.items, stored.received_at), (procs_a, t));

        let t2 = t + Duration::seconds(60);
        let changes = store
            .replace_inventories(&[
                inv(InventoryKind::Processes, procs_b.clone(), t2),
                inv(InventoryKind::Services, services_2.clone(), t2),
            ])
            .await
            .expect("second inventories");
        let summary: Vec<(String, Option<String>, Option<String>)> = changes
            .iter()
            .map(|c| (c.service.clone(), c.from_state.clone(), c.to_state.clone()))
            .collect();
        let expected = vec![
            (
                "cron.service".to_owned(),
                Some("active".to_owned()),
                Some("failed".to_owned()),
            ),
            ("new.service".to_owned(), None, Some("active".to_owned())),
            ("old.service".to_owned(), Some("inactive".to_owned()), None),
        ];
        assert_eq!(summary, expected);
        assert!(changes.iter().all(|c| c.at == t2 && c.vm_id == "vm-a"));
        assert_eq!(
            store
                .inventory("vm-a", InventoryKind::Processes)
                .await
                .expect("read")
                .expect("stored")
                .items,
            procs_b,
            "the latest list replaced the previous one"
        );

        let unchanged = store
            .replace_inventories(&[inv(
                InventoryKind::Services,
                services_2.clone(),
                t2 + Duration::seconds(60),
            )])
            .await
            .expect("same services again");
        assert!(unchanged.is_empty());

        let history = store.service_history("vm-a", 10).await.expect("history");
        assert_eq!(history.len(), 3);
        let mut history_summary: Vec<_> = history
            .iter()
            .map(|c| (c.service.clone(), c.from_state.clone(), c.to_state.clone()))
            .collect();
        history_summary.sort();
        assert_eq!(history_summary, expected);
        assert_eq!(
            store.service_history("vm-a", 2).await.expect("limit").len(),
            2
        );

        assert!(
            store
                .replace_inventories(&[inv(InventoryKind::Ports, json!({"not": "a list"}), t)])
                .await
                .is_err(),
            "items must be a JSON array"
        );
        assert!(
            store
                .inventory("vm-a", InventoryKind::Applications)
                .await
                .expect("read")
                .is_none()
        );
    }

    pub async fn command_log_records_then_completes_by_id(store: Arc<dyn Store>) {
        let t = now_ms();
        register(&store, "vm-a", t).await;
        register(&store, "vm-b", t).await;
        let pending = CommandLogEntry {
            id: "cmd-1".into(),
            vm_id: "vm-a".into(),
            user_id: Some(3),
            kind: "safe".into(),
            command: json!({"type": "SafeCommand", "id": "cmd-1", "action": "system_info"}),
            response: None,
            success: false,
            duration_ms: 0,
            created_at: t,
        };
        store.log_command(&pending).await.expect("log pending");
        assert_eq!(
            store.command_logs("vm-a", 10).await.expect("logs"),
            vec![pending.clone()]
        );

        let done = CommandLogEntry {
            response: Some(json!({"id": "cmd-1", "success": true, "stdout": "ok"})),
            success: true,
            duration_ms: 42,
            created_at: t + Duration::seconds(5),
            ..pending.clone()
        };
        store.log_command(&done).await.expect("complete");
        let logs = store.command_logs("vm-a", 10).await.expect("logs");
        assert_eq!(
            logs.len(),
            1,
            "completing updates the entry, never duplicates it"
        );
        assert_eq!(
            logs[0],
            CommandLogEntry {
                created_at: t,
                ..done.clone()
            },
            "issue time is kept"
        );

        let second = CommandLogEntry {
            id: "cmd-2".into(),
            user_id: None,
            kind: "unsafe".into(),
            created_at: t + Duration::seconds(1),
            ..pending.clone()
        };
        store.log_command(&second).await.expect("second");
        let ids: Vec<String> = store
            .command_logs("vm-a", 10)
            .await
            .expect("logs")
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, ["cmd-2", "cmd-1"], "newest first");
        assert_eq!(store.command_logs("vm-a", 1).await.expect("limit").len(), 1);

        let hijack = CommandLogEntry {
            vm_id: "vm-b".into(),
            ..done.clone()
        };
        assert!(matches!(
            store.log_command(&hijack).await,
            Err(StoreError::Conflict(_))
        ));
        let unknown = CommandLogEntry {
            id: "cmd-3".into(),
            vm_id: "nope".into(),
            ..pending
        };
        assert!(matches!(
            store.log_command(&unknown).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(
            store
                .command_logs("vm-b", 10)
                .await
                .expect("logs")
                .is_empty()
        );
    }

    pub async fn vm_errors_are_kept_newest_first(store: Arc<dyn Store>) {
        let t = now_ms();
        let errors: Vec<VmErrorRecord> = (0..5)
            .map(|i| VmErrorRecord {
                vm_id: "vm-a".into(),
                at: t + Duration::seconds(i),
                code: (i % 2 == 0).then(|| "collector".to_owned()),
                message: format!("failure {i}"),
                details: Some("<script>kept as text</script>".into()),
            })
            .collect();
        store.insert_vm_errors(&errors).await.expect("insert");
        let listed = store.vm_errors("vm-a", 3).await.expect("list");
        let expected: Vec<VmErrorRecord> = errors.iter().rev().take(3).cloned().collect();
        assert_eq!(listed, expected);
        assert!(store.vm_errors("vm-b", 3).await.expect("list").is_empty());
    }

    pub async fn delete_vm_removes_everything_about_it(store: Arc<dyn Store>) {
        let now = now_ms();
        let base = floor_to(now, Duration::hours(1)) - Duration::hours(2);
        for vm in ["vm-a", "vm-b"] {
            let samples: Vec<MetricSample> = (0..180)
                .map(|i| sample(vm, base + Duration::seconds(20 * i), 50.0, 1))
                .collect();
            store.insert_samples(&samples).await.expect("samples");
            for kind in [InventoryKind::Processes, InventoryKind::Services] {
                for at in [base, base + Duration::minutes(1)] {
                    store
                        .replace_inventories(&[Inventory {
                            vm_id: vm.into(),
                            kind,
                            received_at: at,
                            items: json!([{"name": "x", "active_state": at.to_string()}]),
                        }])
                        .await
                        .expect("inventory");
                }
            }
            store
                .insert_vm_errors(&[VmErrorRecord {
                    vm_id: vm.into(),
                    at: now,
                    code: None,
                    message: "boom".into(),
                    details: None,
                }])
                .await
                .expect("error");
            store
                .log_command(&CommandLogEntry {
                    id: format!("{vm}-cmd"),
                    vm_id: vm.into(),
                    user_id: None,
                    kind: "safe".into(),
                    command: json!({}),
                    response: None,
                    success: false,
                    duration_ms: 0,
                    created_at: now,
                })
                .await
                .expect("command");
        }
        store
            .maintain(now, Retention::default(), 1000)
            .await
            .expect("maintain");

        store.delete_vm("vm-a").await.expect("delete");

        assert!(store.get_vm("vm-a").await.expect("get").is_none());
        assert!(store.latest_sample("vm-a").await.expect("latest").is_none());
        for kind in [InventoryKind::Processes, InventoryKind::Services] {
            assert!(store.inventory("vm-a", kind).await.expect("inv").is_none());
        }
        assert!(
            store
                .service_history("vm-a", 10)
                .await
                .expect("h")
                .is_empty()
        );
        assert!(store.command_logs("vm-a", 10).await.expect("c").is_empty());
        assert!(store.vm_errors("vm-a", 10).await.expect("e").is_empty());
        let MetricSeries { points: raw, .. } = store
            .metrics_series("vm-a", base, now, 10_000)
            .await
            .expect("raw");
        assert!(raw.is_empty());
        // Rollups: look through them by pruning raw rows away first.
        let short_raw = Retention {
            raw: Duration::minutes(10),
            ..Retention::default()
        };
        store.maintain(now, short_raw, 1000).await.expect("prune");
        let MetricSeries {
            resolution,
            points: rolled_a,
            ..
        } = store
            .metrics_series("vm-a", base, base + Duration::hours(1), 1000)
            .await
            .expect("rollups a");
        assert_eq!(resolution, Resolution::Minute);
        assert!(rolled_a.is_empty());

        let MetricSeries {
            points: rolled_b, ..
        } = store
            .metrics_series("vm-b", base, base + Duration::hours(1), 1000)
            .await
            .expect("rollups b");
        assert_eq!(rolled_b.len(), 60, "the other VM keeps its data");
        assert!(store.latest_sample("vm-b").await.expect("latest").is_some());
        assert_eq!(store.service_history("vm-b", 10).await.expect("h").len(), 1);
        assert_eq!(store.command_logs("vm-b", 10).await.expect("c").len(), 1);
        assert!(matches!(
            store.delete_vm("vm-a").await,
            Err(StoreError::NotFound(_))
        ));
    }

    /// Each VM's newest sample is served from memory and written at most every few seconds;
    /// `flush` writes the rest, so a reopened store (another process) sees it in full.
    pub async fn latest_sample_and_last_seen_survive_a_reopen(store: Arc<dyn Store>, url: String) {
        let t = now_ms() - Duration::seconds(10);
        let first = sample("vm-a", t, 10.0, 1);
        let second = sample("vm-a", t + Duration::seconds(1), 20.0, 2);
        store
            .insert_samples(std::slice::from_ref(&first))
            .await
            .expect("first");
        store
            .insert_samples(std::slice::from_ref(&second))
            .await
            .expect("second");
        assert_eq!(
            store.latest_sample("vm-a").await.expect("latest"),
            Some(second.clone())
        );
        store.flush().await.expect("flush");
        drop(store);
        let reopened = infinibay_store::open(&url).await.expect("reopen");
        assert_eq!(
            reopened.latest_sample("vm-a").await.expect("latest"),
            Some(second.clone()),
            "the flushed newest sample, detail included"
        );
        let vm = reopened
            .get_vm("vm-a")
            .await
            .expect("get")
            .expect("registered");
        assert_eq!(vm.last_seen, Some(second.received_at));
    }

    pub async fn concurrent_batches_all_land(store: Arc<dyn Store>) {
        let start = now_ms() - Duration::minutes(30);
        let writers = 8;
        let batches = 10;
        let per_batch = 200;
        let vms = 50;
        let mut tasks = Vec::new();
        for w in 0..writers {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for b in 0..batches {
                    let batch: Vec<MetricSample> = (0..per_batch)
                        .map(|i| {
                            let n = (w * batches + b) * per_batch + i;
                            sample(
                                &format!("vm-{:02}", n % vms),
                                start + Duration::milliseconds(n),
                                (n % 100) as f64,
                                n,
                            )
                        })
                        .collect();
                    store
                        .insert_samples(&batch)
                        .await
                        .expect("concurrent insert");
                }
            }));
        }
        for task in tasks {
            task.await.expect("writer task");
        }
        let total = writers * batches * per_batch;
        let mut seen = 0;
        for v in 0..vms {
            let vm = format!("vm-{v:02}");
            let MetricSeries {
                resolution, points, ..
            } = store
                .metrics_series(&vm, start, start + Duration::hours(1), 100_000)
                .await
                .expect("query");
            assert_eq!(resolution, Resolution::Raw);
            seen += points.len() as i64;
            let newest = (0..total).filter(|n| n % vms == v).max().expect("some");
            let latest = store
                .latest_sample(&vm)
                .await
                .expect("latest")
                .expect("some");
            assert_eq!(latest.received_at, start + Duration::milliseconds(newest));
        }
        assert_eq!(seen, total, "every sample of every batch landed once");
        assert_eq!(store.list_vms().await.expect("list").len(), vms as usize);
    }

    pub async fn thousands_of_vms_register_and_change_status_in_batches(store: Arc<dyn Store>) {
        let t0 = now_ms() - Duration::minutes(5);
        let ids: Vec<String> = (0..3_000).map(|i| format!("vm-{i:05}")).collect();
        register(&store, "vm-00001", t0).await;
        store
            .set_vm_owner("vm-00001", Some(3), None)
            .await
            .expect("owner");
        let registrations: Vec<(String, DateTime<Utc>)> = ids
            .iter()
            .map(|id| (id.clone(), t0 + Duration::seconds(1)))
            .collect();
        store
            .upsert_vms(&registrations)
            .await
            .expect("register in a batch");
        store
            .upsert_vms(&registrations[..10])
            .await
            .expect("registering again is a no-op");
        let vms = store.list_vms().await.expect("list");
        assert_eq!(vms.len(), 3_000);
        let existing = vms.iter().find(|v| v.id == "vm-00001").expect("vm-00001");
        assert_eq!(
            existing.created_at, t0,
            "an existing VM keeps its first sighting"
        );
        assert_eq!(existing.owner_id, Some(3), "and what was set on it");

        let seen = t0 + Duration::minutes(1);
        let mut updates: Vec<VmStatusUpdate> = ids
            .iter()
            .map(|id| VmStatusUpdate {
                vm_id: id.clone(),
                status: VmStatus::Online,
                last_seen: Some(seen),
            })
            .collect();
        updates.push(VmStatusUpdate {
            vm_id: "vm-never-registered".into(),
            status: VmStatus::Online,
            last_seen: Some(seen),
        });
        let updated = store.set_vm_statuses(&updates).await.expect("statuses");
        assert_eq!(updated, 3_000, "unknown ids are skipped");
        // Offline without a time keeps last_seen; an older time never moves it back.
        let offline = [
            VmStatusUpdate {
                vm_id: "vm-00002".into(),
                status: VmStatus::Offline,
                last_seen: None,
            },
            VmStatusUpdate {
                vm_id: "vm-00003".into(),
                status: VmStatus::Offline,
                last_seen: Some(t0),
            },
        ];
        assert_eq!(store.set_vm_statuses(&offline).await.expect("offline"), 2);
        let agents: Vec<_> = ids[..500]
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), identification(&format!("host-{i}"))))
            .collect();
        store
            .set_vm_owner("vm-00004", None, None)
            .await
            .expect("owner");
        assert_eq!(store.set_vm_agents(&agents).await.expect("agents"), 500);

        let vms: BTreeMap<String, _> = store
            .list_vms()
            .await
            .expect("list")
            .into_iter()
            .map(|v| (v.id.clone(), v))
            .collect();
        assert!(!vms.contains_key("vm-never-registered"));
        let online = vms
            .values()
            .filter(|v| v.status == VmStatus::Online)
            .count();
        assert_eq!(online, 2_998);
        for id in ["vm-00002", "vm-00003"] {
            assert_eq!(vms[id].status, VmStatus::Offline);
            assert_eq!(vms[id].last_seen, Some(seen), "{id}");
        }
        assert_eq!(vms["vm-00010"].name, "host-10");
        assert_eq!(
            vms["vm-00010"].agent.as_ref().map(|a| a.hostname.as_str()),
            Some("host-10")
        );
        assert_eq!(
            vms["vm-02000"].name, "vm-02000",
            "no agent info, default name"
        );
    }

    pub async fn events_older_than_their_retention_are_pruned_in_batches(store: Arc<dyn Store>) {
        let now = now_ms();
        let old = now - Duration::days(100);
        let recent = now - Duration::days(1);
        register(&store, "vm-a", old).await;
        let services = |state: &str| {
            json!([{"name": "cron.service", "active_state": state},
                   {"name": "ssh.service", "active_state": state}])
        };
        for (at, state) in [
            (old, "active"),
            (old + Duration::seconds(1), "failed"),
            (recent, "active"),
        ] {
            store
                .replace_inventories(&[Inventory {
                    vm_id: "vm-a".into(),
                    kind: InventoryKind::Services,
                    received_at: at,
                    items: services(state),
                }])
                .await
                .expect("services");
        }
        let error = |at, message: &str| VmErrorRecord {
            vm_id: "vm-a".into(),
            at,
            code: None,
            message: message.into(),
            details: None,
        };
        store
            .insert_vm_errors(&[
                error(old, "old 1"),
                error(old, "old 2"),
                error(recent, "new"),
            ])
            .await
            .expect("errors");
        for (id, at) in [("c-old-1", old), ("c-old-2", old), ("c-new", recent)] {
            store
                .log_command(&CommandLogEntry {
                    id: id.into(),
                    vm_id: "vm-a".into(),
                    user_id: None,
                    kind: "safe".into(),
                    command: json!({"id": id}),
                    response: None,
                    success: true,
                    duration_ms: 1,
                    created_at: at,
                })
                .await
                .expect("command");
        }
        assert_eq!(
            store.service_history("vm-a", 100).await.expect("h").len(),
            4
        );

        let retention = Retention {
            events: Duration::days(90),
            ..Retention::default()
        };
        let report = store.maintain(now, retention, 1).await.expect("maintain");
        assert_eq!(report.pruned, 2 + 2 + 2, "{report:?}");
        let history = store.service_history("vm-a", 100).await.expect("history");
        assert_eq!(history.len(), 2);
        assert!(history.iter().all(|c| c.at == recent));
        let errors = store.vm_errors("vm-a", 100).await.expect("errors");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].message, "new");
        let logs = store.command_logs("vm-a", 100).await.expect("logs");
        assert_eq!(
            logs.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(),
            ["c-new"]
        );
        // The latest inventory itself is never pruned: it is the VM's current state.
        assert!(
            store
                .inventory("vm-a", InventoryKind::Services)
                .await
                .expect("inventory")
                .is_some()
        );
    }

    /// Deleting a VM while sample batches of it are being written leaves no rows under its old
    /// key (checked in the database itself: the trait cannot see orphan rows).
    pub async fn delete_vm_racing_sample_batches_leaves_no_orphan_rows(
        store: Arc<dyn Store>,
        url: String,
    ) {
        let start = now_ms() - Duration::minutes(30);
        let writer = {
            let store = store.clone();
            tokio::spawn(async move {
                for round in 0..150i64 {
                    let at = start + Duration::seconds(round);
                    let batch: Vec<MetricSample> = ["vm-gone", "vm-stays"]
                        .iter()
                        .map(|vm| sample(vm, at, 1.0, 1))
                        .collect();
                    store.insert_samples(&batch).await.expect("batch");
                    tokio::task::yield_now().await;
                }
            })
        };
        for _ in 0..30 {
            match store.delete_vm("vm-gone").await {
                Ok(()) | Err(StoreError::NotFound(_)) => {}
                Err(e) => panic!("delete_vm: {e}"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        }
        writer.await.expect("writer");
        match store.delete_vm("vm-gone").await {
            Ok(()) | Err(StoreError::NotFound(_)) => {}
            Err(e) => panic!("delete_vm: {e}"),
        }
        let orphans = crate::support::count(
            &url,
            "SELECT COUNT(*) FROM metric_samples WHERE vm_key NOT IN (SELECT key FROM vms)",
        )
        .await;
        assert_eq!(orphans, 0, "sample rows under the key of a deleted VM");
        let stays = store
            .metrics_series("vm-stays", start, start + Duration::minutes(5), 1000)
            .await
            .expect("metrics")
            .points;
        assert_eq!(stays.len(), 150, "the other VM lost nothing");
    }

    fn rule(id: &str, vm: Option<&str>, kind: AlertKind, created_at: DateTime<Utc>) -> AlertRule {
        AlertRule {
            id: id.into(),
            vm_id: vm.map(str::to_owned),
            kind,
            threshold: kind.has_threshold().then_some(90.0),
            mount_point: (kind == AlertKind::Disk).then(|| "/".to_owned()),
            duration_secs: 60,
            webhook_urls: vec!["http://127.0.0.1:9/hook".into()],
            created_by: Some(1),
            created_at,
        }
    }

    fn raised(id: &str, vm: &str, rule_id: &str, at: DateTime<Utc>) -> AlertRecord {
        AlertRecord {
            id: id.into(),
            rule_id: rule_id.into(),
            vm_id: vm.into(),
            kind: AlertKind::Cpu,
            subject: None,
            message: format!("cpu above 90 % ({id})"),
            value: Some(97.5),
            threshold: Some(90.0),
            raised_at: at,
            resolved_at: None,
        }
    }

    pub async fn alert_rules_and_records_are_kept_raised_then_resolved(store: Arc<dyn Store>) {
        let t = now_ms();
        register(&store, "vm-a", t).await;
        register(&store, "vm-b", t).await;
        store
            .set_vm_owner("vm-b", Some(7), None)
            .await
            .expect("owner of vm-b");
        let alerts = store.alerts();
        let global = rule("r-global", None, AlertKind::Cpu, t);
        let disk = rule(
            "r-disk",
            Some("vm-a"),
            AlertKind::Disk,
            t + Duration::seconds(1),
        );
        alerts.insert_alert_rule(&global).await.expect("rule");
        alerts.insert_alert_rule(&disk).await.expect("rule");
        assert!(matches!(
            alerts.insert_alert_rule(&global).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(
            alerts.alert_rules().await.expect("rules"),
            vec![global.clone(), disk.clone()]
        );

        let a1 = raised("a1", "vm-a", "r-global", t);
        let a2 = raised("a2", "vm-b", "r-global", t + Duration::seconds(1));
        let resolved_at = t + Duration::seconds(5);
        alerts
            .record_alerts(&[
                AlertChange::Raised(a1.clone()),
                AlertChange::Raised(a2.clone()),
                AlertChange::Resolved {
                    id: "a1".into(),
                    at: resolved_at,
                },
                // Resolving twice keeps the first time; resolving an unknown id is a no-op.
                AlertChange::Resolved {
                    id: "a1".into(),
                    at: resolved_at + Duration::seconds(9),
                },
                AlertChange::Resolved {
                    id: "nope".into(),
                    at: resolved_at,
                },
            ])
            .await
            .expect("record");
        let all = alerts
            .alerts(&AlertQuery {
                limit: 10,
                ..AlertQuery::default()
            })
            .await
            .expect("alerts");
        let a1_resolved = AlertRecord {
            resolved_at: Some(resolved_at),
            ..a1.clone()
        };
        assert_eq!(all, vec![a2.clone(), a1_resolved.clone()], "newest first");
        let open = alerts
            .alerts(&AlertQuery {
                open_only: true,
                limit: 10,
                ..AlertQuery::default()
            })
            .await
            .expect("open");
        assert_eq!(open, vec![a2.clone()]);
        let of_a = alerts
            .alerts(&AlertQuery {
                vm_id: Some("vm-a".into()),
                limit: 10,
                ..AlertQuery::default()
            })
            .await
            .expect("of vm-a");
        assert_eq!(of_a, vec![a1_resolved]);
        let of_owner = alerts
            .alerts(&AlertQuery {
                owner_id: Some(7),
                limit: 10,
                ..AlertQuery::default()
            })
            .await
            .expect("of owner 7");
        assert_eq!(of_owner, vec![a2.clone()]);

        // A deleted rule's alerts stay; a deleted VM takes its rules and alerts along.
        assert!(alerts.delete_alert_rule("r-global").await.expect("delete"));
        assert!(!alerts.delete_alert_rule("r-global").await.expect("again"));
        store.delete_vm("vm-a").await.expect("delete vm-a");
        assert!(alerts.alert_rules().await.expect("rules").is_empty());
        let left = alerts
            .alerts(&AlertQuery {
                limit: 10,
                ..AlertQuery::default()
            })
            .await
            .expect("alerts");
        assert_eq!(left, vec![a2]);
    }

    pub async fn resolved_alerts_are_pruned_and_open_ones_are_kept(store: Arc<dyn Store>) {
        let now = now_ms();
        let old = now - Duration::days(100);
        register(&store, "vm-a", old).await;
        store
            .alerts()
            .record_alerts(&[
                AlertChange::Raised(raised("old-resolved", "vm-a", "r", old)),
                AlertChange::Resolved {
                    id: "old-resolved".into(),
                    at: old + Duration::seconds(1),
                },
                AlertChange::Raised(raised("old-open", "vm-a", "r", old)),
            ])
            .await
            .expect("record");
        store
            .maintain(now, Retention::default(), 1000)
            .await
            .expect("maintain");
        let left: Vec<String> = store
            .alerts()
            .alerts(&AlertQuery {
                limit: 10,
                ..AlertQuery::default()
            })
            .await
            .expect("alerts")
            .into_iter()
            .map(|a| a.id)
            .collect();
        assert_eq!(left, vec!["old-open".to_owned()]);
    }

    pub async fn collection_settings_and_chosen_names_are_kept(store: Arc<dyn Store>) {
        let t = now_ms();
        register(&store, "vm-a", t).await;
        let settings = VmTelemetry {
            vm_id: "vm-a".into(),
            interval_secs: 5,
            collectors: vec!["process_snapshot".into(), "system_metrics".into()],
            updated_by: Some(1),
            updated_at: t,
            applied_at: None,
        };
        store.set_vm_telemetry(&settings).await.expect("set");
        assert_eq!(
            store.vm_telemetry(None).await.expect("get"),
            vec![settings.clone()]
        );
        let applied = t + Duration::seconds(2);
        store
            .mark_vm_telemetry_applied("vm-a", applied)
            .await
            .expect("applied");
        let changed = VmTelemetry {
            interval_secs: 30,
            collectors: vec!["system_metrics".into()],
            updated_at: t + Duration::seconds(3),
            ..settings
        };
        store.set_vm_telemetry(&changed).await.expect("replace");
        assert_eq!(
            store.vm_telemetry(None).await.expect("get"),
            vec![changed.clone()]
        );
        assert_eq!(
            store.vm_telemetry(Some("vm-a")).await.expect("one"),
            vec![changed]
        );
        assert!(
            store
                .vm_telemetry(Some("vm-b"))
                .await
                .expect("none")
                .is_empty()
        );

        // A name a person chose survives the agent's host name.
        store
            .set_vm_name("vm-a", "billing db")
            .await
            .expect("rename");
        store
            .set_vm_agents(&[("vm-a".into(), identification("guest-hostname"))])
            .await
            .expect("agent");
        let vm = store.get_vm("vm-a").await.expect("get").expect("exists");
        assert_eq!(vm.name, "billing db");
        assert!(matches!(
            store.set_vm_name("vm-nope", "x").await,
            Err(StoreError::NotFound(_))
        ));
        store.delete_vm("vm-a").await.expect("delete");
        assert!(store.vm_telemetry(None).await.expect("get").is_empty());
    }
}

support::both_backends!(
    vms_register_once_and_keep_status_agent_and_owner,
    a_persons_name_beats_the_domain_name_which_beats_the_agents_host_name,
    samples_land_and_latest_sample_keeps_full_detail,
    metrics_query_returns_raw_samples_or_raw_buckets,
    maintain_rolls_up_minutes_and_hours_without_double_counting,
    rollups_keep_each_vms_samples_apart_across_the_minute,
    retention_prunes_only_old_rows,
    inventories_are_replaced_and_service_changes_derived,
    command_log_records_then_completes_by_id,
    vm_errors_are_kept_newest_first,
    delete_vm_removes_everything_about_it,
    concurrent_batches_all_land,
    thousands_of_vms_register_and_change_status_in_batches,
    events_older_than_their_retention_are_pruned_in_batches,
    alert_rules_and_records_are_kept_raised_then_resolved,
    resolved_alerts_are_pruned_and_open_ones_are_kept,
    collection_settings_and_chosen_names_are_kept;
    reopening: latest_sample_and_last_seen_survive_a_reopen,
    delete_vm_racing_sample_batches_leaves_no_orphan_rows,
);

//! The bounded queue between ingest and storage, and the single writer task that drains it.
//!
//! Connection tasks never wait for the database: they put records into [`StoreQueue`] and go
//! on reading. The queue is bounded by rules, not by blocking:
//!
//! - samples: at most `pending_samples_per_vm` per VM (a storage hiccup of a couple of seconds
//!   loses nothing at 10 msg/s); once `pending_samples_max` are waiting in all, each VM keeps
//!   only its newest (coalescing), so memory is bounded by max(total, number of VMs) samples;
//! - inventories: only the latest per (VM, kind) is stored anyway, so a newer one replaces a
//!   waiting one; new keys beyond `pending_inventory_items_max` items are dropped;
//! - VM errors and command log entries: capped per VM and in all; beyond, new ones are dropped;
//! - alert changes (raised, resolved): capped in all, in order; beyond, new ones are dropped;
//! - VM registrations, agent info and status: one entry per VM, the newest wins.
//!
//! Every drop is counted ([`QueueStats`]). The writer takes everything waiting at once, writes
//! it in batches of `max_batch`, and does so at least every `flush_interval`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use infinibay_protocol::message::VmIdentification;
use infinibay_store::{
    AlertChange, CommandLogEntry, Inventory, InventoryKind, MetricSample, Store, VmErrorRecord,
    VmStatus, VmStatusUpdate,
};

use infinibay_control::vm::QueueStats;

use crate::config::StoreConfig;
use crate::diag::{Deduper, Occurrence};

const TARGET: &str = "infinibay::store";

/// Inventory items waiting for storage before new inventories are dropped. 200,000 items are
/// ~1,300 typical 150-process snapshots, about 100 MB in memory at worst.
const PENDING_INVENTORY_ITEMS_MAX: usize = 200_000;

/// A status and the `last_seen` that goes with it.
type StatusUpdate = (VmStatus, Option<DateTime<Utc>>);

#[derive(Debug, Default)]
struct Pending {
    new_vms: Vec<(String, DateTime<Utc>)>,
    new_vm_ids: HashSet<String>,
    agents: HashMap<String, VmIdentification>,
    statuses: HashMap<String, StatusUpdate>,
    samples: HashMap<String, VecDeque<Arc<MetricSample>>>,
    total_samples: usize,
    inventories: HashMap<(String, InventoryKind), (Inventory, usize)>,
    inventory_items: usize,
    errors: VecDeque<VmErrorRecord>,
    errors_per_vm: HashMap<String, usize>,
    command_logs: VecDeque<CommandLogEntry>,
    alert_changes: Vec<AlertChange>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.new_vms.is_empty()
            && self.agents.is_empty()
            && self.statuses.is_empty()
            && self.total_samples == 0
            && self.inventories.is_empty()
            && self.errors.is_empty()
            && self.command_logs.is_empty()
            && self.alert_changes.is_empty()
    }
}

/// Counters of the queue and the writer.
#[derive(Debug, Default)]
struct Counters {
    samples_queued: AtomicU64,
    samples_coalesced: AtomicU64,
    samples_written: AtomicU64,
    samples_failed: AtomicU64,
    inventories_replaced: AtomicU64,
    inventories_dropped: AtomicU64,
    inventories_written: AtomicU64,
    errors_dropped: AtomicU64,
    command_logs_dropped: AtomicU64,
    alert_changes_dropped: AtomicU64,
    write_failures: AtomicU64,
    flushes: AtomicU64,
}

/// The queue. Shared by all connection tasks (std `Mutex`: every operation is a few map
/// updates, never held across an `.await`).
#[derive(Debug)]
pub struct StoreQueue {
    limits: StoreConfig,
    pending_alert_changes_max: usize,
    pending: Mutex<Pending>,
    counters: Counters,
    wake: Notify,
}

impl StoreQueue {
    /// An empty queue with these bounds.
    pub fn new(limits: StoreConfig) -> Self {
        Self::with_alert_bound(
            limits,
            crate::config::AlertConfig::default().pending_changes_max,
        )
    }

    /// An empty queue with these bounds, holding at most `pending_alert_changes_max` alert
    /// changes.
    pub fn with_alert_bound(limits: StoreConfig, pending_alert_changes_max: usize) -> Self {
        Self {
            limits,
            pending_alert_changes_max,
            pending: Mutex::new(Pending::default()),
            counters: Counters::default(),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a VM in storage (first sight).
    pub fn register_vm(&self, vm_id: &str, at: DateTime<Utc>) {
        let mut p = self.lock();
        if p.new_vm_ids.insert(vm_id.to_owned()) {
            p.new_vms.push((vm_id.to_owned(), at));
        }
    }

    /// Record the agent's identification (newest wins).
    pub fn set_agent(&self, vm_id: &str, agent: VmIdentification) {
        self.lock().agents.insert(vm_id.to_owned(), agent);
    }

    /// Record a status change (newest wins).
    pub fn set_status(&self, vm_id: &str, status: VmStatus, last_seen: Option<DateTime<Utc>>) {
        self.lock()
            .statuses
            .insert(vm_id.to_owned(), (status, last_seen));
    }

    /// Queue a sample; may coalesce (drop this VM's oldest waiting samples). Shared, because
    /// the VM's newest sample (the registry) and the bus hold the same one.
    pub fn push_sample(&self, sample: Arc<MetricSample>) {
        let mut p = self.lock();
        let over_total = p.total_samples >= self.limits.pending_samples_max;
        let per_vm_cap = if over_total {
            1
        } else {
            self.limits.pending_samples_per_vm
        };
        let queue = p.samples.entry(sample.vm_id.clone()).or_default();
        let mut dropped = 0usize;
        while queue.len() >= per_vm_cap {
            queue.pop_front();
            dropped += 1;
        }
        queue.push_back(sample);
        p.total_samples = p.total_samples + 1 - dropped;
        let wake = p.total_samples >= self.limits.max_batch;
        drop(p);
        self.counters.samples_queued.fetch_add(1, Ordering::Relaxed);
        if dropped > 0 {
            self.counters
                .samples_coalesced
                .fetch_add(dropped as u64, Ordering::Relaxed);
        }
        if wake {
            self.wake.notify_one();
        }
    }

    /// Queue an inventory; replaces a waiting one of the same VM and kind.
    pub fn push_inventory(&self, inventory: Inventory) {
        let items = inventory.items.as_array().map_or(1, |a| a.len().max(1));
        let key = (inventory.vm_id.clone(), inventory.kind);
        let mut p = self.lock();
        if let Some((_, old_items)) = p.inventories.get(&key) {
            let old_items = *old_items;
            p.inventory_items = p.inventory_items - old_items + items;
            p.inventories.insert(key, (inventory, items));
            drop(p);
            self.counters
                .inventories_replaced
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        if p.inventory_items + items > PENDING_INVENTORY_ITEMS_MAX {
            drop(p);
            self.counters
                .inventories_dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        p.inventory_items += items;
        p.inventories.insert(key, (inventory, items));
    }

    /// Queue a VM error; dropped (and `false`) when the VM or the queue is over its bound.
    pub fn push_error(&self, error: VmErrorRecord) -> bool {
        let mut p = self.lock();
        let for_vm = p.errors_per_vm.get(&error.vm_id).copied().unwrap_or(0);
        if p.errors.len() >= self.limits.pending_errors_max
            || for_vm >= self.limits.pending_errors_per_vm
        {
            drop(p);
            self.counters.errors_dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        *p.errors_per_vm.entry(error.vm_id.clone()).or_default() += 1;
        p.errors.push_back(error);
        true
    }

    /// Queue an alert raised or resolved, in order; dropped (and `false`) when the queue
    /// holds its bound already.
    pub fn push_alert_change(&self, change: AlertChange) -> bool {
        let mut p = self.lock();
        if p.alert_changes.len() >= self.pending_alert_changes_max {
            drop(p);
            self.counters
                .alert_changes_dropped
                .fetch_add(1, Ordering::Relaxed);
            return false;
        }
        p.alert_changes.push(change);
        true
    }

    /// Queue a command log entry.
    pub fn push_command_log(&self, entry: CommandLogEntry) {
        let mut p = self.lock();
        if p.command_logs.len() >= self.limits.pending_command_logs_max {
            drop(p);
            self.counters
                .command_logs_dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        p.command_logs.push_back(entry);
    }

    /// Counters and sizes now.
    pub fn stats(&self) -> QueueStats {
        let (pending_samples, pending_inventory_items, pending_errors) = {
            let p = self.lock();
            (p.total_samples, p.inventory_items, p.errors.len())
        };
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        QueueStats {
            samples_queued: get(&c.samples_queued),
            samples_coalesced: get(&c.samples_coalesced),
            samples_written: get(&c.samples_written),
            samples_failed: get(&c.samples_failed),
            inventories_replaced: get(&c.inventories_replaced),
            inventories_dropped: get(&c.inventories_dropped),
            inventories_written: get(&c.inventories_written),
            errors_dropped: get(&c.errors_dropped),
            command_logs_dropped: get(&c.command_logs_dropped),
            alert_changes_dropped: get(&c.alert_changes_dropped),
            write_failures: get(&c.write_failures),
            flushes: get(&c.flushes),
            pending_samples,
            pending_inventory_items,
            pending_errors,
        }
    }

    fn take(&self) -> Pending {
        std::mem::take(&mut *self.lock())
    }
}

/// Start the writer on a thread of its own, with its own single-threaded runtime; the returned
/// future completes when it has flushed and stopped.
///
/// Why not a task on the host's runtime: a flush awaits the database a dozen times, and under
/// load every wake-up waited behind thousands of ready connection tasks. At 10,000 VMs × 5 Hz
/// that starved the writer to 1.5k samples/s while the database thread sat idle (bench/results/
/// host.md); on its own thread the OS scheduler gives it its share and it writes 45k+/s.
pub fn spawn_writer(
    queue: Arc<StoreQueue>,
    store: Arc<dyn Store>,
    flush_interval: Duration,
    shutdown: CancellationToken,
) -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("infinibay-store".to_owned())
        .spawn(move || {
            runtime.block_on(run_writer(queue, store, flush_interval, shutdown));
            let _ = stopped_tx.send(());
        })?;
    Ok(async move {
        // An error only means the thread ended without reporting (a panic): stopped either way.
        let _ = stopped_rx.await;
    })
}

/// The single writer: drains `queue` into `store` until `shutdown`, then flushes what is left.
pub async fn run_writer(
    queue: Arc<StoreQueue>,
    store: Arc<dyn Store>,
    flush_interval: Duration,
    shutdown: CancellationToken,
) {
    let mut dedup = Deduper::new(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(flush_interval) => {}
            _ = queue.wake.notified() => {}
        }
        flush(&queue, store.as_ref(), &mut dedup).await;
    }
    // Whatever arrived before the connection tasks stopped is written before we exit.
    flush(&queue, store.as_ref(), &mut dedup).await;
    tracing::debug!(target: TARGET, "store writer stopped");
}

fn report(dedup: &mut Deduper, what: &'static str, error: &infinibay_store::StoreError) {
    match dedup.record(what) {
        Occurrence::First => tracing::error!(target: TARGET, "{what} failed: {error}"),
        Occurrence::Summary(n) => {
            tracing::error!(target: TARGET, "{what} failed {n} more times; latest: {error}")
        }
        Occurrence::Suppressed => {}
    }
}

/// Write everything waiting now. Public so that benchmarks can drive the writer directly.
///
/// Per-VM metadata (registrations, agent info, statuses) goes out as one batch call each, so
/// 10,000 VMs appearing at once cost a few statements, not 10,000 round trips.
pub async fn flush(queue: &StoreQueue, store: &dyn Store, dedup: &mut Deduper) {
    let pending = queue.take();
    if pending.is_empty() {
        return;
    }
    let c = &queue.counters;
    c.flushes.fetch_add(1, Ordering::Relaxed);
    let fail = |dedup: &mut Deduper, what: &'static str, e: &infinibay_store::StoreError| {
        c.write_failures.fetch_add(1, Ordering::Relaxed);
        report(dedup, what, e);
    };

    // Registrations first: the store then knows every VM's key and the sample batches below
    // need no registration of their own.
    if !pending.new_vms.is_empty() {
        if let Err(e) = store.upsert_vms(&pending.new_vms).await {
            fail(dedup, "upsert_vms", &e);
        }
    }
    if !pending.agents.is_empty() {
        let agents: Vec<(String, VmIdentification)> = pending.agents.into_iter().collect();
        if let Err(e) = store.set_vm_agents(&agents).await {
            fail(dedup, "set_vm_agents", &e);
        }
    }

    let mut samples: Vec<MetricSample> = Vec::with_capacity(pending.total_samples);
    for (_, q) in pending.samples {
        // Only a VM's newest is still shared (the registry holds it): one copy per VM and
        // flush, on this thread, not on the ingest path.
        samples.extend(q.into_iter().map(Arc::unwrap_or_clone));
    }
    // Rows of one VM in receive order, VMs interleaved by time: what a time-ordered index likes.
    samples.sort_by_key(|s| s.received_at);
    // Batches run `concurrent_batches` at a time (PostgreSQL: several connections; SQLite: 1),
    // a flush's samples spread over them (PostgreSQL: 4 × 1,000 beat 4 × 5,000 in bench/store).
    let parallel = store.concurrent_batches().max(1);
    let per_batch = (queue.limits.max_batch / parallel).max(1);
    let batches: Vec<&[MetricSample]> = samples.chunks(per_batch).collect();
    for group in batches.chunks(parallel) {
        // A plain loop, not a closure: the boxed futures keep the writer task `Send`.
        let mut writes = Vec::with_capacity(group.len());
        for batch in group {
            writes.push(store.insert_samples(batch));
        }
        let results = futures_util::future::join_all(writes).await;
        for (batch, result) in group.iter().zip(results) {
            match result {
                Ok(()) => {
                    c.samples_written
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    c.samples_failed
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    fail(dedup, "insert_samples", &e);
                }
            }
        }
    }

    let inventories: Vec<Inventory> = pending
        .inventories
        .into_values()
        .map(|(inventory, _)| inventory)
        .collect();
    for batch in inventories.chunks(256) {
        match store.replace_inventories(batch).await {
            Ok(_) => {
                c.inventories_written
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            Err(e) => fail(dedup, "replace_inventories", &e),
        }
    }

    let errors: Vec<VmErrorRecord> = pending.errors.into_iter().collect();
    if !errors.is_empty() {
        if let Err(e) = store.insert_vm_errors(&errors).await {
            fail(dedup, "insert_vm_errors", &e);
        }
    }
    for entry in &pending.command_logs {
        if let Err(e) = store.log_command(entry).await {
            fail(dedup, "log_command", &e);
        }
    }
    if !pending.alert_changes.is_empty()
        && let Err(e) = store.alerts().record_alerts(&pending.alert_changes).await
    {
        fail(dedup, "record_alerts", &e);
    }
    // Status last: `insert_samples` advances last_seen, and an offline status written before a
    // late sample of the same batch must not be overwritten by it.
    if !pending.statuses.is_empty() {
        let updates: Vec<VmStatusUpdate> = pending
            .statuses
            .into_iter()
            .map(|(vm_id, (status, last_seen))| VmStatusUpdate {
                vm_id,
                status,
                last_seen,
            })
            .collect();
        if let Err(e) = store.set_vm_statuses(&updates).await {
            fail(dedup, "set_vm_statuses", &e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(vm: &str, n: u64) -> Arc<MetricSample> {
        Arc::new(MetricSample {
            vm_id: vm.into(),
            received_at: Utc::now(),
            guest_time: None,
            cpu_percent: n as f64,
            mem_used_kb: 0,
            mem_total_kb: 0,
            swap_used_kb: None,
            disk_used_percent: None,
            disk_read_bps: 0.0,
            disk_write_bps: 0.0,
            net_rx_bps: 0.0,
            net_tx_bps: 0.0,
            load1: 0.0,
            detail: Default::default(),
        })
    }

    fn limits(total: usize, per_vm: usize) -> StoreConfig {
        StoreConfig {
            pending_samples_max: total,
            pending_samples_per_vm: per_vm,
            ..StoreConfig::default()
        }
    }

    #[test]
    fn a_vm_over_its_share_keeps_its_newest_samples() {
        let q = StoreQueue::new(limits(1000, 3));
        for n in 0..10 {
            q.push_sample(sample("a", n));
        }
        let s = q.stats();
        assert_eq!(s.pending_samples, 3);
        assert_eq!(s.samples_coalesced, 7);
        let kept: Vec<f64> = q.take().samples["a"]
            .iter()
            .map(|s| s.cpu_percent)
            .collect();
        assert_eq!(kept, vec![7.0, 8.0, 9.0]);
    }

    #[test]
    fn over_the_total_every_vm_keeps_only_its_newest_and_memory_stays_flat() {
        let q = StoreQueue::new(limits(100, 16));
        for round in 0..50 {
            for vm in 0..20 {
                q.push_sample(sample(&format!("vm{vm}"), round));
            }
        }
        let s = q.stats();
        assert!(s.pending_samples <= 100 + 20, "{s:?}");
        assert_eq!(s.samples_queued, 1000);
        assert_eq!(
            s.samples_queued - s.samples_coalesced,
            s.pending_samples as u64
        );
        let p = q.take();
        for vm in 0..20 {
            let newest = p.samples[&format!("vm{vm}")]
                .back()
                .expect("each VM keeps a sample")
                .cpu_percent;
            assert_eq!(newest, 49.0);
        }
    }

    #[test]
    fn errors_of_one_vm_cannot_crowd_out_the_others() {
        let q = StoreQueue::new(StoreConfig {
            pending_errors_per_vm: 2,
            ..StoreConfig::default()
        });
        let err = |vm: &str| VmErrorRecord {
            vm_id: vm.into(),
            at: Utc::now(),
            code: None,
            message: "x".into(),
            details: None,
        };
        for _ in 0..100 {
            q.push_error(err("noisy"));
        }
        q.push_error(err("quiet"));
        let s = q.stats();
        assert_eq!(s.pending_errors, 3);
        assert_eq!(s.errors_dropped, 98);
    }

    #[tokio::test]
    async fn ten_thousand_new_vms_are_stored_in_one_flush_with_their_samples_and_statuses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = infinibay_store::open(&url).await.expect("sqlite store");
        let q = StoreQueue::new(StoreConfig::default());
        let now = Utc::now();
        for i in 0..10_000 {
            let id = format!("vm-{i:05}");
            q.register_vm(&id, now);
            q.set_status(&id, VmStatus::Online, Some(now));
            q.push_sample(sample(&id, 1));
        }
        let mut dedup = Deduper::new(Duration::from_secs(60));
        flush(&q, store.as_ref(), &mut dedup).await;
        assert!(q.lock().is_empty(), "nothing is left for later");
        let stats = q.stats();
        assert_eq!(stats.samples_written, 10_000);
        assert_eq!(stats.write_failures, 0);
        let vms = store.list_vms().await.expect("vms");
        assert_eq!(vms.len(), 10_000);
        assert!(vms.iter().all(|v| v.status == VmStatus::Online));
    }
}

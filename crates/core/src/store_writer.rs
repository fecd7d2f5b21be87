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
//!
//! **When the database refuses writes** (PostgreSQL down, a failover), nothing waiting is
//! thrown away at once: samples move to a bounded backlog (`backlog_samples_max`, oldest
//! dropped and counted beyond it) and everything else goes back into the queue under its own
//! bounds; the writer retries with growing pauses (up to [`RETRY_MAX`]) and, once the database
//! answers, writes the backlog oldest first, a few batches per flush beside the new samples so
//! that the queue never waits behind it. `failing` and the backlog's size are in the stats
//! (`/healthz`, `/metrics`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// The longest pause between two write attempts while the database refuses them.
pub const RETRY_MAX: Duration = Duration::from_secs(5);
/// The first pause after a failed write.
const RETRY_FIRST: Duration = Duration::from_millis(250);
/// Backlog samples written per flush at most, in units of `max_batch`: enough to drain a
/// backlog in a few dozen flushes, little enough that new samples never wait long behind it.
const BACKLOG_BATCHES_PER_FLUSH: usize = 2;

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
    /// Samples whose write failed, oldest first (only the writer touches it).
    backlog: Mutex<VecDeque<MetricSample>>,
    /// The last write attempt failed.
    failing: AtomicBool,
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
            backlog: Mutex::new(VecDeque::new()),
            failing: AtomicBool::new(false),
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
            backlog_samples: self.backlog_lock().len(),
            store_failing: self.failing.load(Ordering::Relaxed),
        }
    }

    fn take(&self) -> Pending {
        std::mem::take(&mut *self.lock())
    }

    fn backlog_lock(&self) -> MutexGuard<'_, VecDeque<MetricSample>> {
        self.backlog.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drop the oldest backlog samples beyond the bound, counting them as lost.
    fn trim_backlog(&self, backlog: &mut VecDeque<MetricSample>) {
        let over = backlog
            .len()
            .saturating_sub(self.limits.backlog_samples_max);
        if over > 0 {
            backlog.drain(..over);
            self.counters
                .samples_failed
                .fetch_add(over as u64, Ordering::Relaxed);
        }
    }

    /// Keep samples whose write failed (or could not be tried), after the older ones.
    fn backlog_append(&self, samples: Vec<MetricSample>) {
        if samples.is_empty() {
            return;
        }
        let mut backlog = self.backlog_lock();
        backlog.extend(samples);
        self.trim_backlog(&mut backlog);
    }

    /// Put back samples taken from the backlog's front whose write failed.
    fn backlog_restore(&self, samples: Vec<MetricSample>) {
        let mut backlog = self.backlog_lock();
        for sample in samples.into_iter().rev() {
            backlog.push_front(sample);
        }
        self.trim_backlog(&mut backlog);
    }

    /// The oldest `max` backlog samples.
    fn backlog_take(&self, max: usize) -> Vec<MetricSample> {
        let mut backlog = self.backlog_lock();
        let n = max.min(backlog.len());
        backlog.drain(..n).collect()
    }

    /// While the database refuses writes: move the waiting samples to the backlog, so that the
    /// queue's coalescing (meant for a slow database, not a dead one) does not thin them out.
    fn park_samples(&self) {
        let samples = {
            let mut p = self.lock();
            p.total_samples = 0;
            std::mem::take(&mut p.samples)
        };
        self.backlog_append(in_time_order(samples));
    }

    /// Give back what a failed flush did not write: every kind goes back under its own rules
    /// (newest wins for per-VM facts, so a newer one that arrived meanwhile is kept; bounded
    /// lists keep their bounds).
    fn give_back(&self, rest: Pending) {
        let mut p = self.lock();
        for (id, at) in rest.new_vms {
            if p.new_vm_ids.insert(id.clone()) {
                p.new_vms.push((id, at));
            }
        }
        for (id, agent) in rest.agents {
            p.agents.entry(id).or_insert(agent);
        }
        for (id, status) in rest.statuses {
            p.statuses.entry(id).or_insert(status);
        }
        for (key, (inventory, items)) in rest.inventories {
            if !p.inventories.contains_key(&key)
                && p.inventory_items + items <= PENDING_INVENTORY_ITEMS_MAX
            {
                p.inventory_items += items;
                p.inventories.insert(key, (inventory, items));
            } else if !p.inventories.contains_key(&key) {
                self.counters
                    .inventories_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        for error in rest.errors.into_iter().rev() {
            if p.errors.len() >= self.limits.pending_errors_max {
                self.counters.errors_dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            *p.errors_per_vm.entry(error.vm_id.clone()).or_default() += 1;
            p.errors.push_front(error);
        }
        // Alert changes in their order: the given-back ones are older than what arrived
        // meanwhile; beyond the bound the oldest are dropped and counted.
        if !rest.alert_changes.is_empty() {
            let newer = std::mem::replace(&mut p.alert_changes, rest.alert_changes);
            p.alert_changes.extend(newer);
            let over = p
                .alert_changes
                .len()
                .saturating_sub(self.pending_alert_changes_max);
            if over > 0 {
                p.alert_changes.drain(..over);
                self.counters
                    .alert_changes_dropped
                    .fetch_add(over as u64, Ordering::Relaxed);
            }
        }
        for entry in rest.command_logs.into_iter().rev() {
            if p.command_logs.len() >= self.limits.pending_command_logs_max {
                self.counters
                    .command_logs_dropped
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            p.command_logs.push_front(entry);
        }
    }
}

/// A flush's samples as rows: one VM's in receive order, VMs interleaved by time (what a
/// time-ordered index likes). Only a VM's newest is still shared (the registry holds it): one
/// copy per VM and flush, on the writer's thread, not on the ingest path.
fn in_time_order(samples: HashMap<String, VecDeque<Arc<MetricSample>>>) -> Vec<MetricSample> {
    let mut rows: Vec<MetricSample> = Vec::with_capacity(samples.values().map(VecDeque::len).sum());
    for (_, q) in samples {
        rows.extend(q.into_iter().map(Arc::unwrap_or_clone));
    }
    rows.sort_by_key(|s| s.received_at);
    rows
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
/// While the database refuses writes it retries with growing pauses (up to [`RETRY_MAX`]) and
/// parks the samples that keep arriving in the backlog meanwhile.
pub async fn run_writer(
    queue: Arc<StoreQueue>,
    store: Arc<dyn Store>,
    flush_interval: Duration,
    shutdown: CancellationToken,
) {
    let mut dedup = Deduper::new(Duration::from_secs(60));
    let mut retry = RETRY_FIRST;
    let mut next_attempt = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(flush_interval) => {}
            _ = queue.wake.notified() => {}
        }
        if tokio::time::Instant::now() < next_attempt {
            queue.park_samples();
            continue;
        }
        match flush(&queue, store.as_ref(), &mut dedup).await {
            Flushed::Done => retry = RETRY_FIRST,
            Flushed::BacklogLeft => {
                retry = RETRY_FIRST;
                // Go on draining at once rather than after a whole flush interval.
                queue.wake.notify_one();
            }
            Flushed::Failed => {
                next_attempt = tokio::time::Instant::now() + retry;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
    // Whatever arrived before the connection tasks stopped is written before we exit (one
    // attempt: a database that is down at shutdown loses the backlog, and the log says so).
    if flush(&queue, store.as_ref(), &mut dedup).await == Flushed::Failed {
        let s = queue.stats();
        tracing::error!(target: TARGET, backlog_samples = s.backlog_samples,
            "stopping while the database refuses writes: the backlog is lost");
    }
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

/// How a flush ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything waiting was written.
    Done,
    /// Everything new was written; older samples wait in the backlog for the next flush.
    BacklogLeft,
    /// A write failed: what was not written went back (samples to the backlog).
    Failed,
}

/// Write everything waiting now. Public so that benchmarks can drive the writer directly.
///
/// Per-VM metadata (registrations, agent info, statuses) goes out as one batch call each, so
/// 10,000 VMs appearing at once cost a few statements, not 10,000 round trips. At the first
/// failure the flush stops (each call to a dead database may wait for the pool's timeout) and
/// gives back what it has not written.
pub async fn flush(queue: &StoreQueue, store: &dyn Store, dedup: &mut Deduper) -> Flushed {
    let mut pending = queue.take();
    let had_backlog = !queue.backlog_lock().is_empty();
    if pending.is_empty() && !had_backlog {
        return Flushed::Done;
    }
    let c = &queue.counters;
    c.flushes.fetch_add(1, Ordering::Relaxed);
    let outcome = write_pending(queue, store, &mut pending).await;
    let failed = outcome.is_err();
    if let Err(e) = outcome {
        c.write_failures.fetch_add(1, Ordering::Relaxed);
        report(dedup, e.what, &e.error);
        queue.give_back(pending);
    }
    let was_failing = queue.failing.swap(failed, Ordering::Relaxed);
    let backlog = queue.backlog_lock().len();
    match (was_failing, failed) {
        (false, true) => tracing::warn!(target: TARGET, backlog_samples = backlog,
            "the database refuses writes: keeping samples in the backlog (at most {}) and retrying",
            queue.limits.backlog_samples_max),
        (true, false) => tracing::info!(target: TARGET, backlog_samples = backlog,
            "the database accepts writes again"),
        _ => {}
    }
    if failed {
        Flushed::Failed
    } else if backlog > 0 {
        Flushed::BacklogLeft
    } else {
        if had_backlog {
            tracing::info!(target: TARGET, "backlog written");
        }
        Flushed::Done
    }
}

/// A failed store call: which, and why.
struct WriteFailure {
    what: &'static str,
    error: infinibay_store::StoreError,
}

fn failed(what: &'static str) -> impl FnOnce(infinibay_store::StoreError) -> WriteFailure {
    move |error| WriteFailure { what, error }
}

/// Write `pending` in order, removing what was written; on failure `pending` keeps the rest
/// (samples not written are in the backlog by then).
async fn write_pending(
    queue: &StoreQueue,
    store: &dyn Store,
    pending: &mut Pending,
) -> Result<(), WriteFailure> {
    // Registrations first: the store then knows every VM's key and the sample batches below
    // need no registration of their own.
    if !pending.new_vms.is_empty() {
        store
            .upsert_vms(&pending.new_vms)
            .await
            .map_err(failed("upsert_vms"))?;
        pending.new_vms.clear();
        pending.new_vm_ids.clear();
    }
    if !pending.agents.is_empty() {
        let agents: Vec<(String, VmIdentification)> = pending
            .agents
            .iter()
            .map(|(id, agent)| (id.clone(), agent.clone()))
            .collect();
        store
            .set_vm_agents(&agents)
            .await
            .map_err(failed("set_vm_agents"))?;
        pending.agents.clear();
    }

    // The backlog's oldest first (a bounded share per flush), then the new samples.
    let fresh = in_time_order(std::mem::take(&mut pending.samples));
    pending.total_samples = 0;
    let old = queue.backlog_take(queue.limits.max_batch * BACKLOG_BATCHES_PER_FLUSH);
    if !old.is_empty() {
        if let Err((unwritten, e)) = write_samples(queue, store, old).await {
            queue.backlog_restore(unwritten);
            queue.backlog_append(fresh);
            return Err(e);
        }
    }
    if let Err((unwritten, e)) = write_samples(queue, store, fresh).await {
        queue.backlog_append(unwritten);
        return Err(e);
    }

    let c = &queue.counters;
    let keys: Vec<(String, InventoryKind)> = pending.inventories.keys().cloned().collect();
    for chunk in keys.chunks(256) {
        let batch: Vec<Inventory> = chunk
            .iter()
            .filter_map(|k| pending.inventories.get(k).map(|(inv, _)| inv.clone()))
            .collect();
        store
            .replace_inventories(&batch)
            .await
            .map_err(failed("replace_inventories"))?;
        for k in chunk {
            if let Some((_, items)) = pending.inventories.remove(k) {
                pending.inventory_items -= items;
            }
        }
        c.inventories_written
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
    }

    if !pending.errors.is_empty() {
        let errors: Vec<VmErrorRecord> = pending.errors.iter().cloned().collect();
        store
            .insert_vm_errors(&errors)
            .await
            .map_err(failed("insert_vm_errors"))?;
        pending.errors.clear();
        pending.errors_per_vm.clear();
    }
    while let Some(entry) = pending.command_logs.front() {
        store
            .log_command(entry)
            .await
            .map_err(failed("log_command"))?;
        pending.command_logs.pop_front();
    }
    if !pending.alert_changes.is_empty() {
        store
            .alerts()
            .record_alerts(&pending.alert_changes)
            .await
            .map_err(failed("record_alerts"))?;
        pending.alert_changes.clear();
    }
    // Status last: `insert_samples` advances last_seen, and an offline status written before a
    // late sample of the same batch must not be overwritten by it.
    if !pending.statuses.is_empty() {
        let updates: Vec<VmStatusUpdate> = pending
            .statuses
            .iter()
            .map(|(vm_id, (status, last_seen))| VmStatusUpdate {
                vm_id: vm_id.clone(),
                status: *status,
                last_seen: *last_seen,
            })
            .collect();
        store
            .set_vm_statuses(&updates)
            .await
            .map_err(failed("set_vm_statuses"))?;
        pending.statuses.clear();
    }
    Ok(())
}

/// Write `samples` in batches, `concurrent_batches` at a time (PostgreSQL: several
/// connections; SQLite: 1), spread over them (PostgreSQL: 4 × 1,000 beat 4 × 5,000 in
/// bench/store). On failure: every sample not written, in order, and the error.
async fn write_samples(
    queue: &StoreQueue,
    store: &dyn Store,
    samples: Vec<MetricSample>,
) -> Result<(), (Vec<MetricSample>, WriteFailure)> {
    let c = &queue.counters;
    let parallel = store.concurrent_batches().max(1);
    let per_batch = (queue.limits.max_batch / parallel).max(1);
    let mut first_error = None;
    let mut unwritten: Vec<MetricSample> = Vec::new();
    {
        let batches: Vec<&[MetricSample]> = samples.chunks(per_batch).collect();
        for group in batches.chunks(parallel) {
            if first_error.is_some() {
                unwritten.extend(group.iter().flat_map(|b| b.iter().cloned()));
                continue;
            }
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
                        unwritten.extend(batch.iter().cloned());
                        if first_error.is_none() {
                            first_error = Some(failed("insert_samples")(e));
                        }
                    }
                }
            }
        }
    }
    match first_error {
        None => Ok(()),
        Some(e) => Err((unwritten, e)),
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

//! From a decoded guest message to stored records, bus events and command answers.
//!
//! Every guest is hostile: each message is sanitised before anything else sees it; the VM it
//! belongs to is the one whose socket it came from, whatever it claims; the guest's clock is
//! kept only as "guest time" and the host's receive time is the time of record. The per-VM
//! [`TokenBucket`] limits how fast a VM's messages are *read*: above it the connection task
//! stops reading, so a flood backs up into the guest instead of into the host's memory.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio::time::Instant;

use infinibay_protocol::message::{GuestError, SystemMetrics, VmIdentification, Welcome};
use infinibay_protocol::sanitize::{Limits, sanitize};
use infinibay_protocol::{
    DecodeError, GuestMessage, GuestStreamDecoder, HostMessage, PROTOCOL_VERSION, Timestamp,
    encode_line,
};
use infinibay_store::{Inventory, InventoryKind, MetricSample, VmErrorRecord, VmStatus};

use crate::alerts::AlertEngine;
use crate::bus::Bus;
use crate::commands::deliver_response;
use crate::diag::{Deduper, Occurrence};
use crate::registry::{VmCounters, VmEntry};
use crate::store_writer::StoreQueue;
use crate::telemetry::TelemetryBook;
use infinibay_control::event::{AgentEvent, BusEvent, StatusReason, Topic};

const TARGET: &str = "infinibay::ingest";

/// A token bucket: `burst` messages at once, `rate` per second sustained.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// Full bucket.
    pub fn new(burst: u32, rate_per_sec: f64) -> Self {
        let capacity = f64::from(burst.max(1));
        Self {
            capacity,
            rate: rate_per_sec.max(f64::MIN_POSITIVE),
            tokens: capacity,
            last: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
    }

    /// Spend `n` tokens. The balance may go negative: one read can bring several messages,
    /// and the debt is paid by waiting before the next read.
    pub fn spend(&mut self, n: u64) {
        self.refill();
        self.tokens -= n as f64;
    }

    /// How long to wait before the next read is allowed (zero when a token is available).
    pub fn wait_time(&mut self) -> Duration {
        self.refill();
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
        }
    }
}

/// Turn a sanitised `system_metrics` into the stored sample.
pub fn sample_from(vm_id: &str, received_at: DateTime<Utc>, m: SystemMetrics) -> MetricSample {
    let body = m.metrics;
    let disk_used_percent = body
        .disk
        .usage_stats
        .iter()
        .filter(|d| d.total_gb > 0.0)
        .map(|d| (d.used_gb / d.total_gb * 100.0).clamp(0.0, 100.0))
        .fold(None, |max: Option<f64>, p| {
            Some(max.map_or(p, |m| m.max(p)))
        });
    let (rx, tx) = body.network.stats.iter().fold((0.0, 0.0), |(rx, tx), i| {
        (
            rx + i.bytes_received_per_sec.unwrap_or(0.0),
            tx + i.bytes_sent_per_sec.unwrap_or(0.0),
        )
    });
    let kb = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    MetricSample {
        vm_id: vm_id.to_owned(),
        received_at,
        guest_time: m.timestamp.map(|t| t.0),
        cpu_percent: body.cpu.usage_percent,
        mem_used_kb: kb(body.memory.used_kb),
        mem_total_kb: kb(body.memory.total_kb),
        swap_used_kb: body.memory.swap_used_kb.map(kb),
        disk_used_percent,
        disk_read_bps: body.disk.io_stats.read_bytes_per_sec,
        disk_write_bps: body.disk.io_stats.write_bytes_per_sec,
        net_rx_bps: rx,
        net_tx_bps: tx,
        load1: body.system.load_average.load1min,
        detail: Arc::new(body),
    }
}

/// Everything a connection does with the bytes of one read: decode them, ingest each message
/// or bad line, charge the token bucket. Returns whether a valid message arrived. The ingest
/// benchmark (`infinibay bench-ingest`) runs exactly this per read.
pub(crate) fn ingest_read(
    decoder: &mut GuestStreamDecoder,
    ingest: &mut Ingest,
    bucket: &mut TokenBucket,
    vm: &VmEntry,
    bytes: &[u8],
) -> bool {
    let before = ingest.items;
    let useful_before = vm.counters.messages.load(Ordering::Relaxed);
    decoder.decode(bytes, |item| ingest.on_item(item));
    bucket.spend(ingest.items - before);
    vm.counters
        .buffered_bytes
        .store(decoder.buffered() as u64, Ordering::Relaxed);
    vm.counters.messages.load(Ordering::Relaxed) != useful_before
}

/// Per-connection ingest state of one VM.
pub(crate) struct Ingest {
    vm: Arc<VmEntry>,
    queue: Arc<StoreQueue>,
    bus: Arc<dyn Bus>,
    outbound: mpsc::Sender<Vec<u8>>,
    alerts: Arc<AlertEngine>,
    telemetry: Arc<TelemetryBook>,
    limits: Limits,
    dedup: Deduper,
    /// A valid message arrived on this connection.
    pub proved_useful: bool,
    /// Items (messages and bad lines) handled, for the token bucket.
    pub items: u64,
}

impl Ingest {
    pub(crate) fn new(
        vm: Arc<VmEntry>,
        queue: Arc<StoreQueue>,
        bus: Arc<dyn Bus>,
        outbound: mpsc::Sender<Vec<u8>>,
        alerts: Arc<AlertEngine>,
        telemetry: Arc<TelemetryBook>,
        dedup_period: Duration,
    ) -> Self {
        Self {
            vm,
            queue,
            bus,
            outbound,
            alerts,
            telemetry,
            limits: Limits::default(),
            dedup: Deduper::new(dedup_period),
            proved_useful: false,
            items: 0,
        }
    }

    /// Handle one decoder item.
    pub(crate) fn on_item(&mut self, item: Result<GuestMessage, DecodeError>) {
        self.items += 1;
        match item {
            Ok(message) => self.on_message(message),
            Err(error) => self.on_decode_error(&error),
        }
    }

    fn on_decode_error(&mut self, error: &DecodeError) {
        VmCounters::bump(&self.vm.counters.decode_errors);
        let vm = self.vm.id();
        // A sample refused whole (seed 001 refuses one without cpu or memory): nothing of it
        // is stored or charted, rather than zeros. Said once per VM; the counter keeps count.
        if let DecodeError::InvalidMessage { kind, message, .. } = error
            && matches!(kind.as_str(), "system_metrics" | "metrics")
        {
            if self
                .vm
                .counters
                .samples_rejected
                .fetch_add(1, Ordering::Relaxed)
                == 0
            {
                tracing::warn!(target: TARGET, vm,
                    "system_metrics refused, nothing of it stored ({message}); further refused samples of this VM are only counted (samples_rejected)");
            }
            return;
        }
        match self.dedup.record(error.label()) {
            Occurrence::First => {
                tracing::warn!(target: TARGET, vm, kind = error.label(), "invalid line from guest: {error}")
            }
            Occurrence::Summary(n) => tracing::warn!(target: TARGET, vm, kind = error.label(),
                "{n} more invalid lines from guest; latest: {error}"),
            Occurrence::Suppressed => {}
        }
    }

    fn on_message(&mut self, mut message: GuestMessage) {
        let report = sanitize(&mut message, &self.limits);
        let now = Utc::now();
        let vm_id = self.vm.id();
        if !report.is_clean() {
            self.vm
                .counters
                .sanitized_fixes
                .fetch_add(u64::from(report.fixes), Ordering::Relaxed);
            if self.dedup.record("sanitized") == Occurrence::First {
                tracing::debug!(target: TARGET, vm = %vm_id, kind = message.kind(), fixes = report.fixes,
                    "guest data out of range or oversized; clamped");
            }
        }
        VmCounters::bump(&self.vm.counters.messages);
        self.proved_useful = true;
        // A sample is built before the VM's lock is taken, so that it becomes the VM's newest
        // under the same lock as `last_seen`.
        let sample = match &mut message {
            GuestMessage::SystemMetrics(m) => {
                Some(Arc::new(sample_from(vm_id, now, std::mem::take(m))))
            }
            _ => None,
        };
        // One lock per message in the steady state: the status check and the newest sample
        // ride along with the `last_seen` update, and only a VM that is not yet online takes
        // `set_status`'s path.
        let (was_online, replaced) = {
            let mut live = self.vm.live();
            live.last_seen = Some(now);
            let replaced = match &sample {
                Some(s) => live.latest.replace(s.clone()),
                None => None,
            };
            (live.status == VmStatus::Online, replaced)
        };
        // Freed (when storage already has it) outside the VM's lock.
        drop(replaced);
        if !was_online {
            self.vm.set_status(
                VmStatus::Online,
                StatusReason::ValidMessage,
                &self.queue,
                self.bus.as_ref(),
            );
        }

        match message {
            GuestMessage::VmIdentification(id) => self.on_identification(id, now),
            // Its body was taken into `sample` above.
            GuestMessage::SystemMetrics(_) => {
                if let Some(sample) = sample {
                    self.alerts.on_sample(&self.vm, &sample);
                    // The queue, the VM's newest and the bus share one sample; the bus gets it
                    // only when someone listens (with 10,000 VMs and no dashboard open, nobody
                    // does).
                    if self.bus.has_subscribers(Topic::Metrics, vm_id) {
                        self.queue.push_sample(sample.clone());
                        self.bus.publish(BusEvent::Metrics(sample));
                    } else {
                        self.queue.push_sample(sample);
                    }
                }
            }
            GuestMessage::ProcessSnapshot(s) => self.inventory(
                InventoryKind::Processes,
                serde_json::to_value(&s.processes),
                now,
            ),
            GuestMessage::PortUsage(p) => {
                self.inventory(InventoryKind::Ports, serde_json::to_value(&p.ports), now)
            }
            GuestMessage::ApplicationUsage(a) => self.inventory(
                InventoryKind::Applications,
                serde_json::to_value(&a.applications),
                now,
            ),
            GuestMessage::ServiceInventory(s) => self.inventory(
                InventoryKind::Services,
                serde_json::to_value(&s.services),
                now,
            ),
            GuestMessage::Response(r) => {
                let id = r.id.clone();
                if !deliver_response(&self.vm, r) {
                    match self.dedup.record("unmatched_response") {
                        Occurrence::First => {
                            tracing::warn!(target: "infinibay::commands", vm = %vm_id, id = %id,
                            "response for a command this VM was not sent (or that already ended); dropped")
                        }
                        Occurrence::Summary(n) => {
                            tracing::warn!(target: "infinibay::commands", vm = %vm_id,
                            "{n} more responses with unknown ids dropped")
                        }
                        Occurrence::Suppressed => {}
                    }
                }
            }
            GuestMessage::Error(e) => self.on_guest_error(e, now),
            GuestMessage::Pong(_) => {}
        }
    }

    fn on_identification(&mut self, id: VmIdentification, now: DateTime<Utc>) {
        let vm_id = self.vm.id().to_owned();
        if let Some(claimed) = id.claimed_vm_id.as_deref()
            && !claimed.eq_ignore_ascii_case(&vm_id)
        {
            VmCounters::bump(&self.vm.counters.identity_mismatches);
            if self.dedup.record("identity_mismatch") == Occurrence::First {
                tracing::warn!(target: TARGET, vm = %vm_id, claimed = %claimed.escape_debug(),
                    "agent claims another VM id; ignored (a VM's identity is its socket)");
            }
        }
        let welcome = HostMessage::Welcome(Welcome {
            protocol_version: id.protocol_version.clamp(1, PROTOCOL_VERSION),
            timestamp: Some(Timestamp::now()),
        });
        if encode_line(&welcome)
            .map(|line| self.outbound.try_send(line).is_err())
            .unwrap_or(true)
        {
            VmCounters::bump(&self.vm.counters.pings_dropped);
        }
        self.vm.live().agent = Some(id.clone());
        self.telemetry
            .on_identification(&self.vm, id.protocol_version);
        self.queue.set_agent(&vm_id, id.clone());
        self.bus.publish(BusEvent::Agent(Arc::new(AgentEvent {
            vm_id,
            at: now,
            agent: id,
        })));
    }

    fn inventory(
        &mut self,
        kind: InventoryKind,
        items: Result<serde_json::Value, serde_json::Error>,
        now: DateTime<Utc>,
    ) {
        let items = match items {
            Ok(v) => v,
            Err(e) => {
                // Only non-string map keys fail to serialize; our types have none.
                tracing::error!(target: TARGET, vm = self.vm.id(), "inventory not serializable: {e}");
                return;
            }
        };
        let inventory = Inventory {
            vm_id: self.vm.id().to_owned(),
            kind,
            received_at: now,
            items,
        };
        self.queue.push_inventory(inventory.clone());
        self.bus.publish(BusEvent::Inventory(Arc::new(inventory)));
    }

    /// An error the agent reported: logged (deduplicated per connection), stored, pushed as
    /// `vm:error` when stored (what a client is told is what `vmErrors` will list), and checked
    /// against `guest_error` alert rules.
    fn on_guest_error(&mut self, e: GuestError, now: DateTime<Utc>) {
        let record = VmErrorRecord {
            vm_id: self.vm.id().to_owned(),
            at: now,
            code: e.code,
            message: e.error,
            details: e.details,
        };
        let vm = self.vm.id();
        let code = record.code.as_deref().unwrap_or("-");
        match self.dedup.record("guest_error") {
            Occurrence::First => tracing::warn!(target: TARGET, vm, code = %code.escape_debug(),
                "the agent reports an error: {}", record.message.escape_debug()),
            Occurrence::Summary(n) => tracing::warn!(target: TARGET, vm,
                "the agent reported {n} more errors; latest ({}): {}",
                code.escape_debug(), record.message.escape_debug()),
            Occurrence::Suppressed => {}
        }
        self.alerts.on_guest_error(&self.vm, &record);
        if self.queue.push_error(record.clone()) {
            self.bus.publish(BusEvent::Error(Arc::new(record)));
        }
    }

    /// Note a rate-limit pause: logged once per connection, then summarised.
    pub(crate) fn note_pause(&mut self, rate: f64) {
        VmCounters::bump(&self.vm.counters.read_pauses);
        match self.dedup.record("rate_limited") {
            Occurrence::First => tracing::warn!(target: TARGET, vm = self.vm.id(),
                "guest sends faster than {rate} messages/s; pausing its reads (backpressure into the guest)"),
            Occurrence::Summary(n) => tracing::warn!(target: TARGET, vm = self.vm.id(),
                "reads paused {n} more times by the rate limit"),
            Occurrence::Suppressed => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_allows_a_burst_then_the_rate() {
        let mut b = TokenBucket::new(50, 10.0);
        b.spend(50);
        assert!(b.wait_time() > Duration::ZERO);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(b.wait_time(), Duration::ZERO);
        b.spend(30);
        let wait = b.wait_time();
        assert!(
            wait >= Duration::from_millis(2_900) && wait <= Duration::from_millis(3_000),
            "{wait:?}"
        );
    }

    #[test]
    fn samples_take_host_time_and_keep_guest_time_aside() {
        let mut jitter = infinibay_protocol::samples::Jitter::new(1);
        let mut m = infinibay_protocol::samples::small_metrics(&mut jitter, 100);
        let guest = Timestamp::from_unix_seconds(1).expect("valid");
        m.timestamp = Some(guest);
        m.claimed_vm_id = Some("someone-else".into());
        let now = Utc::now();
        let s = sample_from("vm-a", now, m);
        assert_eq!(s.vm_id, "vm-a");
        assert_eq!(s.received_at, now);
        assert_eq!(s.guest_time, Some(guest.0));
        assert!(s.disk_used_percent.is_some());
        assert!(s.net_rx_bps >= 0.0);
    }
}

//! Counters of the whole simulator, shared by every VM task.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Live counters (relaxed atomics: they are statistics, not synchronisation).
#[derive(Debug, Default)]
pub struct Stats {
    /// Clients accepted, over all VMs.
    pub connections: AtomicU64,
    /// Clients currently connected.
    pub connected: AtomicU64,
    /// Periodic samples written (one per interval per VM; a typical sample is four messages).
    pub samples: AtomicU64,
    /// Messages written by flooding VMs.
    pub flood_messages: AtomicU64,
    /// Lines written, of any kind.
    pub messages: AtomicU64,
    /// Bytes written.
    pub bytes: AtomicU64,
    /// Ticks that found the previous sample still unsent (client absent or slow): only the
    /// newest sample is kept, as QEMU keeps little.
    pub ticks_coalesced: AtomicU64,
    /// Samples written later than a quarter interval after their tick (slow client).
    pub samples_late: AtomicU64,
    /// Requests from the host answered (`pong`, `response`, `vm_identification`).
    pub requests_answered: AtomicU64,
    /// Lines from the host that could not be decoded.
    pub bad_lines: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`Stats::connections`].
    pub connections: u64,
    /// See [`Stats::connected`].
    pub connected: u64,
    /// See [`Stats::samples`].
    pub samples: u64,
    /// See [`Stats::flood_messages`].
    pub flood_messages: u64,
    /// See [`Stats::messages`].
    pub messages: u64,
    /// See [`Stats::bytes`].
    pub bytes: u64,
    /// See [`Stats::ticks_coalesced`].
    pub ticks_coalesced: u64,
    /// See [`Stats::samples_late`].
    pub samples_late: u64,
    /// See [`Stats::requests_answered`].
    pub requests_answered: u64,
    /// See [`Stats::bad_lines`].
    pub bad_lines: u64,
}

impl Stats {
    /// Read every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            connections: self.connections.load(Relaxed),
            connected: self.connected.load(Relaxed),
            samples: self.samples.load(Relaxed),
            flood_messages: self.flood_messages.load(Relaxed),
            messages: self.messages.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            ticks_coalesced: self.ticks_coalesced.load(Relaxed),
            samples_late: self.samples_late.load(Relaxed),
            requests_answered: self.requests_answered.load(Relaxed),
            bad_lines: self.bad_lines.load(Relaxed),
        }
    }

    pub(crate) fn wrote(&self, messages: u64, bytes: usize) {
        self.messages.fetch_add(messages, Relaxed);
        self.bytes.fetch_add(bytes as u64, Relaxed);
    }
}

impl StatsSnapshot {
    /// One human line with rates since `earlier`.
    pub fn rate_line(&self, earlier: &StatsSnapshot, secs: f64) -> String {
        let secs = secs.max(1e-9);
        let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
        format!(
            "{} connected; {:.0} samples/s, {:.0} flood msg/s, {:.0} msg/s, {:.2} MB/s; \
             coalesced {}, late {}, answered {}, bad lines {}",
            self.connected,
            rate(self.samples, earlier.samples),
            rate(self.flood_messages, earlier.flood_messages),
            rate(self.messages, earlier.messages),
            rate(self.bytes, earlier.bytes) / 1e6,
            self.ticks_coalesced,
            self.samples_late,
            self.requests_answered,
            self.bad_lines,
        )
    }

    /// The totals as one JSON object (`{"sim_totals":{...}}`), for scripts.
    pub fn to_json(&self, uptime: Duration) -> String {
        serde_json::json!({
            "sim_totals": {
                "uptime_secs": uptime.as_secs_f64(),
                "connections": self.connections,
                "samples": self.samples,
                "flood_messages": self.flood_messages,
                "messages": self.messages,
                "bytes": self.bytes,
                "ticks_coalesced": self.ticks_coalesced,
                "samples_late": self.samples_late,
                "requests_answered": self.requests_answered,
                "bad_lines": self.bad_lines,
            }
        })
        .to_string()
    }
}

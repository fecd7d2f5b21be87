//! What the core tells about its VMs: live state, counters, totals.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use infinibay_protocol::message::VmIdentification;
use infinibay_store::VmStatus;

use crate::lifecycle::PowerState;

/// A VM as the API sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmSnapshot {
    /// The uuid from the socket file name.
    pub id: String,
    /// The socket file.
    pub socket_path: PathBuf,
    /// `online` only after a valid message from its agent.
    pub status: VmStatus,
    /// The hypervisor's power state (`Unknown` for a VM libvirt does not know).
    pub power_state: PowerState,
    /// Its libvirt domain's name, when libvirt knows it.
    pub domain_name: Option<String>,
    /// A socket connection is open (QEMU accepted; says nothing about the agent).
    pub connected: bool,
    /// The socket file exists.
    pub socket_present: bool,
    /// Host time of the last valid message.
    pub last_seen: Option<DateTime<Utc>>,
    /// The agent's identification (sanitised).
    pub agent: Option<VmIdentification>,
    /// Commands waiting for a response.
    pub pending_commands: usize,
    /// Counters.
    pub stats: VmStats,
}

/// A VM's counters since the core started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStats {
    /// Connection attempts.
    pub connect_attempts: u64,
    /// Connections that succeeded.
    pub connections: u64,
    /// Valid messages received.
    pub messages: u64,
    /// Lines that could not be decoded.
    pub decode_errors: u64,
    /// `system_metrics` refused (no cpu or memory, wrong types): nothing of them is stored.
    pub samples_rejected: u64,
    /// Values sanitising had to change.
    pub sanitized_fixes: u64,
    /// Responses whose id matched no pending command of this VM.
    pub unmatched_responses: u64,
    /// Times reads were paused by the rate limit.
    pub read_pauses: u64,
    /// `vm_identification` messages naming another VM.
    pub identity_mismatches: u64,
    /// Pings not sent because the guest's queue was full.
    pub pings_dropped: u64,
    /// Bytes of an incomplete line held now.
    pub buffered_bytes: u64,
}

/// Totals over all VMs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmTotals {
    /// VMs known.
    pub vms: usize,
    /// VMs online.
    pub online: usize,
    /// VMs with an open socket connection.
    pub connected: usize,
    /// Valid messages received.
    pub messages: u64,
    /// Lines that could not be decoded.
    pub decode_errors: u64,
    /// `system_metrics` refused.
    pub samples_rejected: u64,
    /// Values sanitising changed.
    pub sanitized_fixes: u64,
    /// Responses with unknown ids.
    pub unmatched_responses: u64,
    /// Rate-limit pauses.
    pub read_pauses: u64,
    /// Connection attempts.
    pub connect_attempts: u64,
}

/// Counters of the whole core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoreStats {
    /// VMs known.
    pub vms: usize,
    /// VMs online.
    pub online: usize,
    /// Totals over all VMs.
    pub totals: VmTotals,
    /// The storage queue.
    pub queue: QueueStats,
    /// The alert engine and its webhook delivery.
    pub alerts: AlertStats,
}

/// Counters of the alert engine and its webhook delivery since the core started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertStats {
    /// Rules being evaluated now.
    pub rules: usize,
    /// Alerts raised.
    pub raised: u64,
    /// Alerts resolved.
    pub resolved: u64,
    /// Webhook notifications delivered (a 2xx answer).
    pub notifications_delivered: u64,
    /// Webhook notifications given up after every attempt failed.
    pub notifications_failed: u64,
    /// Delivery attempts retried after a failure.
    pub notification_retries: u64,
    /// Notifications held back by the rate bound (one per rule and VM per interval; the newest
    /// held one is sent when the interval ends).
    pub notifications_deferred: u64,
    /// Notifications dropped because the delivery queue was full.
    pub notifications_dropped: u64,
}

/// A copy of the queue's counters and current sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Samples accepted into the queue.
    pub samples_queued: u64,
    /// Samples dropped because a newer one of the same VM replaced them (storage too slow).
    pub samples_coalesced: u64,
    /// Samples the store accepted.
    pub samples_written: u64,
    /// Samples lost to storage errors: dropped from a full backlog.
    pub samples_failed: u64,
    /// Waiting inventories replaced by a newer one of the same VM and kind.
    pub inventories_replaced: u64,
    /// Inventories dropped because the queue was full.
    pub inventories_dropped: u64,
    /// Inventories written.
    pub inventories_written: u64,
    /// VM errors dropped (queue full or VM over its share).
    pub errors_dropped: u64,
    /// Command log entries dropped.
    pub command_logs_dropped: u64,
    /// Alert changes (raised, resolved) dropped because the queue was full.
    pub alert_changes_dropped: u64,
    /// Store calls that failed.
    pub write_failures: u64,
    /// Flushes done.
    pub flushes: u64,
    /// Samples waiting now.
    pub pending_samples: usize,
    /// Inventory items waiting now.
    pub pending_inventory_items: usize,
    /// VM errors waiting now.
    pub pending_errors: usize,
    /// Samples kept for a later write because the database refused the last one (bounded by
    /// `store.backlog_samples_max`; written oldest first once the database answers again).
    #[serde(default)]
    pub backlog_samples: usize,
    /// The last write to the database failed and the writer is retrying with backoff.
    #[serde(default)]
    pub store_failing: bool,
}

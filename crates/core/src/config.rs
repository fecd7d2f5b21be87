//! The core's settings: where the sockets are, libvirt and the image directory, and the
//! sections of discovery, connections, ingest, the store queue, maintenance and commands. The binary reads them from its
//! configuration file (the same keys at the same places); the core only checks them.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The core's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoreConfig {
    /// Where QEMU creates the per-VM sockets (default `/opt/infinibay/sockets`, seed 000).
    pub socket_dir: PathBuf,
    /// libvirt's connection URI (default `qemu:///system`); [`LIBVIRT_DISABLED`] (`none`) runs
    /// the host on socket discovery alone. An unreachable libvirt is not fatal: the host says
    /// so once and keeps retrying in the background.
    pub libvirt: String,
    /// Where `createVm` finds base images (and kernels) and writes each VM's qcow2 overlay
    /// (default `/opt/infinibay/images`).
    pub image_dir: PathBuf,
    /// Socket discovery.
    pub discovery: DiscoveryConfig,
    /// Per-VM connections and liveness.
    pub connection: ConnectionConfig,
    /// Ingest limits.
    pub ingest: IngestConfig,
    /// The queue to storage and the writer.
    pub store: StoreConfig,
    /// Roll-ups and retention.
    pub maintenance: MaintenanceConfig,
    /// Commands to guests.
    pub commands: CommandConfig,
    /// The alert engine and webhook delivery.
    pub alerts: AlertConfig,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            socket_dir: PathBuf::from("/opt/infinibay/sockets"),
            libvirt: infinibay_libvirt::DEFAULT_URI.to_owned(),
            image_dir: PathBuf::from("/opt/infinibay/images"),
            discovery: DiscoveryConfig::default(),
            connection: ConnectionConfig::default(),
            ingest: IngestConfig::default(),
            store: StoreConfig::default(),
            maintenance: MaintenanceConfig::default(),
            commands: CommandConfig::default(),
            alerts: AlertConfig::default(),
        }
    }
}

/// The `libvirt` value that turns libvirt off.
pub const LIBVIRT_DISABLED: &str = "none";

/// A setting that would make the core misbehave rather than fail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidConfig(pub String);

impl CoreConfig {
    /// The libvirt URI, or `None` when libvirt is turned off.
    pub fn libvirt_uri(&self) -> Option<&str> {
        let uri = self.libvirt.trim();
        (!uri.is_empty() && uri != LIBVIRT_DISABLED).then_some(uri)
    }

    /// Reject values that would make the host misbehave rather than fail.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let positive = [
            (
                "discovery.rescan_interval_secs",
                self.discovery.rescan_interval_secs,
            ),
            (
                "connection.backoff_initial_secs",
                self.connection.backoff_initial_secs,
            ),
            (
                "connection.backoff_max_secs",
                self.connection.backoff_max_secs,
            ),
            (
                "connection.ping_interval_secs",
                self.connection.ping_interval_secs,
            ),
            ("ingest.rate_per_sec", self.ingest.rate_per_sec),
            ("maintenance.interval_secs", self.maintenance.interval_secs),
            (
                "commands.default_timeout_secs",
                self.commands.default_timeout_secs,
            ),
            (
                "alerts.notify_interval_secs",
                self.alerts.notify_interval_secs,
            ),
            (
                "alerts.check_interval_secs",
                self.alerts.check_interval_secs,
            ),
            (
                "alerts.webhook_timeout_secs",
                self.alerts.webhook_timeout_secs,
            ),
            (
                "alerts.webhook_backoff_secs",
                self.alerts.webhook_backoff_secs,
            ),
        ];
        for (name, value) in positive {
            if !(value.is_finite() && value > 0.0 && value < 1e9) {
                return Err(InvalidConfig(format!(
                    "{name} must be a positive number of seconds (or per second), got {value}"
                )));
            }
        }
        if self.connection.backoff_max_secs < self.connection.backoff_initial_secs {
            return Err(InvalidConfig(
                "connection.backoff_max_secs is smaller than connection.backoff_initial_secs"
                    .into(),
            ));
        }
        let counts = [
            (
                "connection.missed_pings",
                self.connection.missed_pings as usize,
            ),
            ("connection.outbound_queue", self.connection.outbound_queue),
            ("ingest.burst", self.ingest.burst as usize),
            ("ingest.max_line_bytes", self.ingest.max_line_bytes),
            ("ingest.read_buffer_bytes", self.ingest.read_buffer_bytes),
            ("store.max_batch", self.store.max_batch),
            ("store.pending_samples_max", self.store.pending_samples_max),
            (
                "store.pending_samples_per_vm",
                self.store.pending_samples_per_vm,
            ),
            ("store.pending_errors_max", self.store.pending_errors_max),
            (
                "store.pending_errors_per_vm",
                self.store.pending_errors_per_vm,
            ),
            (
                "store.pending_command_logs_max",
                self.store.pending_command_logs_max,
            ),
            ("store.backlog_samples_max", self.store.backlog_samples_max),
            (
                "commands.max_pending_per_vm",
                self.commands.max_pending_per_vm,
            ),
            (
                "alerts.webhook_attempts",
                self.alerts.webhook_attempts as usize,
            ),
            ("alerts.webhook_queue", self.alerts.webhook_queue),
            (
                "alerts.webhook_concurrency",
                self.alerts.webhook_concurrency,
            ),
            (
                "alerts.pending_changes_max",
                self.alerts.pending_changes_max,
            ),
        ];
        for (name, value) in counts {
            if value == 0 {
                return Err(InvalidConfig(format!("{name} must be at least 1")));
            }
        }
        Ok(())
    }
}

/// Socket discovery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// Full rescan of the socket directory, in seconds, besides inotify (which can overflow or
    /// be unavailable on some file systems). Default 5.
    pub rescan_interval_secs: f64,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            rescan_interval_secs: 5.0,
        }
    }
}

/// Per-VM connections, reconnect backoff and liveness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionConfig {
    /// First reconnect delay in seconds (default 0.5).
    pub backoff_initial_secs: f64,
    /// Largest reconnect delay in seconds (default 60).
    pub backoff_max_secs: f64,
    /// Seconds between pings on a connected socket (default 10).
    pub ping_interval_secs: f64,
    /// The VM goes offline after this many ping intervals without a valid message (default 3).
    pub missed_pings: u32,
    /// Host→guest messages queued per connection before commands are refused (default 64).
    pub outbound_queue: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            backoff_initial_secs: 0.5,
            backoff_max_secs: 60.0,
            ping_interval_secs: 10.0,
            missed_pings: 3,
            outbound_queue: 64,
        }
    }
}

/// Ingest limits per VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Longest accepted line in bytes (default 1 MiB, the protocol's).
    pub max_line_bytes: usize,
    /// Sustained messages per second per VM (default 10).
    pub rate_per_sec: f64,
    /// Messages a VM may send in a burst above the rate (default 50).
    pub burst: u32,
    /// Bytes read from a socket at once (default 16 KiB: a dozen small samples per read,
    /// while 10,000 connections × 64 KiB would be 640 MB once touched).
    pub read_buffer_bytes: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_line_bytes: infinibay_protocol::DEFAULT_MAX_LINE,
            rate_per_sec: 10.0,
            burst: 50,
            read_buffer_bytes: 16 * 1024,
        }
    }
}

/// The queue between ingest and storage, and the writer draining it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The writer flushes at least this often, in milliseconds (default 200).
    pub flush_interval_ms: u64,
    /// Samples per storage transaction at most (default 5,000).
    pub max_batch: usize,
    /// Samples waiting for storage, all VMs together, before coalescing starts (default 20,000).
    pub pending_samples_max: usize,
    /// Samples waiting per VM before its oldest is dropped (default 16).
    pub pending_samples_per_vm: usize,
    /// VM errors waiting for storage before new ones are dropped (default 1,000).
    pub pending_errors_max: usize,
    /// VM errors waiting per VM (default 10).
    pub pending_errors_per_vm: usize,
    /// Command log entries waiting (default 1,000).
    pub pending_command_logs_max: usize,
    /// Samples kept for a later write while the database refuses writes (default 200,000:
    /// 40 s of 5,000 VMs at 1 Hz, ~300 MB at worst). Beyond it the oldest are dropped and
    /// counted (`samples_failed`).
    pub backlog_samples_max: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            flush_interval_ms: 200,
            max_batch: 5_000,
            pending_samples_max: 20_000,
            pending_samples_per_vm: 16,
            pending_errors_max: 1_000,
            pending_errors_per_vm: 10,
            pending_command_logs_max: 1_000,
            backlog_samples_max: 200_000,
        }
    }
}

/// Roll-ups and retention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaintenanceConfig {
    /// Seconds between maintenance passes (default 60).
    pub interval_secs: f64,
    /// Rows per statement (default 5,000).
    pub batch: u32,
    /// Raw samples kept, hours (default 48).
    pub raw_retention_hours: u32,
    /// Minute roll-ups kept, days (default 30).
    pub minute_retention_days: u32,
    /// Hour roll-ups kept, days (default 365).
    pub hour_retention_days: u32,
    /// Service state changes, VM errors and command log entries kept, days (default 90).
    pub event_retention_days: u32,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            interval_secs: 60.0,
            batch: 5_000,
            raw_retention_hours: 48,
            minute_retention_days: 30,
            hour_retention_days: 365,
            event_retention_days: 90,
        }
    }
}

impl MaintenanceConfig {
    /// The retention as the store takes it.
    pub fn retention(&self) -> infinibay_store::Retention {
        infinibay_store::Retention {
            raw: chrono::Duration::hours(i64::from(self.raw_retention_hours)),
            minute: chrono::Duration::days(i64::from(self.minute_retention_days)),
            hour: chrono::Duration::days(i64::from(self.hour_retention_days)),
            events: chrono::Duration::days(i64::from(self.event_retention_days)),
        }
    }
}

/// Commands to guests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommandConfig {
    /// Default time to wait for a response, seconds (default 30).
    pub default_timeout_secs: f64,
    /// Commands waiting for a response per VM at most (default 32).
    pub max_pending_per_vm: usize,
}

impl Default for CommandConfig {
    fn default() -> Self {
        Self {
            default_timeout_secs: 30.0,
            max_pending_per_vm: 32,
        }
    }
}

/// The alert engine and webhook delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertConfig {
    /// At most one webhook notification per rule and VM in this many seconds; a newer one
    /// waits for the end of the interval, replacing any older one waiting (default 300).
    pub notify_interval_secs: f64,
    /// How often timed conditions are checked (agent offline long enough, no new guest error
    /// for long enough) and held notifications sent, seconds (default 1).
    pub check_interval_secs: f64,
    /// Per webhook request, seconds (default 5).
    pub webhook_timeout_secs: f64,
    /// Attempts per notification and URL before it is given up (default 4).
    pub webhook_attempts: u32,
    /// Wait before the first retry, doubled for each next one, seconds (default 1).
    pub webhook_backoff_secs: f64,
    /// Notifications waiting for delivery before new ones are dropped (default 256).
    pub webhook_queue: usize,
    /// Webhook requests in flight at once (default 4).
    pub webhook_concurrency: usize,
    /// Alert changes waiting for storage before new ones are dropped (default 1,000).
    pub pending_changes_max: usize,
}

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            notify_interval_secs: 300.0,
            check_interval_secs: 1.0,
            webhook_timeout_secs: 5.0,
            webhook_attempts: 4,
            webhook_backoff_secs: 1.0,
            webhook_queue: 256,
            webhook_concurrency: 4,
            pending_changes_max: 1_000,
        }
    }
}

/// Seconds as a [`Duration`], refusing what is not a finite positive number.
pub fn secs(value: f64) -> Duration {
    Duration::try_from_secs_f64(value).unwrap_or(Duration::ZERO)
}

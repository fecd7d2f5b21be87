//! Storage for the infinibay host.
//!
//! One async [`Store`] trait, two backends: SQLite (embedded default) and PostgreSQL
//! (production). The host's ingest pipeline writes through the batch methods from a single
//! writer task; the API reads through the query methods. Backends own their migrations.
//!
//! **Architecture invariant:** nothing here knows about sockets, GraphQL or Socket.IO, and
//! every value stored under a VM id was attributed by the host (from the socket path), never
//! taken from what a guest claimed.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use infinibay_protocol as protocol;

pub mod alerts;
mod common;
mod engine;
mod hot;
mod open;
pub mod postgres;
pub mod sqlite;
pub mod users;

pub use alerts::{AlertChange, AlertKind, AlertQuery, AlertRecord, AlertRule, AlertStore};
pub use engine::TICKET_RETENTION;
pub use infinibay_console::{Redemption, Ticket, TicketRefusal, TicketStore};
pub use open::{open, open_with_retention};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use users::{NewUser, Role, UserRecord, UserStore};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row asked for does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// A uniqueness or reference constraint refused the write.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database could not be reached or opened.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Anything else the backend reported.
    #[error("storage error: {0}")]
    Other(String),
}

/// Result alias of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Whether a VM's agent is talking to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmStatus {
    /// A valid message arrived and pings are answered.
    Online,
    /// Closed, missed pings, or never heard from.
    Offline,
}

impl VmStatus {
    /// Lower-case name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Offline => "offline",
        }
    }
}

/// Who chose a VM's display name, for [`Store::set_vm_names`]. The order of precedence is a
/// person, then the hypervisor (the libvirt domain name), then the agent (its host name), then
/// the id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NameSource {
    /// A person chose it (`createVm`): nothing else replaces it.
    Person,
    /// libvirt's domain name: replaces the agent's host name, never a person's choice.
    Hypervisor,
}

impl NameSource {
    /// As stored in `vms.name_source`: `user`, `libvirt`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Person => "user",
            Self::Hypervisor => "libvirt",
        }
    }
}

/// A VM as the host knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRecord {
    /// The uuid from the socket file name.
    pub id: String,
    /// Display name (defaults to the agent's hostname, else the id).
    pub name: String,
    /// Owning user id, if any.
    pub owner_id: Option<i64>,
    /// Department name, if any.
    pub department: Option<String>,
    /// Current status.
    pub status: VmStatus,
    /// Host time of the last valid message.
    pub last_seen: Option<DateTime<Utc>>,
    /// What the agent said of itself in `vm_identification` (sanitised).
    pub agent: Option<protocol::message::VmIdentification>,
    /// First seen.
    pub created_at: DateTime<Utc>,
}

/// One stored `system_metrics` sample: the numbers charts and rollups need as columns, and the
/// whole sanitised message for detail views.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSample {
    /// VM (from the socket path).
    pub vm_id: String,
    /// Host receive time: the time of record.
    pub received_at: DateTime<Utc>,
    /// The guest's own timestamp, informational.
    pub guest_time: Option<DateTime<Utc>>,
    /// Overall CPU percent.
    pub cpu_percent: f64,
    /// Memory used, kB.
    pub mem_used_kb: i64,
    /// Memory total, kB.
    pub mem_total_kb: i64,
    /// Swap used, kB.
    pub swap_used_kb: Option<i64>,
    /// Most-used file system percent (0–100), if any file system was reported.
    pub disk_used_percent: Option<f64>,
    /// Block read bytes/s.
    pub disk_read_bps: f64,
    /// Block write bytes/s.
    pub disk_write_bps: f64,
    /// Network receive bytes/s over all interfaces.
    pub net_rx_bps: f64,
    /// Network transmit bytes/s over all interfaces.
    pub net_tx_bps: f64,
    /// 1-minute load average.
    pub load1: f64,
    /// The sanitised message body (per core, per disk, per interface). Shared: the store's
    /// newest-sample cache, the bus and the queue hold the same body, and a clone of a sample
    /// (one per VM per flush) does not copy its ~40 allocations.
    pub detail: std::sync::Arc<protocol::message::MetricsBody>,
}

/// A point of a metrics series, raw or rolled up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    /// Start of the bucket (or the sample time for raw points).
    pub at: DateTime<Utc>,
    /// Average CPU percent.
    pub cpu_avg: f64,
    /// Minimum CPU percent.
    pub cpu_min: f64,
    /// Maximum CPU percent.
    pub cpu_max: f64,
    /// Average memory used, kB.
    pub mem_used_kb_avg: f64,
    /// Memory total, kB (the largest in the bucket; a VM's total rarely changes).
    pub mem_total_kb: i64,
    /// Average disk read bytes/s.
    pub disk_read_bps: f64,
    /// Average disk write bytes/s.
    pub disk_write_bps: f64,
    /// Average net receive bytes/s.
    pub net_rx_bps: f64,
    /// Average net transmit bytes/s.
    pub net_tx_bps: f64,
    /// Samples in the bucket (1 for raw).
    pub samples: i64,
}

/// The resolution a metrics query was answered at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resolution {
    /// Raw samples.
    Raw,
    /// Per-minute rollups.
    Minute,
    /// Per-hour rollups.
    Hour,
}

/// A metrics series and how it was computed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSeries {
    /// The table the points came from.
    pub resolution: Resolution,
    /// Width of each point's bucket in seconds; `None` when every point is one raw sample.
    pub bucket_seconds: Option<i64>,
    /// Points, oldest first.
    pub points: Vec<MetricPoint>,
}

/// The inventories kept per VM (latest only, replaced on change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InventoryKind {
    /// `process_snapshot`.
    Processes,
    /// `port_usage`.
    Ports,
    /// `application_usage`.
    Applications,
    /// `service_inventory`.
    Services,
}

/// The latest inventory of one kind for one VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    /// VM.
    pub vm_id: String,
    /// Which inventory.
    pub kind: InventoryKind,
    /// Host time it was received.
    pub received_at: DateTime<Utc>,
    /// The sanitised list as JSON (an array of the protocol's item type for `kind`).
    pub items: serde_json::Value,
}

/// A service changing state, derived when a new service inventory replaces the previous one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStateChange {
    /// VM.
    pub vm_id: String,
    /// Service name.
    pub service: String,
    /// Previous active state (`None` when the service is new).
    pub from_state: Option<String>,
    /// New active state (`None` when the service disappeared).
    pub to_state: Option<String>,
    /// Host time.
    pub at: DateTime<Utc>,
}

/// One command sent to a guest, who sent it and what came back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandLogEntry {
    /// Command id (as sent on the wire).
    pub id: String,
    /// VM.
    pub vm_id: String,
    /// User who issued it (`None` for the host itself).
    pub user_id: Option<i64>,
    /// `safe` or `unsafe`.
    pub kind: String,
    /// The command as sent (JSON of the protocol message).
    pub command: serde_json::Value,
    /// The response, if one came.
    pub response: Option<serde_json::Value>,
    /// Whether it succeeded.
    pub success: bool,
    /// Wall time from send to response (or failure).
    pub duration_ms: i64,
    /// When it was issued.
    pub created_at: DateTime<Utc>,
}

/// An error a VM reported (`error` message) or the host recorded about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmErrorRecord {
    /// VM.
    pub vm_id: String,
    /// Host time.
    pub at: DateTime<Utc>,
    /// Short kind.
    pub code: Option<String>,
    /// Message.
    pub message: String,
    /// More context.
    pub details: Option<String>,
}

/// What the host asks one VM's agent to collect and how often (`setVmTelemetry`): sent to the
/// agent as `configure` when it is set and again on every reconnect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmTelemetry {
    /// VM.
    pub vm_id: String,
    /// Seconds between samples.
    pub interval_secs: u32,
    /// The collectors that run (`system_metrics`, `process_snapshot`, `port_usage`,
    /// `application_usage`, `service_inventory`), sorted; the others are off.
    pub collectors: Vec<String>,
    /// Who set it.
    pub updated_by: Option<i64>,
    /// When.
    pub updated_at: DateTime<Utc>,
    /// When the agent last confirmed these settings; `None` until it has.
    pub applied_at: Option<DateTime<Utc>>,
}

/// A status write of one VM, as [`Store::set_vm_statuses`] takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmStatusUpdate {
    /// VM.
    pub vm_id: String,
    /// New status.
    pub status: VmStatus,
    /// Host time of the last valid message; `None` keeps the stored one.
    pub last_seen: Option<DateTime<Utc>>,
}

/// How long each kind of data is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Raw samples (default 48 h).
    pub raw: chrono::Duration,
    /// Minute rollups (default 30 days).
    pub minute: chrono::Duration,
    /// Hour rollups (default 1 year).
    pub hour: chrono::Duration,
    /// Service state changes, VM errors, command log entries and resolved alerts (default 90
    /// days).
    pub events: chrono::Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            raw: chrono::Duration::hours(48),
            minute: chrono::Duration::days(30),
            hour: chrono::Duration::days(365),
            events: chrono::Duration::days(90),
        }
    }
}

/// What one maintenance pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MaintenanceReport {
    /// Minute buckets written or updated.
    pub minute_buckets: u64,
    /// Hour buckets written or updated.
    pub hour_buckets: u64,
    /// Rows deleted by retention.
    pub pruned: u64,
}

/// A connection pool's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PoolStats {
    /// Connections the pool may open.
    pub max: u32,
    /// Connections open now.
    pub open: u32,
    /// Open and idle (the rest are running a query).
    pub idle: u32,
}

impl PoolStats {
    /// Connections running a query.
    pub fn busy(&self) -> u32 {
        self.open.saturating_sub(self.idle)
    }
}

/// The storage contract both backends implement: one method per operation, each taking a
/// batch where a caller may have many (one VM is a batch of one).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Which backend (`sqlite`, `postgres`), for logs and `doctor`.
    fn backend(&self) -> &'static str;

    /// Cheap round trip, for health checks.
    async fn ping(&self) -> Result<()>;

    /// The reader pool now (the connections queries use): a pool whose every connection is
    /// busy makes the next query wait. `/metrics` and `/healthz` show it. `None` when the
    /// implementation has no pool.
    fn pool_stats(&self) -> Option<PoolStats> {
        None
    }

    /// How many [`Store::insert_samples`] batches a writer should run at once: 1 where the
    /// backend serialises writes anyway (SQLite), more where a batch is bound by round trips
    /// rather than by the database (PostgreSQL).
    fn concurrent_batches(&self) -> usize;

    /// Users, departments and permissions of the same database.
    fn users(&self) -> &dyn UserStore;

    /// The web console's single-use tickets (`console_tickets`, see `docs/console.md`): any
    /// process on the same database redeems what another minted. Maintenance deletes tickets
    /// that expired more than [`TICKET_RETENTION`] ago.
    fn tickets(&self) -> &dyn TicketStore;

    /// Alert rules and records of the same database.
    fn alerts(&self) -> &dyn AlertStore;

    // ----- VMs ---------------------------------------------------------------------------

    /// Register VMs on first sight (`(id, first seen)`), a few thousand per transaction;
    /// existing ones are left as they are (an id given twice counts its first entry).
    async fn upsert_vms(&self, vms: &[(String, DateTime<Utc>)]) -> Result<()>;
    /// Set the status (and `last_seen` when given; it never moves back) of many VMs at once,
    /// one update per VM. Ids that are not registered are skipped. Returns how many VMs were
    /// updated.
    async fn set_vm_statuses(&self, updates: &[VmStatusUpdate]) -> Result<u64>;
    /// Record what each agent said of itself (`(id, vm_identification)`, one entry per VM);
    /// its host name also becomes the VM's name unless a person chose one or it is a libvirt
    /// domain's. Ids that are not registered are skipped. Returns how many VMs were updated.
    async fn set_vm_agents(
        &self,
        agents: &[(String, protocol::message::VmIdentification)],
    ) -> Result<u64>;
    /// Name VMs (`(id, name)`) as `source` chose them: a [`NameSource::Person`]'s name always
    /// wins, a [`NameSource::Hypervisor`] name replaces anything but a person's. Ids that are
    /// not registered are skipped. Returns how many VMs changed.
    async fn set_vm_names(&self, names: &[(String, String)], source: NameSource) -> Result<u64>;
    /// Set owner and department (`NotFound` when the VM does not exist).
    async fn set_vm_owner(
        &self,
        id: &str,
        owner_id: Option<i64>,
        department: Option<&str>,
    ) -> Result<()>;
    /// Give a VM the display name a person chose (`NotFound` when the VM does not exist); the
    /// agent's host name no longer replaces it.
    async fn set_vm_name(&self, id: &str, name: &str) -> Result<()>;
    /// One VM.
    async fn get_vm(&self, id: &str) -> Result<Option<VmRecord>>;
    /// All VMs, ordered by id.
    async fn list_vms(&self) -> Result<Vec<VmRecord>>;
    /// Remove a VM and everything stored about it.
    async fn delete_vm(&self, id: &str) -> Result<()>;

    // ----- Ingest (called by the single writer task, in batches) -------------------------

    /// Insert samples in one transaction; also advances each VM's `last_seen` (as read back
    /// through [`Store::get_vm`]). Unknown VMs are registered.
    async fn insert_samples(&self, samples: &[MetricSample]) -> Result<()>;
    /// Replace the latest inventories; service inventories also append state changes.
    /// Returns the service state changes derived.
    async fn replace_inventories(
        &self,
        inventories: &[Inventory],
    ) -> Result<Vec<ServiceStateChange>>;
    /// Append VM errors.
    async fn insert_vm_errors(&self, errors: &[VmErrorRecord]) -> Result<()>;

    // ----- Collection settings -----------------------------------------------------------

    /// Store a VM's collection settings (replacing earlier ones; `applied_at` as given).
    async fn set_vm_telemetry(&self, telemetry: &VmTelemetry) -> Result<()>;
    /// Note that the agent confirmed the VM's settings at `at` (nothing when none are stored).
    async fn mark_vm_telemetry_applied(&self, vm_id: &str, at: DateTime<Utc>) -> Result<()>;
    /// The collection settings of one VM (`Some`), or of every VM (`None`), by VM id.
    async fn vm_telemetry(&self, vm_id: Option<&str>) -> Result<Vec<VmTelemetry>>;

    // ----- Commands ------------------------------------------------------------------------

    /// Append (or complete, same id) a command log entry.
    async fn log_command(&self, entry: &CommandLogEntry) -> Result<()>;
    /// Newest first.
    async fn command_logs(&self, vm_id: &str, limit: u32) -> Result<Vec<CommandLogEntry>>;

    // ----- Queries -------------------------------------------------------------------------

    /// The newest sample of a VM.
    async fn latest_sample(&self, vm_id: &str) -> Result<Option<MetricSample>>;
    /// A series between `from` and `to`, at the coarsest resolution that still gives about
    /// `max_points` points (raw inside raw retention, else minute, else hour), and how wide
    /// its buckets are. The resolution rule is documented in `docs/storage.md`.
    async fn metrics_series(
        &self,
        vm_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        max_points: u32,
    ) -> Result<MetricSeries>;
    /// The latest inventory of a kind.
    async fn inventory(&self, vm_id: &str, kind: InventoryKind) -> Result<Option<Inventory>>;
    /// Service state changes, newest first.
    async fn service_history(&self, vm_id: &str, limit: u32) -> Result<Vec<ServiceStateChange>>;
    /// VM errors, newest first.
    async fn vm_errors(&self, vm_id: &str, limit: u32) -> Result<Vec<VmErrorRecord>>;

    // ----- Maintenance -------------------------------------------------------------------

    /// Roll raw samples up into minute and hour buckets and prune by retention, in small
    /// batches (at most `batch` rows per statement) so that writers are never blocked long.
    async fn maintain(
        &self,
        now: DateTime<Utc>,
        retention: Retention,
        batch: u32,
    ) -> Result<MaintenanceReport>;

    /// Write out what is held in memory (each VM's newest sample is persisted at most every
    /// few seconds, see `docs/storage.md`). Call before shutdown; `maintain` also does it.
    async fn flush(&self) -> Result<()>;
}

//! The store, written once: [`Store`](crate::Store) and [`UserStore`](crate::UserStore) for
//! any [`Backend`].
//!
//! A backend supplies only what differs between SQLite and PostgreSQL, one concern per trait
//! (and per file of the backend's folder): its connections and how it stores a time
//! ([`Connections`]), a few fragments of SQL dialect ([`Dialect`]), the batch writes whose
//! shape is genuinely different — SQLite's multi-row `VALUES` in slices, PostgreSQL's
//! `UNNEST` arrays — ([`Batches`]), and the roll-up of a range (SQLite groups on reader
//! connections, in slices) ([`Rollups`]). The orchestration of every operation, and every
//! statement both run alike, is in this module once (`store`, `rollups`, `users`).
//! Statements use `$n` placeholders: SQLite binds `$1` to the first argument as PostgreSQL
//! does.

use std::collections::HashMap;
use std::future::Future;
use std::sync::RwLock;

use chrono::{DateTime, Utc};
use sqlx::{Database, Decode, Encode, Pool, Transaction, Type};

use crate::hot::HotState;
use crate::{
    MetricSample, Resolution, Result, Retention, ServiceStateChange, VmErrorRecord, VmRecord,
    VmStatusUpdate,
};

mod alerts;
mod rollups;
mod rows;
pub mod sql;
mod store;
mod tickets;
mod users;

pub use tickets::TICKET_RETENTION;

/// A value a backend both binds and reads (names the three sqlx traits once).
pub trait Column<DB: Database>: for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB> {}

impl<DB: Database, T> Column<DB> for T where
    T: for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB>
{
}

/// How many rows a statement changed (sqlx has it on each backend's result, not in a trait).
pub trait RowsAffected {
    /// Rows inserted, updated or deleted.
    fn rows_affected(&self) -> u64;
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows_affected(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows_affected(&self) -> u64 {
        self.rows_affected()
    }
}

/// An open write transaction of a backend.
pub type Tx<B> = Transaction<'static, <B as Connections>::Db>;

/// What a write transaction is for. PostgreSQL orders sample batches against `delete_vm` with
/// an advisory lock and relaxes durability for samples; SQLite's single writer connection
/// orders every write already, so it begins them all alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxKind {
    /// Any other write.
    Plain,
    /// A batch of samples (`insert_samples`).
    Samples,
    /// Writing out the newest samples held in memory (`flush`).
    Flush,
    /// The last step of `delete_vm`, which must not interleave with a sample batch.
    DeleteVm,
}

impl TxKind {
    /// What a failure to begin one is reported as.
    pub fn what(self) -> &'static str {
        match self {
            Self::Plain => "begin",
            Self::Samples => "insert_samples: begin",
            Self::Flush => "flush: begin",
            Self::DeleteVm => "delete_vm: begin",
        }
    }
}

/// Everything a backend supplies.
pub trait Backend: Dialect + Batches + Rollups {}

impl<B: Dialect + Batches + Rollups> Backend for B {}

/// A backend's database, connections and stored time.
pub trait Connections: Send + Sync + 'static {
    /// The sqlx database.
    type Db: Database<QueryResult: RowsAffected>;
    /// How a time is stored: ms since the epoch (SQLite `INTEGER`) or a `TIMESTAMPTZ`.
    type Time: Column<Self::Db> + Copy + Send + Sync + Unpin + 'static;

    /// `sqlite` or `postgres`, for logs and `doctor`.
    const NAME: &'static str;
    /// How many sample batches a writer should run at once (`Store::concurrent_batches`).
    const CONCURRENT_BATCHES: usize;

    /// A time as stored.
    fn to_db(time: DateTime<Utc>) -> Self::Time;
    /// A stored time.
    fn from_db(time: Self::Time) -> Result<DateTime<Utc>>;
    /// Pools, retention and what is held in memory.
    fn core(&self) -> &Core<Self::Db>;
    /// Begins a write transaction (see [`TxKind`]).
    fn begin(&self, kind: TxKind) -> impl Future<Output = Result<Tx<Self>>> + Send;
}

/// The fragments of SQL in which the backends differ.
pub trait Dialect: Connections {
    /// `SELECT id, name, owner_id, department, status, last_seen, agent (as text),
    /// created_at FROM vms v LEFT JOIN vm_latest_sample l …`, where `last_seen` is the later
    /// of `v.last_seen` and `l.at` (samples do not rewrite `vms`).
    const VM_SELECT: &'static str;
    /// Follows a bound text parameter that fills a JSON column (`::jsonb`, or nothing).
    const JSON_PARAM: &'static str;
    /// Follows a JSON column read as text (`::text`, or nothing).
    const JSON_TEXT: &'static str;
    /// Orders `command_log` rows of the same time by insertion (`rowid`, `seq`).
    const COMMAND_LOG_SEQ: &'static str;
    /// Follows the read of a stored inventory, so that two batches replacing the same list
    /// diff one after the other (` FOR UPDATE`; SQLite's single writer serialises them).
    const LOCK_READ_ROW: &'static str;

    /// Start of the epoch-aligned bucket, `width_ms` wide (an SQL expression: a parameter or a
    /// literal), that holds `column`.
    fn bucket_start(column: &str, width_ms: &str) -> String;
    /// A statement deleting at most `$2` rows of `table` that match `condition` (which may
    /// bind `$1`), so that a long delete never holds the writer long.
    fn delete_some(table: &str, condition: &str) -> String;
}

/// What `set_vm_agents` writes for one VM.
#[derive(Debug)]
pub struct AgentUpdate<'a> {
    /// VM.
    pub vm_id: &'a str,
    /// The sanitised `vm_identification`, as JSON text.
    pub agent: String,
    /// The agent's host name (the VM's name unless a person chose one).
    pub hostname: &'a str,
}

/// The batch writes, in the shape that suits the backend. Rows arrive in VM-id order where
/// several batches may write the same rows (`vms`, `vm_latest_sample`), so that concurrent
/// batches lock them in one order.
pub trait Batches: Connections {
    /// VMs `upsert_vms` registers per transaction.
    const REGISTRATIONS_PER_TRANSACTION: usize;

    /// Registers VMs not known yet (`(id, first seen)`, in id order, no id twice); existing
    /// ones are left as they are.
    fn register_vms(
        tx: &mut Tx<Self>,
        vms: &[(&str, DateTime<Utc>)],
    ) -> impl Future<Output = Result<()>> + Send;
    /// The keys of registered VMs.
    fn vm_keys(
        tx: &mut Tx<Self>,
        vm_ids: &[&str],
    ) -> impl Future<Output = Result<HashMap<String, i64>>> + Send;
    /// Sets status and `last_seen` (never moved back; `None` keeps it). Returns how many
    /// registered VMs were updated.
    fn update_statuses(
        &self,
        updates: &[&VmStatusUpdate],
    ) -> impl Future<Output = Result<u64>> + Send;
    /// Sets agent info, and the name where no person chose one. Returns how many registered
    /// VMs were updated.
    fn update_agents(&self, agents: &[AgentUpdate<'_>])
    -> impl Future<Output = Result<u64>> + Send;
    /// Appends raw sample rows (`keys[i]` is the key of `samples[i]`'s VM).
    fn insert_sample_rows(
        tx: &mut Tx<Self>,
        samples: &[MetricSample],
        keys: &[i64],
    ) -> impl Future<Output = Result<()>> + Send;
    /// Upserts each VM's newest sample with its detail (one per VM, at least one), never
    /// replacing a newer stored one.
    fn write_latest(
        tx: &mut Tx<Self>,
        samples: &[&MetricSample],
    ) -> impl Future<Output = Result<()>> + Send;
    /// Appends the service state changes of one VM's new inventory (at least one), in order.
    fn insert_service_changes(
        tx: &mut Tx<Self>,
        changes: &[ServiceStateChange],
    ) -> impl Future<Output = Result<()>> + Send;
    /// Appends VM errors, in order.
    fn insert_vm_error_rows(
        tx: &mut Tx<Self>,
        errors: &[VmErrorRecord],
    ) -> impl Future<Output = Result<()>> + Send;
}

/// How a backend recomputes the roll-up buckets of a range; the pass around it (watermarks,
/// order, pruning) is `common::maintain` with the statements of `engine::rollups`.
pub trait Rollups: Connections {
    /// A range grouped before its write transaction begins.
    type Grouped: Send;

    /// Whatever grouping of the tier's buckets in `[start, end)` (ms) the backend does before
    /// its write transaction.
    fn group_range(
        &self,
        tier: Resolution,
        start: i64,
        end: i64,
    ) -> impl Future<Output = Result<Self::Grouped>> + Send;
    /// Writes the tier's buckets of `[start, end)` inside the write transaction. Returns the
    /// buckets written.
    fn write_range(
        tx: &mut Tx<Self>,
        tier: Resolution,
        start: i64,
        end: i64,
        grouped: Self::Grouped,
    ) -> impl Future<Output = Result<u64>> + Send;
}

/// What every store holds besides its dialect: its connections, the retention the metrics
/// query plans with, and its in-memory state (`hot`).
#[derive(Debug)]
pub struct Core<DB: Database> {
    /// Where writes go (SQLite: the one writer connection).
    pub(crate) writer: Pool<DB>,
    /// Where reads go (SQLite: a separate pool; PostgreSQL: the same pool as `writer`).
    pub(crate) reader: Pool<DB>,
    retention: RwLock<Retention>,
    /// Known VM keys and each VM's newest sample.
    pub(crate) hot: HotState,
}

impl<DB: Database> Core<DB> {
    /// A store's state over its pools.
    pub fn new(writer: Pool<DB>, reader: Pool<DB>, retention: Retention) -> Self {
        Self {
            writer,
            reader,
            retention: RwLock::new(retention),
            hot: HotState::default(),
        }
    }

    /// The retention the metrics query plans with (the last `maintain`'s).
    fn retention(&self) -> Retention {
        self.retention.read().map(|r| *r).unwrap_or_default()
    }

    fn set_retention(&self, retention: Retention) {
        if let Ok(mut current) = self.retention.write() {
            *current = retention;
        }
    }

    /// The newest sample this process holds may be newer than what the database has.
    fn overlay(&self, mut vm: VmRecord) -> VmRecord {
        if let Some(seen) = self.hot.last_seen(&vm.id) {
            vm.last_seen = Some(vm.last_seen.map_or(seen, |db| db.max(seen)));
        }
        vm
    }
}

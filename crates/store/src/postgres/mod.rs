//! The PostgreSQL backend (sqlx pool).
//!
//! Batches are sent as one statement per table with a column array per field
//! (`INSERT … SELECT * FROM UNNEST($1::text[], …)`): one round trip and one plan for any batch
//! size. Rows that several batches may touch (`vms`, `vm_latest_sample`) are written in VM-id
//! order so that concurrent batches cannot deadlock. Needs PostgreSQL 14 or newer (`date_bin`).
//! What PostgreSQL does its own way, by concern: `open` (one direct attempt, then the pool),
//! `queries` (its SQL dialect), `ingest` (`UNNEST` batches), `rollups` (one statement per
//! range); everything else is the shared engine (`crate::engine`).

use chrono::{DateTime, Utc};
use sqlx::Postgres;

use crate::Result;
use crate::common::ctx;
use crate::engine::{Connections, Core, Tx, TxKind};

mod ingest;
mod open;
mod queries;
mod rollups;

/// Advisory lock between sample batches (shared) and the last step of `delete_vm`
/// (exclusive): a batch that planned with a VM's key commits before the VM's rows are
/// deleted, or plans after the VM was forgotten. Without it a batch could write rows under
/// the key of a VM deleted meanwhile (orphans).
const DELETE_LOCK: i64 = 0x4942_5f44_454c_4554; // "IB_DELET"

/// PostgreSQL implementation of [`Store`](crate::Store).
#[derive(Debug)]
pub struct PgStore {
    core: Core<Postgres>,
}

impl Connections for PgStore {
    type Db = Postgres;
    type Time = DateTime<Utc>;

    const NAME: &'static str = "postgres";
    /// One batch is ~6 round trips and leaves the server idle between them; 4 at once was the
    /// best of 1/2/4 in `bench/store` (2 cores).
    const CONCURRENT_BATCHES: usize = 4;

    fn to_db(time: DateTime<Utc>) -> DateTime<Utc> {
        time
    }

    fn from_db(time: DateTime<Utc>) -> Result<DateTime<Utc>> {
        Ok(time)
    }

    fn core(&self) -> &Core<Postgres> {
        &self.core
    }

    async fn begin(&self, kind: TxKind) -> Result<Tx<Self>> {
        let mut tx = self.core.writer.begin().await.map_err(ctx(kind.what()))?;
        let prelude = match kind {
            TxKind::Plain => None,
            // Telemetry batches do not wait for the WAL flush: a crash can lose the last few
            // hundred milliseconds of samples (never corrupt anything), the same promise as
            // SQLite's WAL with synchronous=NORMAL. Everything else keeps full durability.
            // The shared delete lock: see `DELETE_LOCK`.
            TxKind::Samples => Some(
                "SELECT set_config('synchronous_commit', 'off', true), \
                 pg_advisory_xact_lock_shared($1)",
            ),
            TxKind::Flush => Some("SELECT pg_advisory_xact_lock_shared($1)"),
            // Waits for the sample batches in flight.
            TxKind::DeleteVm => Some("SELECT pg_advisory_xact_lock($1)"),
        };
        if let Some(prelude) = prelude {
            sqlx::query(prelude)
                .bind(DELETE_LOCK)
                .execute(&mut *tx)
                .await
                .map_err(ctx(kind.what()))?;
        }
        Ok(tx)
    }
}

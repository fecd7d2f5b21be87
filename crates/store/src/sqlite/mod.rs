//! The embedded backend: one SQLite file in WAL mode.
//!
//! All writes go through a pool of exactly one connection (the single writer), so batches
//! never contend for SQLite's write lock with each other; reads use a small separate pool and,
//! thanks to WAL, never wait for the writer. Times are stored as INTEGER milliseconds since the
//! epoch, JSON as TEXT. What SQLite does its own way, by concern: `open` (pools and settings),
//! `queries` (its SQL dialect), `ingest` (multi-row `VALUES` in slices), `rollups` (grouped
//! on readers, in slices); everything else is the shared engine (`crate::engine`).

use chrono::{DateTime, Utc};
use sqlx::Sqlite;
use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqliteConnection};

use crate::Result;
use crate::common::{ctx, from_ms};
use crate::engine::{Connections, Core, Tx, TxKind};

mod ingest;
mod open;
mod queries;
mod rollups;

/// SQLite implementation of [`Store`](crate::Store).
#[derive(Debug)]
pub struct SqliteStore {
    core: Core<Sqlite>,
}

impl Connections for SqliteStore {
    type Db = Sqlite;
    type Time = i64;

    const NAME: &'static str = "sqlite";
    /// SQLite serialises writes anyway.
    const CONCURRENT_BATCHES: usize = 1;

    fn to_db(time: DateTime<Utc>) -> i64 {
        time.timestamp_millis()
    }

    fn from_db(time: i64) -> Result<DateTime<Utc>> {
        from_ms(time)
    }

    fn core(&self) -> &Core<Sqlite> {
        &self.core
    }

    /// Every write holds the one writer connection, which orders it against every other.
    async fn begin(&self, kind: TxKind) -> Result<Tx<Self>> {
        self.core.writer.begin().await.map_err(ctx(kind.what()))
    }
}

/// A statement being bound.
type SqliteQuery<'q> = Query<'q, Sqlite, SqliteArguments<'q>>;

/// How many rows of how many parameters one multi-row `VALUES` statement takes (SQLite
/// allows 32,766 parameters per statement).
#[derive(Debug, Clone, Copy)]
struct Slice {
    rows: usize,
    cols: usize,
}

/// Runs a statement with a multi-row `VALUES` list over `rows`, a [`Slice`] at a time:
/// `sql` puts the statement around the list `(?, …), (?, …)`, `bind` binds one row. Returns
/// the rows the statements changed.
async fn with_values<T: Sync>(
    conn: &mut SqliteConnection,
    what: &'static str,
    rows: &[T],
    slice: Slice,
    sql: impl Fn(&str) -> String + Send + Sync,
    bind: impl for<'q> Fn(SqliteQuery<'q>, &'q T) -> SqliteQuery<'q> + Send + Sync,
) -> Result<u64> {
    let placeholders = format!("({})", vec!["?"; slice.cols].join(", "));
    let mut changed = 0;
    for chunk in rows.chunks(slice.rows) {
        let statement = sql(&vec![placeholders.as_str(); chunk.len()].join(", "));
        let mut query = sqlx::query(&statement);
        for row in chunk {
            query = bind(query, row);
        }
        changed += query
            .execute(&mut *conn)
            .await
            .map_err(ctx(what))?
            .rows_affected();
    }
    Ok(changed)
}

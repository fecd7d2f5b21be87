//! Reading what the host stored, from outside the host process (its SQLite file, WAL mode, so
//! reads never block the host's writer).
//!
//! Open one view per host database and keep it for the whole test run. Two rules keep the
//! outside reader from hurting the host (`docs/e2e.md`, "Reading the host's database"):
//!
//! - the file is opened read-only with an explicit `mode=ro`, so the store never touches it
//!   outside SQLite (its writability probe is skipped; closing any descriptor of the file would
//!   drop every POSIX lock this process holds on it, SQLite's included);
//! - its connections never close while the host runs (no idle timeout, no maximum lifetime):
//!   a process whose last connection closes checkpoints and deletes the WAL if it finds no
//!   other lock on the file.

use std::path::Path;
use std::sync::Arc;

use infinibay_store::{MetricSample, Store, VmRecord};

use crate::{Error, Result};

/// A read handle on the host's database, with its own small runtime (the harness is
/// synchronous).
pub struct StoreView {
    runtime: tokio::runtime::Runtime,
    store: Arc<dyn Store>,
    /// A second, plain pool for the few questions the `Store` trait does not answer.
    raw: sqlx::SqlitePool,
}

fn store_error(what: &str) -> impl FnOnce(infinibay_store::StoreError) -> Error + '_ {
    move |e| Error::protocol(format!("store: {what}"), e.to_string())
}

fn sql_error(what: &str) -> impl FnOnce(sqlx::Error) -> Error + '_ {
    move |e| Error::protocol(format!("sqlite: {what}"), e.to_string())
}

impl StoreView {
    /// Open the SQLite database `infinibay serve` keeps in `data_dir` (`infinibay.db`),
    /// read-only. Keep the view as long as the host runs (see the module doc).
    pub fn open_sqlite(data_dir: &Path) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::io("starting a runtime for the store"))?;
        let path = data_dir.join("infinibay.db");
        let url = format!("sqlite://{}?mode=ro", path.display());
        let store = runtime
            .block_on(infinibay_store::open(&url))
            .map_err(store_error("open"))?;
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .read_only(true);
        let raw = runtime
            .block_on(
                sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .connect_with(options),
            )
            .map_err(sql_error("open"))?;
        Ok(Self {
            runtime,
            store,
            raw,
        })
    }

    /// The trait object, for anything not wrapped here (use [`StoreView::block_on`]).
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// Run a future on the view's runtime.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// One VM's record.
    pub fn vm(&self, id: &str) -> Result<Option<VmRecord>> {
        self.block_on(self.store.get_vm(id))
            .map_err(store_error("get_vm"))
    }

    /// Every VM.
    pub fn vms(&self) -> Result<Vec<VmRecord>> {
        self.block_on(self.store.list_vms())
            .map_err(store_error("list_vms"))
    }

    /// The newest sample of a VM.
    pub fn latest_sample(&self, id: &str) -> Result<Option<MetricSample>> {
        self.block_on(self.store.latest_sample(id))
            .map_err(store_error("latest_sample"))
    }

    /// Guest timestamps (ms) of every raw sample of a VM, in arrival order. Reads the SQLite
    /// schema of `crates/store/migrations/sqlite` (0003: samples keyed by `vms.key`) directly: the trait has no per-sample
    /// guest-time query, and duplicates can only be seen there.
    pub fn sample_guest_times(&self, id: &str) -> Result<Vec<Option<i64>>> {
        let rows: Vec<(Option<i64>,)> = self
            .block_on(
                sqlx::query_as(
                    "SELECT s.guest_time FROM metric_samples s JOIN vms v ON v.key = s.vm_key \
                     WHERE v.id = ? ORDER BY s.at, s.rowid",
                )
                .bind(id)
                .fetch_all(&self.raw),
            )
            .map_err(sql_error("metric_samples"))?;
        Ok(rows.into_iter().map(|(t,)| t).collect())
    }
}

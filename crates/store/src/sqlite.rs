//! The embedded backend: one SQLite file in WAL mode.
//!
//! All writes go through a pool of exactly one connection (the single writer), so batches
//! never contend for SQLite's write lock with each other; reads use a small separate pool and,
//! thanks to WAL, never wait for the writer. Times are stored as INTEGER milliseconds since the
//! epoch, JSON as TEXT.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};

use crate::common::{
    self, HOUR_MS, MINUTE_MS, MaintenanceOps, Plan, ctx, db_error, floor_to, from_ms, json_error,
};
use crate::hot::HotState;
use crate::protocol::message::{MetricsBody, VmIdentification};
use crate::{
    CommandLogEntry, Inventory, InventoryKind, MaintenanceReport, MetricPoint, MetricSample,
    MetricSeries, Resolution, Result, Retention, ServiceStateChange, Store, StoreError,
    VmErrorRecord, VmRecord, VmStatus, VmStatusUpdate,
};

/// Rows per multi-row INSERT of samples (13 bound parameters each; SQLite allows 32,766).
const SAMPLE_ROWS_PER_STATEMENT: usize = 500;
/// Rows per multi-row upsert of the latest sample (14 parameters each).
const LATEST_ROWS_PER_STATEMENT: usize = 200;
/// Rows per multi-row upsert of `vms.last_seen`.
const VM_ROWS_PER_STATEMENT: usize = 500;
/// VMs registered per transaction by `upsert_vms` (10,000 new VMs: a few short transactions,
/// never one per VM).
const VM_REGISTRATIONS_PER_TRANSACTION: usize = 5_000;
/// Raw rows deleted per statement by `delete_vm`.
const DELETE_VM_BATCH: i64 = 10_000;

/// SQLite implementation of [`Store`].
#[derive(Debug)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    retention: RwLock<Retention>,
    hot: HotState,
}

impl SqliteStore {
    /// Opens (creating when missing) the database a `sqlite:` URL names and migrates it.
    pub async fn open(url: &str, retention: Retention) -> Result<Self> {
        let base = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("invalid SQLite URL `{url}`: {e}")))?;
        let explicit_mode = url.contains("mode=");
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let base = if explicit_mode {
            base
        } else {
            base.create_if_missing(true)
        };
        let base = base
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(StdDuration::from_secs(10))
            .foreign_keys(true);
        let path = base.get_filename().to_path_buf();
        if !in_memory && !explicit_mode {
            probe_writable(&path)?;
        }
        let unavailable = |e: sqlx::Error| {
            StoreError::Unavailable(format!(
                "cannot open SQLite database {}: {e}",
                path.display()
            ))
        };
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(StdDuration::from_secs(60))
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(
                base.clone()
                    .pragma("cache_size", "-65536")
                    .pragma("wal_autocheckpoint", "8192")
                    // A read that overlaps a burst of writes keeps checkpoints from restarting
                    // the WAL, and the file keeps the size it grew to (seen: 1 GB at 25,000
                    // samples/s from 10,000 VMs). Give the disk back once the WAL restarts.
                    .pragma("journal_size_limit", "67108864"),
            )
            .await
            .map_err(unavailable)?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&writer)
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot migrate SQLite database {}: {e}",
                    path.display()
                ))
            })?;
        // An in-memory database exists only inside its one connection: readers share it.
        let reader = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(4)
                .acquire_timeout(StdDuration::from_secs(30))
                .connect_with(base.create_if_missing(false))
                .await
                .map_err(unavailable)?
        };
        Ok(Self {
            writer,
            reader,
            retention: RwLock::new(retention),
            hot: HotState::default(),
        })
    }

    fn retention(&self) -> Retention {
        self.retention.read().map(|r| *r).unwrap_or_default()
    }

    /// The newest sample this process holds may be newer than what the database has.
    fn overlay(&self, mut vm: VmRecord) -> Result<VmRecord> {
        if let Some(seen) = self.hot.last_seen(&vm.id) {
            vm.last_seen = Some(vm.last_seen.map_or(seen, |db| db.max(seen)));
        }
        Ok(vm)
    }
}

/// Gives "directory does not exist" / "permission denied" instead of SQLite's bare "unable to
/// open database file".
fn probe_writable(path: &Path) -> Result<()> {
    let parent: PathBuf = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(StoreError::Unavailable(format!(
            "cannot create SQLite database {}: directory {} does not exist",
            path.display(),
            parent.display()
        )));
    }
    // Only a missing file is created here. An existing one must never be opened outside
    // SQLite: closing any descriptor of it drops every POSIX lock this process holds on it,
    // including the SHARED lock of connections still open (another store on the same file, or
    // one still closing); another process's last close then deletes the WAL and -shm under us
    // (lost writes, SQLITE_IOERR_SHORT_READ). SQLite itself reports an unwritable existing file.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
    .map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot open SQLite database {} for writing: {e} (is {} writable by this user?)",
            path.display(),
            parent.display()
        ))
    })
}

/// `(?, ?, …), (?, ?, …)` for `rows` rows of `cols` parameters.
fn values_placeholders(rows: usize, cols: usize) -> String {
    let row = format!("({})", vec!["?"; cols].join(", "));
    vec![row; rows].join(", ")
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn opt_ms(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(ms)
}

fn opt_from_ms(v: Option<i64>) -> Result<Option<DateTime<Utc>>> {
    v.map(from_ms).transpose()
}

/// `last_seen` also counts the newest persisted sample (samples do not rewrite `vms`).
const VM_SELECT: &str = "SELECT v.id, v.name, v.owner_id, v.department, v.status, \
     MAX(COALESCE(v.last_seen, l.at), COALESCE(l.at, v.last_seen)) AS last_seen, v.agent, \
     v.created_at, v.key FROM vms v LEFT JOIN vm_latest_sample l ON l.vm_id = v.id";

fn vm_from_row(row: &SqliteRow) -> Result<VmRecord> {
    let agent: Option<String> = row.try_get("agent").map_err(ctx("read vm"))?;
    let agent = agent
        .map(|text| serde_json::from_str::<VmIdentification>(&text))
        .transpose()
        .map_err(|e| json_error("stored agent info", e))?;
    let status: String = row.try_get("status").map_err(ctx("read vm"))?;
    Ok(VmRecord {
        id: row.try_get("id").map_err(ctx("read vm"))?,
        name: row.try_get("name").map_err(ctx("read vm"))?,
        owner_id: row.try_get("owner_id").map_err(ctx("read vm"))?,
        department: row.try_get("department").map_err(ctx("read vm"))?,
        status: common::parse_status(&status)?,
        last_seen: opt_from_ms(row.try_get("last_seen").map_err(ctx("read vm"))?)?,
        agent,
        created_at: from_ms(row.try_get("created_at").map_err(ctx("read vm"))?)?,
    })
}

/// Registers VMs the batch mentions that are not known yet (a sample, inventory or error is
/// never dropped for want of a registration).
async fn ensure_vms(
    tx: &mut Transaction<'_, Sqlite>,
    vm_ids: &[&str],
    now: DateTime<Utc>,
) -> Result<()> {
    for chunk in vm_ids.chunks(VM_ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO vms (id, name, created_at) VALUES {} ON CONFLICT (id) DO NOTHING",
            values_placeholders(chunk.len(), 3)
        );
        let mut query = sqlx::query(&sql);
        for id in chunk {
            query = query.bind(*id).bind(*id).bind(ms(now));
        }
        query
            .execute(&mut **tx)
            .await
            .map_err(ctx("register vms"))?;
    }
    Ok(())
}

/// The keys of VMs registered (or found) in this transaction.
async fn fetch_keys(
    tx: &mut Transaction<'_, Sqlite>,
    vm_ids: &[&str],
) -> Result<HashMap<String, i64>> {
    let mut keys = HashMap::with_capacity(vm_ids.len());
    for chunk in vm_ids.chunks(VM_ROWS_PER_STATEMENT) {
        let sql = format!(
            "SELECT id, key FROM vms WHERE id IN ({})",
            vec!["?"; chunk.len()].join(", ")
        );
        let mut query = sqlx::query_as::<_, (String, i64)>(&sql);
        for id in chunk {
            query = query.bind(*id);
        }
        keys.extend(query.fetch_all(&mut **tx).await.map_err(ctx("vm keys"))?);
    }
    Ok(keys)
}

/// `vm_key = <key of the VM with id ?1>`, for queries of one VM's metrics.
const KEY_OF_VM: &str = "vm_key = (SELECT key FROM vms WHERE id = ?1)";

/// Columns of a metric point, as every metrics query selects them.
fn point_from_row(row: &SqliteRow) -> Result<MetricPoint> {
    let get_f = |name: &str| -> Result<f64> { row.try_get(name).map_err(ctx("read metrics")) };
    Ok(MetricPoint {
        at: from_ms(row.try_get("at").map_err(ctx("read metrics"))?)?,
        cpu_avg: get_f("cpu_avg")?,
        cpu_min: get_f("cpu_min")?,
        cpu_max: get_f("cpu_max")?,
        mem_used_kb_avg: get_f("mem_used_kb_avg")?,
        mem_total_kb: row.try_get("mem_total_kb").map_err(ctx("read metrics"))?,
        disk_read_bps: get_f("disk_read_bps")?,
        disk_write_bps: get_f("disk_write_bps")?,
        net_rx_bps: get_f("net_rx_bps")?,
        net_tx_bps: get_f("net_tx_bps")?,
        samples: row.try_get("samples").map_err(ctx("read metrics"))?,
    })
}

/// Upserts the newest sample (with detail) of each VM; never replaces a newer stored one.
async fn write_latest(tx: &mut Transaction<'_, Sqlite>, samples: &[&MetricSample]) -> Result<()> {
    for chunk in samples.chunks(LATEST_ROWS_PER_STATEMENT) {
        let details: Vec<String> = chunk
            .iter()
            .map(|s| serde_json::to_string(&s.detail))
            .collect::<Result<_, _>>()
            .map_err(|e| json_error("sample detail", e))?;
        let sql = format!(
            "INSERT INTO vm_latest_sample (vm_id, at, guest_time, cpu, mem_used_kb, mem_total_kb, \
             swap_used_kb, disk_used_percent, disk_read_bps, disk_write_bps, net_rx_bps, \
             net_tx_bps, load1, detail) VALUES {} \
             ON CONFLICT (vm_id) DO UPDATE SET at = excluded.at, guest_time = excluded.guest_time, \
             cpu = excluded.cpu, mem_used_kb = excluded.mem_used_kb, \
             mem_total_kb = excluded.mem_total_kb, swap_used_kb = excluded.swap_used_kb, \
             disk_used_percent = excluded.disk_used_percent, \
             disk_read_bps = excluded.disk_read_bps, disk_write_bps = excluded.disk_write_bps, \
             net_rx_bps = excluded.net_rx_bps, net_tx_bps = excluded.net_tx_bps, \
             load1 = excluded.load1, detail = excluded.detail \
             WHERE excluded.at >= vm_latest_sample.at",
            values_placeholders(chunk.len(), 14)
        );
        let mut query = sqlx::query(&sql);
        for (s, detail) in chunk.iter().zip(&details) {
            query = query
                .bind(s.vm_id.as_str())
                .bind(ms(s.received_at))
                .bind(opt_ms(s.guest_time))
                .bind(common::finite(s.cpu_percent))
                .bind(s.mem_used_kb)
                .bind(s.mem_total_kb)
                .bind(s.swap_used_kb)
                .bind(common::finite_opt(s.disk_used_percent))
                .bind(common::finite(s.disk_read_bps))
                .bind(common::finite(s.disk_write_bps))
                .bind(common::finite(s.net_rx_bps))
                .bind(common::finite(s.net_tx_bps))
                .bind(common::finite(s.load1))
                .bind(detail.as_str());
        }
        query
            .execute(&mut **tx)
            .await
            .map_err(ctx("write latest samples"))?;
    }
    Ok(())
}

/// One rollup bucket: vm_key, bucket, samples, cpu avg/min/max, mem_used avg, mem_total,
/// disk read/write, net rx/tx.
type RollupRow = (i64, i64, i64, f64, f64, f64, f64, i64, f64, f64, f64, f64);

/// How many read transactions one bucket's grouping is split into.
const ROLLUP_SLICES: i64 = 6;

/// [`SliceRow`]s of the raw samples in `?1 <= at < ?2`.
const MINUTE_PARTIAL_SUMS: &str = "SELECT vm_key, (at / 60000) * 60000, COUNT(*), SUM(cpu), \
     MIN(cpu), MAX(cpu), CAST(SUM(mem_used_kb) AS REAL), MAX(mem_total_kb), SUM(disk_read_bps), \
     SUM(disk_write_bps), SUM(net_rx_bps), SUM(net_tx_bps) \
     FROM metric_samples WHERE at >= ?1 AND at < ?2 GROUP BY vm_key, at / 60000";

/// [`SliceRow`]s of the minute rollups in `?1 <= bucket < ?2`.
const HOUR_PARTIAL_SUMS: &str = "SELECT vm_key, (bucket / 3600000) * 3600000, SUM(samples), \
     SUM(cpu_avg * samples), MIN(cpu_min), MAX(cpu_max), SUM(mem_used_kb_avg * samples), \
     MAX(mem_total_kb), SUM(disk_read_bps * samples), SUM(disk_write_bps * samples), \
     SUM(net_rx_bps * samples), SUM(net_tx_bps * samples) \
     FROM metric_minute WHERE bucket >= ?1 AND bucket < ?2 GROUP BY vm_key, bucket / 3600000";

/// One VM's partial sums over a slice of a bucket, as the slice queries select them: vm_key,
/// bucket, rows (samples), cpu sum/min/max, mem_used sum, mem_total max, disk read/write and
/// net rx/tx sums. Sums, not averages, so that slices add up as one grouping would.
type SliceRow = (i64, i64, i64, f64, f64, f64, f64, i64, f64, f64, f64, f64);

#[derive(Debug, Clone, Copy)]
struct BucketSums {
    samples: i64,
    cpu: f64,
    cpu_min: f64,
    cpu_max: f64,
    mem_used: f64,
    mem_total_max: i64,
    disk_read: f64,
    disk_write: f64,
    net_rx: f64,
    net_tx: f64,
}

impl BucketSums {
    fn of(row: &SliceRow) -> Self {
        Self {
            samples: row.2,
            cpu: row.3,
            cpu_min: row.4,
            cpu_max: row.5,
            mem_used: row.6,
            mem_total_max: row.7,
            disk_read: row.8,
            disk_write: row.9,
            net_rx: row.10,
            net_tx: row.11,
        }
    }

    fn add(&mut self, other: Self) {
        self.samples += other.samples;
        self.cpu += other.cpu;
        self.cpu_min = self.cpu_min.min(other.cpu_min);
        self.cpu_max = self.cpu_max.max(other.cpu_max);
        self.mem_used += other.mem_used;
        self.mem_total_max = self.mem_total_max.max(other.mem_total_max);
        self.disk_read += other.disk_read;
        self.disk_write += other.disk_write;
        self.net_rx += other.net_rx;
        self.net_tx += other.net_tx;
    }

    fn into_row(self, vm_key: i64, bucket: i64) -> RollupRow {
        let n = self.samples.max(1) as f64;
        (
            vm_key,
            bucket,
            self.samples,
            self.cpu / n,
            self.cpu_min,
            self.cpu_max,
            self.mem_used / n,
            self.mem_total_max,
            self.disk_read / n,
            self.disk_write / n,
            self.net_rx / n,
            self.net_tx / n,
        )
    }
}

/// Runs `partial` (grouped by VM and bucket over `?1 <= time < ?2`) over [`ROLLUP_SLICES`]
/// slices of `[start, end)`, each in its own read, and merges the slices per VM and bucket.
async fn group_in_slices(
    reader: &SqlitePool,
    partial: &str,
    start: i64,
    end: i64,
) -> Result<HashMap<(i64, i64), BucketSums>> {
    let width = ((end - start) / ROLLUP_SLICES).max(1);
    let mut merged: HashMap<(i64, i64), BucketSums> = HashMap::new();
    let mut from = start;
    while from < end {
        let to = if end - from < 2 * width {
            end
        } else {
            from + width
        };
        let rows: Vec<SliceRow> = sqlx::query_as(partial)
            .bind(from)
            .bind(to)
            .fetch_all(reader)
            .await
            .map_err(ctx("maintain: group"))?;
        for row in &rows {
            let sums = BucketSums::of(row);
            merged
                .entry((row.0, row.1))
                .and_modify(|merged| merged.add(sums))
                .or_insert(sums);
        }
        from = to;
    }
    Ok(merged)
}

/// Upserts rollup rows grouped outside the writer (only for VMs that still exist).
async fn write_buckets(
    tx: &mut Transaction<'_, Sqlite>,
    table: &str,
    buckets: &[RollupRow],
) -> Result<u64> {
    let mut written = 0;
    for chunk in buckets.chunks(500) {
        let sql = format!(
            "INSERT INTO {table} (vm_key, bucket, samples, cpu_avg, cpu_min, cpu_max, \
             mem_used_kb_avg, mem_total_kb, disk_read_bps, disk_write_bps, net_rx_bps, net_tx_bps) \
             SELECT * FROM (VALUES {}) WHERE column1 IN (SELECT key FROM vms) \
             ON CONFLICT (vm_key, bucket) DO UPDATE SET samples = excluded.samples, \
             cpu_avg = excluded.cpu_avg, cpu_min = excluded.cpu_min, cpu_max = excluded.cpu_max, \
             mem_used_kb_avg = excluded.mem_used_kb_avg, mem_total_kb = excluded.mem_total_kb, \
             disk_read_bps = excluded.disk_read_bps, disk_write_bps = excluded.disk_write_bps, \
             net_rx_bps = excluded.net_rx_bps, net_tx_bps = excluded.net_tx_bps",
            values_placeholders(chunk.len(), 12)
        );
        let mut query = sqlx::query(&sql);
        for b in chunk {
            query = query
                .bind(b.0)
                .bind(b.1)
                .bind(b.2)
                .bind(b.3)
                .bind(b.4)
                .bind(b.5)
                .bind(b.6)
                .bind(b.7)
                .bind(b.8)
                .bind(b.9)
                .bind(b.10)
                .bind(b.11);
        }
        written += query
            .execute(&mut **tx)
            .await
            .map_err(ctx("maintain: write buckets"))?
            .rows_affected();
    }
    Ok(written)
}

impl MaintenanceOps for SqliteStore {
    async fn watermark(&self, tier: Resolution) -> Result<Option<i64>> {
        sqlx::query_scalar("SELECT done_until FROM rollup_state WHERE tier = ?1")
            .bind(common::tier_name(tier))
            .fetch_one(&self.writer)
            .await
            .map_err(ctx("maintain: read watermark"))
    }

    async fn first_source_row(&self, tier: Resolution, from: i64) -> Result<Option<i64>> {
        let sql = if tier == Resolution::Minute {
            "SELECT MIN(at) FROM metric_samples WHERE at >= ?1"
        } else {
            "SELECT MIN(bucket) FROM metric_minute WHERE bucket >= ?1"
        };
        sqlx::query_scalar(sql)
            .bind(from)
            .fetch_one(&self.writer)
            .await
            .map_err(ctx("maintain: find next rows"))
    }

    async fn roll_range(&self, tier: Resolution, start: i64, end: i64) -> Result<u64> {
        let sql = match tier {
            Resolution::Minute => {
                "INSERT INTO metric_minute (vm_key, bucket, samples, cpu_avg, cpu_min, cpu_max, \
                 mem_used_kb_avg, mem_total_kb, disk_read_bps, disk_write_bps, net_rx_bps, net_tx_bps) \
                 SELECT vm_key, (at / 60000) * 60000, COUNT(*), AVG(cpu), MIN(cpu), MAX(cpu), \
                 CAST(AVG(mem_used_kb) AS REAL), MAX(mem_total_kb), AVG(disk_read_bps), \
                 AVG(disk_write_bps), AVG(net_rx_bps), AVG(net_tx_bps) \
                 FROM metric_samples WHERE at >= ?1 AND at < ?2 GROUP BY vm_key, at / 60000 \
                 ON CONFLICT (vm_key, bucket) DO UPDATE SET samples = excluded.samples, \
                 cpu_avg = excluded.cpu_avg, cpu_min = excluded.cpu_min, cpu_max = excluded.cpu_max, \
                 mem_used_kb_avg = excluded.mem_used_kb_avg, mem_total_kb = excluded.mem_total_kb, \
                 disk_read_bps = excluded.disk_read_bps, disk_write_bps = excluded.disk_write_bps, \
                 net_rx_bps = excluded.net_rx_bps, net_tx_bps = excluded.net_tx_bps"
            }
            _ => {
                "INSERT INTO metric_hour (vm_key, bucket, samples, cpu_avg, cpu_min, cpu_max, \
                 mem_used_kb_avg, mem_total_kb, disk_read_bps, disk_write_bps, net_rx_bps, net_tx_bps) \
                 SELECT vm_key, (bucket / 3600000) * 3600000, SUM(samples), \
                 SUM(cpu_avg * samples) / SUM(samples), MIN(cpu_min), MAX(cpu_max), \
                 SUM(mem_used_kb_avg * samples) / SUM(samples), MAX(mem_total_kb), \
                 SUM(disk_read_bps * samples) / SUM(samples), SUM(disk_write_bps * samples) / SUM(samples), \
                 SUM(net_rx_bps * samples) / SUM(samples), SUM(net_tx_bps * samples) / SUM(samples) \
                 FROM metric_minute WHERE bucket >= ?1 AND bucket < ?2 GROUP BY vm_key, bucket / 3600000 \
                 ON CONFLICT (vm_key, bucket) DO UPDATE SET samples = excluded.samples, \
                 cpu_avg = excluded.cpu_avg, cpu_min = excluded.cpu_min, cpu_max = excluded.cpu_max, \
                 mem_used_kb_avg = excluded.mem_used_kb_avg, mem_total_kb = excluded.mem_total_kb, \
                 disk_read_bps = excluded.disk_read_bps, disk_write_bps = excluded.disk_write_bps, \
                 net_rx_bps = excluded.net_rx_bps, net_tx_bps = excluded.net_tx_bps"
            }
        };
        let (partial, source_rows, table) = match tier {
            Resolution::Minute => (
                MINUTE_PARTIAL_SUMS,
                "SELECT COUNT(*) FROM metric_samples WHERE at >= ?1 AND at < ?2",
                "metric_minute",
            ),
            _ => (
                HOUR_PARTIAL_SUMS,
                "SELECT COALESCE(SUM(samples), 0) FROM metric_minute WHERE bucket >= ?1 AND bucket < ?2",
                "metric_hour",
            ),
        };
        // Grouping a minute of 10,000 VMs' samples takes seconds; on the writer connection that
        // would hold every sample batch up (and make the host coalesce). So the grouping runs
        // on a reader, and in slices: each slice is its own short read transaction. One read
        // over the whole minute held its WAL snapshot for 50 s on a saturated host, and no
        // checkpoint could restart the WAL meanwhile (it grew to 3.5 GB). Slices also bound
        // the sort each one needs. Only the merged bucket rows go through the writer.
        let buckets = group_in_slices(&self.reader, partial, start, end)
            .await?
            .into_iter()
            .map(|((vm_key, bucket), sums)| sums.into_row(vm_key, bucket))
            .collect::<Vec<RollupRow>>();
        let grouped_rows: i64 = buckets.iter().map(|b| b.2).sum();
        let mut tx = self.writer.begin().await.map_err(ctx("maintain: begin"))?;
        // A batch committed since the snapshot (a late sample of this range, or a deleted VM)
        // changes the count: then group again, inside the writer, as the one source of truth.
        let source_now: i64 = sqlx::query_scalar(source_rows)
            .bind(start)
            .bind(end)
            .fetch_one(&mut *tx)
            .await
            .map_err(ctx("maintain: count"))?;
        let written = if source_now == grouped_rows {
            write_buckets(&mut tx, table, &buckets).await?
        } else {
            sqlx::query(sql)
                .bind(start)
                .bind(end)
                .execute(&mut *tx)
                .await
                .map_err(ctx("maintain: roll up"))?
                .rows_affected()
        };
        sqlx::query("UPDATE rollup_state SET done_until = ?1 WHERE tier = ?2")
            .bind(end)
            .bind(common::tier_name(tier))
            .execute(&mut *tx)
            .await
            .map_err(ctx("maintain: watermark"))?;
        if tier == Resolution::Minute {
            // Recomputed minutes change their hours.
            sqlx::query(
                "UPDATE rollup_state SET done_until = ?1 WHERE tier = 'hour' AND done_until > ?1",
            )
            .bind(floor_to(start, HOUR_MS))
            .execute(&mut *tx)
            .await
            .map_err(ctx("maintain: hour watermark"))?;
        }
        tx.commit().await.map_err(ctx("maintain: commit"))?;
        Ok(written)
    }

    async fn advance_watermark(&self, tier: Resolution, end: i64) -> Result<()> {
        sqlx::query(
            "UPDATE rollup_state SET done_until = ?1 \
             WHERE tier = ?2 AND (done_until IS NULL OR done_until < ?1)",
        )
        .bind(end)
        .bind(common::tier_name(tier))
        .execute(&self.writer)
        .await
        .map_err(ctx("maintain: watermark"))?;
        Ok(())
    }

    async fn prune_batch(
        &self,
        table: &'static str,
        column: &'static str,
        cutoff: i64,
        batch: i64,
    ) -> Result<u64> {
        let sql = format!(
            "DELETE FROM {table} WHERE rowid IN \
             (SELECT rowid FROM {table} WHERE {column} < ?1 LIMIT ?2)"
        );
        Ok(sqlx::query(&sql)
            .bind(cutoff)
            .bind(batch)
            .execute(&self.writer)
            .await
            .map_err(ctx("maintain: prune"))?
            .rows_affected())
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn users(&self) -> &dyn crate::UserStore {
        self
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(ctx("ping"))?;
        Ok(())
    }

    async fn upsert_vm(&self, id: &str, now: DateTime<Utc>) -> Result<VmRecord> {
        sqlx::query(
            "INSERT INTO vms (id, name, created_at) VALUES (?1, ?1, ?2) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(ms(now))
        .execute(&self.writer)
        .await
        .map_err(ctx("upsert_vm"))?;
        let row = sqlx::query(&format!("{VM_SELECT} WHERE v.id = ?1"))
            .bind(id)
            .fetch_one(&self.writer)
            .await
            .map_err(ctx("upsert_vm: read back"))?;
        let key: i64 = row.try_get("key").map_err(ctx("upsert_vm: key"))?;
        self.hot.know(id, key);
        self.overlay(vm_from_row(&row)?)
    }

    async fn upsert_vms(&self, vms: &[(String, DateTime<Utc>)]) -> Result<()> {
        for chunk in vms.chunks(VM_REGISTRATIONS_PER_TRANSACTION) {
            let mut tx = self
                .writer
                .begin()
                .await
                .map_err(ctx("upsert_vms: begin"))?;
            for rows in chunk.chunks(VM_ROWS_PER_STATEMENT) {
                let sql = format!(
                    "INSERT INTO vms (id, name, created_at) VALUES {} ON CONFLICT (id) DO NOTHING",
                    values_placeholders(rows.len(), 3)
                );
                let mut query = sqlx::query(&sql);
                for (id, at) in rows {
                    query = query.bind(id.as_str()).bind(id.as_str()).bind(ms(*at));
                }
                query.execute(&mut *tx).await.map_err(ctx("upsert_vms"))?;
            }
            let ids: Vec<&str> = chunk.iter().map(|(id, _)| id.as_str()).collect();
            let keys = fetch_keys(&mut tx, &ids).await?;
            tx.commit().await.map_err(ctx("upsert_vms: commit"))?;
            for (id, key) in keys {
                self.hot.know(&id, key);
            }
        }
        Ok(())
    }

    async fn set_vm_statuses(&self, updates: &[VmStatusUpdate]) -> Result<u64> {
        let mut updated = 0;
        let mut tx = self
            .writer
            .begin()
            .await
            .map_err(ctx("set_vm_statuses: begin"))?;
        for rows in updates.chunks(VM_ROWS_PER_STATEMENT) {
            let sql = format!(
                "UPDATE vms SET status = u.column2, \
                 last_seen = CASE WHEN u.column3 IS NULL THEN vms.last_seen \
                                  ELSE MAX(COALESCE(vms.last_seen, u.column3), u.column3) END \
                 FROM (VALUES {}) AS u WHERE vms.id = u.column1",
                values_placeholders(rows.len(), 3)
            );
            let mut query = sqlx::query(&sql);
            for u in rows {
                query = query
                    .bind(u.vm_id.as_str())
                    .bind(u.status.as_str())
                    .bind(opt_ms(u.last_seen));
            }
            updated += query
                .execute(&mut *tx)
                .await
                .map_err(ctx("set_vm_statuses"))?
                .rows_affected();
        }
        tx.commit().await.map_err(ctx("set_vm_statuses: commit"))?;
        Ok(updated)
    }

    async fn set_vm_agents(&self, agents: &[(String, VmIdentification)]) -> Result<u64> {
        let texts: Vec<String> = agents
            .iter()
            .map(|(_, agent)| serde_json::to_string(agent))
            .collect::<Result<_, _>>()
            .map_err(|e| json_error("agent info", e))?;
        let mut updated = 0;
        let mut tx = self
            .writer
            .begin()
            .await
            .map_err(ctx("set_vm_agents: begin"))?;
        for (rows, texts) in agents
            .chunks(VM_ROWS_PER_STATEMENT)
            .zip(texts.chunks(VM_ROWS_PER_STATEMENT))
        {
            let sql = format!(
                "UPDATE vms SET agent = u.column2, \
                 name = CASE WHEN vms.name_source <> 'user' AND u.column3 <> '' \
                             THEN u.column3 ELSE vms.name END, \
                 name_source = CASE WHEN vms.name_source <> 'user' AND u.column3 <> '' \
                                    THEN 'agent' ELSE vms.name_source END \
                 FROM (VALUES {}) AS u WHERE vms.id = u.column1",
                values_placeholders(rows.len(), 3)
            );
            let mut query = sqlx::query(&sql);
            for ((id, agent), text) in rows.iter().zip(texts) {
                query = query
                    .bind(id.as_str())
                    .bind(text.as_str())
                    .bind(agent.hostname.as_str());
            }
            updated += query
                .execute(&mut *tx)
                .await
                .map_err(ctx("set_vm_agents"))?
                .rows_affected();
        }
        tx.commit().await.map_err(ctx("set_vm_agents: commit"))?;
        Ok(updated)
    }

    async fn set_vm_status(
        &self,
        id: &str,
        status: VmStatus,
        last_seen: Option<DateTime<Utc>>,
    ) -> Result<()> {
        let updated = sqlx::query(
            "UPDATE vms SET status = ?2, \
             last_seen = CASE WHEN ?3 IS NULL THEN last_seen \
                              ELSE MAX(COALESCE(last_seen, ?3), ?3) END \
             WHERE id = ?1",
        )
        .bind(id)
        .bind(status.as_str())
        .bind(opt_ms(last_seen))
        .execute(&self.writer)
        .await
        .map_err(ctx("set_vm_status"))?
        .rows_affected();
        if updated == 0 {
            return Err(StoreError::NotFound(format!("vm {id}")));
        }
        Ok(())
    }

    async fn set_vm_agent(&self, id: &str, agent: &VmIdentification) -> Result<()> {
        let text = serde_json::to_string(agent).map_err(|e| json_error("agent info", e))?;
        let updated = sqlx::query(
            "UPDATE vms SET agent = ?2, \
             name = CASE WHEN name_source <> 'user' AND ?3 <> '' THEN ?3 ELSE name END, \
             name_source = CASE WHEN name_source <> 'user' AND ?3 <> '' THEN 'agent' ELSE name_source END \
             WHERE id = ?1",
        )
        .bind(id)
        .bind(text)
        .bind(agent.hostname.as_str())
        .execute(&self.writer)
        .await
        .map_err(ctx("set_vm_agent"))?
        .rows_affected();
        if updated == 0 {
            return Err(StoreError::NotFound(format!("vm {id}")));
        }
        Ok(())
    }

    async fn set_vm_owner(
        &self,
        id: &str,
        owner_id: Option<i64>,
        department: Option<&str>,
    ) -> Result<()> {
        let updated = sqlx::query("UPDATE vms SET owner_id = ?2, department = ?3 WHERE id = ?1")
            .bind(id)
            .bind(owner_id)
            .bind(department)
            .execute(&self.writer)
            .await
            .map_err(ctx("set_vm_owner"))?
            .rows_affected();
        if updated == 0 {
            return Err(StoreError::NotFound(format!("vm {id}")));
        }
        Ok(())
    }

    async fn get_vm(&self, id: &str) -> Result<Option<VmRecord>> {
        sqlx::query(&format!("{VM_SELECT} WHERE v.id = ?1"))
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(ctx("get_vm"))?
            .as_ref()
            .map(|row| self.overlay(vm_from_row(row)?))
            .transpose()
    }

    async fn list_vms(&self) -> Result<Vec<VmRecord>> {
        sqlx::query(&format!("{VM_SELECT} ORDER BY v.id"))
            .fetch_all(&self.reader)
            .await
            .map_err(ctx("list_vms"))?
            .iter()
            .map(|row| self.overlay(vm_from_row(row)?))
            .collect()
    }

    async fn delete_vm(&self, id: &str) -> Result<()> {
        self.hot.forget(id);
        // Raw samples can be many: delete them in slices so the writer is never held long.
        loop {
            let deleted = sqlx::query(
                "DELETE FROM metric_samples WHERE rowid IN \
                 (SELECT rowid FROM metric_samples WHERE vm_key = (SELECT key FROM vms WHERE id = ?1) LIMIT ?2)",
            )
            .bind(id)
            .bind(DELETE_VM_BATCH)
            .execute(&self.writer)
            .await
            .map_err(ctx("delete_vm: samples"))?
            .rows_affected();
            if deleted < DELETE_VM_BATCH as u64 {
                break;
            }
        }
        let mut tx = self.writer.begin().await.map_err(ctx("delete_vm: begin"))?;
        for table in common::VM_KEY_TABLES {
            sqlx::query(&format!("DELETE FROM {table} WHERE {KEY_OF_VM}"))
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(ctx("delete_vm"))?;
        }
        for table in common::VM_ID_TABLES {
            sqlx::query(&format!("DELETE FROM {table} WHERE vm_id = ?1"))
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(ctx("delete_vm"))?;
        }
        let deleted = sqlx::query("DELETE FROM vms WHERE id = ?1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(ctx("delete_vm"))?
            .rows_affected();
        // A batch since the first `forget` may have cached the VM's key again. Forgotten before
        // the commit, while this transaction holds the only write connection: the next batch
        // plans after it and registers the VM anew rather than using the dead key.
        self.hot.forget(id);
        tx.commit().await.map_err(ctx("delete_vm: commit"))?;
        if deleted == 0 {
            return Err(StoreError::NotFound(format!("vm {id}")));
        }
        Ok(())
    }

    async fn insert_samples(&self, samples: &[MetricSample]) -> Result<()> {
        if samples.is_empty() {
            return Ok(());
        }
        if samples.iter().any(common::has_non_finite) {
            tracing::warn!(target: "infinibay::store", "non-finite metric values stored as 0");
        }
        let newest = common::newest_per_vm(samples);
        let oldest = samples.iter().map(|s| ms(s.received_at)).min().unwrap_or(0);
        let mut tx = self
            .writer
            .begin()
            .await
            .map_err(ctx("insert_samples: begin"))?;
        // Planned while holding the only write connection: a `delete_vm` (which forgets the
        // VM before its commit) is either wholly before this batch, so the VM's key is not used
        // any more, or wholly after it, and deletes this batch's rows too. No orphan rows.
        let plan = self.hot.plan(samples, &newest);
        let unknown: Vec<&str> = plan
            .unknown
            .iter()
            .map(|&i| samples[i].vm_id.as_str())
            .collect();
        let persist: Vec<&MetricSample> = plan.persist.iter().map(|&i| &samples[i]).collect();
        let mut learned = HashMap::new();
        if !unknown.is_empty() {
            ensure_vms(&mut tx, &unknown, samples[plan.unknown[0]].received_at).await?;
            learned = fetch_keys(&mut tx, &unknown).await?;
        }
        let keys = common::sample_keys(samples, &plan.keys, &learned)?;
        for (chunk, chunk_keys) in samples
            .chunks(SAMPLE_ROWS_PER_STATEMENT)
            .zip(keys.chunks(SAMPLE_ROWS_PER_STATEMENT))
        {
            let sql = format!(
                "INSERT INTO metric_samples (vm_key, at, guest_time, cpu, mem_used_kb, mem_total_kb, \
                 swap_used_kb, disk_used_percent, disk_read_bps, disk_write_bps, net_rx_bps, \
                 net_tx_bps, load1) VALUES {}",
                values_placeholders(chunk.len(), 13)
            );
            let mut query = sqlx::query(&sql);
            for (s, key) in chunk.iter().zip(chunk_keys) {
                query = query
                    .bind(*key)
                    .bind(ms(s.received_at))
                    .bind(opt_ms(s.guest_time))
                    .bind(common::finite(s.cpu_percent))
                    .bind(s.mem_used_kb)
                    .bind(s.mem_total_kb)
                    .bind(s.swap_used_kb)
                    .bind(common::finite_opt(s.disk_used_percent))
                    .bind(common::finite(s.disk_read_bps))
                    .bind(common::finite(s.disk_write_bps))
                    .bind(common::finite(s.net_rx_bps))
                    .bind(common::finite(s.net_tx_bps))
                    .bind(common::finite(s.load1));
            }
            query
                .execute(&mut *tx)
                .await
                .map_err(ctx("insert_samples"))?;
        }
        write_latest(&mut tx, &persist).await?;
        sqlx::query(
            "UPDATE rollup_state SET done_until = ?1 WHERE tier = 'minute' AND done_until > ?1",
        )
        .bind(floor_to(oldest, MINUTE_MS))
        .execute(&mut *tx)
        .await
        .map_err(ctx("insert_samples: watermark"))?;
        // Recorded before the commit, still holding the connection, so that no `delete_vm`
        // can run between the commit and this and have its VM cached again.
        let learned_ids: Vec<String> = learned.keys().cloned().collect();
        self.hot.committed(samples, &newest, &plan.persist, learned);
        if let Err(e) = tx.commit().await {
            self.hot.forget_all(&learned_ids);
            return Err(db_error("insert_samples: commit", e));
        }
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        let mut tx = self.writer.begin().await.map_err(ctx("flush: begin"))?;
        let pending = self.hot.pending();
        if pending.is_empty() {
            return Ok(());
        }
        let refs: Vec<&MetricSample> = pending.iter().collect();
        write_latest(&mut tx, &refs).await?;
        self.hot.flushed(&pending);
        tx.commit().await.map_err(ctx("flush: commit"))?;
        Ok(())
    }

    async fn replace_inventories(
        &self,
        inventories: &[Inventory],
    ) -> Result<Vec<ServiceStateChange>> {
        let mut changes = Vec::new();
        if inventories.is_empty() {
            return Ok(changes);
        }
        let mut texts = Vec::with_capacity(inventories.len());
        for inv in inventories {
            common::require_array(&inv.items, &inv.vm_id)?;
            texts.push(serde_json::to_string(&inv.items).map_err(|e| json_error("inventory", e))?);
        }
        let mut vm_ids: Vec<&str> = inventories.iter().map(|i| i.vm_id.as_str()).collect();
        vm_ids.sort_unstable();
        vm_ids.dedup();
        let mut tx = self
            .writer
            .begin()
            .await
            .map_err(ctx("replace_inventories: begin"))?;
        ensure_vms(&mut tx, &vm_ids, inventories[0].received_at).await?;
        for (inv, text) in inventories.iter().zip(&texts) {
            let kind = common::kind_str(inv.kind);
            let hash = common::fingerprint(text);
            let stored: Option<(i64, Option<String>)> = sqlx::query_as(
                "SELECT items_hash, CASE WHEN kind = 'services' THEN items END \
                 FROM vm_inventory WHERE vm_id = ?1 AND kind = ?2",
            )
            .bind(inv.vm_id.as_str())
            .bind(kind)
            .fetch_optional(&mut *tx)
            .await
            .map_err(ctx("replace_inventories: read"))?;
            if stored.as_ref().is_some_and(|(h, _)| *h == hash) {
                continue;
            }
            if inv.kind == InventoryKind::Services {
                let previous = stored
                    .and_then(|(_, items)| items)
                    .map(|t| serde_json::from_str::<serde_json::Value>(&t))
                    .transpose()
                    .map_err(|e| json_error("stored services", e))?;
                let diff = common::diff_services(
                    &inv.vm_id,
                    previous.as_ref(),
                    &inv.items,
                    inv.received_at,
                );
                for change in &diff {
                    sqlx::query(
                        "INSERT INTO service_history (vm_id, service, from_state, to_state, at) \
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )
                    .bind(change.vm_id.as_str())
                    .bind(change.service.as_str())
                    .bind(change.from_state.as_deref())
                    .bind(change.to_state.as_deref())
                    .bind(ms(change.at))
                    .execute(&mut *tx)
                    .await
                    .map_err(ctx("replace_inventories: history"))?;
                }
                changes.extend(diff);
            }
            sqlx::query(
                "INSERT INTO vm_inventory (vm_id, kind, received_at, items_hash, items) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (vm_id, kind) DO UPDATE SET \
                 received_at = excluded.received_at, items_hash = excluded.items_hash, \
                 items = excluded.items",
            )
            .bind(inv.vm_id.as_str())
            .bind(kind)
            .bind(ms(inv.received_at))
            .bind(hash)
            .bind(text.as_str())
            .execute(&mut *tx)
            .await
            .map_err(ctx("replace_inventories: write"))?;
        }
        tx.commit()
            .await
            .map_err(ctx("replace_inventories: commit"))?;
        Ok(changes)
    }

    async fn insert_vm_errors(&self, errors: &[VmErrorRecord]) -> Result<()> {
        if errors.is_empty() {
            return Ok(());
        }
        let mut vm_ids: Vec<&str> = errors.iter().map(|e| e.vm_id.as_str()).collect();
        vm_ids.sort_unstable();
        vm_ids.dedup();
        let mut tx = self
            .writer
            .begin()
            .await
            .map_err(ctx("insert_vm_errors: begin"))?;
        ensure_vms(&mut tx, &vm_ids, errors[0].at).await?;
        for chunk in errors.chunks(500) {
            let sql = format!(
                "INSERT INTO vm_errors (vm_id, at, code, message, details) VALUES {}",
                values_placeholders(chunk.len(), 5)
            );
            let mut query = sqlx::query(&sql);
            for e in chunk {
                query = query
                    .bind(e.vm_id.as_str())
                    .bind(ms(e.at))
                    .bind(e.code.as_deref())
                    .bind(e.message.as_str())
                    .bind(e.details.as_deref());
            }
            query
                .execute(&mut *tx)
                .await
                .map_err(ctx("insert_vm_errors"))?;
        }
        tx.commit().await.map_err(ctx("insert_vm_errors: commit"))?;
        Ok(())
    }

    async fn log_command(&self, entry: &CommandLogEntry) -> Result<()> {
        let command =
            serde_json::to_string(&entry.command).map_err(|e| json_error("command", e))?;
        let response = entry
            .response
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| json_error("command response", e))?;
        let written = sqlx::query(
            "INSERT INTO command_log (id, vm_id, user_id, kind, command, response, success, \
             duration_ms, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
             ON CONFLICT (id) DO UPDATE SET response = excluded.response, \
             success = excluded.success, duration_ms = excluded.duration_ms \
             WHERE command_log.vm_id = excluded.vm_id",
        )
        .bind(entry.id.as_str())
        .bind(entry.vm_id.as_str())
        .bind(entry.user_id)
        .bind(entry.kind.as_str())
        .bind(command)
        .bind(response)
        .bind(entry.success)
        .bind(entry.duration_ms)
        .bind(ms(entry.created_at))
        .execute(&self.writer)
        .await
        .map_err(ctx("log_command"))?
        .rows_affected();
        if written == 0 {
            return Err(StoreError::Conflict(format!(
                "command {} is logged under another VM than {}",
                entry.id, entry.vm_id
            )));
        }
        Ok(())
    }

    async fn command_logs(&self, vm_id: &str, limit: u32) -> Result<Vec<CommandLogEntry>> {
        let rows = sqlx::query(
            "SELECT id, vm_id, user_id, kind, command, response, success, duration_ms, created_at \
             FROM command_log WHERE vm_id = ?1 ORDER BY created_at DESC, rowid DESC LIMIT ?2",
        )
        .bind(vm_id)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(ctx("command_logs"))?;
        rows.iter()
            .map(|row| {
                let command: String = row.try_get("command").map_err(ctx("command_logs"))?;
                let response: Option<String> =
                    row.try_get("response").map_err(ctx("command_logs"))?;
                Ok(CommandLogEntry {
                    id: row.try_get("id").map_err(ctx("command_logs"))?,
                    vm_id: row.try_get("vm_id").map_err(ctx("command_logs"))?,
                    user_id: row.try_get("user_id").map_err(ctx("command_logs"))?,
                    kind: row.try_get("kind").map_err(ctx("command_logs"))?,
                    command: serde_json::from_str(&command)
                        .map_err(|e| json_error("stored command", e))?,
                    response: response
                        .map(|r| serde_json::from_str(&r))
                        .transpose()
                        .map_err(|e| json_error("stored response", e))?,
                    success: row.try_get("success").map_err(ctx("command_logs"))?,
                    duration_ms: row.try_get("duration_ms").map_err(ctx("command_logs"))?,
                    created_at: from_ms(row.try_get("created_at").map_err(ctx("command_logs"))?)?,
                })
            })
            .collect()
    }

    async fn latest_sample(&self, vm_id: &str) -> Result<Option<MetricSample>> {
        if let Some(sample) = self.hot.latest(vm_id) {
            return Ok(Some(sample));
        }
        let row = sqlx::query(
            "SELECT vm_id, at, guest_time, cpu, mem_used_kb, mem_total_kb, swap_used_kb, \
             disk_used_percent, disk_read_bps, disk_write_bps, net_rx_bps, net_tx_bps, load1, detail \
             FROM vm_latest_sample WHERE vm_id = ?1",
        )
        .bind(vm_id)
        .fetch_optional(&self.reader)
        .await
        .map_err(ctx("latest_sample"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let c = ctx("latest_sample");
        let detail: String = row.try_get("detail").map_err(c)?;
        let detail: Arc<MetricsBody> =
            serde_json::from_str(&detail).map_err(|e| json_error("stored detail", e))?;
        let get_f = |n: &str| -> Result<f64> { row.try_get(n).map_err(ctx("latest_sample")) };
        Ok(Some(MetricSample {
            vm_id: row.try_get("vm_id").map_err(ctx("latest_sample"))?,
            received_at: from_ms(row.try_get("at").map_err(ctx("latest_sample"))?)?,
            guest_time: opt_from_ms(row.try_get("guest_time").map_err(ctx("latest_sample"))?)?,
            cpu_percent: get_f("cpu")?,
            mem_used_kb: row.try_get("mem_used_kb").map_err(ctx("latest_sample"))?,
            mem_total_kb: row.try_get("mem_total_kb").map_err(ctx("latest_sample"))?,
            swap_used_kb: row.try_get("swap_used_kb").map_err(ctx("latest_sample"))?,
            disk_used_percent: row
                .try_get("disk_used_percent")
                .map_err(ctx("latest_sample"))?,
            disk_read_bps: get_f("disk_read_bps")?,
            disk_write_bps: get_f("disk_write_bps")?,
            net_rx_bps: get_f("net_rx_bps")?,
            net_tx_bps: get_f("net_tx_bps")?,
            load1: get_f("load1")?,
            detail,
        }))
    }

    async fn metrics(
        &self,
        vm_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        max_points: u32,
    ) -> Result<(Resolution, Vec<MetricPoint>)> {
        let series = self.metrics_series(vm_id, from, to, max_points).await?;
        Ok((series.resolution, series.points))
    }

    async fn metrics_series(
        &self,
        vm_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        max_points: u32,
    ) -> Result<MetricSeries> {
        let (from_ms_, to_ms_) = (ms(from), ms(to));
        let plan = common::plan(
            Utc::now(),
            self.retention(),
            from,
            to,
            max_points,
            || async {
                sqlx::query_scalar::<_, i64>(
                    "SELECT COUNT(*) FROM metric_samples \
                 WHERE vm_key = (SELECT key FROM vms WHERE id = ?1) AND at >= ?2 AND at <= ?3",
                )
                .bind(vm_id)
                .bind(from_ms_)
                .bind(to_ms_)
                .fetch_one(&self.reader)
                .await
                .map_err(ctx("metrics: count"))
            },
        )
        .await?;
        let (resolution, bucket_seconds, sql, width) = match plan {
            Plan::Empty => {
                return Ok(MetricSeries {
                    resolution: Resolution::Raw,
                    bucket_seconds: None,
                    points: Vec::new(),
                });
            }
            Plan::Raw => (
                Resolution::Raw,
                None,
                "SELECT at, cpu AS cpu_avg, cpu AS cpu_min, cpu AS cpu_max, \
                 CAST(mem_used_kb AS REAL) AS mem_used_kb_avg, mem_total_kb, disk_read_bps, \
                 disk_write_bps, net_rx_bps, net_tx_bps, 1 AS samples \
                 FROM metric_samples WHERE vm_key = (SELECT key FROM vms WHERE id = ?1) \
                 AND at >= ?2 AND at <= ?3 ORDER BY at"
                    .to_owned(),
                None,
            ),
            Plan::RawBuckets { width_ms } => (
                Resolution::Raw,
                Some(width_ms / 1000),
                "SELECT (at / ?4) * ?4 AS at, AVG(cpu) AS cpu_avg, MIN(cpu) AS cpu_min, \
                 MAX(cpu) AS cpu_max, CAST(AVG(mem_used_kb) AS REAL) AS mem_used_kb_avg, \
                 MAX(mem_total_kb) AS mem_total_kb, AVG(disk_read_bps) AS disk_read_bps, \
                 AVG(disk_write_bps) AS disk_write_bps, AVG(net_rx_bps) AS net_rx_bps, \
                 AVG(net_tx_bps) AS net_tx_bps, COUNT(*) AS samples \
                 FROM metric_samples WHERE vm_key = (SELECT key FROM vms WHERE id = ?1) \
                 AND at >= ?2 AND at <= ?3 \
                 GROUP BY at / ?4 ORDER BY 1"
                    .to_owned(),
                Some(width_ms),
            ),
            Plan::Rollup { tier, width_ms } => {
                let table = if tier == Resolution::Minute {
                    "metric_minute"
                } else {
                    "metric_hour"
                };
                (
                    tier,
                    Some(width_ms / 1000),
                    format!(
                        "SELECT (bucket / ?4) * ?4 AS at, \
                         SUM(cpu_avg * samples) / SUM(samples) AS cpu_avg, MIN(cpu_min) AS cpu_min, \
                         MAX(cpu_max) AS cpu_max, \
                         SUM(mem_used_kb_avg * samples) / SUM(samples) AS mem_used_kb_avg, \
                         MAX(mem_total_kb) AS mem_total_kb, \
                         SUM(disk_read_bps * samples) / SUM(samples) AS disk_read_bps, \
                         SUM(disk_write_bps * samples) / SUM(samples) AS disk_write_bps, \
                         SUM(net_rx_bps * samples) / SUM(samples) AS net_rx_bps, \
                         SUM(net_tx_bps * samples) / SUM(samples) AS net_tx_bps, \
                         SUM(samples) AS samples \
                         FROM {table} WHERE {KEY_OF_VM} AND bucket >= ?2 AND bucket <= ?3 \
                         GROUP BY bucket / ?4 ORDER BY 1"
                    ),
                    Some(width_ms),
                )
            }
        };
        let lower = match plan {
            Plan::Rollup { tier, .. } => floor_to(
                from_ms_,
                if tier == Resolution::Minute {
                    MINUTE_MS
                } else {
                    HOUR_MS
                },
            ),
            _ => from_ms_,
        };
        let mut query = sqlx::query(&sql).bind(vm_id).bind(lower).bind(to_ms_);
        if let Some(width) = width {
            query = query.bind(width);
        }
        let points = query
            .fetch_all(&self.reader)
            .await
            .map_err(ctx("metrics"))?
            .iter()
            .map(point_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(MetricSeries {
            resolution,
            bucket_seconds,
            points,
        })
    }

    async fn inventory(&self, vm_id: &str, kind: InventoryKind) -> Result<Option<Inventory>> {
        let row: Option<(i64, String)> = sqlx::query_as(
            "SELECT received_at, items FROM vm_inventory WHERE vm_id = ?1 AND kind = ?2",
        )
        .bind(vm_id)
        .bind(common::kind_str(kind))
        .fetch_optional(&self.reader)
        .await
        .map_err(ctx("inventory"))?;
        row.map(|(at, items)| {
            Ok(Inventory {
                vm_id: vm_id.to_owned(),
                kind,
                received_at: from_ms(at)?,
                items: serde_json::from_str(&items)
                    .map_err(|e| json_error("stored inventory", e))?,
            })
        })
        .transpose()
    }

    async fn service_history(&self, vm_id: &str, limit: u32) -> Result<Vec<ServiceStateChange>> {
        let rows: Vec<(String, Option<String>, Option<String>, i64)> = sqlx::query_as(
            "SELECT service, from_state, to_state, at FROM service_history WHERE vm_id = ?1 \
             ORDER BY at DESC, seq DESC LIMIT ?2",
        )
        .bind(vm_id)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(ctx("service_history"))?;
        rows.into_iter()
            .map(|(service, from_state, to_state, at)| {
                Ok(ServiceStateChange {
                    vm_id: vm_id.to_owned(),
                    service,
                    from_state,
                    to_state,
                    at: from_ms(at)?,
                })
            })
            .collect()
    }

    async fn vm_errors(&self, vm_id: &str, limit: u32) -> Result<Vec<VmErrorRecord>> {
        let rows: Vec<(i64, Option<String>, String, Option<String>)> = sqlx::query_as(
            "SELECT at, code, message, details FROM vm_errors WHERE vm_id = ?1 \
             ORDER BY at DESC, seq DESC LIMIT ?2",
        )
        .bind(vm_id)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(ctx("vm_errors"))?;
        rows.into_iter()
            .map(|(at, code, message, details)| {
                Ok(VmErrorRecord {
                    vm_id: vm_id.to_owned(),
                    at: from_ms(at)?,
                    code,
                    message,
                    details,
                })
            })
            .collect()
    }

    async fn maintain(
        &self,
        now: DateTime<Utc>,
        retention: Retention,
        batch: u32,
    ) -> Result<MaintenanceReport> {
        if let Ok(mut current) = self.retention.write() {
            *current = retention;
        }
        self.flush().await?;
        common::maintain(self, now, retention, batch).await
    }
}

mod users;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::samples::{Jitter, small_metrics};

    fn sample(vm: &str, at: DateTime<Utc>, cpu: f64, mem_used_kb: i64) -> MetricSample {
        let mut jitter = Jitter::new(7);
        MetricSample {
            vm_id: vm.to_owned(),
            received_at: at,
            guest_time: None,
            cpu_percent: cpu,
            mem_used_kb,
            mem_total_kb: 4_000_000 + mem_used_kb % 3,
            swap_used_kb: None,
            disk_used_percent: None,
            disk_read_bps: cpu * 3.0,
            disk_write_bps: cpu * 2.0,
            net_rx_bps: cpu + 1.0,
            net_tx_bps: cpu + 2.0,
            load1: 0.5,
            detail: Arc::new(small_metrics(&mut jitter, 1).metrics),
        }
    }

    /// The sliced reads must add up to exactly what one grouping of the whole bucket gives,
    /// for every VM, whatever slice each sample fell in.
    #[tokio::test]
    async fn a_bucket_grouped_in_slices_equals_one_grouping() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = SqliteStore::open(&url, Retention::default())
            .await
            .expect("open");
        let minute = DateTime::from_timestamp_millis(1_700_000_040_000).expect("valid time");
        let mut samples = Vec::new();
        for v in 0..5i64 {
            // Uneven spacing, so that VMs differ in how many samples each slice holds.
            for i in 0..(7 + 5 * v) {
                let offset = (i * 60_000 / (7 + 5 * v) + 313 * v) % 60_000;
                let cpu = ((i * 31 + v * 17) % 100) as f64 + 0.25;
                samples.push(sample(
                    &format!("vm-{v}"),
                    minute + chrono::Duration::milliseconds(offset),
                    cpu,
                    1_000 * v + i,
                ));
            }
        }
        samples.sort_by_key(|s| s.received_at);
        store.insert_samples(&samples).await.expect("insert");
        let start = minute.timestamp_millis();
        let end = start + MINUTE_MS;
        let sliced = group_in_slices(&store.reader, MINUTE_PARTIAL_SUMS, start, end)
            .await
            .expect("sliced grouping");
        let whole: Vec<SliceRow> = sqlx::query_as(MINUTE_PARTIAL_SUMS)
            .bind(start)
            .bind(end)
            .fetch_all(&store.reader)
            .await
            .expect("one grouping");
        assert_eq!(whole.len(), 5);
        assert_eq!(sliced.len(), whole.len());
        for row in &whole {
            let expected = BucketSums::of(row).into_row(row.0, row.1);
            let got = sliced[&(row.0, row.1)].into_row(row.0, row.1);
            assert_eq!((got.0, got.1, got.2), (expected.0, expected.1, expected.2));
            assert_eq!((got.4, got.5, got.7), (expected.4, expected.5, expected.7));
            for (a, b) in [
                (got.3, expected.3),
                (got.6, expected.6),
                (got.8, expected.8),
                (got.9, expected.9),
                (got.10, expected.10),
                (got.11, expected.11),
            ] {
                assert!((a - b).abs() <= 1e-9 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
    }
}

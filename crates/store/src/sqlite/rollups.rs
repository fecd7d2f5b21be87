//! SQLite's roll-ups: grouped on reader connections, in slices, and only the bucket rows
//! written through the one writer.
//!
//! Grouping a minute of 10,000 VMs' samples takes seconds; on the writer connection that
//! would hold every sample batch up (and make the host coalesce). So the grouping runs on a
//! reader, and in slices: each slice is its own short read transaction. One read over the
//! whole minute held its WAL snapshot for 50 s on a saturated host, and no checkpoint could
//! restart the WAL meanwhile (it grew to 3.5 GB). Slices also bound the sort each one needs.

use std::collections::HashMap;

use sqlx::SqlitePool;

use super::{Slice, SqliteStore, with_values};
use crate::Resolution;
use crate::Result;
use crate::common::ctx;
use crate::engine::sql::{self, ROLLUP_COLUMNS, ROLLUP_UPSERT};
use crate::engine::{Rollups, Tx};

/// One rollup bucket: vm_key, bucket, samples, cpu avg/min/max, mem_used avg, mem_total,
/// disk read/write, net rx/tx.
type RollupRow = (i64, i64, i64, f64, f64, f64, f64, i64, f64, f64, f64, f64);

/// How many read transactions one bucket's grouping is split into.
const ROLLUP_SLICES: i64 = 6;

/// Bucket rows per upsert.
const BUCKET_ROWS: Slice = Slice {
    rows: 500,
    cols: 12,
};

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
    tx: &mut Tx<SqliteStore>,
    table: &str,
    buckets: &[RollupRow],
) -> Result<u64> {
    with_values(
        tx,
        "maintain: write buckets",
        buckets,
        BUCKET_ROWS,
        |values| {
            format!(
                "INSERT INTO {table} ({ROLLUP_COLUMNS}) SELECT * FROM (VALUES {values}) \
                 WHERE column1 IN (SELECT key FROM vms) {ROLLUP_UPSERT}"
            )
        },
        |query, b| {
            query
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
                .bind(b.11)
        },
    )
    .await
}

/// The statements of a tier: partial sums per slice, the count of source rows a grouping
/// covers, the rollup table.
fn tier_sql(tier: Resolution) -> (&'static str, &'static str, &'static str) {
    match tier {
        Resolution::Minute => (
            MINUTE_PARTIAL_SUMS,
            "SELECT COUNT(*) FROM metric_samples WHERE at >= ?1 AND at < ?2",
            "metric_minute",
        ),
        _ => (
            HOUR_PARTIAL_SUMS,
            "SELECT COALESCE(SUM(samples), 0) FROM metric_minute \
             WHERE bucket >= ?1 AND bucket < ?2",
            "metric_hour",
        ),
    }
}

impl Rollups for SqliteStore {
    /// The range's bucket rows, grouped on readers.
    type Grouped = Vec<RollupRow>;

    async fn group_range(&self, tier: Resolution, start: i64, end: i64) -> Result<Vec<RollupRow>> {
        let (partial, ..) = tier_sql(tier);
        Ok(group_in_slices(&self.core.reader, partial, start, end)
            .await?
            .into_iter()
            .map(|((vm_key, bucket), sums)| sums.into_row(vm_key, bucket))
            .collect())
    }

    async fn write_range(
        tx: &mut Tx<Self>,
        tier: Resolution,
        start: i64,
        end: i64,
        buckets: Vec<RollupRow>,
    ) -> Result<u64> {
        let (_, source_rows, table) = tier_sql(tier);
        let grouped_rows: i64 = buckets.iter().map(|b| b.2).sum();
        // A batch committed since the reads (a late sample of this range, or a deleted VM)
        // changes the count: then group again, inside the writer, as the one source of truth.
        let source_now: i64 = sqlx::query_scalar(source_rows)
            .bind(start)
            .bind(end)
            .fetch_one(&mut **tx)
            .await
            .map_err(ctx("maintain: count"))?;
        if source_now == grouped_rows {
            return write_buckets(tx, table, &buckets).await;
        }
        Ok(sqlx::query(&sql::rollup::<Self>(tier))
            .bind(start)
            .bind(end)
            .execute(&mut **tx)
            .await
            .map_err(ctx("maintain: roll up"))?
            .rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chrono::{DateTime, Utc};

    use super::*;
    use crate::common::MINUTE_MS;
    use crate::protocol::samples::{Jitter, small_metrics};
    use crate::{MetricSample, Retention, Store};

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
        let sliced = group_in_slices(&store.core.reader, MINUTE_PARTIAL_SUMS, start, end)
            .await
            .expect("sliced grouping");
        let whole: Vec<SliceRow> = sqlx::query_as(MINUTE_PARTIAL_SUMS)
            .bind(start)
            .bind(end)
            .fetch_all(&store.core.reader)
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

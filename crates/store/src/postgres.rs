//! The PostgreSQL backend (sqlx pool).
//!
//! Batches are sent as one statement per table with a column array per field
//! (`INSERT … SELECT * FROM UNNEST($1::text[], …)`): one round trip and one plan for any batch
//! size. Rows that several batches may touch (`vms`, `vm_latest_sample`) are written in VM-id
//! order so that concurrent batches cannot deadlock. Needs PostgreSQL 14 or newer (`date_bin`).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Postgres, Row, Transaction};

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

/// Advisory lock between sample batches (shared) and the last step of `delete_vm`
/// (exclusive): a batch that planned with a VM's key commits before the VM's rows are
/// deleted, or plans after the VM was forgotten. Without it a batch could write rows under
/// the key of a VM deleted meanwhile (orphans).
const DELETE_LOCK: i64 = 0x4942_5f44_454c_4554; // "IB_DELET"
/// Sample batches worth running at once: one batch is ~6 round trips and leaves the server
/// idle between them; 4 at once was the best of 1/2/4 in `bench/store` (2 cores).
const PARALLEL_BATCHES: usize = 4;
/// Raw rows deleted per statement by `delete_vm`.
const DELETE_VM_BATCH: i64 = 10_000;

/// PostgreSQL implementation of [`Store`].
#[derive(Debug)]
pub struct PgStore {
    pool: PgPool,
    retention: RwLock<Retention>,
    hot: HotState,
}

impl PgStore {
    /// Connects to the database a `postgres://` URL names and migrates it.
    pub async fn open(url: &str, retention: Retention) -> Result<Self> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("invalid PostgreSQL URL: {e}")))?;
        // Never echo the URL: it may carry a password.
        let target = format!(
            "{}@{}:{}/{}",
            options.get_username(),
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("(default)")
        );
        // One direct attempt first: the pool would retry a refused connection until its
        // acquire timeout, and start-up should say at once that the server is not there.
        tokio::time::timeout(
            StdDuration::from_secs(10),
            PgConnection::connect_with(&options),
        )
        .await
        .map_err(|_| {
            StoreError::Unavailable(format!(
                "cannot connect to PostgreSQL {target}: no answer within 10 s"
            ))
        })?
        .map_err(|e| {
            StoreError::Unavailable(format!("cannot connect to PostgreSQL {target}: {e}"))
        })?
        .close()
        .await
        .map_err(|e| {
            StoreError::Unavailable(format!("cannot connect to PostgreSQL {target}: {e}"))
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .min_connections(1)
            .acquire_timeout(StdDuration::from_secs(30))
            .connect_with(options)
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot connect to PostgreSQL {target}: {e}"))
            })?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot migrate PostgreSQL {target}: {e}"))
            })?;
        Ok(Self {
            pool,
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

/// `last_seen` also counts the newest persisted sample (samples do not rewrite `vms`).
const VM_SELECT: &str = "SELECT v.id, v.name, v.owner_id, v.department, v.status, \
     GREATEST(v.last_seen, l.at) AS last_seen, v.agent::text AS agent, v.created_at, \
     v.key FROM vms v LEFT JOIN vm_latest_sample l ON l.vm_id = v.id";

fn vm_from_row(row: &PgRow) -> Result<VmRecord> {
    let c = || ctx("read vm");
    let agent: Option<String> = row.try_get("agent").map_err(c())?;
    let agent = agent
        .map(|text| serde_json::from_str::<VmIdentification>(&text))
        .transpose()
        .map_err(|e| json_error("stored agent info", e))?;
    let status: String = row.try_get("status").map_err(c())?;
    Ok(VmRecord {
        id: row.try_get("id").map_err(c())?,
        name: row.try_get("name").map_err(c())?,
        owner_id: row.try_get("owner_id").map_err(c())?,
        department: row.try_get("department").map_err(c())?,
        status: common::parse_status(&status)?,
        last_seen: row.try_get("last_seen").map_err(c())?,
        agent,
        created_at: row.try_get("created_at").map_err(c())?,
    })
}

fn point_from_row(row: &PgRow) -> Result<MetricPoint> {
    let c = || ctx("read metrics");
    Ok(MetricPoint {
        at: row.try_get("at").map_err(c())?,
        cpu_avg: row.try_get("cpu_avg").map_err(c())?,
        cpu_min: row.try_get("cpu_min").map_err(c())?,
        cpu_max: row.try_get("cpu_max").map_err(c())?,
        mem_used_kb_avg: row.try_get("mem_used_kb_avg").map_err(c())?,
        mem_total_kb: row.try_get("mem_total_kb").map_err(c())?,
        disk_read_bps: row.try_get("disk_read_bps").map_err(c())?,
        disk_write_bps: row.try_get("disk_write_bps").map_err(c())?,
        net_rx_bps: row.try_get("net_rx_bps").map_err(c())?,
        net_tx_bps: row.try_get("net_tx_bps").map_err(c())?,
        samples: row.try_get("samples").map_err(c())?,
    })
}

/// Registers VMs not known yet, in id order.
async fn ensure_vms(
    tx: &mut Transaction<'_, Postgres>,
    sorted_vm_ids: &[&str],
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO vms (id, name, created_at) SELECT id, id, $2 FROM UNNEST($1::text[]) AS t(id) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(sorted_vm_ids)
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(ctx("register vms"))?;
    Ok(())
}

impl MaintenanceOps for PgStore {
    async fn watermark(&self, tier: Resolution) -> Result<Option<i64>> {
        let at: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT done_until FROM rollup_state WHERE tier = $1")
                .bind(common::tier_name(tier))
                .fetch_one(&self.pool)
                .await
                .map_err(ctx("maintain: read watermark"))?;
        Ok(at.map(|t| t.timestamp_millis()))
    }

    async fn first_source_row(&self, tier: Resolution, from: i64) -> Result<Option<i64>> {
        let sql = if tier == Resolution::Minute {
            "SELECT MIN(at) FROM metric_samples WHERE at >= $1"
        } else {
            "SELECT MIN(bucket) FROM metric_minute WHERE bucket >= $1"
        };
        let at: Option<DateTime<Utc>> = sqlx::query_scalar(sql)
            .bind(from_ms(from)?)
            .fetch_one(&self.pool)
            .await
            .map_err(ctx("maintain: find next rows"))?;
        Ok(at.map(|t| t.timestamp_millis()))
    }

    async fn roll_range(&self, tier: Resolution, start: i64, end: i64) -> Result<u64> {
        let sql = match tier {
            Resolution::Minute => {
                "INSERT INTO metric_minute (vm_key, bucket, samples, cpu_avg, cpu_min, cpu_max, \
                 mem_used_kb_avg, mem_total_kb, disk_read_bps, disk_write_bps, net_rx_bps, net_tx_bps) \
                 SELECT vm_key, date_bin('1 minute', at, TIMESTAMPTZ 'epoch'), COUNT(*), AVG(cpu), \
                 MIN(cpu), MAX(cpu), AVG(mem_used_kb)::float8, MAX(mem_total_kb), AVG(disk_read_bps), \
                 AVG(disk_write_bps), AVG(net_rx_bps), AVG(net_tx_bps) \
                 FROM metric_samples WHERE at >= $1 AND at < $2 GROUP BY 1, 2 \
                 ON CONFLICT (vm_key, bucket) DO UPDATE SET samples = excluded.samples, \
                 cpu_avg = excluded.cpu_avg, cpu_min = excluded.cpu_min, cpu_max = excluded.cpu_max, \
                 mem_used_kb_avg = excluded.mem_used_kb_avg, mem_total_kb = excluded.mem_total_kb, \
                 disk_read_bps = excluded.disk_read_bps, disk_write_bps = excluded.disk_write_bps, \
                 net_rx_bps = excluded.net_rx_bps, net_tx_bps = excluded.net_tx_bps"
            }
            _ => {
                "INSERT INTO metric_hour (vm_key, bucket, samples, cpu_avg, cpu_min, cpu_max, \
                 mem_used_kb_avg, mem_total_kb, disk_read_bps, disk_write_bps, net_rx_bps, net_tx_bps) \
                 SELECT vm_key, date_bin('1 hour', bucket, TIMESTAMPTZ 'epoch'), SUM(samples)::int8, \
                 SUM(cpu_avg * samples) / SUM(samples), MIN(cpu_min), MAX(cpu_max), \
                 SUM(mem_used_kb_avg * samples) / SUM(samples), MAX(mem_total_kb), \
                 SUM(disk_read_bps * samples) / SUM(samples), SUM(disk_write_bps * samples) / SUM(samples), \
                 SUM(net_rx_bps * samples) / SUM(samples), SUM(net_tx_bps * samples) / SUM(samples) \
                 FROM metric_minute WHERE bucket >= $1 AND bucket < $2 GROUP BY 1, 2 \
                 ON CONFLICT (vm_key, bucket) DO UPDATE SET samples = excluded.samples, \
                 cpu_avg = excluded.cpu_avg, cpu_min = excluded.cpu_min, cpu_max = excluded.cpu_max, \
                 mem_used_kb_avg = excluded.mem_used_kb_avg, mem_total_kb = excluded.mem_total_kb, \
                 disk_read_bps = excluded.disk_read_bps, disk_write_bps = excluded.disk_write_bps, \
                 net_rx_bps = excluded.net_rx_bps, net_tx_bps = excluded.net_tx_bps"
            }
        };
        let mut tx = self.pool.begin().await.map_err(ctx("maintain: begin"))?;
        let written = sqlx::query(sql)
            .bind(from_ms(start)?)
            .bind(from_ms(end)?)
            .execute(&mut *tx)
            .await
            .map_err(ctx("maintain: roll up"))?
            .rows_affected();
        sqlx::query("UPDATE rollup_state SET done_until = $1 WHERE tier = $2")
            .bind(from_ms(end)?)
            .bind(common::tier_name(tier))
            .execute(&mut *tx)
            .await
            .map_err(ctx("maintain: watermark"))?;
        if tier == Resolution::Minute {
            // Recomputed minutes change their hours.
            sqlx::query(
                "UPDATE rollup_state SET done_until = $1 WHERE tier = 'hour' AND done_until > $1",
            )
            .bind(from_ms(floor_to(start, HOUR_MS))?)
            .execute(&mut *tx)
            .await
            .map_err(ctx("maintain: hour watermark"))?;
        }
        tx.commit().await.map_err(ctx("maintain: commit"))?;
        Ok(written)
    }

    async fn advance_watermark(&self, tier: Resolution, end: i64) -> Result<()> {
        sqlx::query(
            "UPDATE rollup_state SET done_until = $1 \
             WHERE tier = $2 AND (done_until IS NULL OR done_until < $1)",
        )
        .bind(from_ms(end)?)
        .bind(common::tier_name(tier))
        .execute(&self.pool)
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
            "DELETE FROM {table} WHERE ctid = ANY(ARRAY(\
             SELECT ctid FROM {table} WHERE {column} < $1 LIMIT $2))"
        );
        Ok(sqlx::query(&sql)
            .bind(from_ms(cutoff)?)
            .bind(batch)
            .execute(&self.pool)
            .await
            .map_err(ctx("maintain: prune"))?
            .rows_affected())
    }
}

/// The sample columns as arrays, one entry per row.
#[derive(Default)]
struct SampleColumns<'a> {
    vm_id: Vec<&'a str>,
    at: Vec<DateTime<Utc>>,
    guest_time: Vec<Option<DateTime<Utc>>>,
    cpu: Vec<f64>,
    mem_used_kb: Vec<i64>,
    mem_total_kb: Vec<i64>,
    swap_used_kb: Vec<Option<i64>>,
    disk_used_percent: Vec<Option<f64>>,
    disk_read_bps: Vec<f64>,
    disk_write_bps: Vec<f64>,
    net_rx_bps: Vec<f64>,
    net_tx_bps: Vec<f64>,
    load1: Vec<f64>,
}

impl<'a> SampleColumns<'a> {
    fn push(&mut self, s: &'a MetricSample) {
        self.vm_id.push(&s.vm_id);
        self.at.push(s.received_at);
        self.guest_time.push(s.guest_time);
        self.cpu.push(common::finite(s.cpu_percent));
        self.mem_used_kb.push(s.mem_used_kb);
        self.mem_total_kb.push(s.mem_total_kb);
        self.swap_used_kb.push(s.swap_used_kb);
        self.disk_used_percent
            .push(common::finite_opt(s.disk_used_percent));
        self.disk_read_bps.push(common::finite(s.disk_read_bps));
        self.disk_write_bps.push(common::finite(s.disk_write_bps));
        self.net_rx_bps.push(common::finite(s.net_rx_bps));
        self.net_tx_bps.push(common::finite(s.net_tx_bps));
        self.load1.push(common::finite(s.load1));
    }

    fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
        self.bind_values(query.bind(&self.vm_id))
    }

    /// Everything but the VM column (which the caller bound as `$1`).
    fn bind_values<'q>(
        &'q self,
        query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(&self.at)
            .bind(&self.guest_time)
            .bind(&self.cpu)
            .bind(&self.mem_used_kb)
            .bind(&self.mem_total_kb)
            .bind(&self.swap_used_kb)
            .bind(&self.disk_used_percent)
            .bind(&self.disk_read_bps)
            .bind(&self.disk_write_bps)
            .bind(&self.net_rx_bps)
            .bind(&self.net_tx_bps)
            .bind(&self.load1)
    }
}

/// Upserts the newest sample (with detail) of each VM, in VM-id order; never replaces a newer
/// stored one.
async fn write_latest(tx: &mut Transaction<'_, Postgres>, samples: &[&MetricSample]) -> Result<()> {
    if samples.is_empty() {
        return Ok(());
    }
    let mut latest = SampleColumns::default();
    let mut details = Vec::with_capacity(samples.len());
    for sample in samples {
        latest.push(sample);
        details.push(
            serde_json::to_string(&sample.detail).map_err(|e| json_error("sample detail", e))?,
        );
    }
    let upsert = format!(
        "INSERT INTO vm_latest_sample (vm_id, at, guest_time, cpu, mem_used_kb, mem_total_kb, \
         swap_used_kb, disk_used_percent, disk_read_bps, disk_write_bps, net_rx_bps, \
         net_tx_bps, load1, detail) \
         SELECT v, a, g, c, mu, mt, su, dp, dr, dw, rx, tx, l1, d::json \
         FROM {UNNEST_SAMPLE_COLUMNS}, $14::text[]) \
         AS t(v, a, g, c, mu, mt, su, dp, dr, dw, rx, tx, l1, d) \
         ON CONFLICT (vm_id) DO UPDATE SET at = excluded.at, guest_time = excluded.guest_time, \
         cpu = excluded.cpu, mem_used_kb = excluded.mem_used_kb, \
         mem_total_kb = excluded.mem_total_kb, swap_used_kb = excluded.swap_used_kb, \
         disk_used_percent = excluded.disk_used_percent, \
         disk_read_bps = excluded.disk_read_bps, disk_write_bps = excluded.disk_write_bps, \
         net_rx_bps = excluded.net_rx_bps, net_tx_bps = excluded.net_tx_bps, \
         load1 = excluded.load1, detail = excluded.detail \
         WHERE excluded.at >= vm_latest_sample.at"
    );
    latest
        .bind(sqlx::query(&upsert))
        .bind(&details)
        .execute(&mut **tx)
        .await
        .map_err(ctx("write latest samples"))?;
    Ok(())
}

const UNNEST_SAMPLE_COLUMNS: &str = "UNNEST($1::text[], $2::timestamptz[], $3::timestamptz[], \
     $4::float8[], $5::int8[], $6::int8[], $7::int8[], $8::float8[], $9::float8[], $10::float8[], \
     $11::float8[], $12::float8[], $13::float8[]";

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn concurrent_batches(&self) -> usize {
        PARALLEL_BATCHES
    }

    fn users(&self) -> &dyn crate::UserStore {
        self
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(ctx("ping"))?;
        Ok(())
    }

    async fn upsert_vm(&self, id: &str, now: DateTime<Utc>) -> Result<VmRecord> {
        sqlx::query(
            "INSERT INTO vms (id, name, created_at) VALUES ($1, $1, $2) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(ctx("upsert_vm"))?;
        let row = sqlx::query(&format!("{VM_SELECT} WHERE v.id = $1"))
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .map_err(ctx("upsert_vm: read back"))?;
        let key: i64 = row.try_get("key").map_err(ctx("upsert_vm: key"))?;
        self.hot.know(id, key);
        self.overlay(vm_from_row(&row)?)
    }

    async fn upsert_vms(&self, vms: &[(String, DateTime<Utc>)]) -> Result<()> {
        let mut sorted: Vec<&(String, DateTime<Utc>)> = vms.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        sorted.dedup_by(|a, b| a.0 == b.0);
        let ids: Vec<&str> = sorted.iter().map(|(id, _)| id.as_str()).collect();
        let times: Vec<DateTime<Utc>> = sorted.iter().map(|(_, at)| *at).collect();
        let mut tx = self.pool.begin().await.map_err(ctx("upsert_vms: begin"))?;
        sqlx::query(
            "INSERT INTO vms (id, name, created_at) \
             SELECT id, id, at FROM UNNEST($1::text[], $2::timestamptz[]) AS t(id, at) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&ids)
        .bind(&times)
        .execute(&mut *tx)
        .await
        .map_err(ctx("upsert_vms"))?;
        let keys: Vec<(String, i64)> = sqlx::query_as("SELECT id, key FROM vms WHERE id = ANY($1)")
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await
            .map_err(ctx("upsert_vms: keys"))?;
        tx.commit().await.map_err(ctx("upsert_vms: commit"))?;
        for (id, key) in keys {
            self.hot.know(&id, key);
        }
        Ok(())
    }

    async fn set_vm_statuses(&self, updates: &[VmStatusUpdate]) -> Result<u64> {
        // VM-id order: the lock order every batch writing `vms` rows follows.
        let mut sorted: Vec<&VmStatusUpdate> = updates.iter().collect();
        sorted.sort_by(|a, b| a.vm_id.cmp(&b.vm_id));
        let ids: Vec<&str> = sorted.iter().map(|u| u.vm_id.as_str()).collect();
        let statuses: Vec<&str> = sorted.iter().map(|u| u.status.as_str()).collect();
        let seen: Vec<Option<DateTime<Utc>>> = sorted.iter().map(|u| u.last_seen).collect();
        let updated = sqlx::query(
            "UPDATE vms SET status = u.status, last_seen = GREATEST(vms.last_seen, u.last_seen) \
             FROM UNNEST($1::text[], $2::text[], $3::timestamptz[]) AS u(id, status, last_seen) \
             WHERE vms.id = u.id",
        )
        .bind(&ids)
        .bind(&statuses)
        .bind(&seen)
        .execute(&self.pool)
        .await
        .map_err(ctx("set_vm_statuses"))?
        .rows_affected();
        Ok(updated)
    }

    async fn set_vm_agents(&self, agents: &[(String, VmIdentification)]) -> Result<u64> {
        let mut sorted: Vec<&(String, VmIdentification)> = agents.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let ids: Vec<&str> = sorted.iter().map(|(id, _)| id.as_str()).collect();
        let texts: Vec<String> = sorted
            .iter()
            .map(|(_, agent)| serde_json::to_string(agent))
            .collect::<Result<_, _>>()
            .map_err(|e| json_error("agent info", e))?;
        let hostnames: Vec<&str> = sorted.iter().map(|(_, a)| a.hostname.as_str()).collect();
        let updated = sqlx::query(
            "UPDATE vms SET agent = u.agent::jsonb, \
             name = CASE WHEN vms.name_source <> 'user' AND u.hostname <> '' \
                         THEN u.hostname ELSE vms.name END, \
             name_source = CASE WHEN vms.name_source <> 'user' AND u.hostname <> '' \
                                THEN 'agent' ELSE vms.name_source END \
             FROM UNNEST($1::text[], $2::text[], $3::text[]) AS u(id, agent, hostname) \
             WHERE vms.id = u.id",
        )
        .bind(&ids)
        .bind(&texts)
        .bind(&hostnames)
        .execute(&self.pool)
        .await
        .map_err(ctx("set_vm_agents"))?
        .rows_affected();
        Ok(updated)
    }

    async fn set_vm_status(
        &self,
        id: &str,
        status: VmStatus,
        last_seen: Option<DateTime<Utc>>,
    ) -> Result<()> {
        let updated = sqlx::query(
            "UPDATE vms SET status = $2, last_seen = GREATEST(last_seen, $3) WHERE id = $1",
        )
        .bind(id)
        .bind(status.as_str())
        .bind(last_seen)
        .execute(&self.pool)
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
            "UPDATE vms SET agent = $2::jsonb, \
             name = CASE WHEN name_source <> 'user' AND $3 <> '' THEN $3 ELSE name END, \
             name_source = CASE WHEN name_source <> 'user' AND $3 <> '' THEN 'agent' ELSE name_source END \
             WHERE id = $1",
        )
        .bind(id)
        .bind(text)
        .bind(agent.hostname.as_str())
        .execute(&self.pool)
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
        let updated = sqlx::query("UPDATE vms SET owner_id = $2, department = $3 WHERE id = $1")
            .bind(id)
            .bind(owner_id)
            .bind(department)
            .execute(&self.pool)
            .await
            .map_err(ctx("set_vm_owner"))?
            .rows_affected();
        if updated == 0 {
            return Err(StoreError::NotFound(format!("vm {id}")));
        }
        Ok(())
    }

    async fn get_vm(&self, id: &str) -> Result<Option<VmRecord>> {
        sqlx::query(&format!("{VM_SELECT} WHERE v.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(ctx("get_vm"))?
            .as_ref()
            .map(|row| self.overlay(vm_from_row(row)?))
            .transpose()
    }

    async fn list_vms(&self) -> Result<Vec<VmRecord>> {
        sqlx::query(&format!("{VM_SELECT} ORDER BY v.id"))
            .fetch_all(&self.pool)
            .await
            .map_err(ctx("list_vms"))?
            .iter()
            .map(|row| self.overlay(vm_from_row(row)?))
            .collect()
    }

    async fn delete_vm(&self, id: &str) -> Result<()> {
        self.hot.forget(id);
        loop {
            let deleted = sqlx::query(
                "DELETE FROM metric_samples WHERE ctid = ANY(ARRAY(\
                 SELECT ctid FROM metric_samples \
                 WHERE vm_key = (SELECT key FROM vms WHERE id = $1) LIMIT $2))",
            )
            .bind(id)
            .bind(DELETE_VM_BATCH)
            .execute(&self.pool)
            .await
            .map_err(ctx("delete_vm: samples"))?
            .rows_affected();
            if deleted < DELETE_VM_BATCH as u64 {
                break;
            }
        }
        let mut tx = self.pool.begin().await.map_err(ctx("delete_vm: begin"))?;
        // Waits for the sample batches in flight; later ones plan after the `forget` below.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(DELETE_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(ctx("delete_vm: lock"))?;
        for table in common::VM_KEY_TABLES {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE vm_key = (SELECT key FROM vms WHERE id = $1)"
            ))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(ctx("delete_vm"))?;
        }
        for table in common::VM_ID_TABLES {
            sqlx::query(&format!("DELETE FROM {table} WHERE vm_id = $1"))
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(ctx("delete_vm"))?;
        }
        let deleted = sqlx::query("DELETE FROM vms WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(ctx("delete_vm"))?
            .rows_affected();
        // A batch since the first `forget` may have cached the VM's key again; forgotten while
        // holding the delete lock, so the next batch registers the VM anew.
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
        let mut all = SampleColumns::default();
        for s in samples {
            all.push(s);
        }
        let newest = common::newest_per_vm(samples);
        let oldest = samples
            .iter()
            .map(|s| s.received_at)
            .min()
            .unwrap_or_default();
        let oldest_minute = from_ms(floor_to(oldest.timestamp_millis(), MINUTE_MS))?;

        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(ctx("insert_samples: begin"))?;
        // Telemetry batches do not wait for the WAL flush: a crash can lose the last few
        // hundred milliseconds of samples (never corrupt anything), the same promise as
        // SQLite's WAL with synchronous=NORMAL. Everything else keeps full durability.
        // The shared delete lock: see `DELETE_LOCK`.
        sqlx::query(
            "SELECT set_config('synchronous_commit', 'off', true), \
             pg_advisory_xact_lock_shared($1)",
        )
        .bind(DELETE_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(ctx("insert_samples: commit mode"))?;
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
            learned =
                sqlx::query_as::<_, (String, i64)>("SELECT id, key FROM vms WHERE id = ANY($1)")
                    .bind(&unknown)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(ctx("vm keys"))?
                    .into_iter()
                    .collect();
        }
        let keys = common::sample_keys(samples, &plan.keys, &learned)?;
        let insert = format!(
            "INSERT INTO metric_samples (vm_key, at, guest_time, cpu, mem_used_kb, mem_total_kb, \
             swap_used_kb, disk_used_percent, disk_read_bps, disk_write_bps, net_rx_bps, \
             net_tx_bps, load1) SELECT * FROM {}",
            UNNEST_SAMPLE_COLUMNS.replacen("$1::text[]", "$1::int8[]", 1) + ")"
        );
        all.bind_values(sqlx::query(&insert).bind(&keys))
            .execute(&mut *tx)
            .await
            .map_err(ctx("insert_samples"))?;
        write_latest(&mut tx, &persist).await?;
        sqlx::query(
            "UPDATE rollup_state SET done_until = $1 WHERE tier = 'minute' AND done_until > $1",
        )
        .bind(oldest_minute)
        .execute(&mut *tx)
        .await
        .map_err(ctx("insert_samples: watermark"))?;
        // Recorded before the commit, under the shared delete lock, so that no `delete_vm`
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
        let mut tx = self.pool.begin().await.map_err(ctx("flush: begin"))?;
        sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
            .bind(DELETE_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(ctx("flush: lock"))?;
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
            .pool
            .begin()
            .await
            .map_err(ctx("replace_inventories: begin"))?;
        ensure_vms(&mut tx, &vm_ids, inventories[0].received_at).await?;
        for (inv, text) in inventories.iter().zip(&texts) {
            let kind = common::kind_str(inv.kind);
            let hash = common::fingerprint(text);
            // FOR UPDATE: two batches replacing the same list must diff one after the other.
            let stored: Option<(i64, Option<String>)> = sqlx::query_as(
                "SELECT items_hash, CASE WHEN kind = 'services' THEN items::text END \
                 FROM vm_inventory WHERE vm_id = $1 AND kind = $2 FOR UPDATE",
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
                if !diff.is_empty() {
                    let services: Vec<&str> = diff.iter().map(|c| c.service.as_str()).collect();
                    let from: Vec<Option<&str>> =
                        diff.iter().map(|c| c.from_state.as_deref()).collect();
                    let to: Vec<Option<&str>> =
                        diff.iter().map(|c| c.to_state.as_deref()).collect();
                    sqlx::query(
                        "INSERT INTO service_history (vm_id, service, from_state, to_state, at) \
                         SELECT $1, s, f, t, $5 FROM UNNEST($2::text[], $3::text[], $4::text[]) \
                         WITH ORDINALITY AS u(s, f, t, n) ORDER BY n",
                    )
                    .bind(inv.vm_id.as_str())
                    .bind(&services)
                    .bind(&from)
                    .bind(&to)
                    .bind(inv.received_at)
                    .execute(&mut *tx)
                    .await
                    .map_err(ctx("replace_inventories: history"))?;
                }
                changes.extend(diff);
            }
            sqlx::query(
                "INSERT INTO vm_inventory (vm_id, kind, received_at, items_hash, items) \
                 VALUES ($1, $2, $3, $4, $5::jsonb) ON CONFLICT (vm_id, kind) DO UPDATE SET \
                 received_at = excluded.received_at, items_hash = excluded.items_hash, \
                 items = excluded.items",
            )
            .bind(inv.vm_id.as_str())
            .bind(kind)
            .bind(inv.received_at)
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
        let ids: Vec<&str> = errors.iter().map(|e| e.vm_id.as_str()).collect();
        let at: Vec<DateTime<Utc>> = errors.iter().map(|e| e.at).collect();
        let code: Vec<Option<&str>> = errors.iter().map(|e| e.code.as_deref()).collect();
        let message: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
        let details: Vec<Option<&str>> = errors.iter().map(|e| e.details.as_deref()).collect();
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(ctx("insert_vm_errors: begin"))?;
        ensure_vms(&mut tx, &vm_ids, errors[0].at).await?;
        sqlx::query(
            "INSERT INTO vm_errors (vm_id, at, code, message, details) \
             SELECT v, a, c, m, d FROM UNNEST($1::text[], $2::timestamptz[], $3::text[], \
             $4::text[], $5::text[]) WITH ORDINALITY AS u(v, a, c, m, d, n) ORDER BY n",
        )
        .bind(&ids)
        .bind(&at)
        .bind(&code)
        .bind(&message)
        .bind(&details)
        .execute(&mut *tx)
        .await
        .map_err(ctx("insert_vm_errors"))?;
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
             duration_ms, created_at) VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, $8, $9) \
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
        .bind(entry.created_at)
        .execute(&self.pool)
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
            "SELECT id, vm_id, user_id, kind, command::text AS command, response::text AS response, \
             success, duration_ms, created_at FROM command_log WHERE vm_id = $1 \
             ORDER BY created_at DESC, seq DESC LIMIT $2",
        )
        .bind(vm_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(ctx("command_logs"))?;
        rows.iter()
            .map(|row| {
                let c = || ctx("command_logs");
                let command: String = row.try_get("command").map_err(c())?;
                let response: Option<String> = row.try_get("response").map_err(c())?;
                Ok(CommandLogEntry {
                    id: row.try_get("id").map_err(c())?,
                    vm_id: row.try_get("vm_id").map_err(c())?,
                    user_id: row.try_get("user_id").map_err(c())?,
                    kind: row.try_get("kind").map_err(c())?,
                    command: serde_json::from_str(&command)
                        .map_err(|e| json_error("stored command", e))?,
                    response: response
                        .map(|r| serde_json::from_str(&r))
                        .transpose()
                        .map_err(|e| json_error("stored response", e))?,
                    success: row.try_get("success").map_err(c())?,
                    duration_ms: row.try_get("duration_ms").map_err(c())?,
                    created_at: row.try_get("created_at").map_err(c())?,
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
             disk_used_percent, disk_read_bps, disk_write_bps, net_rx_bps, net_tx_bps, load1, \
             detail::text AS detail FROM vm_latest_sample WHERE vm_id = $1",
        )
        .bind(vm_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(ctx("latest_sample"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let c = || ctx("latest_sample");
        let detail: String = row.try_get("detail").map_err(c())?;
        let detail: Arc<MetricsBody> =
            serde_json::from_str(&detail).map_err(|e| json_error("stored detail", e))?;
        Ok(Some(MetricSample {
            vm_id: row.try_get("vm_id").map_err(c())?,
            received_at: row.try_get("at").map_err(c())?,
            guest_time: row.try_get("guest_time").map_err(c())?,
            cpu_percent: row.try_get("cpu").map_err(c())?,
            mem_used_kb: row.try_get("mem_used_kb").map_err(c())?,
            mem_total_kb: row.try_get("mem_total_kb").map_err(c())?,
            swap_used_kb: row.try_get("swap_used_kb").map_err(c())?,
            disk_used_percent: row.try_get("disk_used_percent").map_err(c())?,
            disk_read_bps: row.try_get("disk_read_bps").map_err(c())?,
            disk_write_bps: row.try_get("disk_write_bps").map_err(c())?,
            net_rx_bps: row.try_get("net_rx_bps").map_err(c())?,
            net_tx_bps: row.try_get("net_tx_bps").map_err(c())?,
            load1: row.try_get("load1").map_err(c())?,
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
        let plan = common::plan(
            Utc::now(),
            self.retention(),
            from,
            to,
            max_points,
            || async {
                sqlx::query_scalar::<_, i64>(
                    "SELECT COUNT(*) FROM metric_samples \
                 WHERE vm_key = (SELECT key FROM vms WHERE id = $1) AND at >= $2 AND at <= $3",
                )
                .bind(vm_id)
                .bind(from)
                .bind(to)
                .fetch_one(&self.pool)
                .await
                .map_err(ctx("metrics: count"))
            },
        )
        .await?;
        let (resolution, width_ms, sql, lower) = match plan {
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
                 mem_used_kb::float8 AS mem_used_kb_avg, mem_total_kb, disk_read_bps, \
                 disk_write_bps, net_rx_bps, net_tx_bps, 1::int8 AS samples \
                 FROM metric_samples WHERE vm_key = (SELECT key FROM vms WHERE id = $1) \
                 AND at >= $2 AND at <= $3 ORDER BY at"
                    .to_owned(),
                from,
            ),
            Plan::RawBuckets { width_ms } => (
                Resolution::Raw,
                Some(width_ms),
                "SELECT date_bin(make_interval(secs => $4), at, TIMESTAMPTZ 'epoch') AS at, \
                 AVG(cpu) AS cpu_avg, MIN(cpu) AS cpu_min, MAX(cpu) AS cpu_max, \
                 AVG(mem_used_kb)::float8 AS mem_used_kb_avg, MAX(mem_total_kb) AS mem_total_kb, \
                 AVG(disk_read_bps) AS disk_read_bps, AVG(disk_write_bps) AS disk_write_bps, \
                 AVG(net_rx_bps) AS net_rx_bps, AVG(net_tx_bps) AS net_tx_bps, \
                 COUNT(*) AS samples \
                 FROM metric_samples WHERE vm_key = (SELECT key FROM vms WHERE id = $1) \
                 AND at >= $2 AND at <= $3 \
                 GROUP BY 1 ORDER BY 1"
                    .to_owned(),
                from,
            ),
            Plan::Rollup { tier, width_ms } => {
                let (table, step) = if tier == Resolution::Minute {
                    ("metric_minute", MINUTE_MS)
                } else {
                    ("metric_hour", HOUR_MS)
                };
                (
                    tier,
                    Some(width_ms),
                    format!(
                        "SELECT date_bin(make_interval(secs => $4), bucket, TIMESTAMPTZ 'epoch') AS at, \
                         SUM(cpu_avg * samples) / SUM(samples) AS cpu_avg, MIN(cpu_min) AS cpu_min, \
                         MAX(cpu_max) AS cpu_max, \
                         SUM(mem_used_kb_avg * samples) / SUM(samples) AS mem_used_kb_avg, \
                         MAX(mem_total_kb) AS mem_total_kb, \
                         SUM(disk_read_bps * samples) / SUM(samples) AS disk_read_bps, \
                         SUM(disk_write_bps * samples) / SUM(samples) AS disk_write_bps, \
                         SUM(net_rx_bps * samples) / SUM(samples) AS net_rx_bps, \
                         SUM(net_tx_bps * samples) / SUM(samples) AS net_tx_bps, \
                         SUM(samples)::int8 AS samples \
                         FROM {table} WHERE vm_key = (SELECT key FROM vms WHERE id = $1) \
                         AND bucket >= $2 AND bucket <= $3 \
                         GROUP BY 1 ORDER BY 1"
                    ),
                    from_ms(floor_to(from.timestamp_millis(), step))?,
                )
            }
        };
        let mut query = sqlx::query(&sql).bind(vm_id).bind(lower).bind(to);
        if let Some(width_ms) = width_ms {
            query = query.bind(width_ms as f64 / 1000.0);
        }
        let points = query
            .fetch_all(&self.pool)
            .await
            .map_err(ctx("metrics"))?
            .iter()
            .map(point_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(MetricSeries {
            resolution,
            bucket_seconds: width_ms.map(|w| w / 1000),
            points,
        })
    }

    async fn inventory(&self, vm_id: &str, kind: InventoryKind) -> Result<Option<Inventory>> {
        let row: Option<(DateTime<Utc>, String)> = sqlx::query_as(
            "SELECT received_at, items::text FROM vm_inventory WHERE vm_id = $1 AND kind = $2",
        )
        .bind(vm_id)
        .bind(common::kind_str(kind))
        .fetch_optional(&self.pool)
        .await
        .map_err(ctx("inventory"))?;
        row.map(|(received_at, items)| {
            Ok(Inventory {
                vm_id: vm_id.to_owned(),
                kind,
                received_at,
                items: serde_json::from_str(&items)
                    .map_err(|e| json_error("stored inventory", e))?,
            })
        })
        .transpose()
    }

    async fn service_history(&self, vm_id: &str, limit: u32) -> Result<Vec<ServiceStateChange>> {
        let rows: Vec<(String, Option<String>, Option<String>, DateTime<Utc>)> = sqlx::query_as(
            "SELECT service, from_state, to_state, at FROM service_history WHERE vm_id = $1 \
             ORDER BY at DESC, seq DESC LIMIT $2",
        )
        .bind(vm_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(ctx("service_history"))?;
        Ok(rows
            .into_iter()
            .map(|(service, from_state, to_state, at)| ServiceStateChange {
                vm_id: vm_id.to_owned(),
                service,
                from_state,
                to_state,
                at,
            })
            .collect())
    }

    async fn vm_errors(&self, vm_id: &str, limit: u32) -> Result<Vec<VmErrorRecord>> {
        let rows: Vec<(DateTime<Utc>, Option<String>, String, Option<String>)> = sqlx::query_as(
            "SELECT at, code, message, details FROM vm_errors WHERE vm_id = $1 \
             ORDER BY at DESC, seq DESC LIMIT $2",
        )
        .bind(vm_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(ctx("vm_errors"))?;
        Ok(rows
            .into_iter()
            .map(|(at, code, message, details)| VmErrorRecord {
                vm_id: vm_id.to_owned(),
                at,
                code,
                message,
                details,
            })
            .collect())
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

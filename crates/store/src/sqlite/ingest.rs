//! SQLite's batch writes: multi-row `INSERT … VALUES` and `UPDATE … FROM (VALUES …)` with
//! bound parameters, a few hundred rows per statement.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::{Slice, SqliteQuery, SqliteStore, with_values};
use crate::common::{ctx, finite, finite_opt, json_error};
use crate::engine::sql::{LATEST_COLUMNS, LATEST_UPSERT};
use crate::engine::{AgentUpdate, Batches, Connections, Tx, TxKind};
use crate::{MetricSample, Result, ServiceStateChange, VmErrorRecord, VmStatusUpdate};

/// Raw sample rows per statement.
const SAMPLE_ROWS: Slice = Slice {
    rows: 500,
    cols: 13,
};
/// Newest-sample rows per statement (each carries its ~1 KB detail).
const LATEST_ROWS: Slice = Slice {
    rows: 200,
    cols: 14,
};
/// VMs registered or updated per statement.
const VM_ROWS: Slice = Slice { rows: 500, cols: 3 };
/// VM errors appended per statement.
const ERROR_ROWS: Slice = Slice { rows: 500, cols: 5 };

fn opt_ms(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(|t| t.timestamp_millis())
}

/// Binds a sample's columns from `at` to `load1` (non-finite numbers as 0, see
/// `common::finite`).
fn bind_sample<'q>(query: SqliteQuery<'q>, s: &MetricSample) -> SqliteQuery<'q> {
    query
        .bind(s.received_at.timestamp_millis())
        .bind(opt_ms(s.guest_time))
        .bind(finite(s.cpu_percent))
        .bind(s.mem_used_kb)
        .bind(s.mem_total_kb)
        .bind(s.swap_used_kb)
        .bind(finite_opt(s.disk_used_percent))
        .bind(finite(s.disk_read_bps))
        .bind(finite(s.disk_write_bps))
        .bind(finite(s.net_rx_bps))
        .bind(finite(s.net_tx_bps))
        .bind(finite(s.load1))
}

impl SqliteStore {
    /// `UPDATE vms SET {set} FROM (VALUES …) AS u WHERE vms.id = u.column1` over `rows`, in
    /// one transaction. Returns how many VMs were updated.
    async fn update_vms<T: Sync>(
        &self,
        what: &'static str,
        set: &str,
        rows: &[T],
        bind: impl for<'q> Fn(SqliteQuery<'q>, &'q T) -> SqliteQuery<'q> + Send + Sync,
    ) -> Result<u64> {
        let mut tx = self.begin(TxKind::Plain).await?;
        let updated = with_values(
            &mut tx,
            what,
            rows,
            VM_ROWS,
            |values| {
                format!("UPDATE vms SET {set} FROM (VALUES {values}) AS u WHERE vms.id = u.column1")
            },
            bind,
        )
        .await?;
        tx.commit().await.map_err(ctx(what))?;
        Ok(updated)
    }
}

impl Batches for SqliteStore {
    /// 10,000 new VMs: a few short transactions, so the writer is never held long.
    const REGISTRATIONS_PER_TRANSACTION: usize = 5_000;

    async fn register_vms(tx: &mut Tx<Self>, vms: &[(&str, DateTime<Utc>)]) -> Result<()> {
        with_values(
            tx,
            "register vms",
            vms,
            VM_ROWS,
            |values| {
                format!(
                    "INSERT INTO vms (id, name, created_at) VALUES {values} \
                     ON CONFLICT (id) DO NOTHING"
                )
            },
            |query, (id, first_seen)| {
                query
                    .bind(*id)
                    .bind(*id)
                    .bind(first_seen.timestamp_millis())
            },
        )
        .await?;
        Ok(())
    }

    async fn vm_keys(tx: &mut Tx<Self>, vm_ids: &[&str]) -> Result<HashMap<String, i64>> {
        let mut keys = HashMap::with_capacity(vm_ids.len());
        for chunk in vm_ids.chunks(VM_ROWS.rows) {
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

    async fn update_statuses(&self, updates: &[&VmStatusUpdate]) -> Result<u64> {
        self.update_vms(
            "set_vm_statuses",
            "status = u.column2, \
             last_seen = CASE WHEN u.column3 IS NULL THEN vms.last_seen \
                              ELSE MAX(COALESCE(vms.last_seen, u.column3), u.column3) END",
            updates,
            |query, u| {
                query
                    .bind(u.vm_id.as_str())
                    .bind(u.status.as_str())
                    .bind(opt_ms(u.last_seen))
            },
        )
        .await
    }

    async fn update_agents(&self, agents: &[AgentUpdate<'_>]) -> Result<u64> {
        self.update_vms(
            "set_vm_agents",
            "agent = u.column2, \
             name = CASE WHEN vms.name_source NOT IN ('user', 'libvirt') AND u.column3 <> '' \
                         THEN u.column3 ELSE vms.name END, \
             name_source = CASE WHEN vms.name_source NOT IN ('user', 'libvirt') AND u.column3 <> '' \
                                THEN 'agent' ELSE vms.name_source END",
            agents,
            |query, a| query.bind(a.vm_id).bind(a.agent.as_str()).bind(a.hostname),
        )
        .await
    }

    async fn insert_sample_rows(
        tx: &mut Tx<Self>,
        samples: &[MetricSample],
        keys: &[i64],
    ) -> Result<()> {
        let rows: Vec<(&MetricSample, i64)> = samples.iter().zip(keys.iter().copied()).collect();
        with_values(
            tx,
            "insert_samples",
            &rows,
            SAMPLE_ROWS,
            |values| {
                format!(
                    "INSERT INTO metric_samples (vm_key, at, guest_time, cpu, mem_used_kb, \
                     mem_total_kb, swap_used_kb, disk_used_percent, disk_read_bps, \
                     disk_write_bps, net_rx_bps, net_tx_bps, load1) VALUES {values}"
                )
            },
            |query, (sample, key)| bind_sample(query.bind(*key), sample),
        )
        .await?;
        Ok(())
    }

    async fn write_latest(tx: &mut Tx<Self>, samples: &[&MetricSample]) -> Result<()> {
        let rows = samples
            .iter()
            .map(|s| Ok((*s, serde_json::to_string(&s.detail)?)))
            .collect::<Result<Vec<(&MetricSample, String)>, serde_json::Error>>()
            .map_err(|e| json_error("sample detail", e))?;
        with_values(
            tx,
            "write latest samples",
            &rows,
            LATEST_ROWS,
            |values| {
                format!(
                    "INSERT INTO vm_latest_sample ({LATEST_COLUMNS}) VALUES {values} \
                         {LATEST_UPSERT}"
                )
            },
            |query, (sample, detail)| {
                bind_sample(query.bind(sample.vm_id.as_str()), sample).bind(detail.as_str())
            },
        )
        .await?;
        Ok(())
    }

    async fn insert_service_changes(
        tx: &mut Tx<Self>,
        changes: &[ServiceStateChange],
    ) -> Result<()> {
        for change in changes {
            sqlx::query(
                "INSERT INTO service_history (vm_id, service, from_state, to_state, at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .bind(change.vm_id.as_str())
            .bind(change.service.as_str())
            .bind(change.from_state.as_deref())
            .bind(change.to_state.as_deref())
            .bind(change.at.timestamp_millis())
            .execute(&mut **tx)
            .await
            .map_err(ctx("replace_inventories: history"))?;
        }
        Ok(())
    }

    async fn insert_vm_error_rows(tx: &mut Tx<Self>, errors: &[VmErrorRecord]) -> Result<()> {
        with_values(
            tx,
            "insert_vm_errors",
            errors,
            ERROR_ROWS,
            |values| {
                format!("INSERT INTO vm_errors (vm_id, at, code, message, details) VALUES {values}")
            },
            |query, e| {
                query
                    .bind(e.vm_id.as_str())
                    .bind(e.at.timestamp_millis())
                    .bind(e.code.as_deref())
                    .bind(e.message.as_str())
                    .bind(e.details.as_deref())
            },
        )
        .await?;
        Ok(())
    }
}

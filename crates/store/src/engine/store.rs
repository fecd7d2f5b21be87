//! [`Store`] for every [`Backend`]: what each operation does, in which order and under which
//! transaction, and the statements both backends run alike.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Database, Encode, Executor, IntoArguments, Type};

use super::sql::{AVERAGED_SAMPLES, MERGED_BUCKETS};
use super::{AgentUpdate, Backend, Column, RowsAffected, TxKind, rows};
use crate::alerts::AlertStore;
use crate::common::{self, HOUR_MS, MINUTE_MS, Plan, ctx, db_error, floor_to, from_ms, json_error};
use crate::protocol::message::VmIdentification;
use crate::users::UserStore;
use crate::{
    CommandLogEntry, Inventory, InventoryKind, MaintenanceReport, MetricSample, MetricSeries,
    NameSource, Resolution, Result, Retention, ServiceStateChange, Store, StoreError,
    VmErrorRecord, VmRecord, VmStatusUpdate, VmTelemetry,
};
use infinibay_console::TicketStore;

/// Raw rows deleted per statement by `delete_vm`.
const DELETE_VM_BATCH: i64 = 10_000;

/// `vm_key = <key of the VM with id $1>`, for the rows of one VM's metrics.
const KEY_OF_VM: &str = "vm_key = (SELECT key FROM vms WHERE id = $1)";

/// A metric point per raw sample of VM `$1` in `[$2, $3]`.
const RAW_POINTS: &str = "SELECT at, cpu, cpu, cpu, CAST(mem_used_kb AS DOUBLE PRECISION), \
     mem_total_kb, disk_read_bps, disk_write_bps, net_rx_bps, net_tx_bps, CAST(1 AS BIGINT) \
     FROM metric_samples WHERE vm_key = (SELECT key FROM vms WHERE id = $1) \
     AND at >= $2 AND at <= $3 ORDER BY at";

/// A metric point per `$4`-ms bucket of the raw samples of VM `$1` in `[$2, $3]`.
fn raw_bucket_points<B: Backend>() -> String {
    format!(
        "SELECT {}, {AVERAGED_SAMPLES}, COUNT(*) FROM metric_samples \
         WHERE {KEY_OF_VM} AND at >= $2 AND at <= $3 GROUP BY 1 ORDER BY 1",
        B::bucket_start("at", "$4")
    )
}

/// A metric point per `$4`-ms bucket of the rollup rows of `table` of VM `$1` in `[$2, $3]`.
fn rollup_points<B: Backend>(table: &str) -> String {
    format!(
        "SELECT {}, {MERGED_BUCKETS}, CAST(SUM(samples) AS BIGINT) FROM {table} \
         WHERE {KEY_OF_VM} AND bucket >= $2 AND bucket <= $3 GROUP BY 1 ORDER BY 1",
        B::bucket_start("bucket", "$4")
    )
}

/// `(id, first seen)` in VM-id order (the lock order of every batch that writes `vms` rows),
/// each id once with its first sighting in `vms`.
fn registrations(mut vms: Vec<(&str, DateTime<Utc>)>) -> Vec<(&str, DateTime<Utc>)> {
    vms.sort_by(|a, b| a.0.cmp(b.0));
    vms.dedup_by(|later, first| later.0 == first.0);
    vms
}

#[async_trait]
impl<B: Backend> Store for B
where
    for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c, Database = B::Db>,
    for<'q> <B::Db as Database>::Arguments<'q>: IntoArguments<'q, B::Db>,
    usize: ColumnIndex<<B::Db as Database>::Row>,
    for<'q> &'q str: Encode<'q, B::Db> + Type<B::Db>,
    for<'q> Option<&'q str>: Encode<'q, B::Db>,
    for<'q> Option<i64>: Encode<'q, B::Db>,
    for<'q> Option<f64>: Encode<'q, B::Db>,
    for<'q> Option<B::Time>: Encode<'q, B::Db>,
    i64: Column<B::Db>,
    f64: Column<B::Db>,
    bool: Column<B::Db>,
    String: Column<B::Db>,
    B: TicketStore,
{
    fn backend(&self) -> &'static str {
        B::NAME
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.core().reader)
            .await
            .map_err(ctx("ping"))?;
        Ok(())
    }

    fn concurrent_batches(&self) -> usize {
        B::CONCURRENT_BATCHES
    }

    fn pool_stats(&self) -> Option<crate::PoolStats> {
        let reader = &self.core().reader;
        Some(crate::PoolStats {
            max: reader.options().get_max_connections(),
            open: reader.size(),
            idle: u32::try_from(reader.num_idle()).unwrap_or(u32::MAX),
        })
    }

    fn users(&self) -> &dyn UserStore {
        self
    }

    fn tickets(&self) -> &dyn TicketStore {
        self
    }

    fn alerts(&self) -> &dyn AlertStore {
        self
    }

    // ----- VMs ---------------------------------------------------------------------------

    async fn upsert_vms(&self, vms: &[(String, DateTime<Utc>)]) -> Result<()> {
        let vms = registrations(vms.iter().map(|(id, at)| (id.as_str(), *at)).collect());
        for chunk in vms.chunks(B::REGISTRATIONS_PER_TRANSACTION) {
            let mut tx = self.begin(TxKind::Plain).await?;
            B::register_vms(&mut tx, chunk).await?;
            let ids: Vec<&str> = chunk.iter().map(|(id, _)| *id).collect();
            let keys = B::vm_keys(&mut tx, &ids).await?;
            tx.commit().await.map_err(ctx("upsert_vms: commit"))?;
            for (id, key) in keys {
                self.core().hot.know(&id, key);
            }
        }
        Ok(())
    }

    async fn set_vm_statuses(&self, updates: &[VmStatusUpdate]) -> Result<u64> {
        let mut sorted: Vec<&VmStatusUpdate> = updates.iter().collect();
        sorted.sort_by(|a, b| a.vm_id.cmp(&b.vm_id));
        self.update_statuses(&sorted).await
    }

    async fn set_vm_agents(&self, agents: &[(String, VmIdentification)]) -> Result<u64> {
        let mut sorted = agents
            .iter()
            .map(|(vm_id, agent)| {
                Ok(AgentUpdate {
                    vm_id,
                    agent: serde_json::to_string(agent).map_err(|e| json_error("agent info", e))?,
                    hostname: &agent.hostname,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        sorted.sort_by(|a, b| a.vm_id.cmp(b.vm_id));
        self.update_agents(&sorted).await
    }

    async fn set_vm_names(&self, names: &[(String, String)], source: NameSource) -> Result<u64> {
        // A person's name always wins; the hypervisor's only over the agent's or the id, and
        // rows that already say the same are not rewritten.
        let statement = match source {
            NameSource::Person => "UPDATE vms SET name = $2, name_source = $3 WHERE id = $1",
            NameSource::Hypervisor => {
                "UPDATE vms SET name = $2, name_source = $3 WHERE id = $1                  AND name_source <> 'user' AND (name <> $2 OR name_source <> $3)"
            }
        };
        let mut sorted: Vec<&(String, String)> = names.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let mut tx = self.begin(TxKind::Plain).await?;
        let mut changed = 0;
        for (id, name) in sorted {
            changed += sqlx::query(statement)
                .bind(id.as_str())
                .bind(name.as_str())
                .bind(source.as_str())
                .execute(&mut *tx)
                .await
                .map_err(ctx("set_vm_names"))?
                .rows_affected();
        }
        tx.commit().await.map_err(ctx("set_vm_names: commit"))?;
        Ok(changed)
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
            .execute(&self.core().writer)
            .await
            .map_err(ctx("set_vm_owner"))?
            .rows_affected();
        if updated == 0 {
            return Err(StoreError::NotFound(format!("vm {id}")));
        }
        Ok(())
    }

    async fn set_vm_name(&self, id: &str, name: &str) -> Result<()> {
        let updated = sqlx::query("UPDATE vms SET name = $2, name_source = 'user' WHERE id = $1")
            .bind(id)
            .bind(name)
            .execute(&self.core().writer)
            .await
            .map_err(ctx("set_vm_name"))?
            .rows_affected();
        if updated == 0 {
            return Err(StoreError::NotFound(format!("vm {id}")));
        }
        Ok(())
    }

    async fn get_vm(&self, id: &str) -> Result<Option<VmRecord>> {
        let row: Option<rows::VmRow<B::Time>> =
            sqlx::query_as(&format!("{} WHERE v.id = $1", B::VM_SELECT))
                .bind(id)
                .fetch_optional(&self.core().reader)
                .await
                .map_err(ctx("get_vm"))?;
        row.map(|row| Ok(self.core().overlay(rows::vm::<B>(row)?)))
            .transpose()
    }

    async fn list_vms(&self) -> Result<Vec<VmRecord>> {
        let rows: Vec<rows::VmRow<B::Time>> =
            sqlx::query_as(&format!("{} ORDER BY v.id", B::VM_SELECT))
                .fetch_all(&self.core().reader)
                .await
                .map_err(ctx("list_vms"))?;
        rows.into_iter()
            .map(|row| Ok(self.core().overlay(rows::vm::<B>(row)?)))
            .collect()
    }

    async fn delete_vm(&self, id: &str) -> Result<()> {
        let core = self.core();
        core.hot.forget(id);
        // Raw samples can be many: delete them in slices so the writer is never held long.
        let slice = B::delete_some("metric_samples", KEY_OF_VM);
        loop {
            let deleted = sqlx::query(&slice)
                .bind(id)
                .bind(DELETE_VM_BATCH)
                .execute(&core.writer)
                .await
                .map_err(ctx("delete_vm: samples"))?
                .rows_affected();
            if deleted < DELETE_VM_BATCH as u64 {
                break;
            }
        }
        // Waits for the sample batches in flight; later ones plan after the `forget` below.
        let mut tx = self.begin(TxKind::DeleteVm).await?;
        let by_key = common::VM_KEY_TABLES.map(|t| format!("DELETE FROM {t} WHERE {KEY_OF_VM}"));
        let by_id = common::VM_ID_TABLES.map(|t| format!("DELETE FROM {t} WHERE vm_id = $1"));
        for statement in by_key.iter().chain(&by_id) {
            sqlx::query(statement)
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
        // A batch since the first `forget` may have cached the VM's key again. Forgotten
        // before the commit, while this transaction holds the write serialisation point
        // (SQLite: the only write connection; PostgreSQL: the delete lock): the next batch
        // plans after it and registers the VM anew rather than using the dead key.
        core.hot.forget(id);
        tx.commit().await.map_err(ctx("delete_vm: commit"))?;
        if deleted == 0 {
            return Err(StoreError::NotFound(format!("vm {id}")));
        }
        Ok(())
    }

    // ----- Ingest ------------------------------------------------------------------------

    async fn insert_samples(&self, samples: &[MetricSample]) -> Result<()> {
        if samples.is_empty() {
            return Ok(());
        }
        if samples.iter().any(common::has_non_finite) {
            tracing::warn!(target: "infinibay::store", "non-finite metric values stored as 0");
        }
        let core = self.core();
        let newest = common::newest_per_vm(samples);
        let oldest = samples
            .iter()
            .map(|s| s.received_at.timestamp_millis())
            .min()
            .unwrap_or_default();
        let oldest_minute = B::to_db(from_ms(floor_to(oldest, MINUTE_MS))?);
        let mut tx = self.begin(TxKind::Samples).await?;
        // Planned inside the transaction, which holds the write serialisation point (SQLite:
        // the only write connection; PostgreSQL: the shared delete lock): a `delete_vm` (which
        // forgets the VM before its commit) is either wholly before this batch, so the VM's
        // key is not used any more, or wholly after it, and deletes this batch's rows too. No
        // orphan rows.
        let plan = core.hot.plan(samples, &newest);
        let mut learned = HashMap::new();
        if let Some(&first) = plan.unknown.first() {
            let first_seen = samples[first].received_at;
            let unknown: Vec<(&str, DateTime<Utc>)> = plan
                .unknown
                .iter()
                .map(|&i| (samples[i].vm_id.as_str(), first_seen))
                .collect();
            B::register_vms(&mut tx, &unknown).await?;
            let ids: Vec<&str> = unknown.iter().map(|(id, _)| *id).collect();
            learned = B::vm_keys(&mut tx, &ids).await?;
        }
        let keys = common::sample_keys(samples, &plan.keys, &learned)?;
        B::insert_sample_rows(&mut tx, samples, &keys).await?;
        if !plan.persist.is_empty() {
            let persist: Vec<&MetricSample> = plan.persist.iter().map(|&i| &samples[i]).collect();
            B::write_latest(&mut tx, &persist).await?;
        }
        // A sample older than the minute watermark: that minute is rolled up again.
        sqlx::query(
            "UPDATE rollup_state SET done_until = $1 WHERE tier = 'minute' AND done_until > $1",
        )
        .bind(oldest_minute)
        .execute(&mut *tx)
        .await
        .map_err(ctx("insert_samples: watermark"))?;
        // Recorded before the commit, still holding the serialisation point, so that no
        // `delete_vm` can run between the commit and this and have its VM cached again.
        let learned_ids: Vec<String> = learned.keys().cloned().collect();
        core.hot.committed(samples, &newest, &plan.persist, learned);
        if let Err(e) = tx.commit().await {
            core.hot.forget_all(&learned_ids);
            return Err(db_error("insert_samples: commit", e));
        }
        Ok(())
    }

    async fn replace_inventories(
        &self,
        inventories: &[Inventory],
    ) -> Result<Vec<ServiceStateChange>> {
        let mut changes = Vec::new();
        let Some(first) = inventories.first() else {
            return Ok(changes);
        };
        let mut texts = Vec::with_capacity(inventories.len());
        for inv in inventories {
            common::require_array(&inv.items, &inv.vm_id)?;
            texts.push(serde_json::to_string(&inv.items).map_err(|e| json_error("inventory", e))?);
        }
        let vms = registrations(
            inventories
                .iter()
                .map(|i| (i.vm_id.as_str(), first.received_at))
                .collect(),
        );
        let read_stored = format!(
            "SELECT items_hash, CASE WHEN kind = 'services' THEN items{} END \
             FROM vm_inventory WHERE vm_id = $1 AND kind = $2{}",
            B::JSON_TEXT,
            B::LOCK_READ_ROW
        );
        let write = format!(
            "INSERT INTO vm_inventory (vm_id, kind, received_at, items_hash, items) \
             VALUES ($1, $2, $3, $4, $5{}) ON CONFLICT (vm_id, kind) DO UPDATE SET \
             received_at = excluded.received_at, items_hash = excluded.items_hash, \
             items = excluded.items",
            B::JSON_PARAM
        );
        let mut tx = self.begin(TxKind::Plain).await?;
        B::register_vms(&mut tx, &vms).await?;
        for (inv, text) in inventories.iter().zip(&texts) {
            let kind = common::kind_str(inv.kind);
            let hash = common::fingerprint(text);
            let stored: Option<(i64, Option<String>)> = sqlx::query_as(&read_stored)
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
                    B::insert_service_changes(&mut tx, &diff).await?;
                }
                changes.extend(diff);
            }
            sqlx::query(&write)
                .bind(inv.vm_id.as_str())
                .bind(kind)
                .bind(B::to_db(inv.received_at))
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
        let Some(first) = errors.first() else {
            return Ok(());
        };
        let vms = registrations(
            errors
                .iter()
                .map(|e| (e.vm_id.as_str(), first.at))
                .collect(),
        );
        let mut tx = self.begin(TxKind::Plain).await?;
        B::register_vms(&mut tx, &vms).await?;
        B::insert_vm_error_rows(&mut tx, errors).await?;
        tx.commit().await.map_err(ctx("insert_vm_errors: commit"))?;
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        let core = self.core();
        let mut tx = self.begin(TxKind::Flush).await?;
        let pending = core.hot.pending();
        if pending.is_empty() {
            return Ok(());
        }
        let refs: Vec<&MetricSample> = pending.iter().collect();
        B::write_latest(&mut tx, &refs).await?;
        core.hot.flushed(&pending);
        tx.commit().await.map_err(ctx("flush: commit"))?;
        Ok(())
    }

    // ----- Collection settings ---------------------------------------------------------

    async fn set_vm_telemetry(&self, t: &VmTelemetry) -> Result<()> {
        let collectors =
            serde_json::to_string(&t.collectors).map_err(|e| json_error("collectors", e))?;
        sqlx::query(&format!(
            "INSERT INTO vm_telemetry (vm_id, interval_secs, collectors, updated_by, updated_at, \
             applied_at) VALUES ($1, $2, $3{}, $4, $5, $6) ON CONFLICT (vm_id) DO UPDATE SET \
             interval_secs = excluded.interval_secs, collectors = excluded.collectors, \
             updated_by = excluded.updated_by, updated_at = excluded.updated_at, \
             applied_at = excluded.applied_at",
            B::JSON_PARAM
        ))
        .bind(t.vm_id.as_str())
        .bind(i64::from(t.interval_secs))
        .bind(collectors.as_str())
        .bind(t.updated_by)
        .bind(B::to_db(t.updated_at))
        .bind(t.applied_at.map(B::to_db))
        .execute(&self.core().writer)
        .await
        .map_err(ctx("set_vm_telemetry"))?;
        Ok(())
    }

    async fn mark_vm_telemetry_applied(&self, vm_id: &str, at: DateTime<Utc>) -> Result<()> {
        sqlx::query("UPDATE vm_telemetry SET applied_at = $2 WHERE vm_id = $1")
            .bind(vm_id)
            .bind(B::to_db(at))
            .execute(&self.core().writer)
            .await
            .map_err(ctx("mark_vm_telemetry_applied"))?;
        Ok(())
    }

    async fn vm_telemetry(&self, vm_id: Option<&str>) -> Result<Vec<VmTelemetry>> {
        let rows: Vec<rows::TelemetryRow<B::Time>> = sqlx::query_as(&format!(
            "SELECT vm_id, interval_secs, collectors{}, updated_by, updated_at, applied_at \
             FROM vm_telemetry WHERE ($1 IS NULL OR vm_id = $1) ORDER BY vm_id",
            B::JSON_TEXT
        ))
        .bind(vm_id)
        .fetch_all(&self.core().reader)
        .await
        .map_err(ctx("vm_telemetry"))?;
        rows.into_iter().map(rows::telemetry::<B>).collect()
    }

    // ----- Commands ----------------------------------------------------------------------

    async fn log_command(&self, entry: &CommandLogEntry) -> Result<()> {
        let command =
            serde_json::to_string(&entry.command).map_err(|e| json_error("command", e))?;
        let response = entry
            .response
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| json_error("command response", e))?;
        let written = sqlx::query(&format!(
            "INSERT INTO command_log (id, vm_id, user_id, kind, command, response, success, \
             duration_ms, created_at) VALUES ($1, $2, $3, $4, $5{json}, $6{json}, $7, $8, $9) \
             ON CONFLICT (id) DO UPDATE SET response = excluded.response, \
             success = excluded.success, duration_ms = excluded.duration_ms \
             WHERE command_log.vm_id = excluded.vm_id",
            json = B::JSON_PARAM
        ))
        .bind(entry.id.as_str())
        .bind(entry.vm_id.as_str())
        .bind(entry.user_id)
        .bind(entry.kind.as_str())
        .bind(command.as_str())
        .bind(response.as_deref())
        .bind(entry.success)
        .bind(entry.duration_ms)
        .bind(B::to_db(entry.created_at))
        .execute(&self.core().writer)
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
        let rows: Vec<rows::CommandLogRow<B::Time>> = sqlx::query_as(&format!(
            "SELECT id, vm_id, user_id, kind, command{json}, response{json}, success, \
             duration_ms, created_at FROM command_log WHERE vm_id = $1 \
             ORDER BY created_at DESC, {seq} DESC LIMIT $2",
            json = B::JSON_TEXT,
            seq = B::COMMAND_LOG_SEQ
        ))
        .bind(vm_id)
        .bind(i64::from(limit))
        .fetch_all(&self.core().reader)
        .await
        .map_err(ctx("command_logs"))?;
        rows.into_iter().map(rows::command_log::<B>).collect()
    }

    // ----- Queries -----------------------------------------------------------------------

    async fn latest_sample(&self, vm_id: &str) -> Result<Option<MetricSample>> {
        if let Some(sample) = self.core().hot.latest(vm_id) {
            return Ok(Some(sample));
        }
        let row: Option<rows::LatestRow<B::Time>> = sqlx::query_as(&format!(
            "SELECT vm_id, at, guest_time, cpu, mem_used_kb, mem_total_kb, swap_used_kb, \
             disk_used_percent, disk_read_bps, disk_write_bps, net_rx_bps, net_tx_bps, load1, \
             detail{} FROM vm_latest_sample WHERE vm_id = $1",
            B::JSON_TEXT
        ))
        .bind(vm_id)
        .fetch_optional(&self.core().reader)
        .await
        .map_err(ctx("latest_sample"))?;
        row.map(rows::latest::<B>).transpose()
    }

    async fn metrics_series(
        &self,
        vm_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        max_points: u32,
    ) -> Result<MetricSeries> {
        let reader = &self.core().reader;
        let plan = common::plan(
            Utc::now(),
            self.core().retention(),
            from,
            to,
            max_points,
            || async {
                sqlx::query_scalar::<_, i64>(&format!(
                    "SELECT COUNT(*) FROM metric_samples WHERE {KEY_OF_VM} \
                     AND at >= $2 AND at <= $3"
                ))
                .bind(vm_id)
                .bind(B::to_db(from))
                .bind(B::to_db(to))
                .fetch_one(reader)
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
            Plan::Raw => (Resolution::Raw, None, RAW_POINTS.to_owned(), from),
            Plan::RawBuckets { width_ms } => (
                Resolution::Raw,
                Some(width_ms),
                raw_bucket_points::<B>(),
                from,
            ),
            Plan::Rollup { tier, width_ms } => {
                let (table, step) = if tier == Resolution::Minute {
                    ("metric_minute", MINUTE_MS)
                } else {
                    ("metric_hour", HOUR_MS)
                };
                // A bucket that started before `from` still covers part of the window.
                let lower = from_ms(floor_to(from.timestamp_millis(), step))?;
                (tier, Some(width_ms), rollup_points::<B>(table), lower)
            }
        };
        let mut query = sqlx::query_as::<_, rows::PointRow<B::Time>>(&sql)
            .bind(vm_id)
            .bind(B::to_db(lower))
            .bind(B::to_db(to));
        if let Some(width_ms) = width_ms {
            query = query.bind(width_ms);
        }
        let points = query
            .fetch_all(reader)
            .await
            .map_err(ctx("metrics"))?
            .into_iter()
            .map(rows::point::<B>)
            .collect::<Result<Vec<_>>>()?;
        Ok(MetricSeries {
            resolution,
            bucket_seconds: width_ms.map(|w| w / 1000),
            points,
        })
    }

    async fn inventory(&self, vm_id: &str, kind: InventoryKind) -> Result<Option<Inventory>> {
        let row: Option<(B::Time, String)> = sqlx::query_as(&format!(
            "SELECT received_at, items{} FROM vm_inventory WHERE vm_id = $1 AND kind = $2",
            B::JSON_TEXT
        ))
        .bind(vm_id)
        .bind(common::kind_str(kind))
        .fetch_optional(&self.core().reader)
        .await
        .map_err(ctx("inventory"))?;
        row.map(|(received_at, items)| {
            Ok(Inventory {
                vm_id: vm_id.to_owned(),
                kind,
                received_at: B::from_db(received_at)?,
                items: serde_json::from_str(&items)
                    .map_err(|e| json_error("stored inventory", e))?,
            })
        })
        .transpose()
    }

    async fn service_history(&self, vm_id: &str, limit: u32) -> Result<Vec<ServiceStateChange>> {
        let rows: Vec<(String, Option<String>, Option<String>, B::Time)> = sqlx::query_as(
            "SELECT service, from_state, to_state, at FROM service_history WHERE vm_id = $1 \
             ORDER BY at DESC, seq DESC LIMIT $2",
        )
        .bind(vm_id)
        .bind(i64::from(limit))
        .fetch_all(&self.core().reader)
        .await
        .map_err(ctx("service_history"))?;
        rows.into_iter()
            .map(|(service, from_state, to_state, at)| {
                Ok(ServiceStateChange {
                    vm_id: vm_id.to_owned(),
                    service,
                    from_state,
                    to_state,
                    at: B::from_db(at)?,
                })
            })
            .collect()
    }

    async fn vm_errors(&self, vm_id: &str, limit: u32) -> Result<Vec<VmErrorRecord>> {
        let rows: Vec<rows::VmErrorRow<B::Time>> = sqlx::query_as(
            "SELECT at, code, message, details FROM vm_errors WHERE vm_id = $1 \
             ORDER BY at DESC, seq DESC LIMIT $2",
        )
        .bind(vm_id)
        .bind(i64::from(limit))
        .fetch_all(&self.core().reader)
        .await
        .map_err(ctx("vm_errors"))?;
        rows.into_iter()
            .map(|row| rows::vm_error::<B>(vm_id, row))
            .collect()
    }

    // ----- Maintenance -------------------------------------------------------------------

    async fn maintain(
        &self,
        now: DateTime<Utc>,
        retention: Retention,
        batch: u32,
    ) -> Result<MaintenanceReport> {
        self.core().set_retention(retention);
        self.flush().await?;
        let mut report = common::maintain(self, now, retention, batch).await?;
        // Console tickets live minutes, not days: whatever expired more than
        // `TICKET_RETENTION` ago goes, whatever the configured retention.
        report.pruned += self
            .purge_expired(now - super::TICKET_RETENTION)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(report)
    }
}

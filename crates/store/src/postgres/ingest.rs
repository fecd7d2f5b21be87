//! PostgreSQL's batch writes: one statement per table with a column array per field
//! (`… SELECT … FROM UNNEST($1::text[], …)`), rows in VM-id order where batches may meet.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::Postgres;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;

use super::PgStore;
use crate::common::{ctx, finite, finite_opt, json_error};
use crate::engine::sql::{LATEST_COLUMNS, LATEST_UPSERT};
use crate::engine::{AgentUpdate, Batches, Tx};
use crate::{MetricSample, Result, ServiceStateChange, VmErrorRecord, VmStatusUpdate};

/// `UNNEST` of the sample columns, `$1` (the VM) to `$13`, without its closing parenthesis.
const UNNEST_SAMPLE_COLUMNS: &str = "UNNEST($1::text[], $2::timestamptz[], $3::timestamptz[], \
     $4::float8[], $5::int8[], $6::int8[], $7::int8[], $8::float8[], $9::float8[], $10::float8[], \
     $11::float8[], $12::float8[], $13::float8[]";

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
    fn of<I: IntoIterator<Item = &'a MetricSample>>(samples: I) -> Self {
        let mut columns = Self::default();
        for s in samples {
            columns.vm_id.push(&s.vm_id);
            columns.at.push(s.received_at);
            columns.guest_time.push(s.guest_time);
            columns.cpu.push(finite(s.cpu_percent));
            columns.mem_used_kb.push(s.mem_used_kb);
            columns.mem_total_kb.push(s.mem_total_kb);
            columns.swap_used_kb.push(s.swap_used_kb);
            columns
                .disk_used_percent
                .push(finite_opt(s.disk_used_percent));
            columns.disk_read_bps.push(finite(s.disk_read_bps));
            columns.disk_write_bps.push(finite(s.disk_write_bps));
            columns.net_rx_bps.push(finite(s.net_rx_bps));
            columns.net_tx_bps.push(finite(s.net_tx_bps));
            columns.load1.push(finite(s.load1));
        }
        columns
    }

    /// Everything but the VM column (which the caller bound as `$1`).
    fn bind_values<'q>(
        &'q self,
        query: Query<'q, Postgres, PgArguments>,
    ) -> Query<'q, Postgres, PgArguments> {
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

impl Batches for PgStore {
    /// One `UNNEST` statement registers any number of VMs.
    const REGISTRATIONS_PER_TRANSACTION: usize = usize::MAX;

    async fn register_vms(tx: &mut Tx<Self>, vms: &[(&str, DateTime<Utc>)]) -> Result<()> {
        let ids: Vec<&str> = vms.iter().map(|(id, _)| *id).collect();
        let first_seen: Vec<DateTime<Utc>> = vms.iter().map(|(_, at)| *at).collect();
        sqlx::query(
            "INSERT INTO vms (id, name, created_at) \
             SELECT id, id, at FROM UNNEST($1::text[], $2::timestamptz[]) AS t(id, at) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&ids)
        .bind(&first_seen)
        .execute(&mut **tx)
        .await
        .map_err(ctx("register vms"))?;
        Ok(())
    }

    async fn vm_keys(tx: &mut Tx<Self>, vm_ids: &[&str]) -> Result<HashMap<String, i64>> {
        Ok(
            sqlx::query_as::<_, (String, i64)>("SELECT id, key FROM vms WHERE id = ANY($1)")
                .bind(vm_ids)
                .fetch_all(&mut **tx)
                .await
                .map_err(ctx("vm keys"))?
                .into_iter()
                .collect(),
        )
    }

    async fn update_statuses(&self, updates: &[&VmStatusUpdate]) -> Result<u64> {
        let ids: Vec<&str> = updates.iter().map(|u| u.vm_id.as_str()).collect();
        let statuses: Vec<&str> = updates.iter().map(|u| u.status.as_str()).collect();
        let seen: Vec<Option<DateTime<Utc>>> = updates.iter().map(|u| u.last_seen).collect();
        Ok(sqlx::query(
            "UPDATE vms SET status = u.status, last_seen = GREATEST(vms.last_seen, u.last_seen) \
             FROM UNNEST($1::text[], $2::text[], $3::timestamptz[]) AS u(id, status, last_seen) \
             WHERE vms.id = u.id",
        )
        .bind(&ids)
        .bind(&statuses)
        .bind(&seen)
        .execute(&self.core.writer)
        .await
        .map_err(ctx("set_vm_statuses"))?
        .rows_affected())
    }

    async fn update_agents(&self, agents: &[AgentUpdate<'_>]) -> Result<u64> {
        let ids: Vec<&str> = agents.iter().map(|a| a.vm_id).collect();
        let texts: Vec<&str> = agents.iter().map(|a| a.agent.as_str()).collect();
        let hostnames: Vec<&str> = agents.iter().map(|a| a.hostname).collect();
        Ok(sqlx::query(
            "UPDATE vms SET agent = u.agent::jsonb, \
             name = CASE WHEN vms.name_source NOT IN ('user', 'libvirt') AND u.hostname <> '' \
                         THEN u.hostname ELSE vms.name END, \
             name_source = CASE WHEN vms.name_source NOT IN ('user', 'libvirt') AND u.hostname <> '' \
                                THEN 'agent' ELSE vms.name_source END \
             FROM UNNEST($1::text[], $2::text[], $3::text[]) AS u(id, agent, hostname) \
             WHERE vms.id = u.id",
        )
        .bind(&ids)
        .bind(&texts)
        .bind(&hostnames)
        .execute(&self.core.writer)
        .await
        .map_err(ctx("set_vm_agents"))?
        .rows_affected())
    }

    async fn insert_sample_rows(
        tx: &mut Tx<Self>,
        samples: &[MetricSample],
        keys: &[i64],
    ) -> Result<()> {
        let columns = SampleColumns::of(samples);
        let insert = format!(
            "INSERT INTO metric_samples (vm_key, at, guest_time, cpu, mem_used_kb, mem_total_kb, \
             swap_used_kb, disk_used_percent, disk_read_bps, disk_write_bps, net_rx_bps, \
             net_tx_bps, load1) SELECT * FROM {})",
            UNNEST_SAMPLE_COLUMNS.replacen("$1::text[]", "$1::int8[]", 1)
        );
        columns
            .bind_values(sqlx::query(&insert).bind(keys))
            .execute(&mut **tx)
            .await
            .map_err(ctx("insert_samples"))?;
        Ok(())
    }

    async fn write_latest(tx: &mut Tx<Self>, samples: &[&MetricSample]) -> Result<()> {
        let latest = SampleColumns::of(samples.iter().copied());
        let details = samples
            .iter()
            .map(|s| serde_json::to_string(&s.detail))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| json_error("sample detail", e))?;
        let upsert = format!(
            "INSERT INTO vm_latest_sample ({LATEST_COLUMNS}) \
             SELECT v, a, g, c, mu, mt, su, dp, dr, dw, rx, tx, l1, d::json \
             FROM {UNNEST_SAMPLE_COLUMNS}, $14::text[]) \
             AS t(v, a, g, c, mu, mt, su, dp, dr, dw, rx, tx, l1, d) {LATEST_UPSERT}"
        );
        latest
            .bind_values(sqlx::query(&upsert).bind(&latest.vm_id))
            .bind(&details)
            .execute(&mut **tx)
            .await
            .map_err(ctx("write latest samples"))?;
        Ok(())
    }

    async fn insert_service_changes(
        tx: &mut Tx<Self>,
        changes: &[ServiceStateChange],
    ) -> Result<()> {
        let ids: Vec<&str> = changes.iter().map(|c| c.vm_id.as_str()).collect();
        let services: Vec<&str> = changes.iter().map(|c| c.service.as_str()).collect();
        let from: Vec<Option<&str>> = changes.iter().map(|c| c.from_state.as_deref()).collect();
        let to: Vec<Option<&str>> = changes.iter().map(|c| c.to_state.as_deref()).collect();
        let at: Vec<DateTime<Utc>> = changes.iter().map(|c| c.at).collect();
        sqlx::query(
            "INSERT INTO service_history (vm_id, service, from_state, to_state, at) \
             SELECT v, s, f, t, a FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], \
             $5::timestamptz[]) WITH ORDINALITY AS u(v, s, f, t, a, n) ORDER BY n",
        )
        .bind(&ids)
        .bind(&services)
        .bind(&from)
        .bind(&to)
        .bind(&at)
        .execute(&mut **tx)
        .await
        .map_err(ctx("replace_inventories: history"))?;
        Ok(())
    }

    async fn insert_vm_error_rows(tx: &mut Tx<Self>, errors: &[VmErrorRecord]) -> Result<()> {
        let ids: Vec<&str> = errors.iter().map(|e| e.vm_id.as_str()).collect();
        let at: Vec<DateTime<Utc>> = errors.iter().map(|e| e.at).collect();
        let code: Vec<Option<&str>> = errors.iter().map(|e| e.code.as_deref()).collect();
        let message: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
        let details: Vec<Option<&str>> = errors.iter().map(|e| e.details.as_deref()).collect();
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
        .execute(&mut **tx)
        .await
        .map_err(ctx("insert_vm_errors"))?;
        Ok(())
    }
}

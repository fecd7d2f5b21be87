//! Rows as both backends read them (tuples, in the order of their `SELECT`), and the records
//! they become.

use std::sync::Arc;

use super::Connections;
use crate::common::{json_error, parse_status};
use crate::protocol::message::{MetricsBody, VmIdentification};
use crate::users::{Role, UserRecord};
use crate::{
    CommandLogEntry, MetricPoint, MetricSample, Result, StoreError, VmErrorRecord, VmRecord,
    VmTelemetry,
};

/// `Dialect::VM_SELECT`: id, name, owner, department, status, last seen, agent, created.
pub type VmRow<T> = (
    String,
    String,
    Option<i64>,
    Option<String>,
    String,
    Option<T>,
    Option<String>,
    T,
);

pub fn vm<B: Connections>(row: VmRow<B::Time>) -> Result<VmRecord> {
    let (id, name, owner_id, department, status, last_seen, agent, created_at) = row;
    Ok(VmRecord {
        id,
        name,
        owner_id,
        department,
        status: parse_status(&status)?,
        last_seen: last_seen.map(B::from_db).transpose()?,
        agent: agent
            .map(|text| serde_json::from_str::<VmIdentification>(&text))
            .transpose()
            .map_err(|e| json_error("stored agent info", e))?,
        created_at: B::from_db(created_at)?,
    })
}

/// id, vm, user, kind, command, response, success, duration, created.
pub type CommandLogRow<T> = (
    String,
    String,
    Option<i64>,
    String,
    String,
    Option<String>,
    bool,
    i64,
    T,
);

pub fn command_log<B: Connections>(row: CommandLogRow<B::Time>) -> Result<CommandLogEntry> {
    let (id, vm_id, user_id, kind, command, response, success, duration_ms, created_at) = row;
    Ok(CommandLogEntry {
        id,
        vm_id,
        user_id,
        kind,
        command: serde_json::from_str(&command).map_err(|e| json_error("stored command", e))?,
        response: response
            .map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(|e| json_error("stored response", e))?,
        success,
        duration_ms,
        created_at: B::from_db(created_at)?,
    })
}

/// `vm_latest_sample`: vm, at, guest time, cpu, mem used/total, swap, disk used %, disk r/w,
/// net rx/tx, load1, detail.
pub type LatestRow<T> = (
    String,
    T,
    Option<T>,
    f64,
    i64,
    i64,
    Option<i64>,
    Option<f64>,
    f64,
    f64,
    f64,
    f64,
    f64,
    String,
);

pub fn latest<B: Connections>(row: LatestRow<B::Time>) -> Result<MetricSample> {
    let detail: Arc<MetricsBody> =
        serde_json::from_str(&row.13).map_err(|e| json_error("stored detail", e))?;
    Ok(MetricSample {
        received_at: B::from_db(row.1)?,
        guest_time: row.2.map(B::from_db).transpose()?,
        cpu_percent: row.3,
        mem_used_kb: row.4,
        mem_total_kb: row.5,
        swap_used_kb: row.6,
        disk_used_percent: row.7,
        disk_read_bps: row.8,
        disk_write_bps: row.9,
        net_rx_bps: row.10,
        net_tx_bps: row.11,
        load1: row.12,
        detail,
        vm_id: row.0,
    })
}

/// A metric point: at, cpu avg/min/max, mem used avg, mem total, disk r/w, net rx/tx, samples.
pub type PointRow<T> = (T, f64, f64, f64, f64, i64, f64, f64, f64, f64, i64);

pub fn point<B: Connections>(row: PointRow<B::Time>) -> Result<MetricPoint> {
    Ok(MetricPoint {
        at: B::from_db(row.0)?,
        cpu_avg: row.1,
        cpu_min: row.2,
        cpu_max: row.3,
        mem_used_kb_avg: row.4,
        mem_total_kb: row.5,
        disk_read_bps: row.6,
        disk_write_bps: row.7,
        net_rx_bps: row.8,
        net_tx_bps: row.9,
        samples: row.10,
    })
}

/// at, code, message, details.
pub type VmErrorRow<T> = (T, Option<String>, String, Option<String>);

pub fn vm_error<B: Connections>(vm_id: &str, row: VmErrorRow<B::Time>) -> Result<VmErrorRecord> {
    let (at, code, message, details) = row;
    Ok(VmErrorRecord {
        vm_id: vm_id.to_owned(),
        at: B::from_db(at)?,
        code,
        message,
        details,
    })
}

/// vm, interval, collectors (JSON text), updated by, updated at, applied at.
pub type TelemetryRow<T> = (String, i64, String, Option<i64>, T, Option<T>);

pub fn telemetry<B: Connections>(row: TelemetryRow<B::Time>) -> Result<VmTelemetry> {
    let (vm_id, interval_secs, collectors, updated_by, updated_at, applied_at) = row;
    Ok(VmTelemetry {
        vm_id,
        interval_secs: u32::try_from(interval_secs).map_err(|_| {
            StoreError::Other(format!(
                "stored collection interval {interval_secs} out of range"
            ))
        })?,
        collectors: serde_json::from_str(&collectors)
            .map_err(|e| json_error("stored collectors", e))?,
        updated_by,
        updated_at: B::from_db(updated_at)?,
        applied_at: applied_at.map(B::from_db).transpose()?,
    })
}

/// `USER_COLUMNS`: id, username, password hash, role, department, namespace, password
/// changed, created.
pub type UserRow<T> = (i64, String, String, String, Option<String>, String, T, T);

/// The columns of a [`UserRow`].
pub const USER_COLUMNS: &str =
    "id, username, password_hash, role, department, namespace, password_changed_at, created_at";

pub fn user<B: Connections>(row: UserRow<B::Time>, permissions: Vec<String>) -> Result<UserRecord> {
    let (id, username, password_hash, role, department, namespace, changed, created) = row;
    Ok(UserRecord {
        id,
        username,
        password_hash,
        role: Role::parse(&role)
            .ok_or_else(|| StoreError::Other(format!("unknown stored role `{role}`")))?,
        department,
        permissions,
        namespace,
        password_changed_at: B::from_db(changed)?,
        created_at: B::from_db(created)?,
    })
}

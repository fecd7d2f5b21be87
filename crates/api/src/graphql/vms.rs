//! What a seed client asks of one VM beyond its live state: `getVmMetrics` in seed 001's
//! shape, the errors its agent reported, its collection settings (read and set), and its
//! display name. Merged into the query and mutation roots (`schema`).

use async_graphql::{Context, ID, Json, Object, SimpleObject};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use infinibay_control::TelemetryRequest;
use infinibay_store::{MetricPoint as StorePoint, MetricSample, VmErrorRecord, VmTelemetry};

use super::context::{caller, realtime, vm_scope};
use super::types::{User, Vm, vm_object};
use crate::error::{ApiError, ApiResult};

/// Longest display name, in characters.
pub const MAX_VM_NAME_CHARS: usize = 64;
/// Points `getVmMetrics` returns at most (the store picks the resolution that fits).
const SEED_METRICS_POINTS: u32 = 1_000;

/// One point of `getVmMetrics`, in seed 001's `VmMetrics` shape. Numbers are the sample's
/// (raw resolution) or its bucket's averages; `diskUsage` and `networkStats` always carry the
/// rates (`io_stats`, `bytes_*_per_sec`), and the newest point also the whole detail of the
/// newest sample (`usage_stats` per mount, `stats` per interface), which the host keeps for
/// the newest sample only.
#[derive(SimpleObject)]
pub struct VmMetrics {
    /// `<vmId>:<epoch ms>`.
    id: ID,
    vm_id: ID,
    /// Sample (or bucket start) time, host clock.
    timestamp: DateTime<Utc>,
    /// Percent.
    cpu_usage: f64,
    /// kB.
    memory_used: f64,
    /// kB.
    memory_total: f64,
    disk_usage: Json<Value>,
    network_stats: Json<Value>,
    /// Raw samples the point stands for (1 at raw resolution).
    samples: i32,
}

impl VmMetrics {
    fn from_point(vm_id: &str, p: &StorePoint, newest: Option<&MetricSample>) -> Self {
        let mut disk = json!({
            "io_stats": {"read_bytes_per_sec": p.disk_read_bps, "write_bytes_per_sec": p.disk_write_bps},
        });
        let mut network = json!({
            "bytes_received_per_sec": p.net_rx_bps,
            "bytes_sent_per_sec": p.net_tx_bps,
        });
        if let Some(sample) = newest {
            disk["usage_stats"] = json!(sample.detail.disk.usage_stats);
            network["stats"] = json!(sample.detail.network.stats);
        }
        Self {
            id: ID(format!("{vm_id}:{}", p.at.timestamp_millis())),
            vm_id: ID(vm_id.to_owned()),
            timestamp: p.at,
            cpu_usage: p.cpu_avg,
            memory_used: p.mem_used_kb_avg,
            memory_total: p.mem_total_kb as f64,
            disk_usage: Json(disk),
            network_stats: Json(network),
            samples: i32::try_from(p.samples).unwrap_or(i32::MAX),
        }
    }
}

/// An error a VM's agent reported.
#[derive(SimpleObject)]
pub struct VmError {
    vm_id: ID,
    /// Host time.
    at: DateTime<Utc>,
    /// The agent's short kind, when it gave one.
    code: Option<String>,
    /// What went wrong (seed 001's `error`).
    message: String,
    details: Option<String>,
}

impl From<VmErrorRecord> for VmError {
    fn from(e: VmErrorRecord) -> Self {
        Self {
            vm_id: ID(e.vm_id),
            at: e.at,
            code: e.code,
            message: e.message,
            details: e.details,
        }
    }
}

/// What a VM's agent collects and how often, as set with `setVmTelemetry`.
pub struct TelemetrySettings(pub(crate) VmTelemetry);

#[Object]
impl TelemetrySettings {
    /// Seconds between samples.
    async fn interval(&self) -> i32 {
        i32::try_from(self.0.interval_secs).unwrap_or(i32::MAX)
    }
    /// The collectors that run; the others are off.
    async fn collectors(&self) -> &[String] {
        &self.0.collectors
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
    async fn updated_by(&self, ctx: &Context<'_>) -> ApiResult<Option<User>> {
        let Some(id) = self.0.updated_by else {
            return Ok(None);
        };
        let user = super::context::api(ctx)?
            .store()
            .users()
            .get_user(id)
            .await?;
        Ok(user.as_ref().map(User::from))
    }
    /// When the agent last confirmed these settings (`null`: not yet).
    async fn applied_at(&self) -> Option<DateTime<Utc>> {
        self.0.applied_at
    }
}

/// What `setVmTelemetry` did.
#[derive(SimpleObject)]
pub struct TelemetryResult {
    settings: TelemetrySettings,
    /// The agent confirmed them now.
    applied: bool,
    /// Why not (they are sent when the agent next connects).
    pending_reason: Option<String>,
}

/// Queries about one VM's history and settings.
#[derive(Default)]
pub struct VmQuery;

#[Object]
impl VmQuery {
    /// The last `hours` of metrics in seed 001's shape, newest first, at most 1,000 points
    /// (the resolution the store picks, docs/storage.md).
    async fn get_vm_metrics(
        &self,
        ctx: &Context<'_>,
        vm_id: ID,
        #[graphql(default = 24)] hours: i32,
    ) -> ApiResult<Vec<VmMetrics>> {
        let api = vm_scope(ctx, &vm_id).await?;
        if !(1..=24 * 366).contains(&hours) {
            return Err(ApiError::invalid("hours must be 1–8784"));
        }
        let to = Utc::now();
        let from = to - chrono::Duration::hours(hours.into());
        let series = api
            .store()
            .metrics_series(&vm_id, from, to, SEED_METRICS_POINTS)
            .await?;
        let latest = api.latest_sample(&vm_id).await?;
        let newest_at = series.points.last().map(|p| p.at);
        Ok(series
            .points
            .iter()
            .rev()
            .map(|p| {
                let detail = latest
                    .as_deref()
                    .filter(|s| Some(p.at) == newest_at && s.received_at >= p.at);
                VmMetrics::from_point(&vm_id, p, detail)
            })
            .collect())
    }

    /// Errors the VM's agent reported, newest first (at most `limit`, 1–500).
    async fn vm_errors(
        &self,
        ctx: &Context<'_>,
        vm_id: ID,
        #[graphql(default = 50)] limit: i32,
    ) -> ApiResult<Vec<VmError>> {
        let api = vm_scope(ctx, &vm_id).await?;
        let limit = limit.clamp(1, 500) as u32;
        let errors = api.store().vm_errors(&vm_id, limit).await?;
        Ok(errors.into_iter().map(VmError::from).collect())
    }

    /// The VM's collection settings; `null` when none were set (the agent's own apply).
    async fn vm_telemetry(
        &self,
        ctx: &Context<'_>,
        vm_id: ID,
    ) -> ApiResult<Option<TelemetrySettings>> {
        let api = vm_scope(ctx, &vm_id).await?;
        let mut settings = api.store().vm_telemetry(Some(&vm_id)).await?;
        Ok(settings.pop().map(TelemetrySettings))
    }
}

/// Changes to one VM that its owner (or an ADMIN) may make.
#[derive(Default)]
pub struct VmMutation;

#[Object]
impl VmMutation {
    /// Give the VM a display name (1–64 characters, no control characters); the agent's
    /// host name no longer replaces it. Announced as `<namespace>:vms:update`.
    async fn rename_vm(&self, ctx: &Context<'_>, vm_id: ID, name: String) -> ApiResult<Vm> {
        let api = vm_scope(ctx, &vm_id).await?;
        let name = name.trim();
        let chars = name.chars().count();
        if chars == 0 || chars > MAX_VM_NAME_CHARS || name.chars().any(char::is_control) {
            return Err(ApiError::invalid(format!(
                "a VM name is 1–{MAX_VM_NAME_CHARS} characters without control characters"
            )));
        }
        let store = api.store();
        store.set_vm_name(&vm_id, name).await?;
        let vm = store
            .get_vm(&vm_id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("VM {} not found", vm_id.as_str())))?;
        realtime(ctx)?.vm_updated(&vm).await;
        Ok(vm_object(api, vm).await)
    }

    /// Set what the VM's agent collects and how often (`interval` 1–3600 s; `collectors`
    /// from `system_metrics`, `process_snapshot`, `port_usage`, `application_usage`,
    /// `service_inventory`: the ones listed run, the others stop). Stored, sent to the agent
    /// now and again whenever it connects.
    async fn set_vm_telemetry(
        &self,
        ctx: &Context<'_>,
        vm_id: ID,
        interval: i32,
        collectors: Vec<String>,
    ) -> ApiResult<TelemetryResult> {
        let user = caller(ctx)?;
        let api = vm_scope(ctx, &vm_id).await?;
        let interval_secs = u32::try_from(interval)
            .map_err(|_| ApiError::invalid(format!("interval {interval} s is out of range")))?;
        if collectors.len() > infinibay_control::telemetry::COLLECTORS.len() * 2 {
            return Err(ApiError::invalid("too many collectors named"));
        }
        let outcome = api
            .control()
            .set_telemetry(
                &vm_id,
                TelemetryRequest {
                    interval_secs,
                    collectors,
                },
                Some(user.id),
            )
            .await?;
        if let Some(vm) = api.store().get_vm(&vm_id).await? {
            realtime(ctx)?.vm_updated(&vm).await;
        }
        Ok(TelemetryResult {
            settings: TelemetrySettings(outcome.settings),
            applied: outcome.applied,
            pending_reason: outcome.pending_reason,
        })
    }
}

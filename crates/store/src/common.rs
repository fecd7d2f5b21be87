//! Pure helpers of the shared store code (`engine`): the resolution rule, the maintenance pass,
//! service-state diffing, error mapping.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};

use crate::{
    InventoryKind, MaintenanceReport, MetricSample, Resolution, Retention, ServiceStateChange,
    StoreError, VmStatus,
};

/// A minute and an hour in milliseconds (bucket steps of the rollup tiers).
pub(crate) const MINUTE_MS: i64 = 60_000;
pub(crate) const HOUR_MS: i64 = 3_600_000;

/// A minute is rolled up only once it ended this long ago, so that samples still queued in
/// the ingest pipeline (stamped with their receive time) land before their minute is summed.
/// Later arrivals lower the rollup watermark and get their bucket recomputed anyway.
pub(crate) const ROLLUP_GRACE: Duration = Duration::seconds(10);

/// Where the points of a metrics query come from and how they are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Nothing to return (empty or inverted window).
    Empty,
    /// One point per raw sample.
    Raw,
    /// Raw samples grouped into buckets of `width_ms`.
    RawBuckets { width_ms: i64 },
    /// Rollup rows of `tier`, grouped into buckets of `width_ms` (a multiple of the tier's step).
    Rollup { tier: Resolution, width_ms: i64 },
}

/// Tables holding rows of one VM by its id, deleted with the VM.
pub(crate) const VM_ID_TABLES: [&str; 8] = [
    "vm_latest_sample",
    "vm_inventory",
    "service_history",
    "command_log",
    "vm_errors",
    "alerts",
    "alert_rules",
    "vm_telemetry",
];

/// Tables holding rows of one VM by its integer key, deleted with the VM.
pub(crate) const VM_KEY_TABLES: [&str; 3] = ["metric_samples", "metric_minute", "metric_hour"];

/// The statements of a maintenance pass (`engine::rollups`, for every backend); the pass
/// itself (what is rolled up and pruned, in which order and slices) is [`maintain`]. Times are
/// ms since the epoch.
pub(crate) trait MaintenanceOps: Sync {
    /// Where the tier's roll-up stands (`None` before the first).
    fn watermark(
        &self,
        tier: Resolution,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;
    /// Time of the first source row (raw sample for minutes, minute for hours) at or after
    /// `from`.
    fn first_source_row(
        &self,
        tier: Resolution,
        from: i64,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;
    /// Recomputes the tier's buckets of `[start, end)` and moves its watermark to `end` (and
    /// the hour watermark back to the hour of `start` for minutes), in one transaction.
    /// Returns the buckets written.
    fn roll_range(
        &self,
        tier: Resolution,
        start: i64,
        end: i64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Moves the tier's watermark forward to `end` (never back).
    fn advance_watermark(
        &self,
        tier: Resolution,
        end: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Deletes at most `batch` rows of `table` whose `column` is before `cutoff`.
    fn prune_batch(
        &self,
        table: &'static str,
        column: &'static str,
        cutoff: i64,
        batch: i64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// One maintenance pass: roll minutes and hours forward, then prune every table by its
/// retention, `batch` rows per statement.
pub(crate) async fn maintain<M: MaintenanceOps>(
    db: &M,
    now: DateTime<Utc>,
    retention: Retention,
    batch: u32,
) -> Result<MaintenanceReport, StoreError> {
    let batch = i64::from(batch.max(1));
    let ms = |t: DateTime<Utc>| t.timestamp_millis();
    let raw_cutoff = ms(now - retention.raw);
    let minute_cutoff = ms(now - retention.minute);
    let hour_cutoff = ms(now - retention.hour);
    // Minutes whose raw rows may already be partly pruned are never recomputed.
    let minute_end = floor_to(ms(now - ROLLUP_GRACE), MINUTE_MS);
    let minute_buckets = roll_tier(
        db,
        Resolution::Minute,
        ceil_to(raw_cutoff, MINUTE_MS),
        minute_end,
    )
    .await?;
    let hour_buckets = roll_tier(
        db,
        Resolution::Hour,
        ceil_to(minute_cutoff, HOUR_MS),
        floor_to(minute_end, HOUR_MS),
    )
    .await?;
    let events_cutoff = ms(now - retention.events);
    let mut pruned = 0;
    for (table, column, cutoff) in [
        ("metric_samples", "at", raw_cutoff),
        ("metric_minute", "bucket", minute_cutoff),
        ("metric_hour", "bucket", hour_cutoff),
        ("service_history", "at", events_cutoff),
        ("vm_errors", "at", events_cutoff),
        ("command_log", "created_at", events_cutoff),
        // Resolved alerts only: an open one has no `resolved_at` and is never older.
        ("alerts", "resolved_at", events_cutoff),
    ] {
        loop {
            let deleted = db.prune_batch(table, column, cutoff, batch).await?;
            pruned += deleted;
            if deleted < u64::try_from(batch).unwrap_or(u64::MAX) {
                break;
            }
        }
    }
    Ok(MaintenanceReport {
        minute_buckets,
        hour_buckets,
        pruned,
    })
}

/// Rolls one tier forward from its watermark to `end`, one step-sized range per transaction,
/// skipping empty stretches.
async fn roll_tier<M: MaintenanceOps>(
    db: &M,
    tier: Resolution,
    oldest_allowed: i64,
    end: i64,
) -> Result<u64, StoreError> {
    let step = if tier == Resolution::Minute {
        MINUTE_MS
    } else {
        HOUR_MS
    };
    // Far enough back for "from the beginning" and still a valid PostgreSQL timestamp.
    const BEGINNING: i64 = -62_000_000_000_000;
    let mut cursor = db
        .watermark(tier)
        .await?
        .unwrap_or(BEGINNING)
        .max(oldest_allowed);
    let mut written = 0;
    while cursor < end {
        let Some(next_source) = db.first_source_row(tier, cursor).await? else {
            break;
        };
        let start = floor_to(next_source, step).max(cursor);
        if start >= end {
            break;
        }
        let stop = (start + step).min(end);
        written += db.roll_range(tier, start, stop).await?;
        cursor = stop;
    }
    // Every source row before `end` is now rolled up (or there were none).
    db.advance_watermark(tier, end).await?;
    Ok(written)
}

/// `minute` / `hour`, as `rollup_state.tier` names them.
pub(crate) fn tier_name(tier: Resolution) -> &'static str {
    if tier == Resolution::Minute {
        "minute"
    } else {
        "hour"
    }
}

/// The keys of every sample's VM: known before the batch (`planned`) or registered by it
/// (`learned`).
pub(crate) fn sample_keys(
    samples: &[MetricSample],
    planned: &[Option<i64>],
    learned: &std::collections::HashMap<String, i64>,
) -> Result<Vec<i64>, StoreError> {
    samples
        .iter()
        .zip(planned)
        .map(|(s, key)| {
            key.or_else(|| learned.get(&s.vm_id).copied())
                .ok_or_else(|| {
                    StoreError::Other(format!(
                        "insert_samples: VM {} has no key after registration",
                        s.vm_id
                    ))
                })
        })
        .collect()
}

/// Caps what a caller can ask for, so one query cannot make the database build millions of
/// points.
pub(crate) const MAX_POINTS_CAP: u32 = 100_000;

/// The resolution rule (see `docs/storage.md`):
/// 1. Window starts inside raw retention: raw samples when there are at most `max_points` of
///    them (`raw_count` is asked only then), else raw samples averaged into
///    `ceil(window / max_points)`-wide buckets.
/// 2. Window starts inside minute retention: minute rollups, merged into wider buckets
///    (multiples of a minute) when there are more minutes than `max_points`.
/// 3. Otherwise hour rollups, merged likewise.
pub(crate) async fn plan<F, Fut>(
    now: DateTime<Utc>,
    retention: Retention,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    max_points: u32,
    raw_count: F,
) -> Result<Plan, StoreError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<i64, StoreError>>,
{
    if to <= from {
        return Ok(Plan::Empty);
    }
    let max_points = i64::from(max_points.clamp(1, MAX_POINTS_CAP));
    let window_ms = (to - from).num_milliseconds().max(1);
    let wanted_width_ms = div_ceil(window_ms, max_points).max(1_000);
    if from >= now - retention.raw {
        if raw_count().await? <= max_points {
            return Ok(Plan::Raw);
        }
        return Ok(Plan::RawBuckets {
            width_ms: round_up(wanted_width_ms, 1_000),
        });
    }
    let tier = if from >= now - retention.minute {
        Resolution::Minute
    } else {
        Resolution::Hour
    };
    let step = if tier == Resolution::Minute {
        MINUTE_MS
    } else {
        HOUR_MS
    };
    Ok(Plan::Rollup {
        tier,
        width_ms: round_up(wanted_width_ms, step),
    })
}

fn div_ceil(a: i64, b: i64) -> i64 {
    (a + b - 1) / b
}

fn round_up(value: i64, step: i64) -> i64 {
    div_ceil(value, step) * step
}

/// Start of the minute/hour/bucket containing `ms` (epoch-aligned, floor).
pub(crate) fn floor_to(ms: i64, step: i64) -> i64 {
    ms.div_euclid(step) * step
}

/// First bucket start at or after `ms`.
pub(crate) fn ceil_to(ms: i64, step: i64) -> i64 {
    floor_to(ms + step - 1, step)
}

/// Milliseconds since the epoch to a time; `None` only for absurd values.
pub(crate) fn from_ms(ms: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| StoreError::Other(format!("stored time {ms} ms is out of range")))
}

/// Guests are sanitised upstream; this is the last line against a NaN reaching a column
/// (SQLite would turn it into NULL and fail the whole batch, PostgreSQL would poison every
/// average it enters).
pub(crate) fn finite(value: f64) -> f64 {
    if value.is_finite() { value } else { 0.0 }
}

/// Same for optional columns: non-finite becomes absent.
pub(crate) fn finite_opt(value: Option<f64>) -> Option<f64> {
    value.filter(|v| v.is_finite())
}

/// Whether any numeric column of the sample was not finite (logged by the caller).
pub(crate) fn has_non_finite(sample: &MetricSample) -> bool {
    ![
        sample.cpu_percent,
        sample.disk_read_bps,
        sample.disk_write_bps,
        sample.net_rx_bps,
        sample.net_tx_bps,
        sample.load1,
        sample.disk_used_percent.unwrap_or(0.0),
    ]
    .iter()
    .all(|v| v.is_finite())
}

/// For every VM in the batch, the index of its newest sample, sorted by VM id (a stable lock
/// order, so concurrent batches never deadlock on PostgreSQL).
pub(crate) fn newest_per_vm(samples: &[MetricSample]) -> Vec<usize> {
    let mut newest: BTreeMap<&str, usize> = BTreeMap::new();
    for (index, sample) in samples.iter().enumerate() {
        newest
            .entry(sample.vm_id.as_str())
            .and_modify(|best| {
                if sample.received_at >= samples[*best].received_at {
                    *best = index;
                }
            })
            .or_insert(index);
    }
    newest.into_values().collect()
}

/// Lower-case name of an inventory kind, as stored.
pub(crate) fn kind_str(kind: InventoryKind) -> &'static str {
    match kind {
        InventoryKind::Processes => "processes",
        InventoryKind::Ports => "ports",
        InventoryKind::Applications => "applications",
        InventoryKind::Services => "services",
    }
}

/// Inverse of [`VmStatus::as_str`].
pub(crate) fn parse_status(text: &str) -> Result<VmStatus, StoreError> {
    match text {
        "online" => Ok(VmStatus::Online),
        "offline" => Ok(VmStatus::Offline),
        other => Err(StoreError::Other(format!("unknown VM status `{other}`"))),
    }
}

/// FNV-1a, 64 bit: a stable fingerprint of an inventory's JSON text, so an unchanged
/// re-send (the common case, up to 64 KB) is recognised without reading the stored copy.
pub(crate) fn fingerprint(text: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// Inventories must be JSON arrays (of the protocol's item type for their kind).
pub(crate) fn require_array(items: &serde_json::Value, vm_id: &str) -> Result<(), StoreError> {
    if items.is_array() {
        Ok(())
    } else {
        Err(StoreError::Other(format!(
            "inventory items of VM {vm_id} must be a JSON array"
        )))
    }
}

/// Service name → active state of a service inventory's items.
fn service_states(items: &serde_json::Value) -> BTreeMap<String, Option<String>> {
    items
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|item| {
                    let name = item.get("name")?.as_str()?.to_owned();
                    let state = item
                        .get("active_state")
                        .and_then(|s| s.as_str())
                        .map(str::to_owned);
                    Some((name, state))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// State changes between the previous and the new service list. With no previous list there
/// is nothing to compare against, so the first inventory of a VM yields no changes.
pub(crate) fn diff_services(
    vm_id: &str,
    previous: Option<&serde_json::Value>,
    next: &serde_json::Value,
    at: DateTime<Utc>,
) -> Vec<ServiceStateChange> {
    let Some(previous) = previous else {
        return Vec::new();
    };
    let before = service_states(previous);
    let after = service_states(next);
    let mut changes = Vec::new();
    for (name, state) in &after {
        match before.get(name) {
            Some(old) if old == state => {}
            Some(old) => changes.push(change(vm_id, name, old.clone(), state.clone(), at)),
            None => changes.push(change(vm_id, name, None, state.clone(), at)),
        }
    }
    for (name, old) in &before {
        if !after.contains_key(name) {
            changes.push(change(vm_id, name, old.clone(), None, at));
        }
    }
    changes
}

fn change(
    vm_id: &str,
    service: &str,
    from_state: Option<String>,
    to_state: Option<String>,
    at: DateTime<Utc>,
) -> ServiceStateChange {
    ServiceStateChange {
        vm_id: vm_id.to_owned(),
        service: service.to_owned(),
        from_state,
        to_state,
        at,
    }
}

/// Maps a driver error to the crate's error, with what we were doing.
pub(crate) fn db_error(context: &str, error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::RowNotFound => StoreError::NotFound(context.to_owned()),
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(format!("{context}: {db}"))
        }
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
            StoreError::NotFound(format!("{context}: the VM does not exist ({db})"))
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(format!("{context}: {error}")),
        _ => StoreError::Other(format!("{context}: {error}")),
    }
}

/// `map_err` adapter for [`db_error`].
pub(crate) fn ctx(context: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |error| db_error(context, error)
}

/// JSON (de)serialisation failure as a store error.
pub(crate) fn json_error(context: &str, error: serde_json::Error) -> StoreError {
    StoreError::Other(format!("{context}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).expect("valid test time")
    }

    async fn plan_for(from_ago_s: i64, window_s: i64, max: u32, raw_rows: i64) -> Plan {
        let now = t(1_800_000_000);
        let from = now - Duration::seconds(from_ago_s);
        plan(
            now,
            Retention::default(),
            from,
            from + Duration::seconds(window_s),
            max,
            || async move { Ok(raw_rows) },
        )
        .await
        .expect("plan never fails when counting succeeds")
    }

    #[tokio::test]
    async fn plan_prefers_raw_when_the_samples_fit() {
        assert_eq!(plan_for(3600, 3600, 3600, 3600).await, Plan::Raw);
    }

    #[tokio::test]
    async fn plan_buckets_raw_when_too_many_samples() {
        assert_eq!(
            plan_for(86_400, 86_400, 500, 86_400).await,
            Plan::RawBuckets { width_ms: 173_000 }
        );
    }

    #[tokio::test]
    async fn plan_uses_minutes_beyond_raw_retention_and_hours_beyond_minute_retention() {
        let three_days = 3 * 86_400;
        assert_eq!(
            plan_for(three_days, 3600, 500, 0).await,
            Plan::Rollup {
                tier: Resolution::Minute,
                width_ms: MINUTE_MS
            }
        );
        assert_eq!(
            plan_for(three_days, three_days, 500, 0).await,
            Plan::Rollup {
                tier: Resolution::Minute,
                width_ms: 9 * MINUTE_MS
            }
        );
        assert_eq!(
            plan_for(60 * 86_400, 60 * 86_400, 2000, 0).await,
            Plan::Rollup {
                tier: Resolution::Hour,
                width_ms: HOUR_MS
            }
        );
        assert_eq!(plan_for(10, -5, 100, 0).await, Plan::Empty);
    }

    #[test]
    fn service_diff_reports_changed_new_and_removed_services() {
        let before = json!([
            {"name": "a", "active_state": "active"},
            {"name": "b", "active_state": "active"},
            {"name": "gone", "active_state": "failed"}
        ]);
        let after = json!([
            {"name": "a", "active_state": "active"},
            {"name": "b", "active_state": "failed"},
            {"name": "new", "active_state": "active"}
        ]);
        let changes = diff_services("vm", Some(&before), &after, t(0));
        let summary: Vec<_> = changes
            .iter()
            .map(|c| {
                (
                    c.service.as_str(),
                    c.from_state.as_deref(),
                    c.to_state.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("b", Some("active"), Some("failed")),
                ("new", None, Some("active")),
                ("gone", Some("failed"), None)
            ]
        );
        assert!(diff_services("vm", None, &after, t(0)).is_empty());
    }

    #[test]
    fn bucket_edges_are_epoch_aligned() {
        assert_eq!(floor_to(119_999, MINUTE_MS), 60_000);
        assert_eq!(ceil_to(60_001, MINUTE_MS), 120_000);
        assert_eq!(ceil_to(60_000, MINUTE_MS), 60_000);
        assert_eq!(floor_to(-1, MINUTE_MS), -60_000);
    }
}

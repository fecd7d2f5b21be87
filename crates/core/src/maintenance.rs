//! Periodic roll-ups and retention: `Store::maintain` every `interval_secs`.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use infinibay_store::Store;

use crate::config::{MaintenanceConfig, secs};
use crate::diag::{Deduper, Occurrence};

const TARGET: &str = "infinibay::maintenance";

/// Run maintenance passes until `stop`. The first pass runs one interval after start, so that
/// start-up is not slowed by a backlog of roll-ups.
pub async fn run(store: Arc<dyn Store>, config: MaintenanceConfig, stop: CancellationToken) {
    let every = secs(config.interval_secs);
    let mut dedup = Deduper::new(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
        let pass = store.maintain(Utc::now(), config.retention(), config.batch);
        let result = tokio::select! {
            r = pass => r,
            _ = stop.cancelled() => break,
        };
        match result {
            Ok(report) => {
                if dedup.clear("maintain").is_some() || report.pruned > 0 {
                    tracing::info!(target: TARGET, minute_buckets = report.minute_buckets,
                        hour_buckets = report.hour_buckets, pruned = report.pruned, "maintenance pass");
                } else {
                    tracing::debug!(target: TARGET, minute_buckets = report.minute_buckets,
                        hour_buckets = report.hour_buckets, "maintenance pass");
                }
            }
            Err(e) => match dedup.record("maintain") {
                Occurrence::First => tracing::error!(target: TARGET, "maintenance failed: {e}"),
                Occurrence::Summary(n) => {
                    tracing::error!(target: TARGET, "maintenance failed {n} more times: {e}")
                }
                Occurrence::Suppressed => {}
            },
        }
    }
}

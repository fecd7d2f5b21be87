//! The store's health as a background probe sees it, so that `/healthz` answers from memory
//! and never waits for the database.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use infinibay_store::Store;

/// How often the background probe pings the store, how long one ping may take, and how old
/// its last answer may be before `/healthz` calls the probe itself stuck.
const STORE_PROBE_EVERY: Duration = Duration::from_secs(2);
const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(3);
const STORE_PROBE_STALE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
struct ProbeResult {
    finished: Instant,
    latency: Duration,
    error: Option<String>,
}

/// The store's health as the background probe last saw it. `/healthz` answers from here and
/// never waits for the database (a stalled writer or an exhausted pool must not make the
/// health check hang with it).
#[derive(Debug, Default)]
pub struct StoreHealth {
    last: Mutex<Option<ProbeResult>>,
}

/// What [`StoreHealth::snapshot`] says.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoreProbe {
    /// The last probe answered in time and no probe is overdue.
    pub ok: bool,
    /// Why not, when not.
    pub error: Option<String>,
    /// Milliseconds since the last probe finished (`None`: none finished yet).
    pub age_ms: Option<u64>,
    /// How long the last probe's round trip took, milliseconds.
    pub latency_ms: Option<f64>,
}

impl StoreHealth {
    pub(crate) fn record(&self, latency: Duration, error: Option<String>) {
        let result = ProbeResult {
            finished: Instant::now(),
            latency,
            error,
        };
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
    }

    /// The latest probe result. Before the first probe finishes the store counts as healthy:
    /// `serve` pinged it before starting the host.
    pub fn snapshot(&self) -> StoreProbe {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(last) = last else {
            return StoreProbe {
                ok: true,
                error: None,
                age_ms: None,
                latency_ms: None,
            };
        };
        let age = last.finished.elapsed();
        let error = match last.error {
            Some(e) => Some(e),
            None if age > STORE_PROBE_STALE => {
                Some(format!("no store probe finished for {} s", age.as_secs()))
            }
            None => None,
        };
        StoreProbe {
            ok: error.is_none(),
            error,
            age_ms: Some(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
            latency_ms: Some(last.latency.as_secs_f64() * 1000.0),
        }
    }
}

/// Pings the store every [`STORE_PROBE_EVERY`], each ping bounded by [`STORE_PROBE_TIMEOUT`],
/// until `stop` (the core runs one; so does `infinibay api`, which has no core).
pub async fn probe_store(store: Arc<dyn Store>, health: Arc<StoreHealth>, stop: CancellationToken) {
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = tokio::time::timeout(STORE_PROBE_TIMEOUT, store.ping()) => r,
        };
        let error = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!(
                "the store did not answer a ping within {} s",
                STORE_PROBE_TIMEOUT.as_secs()
            )),
        };
        health.record(started.elapsed(), error);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(STORE_PROBE_EVERY) => {}
        }
    }
}

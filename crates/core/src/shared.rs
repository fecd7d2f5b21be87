//! What every task of the running host shares: discovery and the connection tasks get it,
//! the [`crate::host::Host`] handle owns it.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::alerts::AlertEngine;
use crate::bus::Bus;
use crate::config::CoreConfig;
use crate::diag::ProcessIdentity;
use crate::registry::Registry;
use crate::store_writer::StoreQueue;
use crate::telemetry::TelemetryBook;

/// What every task of the host shares.
pub(crate) struct Shared {
    pub config: CoreConfig,
    pub registry: Arc<Registry>,
    pub queue: Arc<StoreQueue>,
    pub bus: Arc<dyn Bus>,
    pub alerts: Arc<AlertEngine>,
    pub telemetry: Arc<TelemetryBook>,
    pub identity: ProcessIdentity,
    /// Discovery and connection tasks (and their writers).
    pub tasks: TaskTracker,
    /// Cancelled to stop discovery and every connection.
    pub shutdown: CancellationToken,
}

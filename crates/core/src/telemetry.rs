//! Collection settings (`setVmTelemetry`): kept per VM in memory (read from the store at
//! start), sent to the agent as `configure` when they are set, and again every time the agent
//! identifies itself (each connect, and each agent restart), so that a VM never runs on its
//! agent's defaults after a reconnect.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::Utc;

use infinibay_control::command::CommandError;
use infinibay_control::telemetry::{TelemetryOutcome, TelemetryRequest, configure};
use infinibay_protocol::message::Configure;
use infinibay_protocol::{HostMessage, encode_line};
use infinibay_store::{Store, VmStatus, VmTelemetry};

use crate::commands::CommandCenter;
use crate::registry::{Registry, VmCounters, VmEntry};

const TARGET: &str = "infinibay::telemetry";

/// How long `setVmTelemetry` waits for the agent's answer before saying "sent when it next
/// connects" (the settings are stored either way).
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// Why settings could not be set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TelemetryError {
    /// Out of range or unknown collector.
    #[error("{0}")]
    Invalid(String),
    /// No such VM.
    #[error("{0}")]
    NotFound(String),
    /// The store failed.
    #[error("storage failed: {0}")]
    Storage(String),
}

/// Every VM's settings, by VM id.
#[derive(Debug, Default)]
pub(crate) struct TelemetryBook {
    by_vm: RwLock<HashMap<String, Arc<VmTelemetry>>>,
}

impl TelemetryBook {
    fn get(&self, vm_id: &str) -> Option<Arc<VmTelemetry>> {
        self.by_vm
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(vm_id)
            .cloned()
    }

    fn put(&self, settings: VmTelemetry) {
        self.by_vm
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(settings.vm_id.clone(), Arc::new(settings));
    }

    /// Forget a deleted VM's settings.
    pub(crate) fn forget(&self, vm_id: &str) {
        self.by_vm
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(vm_id);
    }

    /// Read every VM's settings (at start) and send them to the agents already connected.
    pub(crate) async fn load(&self, store: &dyn Store, registry: &Registry) {
        match store.vm_telemetry(None).await {
            Ok(all) => {
                let count = all.len();
                for settings in all {
                    self.put(settings);
                }
                if count > 0 {
                    tracing::info!(target: TARGET, vms = count, "collection settings loaded");
                }
                for vm in registry.entries() {
                    self.send_to_connected(&vm);
                }
            }
            Err(e) => tracing::error!(target: TARGET,
                "cannot read collection settings ({e}); agents keep their own until set again"),
        }
    }

    /// The agent of `vm` identified itself (protocol `version`): send it its settings, without
    /// an id (nobody waits for the answer). The original agent (version 0) has no `configure`.
    pub(crate) fn on_identification(&self, vm: &VmEntry, version: u32) {
        if version == 0 {
            return;
        }
        if let Some(settings) = self.get(vm.id()) {
            send_without_answer(vm, &configure(&settings, None));
        }
    }

    fn send_to_connected(&self, vm: &VmEntry) {
        let version = {
            let live = vm.live();
            if live.status != VmStatus::Online {
                return;
            }
            live.agent.as_ref().map_or(0, |a| a.protocol_version)
        };
        self.on_identification(vm, version);
    }

    /// Check, store and send a VM's settings (see [`infinibay_control::VmControl::set_telemetry`]).
    pub(crate) async fn set(
        &self,
        store: &dyn Store,
        registry: &Registry,
        commands: &CommandCenter,
        vm_id: &str,
        request: TelemetryRequest,
        updated_by: Option<i64>,
    ) -> Result<TelemetryOutcome, TelemetryError> {
        let collectors = request
            .checked_collectors()
            .map_err(TelemetryError::Invalid)?;
        let storage = |e: infinibay_store::StoreError| TelemetryError::Storage(e.to_string());
        // Known to this core (perhaps not flushed yet) or to the store.
        if registry.get(vm_id).is_none() && store.get_vm(vm_id).await.map_err(storage)?.is_none() {
            return Err(TelemetryError::NotFound(format!("VM {vm_id} not found")));
        }
        let mut settings = VmTelemetry {
            vm_id: vm_id.to_owned(),
            interval_secs: request.interval_secs,
            collectors,
            updated_by,
            updated_at: Utc::now(),
            applied_at: None,
        };
        store.set_vm_telemetry(&settings).await.map_err(storage)?;
        self.put(settings.clone());
        let answer = commands
            .configure(vm_id, configure(&settings, None), ANSWER_WAIT)
            .await;
        let pending_reason = match answer {
            Ok(r) if r.success => {
                let now = Utc::now();
                store
                    .mark_vm_telemetry_applied(vm_id, now)
                    .await
                    .map_err(storage)?;
                settings.applied_at = Some(now);
                self.put(settings.clone());
                None
            }
            Ok(r) => Some(format!(
                "the agent refused the settings: {}",
                r.error
                    .map_or_else(|| "no reason given".into(), |e| e.message)
            )),
            Err(
                e @ (CommandError::UnknownVm(_)
                | CommandError::NotConnected(_)
                | CommandError::AgentOffline(_)
                | CommandError::Disconnected(..)),
            ) => Some(format!("{e}; they are sent when the agent connects")),
            Err(e) => Some(format!("{e}; they are sent again when the agent connects")),
        };
        tracing::info!(target: TARGET, vm = vm_id, interval = settings.interval_secs,
            collectors = ?settings.collectors, applied = pending_reason.is_none(), "collection settings set");
        Ok(TelemetryOutcome {
            settings,
            applied: pending_reason.is_none(),
            pending_reason,
        })
    }
}

fn send_without_answer(vm: &VmEntry, configure: &Configure) {
    let line = match encode_line(&HostMessage::Configure(configure.clone())) {
        Ok(line) => line,
        Err(e) => {
            tracing::error!(target: TARGET, vm = vm.id(), "cannot encode configure: {e}");
            return;
        }
    };
    let sent = vm
        .live()
        .outbound
        .as_ref()
        .is_some_and(|out| out.try_send(line).is_ok());
    if !sent {
        // The guest does not read; like a dropped ping, it is sent again on the next connect.
        VmCounters::bump(&vm.counters.pings_dropped);
    }
}

//! libvirt's events → the registry, the store and the bus: the libvirt source beside socket
//! discovery.
//!
//! One task applies the events of `infinibay-libvirt` in order: a snapshot on every (re)connect
//! (and after events were dropped) registers the domains the host has not seen and sets every
//! power state; each lifecycle event sets one; a lost connection makes every power state
//! `UNKNOWN` until the next snapshot. Every change is published as a [`PowerEvent`]. A domain
//! that disappears from libvirt keeps its VM (and its history) until someone deletes it.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;
use uuid::Uuid;

use infinibay_control::event::{BusEvent, PowerCause, PowerEvent};
use infinibay_control::lifecycle::PowerState;
use infinibay_libvirt::{DomainInfo, Event, Events, Libvirt, LifecycleEvent, LifecycleKind};
use infinibay_store::{NameSource, Store};

use super::power_state;
use crate::registry::VmEntry;
use crate::shared::Shared;

const TARGET: &str = "infinibay::libvirt";

/// What the watch needs besides the events.
pub(crate) struct Watch {
    pub shared: Arc<Shared>,
    pub store: Arc<dyn Store>,
    /// For the facts of a domain an event names but the host has not seen.
    pub libvirt: Libvirt,
}

/// A change to publish once the store has the VM.
struct Change {
    vm_id: String,
    previous: PowerState,
    power_state: PowerState,
    cause: PowerCause,
    kind: String,
    detail: String,
}

impl Watch {
    /// Apply events until the host stops or the libvirt handle goes away.
    pub(crate) async fn run(self, mut events: Events) {
        loop {
            let event = tokio::select! {
                _ = self.shared.shutdown.cancelled() => break,
                event = events.recv() => match event {
                    Some(event) => event,
                    None => break,
                },
            };
            match event {
                Event::Snapshot { cause, domains } => {
                    tracing::debug!(target: TARGET, ?cause, domains = domains.len(), "libvirt snapshot");
                    self.snapshot(domains).await;
                }
                Event::Lifecycle(event) => self.lifecycle(event).await,
                Event::Disconnected { reason } => self.disconnected(&reason),
            }
        }
    }

    /// Where a domain's agent channel is: what its XML names, else our path for its UUID.
    fn socket_of(&self, info: &DomainInfo) -> PathBuf {
        info.agent_socket.clone().unwrap_or_else(|| {
            infinibay_libvirt::agent_socket_path(&self.shared.config.socket_dir, info.uuid)
        })
    }

    /// Every domain as libvirt lists it now: register the new, set every state, and clear
    /// the domain of VMs libvirt no longer has.
    async fn snapshot(&self, domains: Vec<DomainInfo>) {
        let registry = &self.shared.registry;
        let now = Utc::now();
        let mut present = HashSet::with_capacity(domains.len());
        let mut new_vms = Vec::new();
        let mut names = Vec::new();
        let mut changes = Vec::new();
        for info in &domains {
            let id = vm_id(info.uuid);
            present.insert(id.clone());
            if registry.is_forgotten(&id) {
                continue;
            }
            let (vm, new) = registry.get_or_insert_domain(&id, self.socket_of(info));
            if new {
                new_vms.push((id.clone(), now));
            }
            let state = power_state(info.power_state);
            let change = vm.set_domain(&info.name, state);
            if change.name_changed {
                names.push((id.clone(), info.name.clone()));
            }
            if change.state_changed {
                changes.push(Change {
                    vm_id: id,
                    previous: change.previous,
                    power_state: state,
                    cause: PowerCause::Resync,
                    kind: PowerCause::Resync.as_str().to_owned(),
                    detail: String::new(),
                });
            }
        }
        for vm in registry.with_domain() {
            if present.contains(vm.id()) {
                continue;
            }
            if let Some(previous) = vm.clear_domain() {
                changes.push(gone(&vm, previous, "no longer listed by libvirt"));
            }
        }
        if !new_vms.is_empty() {
            tracing::info!(target: TARGET, new = new_vms.len(), domains = domains.len(),
                "libvirt domains registered as VMs");
        }
        self.store_records(&new_vms, &names).await;
        for change in changes {
            self.publish(change);
        }
    }

    async fn lifecycle(&self, event: LifecycleEvent) {
        let registry = &self.shared.registry;
        let id = vm_id(event.uuid);
        if registry.is_forgotten(&id) {
            return;
        }
        let state = power_state(event.power_state);
        // An inactive domain that was undefined no longer exists.
        let gone_now = event.kind == LifecycleKind::Undefined && !event.power_state.is_active();
        let vm = match registry.get(&id) {
            Some(vm) => vm,
            None if gone_now => return,
            None => match self.register(event.uuid).await {
                Some(vm) => vm,
                None => return,
            },
        };
        if gone_now {
            if let Some(previous) = vm.clear_domain() {
                self.publish(gone(&vm, previous, event.detail));
            }
            return;
        }
        let change = vm.set_domain(&event.name, state);
        if change.name_changed {
            self.store_records(&[], &[(id.clone(), event.name.clone())])
                .await;
        }
        if change.state_changed {
            self.publish(Change {
                vm_id: id,
                previous: change.previous,
                power_state: state,
                cause: PowerCause::Lifecycle,
                kind: event.kind.as_str().to_owned(),
                detail: event.detail.to_owned(),
            });
        }
    }

    /// A domain an event names that the host has not seen (defined or started since the last
    /// snapshot): read it and register it. `None` when it is gone again, or libvirt failed.
    async fn register(&self, uuid: Uuid) -> Option<Arc<VmEntry>> {
        let info = match self.libvirt.domain(uuid).await {
            Ok(info) => info,
            Err(infinibay_libvirt::Error::NoSuchDomain { .. }) => return None,
            Err(e) => {
                tracing::warn!(target: TARGET, vm = %uuid, "cannot read a new domain (the next resync registers it): {e}");
                return None;
            }
        };
        let id = vm_id(uuid);
        let (vm, new) = self
            .shared
            .registry
            .get_or_insert_domain(&id, self.socket_of(&info));
        if new {
            tracing::info!(target: TARGET, vm = %id, name = %info.name, "new libvirt domain registered as a VM");
            self.store_records(&[(id.clone(), Utc::now())], &[(id, info.name.clone())])
                .await;
        }
        Some(vm)
    }

    fn disconnected(&self, reason: &str) {
        tracing::warn!(target: TARGET, %reason, "power states unknown until libvirt is back");
        for vm in self.shared.registry.with_domain() {
            if let Some(previous) = vm.forget_power_state() {
                self.publish(Change {
                    vm_id: vm.id().to_owned(),
                    previous,
                    power_state: PowerState::Unknown,
                    cause: PowerCause::Disconnected,
                    kind: PowerCause::Disconnected.as_str().to_owned(),
                    detail: reason.to_owned(),
                });
            }
        }
    }

    /// Register new VMs and name them after their domains (a person's name is kept). Called
    /// before their events are published, so that whoever reads the store on an event finds
    /// the VM. The watch is not on the ingest path: it may wait for the store.
    async fn store_records(
        &self,
        new_vms: &[(String, chrono::DateTime<Utc>)],
        names: &[(String, String)],
    ) {
        if !new_vms.is_empty()
            && let Err(e) = self.store.upsert_vms(new_vms).await
        {
            tracing::warn!(target: "infinibay::store", count = new_vms.len(), "cannot register libvirt domains: {e}");
        }
        if !names.is_empty()
            && let Err(e) = self.store.set_vm_names(names, NameSource::Hypervisor).await
        {
            tracing::warn!(target: "infinibay::store", count = names.len(), "cannot store domain names: {e}");
        }
    }

    fn publish(&self, change: Change) {
        if change.cause == PowerCause::Resync {
            tracing::debug!(target: TARGET, vm = %change.vm_id, from = %change.previous,
                to = %change.power_state, "power state (resync)");
        } else {
            tracing::info!(target: TARGET, vm = %change.vm_id, from = %change.previous,
                to = %change.power_state, kind = %change.kind, detail = %change.detail, "power state");
        }
        self.shared.bus.publish(BusEvent::Power(PowerEvent {
            vm_id: change.vm_id,
            power_state: change.power_state,
            previous: change.previous,
            cause: change.cause,
            kind: change.kind,
            detail: change.detail,
            at: Utc::now(),
        }));
    }
}

/// A VM's id for a domain UUID: lower-case, hyphenated, as discovery spells socket names.
pub(crate) fn vm_id(uuid: Uuid) -> String {
    uuid.hyphenated().to_string()
}

fn gone(vm: &VmEntry, previous: PowerState, detail: &str) -> Change {
    Change {
        vm_id: vm.id().to_owned(),
        previous,
        power_state: PowerState::Unknown,
        cause: PowerCause::DomainGone,
        kind: LifecycleKind::Undefined.as_str().to_owned(),
        detail: detail.to_owned(),
    }
}

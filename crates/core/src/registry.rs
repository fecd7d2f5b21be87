//! The VMs the host knows, with their live state: connection, status, agent, the hypervisor's
//! power state, counters and the commands waiting for an answer. A VM is registered by
//! whichever sees it first, its socket (discovery) or its libvirt domain (the hypervisor
//! watch): one entry per id, the domain UUID being the socket's uuid.
//!
//! Each VM's state sits behind its own std `Mutex`, touched only by its connection task and by
//! command callers, held for a few field updates and never across an `.await`; so 10,000 VMs
//! never contend on one lock. The map itself is locked only to add a VM or look one up.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use infinibay_protocol::message::{CommandResponse, VmIdentification};
use infinibay_store::{MetricSample, VmStatus};

use infinibay_control::command::CommandError;
use infinibay_control::event::{BusEvent, StatusEvent, StatusReason};
use infinibay_control::lifecycle::PowerState;
use infinibay_control::vm::{VmSnapshot, VmStats, VmTotals};

use crate::bus::Bus;
use crate::store_writer::StoreQueue;

/// Counters of one VM since the host started.
#[derive(Debug, Default)]
pub struct VmCounters {
    /// Connection attempts.
    pub connect_attempts: AtomicU64,
    /// Connections that succeeded.
    pub connections: AtomicU64,
    /// Valid messages received.
    pub messages: AtomicU64,
    /// Lines that could not be decoded.
    pub decode_errors: AtomicU64,
    /// `system_metrics` refused (no cpu or memory, or fields of the wrong type).
    pub samples_rejected: AtomicU64,
    /// Values sanitising had to change.
    pub sanitized_fixes: AtomicU64,
    /// Responses whose id matched no pending command of this VM.
    pub unmatched_responses: AtomicU64,
    /// Times reads were paused by the rate limit.
    pub read_pauses: AtomicU64,
    /// `vm_identification` messages that named a different VM id than the socket's.
    pub identity_mismatches: AtomicU64,
    /// Pings that could not be queued (the guest does not read).
    pub pings_dropped: AtomicU64,
    /// Bytes of an incomplete line held by the decoder now (bounded by the line limit).
    pub buffered_bytes: AtomicU64,
}

impl VmCounters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A plain copy.
    pub fn snapshot(&self) -> VmStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        VmStats {
            connect_attempts: get(&self.connect_attempts),
            connections: get(&self.connections),
            messages: get(&self.messages),
            decode_errors: get(&self.decode_errors),
            samples_rejected: get(&self.samples_rejected),
            sanitized_fixes: get(&self.sanitized_fixes),
            unmatched_responses: get(&self.unmatched_responses),
            read_pauses: get(&self.read_pauses),
            identity_mismatches: get(&self.identity_mismatches),
            pings_dropped: get(&self.pings_dropped),
            buffered_bytes: get(&self.buffered_bytes),
        }
    }
}

/// A command waiting for its response.
#[derive(Debug)]
pub(crate) struct PendingSlot {
    pub reply: oneshot::Sender<Result<CommandResponse, CommandError>>,
}

#[derive(Debug)]
pub(crate) struct Live {
    pub status: VmStatus,
    /// Host time of the last status change (or of first sight): how long the agent has been
    /// offline, for alerts.
    pub status_since: DateTime<Utc>,
    pub last_seen: Option<DateTime<Utc>>,
    /// The newest sample since the host started: the one home of this fact (`/metrics`, the
    /// API's `latestMetrics`); the store persists it only to outlive a restart.
    pub latest: Option<Arc<MetricSample>>,
    pub agent: Option<VmIdentification>,
    /// Present while a socket connection is open; commands go through it. Encoded lines:
    /// a queue slot is then 24 bytes, not the size of the largest message type, which adds up
    /// over 10,000 VMs.
    pub outbound: Option<mpsc::Sender<Vec<u8>>>,
    pub pending: HashMap<String, PendingSlot>,
    pub socket_present: bool,
    /// What libvirt says of the VM; `None` when libvirt does not know it (or was never
    /// reached).
    pub domain: Option<DomainState>,
}

/// A VM's libvirt domain as last reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DomainState {
    /// libvirt's domain name.
    pub name: String,
    /// Its power state (`Unknown` while libvirt is unreachable).
    pub power_state: PowerState,
}

/// What [`VmEntry::set_domain`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DomainChange {
    /// The power state before (`Unknown` when the domain was not known).
    pub previous: PowerState,
    /// The power state changed.
    pub state_changed: bool,
    /// The domain is new to this entry, or its name changed.
    pub name_changed: bool,
}

/// One VM.
#[derive(Debug)]
pub struct VmEntry {
    id: String,
    socket_path: Mutex<PathBuf>,
    pub(crate) live: Mutex<Live>,
    /// What the alert engine watches of this VM (its own lock: evaluating rules never holds
    /// the live state's).
    pub(crate) alerts: Mutex<crate::alerts::VmAlertState>,
    /// Counters.
    pub counters: VmCounters,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a VM's lock must not take every later caller down with it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl VmEntry {
    pub(crate) fn new(id: String, socket_path: PathBuf, socket_present: bool) -> Self {
        Self {
            id,
            socket_path: Mutex::new(socket_path),
            live: Mutex::new(Live {
                status: VmStatus::Offline,
                status_since: Utc::now(),
                last_seen: None,
                latest: None,
                agent: None,
                outbound: None,
                pending: HashMap::new(),
                socket_present,
                domain: None,
            }),
            alerts: Mutex::new(crate::alerts::VmAlertState::default()),
            counters: VmCounters::default(),
        }
    }

    /// The VM id (uuid from the socket file name).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The socket file.
    pub fn socket_path(&self) -> PathBuf {
        lock(&self.socket_path).clone()
    }

    pub(crate) fn set_socket_path(&self, path: PathBuf) {
        *lock(&self.socket_path) = path;
    }

    pub(crate) fn live(&self) -> MutexGuard<'_, Live> {
        lock(&self.live)
    }

    pub(crate) fn alert_state(&self) -> MutexGuard<'_, crate::alerts::VmAlertState> {
        lock(&self.alerts)
    }

    /// Set the VM's status; on a change, queue it for storage and publish `vm:online` /
    /// `vm:offline`. Returns whether it changed.
    pub(crate) fn set_status(
        &self,
        status: VmStatus,
        reason: StatusReason,
        queue: &StoreQueue,
        bus: &dyn Bus,
    ) -> bool {
        let now = Utc::now();
        let last_seen = {
            let mut live = self.live();
            if live.status == status {
                return false;
            }
            live.status = status;
            live.status_since = now;
            if status == VmStatus::Online {
                live.last_seen = Some(now);
            }
            live.last_seen
        };
        queue.set_status(self.id(), status, last_seen);
        let event = StatusEvent::event_name(status);
        // Per-VM status lines are debug: 10,000 VMs coming online must not flood the log. An
        // agent that stopped talking on an open connection is worth a line.
        if reason == StatusReason::MissedPings {
            tracing::info!(target: "infinibay::connection", vm = self.id(), %reason, "{event}");
        } else {
            tracing::debug!(target: "infinibay::connection", vm = self.id(), %reason, "{event}");
        }
        bus.publish(BusEvent::Status(StatusEvent {
            vm_id: self.id().to_owned(),
            status,
            at: now,
            reason,
        }));
        true
    }

    /// The hypervisor's power state (`Unknown` for a VM libvirt does not know). The alert
    /// rule "agent offline while running" asks [`PowerState::expects_agent`] of it.
    pub fn power_state(&self) -> PowerState {
        self.live()
            .domain
            .as_ref()
            .map_or(PowerState::Unknown, |d| d.power_state)
    }

    /// Whether libvirt reported a domain for this VM.
    pub fn has_domain(&self) -> bool {
        self.live().domain.is_some()
    }

    /// Record what libvirt says of the VM's domain.
    pub(crate) fn set_domain(&self, name: &str, power_state: PowerState) -> DomainChange {
        let mut live = self.live();
        let (previous, name_changed) = match &live.domain {
            Some(d) => (d.power_state, d.name != name),
            None => (PowerState::Unknown, true),
        };
        live.domain = Some(DomainState {
            name: name.to_owned(),
            power_state,
        });
        DomainChange {
            previous,
            state_changed: previous != power_state,
            name_changed,
        }
    }

    /// The domain no longer exists; returns its last power state when there was one.
    pub(crate) fn clear_domain(&self) -> Option<PowerState> {
        self.live().domain.take().map(|d| d.power_state)
    }

    /// libvirt cannot be reached: the power state is unknown (the domain's name is kept).
    /// Returns the state before when it changed.
    pub(crate) fn forget_power_state(&self) -> Option<PowerState> {
        let mut live = self.live();
        let domain = live.domain.as_mut()?;
        let before = std::mem::replace(&mut domain.power_state, PowerState::Unknown);
        (before != PowerState::Unknown).then_some(before)
    }

    /// The newest sample since the host started.
    pub fn latest_sample(&self) -> Option<Arc<MetricSample>> {
        self.live().latest.clone()
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> VmSnapshot {
        let live = self.live();
        VmSnapshot {
            id: self.id.clone(),
            socket_path: self.socket_path(),
            status: live.status,
            power_state: live
                .domain
                .as_ref()
                .map_or(PowerState::Unknown, |d| d.power_state),
            domain_name: live.domain.as_ref().map(|d| d.name.clone()),
            connected: live.outbound.is_some(),
            socket_present: live.socket_present,
            last_seen: live.last_seen,
            agent: live.agent.clone(),
            pending_commands: live.pending.len(),
            stats: self.counters.snapshot(),
        }
    }
}

/// All VMs by id.
#[derive(Debug)]
pub struct Registry {
    vms: Mutex<HashMap<String, Arc<VmEntry>>>,
    /// Deleted through the API: their sockets are ignored until the files go away.
    forgotten: Mutex<HashSet<String>>,
    /// Bumped whenever a VM is added or forgotten (a scale-out node then changes which VMs it
    /// answers commands for).
    membership: tokio::sync::watch::Sender<u64>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            vms: Mutex::default(),
            forgotten: Mutex::default(),
            membership: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Registry {
    /// The VM, registering it on first sight. `true` when it was new.
    pub(crate) fn get_or_insert(&self, id: &str, socket_path: PathBuf) -> (Arc<VmEntry>, bool) {
        let mut vms = lock(&self.vms);
        if let Some(vm) = vms.get(id) {
            vm.set_socket_path(socket_path);
            vm.live().socket_present = true;
            return (vm.clone(), false);
        }
        let vm = Arc::new(VmEntry::new(id.to_owned(), socket_path, true));
        vms.insert(id.to_owned(), vm.clone());
        drop(vms);
        self.membership.send_modify(|generation| *generation += 1);
        (vm, true)
    }

    /// The VM of a libvirt domain, registering it when new. Unlike discovery it leaves an
    /// existing VM's socket alone; a new one's socket (`socket_path`, where its channel is
    /// bound) counts as present once discovery finds it. `true` when it was new.
    pub(crate) fn get_or_insert_domain(
        &self,
        id: &str,
        socket_path: PathBuf,
    ) -> (Arc<VmEntry>, bool) {
        let mut vms = lock(&self.vms);
        if let Some(vm) = vms.get(id) {
            return (vm.clone(), false);
        }
        let vm = Arc::new(VmEntry::new(id.to_owned(), socket_path, false));
        vms.insert(id.to_owned(), vm.clone());
        (vm, true)
    }

    /// Every VM libvirt reported a domain for.
    pub(crate) fn with_domain(&self) -> Vec<Arc<VmEntry>> {
        let entries: Vec<Arc<VmEntry>> = lock(&self.vms).values().cloned().collect();
        entries.into_iter().filter(|e| e.has_domain()).collect()
    }

    /// Drop a VM and ignore its socket until the file disappears (`deleteVm`). `true` when it
    /// was known.
    pub(crate) fn forget(&self, id: &str) -> bool {
        lock(&self.forgotten).insert(id.to_owned());
        let known = lock(&self.vms).remove(id).is_some();
        if known {
            self.membership.send_modify(|generation| *generation += 1);
        }
        known
    }

    /// A receiver that sees a new generation number whenever a VM is added or forgotten.
    pub fn membership(&self) -> tokio::sync::watch::Receiver<u64> {
        self.membership.subscribe()
    }

    /// The ids of every VM, unordered.
    pub fn ids(&self) -> Vec<String> {
        lock(&self.vms).keys().cloned().collect()
    }

    /// Whether discovery must ignore this VM's socket.
    pub(crate) fn is_forgotten(&self, id: &str) -> bool {
        lock(&self.forgotten).contains(id)
    }

    /// Stop ignoring forgotten VMs whose socket is gone (a new VM may reuse the id later).
    pub(crate) fn keep_forgotten_while(&self, present: impl Fn(&str) -> bool) {
        lock(&self.forgotten).retain(|id| present(id));
    }

    /// One VM.
    pub fn get(&self, id: &str) -> Option<Arc<VmEntry>> {
        lock(&self.vms).get(id).cloned()
    }

    /// Every VM entry, in no order (the alert engine's timed checks).
    pub(crate) fn entries(&self) -> Vec<Arc<VmEntry>> {
        lock(&self.vms).values().cloned().collect()
    }

    /// All VMs, ordered by id.
    pub fn snapshots(&self) -> Vec<VmSnapshot> {
        let entries: Vec<Arc<VmEntry>> = lock(&self.vms).values().cloned().collect();
        let mut out: Vec<VmSnapshot> = entries.iter().map(|e| e.snapshot()).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// The newest sample of every VM that sent one, ordered by VM id.
    pub fn latest_samples(&self) -> Vec<Arc<MetricSample>> {
        let mut entries: Vec<Arc<VmEntry>> = lock(&self.vms).values().cloned().collect();
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        entries.iter().filter_map(|e| e.latest_sample()).collect()
    }

    /// Totals over all VMs.
    pub fn totals(&self) -> VmTotals {
        let entries: Vec<Arc<VmEntry>> = lock(&self.vms).values().cloned().collect();
        let mut t = VmTotals {
            vms: entries.len(),
            ..VmTotals::default()
        };
        for e in &entries {
            {
                let live = e.live();
                t.online += usize::from(live.status == VmStatus::Online);
                t.connected += usize::from(live.outbound.is_some());
            }
            let s = e.counters.snapshot();
            t.messages += s.messages;
            t.decode_errors += s.decode_errors;
            t.samples_rejected += s.samples_rejected;
            t.sanitized_fixes += s.sanitized_fixes;
            t.unmatched_responses += s.unmatched_responses;
            t.read_pauses += s.read_pauses;
            t.connect_attempts += s.connect_attempts;
        }
        t
    }
}

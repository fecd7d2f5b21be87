//! The alert engine: rules administrators set, evaluated where the data arrives.
//!
//! - **Samples** (`cpu`, `memory`, `disk` rules) are checked by the connection task that
//!   ingests them, against the rules of that VM and the rules for every VM only: the work per
//!   sample is O(rules of that VM) (at most [`MAX_RULES_PER_SCOPE`] of each), and the rule set is
//!   one `Arc` read under an uncontended lock. Nothing is read from the database.
//! - **Guest errors** (`guest_error` rules) likewise, on the error's path.
//! - **Time** (`agent_offline` long enough while the VM runs, a `guest_error` alert quiet long
//!   enough to resolve, notifications held by the rate bound) is checked in memory by one task
//!   every `alerts.check_interval_secs`, only while such rules exist.
//!
//! A raised or resolved alert is queued for storage (the store writer, in order), published on
//! the bus (`alert:raised` / `alert:resolved`) and handed to [`webhook`] delivery, which is
//! bounded, retried and never waited for. Everything about a VM comes from its socket: a guest
//! can raise alerts for itself only, and at most one notification per rule and VM goes out per
//! `alerts.notify_interval_secs`.
//!
//! The per-VM state lives beside the VM (`VmEntry::alerts`, its own lock) and holds one entry
//! per (rule, subject) seen in the VM's latest data: a guest inventing mount points cannot grow
//! it, because subjects missing from a sample are dropped (their open alerts resolved).

pub mod webhook;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use infinibay_control::alert::{
    AlertEvent, AlertTransition, MAX_RULES, MAX_RULES_PER_SCOPE, NewAlertRule,
};
use infinibay_control::event::BusEvent;
use infinibay_control::vm::AlertStats;
use infinibay_store::{
    AlertChange, AlertKind, AlertQuery, AlertRecord, AlertRule, MetricSample, Store, VmErrorRecord,
    VmStatus,
};

use crate::bus::Bus;
use crate::config::{AlertConfig, secs};
use crate::registry::{Registry, VmEntry};
use crate::store_writer::StoreQueue;
use webhook::Notifier;

const TARGET: &str = "infinibay::alerts";

/// Whether a VM is running, for "agent offline while the VM is running". The host knows this
/// only from a hypervisor; without one (socket-only hosts) every VM whose socket file exists
/// counts as running: QEMU removes the file when the VM stops. libvirt (issue 16) plugs its
/// power state in with [`AlertEngine::set_power_state`].
pub trait PowerState: Send + Sync + 'static {
    /// `Some(running)` when the hypervisor knows the VM, `None` when it has no information
    /// (the socket's presence decides then).
    fn is_running(&self, vm_id: &str) -> Option<bool>;
}

/// Why a rule could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// Out of range, malformed, or over a limit.
    #[error("{0}")]
    Invalid(String),
    /// The VM it names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The store failed.
    #[error("storage failed: {0}")]
    Storage(String),
}

/// The rules in force, grouped for the per-sample lookup.
#[derive(Debug, Default)]
struct RuleSet {
    global: Vec<Arc<AlertRule>>,
    by_vm: HashMap<String, Vec<Arc<AlertRule>>>,
    /// Some rule needs the timed check (`agent_offline`, `guest_error`).
    timed: bool,
}

impl RuleSet {
    fn from_rules(rules: impl IntoIterator<Item = AlertRule>) -> Self {
        let mut set = Self::default();
        for rule in rules {
            set.timed |= matches!(rule.kind, AlertKind::AgentOffline | AlertKind::GuestError);
            let rule = Arc::new(rule);
            match &rule.vm_id {
                None => set.global.push(rule),
                Some(vm) => set.by_vm.entry(vm.clone()).or_default().push(rule),
            }
        }
        set
    }

    fn len(&self) -> usize {
        self.global.len() + self.by_vm.values().map(Vec::len).sum::<usize>()
    }

    fn is_empty(&self) -> bool {
        self.global.is_empty() && self.by_vm.is_empty()
    }

    /// The rules that apply to one VM: its own and those for every VM.
    fn for_vm<'a>(&'a self, vm_id: &str) -> impl Iterator<Item = &'a Arc<AlertRule>> + 'a {
        let own = self.by_vm.get(vm_id).map(Vec::as_slice).unwrap_or_default();
        self.global.iter().chain(own.iter())
    }

    fn all(&self) -> impl Iterator<Item = &Arc<AlertRule>> {
        self.global.iter().chain(self.by_vm.values().flatten())
    }
}

/// What the engine watches of one (rule, subject) of a VM.
#[derive(Debug, Default)]
struct Watch {
    /// Since when the value has been above the threshold (host time).
    above_since: Option<DateTime<Utc>>,
    /// The last guest error (host time), for `guest_error` rules.
    last_error: Option<DateTime<Utc>>,
    /// The open alert, if any.
    open: Option<AlertRecord>,
}

/// The alert state of one VM.
#[derive(Debug, Default)]
pub struct VmAlertState {
    /// Open alerts from before a restart were merged in.
    restored: bool,
    watches: HashMap<(String, Option<String>), Watch>,
}

impl VmAlertState {
    fn watch(&mut self, rule: &str, subject: Option<&str>) -> &mut Watch {
        self.watches
            .entry((rule.to_owned(), subject.map(str::to_owned)))
            .or_default()
    }
}

/// A raise or resolution to publish once the VM's lock is released.
struct Transition {
    transition: AlertTransition,
    alert: AlertRecord,
    rule: Arc<AlertRule>,
}

#[derive(Debug, Default)]
struct Counters {
    raised: AtomicU64,
    resolved: AtomicU64,
}

/// The engine. Cheap to share (`Arc`).
pub struct AlertEngine {
    rules: RwLock<Arc<RuleSet>>,
    /// Taken by whatever reads the store's rules and installs them (the start-up load, creating
    /// and deleting a rule): otherwise a load that read the store before a new rule was written
    /// could install its older list over the new one, and the rule would silently do nothing.
    rule_changes: tokio::sync::Mutex<()>,
    /// The store's rules and open alerts were read ([`AlertEngine::load`]).
    loaded: std::sync::atomic::AtomicBool,
    /// Open alerts read from the store at start, by VM, merged into a VM's state when it is
    /// first evaluated.
    restored: std::sync::Mutex<HashMap<String, Vec<AlertRecord>>>,
    registry: Arc<Registry>,
    queue: Arc<StoreQueue>,
    bus: Arc<dyn Bus>,
    notifier: Arc<Notifier>,
    power: RwLock<Option<Arc<dyn PowerState>>>,
    check_every: Duration,
    counters: Counters,
}

impl std::fmt::Debug for AlertEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertEngine").finish_non_exhaustive()
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

fn percent(used: f64, total: f64) -> Option<f64> {
    (total > 0.0 && used.is_finite()).then(|| (used / total * 100.0).clamp(0.0, 100.0))
}

impl AlertEngine {
    /// An engine with no rules yet ([`AlertEngine::load`] reads them), delivering webhooks
    /// through `notifier`.
    pub(crate) fn new(
        config: &AlertConfig,
        registry: Arc<Registry>,
        queue: Arc<StoreQueue>,
        bus: Arc<dyn Bus>,
        notifier: Arc<Notifier>,
    ) -> Self {
        Self {
            rules: RwLock::new(Arc::new(RuleSet::default())),
            rule_changes: tokio::sync::Mutex::new(()),
            loaded: std::sync::atomic::AtomicBool::new(false),
            restored: std::sync::Mutex::new(HashMap::new()),
            registry,
            queue,
            bus,
            notifier,
            power: RwLock::new(None),
            check_every: secs(config.check_interval_secs).max(Duration::from_millis(50)),
            counters: Counters::default(),
        }
    }

    /// Use a hypervisor's knowledge of which VMs run (libvirt) for `agent_offline` rules.
    pub fn set_power_state(&self, power: Arc<dyn PowerState>) {
        *write(&self.power) = Some(power);
    }

    fn rule_set(&self) -> Arc<RuleSet> {
        read(&self.rules).clone()
    }

    /// Read the rules and the open alerts from the store (once, at start). Open alerts of
    /// rules that no longer exist are resolved.
    pub(crate) async fn load(&self, store: &dyn Store) -> Result<(), infinibay_store::StoreError> {
        let _changing = self.rule_changes.lock().await;
        let rules = store.alerts().alert_rules().await?;
        let open = store
            .alerts()
            .alerts(&AlertQuery {
                open_only: true,
                limit: u32::MAX,
                ..AlertQuery::default()
            })
            .await?;
        let set = RuleSet::from_rules(rules);
        let mut restored: HashMap<String, Vec<AlertRecord>> = HashMap::new();
        let now = Utc::now();
        for alert in open {
            let known = set.for_vm(&alert.vm_id).any(|r| r.id == alert.rule_id);
            if known {
                restored.entry(alert.vm_id.clone()).or_default().push(alert);
            } else {
                self.queue.push_alert_change(AlertChange::Resolved {
                    id: alert.id,
                    at: now,
                });
            }
        }
        tracing::info!(target: TARGET, rules = set.len(),
            open = restored.values().map(Vec::len).sum::<usize>(), "alert rules loaded");
        *self.restored.lock().unwrap_or_else(|p| p.into_inner()) = restored;
        *write(&self.rules) = Arc::new(set);
        self.loaded.store(true, Ordering::Release);
        Ok(())
    }

    /// Check, store and start evaluating a rule.
    pub(crate) async fn create_rule(
        &self,
        store: &dyn Store,
        request: NewAlertRule,
        created_by: Option<i64>,
    ) -> Result<AlertRule, RuleError> {
        request.validate().map_err(RuleError::Invalid)?;
        let _changing = self.rule_changes.lock().await;
        // Known to this core (perhaps not flushed yet) or to the store.
        if let Some(vm) = &request.vm_id
            && self.registry.get(vm).is_none()
            && store
                .get_vm(vm)
                .await
                .map_err(|e| RuleError::Storage(e.to_string()))?
                .is_none()
        {
            return Err(RuleError::NotFound(format!("VM {vm} not found")));
        }
        // The store's list, not the engine's: it is what the limits protect.
        let existing = store
            .alerts()
            .alert_rules()
            .await
            .map_err(|e| RuleError::Storage(e.to_string()))?;
        if existing.len() >= MAX_RULES {
            return Err(RuleError::Invalid(format!(
                "at most {MAX_RULES} alert rules in all; delete one first"
            )));
        }
        let in_scope = existing.iter().filter(|r| r.vm_id == request.vm_id).count();
        if in_scope >= MAX_RULES_PER_SCOPE {
            let scope = request
                .vm_id
                .as_deref()
                .map_or("every VM".to_owned(), |v| format!("VM {v}"));
            return Err(RuleError::Invalid(format!(
                "at most {MAX_RULES_PER_SCOPE} alert rules for {scope}; delete one first"
            )));
        }
        let rule = request.into_rule(uuid::Uuid::new_v4().to_string(), created_by, Utc::now());
        store
            .alerts()
            .insert_alert_rule(&rule)
            .await
            .map_err(|e| RuleError::Storage(e.to_string()))?;
        self.install_rules(existing.into_iter().chain([rule.clone()]));
        tracing::info!(target: TARGET, rule = %rule.id, kind = rule.kind.as_str(),
            vm = rule.vm_id.as_deref().unwrap_or("*"), "alert rule created");
        Ok(rule)
    }

    /// Delete a rule and resolve its open alerts.
    pub(crate) async fn delete_rule(
        &self,
        store: &dyn Store,
        rule_id: &str,
    ) -> Result<bool, RuleError> {
        let _changing = self.rule_changes.lock().await;
        let existed = store
            .alerts()
            .delete_alert_rule(rule_id)
            .await
            .map_err(|e| RuleError::Storage(e.to_string()))?;
        let removed = self.rule_set().all().find(|r| r.id == rule_id).cloned();
        let rules = store
            .alerts()
            .alert_rules()
            .await
            .map_err(|e| RuleError::Storage(e.to_string()))?;
        self.install_rules(rules);
        if let Some(rule) = removed {
            let now = Utc::now();
            for vm in self.registry.entries() {
                let mut out = Vec::new();
                {
                    let mut state = vm.alert_state();
                    state.watches.retain(|(id, _), watch| {
                        if id != rule_id {
                            return true;
                        }
                        if let Some(alert) = watch.open.take() {
                            out.push(resolve(alert, rule.clone(), now));
                        }
                        false
                    });
                }
                self.publish(out);
            }
            tracing::info!(target: TARGET, rule = rule_id, "alert rule deleted");
        }
        Ok(existed)
    }

    fn install_rules(&self, rules: impl IntoIterator<Item = AlertRule>) {
        *write(&self.rules) = Arc::new(RuleSet::from_rules(rules));
    }

    /// Evaluate a sample of `vm` against its `cpu`, `memory` and `disk` rules.
    pub(crate) fn on_sample(&self, vm: &VmEntry, sample: &MetricSample) {
        let rules = self.rule_set();
        if rules.is_empty() {
            return;
        }
        let now = sample.received_at;
        let mut out = Vec::new();
        {
            let mut state = self.state_of(vm);
            for rule in rules.for_vm(vm.id()) {
                let Some(threshold) = rule.threshold else {
                    continue;
                };
                match rule.kind {
                    AlertKind::Cpu => {
                        let watch = state.watch(&rule.id, None);
                        check(
                            watch,
                            rule,
                            vm.id(),
                            None,
                            sample.cpu_percent,
                            threshold,
                            now,
                            &mut out,
                        );
                    }
                    AlertKind::Memory => {
                        let Some(value) =
                            percent(sample.mem_used_kb as f64, sample.mem_total_kb as f64)
                        else {
                            continue;
                        };
                        let watch = state.watch(&rule.id, None);
                        check(watch, rule, vm.id(), None, value, threshold, now, &mut out);
                    }
                    AlertKind::Disk => {
                        let mut seen: Vec<&str> = Vec::new();
                        for disk in &sample.detail.disk.usage_stats {
                            let mount = disk.mount_point.as_str();
                            if rule.mount_point.as_deref().is_some_and(|m| m != mount) {
                                continue;
                            }
                            let Some(value) = percent(disk.used_gb, disk.total_gb) else {
                                continue;
                            };
                            seen.push(mount);
                            let watch = state.watch(&rule.id, Some(mount));
                            check(
                                watch,
                                rule,
                                vm.id(),
                                Some(mount),
                                value,
                                threshold,
                                now,
                                &mut out,
                            );
                        }
                        // Mounts gone from the sample: forget them (an open alert ends).
                        state.watches.retain(|(id, subject), watch| {
                            if id != &rule.id
                                || subject.as_deref().is_some_and(|s| seen.contains(&s))
                            {
                                return true;
                            }
                            if let Some(alert) = watch.open.take() {
                                out.push(resolve(alert, rule.clone(), now));
                            }
                            false
                        });
                    }
                    AlertKind::AgentOffline | AlertKind::GuestError => {}
                }
            }
        }
        self.publish(out);
    }

    /// An error the agent of `vm` reported: raise its `guest_error` alerts (one open alert
    /// per rule; later errors keep it open).
    pub(crate) fn on_guest_error(&self, vm: &VmEntry, error: &VmErrorRecord) {
        let rules = self.rule_set();
        if rules.is_empty() {
            return;
        }
        let mut out = Vec::new();
        {
            let mut state = self.state_of(vm);
            for rule in rules
                .for_vm(vm.id())
                .filter(|r| r.kind == AlertKind::GuestError)
            {
                let watch = state.watch(&rule.id, None);
                watch.last_error = Some(error.at);
                if watch.open.is_none() {
                    let text: String = error.message.chars().take(200).collect();
                    let message = match &error.code {
                        Some(code) => format!("the agent reported an error ({code}): {text}"),
                        None => format!("the agent reported an error: {text}"),
                    };
                    let alert = new_alert(rule, vm.id(), None, message, None, error.at);
                    watch.open = Some(alert.clone());
                    out.push(Transition {
                        transition: AlertTransition::Raised,
                        alert,
                        rule: rule.clone(),
                    });
                }
            }
        }
        self.publish(out);
    }

    /// The timed checks, and held notifications, until `stop`.
    pub(crate) async fn run_timers(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.check_every) => {}
            }
            self.check_timed(Utc::now());
            self.notifier.send_due();
        }
    }

    /// `agent_offline` and `guest_error` rules against the time `now`, over every VM, in
    /// memory; nothing when no such rule exists.
    pub(crate) fn check_timed(&self, now: DateTime<Utc>) {
        let rules = self.rule_set();
        if !rules.timed {
            return;
        }
        let power = read(&self.power).clone();
        for vm in self.registry.entries() {
            let timed: Vec<&Arc<AlertRule>> = rules
                .for_vm(vm.id())
                .filter(|r| matches!(r.kind, AlertKind::AgentOffline | AlertKind::GuestError))
                .collect();
            if timed.is_empty() {
                continue;
            }
            let (offline_since, socket_present) = {
                let live = vm.live();
                let since = (live.status == VmStatus::Offline).then_some(live.status_since);
                (since, live.socket_present)
            };
            let running = power
                .as_ref()
                .and_then(|p| p.is_running(vm.id()))
                .unwrap_or(socket_present);
            let mut out = Vec::new();
            {
                let mut state = self.state_of(&vm);
                for rule in timed {
                    let duration = chrono::Duration::seconds(rule.duration_secs);
                    let watch = state.watch(&rule.id, None);
                    match rule.kind {
                        AlertKind::AgentOffline => match offline_since {
                            Some(since) if running && now - since >= duration => {
                                if watch.open.is_none() {
                                    let secs = (now - since).num_seconds();
                                    let alert = new_alert(
                                        rule,
                                        vm.id(),
                                        None,
                                        format!(
                                            "the agent has been offline for {secs} s while the VM runs"
                                        ),
                                        None,
                                        now,
                                    );
                                    watch.open = Some(alert.clone());
                                    out.push(Transition {
                                        transition: AlertTransition::Raised,
                                        alert,
                                        rule: rule.clone(),
                                    });
                                }
                            }
                            Some(_) if running => {}
                            // Online again, or the VM stopped: the condition ended.
                            _ => {
                                if let Some(alert) = watch.open.take() {
                                    out.push(resolve(alert, rule.clone(), now));
                                }
                            }
                        },
                        AlertKind::GuestError => {
                            let quiet = watch.last_error.is_none_or(|t| now - t >= duration);
                            if quiet && let Some(alert) = watch.open.take() {
                                out.push(resolve(alert, rule.clone(), now));
                            }
                        }
                        _ => {}
                    }
                }
                // Nothing open and nothing pending: the entry need not be kept.
                state.watches.retain(|_, w| {
                    w.open.is_some() || w.above_since.is_some() || w.last_error.is_some()
                });
            }
            self.publish(out);
        }
    }

    /// The VM's state, with its alerts from before a restart merged in on first use.
    fn state_of<'a>(&self, vm: &'a VmEntry) -> std::sync::MutexGuard<'a, VmAlertState> {
        let mut state = vm.alert_state();
        // Before the load there is nothing to merge yet (and no rules to evaluate either).
        if !state.restored && self.loaded.load(Ordering::Acquire) {
            state.restored = true;
            let restored = self
                .restored
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(vm.id());
            for alert in restored.into_iter().flatten() {
                let watch = state.watch(&alert.rule_id, alert.subject.as_deref());
                watch.last_error = (alert.kind == AlertKind::GuestError).then_some(alert.raised_at);
                watch.open = Some(alert);
            }
        }
        state
    }

    /// Store, publish and notify, outside any VM's lock.
    fn publish(&self, transitions: Vec<Transition>) {
        for t in transitions {
            let counter = match t.transition {
                AlertTransition::Raised => &self.counters.raised,
                AlertTransition::Resolved => &self.counters.resolved,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let change = match t.transition {
                AlertTransition::Raised => AlertChange::Raised(t.alert.clone()),
                AlertTransition::Resolved => AlertChange::Resolved {
                    id: t.alert.id.clone(),
                    at: t.alert.resolved_at.unwrap_or_else(Utc::now),
                },
            };
            self.queue.push_alert_change(change);
            let event = AlertEvent {
                transition: t.transition,
                alert: t.alert,
            };
            self.notifier.notify(&t.rule, &event);
            self.bus.publish(BusEvent::Alert(Arc::new(event)));
        }
    }

    /// Counters.
    pub fn stats(&self) -> AlertStats {
        let mut stats = self.notifier.stats();
        stats.rules = self.rule_set().len();
        stats.raised = self.counters.raised.load(Ordering::Relaxed);
        stats.resolved = self.counters.resolved.load(Ordering::Relaxed);
        stats
    }
}

fn new_alert(
    rule: &AlertRule,
    vm_id: &str,
    subject: Option<&str>,
    message: String,
    value: Option<f64>,
    at: DateTime<Utc>,
) -> AlertRecord {
    AlertRecord {
        id: uuid::Uuid::new_v4().to_string(),
        rule_id: rule.id.clone(),
        vm_id: vm_id.to_owned(),
        kind: rule.kind,
        subject: subject.map(str::to_owned),
        message,
        value,
        threshold: rule.threshold,
        raised_at: at,
        resolved_at: None,
    }
}

fn resolve(mut alert: AlertRecord, rule: Arc<AlertRule>, at: DateTime<Utc>) -> Transition {
    alert.resolved_at = Some(at);
    Transition {
        transition: AlertTransition::Resolved,
        alert,
        rule,
    }
}

/// One value against one rule: above the threshold for the rule's duration raises, at or
/// below it resolves.
#[allow(clippy::too_many_arguments)]
fn check(
    watch: &mut Watch,
    rule: &Arc<AlertRule>,
    vm_id: &str,
    subject: Option<&str>,
    value: f64,
    threshold: f64,
    now: DateTime<Utc>,
    out: &mut Vec<Transition>,
) {
    if value > threshold {
        let since = *watch.above_since.get_or_insert(now);
        if watch.open.is_none() && now - since >= chrono::Duration::seconds(rule.duration_secs) {
            let what = match (rule.kind, subject) {
                (AlertKind::Disk, Some(mount)) => format!("disk {mount}"),
                (kind, _) => kind.as_str().to_owned(),
            };
            let message = format!(
                "{what} at {value:.1} %, above {threshold} % for {} s",
                (now - since).num_seconds()
            );
            let alert = new_alert(rule, vm_id, subject, message, Some(value), now);
            watch.open = Some(alert.clone());
            out.push(Transition {
                transition: AlertTransition::Raised,
                alert,
                rule: rule.clone(),
            });
        }
    } else {
        watch.above_since = None;
        if let Some(alert) = watch.open.take() {
            out.push(resolve(alert, rule.clone(), now));
        }
    }
}

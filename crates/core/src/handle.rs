//! The running core ([`Core`]): start and stop it, and what it offers — live VM state, the
//! bus, commands, the VMs' lifecycle in libvirt, the newest samples, counters. It implements
//! [`VmControl`], the one interface the API reaches it through.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use infinibay_control::command::{Command, CommandError, CommandSpec};
use infinibay_control::event::{Filter, Subscription};
use infinibay_control::lifecycle::{
    ChannelAttached, CreateVmSpec, DeleteOutcome, HypervisorInfo, HypervisorState, LifecycleError,
    PowerAction, PowerOutcome,
};
use infinibay_control::{
    ConsoleSession, ControlError, CoreStats, NewAlertRule, TelemetryOutcome, TelemetryRequest,
    VmControl, VmSnapshot,
};
use infinibay_protocol::message::CommandResponse;
use infinibay_store::{AlertRule, MetricSample, Store};

use crate::alerts::{AlertEngine, PowerState, RuleError, webhook};
use crate::bus::{Bus, InProcessBus};
use crate::commands::{CommandCenter, PendingCommand};
use crate::config::{CoreConfig, secs};
use crate::diag::ProcessIdentity;
use crate::health::{StoreHealth, StoreProbe, probe_store};
use crate::hypervisor::Lifecycle;
use crate::registry::Registry;
use crate::shared::Shared;
use crate::store_writer::StoreQueue;
use crate::telemetry::{TelemetryBook, TelemetryError};

/// The running core: cheap to clone.
#[derive(Clone)]
pub struct Core {
    shared: Arc<Shared>,
    store: Arc<dyn Store>,
    store_health: Arc<StoreHealth>,
    commands: CommandCenter,
    /// libvirt: its events, and the VMs' lifecycle.
    lifecycle: Arc<Lifecycle>,
    /// Writer and maintenance: stopped after the connection tasks so their last words are
    /// stored.
    background: TaskTracker,
    background_stop: CancellationToken,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("socket_dir", &self.shared.config.socket_dir)
            .field("store", &self.store.backend())
            .finish_non_exhaustive()
    }
}

impl Core {
    /// Start discovery, connections, the store writer and maintenance, with the in-process bus.
    /// Everything stops when `shutdown` is cancelled; then await [`Core::stopped`].
    pub fn start(config: CoreConfig, store: Arc<dyn Store>, shutdown: CancellationToken) -> Self {
        Self::start_with_bus(config, store, Arc::new(InProcessBus::default()), shutdown)
    }

    /// [`Core::start`] with another bus implementation.
    pub fn start_with_bus(
        config: CoreConfig,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        shutdown: CancellationToken,
    ) -> Self {
        let registry = Arc::new(Registry::default());
        let queue = Arc::new(StoreQueue::with_alert_bound(
            config.store.clone(),
            config.alerts.pending_changes_max,
        ));
        let commands = CommandCenter::new(
            registry.clone(),
            queue.clone(),
            bus.clone(),
            secs(config.commands.default_timeout_secs),
            config.commands.max_pending_per_vm,
        );
        let (notifier, deliveries) = webhook::channel(&config.alerts);
        let alerts = Arc::new(AlertEngine::new(
            &config.alerts,
            registry.clone(),
            queue.clone(),
            bus.clone(),
            Arc::new(notifier),
        ));
        let shared = Arc::new(Shared {
            config,
            registry,
            queue,
            bus,
            alerts,
            telemetry: Arc::new(TelemetryBook::default()),
            identity: ProcessIdentity::current(),
            tasks: TaskTracker::new(),
            shutdown,
        });
        let background = TaskTracker::new();
        let background_stop = CancellationToken::new();
        let flush_interval = Duration::from_millis(shared.config.store.flush_interval_ms.max(1));
        match crate::store_writer::spawn_writer(
            shared.queue.clone(),
            store.clone(),
            flush_interval,
            background_stop.clone(),
        ) {
            Ok(stopped) => {
                background.spawn(stopped);
            }
            Err(e) => {
                // Out of threads is rare and not fatal: the writer then shares this runtime.
                tracing::warn!(target: "infinibay::store",
                    "cannot start the store writer thread ({e}); writing from the host's runtime");
                background.spawn(crate::store_writer::run_writer(
                    shared.queue.clone(),
                    store.clone(),
                    flush_interval,
                    background_stop.clone(),
                ));
            }
        }
        background.spawn(crate::maintenance::run(
            store.clone(),
            shared.config.maintenance.clone(),
            background_stop.clone(),
        ));
        background.spawn(report_stats(shared.clone(), background_stop.clone()));
        background.spawn(deliveries.run(background_stop.clone()));
        {
            // Rules and open alerts, then the timed checks; the settings agents are sent.
            let (shared, store, stop) = (shared.clone(), store.clone(), background_stop.clone());
            background.spawn(async move {
                if let Err(e) = shared.alerts.load(store.as_ref()).await {
                    tracing::error!(target: "infinibay::alerts",
                        "cannot read alert rules ({e}); no alert is evaluated until one is set");
                }
                shared
                    .telemetry
                    .load(store.as_ref(), &shared.registry)
                    .await;
                shared.alerts.clone().run_timers(stop).await;
            });
        }
        let store_health = Arc::new(StoreHealth::default());
        background.spawn(probe_store(
            store.clone(),
            store_health.clone(),
            background_stop.clone(),
        ));
        shared.tasks.spawn(crate::discover::run(shared.clone()));
        let lifecycle = Arc::new(Lifecycle::start(
            shared.clone(),
            store.clone(),
            commands.clone(),
        ));
        tracing::info!(target: "infinibay::host", socket_dir = %shared.config.socket_dir.display(),
            store = store.backend(), "host started");
        Self {
            shared,
            store,
            store_health,
            commands,
            lifecycle,
            background,
            background_stop,
        }
    }

    /// Wait until every task has ended after shutdown, the last data written included.
    pub async fn stopped(&self) {
        self.shared.shutdown.cancelled().await;
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        self.background_stop.cancel();
        self.background.close();
        self.background.wait().await;
        let s = self.stats();
        tracing::info!(target: "infinibay::stats", vms = s.vms, messages = s.totals.messages,
            decode_errors = s.totals.decode_errors, samples_written = s.queue.samples_written,
            samples_coalesced = s.queue.samples_coalesced, samples_failed = s.queue.samples_failed,
            "totals at stop");
        tracing::info!(target: "infinibay::host", "core stopped");
    }

    /// The token whose cancellation stops the core.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shared.shutdown.clone()
    }

    /// Stop and wait.
    pub async fn shutdown(&self) {
        self.shared.shutdown.cancel();
        self.stopped().await;
    }

    /// The configuration in use.
    pub fn config(&self) -> &CoreConfig {
        &self.shared.config
    }

    /// The store (for queries).
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// The store's health as the background probe last saw it (never waits for the store).
    pub fn store_health(&self) -> StoreProbe {
        self.store_health.snapshot()
    }

    /// Subscribe to bus events.
    pub fn subscribe(&self, filter: Filter) -> Subscription {
        self.shared.bus.subscribe(filter)
    }

    /// All VMs with live status, by id.
    pub fn vms(&self) -> Vec<VmSnapshot> {
        self.shared.registry.snapshots()
    }

    /// The ids of every VM the core knows, unordered (cheaper than [`Core::vms`]).
    pub fn vm_ids(&self) -> Vec<String> {
        self.shared.registry.ids()
    }

    /// Changes to the set of VMs: the generation number grows whenever a VM is added or
    /// forgotten (a scale-out node answers commands for exactly the core's VMs).
    pub fn vm_membership(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.registry.membership()
    }

    /// One VM with live status.
    pub fn vm(&self, id: &str) -> Option<VmSnapshot> {
        self.shared.registry.get(id).map(|v| v.snapshot())
    }

    /// Delete a VM (`deleteVm`) on behalf of `issued_by`: its libvirt domain when it has one
    /// (destroyed, undefined, sockets and overlay removed), then the VM: it leaves
    /// [`Core::vms`] now, its connection closes at the next directory scan and its socket is
    /// ignored until the file goes away; its record and data are deleted from the store.
    pub async fn delete_vm(
        &self,
        id: &str,
        issued_by: Option<i64>,
    ) -> Result<DeleteOutcome, LifecycleError> {
        self.lifecycle.delete_vm(id, issued_by).await
    }

    /// `createVm` on behalf of `issued_by` (see [`VmControl::create_vm`]).
    pub async fn create_vm(
        &self,
        spec: CreateVmSpec,
        issued_by: Option<i64>,
    ) -> Result<VmSnapshot, LifecycleError> {
        self.lifecycle.create_vm(spec, issued_by).await
    }

    /// A power action on behalf of `issued_by` (see [`VmControl::power`]).
    pub async fn power(
        &self,
        vm_id: &str,
        action: PowerAction,
        issued_by: Option<i64>,
    ) -> Result<PowerOutcome, LifecycleError> {
        self.lifecycle.power(vm_id, action, issued_by).await
    }

    /// Whether libvirt is reachable, and the base images for `createVm`.
    pub async fn hypervisor(&self) -> HypervisorInfo {
        self.lifecycle.hypervisor().await
    }

    /// Whether libvirt is reachable, from memory (for `/healthz`).
    pub fn hypervisor_state(&self) -> HypervisorState {
        self.lifecycle.state()
    }

    /// The core's counters.
    pub fn stats(&self) -> CoreStats {
        stats_of(&self.shared)
    }

    /// Use a hypervisor's knowledge of which VMs run for "agent offline while the VM is
    /// running" alerts (without it, a VM whose socket file exists counts as running).
    pub fn set_power_state(&self, power: Arc<dyn PowerState>) {
        self.shared.alerts.set_power_state(power);
    }

    /// Send a command and wait for its response (`None`: the configured default timeout, 30 s).
    pub async fn send_command(
        &self,
        vm_id: &str,
        command: impl Into<Command>,
        timeout: Option<Duration>,
    ) -> Result<CommandResponse, CommandError> {
        self.commands.send(vm_id, command.into(), timeout).await
    }

    /// Send a command on behalf of a user and get a handle to wait for or cancel it.
    pub fn start_command(
        &self,
        vm_id: &str,
        command: impl Into<Command>,
        issued_by: Option<i64>,
    ) -> Result<PendingCommand, CommandError> {
        self.commands.start(vm_id, command.into(), issued_by)
    }

    /// The newest sample of a VM since the host started (none after a restart until the VM
    /// sends one; the store keeps the last one that was persisted).
    pub fn latest_sample(&self, vm_id: &str) -> Option<Arc<MetricSample>> {
        self.shared
            .registry
            .get(vm_id)
            .and_then(|v| v.latest_sample())
    }

    /// The newest sample of every VM that sent one since the host started, by VM id.
    pub fn latest_samples(&self) -> Vec<Arc<MetricSample>> {
        self.shared.registry.latest_samples()
    }

    /// Cancel a waiting command.
    pub fn cancel_command(&self, vm_id: &str, id: &str) -> Result<(), CommandError> {
        self.commands.cancel(vm_id, id)
    }
}

fn stats_of(shared: &Shared) -> CoreStats {
    let totals = shared.registry.totals();
    CoreStats {
        vms: totals.vms,
        online: totals.online,
        totals,
        queue: shared.queue.stats(),
        alerts: shared.alerts.stats(),
    }
}

/// `deleteVm` removes the VM's socket (seed 001), so that it is not found again; only a socket
/// (or a link to one) is removed, never another kind of file.
pub(crate) fn remove_socket(vm_id: &str, path: &std::path::Path) {
    use std::os::unix::fs::FileTypeExt;
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| {
        m.file_type().is_socket()
            || (m.file_type().is_symlink()
                && std::fs::metadata(path).is_ok_and(|t| t.file_type().is_socket()))
    });
    if !is_socket {
        return;
    }
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(target: "infinibay::watcher", vm = vm_id,
            path = %path.display(), "socket of a deleted VM removed"),
        Err(e) => tracing::warn!(target: "infinibay::watcher", vm = vm_id,
            "cannot remove the socket {} of a deleted VM: {e}", path.display()),
    }
}

fn rule_error(e: RuleError) -> ControlError {
    match e {
        RuleError::Invalid(m) => ControlError::Invalid(m),
        RuleError::NotFound(m) => ControlError::NotFound(m),
        RuleError::Storage(m) => ControlError::Storage(m),
    }
}

/// One line a minute with the host's rates and queue counters (target `infinibay::stats`).
async fn report_stats(shared: Arc<Shared>, stop: CancellationToken) {
    const EVERY: Duration = Duration::from_secs(60);
    let mut previous = stats_of(&shared);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        let now = stats_of(&shared);
        let per_sec = |a: u64, b: u64| a.saturating_sub(b) as f64 / EVERY.as_secs_f64();
        tracing::info!(target: "infinibay::stats",
            vms = now.vms, online = now.online, connected = now.totals.connected,
            msg_per_sec = per_sec(now.totals.messages, previous.totals.messages),
            samples_written_per_sec = per_sec(now.queue.samples_written, previous.queue.samples_written),
            samples_coalesced = now.queue.samples_coalesced, samples_failed = now.queue.samples_failed,
            decode_errors = now.totals.decode_errors, pending_samples = now.queue.pending_samples,
            "ingest");
        previous = now;
    }
}

#[async_trait]
impl VmControl for Core {
    async fn vms(&self) -> Vec<VmSnapshot> {
        Core::vms(self)
    }

    async fn vm(&self, vm_id: &str) -> Option<VmSnapshot> {
        Core::vm(self, vm_id)
    }

    async fn latest_samples(&self) -> Vec<Arc<MetricSample>> {
        Core::latest_samples(self)
    }

    async fn latest_sample(&self, vm_id: &str) -> Option<Arc<MetricSample>> {
        Core::latest_sample(self, vm_id)
    }

    async fn subscribe(&self, filter: Filter) -> Subscription {
        Core::subscribe(self, filter)
    }

    /// See [`CommandCenter::execute`].
    async fn execute(
        &self,
        vm_id: &str,
        command: CommandSpec,
        issued_by: Option<i64>,
    ) -> Result<CommandResponse, CommandError> {
        self.commands.execute(vm_id, command, issued_by).await
    }

    async fn record_console_session(&self, session: ConsoleSession) {
        self.commands.record_console(session);
    }

    async fn log_refused(
        &self,
        vm_id: &str,
        command: CommandSpec,
        issued_by: Option<i64>,
        reason: &str,
    ) {
        self.commands.log_refused(vm_id, command, issued_by, reason);
    }

    async fn cancel_command(&self, vm_id: &str, command_id: &str) -> Result<(), CommandError> {
        Core::cancel_command(self, vm_id, command_id)
    }

    async fn delete_vm(
        &self,
        vm_id: &str,
        issued_by: Option<i64>,
    ) -> Result<DeleteOutcome, LifecycleError> {
        Core::delete_vm(self, vm_id, issued_by).await
    }

    async fn create_vm(
        &self,
        spec: CreateVmSpec,
        issued_by: Option<i64>,
    ) -> Result<VmSnapshot, LifecycleError> {
        Core::create_vm(self, spec, issued_by).await
    }

    async fn power(
        &self,
        vm_id: &str,
        action: PowerAction,
        issued_by: Option<i64>,
    ) -> Result<PowerOutcome, LifecycleError> {
        Core::power(self, vm_id, action, issued_by).await
    }

    async fn attach_agent_channel(
        &self,
        vm_id: &str,
        issued_by: Option<i64>,
    ) -> Result<ChannelAttached, LifecycleError> {
        self.lifecycle.attach_agent_channel(vm_id, issued_by).await
    }

    async fn hypervisor(&self) -> HypervisorInfo {
        Core::hypervisor(self).await
    }

    async fn stats(&self) -> CoreStats {
        Core::stats(self)
    }

    async fn create_alert_rule(
        &self,
        rule: NewAlertRule,
        created_by: Option<i64>,
    ) -> Result<AlertRule, ControlError> {
        self.shared
            .alerts
            .create_rule(self.store.as_ref(), rule, created_by)
            .await
            .map_err(rule_error)
    }

    async fn delete_alert_rule(&self, rule_id: &str) -> Result<bool, ControlError> {
        self.shared
            .alerts
            .delete_rule(self.store.as_ref(), rule_id)
            .await
            .map_err(rule_error)
    }

    async fn set_telemetry(
        &self,
        vm_id: &str,
        request: TelemetryRequest,
        updated_by: Option<i64>,
    ) -> Result<TelemetryOutcome, ControlError> {
        self.shared
            .telemetry
            .set(
                self.store.as_ref(),
                &self.shared.registry,
                &self.commands,
                vm_id,
                request,
                updated_by,
            )
            .await
            .map_err(|e| match e {
                TelemetryError::Invalid(m) => ControlError::Invalid(m),
                TelemetryError::NotFound(m) => ControlError::NotFound(m),
                TelemetryError::Storage(m) => ControlError::Storage(m),
            })
    }
}

//! The agent's loop: one task on one thread that reads the host's lines, answers at once what
//! can be answered at once (ping, refusals, in-memory facts), starts commands as tasks of their
//! own, collects on its timers, and writes the outbox whenever the host can take bytes.
//!
//! Nothing here blocks for long: collectors are sub-millisecond /proc reads, and every
//! program runs as a child process awaited asynchronously, so `ping` is answered while a
//! command runs for minutes.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hasher;
use std::time::{Duration, Instant};

use infinibay_protocol::message::{
    CollectorSwitches, CommandResponse, Configure, ErrorCode, Pong, VmIdentification,
};
use infinibay_protocol::{
    DecodeError, GuestMessage, HostMessage, HostStreamDecoder, PROTOCOL_VERSION, Timestamp,
    encode_line,
};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Interval, MissedTickBehavior};

use crate::channel::{Channel, Event};
use crate::commands::{self, Plan, refused};
use crate::config::{CollectorsConfig, Config};
use crate::outbox::{LineClass, Outbox, TelemetryKind};
use crate::platform::collect::Collector;
use crate::platform::info;
use crate::policy::Policy;

/// A command task finished.
#[derive(Debug)]
struct Finished {
    id: String,
    action: String,
    response: CommandResponse,
    /// False for tasks whose response was already sent (power actions).
    reply: bool,
}

/// The settings `configure` can change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Live {
    collection: Duration,
    inventory: Duration,
    collectors: CollectorsConfig,
}

/// Inventory kinds, for change detection.
const INVENTORY_KINDS: [TelemetryKind; 3] = [
    TelemetryKind::PortUsage,
    TelemetryKind::ApplicationUsage,
    TelemetryKind::ServiceInventory,
];

/// The running agent.
pub struct Session {
    config: Config,
    policy: Policy,
    collector: Collector,
    channel: Channel,
    outbox: Outbox,
    decoder: HostStreamDecoder,
    running: HashMap<String, oneshot::Sender<()>>,
    finished_tx: mpsc::UnboundedSender<Finished>,
    finished_rx: mpsc::UnboundedReceiver<Finished>,
    live: Live,
    inventory_sent: [Option<u64>; 3],
    metrics_timer: Interval,
    inventory_timer: Interval,
    /// A second collector for the inventories, which read big files (the dpkg database, every
    /// process's fds) and run on a blocking thread so that `ping` never waits behind them.
    /// `None` while a check runs: it travels to the thread and back.
    inventory_collector: Option<Collector>,
    inventory_task: Option<tokio::task::JoinHandle<InventoryCheck>>,
    /// Bumped by every `hello`: a check started before it must not record what it sent as
    /// known to the new host.
    inventory_generation: u64,
    /// A check was asked for while one ran: run again when it ends.
    inventory_rerun: bool,
    vm_id: Option<String>,
}

/// The result of one inventory check: the collector back, and the lines that changed.
struct InventoryCheck {
    generation: u64,
    collector: Collector,
    changed: Vec<(usize, TelemetryKind, u64, Vec<u8>)>,
}

fn interval(period: Duration, first_in: Duration) -> Interval {
    let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + first_in, period);
    // After a stall, one sample, not a burst to catch up.
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    timer
}

impl Session {
    /// A session over `channel`. Must be called inside a tokio runtime (timers).
    pub fn new(
        config: Config,
        collector: Collector,
        channel: Channel,
        vm_id: Option<String>,
    ) -> Self {
        let (finished_tx, finished_rx) = mpsc::unbounded_channel();
        let inventory_collector = Some(collector.sibling());
        let live = Live {
            collection: config.collection_period(),
            inventory: Duration::from_secs(config.limits.inventory_interval.max(1)),
            collectors: config.collectors,
        };
        Self {
            policy: Policy::new(config.policy.clone()),
            collector,
            channel,
            outbox: Outbox::new(),
            decoder: HostStreamDecoder::default(),
            running: HashMap::new(),
            finished_tx,
            finished_rx,
            metrics_timer: interval(live.collection, Duration::ZERO),
            // The first inventory waits a little: the first metrics and the identification
            // go out first.
            inventory_timer: interval(live.inventory, Duration::from_secs(2)),
            live,
            inventory_sent: [None; 3],
            inventory_collector,
            inventory_task: None,
            inventory_generation: 0,
            inventory_rerun: false,
            vm_id,
            config,
        }
    }

    /// Run until `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        tracing::info!(channel = %self.channel.describe(), "agent started");
        self.queue_identification();
        loop {
            let pending = if self.channel.is_connected() {
                self.outbox.next_chunk()
            } else {
                None
            };
            tokio::select! {
                () = &mut shutdown => break,
                event = self.channel.next(pending) => self.on_channel_event(event),
                Some(done) = self.finished_rx.recv() => self.on_finished(done),
                _ = self.metrics_timer.tick() => self.collect_metrics(),
                _ = self.inventory_timer.tick() => self.start_inventory_check(),
                Some(check) = join_inventory(&mut self.inventory_task) => self.finish_inventory_check(check),
            }
        }
        tracing::info!(running = self.running.len(), "agent stopping");
    }

    fn on_channel_event(&mut self, event: Event) {
        match event {
            Event::Connected => {
                tracing::info!("host connected");
                self.decoder.reset();
            }
            Event::Disconnected => {
                tracing::info!(
                    queued = self.outbox.len(),
                    "host disconnected; collecting on, keeping the newest sample of each kind"
                );
                self.outbox
                    .connection_lost(self.channel.stream_survives_reconnect());
                self.decoder.reset();
            }
            Event::Wrote(n) => self.outbox.advance(n),
            Event::Received(n) => {
                let mut items = Vec::new();
                let bytes = self.channel.received(n);
                self.decoder.decode(bytes, |item| items.push(item));
                for item in items {
                    match item {
                        Ok(message) => self.on_message(message),
                        Err(error) => self.on_bad_line(error),
                    }
                }
            }
        }
    }

    fn on_message(&mut self, message: HostMessage) {
        match message {
            HostMessage::Hello(hello) => {
                tracing::info!(host_protocol = hello.protocol_version, "host hello");
                self.queue_identification();
                // A (re)connected host may have lost what it knew: send the inventories again
                // on the next check, which is now.
                self.inventory_sent = [None; 3];
                self.inventory_generation += 1;
                self.inventory_timer.reset_immediately();
            }
            HostMessage::Welcome(welcome) => {
                tracing::info!(protocol = welcome.protocol_version, "host welcome");
            }
            HostMessage::Ping(ping) => {
                self.push(
                    LineClass::Reply,
                    &GuestMessage::Pong(Pong {
                        id: ping.id,
                        timestamp: Some(Timestamp::now()),
                    }),
                );
            }
            HostMessage::Cancel(cancel) => match self.running.remove(&cancel.id) {
                Some(sender) => {
                    tracing::info!(id = %cancel.id, "cancel requested");
                    let _ = sender.send(());
                }
                None => tracing::info!(id = %cancel.id, "cancel for a command that is not running"),
            },
            HostMessage::Configure(configure) => self.on_configure(configure),
            HostMessage::SafeCommand(command) => {
                let (tx, rx) = oneshot::channel();
                let id = command.id.clone();
                let action = command.command_type.name().to_owned();
                if let Some(refusal) = self.duplicate(&id, "safe") {
                    return self.reply(&action, refusal);
                }
                let plan = commands::safe::plan(
                    command,
                    Instant::now(),
                    &self.policy,
                    &self.config.limits,
                    &mut self.collector,
                    rx,
                );
                self.start(id, action, "safe", plan, tx);
            }
            HostMessage::UnsafeCommand(command) => {
                let (tx, rx) = oneshot::channel();
                let id = command.id.clone();
                let action = "UnsafeCommand".to_owned();
                if let Some(refusal) = self.duplicate(&id, "unsafe") {
                    return self.reply(&action, refusal);
                }
                let plan = commands::unsafe_cmd::plan(
                    command,
                    Instant::now(),
                    &self.policy,
                    &self.config.limits,
                    rx,
                );
                self.start(id, action, "unsafe", plan, tx);
            }
        }
    }

    fn duplicate(&self, id: &str, command_type: &str) -> Option<CommandResponse> {
        self.running.contains_key(id).then(|| {
            refused(
                id,
                ErrorCode::Invalid,
                format!("a command with id `{id}` is already running"),
                command_type,
            )
        })
    }

    fn start(
        &mut self,
        id: String,
        action: String,
        command_type: &str,
        plan: Plan,
        cancel: oneshot::Sender<()>,
    ) {
        let (immediate, task, reply) = match plan {
            Plan::Done(response) => return self.reply(&action, response),
            Plan::Run(task) => (None, task, true),
            Plan::RespondThenRun(response, task) => (Some(response), task, false),
        };
        if self.running.len() >= self.config.limits.max_concurrent_commands {
            let busy = refused(
                &id,
                ErrorCode::Busy,
                format!(
                    "{} commands are running already (limits.max_concurrent_commands)",
                    self.running.len()
                ),
                command_type,
            );
            return self.reply(&action, busy);
        }
        if let Some(response) = immediate {
            self.reply(&action, response);
        }
        tracing::info!(%id, %action, "command started");
        self.running.insert(id.clone(), cancel);
        let finished = self.finished_tx.clone();
        tokio::spawn(async move {
            let response = task.await;
            let _ = finished.send(Finished {
                id,
                action,
                response,
                reply,
            });
        });
    }

    fn on_finished(&mut self, done: Finished) {
        self.running.remove(&done.id);
        if done.reply {
            self.reply(&done.action, done.response);
        } else {
            log_outcome(&done.action, &done.response);
        }
    }

    /// Log a command's outcome (never its output or environment) and queue its response.
    fn reply(&mut self, action: &str, response: CommandResponse) {
        log_outcome(action, &response);
        let line = commands::encode_fitted(response, self.config.limits.max_line_bytes);
        self.outbox.push(LineClass::Reply, line);
    }

    fn on_configure(&mut self, configure: Configure) {
        let invalid = match (configure.collection_interval, configure.inventory_interval) {
            (Some(0), _) => Some("collection_interval must be at least 1"),
            (_, Some(0)) => Some("inventory_interval must be at least 1"),
            _ => None,
        };
        if let Some(reason) = invalid {
            if let Some(id) = &configure.id {
                let r = refused(id, ErrorCode::Invalid, reason, "configure");
                self.reply("configure", r);
            }
            return;
        }
        let before = self.live;
        if let Some(secs) = configure.collection_interval {
            self.live.collection = Duration::from_secs(secs.min(86_400));
        }
        if let Some(secs) = configure.inventory_interval {
            self.live.inventory = Duration::from_secs(secs.min(7 * 86_400));
        }
        if let Some(switches) = &configure.collectors {
            apply_switches(&mut self.live.collectors, switches);
        }
        if self.live.collection != before.collection {
            self.metrics_timer = interval(self.live.collection, self.live.collection);
        }
        if self.live.inventory != before.inventory {
            self.inventory_timer = interval(self.live.inventory, self.live.inventory);
        }
        tracing::info!(
            collection_interval_s = self.live.collection.as_secs(),
            inventory_interval_s = self.live.inventory.as_secs(),
            collectors = ?self.live.collectors,
            "configuration changed by the host"
        );
        if let Some(id) = configure.id {
            let response = CommandResponse {
                id,
                success: true,
                data: Some(json!({
                    "collection_interval": self.live.collection.as_secs(),
                    "inventory_interval": self.live.inventory.as_secs(),
                    "collectors": self.live.collectors,
                })),
                command_type: Some("configure".into()),
                ..CommandResponse::default()
            };
            self.reply("configure", response);
        }
    }

    fn on_bad_line(&mut self, error: DecodeError) {
        match &error {
            // The host's 0xFF at (re)connect drops whatever partial line we held: expected.
            DecodeError::PartialLineDropped { .. } => {
                tracing::debug!(%error, "partial line dropped at a resync marker");
            }
            // A command we could not read but whose id we know still gets its one answer.
            // Never for `cancel`: its id names another command, which must answer itself.
            DecodeError::InvalidMessage {
                kind,
                id: Some(id),
                message,
            } if kind != "cancel" => {
                let command_type = match kind.as_str() {
                    "SafeCommand" => "safe",
                    "UnsafeCommand" => "unsafe",
                    other => other,
                }
                .to_owned();
                let r = refused(id, ErrorCode::Invalid, message.clone(), &command_type);
                self.reply(kind, r);
            }
            // The original backend's `{"type":"Metrics"}` asks for a sample now.
            DecodeError::UnknownType { kind } if kind == "Metrics" => {
                tracing::info!("legacy Metrics request: sending a sample now");
                self.collect_metrics();
            }
            // The protocol's rule for the agent: log and ignore (there is no id to answer).
            _ => tracing::warn!(%error, "bad line from the host ignored"),
        }
    }

    /// Queue `vm_identification`, led by a `\n`.
    ///
    /// It is sent when the agent starts and when a host says hello: the moments a stream may
    /// hold a half line. On virtio-serial the host's connection outlives the agent, so an agent
    /// killed in the middle of a long line leaves that half line in front of its successor's
    /// first message; the newline ends it there (the host drops one bad line) instead of
    /// letting it swallow the identification. Receivers skip empty lines.
    fn queue_identification(&mut self) {
        let id = identification(&self.collector, &self.policy, self.vm_id.clone());
        let message = GuestMessage::VmIdentification(id);
        match encode_line(&message) {
            Ok(line) if line.len() < self.config.limits.max_line_bytes => {
                let mut led = Vec::with_capacity(line.len() + 1);
                led.push(b'\n');
                led.extend_from_slice(&line);
                self.outbox.push(LineClass::Identification, led);
            }
            _ => self.push(LineClass::Identification, &message),
        }
    }

    fn collect_metrics(&mut self) {
        let c = self.live.collectors;
        if c.system_metrics {
            let mut m = self.collector.system_metrics();
            m.timestamp.get_or_insert_with(Timestamp::now);
            if m.claimed_vm_id.is_none() {
                m.claimed_vm_id.clone_from(&self.vm_id);
            }
            self.push(
                LineClass::Telemetry(TelemetryKind::SystemMetrics),
                &GuestMessage::SystemMetrics(m),
            );
        }
        if c.process_snapshot {
            let mut s = self
                .collector
                .process_snapshot(self.config.limits.process_top_n);
            s.timestamp.get_or_insert_with(Timestamp::now);
            self.push(
                LineClass::Telemetry(TelemetryKind::ProcessSnapshot),
                &GuestMessage::ProcessSnapshot(s),
            );
        }
    }

    fn start_inventory_check(&mut self) {
        // One check at a time: a check still running when the next tick comes is enough.
        let Some(mut collector) = self.inventory_collector.take() else {
            self.inventory_rerun = true;
            return;
        };
        let generation = self.inventory_generation;
        let switches = self.live.collectors;
        let sent = self.inventory_sent;
        let max_line = self.config.limits.max_line_bytes;
        self.inventory_task = Some(tokio::task::spawn_blocking(move || {
            let changed = check_inventories(&mut collector, switches, sent, max_line);
            InventoryCheck {
                generation,
                collector,
                changed,
            }
        }));
    }

    fn finish_inventory_check(&mut self, check: Result<InventoryCheck, tokio::task::JoinError>) {
        self.inventory_task = None;
        match check {
            Ok(check) => {
                self.inventory_collector = Some(check.collector);
                let current = check.generation == self.inventory_generation;
                for (slot, kind, fingerprint, line) in check.changed {
                    if current {
                        self.inventory_sent[slot] = Some(fingerprint);
                    }
                    self.outbox.push(LineClass::Telemetry(kind), line);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "inventory check failed; starting over");
                self.inventory_collector = Some(self.collector.sibling());
            }
        }
        if std::mem::take(&mut self.inventory_rerun) {
            self.start_inventory_check();
        }
    }

    fn push(&mut self, class: LineClass, message: &GuestMessage) {
        match encode_line(message) {
            Ok(line) if line.len() > self.config.limits.max_line_bytes => {
                // The host would drop it whole; say so here instead of wasting the channel.
                tracing::warn!(
                    kind = message.kind(),
                    bytes = line.len(),
                    "message longer than the host's line limit: not sent"
                );
            }
            Ok(line) => self.outbox.push(class, line),
            Err(e) => tracing::error!(kind = message.kind(), error = %e, "cannot encode a message"),
        }
    }
}

/// Collect the enabled inventories and encode those whose fingerprint differs from `sent`.
/// Runs on a blocking thread.
fn check_inventories(
    collector: &mut Collector,
    c: CollectorsConfig,
    sent: [Option<u64>; 3],
    max_line: usize,
) -> Vec<(usize, TelemetryKind, u64, Vec<u8>)> {
    let mut changed = Vec::new();
    for (slot, kind) in INVENTORY_KINDS.into_iter().enumerate() {
        let message = match kind {
            TelemetryKind::PortUsage if c.port_usage => {
                let mut m = collector.port_usage();
                m.timestamp = None;
                GuestMessage::PortUsage(m)
            }
            TelemetryKind::ApplicationUsage if c.application_usage => {
                let mut m = collector.applications();
                m.timestamp = None;
                GuestMessage::ApplicationUsage(m)
            }
            TelemetryKind::ServiceInventory if c.service_inventory => {
                let mut m = collector.services();
                m.timestamp = None;
                GuestMessage::ServiceInventory(m)
            }
            _ => continue,
        };
        // Sent only when it changed. The fingerprint is taken without the timestamp, by
        // hashing the JSON as it is written: no second copy of a 100 kB inventory.
        let fingerprint = fingerprint(&message);
        if sent[slot] == Some(fingerprint) {
            continue;
        }
        let message = with_timestamp(message);
        match encode_exact(&message) {
            Some(line) if line.len() <= max_line => changed.push((slot, kind, fingerprint, line)),
            Some(line) => tracing::warn!(
                kind = message.kind(),
                bytes = line.len(),
                "inventory longer than the host's line limit: not sent"
            ),
            None => tracing::error!(kind = message.kind(), "cannot encode an inventory"),
        }
    }
    changed
}

/// Resolves when the running inventory check ends; never while none runs.
async fn join_inventory(
    task: &mut Option<tokio::task::JoinHandle<InventoryCheck>>,
) -> Option<Result<InventoryCheck, tokio::task::JoinError>> {
    match task {
        Some(handle) => Some(handle.await),
        None => std::future::pending().await,
    }
}

fn with_timestamp(message: GuestMessage) -> GuestMessage {
    let now = Some(Timestamp::now());
    match message {
        GuestMessage::PortUsage(mut m) => {
            m.timestamp = now;
            GuestMessage::PortUsage(m)
        }
        GuestMessage::ApplicationUsage(mut m) => {
            m.timestamp = now;
            GuestMessage::ApplicationUsage(m)
        }
        GuestMessage::ServiceInventory(mut m) => {
            m.timestamp = now;
            GuestMessage::ServiceInventory(m)
        }
        other => other,
    }
}

/// Encode into a buffer of exactly the line's size: inventories are the agent's biggest
/// messages, and a doubling Vec would hold up to twice their size at the peak.
fn encode_exact(message: &GuestMessage) -> Option<Vec<u8>> {
    struct CountWriter(usize);
    impl std::io::Write for CountWriter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = CountWriter(0);
    serde_json::to_writer(&mut counter, message).ok()?;
    let mut line = Vec::with_capacity(counter.0 + 1);
    serde_json::to_writer(&mut line, message).ok()?;
    line.push(b'\n');
    Some(line)
}

/// A hash of a message's JSON form, computed while serializing into the hasher.
fn fingerprint(message: &GuestMessage) -> u64 {
    struct HashWriter(std::collections::hash_map::DefaultHasher);
    impl std::io::Write for HashWriter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.write(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut writer = HashWriter(std::collections::hash_map::DefaultHasher::new());
    if serde_json::to_writer(&mut writer, message).is_err() {
        // Unreachable for these types (no non-string map keys).
        return 0;
    }
    writer.0.finish()
}

fn apply_switches(c: &mut CollectorsConfig, s: &CollectorSwitches) {
    let set = |field: &mut bool, value: Option<bool>| {
        if let Some(v) = value {
            *field = v;
        }
    };
    set(&mut c.system_metrics, s.system_metrics);
    set(&mut c.process_snapshot, s.process_snapshot);
    set(&mut c.port_usage, s.port_usage);
    set(&mut c.application_usage, s.application_usage);
    set(&mut c.service_inventory, s.service_inventory);
}

fn log_outcome(action: &str, response: &CommandResponse) {
    let outcome = match (&response.error, response.success) {
        (Some(e), _) => e.code.as_str(),
        (None, true) => "ok",
        (None, false) => "exit_nonzero",
    };
    tracing::info!(
        id = %response.id,
        %action,
        outcome,
        exit_code = ?response.exit_code,
        ms = response.execution_time_ms,
        "command finished"
    );
}

/// What the agent says of itself: the OS's view of the machine (`platform::info`), the
/// agent's version and capabilities, and the configured VM id.
pub fn identification(
    collector: &Collector,
    policy: &Policy,
    vm_id: Option<String>,
) -> VmIdentification {
    let mut id = info::identification(collector);
    id.timestamp = Some(Timestamp::now());
    id.agent_version = env!("CARGO_PKG_VERSION").into();
    id.protocol_version = PROTOCOL_VERSION;
    let mut capabilities = vec![
        "system_metrics",
        "process_snapshot",
        "port_usage",
        "application_usage",
        "service_inventory",
        "safe_commands",
        "cancel",
        "configure",
        "ping",
    ];
    if policy.check_unsafe().is_ok() {
        capabilities.push("unsafe_commands");
    }
    id.capabilities = capabilities.into_iter().map(String::from).collect();
    if id.claimed_vm_id.is_none() {
        id.claimed_vm_id = vm_id;
    }
    id
}

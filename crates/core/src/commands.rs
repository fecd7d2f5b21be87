//! Commands to guests: correlated by id, with a timeout, cancel, and prompt failure when the
//! VM is not connected or disconnects while a command waits.
//!
//! The id on the wire is always a uuid generated here, never the caller's, so that a guest can
//! only answer commands the host actually sent. A response is matched only against the
//! commands pending on the *same* VM's connection; anything else is dropped and counted.
//!
//! This is the command log's one writer: every command to a known VM is logged once, through
//! the store queue, in one shape (see `LogContext`), whether it was answered, failed or refused,
//! and announced once on the bus as it is logged (`CommandEnded`, Socket.IO's `vm:command`).
//! Lifecycle actions (create, power, attach, delete) are logged here too, like commands
//! ([`ActionLog`]), with kind `lifecycle`.
//!
//! `configure` (collection settings) travels the same way, correlated by id, but is not a
//! command of the log: [`CommandCenter::configure`].

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::oneshot;
use tokio::time::Instant;

use infinibay_protocol::message::{Cancel, CommandResponse, Configure};
use infinibay_protocol::{HostMessage, encode_line};
use infinibay_store::{CommandLogEntry, VmStatus};

use crate::bus::Bus;
use crate::registry::{PendingSlot, Registry, VmCounters, VmEntry};
use crate::store_writer::StoreQueue;
use infinibay_control::command::{Command, CommandError, CommandEvent, CommandSpec, CommandStatus};
use infinibay_control::console::{CONSOLE_KIND, ConsoleSession};
use infinibay_control::event::BusEvent;
use infinibay_control::lifecycle::LifecycleError;

const TARGET: &str = "infinibay::commands";

/// Sends commands and routes their responses. Cheap to clone.
#[derive(Clone)]
pub struct CommandCenter {
    registry: Arc<Registry>,
    queue: Arc<StoreQueue>,
    bus: Arc<dyn Bus>,
    default_timeout: Duration,
    max_pending_per_vm: usize,
}

impl std::fmt::Debug for CommandCenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandCenter")
            .field("default_timeout", &self.default_timeout)
            .finish_non_exhaustive()
    }
}

impl CommandCenter {
    pub(crate) fn new(
        registry: Arc<Registry>,
        queue: Arc<StoreQueue>,
        bus: Arc<dyn Bus>,
        default_timeout: Duration,
        max_pending_per_vm: usize,
    ) -> Self {
        Self {
            registry,
            queue,
            bus,
            default_timeout,
            max_pending_per_vm,
        }
    }

    /// Send `command` and wait for its response (default timeout when `None`).
    pub async fn send(
        &self,
        vm_id: &str,
        command: Command,
        timeout: Option<Duration>,
    ) -> Result<CommandResponse, CommandError> {
        self.start(vm_id, command, None)?.wait(timeout).await
    }

    /// Send `command` on behalf of `issued_by` (a user id, for the command log) and return a
    /// handle to wait for or cancel it. A command refused here (VM not connected, agent
    /// offline, …) is logged as such.
    pub fn start(
        &self,
        vm_id: &str,
        command: Command,
        issued_by: Option<i64>,
    ) -> Result<PendingCommand, CommandError> {
        let log = LogContext::new(vm_id, issued_by, CommandSpec::from(&command));
        self.start_logged(command, log)
    }

    /// Check `spec`, send it on behalf of `issued_by` and wait for the response, as long as
    /// its timeout asks (plus [`crate::command::WAIT_MARGIN`]) or the default. Refused,
    /// failed and answered commands are all logged, in the request's shape.
    pub async fn execute(
        &self,
        vm_id: &str,
        spec: CommandSpec,
        issued_by: Option<i64>,
    ) -> Result<CommandResponse, CommandError> {
        let wait = spec.wait().unwrap_or(self.default_timeout);
        let command = spec.to_command();
        let log = LogContext::new(vm_id, issued_by, spec);
        let command = match command {
            Ok(c) => c,
            Err(e) => return Err(self.refuse(&log, e)),
        };
        self.start_logged(command, log)?.wait(Some(wait)).await
    }

    /// Log a command the API refused (authorization) before it reached the core: one entry
    /// in the command log's shape, `{"host_error": "forbidden: <reason>", "code": "forbidden"}`.
    pub fn log_refused(
        &self,
        vm_id: &str,
        spec: CommandSpec,
        issued_by: Option<i64>,
        reason: &str,
    ) {
        let log = LogContext::new(vm_id, issued_by, spec);
        self.refuse(&log, CommandError::Forbidden(reason.to_owned()));
    }

    fn start_logged(
        &self,
        command: Command,
        log: LogContext,
    ) -> Result<PendingCommand, CommandError> {
        let message = command.into_message(log.id.clone());
        match self.send_now(&log.id, &log.vm_id, &message) {
            Ok((vm, rx)) => Ok(PendingCommand {
                vm,
                log,
                rx: Some(rx),
                queue: self.queue.clone(),
                bus: self.bus.clone(),
                default_timeout: self.default_timeout,
            }),
            Err(e) => Err(self.refuse(&log, e)),
        }
    }

    /// Log a command that never reached the guest. A VM the host does not know has nothing to
    /// log it under.
    fn refuse(&self, log: &LogContext, error: CommandError) -> CommandError {
        tracing::debug!(target: TARGET, vm = %log.vm_id, id = %log.id, "command refused: {error}");
        if self.registry.get(&log.vm_id).is_some() {
            log.finish(&Err(error.clone()), &self.queue, self.bus.as_ref());
        }
        error
    }

    /// Send `configure` (with a fresh id) and wait at most `timeout` for the agent's answer,
    /// which carries the effective settings. Not a command of the log.
    pub async fn configure(
        &self,
        vm_id: &str,
        mut configure: Configure,
        timeout: Duration,
    ) -> Result<CommandResponse, CommandError> {
        let id = uuid::Uuid::new_v4().to_string();
        configure.id = Some(id.clone());
        let (vm, rx) = self.send_now(&id, vm_id, &HostMessage::Configure(configure))?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(CommandError::Disconnected(vm_id.to_owned(), id)),
            Err(_) => {
                vm.live().pending.remove(&id);
                Err(CommandError::Timeout {
                    vm: vm_id.to_owned(),
                    id,
                    after: timeout,
                })
            }
        }
    }

    /// Queue the message on the VM's connection and register its id as waiting.
    fn send_now(
        &self,
        id: &str,
        vm_id: &str,
        message: &HostMessage,
    ) -> Result<(Arc<VmEntry>, Reply), CommandError> {
        let vm = self
            .registry
            .get(vm_id)
            .ok_or_else(|| CommandError::UnknownVm(vm_id.to_owned()))?;
        let kind = message.kind();
        let line = encode_line(message).map_err(|e| CommandError::Invalid(e.to_string()))?;
        let (reply, rx) = oneshot::channel();
        {
            let mut live = vm.live();
            let Some(outbound) = live.outbound.clone() else {
                return Err(CommandError::NotConnected(vm_id.to_owned()));
            };
            if live.status != VmStatus::Online {
                return Err(CommandError::AgentOffline(vm_id.to_owned()));
            }
            if live.pending.len() >= self.max_pending_per_vm {
                return Err(CommandError::TooManyPending {
                    vm: vm_id.to_owned(),
                    pending: live.pending.len(),
                });
            }
            match outbound.try_send(line) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    return Err(CommandError::QueueFull(vm_id.to_owned()));
                }
                Err(TrySendError::Closed(_)) => {
                    return Err(CommandError::NotConnected(vm_id.to_owned()));
                }
            }
            live.pending.insert(id.to_owned(), PendingSlot { reply });
        }
        tracing::debug!(target: TARGET, vm = vm_id, id, kind, "command sent");
        Ok((vm, rx))
    }

    /// Write a web console session (or a refused attempt) to the command log: kind `console`,
    /// `command` = where from and whether it took over, `response` = how it ended and how many
    /// bytes went each way, `success` = whether it opened. Queued like every other entry.
    pub fn record_console(&self, session: ConsoleSession) {
        self.queue.push_command_log(console_entry(session));
    }

    /// Log a lifecycle action like a command. A VM the host does not know (a `createVm` that
    /// failed, a deleted VM) has nothing to log it under: the host's log line is its record.
    pub(crate) fn record_action(&self, log: &ActionLog, outcome: Result<Value, &LifecycleError>) {
        match &outcome {
            Ok(_) => tracing::info!(target: "infinibay::lifecycle", vm = %log.vm_id,
                user = ?log.issued_by, action = log.action, "done"),
            Err(e) => tracing::info!(target: "infinibay::lifecycle", vm = %log.vm_id,
                user = ?log.issued_by, action = log.action, code = e.code(), "refused or failed: {e}"),
        }
        let entry = log.entry(outcome);
        if self.registry.get(&log.vm_id).is_some() {
            self.queue.push_command_log(entry);
        }
    }

    /// Ask the guest to stop command `id`; its response (error `cancelled`) completes the wait.
    pub fn cancel(&self, vm_id: &str, id: &str) -> Result<(), CommandError> {
        let vm = self
            .registry
            .get(vm_id)
            .ok_or_else(|| CommandError::UnknownVm(vm_id.to_owned()))?;
        send_cancel(&vm, id)
    }
}

fn send_cancel(vm: &VmEntry, id: &str) -> Result<(), CommandError> {
    let live = vm.live();
    if !live.pending.contains_key(id) {
        return Err(CommandError::NoSuchCommand(
            vm.id().to_owned(),
            id.to_owned(),
        ));
    }
    let Some(outbound) = live.outbound.as_ref() else {
        return Err(CommandError::NotConnected(vm.id().to_owned()));
    };
    let line = encode_line(&HostMessage::Cancel(Cancel { id: id.to_owned() }))
        .map_err(|e| CommandError::Invalid(e.to_string()))?;
    outbound.try_send(line).map_err(|e| match e {
        TrySendError::Full(_) => CommandError::QueueFull(vm.id().to_owned()),
        TrySendError::Closed(_) => CommandError::NotConnected(vm.id().to_owned()),
    })
}

/// The command log entry of a console session (the log's one shape, see [`LogContext`]).
fn console_entry(session: ConsoleSession) -> CommandLogEntry {
    CommandLogEntry {
        id: uuid::Uuid::new_v4().to_string(),
        vm_id: session.vm_id,
        user_id: session.user_id,
        kind: CONSOLE_KIND.to_owned(),
        command: serde_json::json!({
            "console": { "remote": session.remote, "took_over": session.took_over },
        }),
        response: Some(serde_json::json!({
            "code": session.end_code,
            "reason": session.end_reason,
            "opened": session.opened,
            "bytes_to_viewer": session.bytes_to_viewer,
            "bytes_from_viewer": session.bytes_from_viewer,
        })),
        success: session.opened,
        duration_ms: i64::try_from(session.duration_ms).unwrap_or(i64::MAX),
        created_at: session.started_at,
    }
}

/// The receiving end of a waiting command's slot.
type Reply = oneshot::Receiver<Result<CommandResponse, CommandError>>;

/// What the command log records about one command, whatever becomes of it: the one shape of
/// its entries (`command`: the [`CommandSpec`]; `response`: the guest's response, or
/// `{"host_error": message, "code": CommandError::code}`).
#[derive(Debug)]
struct LogContext {
    /// The id sent on the wire (a uuid made here), and the log entry's id.
    id: String,
    vm_id: String,
    issued_by: Option<i64>,
    spec: CommandSpec,
    started: Instant,
    created_at: chrono::DateTime<Utc>,
}

impl LogContext {
    fn new(vm_id: &str, issued_by: Option<i64>, spec: CommandSpec) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            vm_id: vm_id.to_owned(),
            issued_by,
            spec,
            started: Instant::now(),
            created_at: Utc::now(),
        }
    }

    /// Log the command's end and announce it (`CommandEnded`).
    fn finish(
        &self,
        outcome: &Result<CommandResponse, CommandError>,
        queue: &StoreQueue,
        bus: &dyn Bus,
    ) -> CommandLogEntry {
        let entry = self.entry(outcome);
        let (status, code) = match outcome {
            Ok(r) if r.success => (CommandStatus::Success, None),
            Ok(r) => (
                CommandStatus::Failed,
                r.error.as_ref().map(|e| e.code.as_str().to_owned()),
            ),
            Err(e) => (CommandStatus::Error, Some(e.code().to_owned())),
        };
        bus.publish(BusEvent::CommandEnded(Arc::new(CommandEvent {
            id: entry.id.clone(),
            vm_id: entry.vm_id.clone(),
            user_id: entry.user_id,
            kind: self.spec.kind,
            status,
            code,
            duration_ms: entry.duration_ms,
            at: Utc::now(),
        })));
        queue.push_command_log(entry.clone());
        entry
    }

    fn entry(&self, outcome: &Result<CommandResponse, CommandError>) -> CommandLogEntry {
        let duration_ms = self.started.elapsed().as_millis().min(i64::MAX as u128) as i64;
        let (response, success) = match outcome {
            Ok(r) => (serde_json::to_value(r).ok(), r.success),
            Err(e) => (
                Some(serde_json::json!({ "host_error": e.to_string(), "code": e.code() })),
                false,
            ),
        };
        CommandLogEntry {
            id: self.id.clone(),
            vm_id: self.vm_id.clone(),
            user_id: self.issued_by,
            kind: self.spec.kind.as_str().to_owned(),
            command: serde_json::to_value(&self.spec).unwrap_or(serde_json::Value::Null),
            response,
            success,
            duration_ms,
            created_at: self.created_at,
        }
    }
}

/// A lifecycle action as the command log records it: kind `lifecycle`, `command`
/// `{"type": "lifecycle", "action": <name>, "request": <what was asked, or null>}`, `response`
/// what it did, or `{"host_error": message, "code": LifecycleError::code}` like a refused
/// command.
#[derive(Debug)]
pub(crate) struct ActionLog {
    id: String,
    pub vm_id: String,
    pub issued_by: Option<i64>,
    pub action: &'static str,
    request: Value,
    started: Instant,
    created_at: chrono::DateTime<Utc>,
}

impl ActionLog {
    /// An action starting now.
    pub(crate) fn new(
        vm_id: &str,
        issued_by: Option<i64>,
        action: &'static str,
        request: Value,
    ) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            vm_id: vm_id.to_owned(),
            issued_by,
            action,
            request,
            started: Instant::now(),
            created_at: Utc::now(),
        }
    }

    fn entry(&self, outcome: Result<Value, &LifecycleError>) -> CommandLogEntry {
        let duration_ms = self.started.elapsed().as_millis().min(i64::MAX as u128) as i64;
        let (response, success) = match outcome {
            Ok(done) => (done, true),
            Err(e) => (
                serde_json::json!({ "host_error": e.to_string(), "code": e.code() }),
                false,
            ),
        };
        CommandLogEntry {
            id: self.id.clone(),
            vm_id: self.vm_id.clone(),
            user_id: self.issued_by,
            kind: "lifecycle".to_owned(),
            command: serde_json::json!({
                "type": "lifecycle",
                "action": self.action,
                "request": self.request,
            }),
            response: Some(response),
            success,
            duration_ms,
            created_at: self.created_at,
        }
    }
}

/// A command on its way. Dropping it forgets the command (a late response is then counted as
/// unmatched).
pub struct PendingCommand {
    vm: Arc<VmEntry>,
    log: LogContext,
    rx: Option<Reply>,
    queue: Arc<StoreQueue>,
    bus: Arc<dyn Bus>,
    default_timeout: Duration,
}

impl std::fmt::Debug for PendingCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingCommand")
            .field("vm", &self.vm.id())
            .field("id", &self.log.id)
            .finish_non_exhaustive()
    }
}

impl PendingCommand {
    /// The id sent on the wire.
    pub fn id(&self) -> &str {
        &self.log.id
    }

    /// The VM.
    pub fn vm_id(&self) -> &str {
        self.vm.id()
    }

    /// Send `cancel` for this command.
    pub fn cancel(&self) -> Result<(), CommandError> {
        send_cancel(&self.vm, self.id())
    }

    /// Wait for the response, at most `timeout` (the configured default when `None`). On
    /// timeout a `cancel` is sent so that the guest stops working for nobody.
    pub async fn wait(
        mut self,
        timeout: Option<Duration>,
    ) -> Result<CommandResponse, CommandError> {
        let timeout = timeout.unwrap_or(self.default_timeout);
        let id = self.log.id.clone();
        let Some(rx) = self.rx.take() else {
            return Err(CommandError::NoSuchCommand(self.vm.id().to_owned(), id));
        };
        let outcome = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            // The slot was dropped without an answer: the connection went away.
            Ok(Err(_)) => Err(CommandError::Disconnected(self.vm.id().to_owned(), id)),
            Err(_) => {
                let _ = send_cancel(&self.vm, &id);
                self.vm.live().pending.remove(&id);
                Err(CommandError::Timeout {
                    vm: self.vm.id().to_owned(),
                    id,
                    after: timeout,
                })
            }
        };
        self.record(&outcome);
        outcome
    }

    fn record(&self, outcome: &Result<CommandResponse, CommandError>) {
        let entry = self.log.finish(outcome, &self.queue, self.bus.as_ref());
        match outcome {
            Ok(r) => tracing::debug!(target: TARGET, vm = self.vm.id(), id = %entry.id,
                success = r.success, duration_ms = entry.duration_ms, "command answered"),
            Err(e) => tracing::info!(target: TARGET, vm = self.vm.id(), id = %entry.id,
                duration_ms = entry.duration_ms, "command failed: {e}"),
        }
    }
}

impl Drop for PendingCommand {
    fn drop(&mut self) {
        if self.rx.is_some() {
            self.vm.live().pending.remove(&self.log.id);
        }
    }
}

/// Route a guest's response to the command waiting for it on this VM. Returns `false` (and
/// counts it) when no such command waits.
pub(crate) fn deliver_response(vm: &VmEntry, response: CommandResponse) -> bool {
    let slot = vm.live().pending.remove(&response.id);
    match slot {
        Some(slot) => {
            // The waiter may have given up in the same instant; nothing to do then.
            let _ = slot.reply.send(Ok(response));
            true
        }
        None => {
            VmCounters::bump(&vm.counters.unmatched_responses);
            false
        }
    }
}

/// The connection closed: every waiting command fails now rather than at its timeout.
pub(crate) fn fail_all_pending(vm: &VmEntry) {
    let drained: Vec<(String, PendingSlot)> = vm.live().pending.drain().collect();
    for (id, slot) in drained {
        let _ = slot
            .reply
            .send(Err(CommandError::Disconnected(vm.id().to_owned(), id)));
    }
}

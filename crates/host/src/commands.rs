//! Commands to guests: correlated by id, with a timeout, cancel, and prompt failure when the
//! VM is not connected or disconnects while a command waits.
//!
//! The id on the wire is always a uuid generated here, never the caller's, so that a guest can
//! only answer commands the host actually sent. A response is matched only against the
//! commands pending on the *same* VM's connection; anything else is dropped and counted.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::oneshot;
use tokio::time::Instant;

use infinibay_protocol::message::{Cancel, CommandResponse};
use infinibay_protocol::{HostMessage, encode_line};
use infinibay_store::{CommandLogEntry, VmStatus};

use crate::command::{Command, CommandError};
use crate::registry::{PendingSlot, Registry, VmCounters, VmEntry};
use crate::store_writer::StoreQueue;

const TARGET: &str = "infinibay::commands";

/// Sends commands and routes their responses. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CommandCenter {
    registry: Arc<Registry>,
    queue: Arc<StoreQueue>,
    default_timeout: Duration,
    max_pending_per_vm: usize,
}

impl CommandCenter {
    pub(crate) fn new(
        registry: Arc<Registry>,
        queue: Arc<StoreQueue>,
        default_timeout: Duration,
        max_pending_per_vm: usize,
    ) -> Self {
        Self {
            registry,
            queue,
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
    /// handle to wait for or cancel it.
    pub fn start(
        &self,
        vm_id: &str,
        command: Command,
        issued_by: Option<i64>,
    ) -> Result<PendingCommand, CommandError> {
        let vm = self
            .registry
            .get(vm_id)
            .ok_or_else(|| CommandError::UnknownVm(vm_id.to_owned()))?;
        let id = uuid::Uuid::new_v4().to_string();
        let kind = command.kind();
        let message = command.into_message(id.clone());
        let logged = serde_json::to_value(&message).unwrap_or(serde_json::Value::Null);
        let line = encode_line(&message).map_err(|e| CommandError::Invalid(e.to_string()))?;
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
            live.pending.insert(id.clone(), PendingSlot { reply });
        }
        tracing::debug!(target: TARGET, vm = vm_id, id = %id, kind, "command sent");
        Ok(PendingCommand {
            vm,
            id,
            kind,
            issued_by,
            logged,
            rx: Some(rx),
            started: Instant::now(),
            created_at: Utc::now(),
            queue: self.queue.clone(),
            default_timeout: self.default_timeout,
        })
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

/// A command on its way. Dropping it forgets the command (a late response is then counted as
/// unmatched).
#[derive(Debug)]
pub struct PendingCommand {
    vm: Arc<VmEntry>,
    id: String,
    kind: &'static str,
    issued_by: Option<i64>,
    logged: serde_json::Value,
    rx: Option<oneshot::Receiver<Result<CommandResponse, CommandError>>>,
    started: Instant,
    created_at: chrono::DateTime<Utc>,
    queue: Arc<StoreQueue>,
    default_timeout: Duration,
}

impl PendingCommand {
    /// The id sent on the wire.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The VM.
    pub fn vm_id(&self) -> &str {
        self.vm.id()
    }

    /// Send `cancel` for this command.
    pub fn cancel(&self) -> Result<(), CommandError> {
        send_cancel(&self.vm, &self.id)
    }

    /// Wait for the response, at most `timeout` (the configured default when `None`). On
    /// timeout a `cancel` is sent so that the guest stops working for nobody.
    pub async fn wait(
        mut self,
        timeout: Option<Duration>,
    ) -> Result<CommandResponse, CommandError> {
        let timeout = timeout.unwrap_or(self.default_timeout);
        let Some(rx) = self.rx.take() else {
            return Err(CommandError::NoSuchCommand(
                self.vm.id().to_owned(),
                self.id.clone(),
            ));
        };
        let outcome = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            // The slot was dropped without an answer: the connection went away.
            Ok(Err(_)) => Err(CommandError::Disconnected(
                self.vm.id().to_owned(),
                self.id.clone(),
            )),
            Err(_) => {
                let _ = send_cancel(&self.vm, &self.id);
                self.vm.live().pending.remove(&self.id);
                Err(CommandError::Timeout {
                    vm: self.vm.id().to_owned(),
                    id: self.id.clone(),
                    after: timeout,
                })
            }
        };
        self.log(&outcome);
        outcome
    }

    fn log(&self, outcome: &Result<CommandResponse, CommandError>) {
        let duration_ms = self.started.elapsed().as_millis().min(i64::MAX as u128) as i64;
        let (response, success) = match outcome {
            Ok(r) => (serde_json::to_value(r).ok(), r.success),
            Err(e) => (
                Some(serde_json::json!({ "host_error": e.to_string() })),
                false,
            ),
        };
        match outcome {
            Ok(r) => tracing::debug!(target: TARGET, vm = self.vm.id(), id = %self.id,
                success = r.success, duration_ms, "command answered"),
            Err(e) => tracing::info!(target: TARGET, vm = self.vm.id(), id = %self.id,
                duration_ms, "command failed: {e}"),
        }
        self.queue.push_command_log(CommandLogEntry {
            id: self.id.clone(),
            vm_id: self.vm.id().to_owned(),
            user_id: self.issued_by,
            kind: self.kind.to_owned(),
            command: self.logged.clone(),
            response,
            success,
            duration_ms,
            created_at: self.created_at,
        });
    }
}

impl Drop for PendingCommand {
    fn drop(&mut self) {
        if self.rx.is_some() {
            self.vm.live().pending.remove(&self.id);
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

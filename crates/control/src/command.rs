//! The vocabulary of guest commands: a command as a user asks for it ([`CommandSpec`], the
//! shape the command log records), the checked command ([`Command`]), and why one produced no
//! response ([`CommandError`]). The API sends [`CommandSpec`]s; the core checks and sends them,
//! and logs them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use infinibay_protocol::HostMessage;
use infinibay_protocol::message::command::KNOWN_SAFE_ACTIONS;
use infinibay_protocol::message::{SafeAction, SafeCommand, UnsafeCommand};

/// A command for a guest. The id inside is replaced by a host-generated one when sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// A structured action.
    Safe(SafeCommand),
    /// A raw command line or argv.
    Unsafe(UnsafeCommand),
}

impl Command {
    /// A safe action with the agent's default timeout.
    pub fn safe(action: SafeAction) -> Self {
        Self::Safe(SafeCommand {
            id: String::new(),
            command_type: action,
            timeout: None,
        })
    }

    /// A shell command line (`sh -c`).
    pub fn shell(command_line: impl Into<String>) -> Self {
        Self::Unsafe(UnsafeCommand {
            raw_command: Some(command_line.into()),
            ..UnsafeCommand::default()
        })
    }

    /// Safe or unsafe, as the command log records it.
    pub fn kind(&self) -> CommandKind {
        match self {
            Self::Safe(_) => CommandKind::Safe,
            Self::Unsafe(_) => CommandKind::Unsafe,
        }
    }

    /// The wire message, with the host-generated `id`.
    pub fn into_message(self, id: String) -> HostMessage {
        match self {
            Self::Safe(mut c) => {
                c.id = id;
                HostMessage::SafeCommand(c)
            }
            Self::Unsafe(mut c) => {
                c.id = id;
                HostMessage::UnsafeCommand(c)
            }
        }
    }
}

impl From<SafeCommand> for Command {
    fn from(c: SafeCommand) -> Self {
        Self::Safe(c)
    }
}

impl From<UnsafeCommand> for Command {
    fn from(c: UnsafeCommand) -> Self {
        Self::Unsafe(c)
    }
}

impl From<SafeAction> for Command {
    fn from(a: SafeAction) -> Self {
        Self::safe(a)
    }
}

/// Why a command produced no response.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum CommandError {
    /// No VM with this id was ever seen.
    #[error("unknown VM {0}")]
    UnknownVm(String),
    /// The host has no open connection to the VM's socket.
    #[error("VM {0} is not connected (no open connection to its socket)")]
    NotConnected(String),
    /// The socket is connected but no agent has answered yet (or it stopped answering).
    #[error("VM {0} is connected but its agent is offline (no valid message recently)")]
    AgentOffline(String),
    /// The connection closed while the command waited.
    #[error("VM {0} disconnected before answering command {1}")]
    Disconnected(String, String),
    /// No response in time; a `cancel` was sent to the guest.
    #[error("command {id} to VM {vm} timed out after {after:?} (cancel sent)")]
    Timeout {
        /// VM.
        vm: String,
        /// Command id.
        id: String,
        /// How long we waited.
        after: Duration,
    },
    /// The VM's outgoing queue is full: the guest is not reading.
    #[error("VM {0} is not reading its socket (outgoing queue full)")]
    QueueFull(String),
    /// Too many commands already wait for this VM.
    #[error("VM {vm} already has {pending} commands waiting")]
    TooManyPending {
        /// VM.
        vm: String,
        /// Commands waiting.
        pending: usize,
    },
    /// `cancel` named a command that is not waiting.
    #[error("no command {1} is waiting on VM {0}")]
    NoSuchCommand(String, String),
    /// The command cannot be expressed on the wire.
    #[error("invalid command: {0}")]
    Invalid(String),
    /// No process serves the VM now (scale-out: no node answers for it, or the API has lost
    /// its connection to NATS): the command was not sent.
    #[error("VM {0} is unreachable: {1}")]
    Unreachable(String, String),
    /// The user may not send it (the API's authorization refused it; only logged).
    #[error("forbidden: {0}")]
    Forbidden(String),
}

impl CommandError {
    /// A stable machine-readable name (the command log's `code`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownVm(_) => "unknown_vm",
            Self::NotConnected(_) => "not_connected",
            Self::AgentOffline(_) => "agent_offline",
            Self::Disconnected(..) => "disconnected",
            Self::Timeout { .. } => "timeout",
            Self::QueueFull(_) => "queue_full",
            Self::TooManyPending { .. } => "too_many_pending",
            Self::NoSuchCommand(..) => "no_such_command",
            Self::Invalid(_) => "invalid",
            Self::Unreachable(..) => "unreachable",
            Self::Forbidden(_) => "forbidden",
        }
    }
}

/// Safe (a structured action) or unsafe (a raw command line or argv).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// A structured action.
    #[default]
    Safe,
    /// A raw command line or argv.
    Unsafe,
}

impl CommandKind {
    /// `safe` or `unsafe`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Safe => "safe",
            Self::Unsafe => "unsafe",
        }
    }
}

/// How a command ended, as `vm:command` tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    /// The guest answered with success.
    Success,
    /// The guest answered with a failure (its `error.code`, or a non-zero exit).
    Failed,
    /// No answer: refused before it left, timed out, or the VM went away
    /// ([`CommandError::code`]).
    Error,
}

impl CommandStatus {
    /// `success`, `failed` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Error => "error",
        }
    }
}

/// A command ended, whatever became of it (seed 001's `vm:command`): published by the core
/// once per command of a known VM, when it writes the command's log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandEvent {
    /// The command's id (the log entry's).
    pub id: String,
    /// VM.
    pub vm_id: String,
    /// The user who issued it.
    pub user_id: Option<i64>,
    /// Safe or unsafe.
    pub kind: CommandKind,
    /// How it ended.
    pub status: CommandStatus,
    /// The guest's error code (`failed`) or the host's ([`CommandError::code`], `error`).
    pub code: Option<String>,
    /// From issue to end.
    pub duration_ms: i64,
    /// Host time it ended.
    pub at: chrono::DateTime<chrono::Utc>,
}

/// How much longer than the guest's own timeout the host waits, so that the guest's `timeout`
/// answer arrives first.
pub const WAIT_MARGIN: Duration = Duration::from_secs(3);

/// A command as a user asks for it, before any check: SAFE is an action and its parameters in
/// the original agent's shape (`action: "ServiceControl", params: {service, operation}`),
/// UNSAFE a command line (`rawCommand`, with `shell`) or an `argv`. It is what crosses from the
/// API to the core, and the one shape the command log records as `command`, whether the command
/// ran, failed or was refused: every key is always there (`null` when unused).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CommandSpec {
    /// Safe or unsafe.
    #[serde(rename = "type")]
    pub kind: CommandKind,
    /// SAFE: the action's name.
    pub action: Option<String>,
    /// SAFE: the action's parameters (an object).
    pub params: Option<Value>,
    /// UNSAFE: a command line for the shell.
    pub raw_command: Option<String>,
    /// UNSAFE: program and arguments, run without a shell.
    pub argv: Option<Vec<String>>,
    /// UNSAFE: the shell for `rawCommand`.
    pub shell: Option<String>,
    /// UNSAFE: working directory.
    pub working_dir: Option<String>,
    /// UNSAFE: extra environment (names to strings).
    pub env_vars: Option<Value>,
    /// Seconds the guest may take (1–86,400); the host waits [`WAIT_MARGIN`] longer.
    pub timeout: Option<i64>,
}

impl CommandSpec {
    /// Check the request and build the command; [`CommandError::Invalid`] says what is wrong.
    pub fn to_command(&self) -> Result<Command, CommandError> {
        let invalid = |m: String| CommandError::Invalid(m);
        let timeout = match self.timeout {
            None => None,
            Some(t) if (1..=86_400).contains(&t) => Some(t as u64),
            Some(t) => {
                return Err(invalid(format!(
                    "timeout {t} out of range (1–86400 seconds)"
                )));
            }
        };
        match self.kind {
            CommandKind::Safe => {
                let action = self
                    .action
                    .as_deref()
                    .ok_or_else(|| invalid("SAFE commands need `action`".into()))?;
                let mut object = match &self.params {
                    None | Some(Value::Null) => serde_json::Map::new(),
                    Some(Value::Object(map)) => map.clone(),
                    Some(_) => return Err(invalid("`params` must be an object".into())),
                };
                object.insert("action".into(), Value::String(action.to_owned()));
                let parsed = SafeAction::from_json(Value::Object(object)).map_err(invalid)?;
                if let SafeAction::Unknown { action } = &parsed {
                    return Err(invalid(format!(
                        "unknown action `{action}` (known: {})",
                        KNOWN_SAFE_ACTIONS.join(", ")
                    )));
                }
                parsed.validate().map_err(invalid)?;
                Ok(Command::Safe(SafeCommand {
                    id: String::new(),
                    command_type: parsed,
                    timeout,
                }))
            }
            CommandKind::Unsafe => {
                let raw = self.raw_command.clone().filter(|c| !c.trim().is_empty());
                let argv = self.argv.clone().filter(|a| !a.is_empty());
                if raw.is_none() && argv.is_none() {
                    return Err(invalid(
                        "UNSAFE commands need `rawCommand` or `argv`".into(),
                    ));
                }
                if raw.is_some() && argv.is_some() {
                    return Err(invalid("give `rawCommand` or `argv`, not both".into()));
                }
                let env_vars = match &self.env_vars {
                    None | Some(Value::Null) => None,
                    Some(value) => Some(
                        serde_json::from_value::<BTreeMap<String, String>>(value.clone())
                            .map_err(|_| invalid("`envVars` must map names to strings".into()))?,
                    ),
                };
                Ok(Command::Unsafe(UnsafeCommand {
                    id: String::new(),
                    raw_command: raw,
                    argv,
                    shell: self.shell.clone(),
                    timeout,
                    working_dir: self.working_dir.clone(),
                    env_vars,
                }))
            }
        }
    }

    /// How long the host waits for the response: the guest's timeout and [`WAIT_MARGIN`], or
    /// `None` for the host's default.
    pub fn wait(&self) -> Option<Duration> {
        self.timeout
            .and_then(|t| u64::try_from(t).ok())
            .map(|t| Duration::from_secs(t) + WAIT_MARGIN)
    }
}

impl From<&Command> for CommandSpec {
    fn from(command: &Command) -> Self {
        match command {
            Command::Safe(c) => {
                // The action serialises as `{"action": name, ...params}`.
                let params = match serde_json::to_value(&c.command_type) {
                    Ok(Value::Object(mut map)) => {
                        map.remove("action");
                        (!map.is_empty()).then_some(Value::Object(map))
                    }
                    _ => None,
                };
                Self {
                    kind: CommandKind::Safe,
                    action: Some(c.command_type.name().to_owned()),
                    params,
                    timeout: c.timeout.map(|t| i64::try_from(t).unwrap_or(i64::MAX)),
                    ..Self::default()
                }
            }
            Command::Unsafe(c) => Self {
                kind: CommandKind::Unsafe,
                raw_command: c.raw_command.clone(),
                argv: c.argv.clone(),
                shell: c.shell.clone(),
                working_dir: c.working_dir.clone(),
                env_vars: c
                    .env_vars
                    .as_ref()
                    .and_then(|e| serde_json::to_value(e).ok()),
                timeout: c.timeout.map(|t| i64::try_from(t).unwrap_or(i64::MAX)),
                ..Self::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_and_the_command_it_builds_say_the_same() {
        let spec = CommandSpec {
            kind: CommandKind::Safe,
            action: Some("ServiceControl".into()),
            params: Some(serde_json::json!({"service": "ssh", "operation": "restart"})),
            timeout: Some(20),
            ..CommandSpec::default()
        };
        let command = spec.to_command().expect("valid");
        assert_eq!(CommandSpec::from(&command), spec);
        assert_eq!(spec.wait(), Some(Duration::from_secs(20) + WAIT_MARGIN));
        let shell = Command::shell("uptime");
        assert_eq!(
            CommandSpec::from(&shell).to_command().expect("valid"),
            shell
        );
    }

    #[test]
    fn malformed_requests_are_invalid_with_a_reason() {
        let cases = [
            (CommandSpec::default(), "need `action`"),
            (
                CommandSpec {
                    action: Some("Nope".into()),
                    ..CommandSpec::default()
                },
                "unknown action",
            ),
            (
                CommandSpec {
                    action: Some("ServiceControl".into()),
                    params: Some(serde_json::json!({"service": "--evil", "operation": "restart"})),
                    ..CommandSpec::default()
                },
                "service",
            ),
            (
                CommandSpec {
                    kind: CommandKind::Unsafe,
                    ..CommandSpec::default()
                },
                "`rawCommand` or `argv`",
            ),
            (
                CommandSpec {
                    kind: CommandKind::Unsafe,
                    raw_command: Some("true".into()),
                    timeout: Some(0),
                    ..CommandSpec::default()
                },
                "out of range",
            ),
        ];
        for (spec, reason) in cases {
            match spec.to_command() {
                Err(e @ CommandError::Invalid(_)) => {
                    assert!(e.to_string().contains(reason), "{e} lacks {reason:?}");
                    assert_eq!(e.code(), "invalid");
                }
                other => panic!("{spec:?} gave {other:?}"),
            }
        }
    }
}

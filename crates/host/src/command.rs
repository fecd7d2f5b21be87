//! The vocabulary of guest commands: what a command is and why one produced no response.
//! Shared by the sender ([`crate::commands`]), the registry (a waiting command's slot) and
//! everything that reports a command's fate.

use std::time::Duration;

use thiserror::Error;

use infinibay_protocol::HostMessage;
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

    /// `safe` or `unsafe`, as the command log records it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Safe(_) => "safe",
            Self::Unsafe(_) => "unsafe",
        }
    }

    pub(crate) fn into_message(self, id: String) -> HostMessage {
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
#[derive(Debug, Clone, PartialEq, Eq, Error)]
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
}

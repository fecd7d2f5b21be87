//! Every way a libvirt operation can fail, typed so that callers can answer users precisely.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use uuid::Uuid;
use virt::error::{ErrorDomain, ErrorNumber};

use crate::state::PowerState;

/// What was being done when an error happened (also used in logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// Opening the connection (`virConnectOpen`).
    Connect,
    /// Reading the daemon's capabilities or version.
    Probe,
    /// Listing domains or reading one.
    List,
    /// `createVm`: overlay, define, optionally start.
    Create,
    /// Starting a defined domain.
    PowerOn,
    /// ACPI shutdown (the guest decides).
    Shutdown,
    /// Forced power off (`virDomainDestroy`).
    PowerOff,
    /// ACPI reboot.
    Reboot,
    /// Pausing the vCPUs.
    Suspend,
    /// Resuming paused vCPUs.
    Resume,
    /// Destroy, undefine, remove sockets and overlay.
    Delete,
    /// Hot-plugging the agent's channel.
    AttachAgentChannel,
}

impl Operation {
    /// A short verb phrase for messages ("power on", "attach the agent channel to").
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Connect => "connect",
            Operation::Probe => "probe",
            Operation::List => "list",
            Operation::Create => "create",
            Operation::PowerOn => "power on",
            Operation::Shutdown => "shut down",
            Operation::PowerOff => "power off",
            Operation::Reboot => "reboot",
            Operation::Suspend => "suspend",
            Operation::Resume => "resume",
            Operation::Delete => "delete",
            Operation::AttachAgentChannel => "attach the agent channel to",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors of this crate. Each says what was asked and why it could not be done.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// libvirtd cannot be reached (not running, socket missing, permission denied, connection
    /// lost). `reason` is libvirt's own explanation.
    #[error("libvirt at {uri} is unreachable: {reason}")]
    Unreachable {
        /// The connection URI.
        uri: String,
        /// Why (libvirt's message, or "not connected yet").
        reason: String,
    },
    /// No domain with this UUID.
    #[error("no VM {uuid} in libvirt")]
    NoSuchDomain {
        /// The UUID asked for.
        uuid: Uuid,
    },
    /// Power on asked for a VM that is already running (or paused).
    #[error("VM {uuid} is already running")]
    AlreadyRunning {
        /// The VM.
        uuid: Uuid,
    },
    /// A power operation that needs a running VM was asked for one that is shut off.
    #[error("cannot {operation} VM {uuid}: it is not running")]
    NotRunning {
        /// The VM.
        uuid: Uuid,
        /// What was asked.
        operation: Operation,
    },
    /// The VM's state does not allow the operation (suspend a paused VM, resume a running one,
    /// shut down a paused one).
    #[error("cannot {operation} VM {uuid}: it is {state}")]
    InvalidState {
        /// The VM.
        uuid: Uuid,
        /// What was asked.
        operation: Operation,
        /// The state it is in.
        state: PowerState,
    },
    /// A domain with this name or UUID already exists.
    #[error("a VM named {name:?} or with UUID {uuid} already exists")]
    AlreadyExists {
        /// The name asked for.
        name: String,
        /// The UUID asked for.
        uuid: Uuid,
    },
    /// The request itself is wrong (empty name, zero memory, a path that cannot be used).
    #[error("invalid VM specification: {0}")]
    InvalidSpec(String),
    /// libvirt did not answer in time. The call may still complete in libvirtd.
    #[error("libvirt did not finish `{operation}` within {after:?}")]
    Timeout {
        /// What was asked.
        operation: Operation,
        /// How long we waited.
        after: Duration,
    },
    /// `qemu-img` failed to create an overlay.
    #[error("qemu-img could not create {overlay}: {message}")]
    Image {
        /// The overlay it was asked to create.
        overlay: PathBuf,
        /// qemu-img's output or the spawn error.
        message: String,
    },
    /// A file operation of ours failed (removing sockets or an overlay).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// libvirt refused, with its own code and message.
    #[error("libvirt could not {operation}: {message} (code {code})")]
    Libvirt {
        /// What was asked.
        operation: Operation,
        /// libvirt's error number (`virErrorNumber`).
        code: i32,
        /// libvirt's message.
        message: String,
    },
    /// A domain's XML could not be read (should not happen with libvirt's own XML).
    #[error("cannot read the domain XML: {0}")]
    Xml(String),
    /// The crate's own worker failed (a panic in a blocking call).
    #[error("internal error in the libvirt worker: {0}")]
    Internal(String),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the error means "libvirt is not there" (as opposed to "it said no").
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Unreachable { .. })
    }
}

/// Classifies an error libvirt returned for `operation`. `uuid` is the domain it was about,
/// `uri` the connection's; `alive` says whether the connection still answers (a call that
/// failed on a dead connection is "unreachable", whatever the code).
pub(crate) fn from_virt(
    error: virt::error::Error,
    operation: Operation,
    uuid: Option<Uuid>,
    uri: &str,
    alive: bool,
) -> Error {
    let code = error.code();
    if let (ErrorNumber::NoDomain, Some(uuid)) = (code, uuid) {
        return Error::NoSuchDomain { uuid };
    }
    let transport = matches!(error.domain(), ErrorDomain::Rpc | ErrorDomain::Remote)
        && matches!(
            code,
            ErrorNumber::SystemError
                | ErrorNumber::Rpc
                | ErrorNumber::NoConnect
                | ErrorNumber::InternalError
                | ErrorNumber::AuthFailed
                | ErrorNumber::AuthCancelled
                | ErrorNumber::AuthUnavailable
        );
    if !alive || transport || matches!(code, ErrorNumber::NoConnect) {
        return Error::Unreachable {
            uri: uri.to_owned(),
            reason: error.message().to_owned(),
        };
    }
    Error::Libvirt {
        operation,
        code: code.to_raw() as i32,
        message: error.message().to_owned(),
    }
}

//! The vocabulary of a VM's life in the hypervisor: its power state, the power actions a user
//! may ask for, what `createVm` takes, what the operations answer and why one could not be
//! done ([`LifecycleError`], with a stable code for every reason). The core carries them out
//! through libvirt and logs each one like a command; the API only asks.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The power state of a VM as the hypervisor reports it (`Vm.powerState`), beside the agent's
/// `online`/`offline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PowerState {
    /// vCPUs run.
    Running,
    /// vCPUs are paused (suspended by the host, or the guest sleeps).
    Paused,
    /// Not running: never started, shut down or destroyed.
    Shutoff,
    /// The guest or its emulator died.
    Crashed,
    /// Not known: the VM is no libvirt domain (its socket alone was seen), libvirt is not
    /// configured, or it cannot be reached right now.
    #[default]
    Unknown,
}

impl PowerState {
    /// `RUNNING`, `PAUSED`, `SHUTOFF`, `CRASHED`, `UNKNOWN` (GraphQL and event payloads).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "RUNNING",
            Self::Paused => "PAUSED",
            Self::Shutoff => "SHUTOFF",
            Self::Crashed => "CRASHED",
            Self::Unknown => "UNKNOWN",
        }
    }

    /// Whether an agent in this VM is expected to answer: the VM runs, or nobody knows (a VM
    /// without libvirt behaves as before libvirt existed). A VM that is shut off, crashed or
    /// paused has a silent agent for a reason, and must not be reported as "agent offline".
    /// This is the hook for rules such as "agent offline while the VM is running".
    pub fn expects_agent(self) -> bool {
        matches!(self, Self::Running | Self::Unknown)
    }

    /// Whether the VM runs, as the alert engine's "is the VM running" hook asks it (issue 15's
    /// `alerts::PowerState::is_running`): `Some(true)` when running, `Some(false)` when shut
    /// off, crashed or paused (a silent agent is expected), `None` when the hypervisor does not
    /// know (the engine then goes by the socket file).
    pub fn is_running(self) -> Option<bool> {
        match self {
            Self::Running => Some(true),
            Self::Paused | Self::Shutoff | Self::Crashed => Some(false),
            Self::Unknown => None,
        }
    }
}

impl std::fmt::Display for PowerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A power action on an existing VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PowerAction {
    /// Start a VM that is shut off.
    PowerOn,
    /// Ask the guest to shut down: through our agent when it is online, else the ACPI power
    /// button. The VM is `SHUTOFF` once the guest has powered off.
    Shutdown,
    /// Forced power off (the guest gets no say).
    PowerOff,
    /// ACPI reboot (the guest decides).
    Reboot,
    /// Pause the vCPUs.
    Suspend,
    /// Resume paused vCPUs.
    Resume,
}

impl PowerAction {
    /// Every action.
    pub const ALL: [PowerAction; 6] = [
        Self::PowerOn,
        Self::Shutdown,
        Self::PowerOff,
        Self::Reboot,
        Self::Suspend,
        Self::Resume,
    ];

    /// The name the command log and the GraphQL mutation use (`powerOn`, `shutdown`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PowerOn => "powerOn",
            Self::Shutdown => "shutdown",
            Self::PowerOff => "powerOff",
            Self::Reboot => "reboot",
            Self::Suspend => "suspend",
            Self::Resume => "resume",
        }
    }
}

/// Direct kernel boot for `createVm` (tests and appliance-style VMs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KernelBootSpec {
    /// A file in the host's image directory (its name, or an absolute path inside it).
    pub kernel: String,
    /// A file in the host's image directory.
    pub initrd: String,
    /// Kernel command line.
    pub cmdline: String,
}

/// What `createVm` asks for. The disk is a qcow2 overlay over `base_image`, or the VM boots
/// `kernel`; at least one of the two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateVmSpec {
    /// The VM's id (a UUID, which becomes the domain UUID); `None`: the core makes one. The
    /// API chooses it, so that it can announce the VM itself once its owner is set.
    pub id: Option<String>,
    /// Name (domain name and display name; 1–128 characters, no `/`, no control characters).
    pub name: String,
    /// RAM in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// A qcow2 file in the host's image directory (its name, or an absolute path inside it).
    pub base_image: Option<String>,
    /// Boot this kernel instead of (or before) the disk.
    pub kernel: Option<KernelBootSpec>,
    /// Start it at once (default in the API: yes).
    pub start: bool,
}

/// How a shutdown (or any power action) reached the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionPath {
    /// libvirt did it (start, destroy, suspend, resume).
    Libvirt,
    /// The ACPI power button (shutdown, reboot): the guest decides.
    Acpi,
    /// Our agent's `Shutdown` safe action.
    Agent,
}

impl ActionPath {
    /// `libvirt`, `acpi`, `agent`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Libvirt => "libvirt",
            Self::Acpi => "acpi",
            Self::Agent => "agent",
        }
    }
}

/// What a power action did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PowerOutcome {
    /// The action.
    pub action: PowerAction,
    /// How it reached the VM.
    pub via: ActionPath,
    /// The power state right after the call (a shutdown is still `RUNNING` until the guest
    /// has powered off: watch the events).
    pub power_state: PowerState,
}

/// What `deleteVm` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteOutcome {
    /// The core knew the VM.
    pub known: bool,
    /// It had a libvirt domain, which was deleted.
    pub had_domain: bool,
    /// The domain was running (or paused) and was destroyed first.
    pub destroyed: bool,
    /// Its persistent definition was removed.
    pub undefined: bool,
    /// Files removed: its sockets and its overlay.
    pub removed_files: Vec<String>,
}

/// What `attachAgentChannel` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelAttached {
    /// Host side of the VM's agent channel (where the host finds it).
    pub socket: String,
    /// Hot-plugged into the running domain now.
    pub attached_live: bool,
    /// Added to the persistent definition (effective from the next start).
    pub attached_config: bool,
}

/// Whether the core can reach a hypervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum HypervisorState {
    /// libvirt is not configured (`libvirt = "none"`): socket discovery only.
    Disabled,
    /// The first connection attempt is under way.
    Connecting {
        /// The URI.
        uri: String,
    },
    /// Connected; power states are live.
    Connected {
        /// The URI.
        uri: String,
    },
    /// Not connected; retried in the background.
    Disconnected {
        /// The URI.
        uri: String,
        /// Why (libvirt's message).
        reason: String,
    },
}

impl HypervisorState {
    /// `disabled`, `connecting`, `connected`, `disconnected`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::Connecting { .. } => "connecting",
            Self::Connected { .. } => "connected",
            Self::Disconnected { .. } => "disconnected",
        }
    }
}

/// The hypervisor as the API shows it: connection and the base images `createVm` can use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HypervisorInfo {
    /// Connected or not, and why not.
    pub state: HypervisorState,
    /// qcow2 files in the image directory a VM can be created from (overlays excluded),
    /// sorted by name.
    pub base_images: Vec<String>,
}

/// Why a lifecycle operation could not be done. Each reason has a stable code
/// ([`LifecycleError::code`], the API's `extensions.code`); none of them is a hang: libvirt
/// calls are bounded.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum LifecycleError {
    /// The core does not know this VM.
    #[error("unknown VM {0}")]
    UnknownVm(String),
    /// libvirt is not configured, or cannot be reached now.
    #[error("libvirt is unavailable: {0}")]
    Unavailable(String),
    /// The VM exists for infinibay but libvirt has no domain with its UUID (a VM seen only by
    /// its socket).
    #[error("VM {0} has no libvirt domain")]
    NoDomain(String),
    /// Power on of a VM that runs (or is paused).
    #[error("VM {0} is already running")]
    AlreadyRunning(String),
    /// An action that needs a running VM, on one that is not.
    #[error("cannot {action} VM {vm}: it is not running")]
    NotRunning {
        /// VM.
        vm: String,
        /// What was asked.
        action: String,
    },
    /// The state forbids the action (suspend a paused VM, resume a running one, shut down a
    /// paused one).
    #[error("cannot {action} VM {vm}: it is {state}")]
    InvalidState {
        /// VM.
        vm: String,
        /// What was asked.
        action: String,
        /// The state it is in.
        state: PowerState,
    },
    /// A domain with this name or UUID exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is wrong (name, sizes, an image outside the image directory, …).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// libvirt did not answer in time (the call may still complete).
    #[error("{0}")]
    Timeout(String),
    /// libvirt (or qemu-img, or a file operation) refused or failed.
    #[error("{0}")]
    Failed(String),
    /// The store failed.
    #[error("storage failed: {0}")]
    Storage(String),
}

impl LifecycleError {
    /// A stable machine-readable code: `NOT_FOUND`, `LIBVIRT_UNAVAILABLE`, `NO_DOMAIN`,
    /// `ALREADY_RUNNING`, `NOT_RUNNING`, `INVALID_STATE`, `ALREADY_EXISTS`, `INVALID`,
    /// `TIMEOUT`, `LIBVIRT_ERROR`, `INTERNAL`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownVm(_) => "NOT_FOUND",
            Self::Unavailable(_) => "LIBVIRT_UNAVAILABLE",
            Self::NoDomain(_) => "NO_DOMAIN",
            Self::AlreadyRunning(_) => "ALREADY_RUNNING",
            Self::NotRunning { .. } => "NOT_RUNNING",
            Self::InvalidState { .. } => "INVALID_STATE",
            Self::AlreadyExists(_) => "ALREADY_EXISTS",
            Self::Invalid(_) => "INVALID",
            Self::Timeout(_) => "TIMEOUT",
            Self::Failed(_) => "LIBVIRT_ERROR",
            Self::Storage(_) => "INTERNAL",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_running_vm_counts_as_running_and_an_unknown_one_is_left_to_the_socket() {
        assert_eq!(PowerState::Running.is_running(), Some(true));
        for quiet in [PowerState::Paused, PowerState::Shutoff, PowerState::Crashed] {
            assert_eq!(quiet.is_running(), Some(false), "{quiet}");
            assert!(!quiet.expects_agent(), "{quiet}");
        }
        assert_eq!(PowerState::Unknown.is_running(), None);
        assert!(PowerState::Unknown.expects_agent());
    }

    #[test]
    fn power_states_and_errors_keep_their_wire_names() {
        for (state, name) in [
            (PowerState::Running, "RUNNING"),
            (PowerState::Paused, "PAUSED"),
            (PowerState::Shutoff, "SHUTOFF"),
            (PowerState::Crashed, "CRASHED"),
            (PowerState::Unknown, "UNKNOWN"),
        ] {
            assert_eq!(state.as_str(), name);
            let wire = serde_json::to_string(&state).expect("serialises");
            assert_eq!(wire, format!("\"{name}\""));
        }
        let error = LifecycleError::InvalidState {
            vm: "v".into(),
            action: "suspend".into(),
            state: PowerState::Paused,
        };
        assert_eq!(error.code(), "INVALID_STATE");
        assert_eq!(error.to_string(), "cannot suspend VM v: it is PAUSED");
        let back: LifecycleError =
            serde_json::from_str(&serde_json::to_string(&error).expect("ser")).expect("de");
        assert_eq!(back, error);
    }

    #[test]
    fn only_a_running_or_unknown_vm_is_expected_to_have_its_agent_answer() {
        assert!(PowerState::Running.expects_agent());
        assert!(PowerState::Unknown.expects_agent());
        for quiet in [PowerState::Shutoff, PowerState::Crashed, PowerState::Paused] {
            assert!(!quiet.expects_agent(), "{quiet}");
        }
    }
}

//! The messages of protocol v1, both directions.
//!
//! Every message is a JSON object with a `type`. Serialization uses serde's tagged enums;
//! decoding goes through [`crate::decode`], which reads `type` first and then parses the one
//! struct it names, so that malformed input yields a precise error and never a panic.

pub mod command;
pub mod telemetry;

use serde::{Deserialize, Serialize};

pub use command::{
    CommandResponse, ErrorCode, ResponseError, SafeAction, SafeCommand, ServiceOperation,
    UnsafeCommand,
};
pub use telemetry::*;

use crate::time::Timestamp;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Messages a guest agent sends to the host.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum GuestMessage {
    /// The agent introduces itself (at start and after every `hello`).
    #[serde(rename = "vm_identification")]
    VmIdentification(VmIdentification),
    /// Periodic system sample.
    #[serde(rename = "system_metrics")]
    SystemMetrics(SystemMetrics),
    /// Top processes.
    #[serde(rename = "process_snapshot")]
    ProcessSnapshot(ProcessSnapshot),
    /// Installed applications.
    #[serde(rename = "application_usage")]
    ApplicationUsage(ApplicationUsage),
    /// Listening sockets.
    #[serde(rename = "port_usage")]
    PortUsage(PortUsage),
    /// Services.
    #[serde(rename = "service_inventory")]
    ServiceInventory(ServiceInventory),
    /// Answer to a command.
    #[serde(rename = "response")]
    Response(CommandResponse),
    /// Something went wrong in the agent.
    #[serde(rename = "error")]
    Error(GuestError),
    /// Answer to `ping`; also the liveness signal the original agent's keep-alives map to.
    #[serde(rename = "pong")]
    Pong(Pong),
}

impl GuestMessage {
    /// The wire `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::VmIdentification(_) => "vm_identification",
            Self::SystemMetrics(_) => "system_metrics",
            Self::ProcessSnapshot(_) => "process_snapshot",
            Self::ApplicationUsage(_) => "application_usage",
            Self::PortUsage(_) => "port_usage",
            Self::ServiceInventory(_) => "service_inventory",
            Self::Response(_) => "response",
            Self::Error(_) => "error",
            Self::Pong(_) => "pong",
        }
    }
}

/// Messages the host sends to a guest agent.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum HostMessage {
    /// Sent after 0xFF on every (re)connect: "introduce yourself".
    #[serde(rename = "hello")]
    Hello(Hello),
    /// The host's answer to `vm_identification`: the version it will speak.
    #[serde(rename = "welcome")]
    Welcome(Welcome),
    /// Liveness probe; answered with `pong` carrying the same id.
    #[serde(rename = "ping")]
    Ping(Ping),
    /// A structured command.
    SafeCommand(SafeCommand),
    /// A raw command.
    UnsafeCommand(UnsafeCommand),
    /// Stop a running command; it answers with `cancelled`.
    #[serde(rename = "cancel")]
    Cancel(Cancel),
    /// Change what the agent collects and how often.
    #[serde(rename = "configure")]
    Configure(Configure),
}

impl HostMessage {
    /// The wire `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Hello(_) => "hello",
            Self::Welcome(_) => "welcome",
            Self::Ping(_) => "ping",
            Self::SafeCommand(_) => "SafeCommand",
            Self::UnsafeCommand(_) => "UnsafeCommand",
            Self::Cancel(_) => "cancel",
            Self::Configure(_) => "configure",
        }
    }

    /// The request id, for messages that expect a `response` or `pong`.
    pub fn id(&self) -> Option<&str> {
        match self {
            Self::Ping(p) => p.id.as_deref(),
            Self::SafeCommand(c) => Some(&c.id),
            Self::UnsafeCommand(c) => Some(&c.id),
            Self::Configure(c) => c.id.as_deref(),
            Self::Cancel(c) => Some(&c.id),
            Self::Hello(_) | Self::Welcome(_) => None,
        }
    }
}

/// `vm_identification`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct VmIdentification {
    /// Guest clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
    /// Agent version (`0.1.0`).
    #[serde(default)]
    pub agent_version: String,
    /// Highest protocol version the agent speaks.
    #[serde(default = "default_protocol_version")]
    pub protocol_version: u32,
    /// Collectors and command families the agent offers (`system_metrics`, `safe_commands`,
    /// `unsafe_commands`, `cancel`, …).
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// `linux` or `windows`.
    #[serde(default)]
    pub os: String,
    /// Distribution and version (`Debian GNU/Linux 12 (bookworm)`); seed 003 calls it `version`.
    #[serde(default, alias = "version")]
    pub os_version: String,
    /// Kernel release.
    #[serde(default, alias = "kernel_version")]
    pub kernel: String,
    /// Host name.
    #[serde(default)]
    pub hostname: String,
    /// CPU architecture (`x86_64`).
    #[serde(default)]
    pub architecture: String,
    /// The VM id the agent was configured with. Informational only.
    #[serde(
        rename = "vmId",
        alias = "vm_id",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub claimed_vm_id: Option<String>,
}

fn default_protocol_version() -> u32 {
    PROTOCOL_VERSION
}

/// `error`: the agent reports a fault of its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct GuestError {
    /// Guest clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
    /// Short machine-readable kind, when the agent has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// What went wrong (seed 001: `error`).
    #[serde(default)]
    pub error: String,
    /// More context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

/// `pong`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Pong {
    /// The ping's id; absent for unsolicited keep-alives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Guest clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
}

/// `hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Highest protocol version the host speaks.
    pub protocol_version: u32,
    /// Host clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
}

/// `welcome`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// The version both sides will speak: the lower of the two.
    pub protocol_version: u32,
    /// Host clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
}

/// `ping`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Ping {
    /// Echoed in the `pong`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Host clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
}

/// `cancel`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cancel {
    /// Id of the command to stop.
    pub id: String,
}

/// `configure`. Absent fields keep their current value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Configure {
    /// When present, the agent answers with a `response` carrying the effective settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Seconds between `system_metrics` (and `process_snapshot`) samples; 1 at least.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection_interval: Option<u64>,
    /// Seconds between inventory checks (applications, services, ports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory_interval: Option<u64>,
    /// Which collectors run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collectors: Option<CollectorSwitches>,
}

/// On/off per collector; absent means unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CollectorSwitches {
    /// `system_metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_metrics: Option<bool>,
    /// `process_snapshot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_snapshot: Option<bool>,
    /// `port_usage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_usage: Option<bool>,
    /// `application_usage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_usage: Option<bool>,
    /// `service_inventory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_inventory: Option<bool>,
}

//! What travels on the subjects: JSON of the interface's own types, in a few envelopes.
//!
//! - [`Envelope`]: an event as a node publishes it, with the node's name and the event's place
//!   in that node's order (`seq`), so that an API can tell a status event from a VM list fetched
//!   at another moment apart.
//! - [`Heartbeat`]: a node is alive, with its counters.
//! - [`VmRequest`] / [`NodeRequest`]: requests; each names the type of its answer, always sent as
//!   `Result<T, WireError>` JSON.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use infinibay_control::{BusEvent, CommandSpec, CoreStats};

/// An event as published by a node (borrowing, for encoding).
#[derive(Debug, Serialize)]
pub struct EnvelopeRef<'a> {
    /// The node that published it.
    pub node: &'a str,
    /// Its place in the node's order of events.
    pub seq: u64,
    /// The event.
    pub event: &'a BusEvent,
}

/// An event as received.
#[derive(Debug, Clone, Deserialize)]
pub struct Envelope {
    /// The node that published it.
    pub node: String,
    /// Its place in the node's order of events.
    pub seq: u64,
    /// The event.
    pub event: BusEvent,
}

/// What a node's heartbeat says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The node's name.
    pub node: String,
    /// This run of the node (a new one after each restart: its VM list must be fetched again).
    pub incarnation: String,
    /// Events the node has published so far (the `seq` of the last one).
    pub seq: u64,
    /// Generation of the node's set of VMs: a change means a VM came or went.
    pub membership: u64,
    /// When it was sent (the node's clock).
    pub sent_at: DateTime<Utc>,
    /// The node's heartbeat interval, in milliseconds.
    pub interval_ms: u64,
    /// The node's core counters.
    pub stats: CoreStats,
    /// The node's last store probe answered.
    pub store_ok: bool,
    /// Its error, when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_error: Option<String>,
    /// The node's event outbox.
    pub bus: crate::bus::BusStats,
}

/// A request about one VM, on `infinibay.rpc.vm.<vm>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum VmRequest {
    /// Its live state → `Option<VmSnapshot>`.
    Snapshot,
    /// Its newest sample since the node started → `Option<MetricSample>`.
    LatestSample,
    /// Run a command → `Result<CommandResponse, CommandError>`.
    Execute {
        /// The command as the user asked for it.
        command: CommandSpec,
        /// Who asked.
        issued_by: Option<i64>,
    },
    /// Cancel a running command → `Result<(), CommandError>`.
    Cancel {
        /// The command's id.
        command_id: String,
    },
    /// Delete the VM on behalf of `issued_by`: its libvirt domain when it has one, then the
    /// VM and what is stored about it → `Result<DeleteOutcome, LifecycleError>`.
    Delete {
        /// Who asked.
        issued_by: Option<i64>,
    },
    /// A power action → `Result<PowerOutcome, LifecycleError>`.
    Power {
        /// What to do.
        action: infinibay_control::PowerAction,
        /// Who asked.
        issued_by: Option<i64>,
    },
    /// Hot-plug the agent's channel into the VM's domain →
    /// `Result<ChannelAttached, LifecycleError>`.
    AttachAgentChannel {
        /// Who asked.
        issued_by: Option<i64>,
    },
    /// Store an alert rule for this VM and evaluate it → `Result<AlertRule, ControlError>`.
    CreateAlertRule {
        /// The rule (its `vm_id` is this VM).
        rule: infinibay_control::NewAlertRule,
        /// Who set it.
        created_by: Option<i64>,
    },
    /// Store the VM's collection settings and send them to its agent →
    /// `Result<TelemetryOutcome, ControlError>`.
    SetTelemetry {
        /// The settings.
        request: infinibay_control::TelemetryRequest,
        /// Who set them.
        updated_by: Option<i64>,
    },
    /// Write a command the API refused to the command log (the node's core is its one
    /// writer) → `()`.
    LogRefused {
        /// The command as the user asked for it.
        command: CommandSpec,
        /// Who asked.
        issued_by: Option<i64>,
        /// Why the API refused it.
        reason: String,
    },
    /// Write a web console session (or a refused attempt) to the command log (the node's
    /// core is its one writer) → `()`.
    RecordConsole {
        /// The session as the API's console service ended it.
        session: infinibay_control::ConsoleSession,
    },
}

/// A request to one node, on `infinibay.rpc.node.<node>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum NodeRequest {
    /// Delete an alert rule (its open alerts resolved) if this node's core holds it →
    /// `Result<bool, ControlError>`.
    DeleteAlertRule {
        /// The rule's id.
        rule_id: String,
    },
    /// A page of its VMs, by id after `after` → `Page<VmSnapshot>`.
    Vms {
        /// Last id of the previous page.
        after: Option<String>,
    },
    /// A page of its VMs' newest samples → `Page<MetricSample>`.
    LatestSamples {
        /// Last VM id of the previous page.
        after: Option<String>,
    },
    /// Who answers (a node starting checks that its name is free) → `Heartbeat`.
    Whoami,
    /// Its hypervisor: libvirt's state and the base images → `HypervisorInfo`.
    Hypervisor,
    /// Create a VM in this node's libvirt → `Result<VmSnapshot, LifecycleError>`.
    CreateVm {
        /// What to create.
        spec: infinibay_control::CreateVmSpec,
        /// Who asked.
        issued_by: Option<i64>,
    },
}

/// A page of a node's list, cut to fit the server's message size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page<T> {
    /// The items, ordered by VM id.
    pub items: Vec<T>,
    /// The id to ask after for the next page; `None` on the last.
    pub next: Option<String>,
    /// The node's event `seq` when the page was made.
    pub seq: u64,
    /// The node's membership generation when the page was made.
    pub membership: u64,
    /// The node's incarnation.
    pub incarnation: String,
}

/// A request that failed on the node's side for a reason that is not the operation's own
/// error (those travel inside the answer's type).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WireError {
    /// The request did not decode.
    #[error("bad request: {0}")]
    BadRequest(String),
}

/// A malformed message.
#[derive(Debug, thiserror::Error)]
#[error("malformed {what}: {source}")]
pub struct DecodeError {
    /// What was expected.
    pub what: &'static str,
    /// Why it did not decode.
    pub source: serde_json::Error,
}

/// JSON of `value`; the interface's types always serialise (a failure is a bug, logged, and
/// the message is not sent).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Option<bytes::Bytes> {
    match serde_json::to_vec(value) {
        Ok(v) => Some(bytes::Bytes::from(v)),
        Err(e) => {
            tracing::error!(target: "infinibay::cluster", "cannot encode a message: {e}");
            None
        }
    }
}

/// `T` from JSON.
pub fn decode<T: DeserializeOwned>(what: &'static str, payload: &[u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(payload).map_err(|source| DecodeError { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use infinibay_control::{StatusEvent, StatusReason};
    use infinibay_store::VmStatus;

    #[test]
    fn an_envelope_carries_any_event_variant_back_unchanged() {
        let event = BusEvent::Status(StatusEvent {
            vm_id: "v".into(),
            status: VmStatus::Offline,
            at: Utc::now(),
            reason: StatusReason::NodeUnreachable,
        });
        let bytes = encode(&EnvelopeRef {
            node: "n1",
            seq: 7,
            event: &event,
        })
        .expect("encodes");
        let back: Envelope = decode("envelope", &bytes).expect("decodes");
        assert_eq!((back.node.as_str(), back.seq), ("n1", 7));
        assert_eq!(back.event.subject(), event.subject());
        let request = VmRequest::Execute {
            command: CommandSpec::default(),
            issued_by: Some(3),
        };
        let back: VmRequest =
            decode("request", &encode(&request).expect("encodes")).expect("decodes");
        assert_eq!(back, request);
    }
}

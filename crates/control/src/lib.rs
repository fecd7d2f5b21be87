//! The one interface between infinibay's two halves: the guest-facing **core** (discovery,
//! connections, ingest, guest commands, the store writer) and the user-facing **API**
//! (GraphQL, Socket.IO, REST, authentication). The API reaches the core only through
//! [`VmControl`]; the core implements it. The same trait is what a NATS transport carries when
//! the two run in separate processes (`infinibay node` / `infinibay api`): every method is
//! async, the trait is object-safe, and everything that crosses it serialises.
//!
//! - [`event`]: what the core publishes (samples, status, inventories, errors, agent) and the
//!   subscriptions that receive it, with NATS-shaped subjects and patterns;
//! - [`command`]: a command as a user asks for it ([`CommandSpec`]), the checked [`Command`] and
//!   why one produced no response ([`CommandError`]);
//! - [`vm`]: the live state and counters of VMs;
//! - [`alert`]: alert rules as an administrator asks for them, and alert events;
//! - [`telemetry`]: collection settings as a user asks for them;
//! - [`console`]: a web console session, for the command log;
//! - [`lifecycle`]: the VM in the hypervisor — power state, power actions, `createVm`, and why
//!   one of them could not be done ([`LifecycleError`]).
//!
//! **What each side must never do.** The API never opens a guest socket, never writes what the
//! core writes (samples, statuses, inventories, VM errors, the command log) and never reaches
//! the core but through this trait; it reads history, VM records and users from the store
//! directly, and writes only accounts, VM ownership and console tickets. The core never decides who may see or
//! do what (that is the API's `authz`), never trusts a guest's claim about which VM it is, and
//! never waits for a consumer of its events.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod alert;
pub mod command;
pub mod console;
pub mod event;
pub mod lifecycle;
pub mod telemetry;
pub mod vm;

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use infinibay_protocol::message::CommandResponse;
use infinibay_store::{AlertRule, MetricSample};

pub use alert::{AlertEvent, AlertTransition, NewAlertRule};
pub use command::{Command, CommandError, CommandEvent, CommandKind, CommandSpec, CommandStatus};
pub use console::{CONSOLE_KIND, ConsoleSession};
pub use event::{
    BusEvent, Filter, PowerCause, PowerEvent, Received, StatusEvent, StatusReason, Subscription,
    Topic,
};
pub use lifecycle::{
    ActionPath, ChannelAttached, CreateVmSpec, DeleteOutcome, HypervisorInfo, HypervisorState,
    KernelBootSpec, LifecycleError, PowerAction, PowerOutcome, PowerState,
};
pub use telemetry::{TelemetryOutcome, TelemetryRequest};
pub use vm::{AlertStats, CoreStats, QueueStats, VmSnapshot, VmStats, VmTotals};

/// Why a call on [`VmControl`] failed, for the calls that are not commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ControlError {
    /// The core's storage refused or failed.
    #[error("storage failed: {0}")]
    Storage(String),
    /// No process serves the VM now (scale-out: no node answers for it, or NATS is down).
    #[error("VM {0} is unreachable: {1}")]
    Unreachable(String, String),
    /// The request is malformed or out of range; nothing was stored.
    #[error("{0}")]
    Invalid(String),
    /// What the request names does not exist.
    #[error("{0}")]
    NotFound(String),
}

/// What the API may ask of the core: list and watch VMs, subscribe to samples and events, send
/// and cancel commands, create, power and delete VMs in the hypervisor, read the core's
/// counters.
#[async_trait]
pub trait VmControl: Send + Sync + 'static {
    /// Every VM the core knows, with its live state, ordered by id.
    async fn vms(&self) -> Vec<VmSnapshot>;

    /// One VM's live state.
    async fn vm(&self, vm_id: &str) -> Option<VmSnapshot>;

    /// The newest sample of every VM that sent one since the core started, by VM id.
    async fn latest_samples(&self) -> Vec<Arc<MetricSample>>;

    /// The newest sample of one VM since the core started (`None` before its first; the store
    /// keeps the last persisted one).
    async fn latest_sample(&self, vm_id: &str) -> Option<Arc<MetricSample>>;

    /// The events that pass `filter`, from now on: status changes (watching VMs), samples,
    /// inventories, errors, agent identifications.
    async fn subscribe(&self, filter: Filter) -> Subscription;

    /// Check `command`, send it to the VM on behalf of `issued_by` and wait for its response.
    /// The core logs it, with the user, whatever happens (answered, failed or refused).
    async fn execute(
        &self,
        vm_id: &str,
        command: CommandSpec,
        issued_by: Option<i64>,
    ) -> Result<CommandResponse, CommandError>;

    /// Write a web console session (or a refused attempt) to the command log, as kind
    /// `console`: the core is the log's one writer. Queued, never waited for.
    async fn record_console_session(&self, session: ConsoleSession);

    /// Write a command the API refused before asking the core (the user may not command this
    /// VM, or not this kind of command) to the command log, with the user and `reason`: the
    /// core is the log's one writer, and a refused attempt belongs in the audit trail. A VM
    /// the core does not know has nothing to log it under.
    async fn log_refused(
        &self,
        vm_id: &str,
        command: CommandSpec,
        issued_by: Option<i64>,
        reason: &str,
    );

    /// Ask the guest to stop a running command (its id is the response's and the log's).
    async fn cancel_command(&self, vm_id: &str, command_id: &str) -> Result<(), CommandError>;

    /// Delete a VM on behalf of `issued_by`: its libvirt domain when it has one (destroyed if
    /// it runs, undefined, its sockets and overlay removed), then the VM itself — its
    /// connection closes at the next directory scan, its socket is ignored until the file goes
    /// away, and everything stored about it is deleted. A VM libvirt does not know is only
    /// forgotten. Refused with [`LifecycleError::Unavailable`] while libvirt, which knows the
    /// domain, cannot be reached (the record is not deleted while the domain exists).
    async fn delete_vm(
        &self,
        vm_id: &str,
        issued_by: Option<i64>,
    ) -> Result<DeleteOutcome, LifecycleError>;

    /// Create a VM in libvirt on behalf of `issued_by`: a domain with the agent's channel,
    /// qemu-ga's channel and VNC on a socket, registered as a VM at once (the caller then sets
    /// its owner). Logged like a command.
    async fn create_vm(
        &self,
        spec: CreateVmSpec,
        issued_by: Option<i64>,
    ) -> Result<VmSnapshot, LifecycleError>;

    /// A power action on behalf of `issued_by`, logged like a command. `Shutdown` goes through
    /// the VM's agent when it is online (its `Shutdown` safe action), else the ACPI button.
    async fn power(
        &self,
        vm_id: &str,
        action: PowerAction,
        issued_by: Option<i64>,
    ) -> Result<PowerOutcome, LifecycleError>;

    /// Adopt an existing domain: hot-plug the `org.infinibay.agent` channel (live and into its
    /// persistent definition, each where missing). Logged like a command.
    async fn attach_agent_channel(
        &self,
        vm_id: &str,
        issued_by: Option<i64>,
    ) -> Result<ChannelAttached, LifecycleError>;

    /// Whether the hypervisor is reachable, and the base images `createVm` can use.
    async fn hypervisor(&self) -> HypervisorInfo;

    /// The core's counters.
    async fn stats(&self) -> CoreStats;

    /// Whether a VM that [`VmControl::vm`] does not know is offline. `false` (the embedded
    /// core): the store's status is the truth, because the one core that writes it writes
    /// `offline` when it loses a VM or stops. `true` (scale-out, `infinibay api`): VMs are
    /// served by nodes that can die without writing anything, so a VM no live node serves is
    /// offline whatever the store last heard.
    fn unknown_vms_are_offline(&self) -> bool {
        false
    }
    /// Check and store an alert rule set by `created_by` (an administrator: the API decides
    /// that), and evaluate it from the next sample or event on. `Invalid` (out of range, too
    /// many rules) and `NotFound` (no such VM) store nothing.
    async fn create_alert_rule(
        &self,
        rule: NewAlertRule,
        created_by: Option<i64>,
    ) -> Result<AlertRule, ControlError>;

    /// Delete an alert rule; its open alerts are resolved. `true` when it existed.
    async fn delete_alert_rule(&self, rule_id: &str) -> Result<bool, ControlError>;

    /// Check and store a VM's collection settings, send them to its agent as `configure` now
    /// (waiting briefly for the answer) and again whenever the agent connects.
    async fn set_telemetry(
        &self,
        vm_id: &str,
        request: TelemetryRequest,
        updated_by: Option<i64>,
    ) -> Result<TelemetryOutcome, ControlError>;
}

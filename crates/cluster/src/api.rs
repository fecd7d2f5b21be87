//! The API's [`VmControl`] over NATS: what `infinibay api` hands to the API crate instead of a
//! core in the same process.
//!
//! | method | how |
//! | --- | --- |
//! | `vms`, `vm` | the [`Directory`] (status and agent live from events; counters as of the node's last list) |
//! | `latest_sample` | a request to the VM's subject (its node's registry) |
//! | `latest_samples` | every live node's list, page by page |
//! | `subscribe` | a NATS subscription on the filter's subjects; status events from the directory |
//! | `create_alert_rule` (one VM's), `set_telemetry` | a request to the VM's subject |
//! | `delete_alert_rule` | every live node is asked; the one holding the rule deletes it |
//! | `execute`, `log_refused`, `cancel_command` | a request to the VM's subject: nobody subscribed is "no responders", answered `Unreachable` at once |
//! | `delete_vm`, `power`, `attach_agent_channel` | a request to the VM's subject, answered by the node's core; nobody subscribed is `LifecycleError::UnknownVm` at once |
//! | `create_vm` | the live nodes whose libvirt is connected (and hold the base image) are asked for their hypervisor; the one with the fewest VMs creates it |
//! | `hypervisor` | every live node is asked; the first whose libvirt is connected answers (its base images), else the first answer |
//! | `stats` | the live nodes' heartbeat counters, added up |

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;

use infinibay_control::command::WAIT_MARGIN;
use infinibay_control::event::{Filter, Subscription, Topic};
use infinibay_control::{
    ChannelAttached, CommandError, CommandSpec, ControlError, CoreStats, CreateVmSpec,
    DeleteOutcome, HypervisorInfo, HypervisorState, LifecycleError, NewAlertRule, PowerAction,
    PowerOutcome, TelemetryOutcome, TelemetryRequest, VmControl, VmSnapshot,
};
use infinibay_protocol::message::CommandResponse;
use infinibay_store::AlertRule;
use infinibay_store::MetricSample;

use crate::bus::NatsBus;
use crate::directory::{Directory, node_request};
use crate::link::NatsLink;
use crate::rpc::{self, RpcError};
use crate::subjects;
use crate::wire::{self, NodeRequest, Page, VmRequest, WireError};

/// How much longer than a command's own wait the API waits for its node's answer (the node
/// answers a timed-out command itself, with `Timeout`).
const NODE_MARGIN: Duration = Duration::from_secs(5);

/// How long the API waits for a node's answer to a lifecycle operation (create, power,
/// delete, attach). The node bounds each libvirt call itself (an agent's shutdown waits 10 s,
/// creating copies an overlay with qemu-img); this only keeps a request to a node that died
/// mid-call from hanging.
const LIFECYCLE_WAIT: Duration = Duration::from_secs(60);

/// [`VmControl`] over NATS.
#[derive(Clone)]
pub struct NatsControl {
    bus: NatsBus,
    directory: Directory,
    /// The wait of a command without its own timeout (the nodes' `commands.default_timeout_secs`).
    default_command_wait: Duration,
}

impl std::fmt::Debug for NatsControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsControl").finish_non_exhaustive()
    }
}

impl NatsControl {
    /// Over `bus` (for subscriptions) and `directory`; a command without its own timeout is
    /// waited for `default_command_wait` (and a margin).
    pub fn new(bus: NatsBus, directory: Directory, default_command_wait: Duration) -> Self {
        Self {
            bus,
            directory,
            default_command_wait,
        }
    }

    /// The directory of the fleet.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// The connection.
    pub fn link(&self) -> &NatsLink {
        self.bus.link()
    }

    /// The bus (subscriptions and their decode errors).
    pub fn bus(&self) -> &NatsBus {
        &self.bus
    }

    /// A request about one VM, its answer decoded as `T`.
    async fn vm_request<T: DeserializeOwned>(
        &self,
        vm_id: &str,
        request: &VmRequest,
        timeout: Duration,
    ) -> Result<T, Unanswered> {
        let subject = subjects::vm_requests(vm_id).ok_or(Unanswered::UnknownVm)?;
        let payload =
            wire::encode(request).ok_or_else(|| Unanswered::Failed("cannot encode".into()))?;
        let answer = rpc::request(self.link(), subject, payload, timeout)
            .await
            .map_err(Unanswered::Rpc)?;
        let decoded: Result<T, WireError> =
            wire::decode("VM answer", &answer).map_err(|e| Unanswered::Failed(e.to_string()))?;
        decoded.map_err(|e| Unanswered::Failed(e.to_string()))
    }
}

impl NatsControl {
    /// A VM request whose failure to get an answer is a [`ControlError`].
    async fn vm_control_request<T: DeserializeOwned>(
        &self,
        vm_id: &str,
        request: &VmRequest,
    ) -> Result<T, ControlError> {
        self.vm_request::<T>(vm_id, request, self.directory.request_timeout())
            .await
            .map_err(|e| match e {
                Unanswered::UnknownVm => ControlError::NotFound(format!("no VM {vm_id}")),
                Unanswered::Rpc(e) => ControlError::Unreachable(vm_id.to_owned(), e.to_string()),
                Unanswered::Failed(m) => ControlError::Unreachable(vm_id.to_owned(), m),
            })
    }
}

impl NatsControl {
    /// A lifecycle request about one VM, answered by its node's core.
    async fn lifecycle_request<T: DeserializeOwned>(
        &self,
        vm_id: &str,
        request: &VmRequest,
    ) -> Result<T, LifecycleError> {
        self.vm_request::<Result<T, LifecycleError>>(vm_id, request, LIFECYCLE_WAIT)
            .await
            .map_err(|e| e.into_lifecycle_error(vm_id))?
    }

    /// One node's hypervisor: libvirt's state and its base images.
    async fn node_hypervisor(&self, node: &str) -> Result<HypervisorInfo, String> {
        node_request(
            self.link(),
            node,
            NodeRequest::Hypervisor,
            self.directory.request_timeout(),
        )
        .await
    }
}

/// Why a VM request got no usable answer.
enum Unanswered {
    /// The id cannot name a VM.
    UnknownVm,
    /// NATS said why.
    Rpc(RpcError),
    /// The answer was malformed or the node refused the request.
    Failed(String),
}

impl Unanswered {
    /// A lifecycle request without an answer. The API asks only about VMs of its store, so a
    /// VM no node serves exists but its hypervisor is out of reach: `Unavailable`, at once.
    fn into_lifecycle_error(self, vm_id: &str) -> LifecycleError {
        match self {
            Self::UnknownVm => LifecycleError::UnknownVm(vm_id.to_owned()),
            Self::Rpc(RpcError::NoResponders) => LifecycleError::Unavailable(format!(
                "no node serves VM {vm_id} now (its node is down or gone, or NATS is unreachable)"
            )),
            Self::Rpc(e) => {
                LifecycleError::Unavailable(format!("the node serving VM {vm_id}: {e}"))
            }
            Self::Failed(m) => {
                LifecycleError::Unavailable(format!("the node serving VM {vm_id}: {m}"))
            }
        }
    }

    fn into_command_error(self, vm_id: &str) -> CommandError {
        match self {
            Self::UnknownVm => CommandError::UnknownVm(vm_id.to_owned()),
            Self::Rpc(e) => CommandError::Unreachable(vm_id.to_owned(), e.to_string()),
            Self::Failed(m) => CommandError::Unreachable(vm_id.to_owned(), m),
        }
    }
}

#[async_trait]
impl VmControl for NatsControl {
    async fn vms(&self) -> Vec<VmSnapshot> {
        self.directory.vms()
    }

    async fn vm(&self, vm_id: &str) -> Option<VmSnapshot> {
        self.directory.vm(vm_id)
    }

    async fn latest_samples(&self) -> Vec<Arc<MetricSample>> {
        let mut all = Vec::new();
        for node in self.directory.alive_nodes() {
            let mut after = None;
            loop {
                let page: Result<Page<Arc<MetricSample>>, String> = node_request(
                    self.link(),
                    &node,
                    NodeRequest::LatestSamples { after },
                    self.directory.request_timeout(),
                )
                .await;
                match page {
                    Ok(page) => {
                        all.extend(page.items);
                        match page.next {
                            Some(next) => after = Some(next),
                            None => break,
                        }
                    }
                    Err(e) => {
                        tracing::warn!(target: "infinibay::cluster", %node, "newest samples not fetched: {e}");
                        break;
                    }
                }
            }
        }
        all.sort_by(|a, b| a.vm_id.cmp(&b.vm_id));
        all
    }

    async fn latest_sample(&self, vm_id: &str) -> Option<Arc<MetricSample>> {
        self.vm_request::<Option<Arc<MetricSample>>>(
            vm_id,
            &VmRequest::LatestSample,
            self.directory.request_timeout(),
        )
        .await
        .ok()
        .flatten()
    }

    async fn subscribe(&self, filter: Filter) -> Subscription {
        // Status events come from the directory only: what nodes said and what it concluded
        // (a dead node's VMs going offline), in one order.
        if filter.topic == Some(Topic::Status) {
            return Subscription::from_broadcast(self.directory.statuses(), filter);
        }
        let merge = filter.topic.is_none().then(|| self.directory.statuses());
        self.bus
            .subscribe_ready(filter, Some(Topic::Status), merge)
            .await
    }

    async fn execute(
        &self,
        vm_id: &str,
        command: CommandSpec,
        issued_by: Option<i64>,
    ) -> Result<CommandResponse, CommandError> {
        let wait = command
            .wait()
            .unwrap_or(self.default_command_wait + WAIT_MARGIN)
            + NODE_MARGIN;
        let request = VmRequest::Execute { command, issued_by };
        self.vm_request::<Result<CommandResponse, CommandError>>(vm_id, &request, wait)
            .await
            .map_err(|e| e.into_command_error(vm_id))?
    }

    async fn log_refused(
        &self,
        vm_id: &str,
        command: CommandSpec,
        issued_by: Option<i64>,
        reason: &str,
    ) {
        // The node serving the VM writes it; a VM no node serves has nobody to log it (as a
        // VM the embedded core does not know).
        let request = VmRequest::LogRefused {
            command,
            issued_by,
            reason: reason.to_owned(),
        };
        if let Err(e) = self
            .vm_request::<()>(vm_id, &request, self.directory.request_timeout())
            .await
        {
            let why = unanswered_reason(e);
            tracing::debug!(target: "infinibay::cluster", vm = %vm_id, "refused command not logged: {why}");
        }
    }

    async fn record_console_session(&self, session: infinibay_control::ConsoleSession) {
        // Like a refused command: the node serving the VM writes it.
        let vm_id = session.vm_id.clone();
        let request = VmRequest::RecordConsole { session };
        if let Err(e) = self
            .vm_request::<()>(&vm_id, &request, self.directory.request_timeout())
            .await
        {
            let why = unanswered_reason(e);
            tracing::debug!(target: "infinibay::cluster", vm = %vm_id, "console session not logged: {why}");
        }
    }

    async fn create_alert_rule(
        &self,
        rule: NewAlertRule,
        created_by: Option<i64>,
    ) -> Result<AlertRule, ControlError> {
        // A rule is evaluated by the core that serves its VM. A fleet-wide rule would need
        // every node to load it (and new nodes to find it): refused plainly rather than
        // evaluated by one node only.
        let Some(vm_id) = rule.vm_id.clone() else {
            return Err(ControlError::Invalid(
                "infinibay api (scale-out) takes alert rules for one VM only: give a vmId".into(),
            ));
        };
        let request = VmRequest::CreateAlertRule { rule, created_by };
        self.vm_control_request(&vm_id, &request).await?
    }

    async fn delete_alert_rule(&self, rule_id: &str) -> Result<bool, ControlError> {
        // The rule lives in the core of the node that serves its VM: every live node is
        // asked, and the one that holds it deletes it.
        let mut deleted = false;
        for node in self.directory.alive_nodes() {
            let answer: Result<Result<bool, ControlError>, String> = node_request(
                self.link(),
                &node,
                NodeRequest::DeleteAlertRule {
                    rule_id: rule_id.to_owned(),
                },
                self.directory.request_timeout(),
            )
            .await;
            match answer {
                Ok(result) => deleted |= result?,
                Err(e) => {
                    return Err(ControlError::Unreachable(
                        format!("node {node}"),
                        format!("alert rule {rule_id} not deleted: {e}"),
                    ));
                }
            }
        }
        Ok(deleted)
    }

    async fn set_telemetry(
        &self,
        vm_id: &str,
        request: TelemetryRequest,
        updated_by: Option<i64>,
    ) -> Result<TelemetryOutcome, ControlError> {
        let request = VmRequest::SetTelemetry {
            request,
            updated_by,
        };
        self.vm_control_request(vm_id, &request).await?
    }

    async fn cancel_command(&self, vm_id: &str, command_id: &str) -> Result<(), CommandError> {
        let request = VmRequest::Cancel {
            command_id: command_id.to_owned(),
        };
        self.vm_request::<Result<(), CommandError>>(
            vm_id,
            &request,
            self.directory.request_timeout(),
        )
        .await
        .map_err(|e| e.into_command_error(vm_id))?
    }

    async fn delete_vm(
        &self,
        vm_id: &str,
        issued_by: Option<i64>,
    ) -> Result<DeleteOutcome, LifecycleError> {
        // No node serving it is `Unavailable`: its domain may still exist on a node that is
        // down, and the record is not deleted while the domain may exist (as the embedded core
        // refuses while libvirt is unreachable).
        let done: DeleteOutcome = self
            .lifecycle_request(vm_id, &VmRequest::Delete { issued_by })
            .await?;
        self.directory.forget(vm_id);
        Ok(done)
    }

    async fn create_vm(
        &self,
        spec: CreateVmSpec,
        issued_by: Option<i64>,
    ) -> Result<VmSnapshot, LifecycleError> {
        // The node with libvirt connected (and the base image, when one is named) that knows
        // the fewest VMs creates it.
        let mut why_not = Vec::new();
        for (node, _) in self.directory.alive_nodes_by_load() {
            let info = self.node_hypervisor(&node).await;
            match info {
                Ok(info) if !matches!(info.state, HypervisorState::Connected { .. }) => {
                    why_not.push(format!("{node}: libvirt {}", info.state.as_str()));
                }
                Ok(info)
                    if spec
                        .base_image
                        .as_ref()
                        .is_some_and(|image| !info.base_images.contains(image)) =>
                {
                    why_not.push(format!("{node}: no such base image"));
                }
                Ok(_) => {
                    let answer: Result<Result<VmSnapshot, LifecycleError>, String> = node_request(
                        self.link(),
                        &node,
                        NodeRequest::CreateVm { spec, issued_by },
                        LIFECYCLE_WAIT,
                    )
                    .await;
                    return answer.map_err(|e| {
                        LifecycleError::Unavailable(format!(
                            "node {node} did not answer the creation (it may still complete there): {e}"
                        ))
                    })?;
                }
                Err(e) => why_not.push(format!("{node}: {e}")),
            }
        }
        if why_not.is_empty() {
            why_not.push("no live node".to_owned());
        }
        Err(LifecycleError::Unavailable(format!(
            "no node can create the VM ({})",
            why_not.join("; ")
        )))
    }

    async fn power(
        &self,
        vm_id: &str,
        action: PowerAction,
        issued_by: Option<i64>,
    ) -> Result<PowerOutcome, LifecycleError> {
        self.lifecycle_request(vm_id, &VmRequest::Power { action, issued_by })
            .await
    }

    async fn attach_agent_channel(
        &self,
        vm_id: &str,
        issued_by: Option<i64>,
    ) -> Result<ChannelAttached, LifecycleError> {
        self.lifecycle_request(vm_id, &VmRequest::AttachAgentChannel { issued_by })
            .await
    }

    async fn hypervisor(&self) -> HypervisorInfo {
        // One answer for the fleet: the first live node whose libvirt is connected (its base
        // images: `createVm` picks a node holding the image asked for), else the first answer.
        let mut first = None;
        for node in self.directory.alive_nodes() {
            let info = self.node_hypervisor(&node).await;
            match info {
                Ok(info) if matches!(info.state, HypervisorState::Connected { .. }) => {
                    return info;
                }
                Ok(info) => {
                    first.get_or_insert(info);
                }
                Err(e) => {
                    tracing::debug!(target: "infinibay::cluster", %node, "hypervisor not asked: {e}")
                }
            }
        }
        first.unwrap_or_else(|| HypervisorInfo {
            state: HypervisorState::Disconnected {
                uri: String::new(),
                reason: "no live node answered (infinibay api reaches libvirt through the nodes)"
                    .into(),
            },
            base_images: Vec::new(),
        })
    }

    async fn stats(&self) -> CoreStats {
        self.directory.stats()
    }

    fn unknown_vms_are_offline(&self) -> bool {
        true
    }
}

/// Why a request that only writes a log entry on the node went unanswered, for a debug line.
fn unanswered_reason(e: Unanswered) -> String {
    match e {
        Unanswered::UnknownVm => "no such VM".to_owned(),
        Unanswered::Rpc(e) => e.to_string(),
        Unanswered::Failed(m) => m,
    }
}

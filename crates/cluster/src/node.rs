//! The node's side of the interface: requests for its VMs by request/reply, fleet queries on
//! its own subject, and heartbeats.
//!
//! **One subject per VM** (`infinibay.rpc.vm.<vm>`), subscribed while the core knows the VM:
//! a request for a VM that no node serves then finds nobody subscribed and the server answers
//! "no responders" at once, so the API can say `VM_UNREACHABLE` without waiting for a timeout.
//! The subscriptions follow the core's VM set ([`Core::vm_membership`]); async-nats renews
//! them after a reconnect. Each request runs on its own task: a `cancel` must get through
//! while an `execute` of the same VM waits for its guest.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use futures_util::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use infinibay_control::VmControl;
use infinibay_core::Core;

use crate::bus::NatsBus;
use crate::link::NatsLink;
use crate::rpc::{self, RpcError};
use crate::subjects;
use crate::wire::{self, Heartbeat, NodeRequest, Page, VmRequest, WireError};

const TARGET: &str = "infinibay::cluster";

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Another live node answers under this name.
    #[error(
        "another node already runs as `{0}` (its heartbeat answered); give this one another --node-id"
    )]
    NameTaken(String),
    /// A subscription was refused.
    #[error("NATS refused a subscription: {0}")]
    Subscribe(String),
}

/// A running node's NATS side. Stops with the token given to [`NodeServer::start`].
#[derive(Clone)]
pub struct NodeServer {
    inner: Arc<Inner>,
}

struct Inner {
    node: String,
    incarnation: String,
    core: Core,
    bus: NatsBus,
    interval: Duration,
    tasks: TaskTracker,
}

impl std::fmt::Debug for NodeServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeServer")
            .field("node", &self.inner.node)
            .field("incarnation", &self.inner.incarnation)
            .finish_non_exhaustive()
    }
}

impl NodeServer {
    /// Whether another live node answers under `node` (checked before a node starts its core;
    /// when NATS is not reachable the check is skipped with a warning: the node still stores).
    pub async fn check_name_free(link: &NatsLink, node: &str) -> Result<(), NodeError> {
        if !link.is_up() {
            tracing::warn!(target: TARGET, node,
                "NATS is not reachable yet: starting anyway (storing samples), name not checked");
            return Ok(());
        }
        let ask = wire::encode(&NodeRequest::Whoami).unwrap_or_default();
        match rpc::request(
            link,
            subjects::node_requests(node),
            ask,
            Duration::from_secs(1),
        )
        .await
        {
            Ok(_) => Err(NodeError::NameTaken(node.to_owned())),
            Err(RpcError::NoResponders) => Ok(()),
            Err(e) => {
                tracing::warn!(target: TARGET, node, "cannot check that the node name is free: {e}");
                Ok(())
            }
        }
    }

    /// Serve `core`'s VMs as `node` on `bus`'s connection, beating every `interval`.
    pub async fn start(
        core: Core,
        bus: NatsBus,
        node: &str,
        interval: Duration,
        stop: CancellationToken,
    ) -> Result<Self, NodeError> {
        let link = bus.link().clone();
        let client = link.client();
        let requests = client
            .subscribe(subjects::node_requests(node))
            .await
            .map_err(|e| NodeError::Subscribe(e.to_string()))?;
        let inner = Arc::new(Inner {
            node: node.to_owned(),
            incarnation: uuid::Uuid::new_v4().to_string(),
            core,
            bus,
            interval,
            tasks: TaskTracker::new(),
        });
        tracing::info!(target: TARGET, node, incarnation = %inner.incarnation, "node serving on NATS");
        inner
            .tasks
            .spawn(serve_node_requests(inner.clone(), requests, stop.clone()));
        inner.tasks.spawn(serve_vms(inner.clone(), stop.clone()));
        inner.tasks.spawn(beat(inner.clone(), stop));
        Ok(Self { inner })
    }

    /// Wait until every task has ended (after the stop token).
    pub async fn stopped(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// This run's incarnation id.
    pub fn incarnation(&self) -> &str {
        &self.inner.incarnation
    }

    /// The heartbeat it would send now.
    pub fn heartbeat(&self) -> Heartbeat {
        heartbeat(&self.inner)
    }
}

fn heartbeat(inner: &Inner) -> Heartbeat {
    let probe = inner.core.store_health();
    Heartbeat {
        node: inner.node.clone(),
        incarnation: inner.incarnation.clone(),
        seq: inner.bus.seq(),
        membership: *inner.core.vm_membership().borrow(),
        sent_at: Utc::now(),
        interval_ms: u64::try_from(inner.interval.as_millis()).unwrap_or(u64::MAX),
        stats: inner.core.stats(),
        store_ok: probe.ok,
        store_error: probe.error,
        bus: inner.bus.stats(),
    }
}

/// Heartbeats, while NATS is up (a heartbeat held back through an outage would say the node
/// was alive when it could not be reached).
async fn beat(inner: Arc<Inner>, stop: CancellationToken) {
    let client = inner.bus.link().client().clone();
    let subject = subjects::heartbeat(&inner.node);
    let mut ticker = tokio::time::interval(inner.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        if !inner.bus.link().is_up() {
            continue;
        }
        if let Some(payload) = wire::encode(&heartbeat(&inner)) {
            tokio::select! {
                _ = stop.cancelled() => break,
                sent = client.publish(subject.clone(), payload) => {
                    if let Err(e) = sent {
                        tracing::debug!(target: TARGET, "heartbeat not sent: {e}");
                    }
                }
            }
        }
    }
}

/// One subscription per VM the core knows, following its VM set.
async fn serve_vms(inner: Arc<Inner>, stop: CancellationToken) {
    let mut membership = inner.core.vm_membership();
    let mut served: HashMap<String, CancellationToken> = HashMap::new();
    let client = inner.bus.link().client().clone();
    loop {
        membership.borrow_and_update();
        let ids = inner.core.vm_ids();
        let now: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        served.retain(|id, token| {
            let keep = now.contains(id.as_str());
            if !keep {
                token.cancel();
            }
            keep
        });
        for id in &ids {
            if served.contains_key(id) {
                continue;
            }
            let Some(subject) = subjects::vm_requests(id) else {
                continue;
            };
            match client.subscribe(subject).await {
                Ok(sub) => {
                    let token = stop.child_token();
                    served.insert(id.clone(), token.clone());
                    inner
                        .tasks
                        .spawn(serve_vm(inner.clone(), id.clone(), sub, token));
                }
                Err(e) => {
                    tracing::warn!(target: TARGET, vm = %id, "cannot subscribe to the VM's requests: {e}")
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = membership.changed() => if changed.is_err() { break },
        }
    }
}

async fn serve_vm(
    inner: Arc<Inner>,
    vm_id: String,
    mut sub: async_nats::Subscriber,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        let Some(reply_to) = message.reply.clone() else {
            continue;
        };
        let (inner2, vm) = (inner.clone(), vm_id.clone());
        inner.tasks.spawn(async move {
            let answer = answer_vm(&inner2.core, &vm, &message.payload).await;
            send(&inner2, reply_to, answer).await;
        });
    }
    // Dropping the subscriber unsubscribes: requests for this VM now find no responder here.
    let _ = sub.unsubscribe().await;
}

async fn send(inner: &Inner, reply_to: async_nats::Subject, answer: Option<Bytes>) {
    let Some(answer) = answer else { return };
    if let Err(e) = rpc::respond(inner.bus.link().client(), reply_to, answer).await {
        tracing::debug!(target: TARGET, "answer not sent: {e}");
    }
}

/// `Result<T, WireError>` as JSON.
fn reply<T: Serialize>(value: Result<T, WireError>) -> Option<Bytes> {
    wire::encode(&value)
}

async fn answer_vm(core: &Core, vm_id: &str, payload: &[u8]) -> Option<Bytes> {
    let request = match wire::decode::<VmRequest>("VM request", payload) {
        Ok(r) => r,
        Err(e) => return reply::<()>(Err(WireError::BadRequest(e.to_string()))),
    };
    match request {
        VmRequest::Snapshot => reply(Ok(core.vm(vm_id))),
        VmRequest::LatestSample => reply(Ok(core.latest_sample(vm_id))),
        VmRequest::Execute { command, issued_by } => {
            reply(Ok(VmControl::execute(core, vm_id, command, issued_by).await))
        }
        VmRequest::Cancel { command_id } => reply(Ok(core.cancel_command(vm_id, &command_id))),
        VmRequest::Delete { issued_by } => {
            reply(Ok(VmControl::delete_vm(core, vm_id, issued_by).await))
        }
        VmRequest::Power { action, issued_by } => {
            reply(Ok(VmControl::power(core, vm_id, action, issued_by).await))
        }
        VmRequest::AttachAgentChannel { issued_by } => reply(Ok(VmControl::attach_agent_channel(
            core, vm_id, issued_by,
        )
        .await)),
        VmRequest::CreateAlertRule { rule, created_by } => reply(Ok(VmControl::create_alert_rule(
            core, rule, created_by,
        )
        .await)),
        VmRequest::SetTelemetry {
            request,
            updated_by,
        } => reply(Ok(VmControl::set_telemetry(
            core, vm_id, request, updated_by,
        )
        .await)),
        VmRequest::LogRefused {
            command,
            issued_by,
            reason,
        } => {
            VmControl::log_refused(core, vm_id, command, issued_by, &reason).await;
            reply(Ok(()))
        }
        VmRequest::RecordConsole { session } => {
            VmControl::record_console_session(core, session).await;
            reply(Ok(()))
        }
    }
}

async fn serve_node_requests(
    inner: Arc<Inner>,
    mut sub: async_nats::Subscriber,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        let Some(reply_to) = message.reply.clone() else {
            continue;
        };
        let inner2 = inner.clone();
        inner.tasks.spawn(async move {
            let answer = answer_node(&inner2, &message.payload).await;
            send(&inner2, reply_to, answer).await;
        });
    }
}

/// Items per page at most; the page is also cut to fit the server's message size.
const PAGE_ITEMS: usize = 2_000;

async fn answer_node(inner: &Inner, payload: &[u8]) -> Option<Bytes> {
    let request = match wire::decode::<NodeRequest>("node request", payload) {
        Ok(r) => r,
        Err(e) => return reply::<()>(Err(WireError::BadRequest(e.to_string()))),
    };
    // The seq and membership are read before the list: an event newer than the page then has
    // a greater seq than the page's, and wins over it.
    let seq = inner.bus.seq();
    let membership = *inner.core.vm_membership().borrow();
    let incarnation = inner.incarnation.clone();
    fn page<T>(
        items: Vec<T>,
        next: Option<String>,
        seq: u64,
        membership: u64,
        incarnation: String,
    ) -> Page<T> {
        Page {
            items,
            next,
            seq,
            membership,
            incarnation,
        }
    }
    match request {
        NodeRequest::Whoami => reply(Ok(heartbeat(inner))),
        NodeRequest::Hypervisor => reply(Ok(inner.core.hypervisor().await)),
        NodeRequest::CreateVm { spec, issued_by } => {
            reply(Ok(inner.core.create_vm(spec, issued_by).await))
        }
        NodeRequest::DeleteAlertRule { rule_id } => {
            reply(Ok(VmControl::delete_alert_rule(&inner.core, &rule_id).await))
        }
        NodeRequest::Vms { after } => {
            let all = inner.core.vms();
            let (items, next) = cut(all, after.as_deref(), |v| &v.id);
            reply(Ok(page(items, next, seq, membership, incarnation)))
        }
        NodeRequest::LatestSamples { after } => {
            let all = inner.core.latest_samples();
            let (items, next) = cut(all, after.as_deref(), |s| &s.vm_id);
            reply(Ok(page(items, next, seq, membership, incarnation)))
        }
    }
}

/// The items after `after` (the list is ordered by id), at most [`PAGE_ITEMS`], and the id to
/// continue after when more remain.
fn cut<T>(
    all: Vec<T>,
    after: Option<&str>,
    id: impl Fn(&T) -> &String,
) -> (Vec<T>, Option<String>) {
    let start = match after {
        Some(a) => all.partition_point(|x| id(x).as_str() <= a),
        None => 0,
    };
    let mut rest: Vec<T> = all.into_iter().skip(start).collect();
    if rest.len() > PAGE_ITEMS {
        rest.truncate(PAGE_ITEMS);
        let next = rest.last().map(|x| id(x).clone());
        (rest, next)
    } else {
        (rest, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_continue_after_the_last_id_and_end_with_none() {
        let ids: Vec<String> = (0..(PAGE_ITEMS + 10)).map(|i| format!("{i:06}")).collect();
        let (first, next) = cut(ids.clone(), None, |s| s);
        assert_eq!(first.len(), PAGE_ITEMS);
        let next = next.expect("more");
        let (second, end) = cut(ids, Some(&next), |s| s);
        assert_eq!(second.len(), 10);
        assert_eq!(end, None);
        assert!(second[0] > next);
    }
}

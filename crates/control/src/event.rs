//! What the core publishes and how to receive it: events with NATS-shaped subjects
//! (`infinibay.vm.<id>.metrics`, `.status`, `.inventory`, `.error`, `.agent`, `.command_ended`,
//! `.alert`, `.power`), filters that read
//! NATS-style patterns (`*` for one token, `>` for the rest), and the subscription a consumer
//! holds. Every event serialises and deserialises (it is what a NATS bus carries); the
//! in-process transport is the core's bus.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

use infinibay_protocol::message::VmIdentification;
use infinibay_store::{Inventory, MetricSample, VmErrorRecord, VmStatus};

use crate::alert::AlertEvent;
use crate::command::CommandEvent;
use crate::lifecycle::PowerState;

/// First tokens of every VM subject.
pub const SUBJECT_PREFIX: &str = "infinibay.vm";

/// The kind of an event: the last token of its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Topic {
    /// A stored `system_metrics` sample.
    Metrics,
    /// `vm:online` / `vm:offline`.
    Status,
    /// A new process, port, application or service inventory.
    Inventory,
    /// An error the agent reported.
    Error,
    /// The agent identified itself.
    Agent,
    /// A command ended (answered, failed or refused). Not `command`: that subject is the
    /// commands' request/reply ([`command_subject`]).
    CommandEnded,
    /// An alert was raised or resolved.
    Alert,
    /// The hypervisor's power state of the VM changed (libvirt).
    Power,
}

impl Topic {
    /// All topics.
    pub const ALL: [Topic; 8] = [
        Topic::Metrics,
        Topic::Status,
        Topic::Inventory,
        Topic::Error,
        Topic::Agent,
        Topic::CommandEnded,
        Topic::Alert,
        Topic::Power,
    ];

    /// Subject token.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Metrics => "metrics",
            Self::Status => "status",
            Self::Inventory => "inventory",
            Self::Error => "error",
            Self::Agent => "agent",
            Self::CommandEnded => "command_ended",
            Self::Alert => "alert",
            Self::Power => "power",
        }
    }
}

/// Why a VM's status changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StatusReason {
    /// A valid message arrived (online).
    #[serde(rename = "valid message")]
    ValidMessage,
    /// `missed_pings` ping intervals passed without a valid message.
    #[serde(rename = "missed pings")]
    MissedPings,
    /// The guest side closed the connection.
    #[serde(rename = "socket closed")]
    SocketClosed,
    /// Reading the socket failed.
    #[serde(rename = "read error")]
    ReadError,
    /// Writing to the socket failed.
    #[serde(rename = "write failed")]
    WriteFailed,
    /// The socket file went away.
    #[serde(rename = "socket removed")]
    SocketRemoved,
    /// The host is stopping.
    #[serde(rename = "shutdown")]
    Shutdown,
    /// The node that serves the VM stopped sending heartbeats (scale-out: the API concludes
    /// it, since a node that died could not say so).
    #[serde(rename = "node unreachable")]
    NodeUnreachable,
    /// The node's list of its VMs, fetched again after a gap (a node restart, a NATS outage),
    /// says so: the event that changed it was missed.
    #[serde(rename = "resync")]
    Resync,
}

impl StatusReason {
    /// As logged and published: `valid message`, `missed pings`, …
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ValidMessage => "valid message",
            Self::MissedPings => "missed pings",
            Self::SocketClosed => "socket closed",
            Self::ReadError => "read error",
            Self::WriteFailed => "write failed",
            Self::SocketRemoved => "socket removed",
            Self::Shutdown => "shutdown",
            Self::NodeUnreachable => "node unreachable",
            Self::Resync => "resync",
        }
    }
}

impl std::fmt::Display for StatusReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A VM came online or went offline (seed 001 names the events `vm:online`, `vm:offline`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusEvent {
    /// VM.
    pub vm_id: String,
    /// New status.
    pub status: VmStatus,
    /// Host time of the change.
    pub at: DateTime<Utc>,
    /// Why.
    pub reason: StatusReason,
}

impl StatusEvent {
    /// The event name for a status.
    pub fn event_name(status: VmStatus) -> &'static str {
        match status {
            VmStatus::Online => "vm:online",
            VmStatus::Offline => "vm:offline",
        }
    }

    /// `vm:online` or `vm:offline`.
    pub fn event(&self) -> &'static str {
        Self::event_name(self.status)
    }
}

/// What the agent said of itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentEvent {
    /// VM (from the socket path, never from the message).
    pub vm_id: String,
    /// Host time.
    pub at: DateTime<Utc>,
    /// The sanitised identification.
    pub agent: VmIdentification,
}

/// Why a VM's power state changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerCause {
    /// A libvirt lifecycle event (`kind` and `detail` of [`PowerEvent`] say which).
    Lifecycle,
    /// A full resync after (re)connecting to libvirt, or after events were dropped: the state
    /// changed while nobody was listening.
    Resync,
    /// The connection to libvirt was lost: the state is unknown until it is back.
    Disconnected,
    /// The domain no longer exists in libvirt (undefined outside infinibay); the VM's record
    /// stays until it is deleted.
    DomainGone,
}

impl PowerCause {
    /// `lifecycle`, `resync`, `disconnected`, `domain_gone`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lifecycle => "lifecycle",
            Self::Resync => "resync",
            Self::Disconnected => "disconnected",
            Self::DomainGone => "domain_gone",
        }
    }
}

/// A VM's power state changed (whoever changed it: infinibay, `virsh`, the guest itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PowerEvent {
    /// VM (the domain UUID).
    pub vm_id: String,
    /// The state now.
    pub power_state: PowerState,
    /// The state before.
    pub previous: PowerState,
    /// Why it changed.
    pub cause: PowerCause,
    /// libvirt's event kind for [`PowerCause::Lifecycle`] (`started`, `stopped`, `paused`,
    /// `resumed`, `shutdown`, `crashed`, `defined`, `undefined`), else the cause's name.
    pub kind: String,
    /// libvirt's detail in words (`booted`, `destroyed`, `shut down`, …), or empty.
    pub detail: String,
    /// Host time.
    pub at: DateTime<Utc>,
}

/// One event on the bus. Payloads are shared (`Arc`) so that fan-out never copies a sample.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "topic", content = "data", rename_all = "snake_case")]
pub enum BusEvent {
    /// A sample, as stored.
    Metrics(Arc<MetricSample>),
    /// Status change.
    Status(StatusEvent),
    /// Inventory, as stored.
    Inventory(Arc<Inventory>),
    /// Agent-reported error, as stored.
    Error(Arc<VmErrorRecord>),
    /// Agent identification.
    Agent(Arc<AgentEvent>),
    /// A command ended (`vm:command`).
    CommandEnded(Arc<CommandEvent>),
    /// An alert was raised or resolved (`alert:raised`, `alert:resolved`).
    Alert(Arc<AlertEvent>),
    /// Power state change.
    Power(PowerEvent),
}

impl BusEvent {
    /// The VM the event is about.
    pub fn vm_id(&self) -> &str {
        match self {
            Self::Metrics(s) => &s.vm_id,
            Self::Status(s) => &s.vm_id,
            Self::Inventory(i) => &i.vm_id,
            Self::Error(e) => &e.vm_id,
            Self::Agent(a) => &a.vm_id,
            Self::CommandEnded(c) => &c.vm_id,
            Self::Alert(a) => &a.alert.vm_id,
            Self::Power(p) => &p.vm_id,
        }
    }

    /// The event's topic.
    pub fn topic(&self) -> Topic {
        match self {
            Self::Metrics(_) => Topic::Metrics,
            Self::Status(_) => Topic::Status,
            Self::Inventory(_) => Topic::Inventory,
            Self::Error(_) => Topic::Error,
            Self::Agent(_) => Topic::Agent,
            Self::CommandEnded(_) => Topic::CommandEnded,
            Self::Alert(_) => Topic::Alert,
            Self::Power(_) => Topic::Power,
        }
    }

    /// `infinibay.vm.<id>.<topic>`.
    pub fn subject(&self) -> String {
        subject(self.vm_id(), self.topic())
    }
}

/// `infinibay.vm.<id>.<topic>`.
pub fn subject(vm_id: &str, topic: Topic) -> String {
    format!("{SUBJECT_PREFIX}.{vm_id}.{}", topic.as_str())
}

/// Which events a subscription receives: one VM or all, one topic or all.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Filter {
    /// `None`: every VM.
    pub vm_id: Option<String>,
    /// `None`: every topic.
    pub topic: Option<Topic>,
}

impl Filter {
    /// Everything.
    pub fn all() -> Self {
        Self::default()
    }

    /// One topic of every VM.
    pub fn topic(topic: Topic) -> Self {
        Self {
            vm_id: None,
            topic: Some(topic),
        }
    }

    /// Every topic of one VM.
    pub fn vm(vm_id: impl Into<String>) -> Self {
        Self {
            vm_id: Some(vm_id.into()),
            topic: None,
        }
    }

    /// Whether `event` passes.
    pub fn matches(&self, event: &BusEvent) -> bool {
        self.topic.is_none_or(|t| t == event.topic())
            && self.vm_id.as_deref().is_none_or(|v| v == event.vm_id())
    }
}

/// What [`Subscription::recv`] yields.
#[derive(Debug, Clone)]
pub enum Received {
    /// An event.
    Event(BusEvent),
    /// The subscriber fell behind and this many events were dropped for it.
    Lagged(u64),
}

enum SubscriptionInner {
    Broadcast {
        rx: broadcast::Receiver<BusEvent>,
        filter: Filter,
    },
    Channel(mpsc::Receiver<Received>),
}

/// A stream of events. Dropping it unsubscribes.
pub struct Subscription {
    inner: SubscriptionInner,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Subscription {
    /// A subscription to a broadcast channel that carries more than `filter` passes (the
    /// in-process bus's channels are per topic or per VM).
    pub fn from_broadcast(rx: broadcast::Receiver<BusEvent>, filter: Filter) -> Self {
        Self {
            inner: SubscriptionInner::Broadcast { rx, filter },
        }
    }

    /// For other bus implementations (NATS): a subscription fed by a channel.
    pub fn from_channel(rx: mpsc::Receiver<Received>) -> Self {
        Self {
            inner: SubscriptionInner::Channel(rx),
        }
    }

    /// The next event, or how many were lost; `None` when the bus is gone.
    pub async fn recv(&mut self) -> Option<Received> {
        match &mut self.inner {
            SubscriptionInner::Channel(rx) => rx.recv().await,
            SubscriptionInner::Broadcast { rx, filter } => loop {
                match rx.recv().await {
                    Ok(event) if filter.matches(&event) => return Some(Received::Event(event)),
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        return Some(Received::Lagged(n));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            },
        }
    }

    /// The next event, skipping lag notices.
    pub async fn next_event(&mut self) -> Option<BusEvent> {
        loop {
            match self.recv().await? {
                Received::Event(e) => return Some(e),
                Received::Lagged(_) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_name_their_subject_and_come_back_the_same_over_the_wire() {
        let online = BusEvent::Status(StatusEvent {
            vm_id: "a".into(),
            status: VmStatus::Online,
            at: Utc::now(),
            reason: StatusReason::ValidMessage,
        });
        assert_eq!(online.subject(), "infinibay.vm.a.status");
        // What a NATS bus would carry comes back the same.
        let wire = serde_json::to_string(&online).expect("serialises");
        let back: BusEvent = serde_json::from_str(&wire).expect("deserialises");
        assert_eq!(back.subject(), online.subject());
        assert!(wire.contains("\"valid message\""), "{wire}");
    }
}

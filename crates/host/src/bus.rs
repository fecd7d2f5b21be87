//! The bus between ingest and its consumers (API, Socket.IO).
//!
//! Shaped for NATS: every event has a subject, one per VM and kind
//! (`infinibay.vm.<id>.metrics`, `.status`, `.inventory`, `.error`, `.agent`), subscriptions
//! take NATS-style patterns (`*` for one token, `>` for the rest), and commands are
//! request/reply on `infinibay.vm.<id>.command`. The in-process implementation below uses
//! bounded tokio broadcast channels: a subscriber that falls behind loses the oldest events
//! (and is told how many) instead of stalling ingest.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

use infinibay_protocol::message::{CommandResponse, VmIdentification};
use infinibay_store::{Inventory, MetricSample, VmErrorRecord, VmStatus};

use crate::commands::{Command, CommandError};

/// First tokens of every VM subject.
pub const SUBJECT_PREFIX: &str = "infinibay.vm";

/// The kind of an event: the last token of its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
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
}

impl Topic {
    /// All topics.
    pub const ALL: [Topic; 5] = [
        Topic::Metrics,
        Topic::Status,
        Topic::Inventory,
        Topic::Error,
        Topic::Agent,
    ];

    /// Subject token.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Metrics => "metrics",
            Self::Status => "status",
            Self::Inventory => "inventory",
            Self::Error => "error",
            Self::Agent => "agent",
        }
    }

    fn parse(token: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == token)
    }
}

/// A VM came online or went offline (seed 001 names the events `vm:online`, `vm:offline`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusEvent {
    /// VM.
    pub vm_id: String,
    /// New status.
    pub status: VmStatus,
    /// `vm:online` or `vm:offline`.
    pub event: &'static str,
    /// Host time of the change.
    pub at: DateTime<Utc>,
    /// Why (`valid message`, `socket closed`, `missed pings`, `socket removed`, `shutdown`).
    pub reason: &'static str,
}

impl StatusEvent {
    /// The event name for a status.
    pub fn event_name(status: VmStatus) -> &'static str {
        match status {
            VmStatus::Online => "vm:online",
            VmStatus::Offline => "vm:offline",
        }
    }
}

/// What the agent said of itself.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentEvent {
    /// VM (from the socket path, never from the message).
    pub vm_id: String,
    /// Host time.
    pub at: DateTime<Utc>,
    /// The sanitised identification.
    pub agent: VmIdentification,
}

/// One event on the bus. Payloads are shared (`Arc`) so that fan-out never copies a sample.
#[derive(Debug, Clone, Serialize)]
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

/// The request/reply subject for commands to a VM.
pub fn command_subject(vm_id: &str) -> String {
    format!("{SUBJECT_PREFIX}.{vm_id}.command")
}

/// Which events a subscription receives: one VM or all, one topic or all.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Filter {
    /// `None`: every VM.
    pub vm_id: Option<String>,
    /// `None`: every topic.
    pub topic: Option<Topic>,
}

/// A subject pattern that is not one this bus publishes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unsupported subject pattern `{0}` (expected infinibay.vm.<id|*>.<topic|*> or infinibay.vm.>)"
)]
pub struct BadPattern(pub String);

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

    /// From a NATS-style pattern: `infinibay.vm.*.status`, `infinibay.vm.<id>.>`, `infinibay.vm.>`.
    pub fn from_pattern(pattern: &str) -> Result<Self, BadPattern> {
        let bad = || BadPattern(pattern.to_owned());
        let rest = pattern
            .strip_prefix(SUBJECT_PREFIX)
            .and_then(|r| r.strip_prefix('.'))
            .ok_or_else(bad)?;
        if rest == ">" {
            return Ok(Self::all());
        }
        let (vm, topic) = rest.split_once('.').ok_or_else(bad)?;
        if vm.is_empty() || vm == ">" {
            return Err(bad());
        }
        let vm_id = (vm != "*").then(|| vm.to_owned());
        let topic = match topic {
            "*" | ">" => None,
            t => Some(Topic::parse(t).ok_or_else(bad)?),
        };
        Ok(Self { vm_id, topic })
    }

    /// Whether `event` passes.
    pub fn matches(&self, event: &BusEvent) -> bool {
        self.topic.is_none_or(|t| t == event.topic())
            && self.vm_id.as_deref().is_none_or(|v| v == event.vm_id())
    }
}

/// Answers command requests (the host's command registry implements it).
#[async_trait]
pub trait CommandHandler: Send + Sync + 'static {
    /// Send `command` to `vm_id` and wait for its response.
    async fn handle(
        &self,
        vm_id: &str,
        command: Command,
        timeout: Option<Duration>,
    ) -> Result<CommandResponse, CommandError>;
}

/// The publish/subscribe and request/reply contract. Publishing never blocks and never fails:
/// ingest must not wait for consumers.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publish an event to its subject.
    fn publish(&self, event: BusEvent);
    /// Whether an event of `topic` about `vm_id` would reach anyone now. Publishers use it to
    /// skip building an event nobody receives (a sample's copy for the bus); when unsure, an
    /// implementation answers `true`.
    fn has_subscribers(&self, topic: Topic, vm_id: &str) -> bool {
        let _ = (topic, vm_id);
        true
    }
    /// Receive the events that pass `filter`, from now on.
    fn subscribe(&self, filter: Filter) -> Subscription;
    /// Install the responder for `infinibay.vm.*.command` (done once by the host).
    fn serve_commands(&self, handler: Arc<dyn CommandHandler>);
    /// Request/reply on `infinibay.vm.<id>.command`.
    async fn request_command(
        &self,
        vm_id: &str,
        command: Command,
        timeout: Option<Duration>,
    ) -> Result<CommandResponse, CommandError>;
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

/// Channel capacities of the in-process bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusCapacity {
    /// Events per topic channel (all VMs).
    pub per_topic: usize,
    /// Events per VM channel (all topics of one VM).
    pub per_vm: usize,
}

impl Default for BusCapacity {
    fn default() -> Self {
        // 16,384 metrics events are 1.6 s of 10,000 VMs at 1 Hz: a consumer pausing longer
        // than that lags and loses the oldest. The slots hold `Arc`s of events that storage
        // holds anyway, so the bound costs pointers, not copies.
        Self {
            per_topic: 16_384,
            per_vm: 256,
        }
    }
}

/// The in-process bus: one broadcast channel per topic for all-VM subscribers, and one per VM,
/// created on first subscription to that VM and dropped when its last subscriber leaves.
pub struct InProcessBus {
    capacity: BusCapacity,
    topics: HashMap<Topic, broadcast::Sender<BusEvent>>,
    all: broadcast::Sender<BusEvent>,
    // std RwLock: held only to clone or insert a sender, never across an await.
    per_vm: RwLock<HashMap<String, broadcast::Sender<BusEvent>>>,
    commands: OnceLock<Arc<dyn CommandHandler>>,
}

impl std::fmt::Debug for InProcessBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessBus")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self::new(BusCapacity::default())
    }
}

impl InProcessBus {
    /// A bus with these channel sizes.
    pub fn new(capacity: BusCapacity) -> Self {
        let topics = Topic::ALL
            .into_iter()
            .map(|t| (t, broadcast::channel(capacity.per_topic.max(1)).0))
            .collect();
        Self {
            capacity,
            topics,
            all: broadcast::channel(capacity.per_topic.max(1)).0,
            per_vm: RwLock::new(HashMap::new()),
            commands: OnceLock::new(),
        }
    }
}

#[async_trait]
impl Bus for InProcessBus {
    fn publish(&self, event: BusEvent) {
        if self.all.receiver_count() > 0 {
            let _ = self.all.send(event.clone());
        }
        if let Some(tx) = self.topics.get(&event.topic())
            && tx.receiver_count() > 0
        {
            let _ = tx.send(event.clone());
        }
        let vm_tx = match self.per_vm.read() {
            Ok(map) => map.get(event.vm_id()).cloned(),
            Err(poisoned) => poisoned.into_inner().get(event.vm_id()).cloned(),
        };
        if let Some(tx) = vm_tx {
            if tx.receiver_count() > 0 {
                let _ = tx.send(event);
            } else if let Ok(mut map) = self.per_vm.write()
                && map
                    .get(event.vm_id())
                    .is_some_and(|t| t.receiver_count() == 0)
            {
                map.remove(event.vm_id());
            }
        }
    }

    fn has_subscribers(&self, topic: Topic, vm_id: &str) -> bool {
        if self.all.receiver_count() > 0
            || self
                .topics
                .get(&topic)
                .is_some_and(|tx| tx.receiver_count() > 0)
        {
            return true;
        }
        let map = match self.per_vm.read() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.get(vm_id).is_some_and(|tx| tx.receiver_count() > 0)
    }

    fn subscribe(&self, filter: Filter) -> Subscription {
        let rx = match (&filter.vm_id, filter.topic) {
            (Some(vm), _) => {
                let mut map = match self.per_vm.write() {
                    Ok(m) => m,
                    Err(poisoned) => poisoned.into_inner(),
                };
                map.entry(vm.clone())
                    .or_insert_with(|| broadcast::channel(self.capacity.per_vm.max(1)).0)
                    .subscribe()
            }
            (None, Some(topic)) => match self.topics.get(&topic) {
                Some(tx) => tx.subscribe(),
                None => self.all.subscribe(),
            },
            (None, None) => self.all.subscribe(),
        };
        Subscription {
            inner: SubscriptionInner::Broadcast { rx, filter },
        }
    }

    fn serve_commands(&self, handler: Arc<dyn CommandHandler>) {
        let _ = self.commands.set(handler);
    }

    async fn request_command(
        &self,
        vm_id: &str,
        command: Command,
        timeout: Option<Duration>,
    ) -> Result<CommandResponse, CommandError> {
        match self.commands.get() {
            Some(handler) => handler.handle(vm_id, command, timeout).await,
            None => Err(CommandError::NoResponder),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(vm: &str, s: VmStatus) -> BusEvent {
        BusEvent::Status(StatusEvent {
            vm_id: vm.into(),
            status: s,
            event: StatusEvent::event_name(s),
            at: Utc::now(),
            reason: "test",
        })
    }

    #[test]
    fn patterns_parse_like_nats_subjects() {
        assert_eq!(
            Filter::from_pattern("infinibay.vm.*.status").expect("valid"),
            Filter::topic(Topic::Status)
        );
        assert_eq!(
            Filter::from_pattern("infinibay.vm.abc.>").expect("valid"),
            Filter::vm("abc")
        );
        assert_eq!(
            Filter::from_pattern("infinibay.vm.>").expect("valid"),
            Filter::all()
        );
        assert!(Filter::from_pattern("infinibay.vm.abc.bogus").is_err());
        assert!(Filter::from_pattern("other.vm.abc.status").is_err());
        assert_eq!(
            status("a", VmStatus::Online).subject(),
            "infinibay.vm.a.status"
        );
    }

    #[tokio::test]
    async fn subscribers_get_only_what_their_filter_names() {
        let bus = InProcessBus::default();
        let mut only_b = bus.subscribe(Filter::vm("b"));
        let mut statuses = bus.subscribe(Filter::topic(Topic::Status));
        bus.publish(status("a", VmStatus::Online));
        bus.publish(status("b", VmStatus::Offline));
        let e = only_b.next_event().await.expect("event for b");
        assert_eq!(e.vm_id(), "b");
        assert_eq!(statuses.next_event().await.expect("first").vm_id(), "a");
        assert_eq!(statuses.next_event().await.expect("second").vm_id(), "b");
    }

    #[tokio::test]
    async fn a_slow_subscriber_lags_and_publishing_never_blocks() {
        let bus = InProcessBus::new(BusCapacity {
            per_topic: 4,
            per_vm: 4,
        });
        let mut slow = bus.subscribe(Filter::all());
        for _ in 0..100 {
            bus.publish(status("a", VmStatus::Online));
        }
        match slow.recv().await {
            Some(Received::Lagged(n)) => assert_eq!(n, 96),
            other => panic!("expected a lag notice, got {other:?}"),
        }
        assert!(matches!(slow.recv().await, Some(Received::Event(_))));
    }

    #[test]
    fn has_subscribers_is_true_only_for_what_someone_listens_to() {
        let bus = InProcessBus::default();
        assert!(!bus.has_subscribers(Topic::Metrics, "a"));
        let only_a = bus.subscribe(Filter::vm("a"));
        assert!(bus.has_subscribers(Topic::Metrics, "a"));
        assert!(!bus.has_subscribers(Topic::Metrics, "b"));
        let statuses = bus.subscribe(Filter::topic(Topic::Status));
        assert!(bus.has_subscribers(Topic::Status, "b"));
        assert!(!bus.has_subscribers(Topic::Metrics, "b"));
        drop((only_a, statuses));
        let everything = bus.subscribe(Filter::all());
        assert!(bus.has_subscribers(Topic::Inventory, "c"));
        drop(everything);
        assert!(!bus.has_subscribers(Topic::Metrics, "a"));
    }

    #[tokio::test]
    async fn per_vm_channels_are_dropped_with_their_last_subscriber() {
        let bus = InProcessBus::default();
        drop(bus.subscribe(Filter::vm("gone")));
        bus.publish(status("gone", VmStatus::Online));
        assert!(bus.per_vm.read().expect("lock").is_empty());
    }
}

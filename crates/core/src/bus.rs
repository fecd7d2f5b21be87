//! The bus between ingest and its consumers (API, Socket.IO).
//!
//! Publishing never blocks and never fails: ingest must not wait for consumers. The
//! in-process implementation below uses bounded tokio broadcast channels: a subscriber that
//! falls behind loses the oldest events (and is told how many) instead of stalling ingest. A
//! NATS implementation implements the same trait (subjects and patterns are NATS-shaped, see
//! [`crate::event`]).

use std::collections::HashMap;
use std::sync::RwLock;

use tokio::sync::broadcast;

use infinibay_control::event::{BusEvent, Filter, Subscription, Topic};

/// The publish/subscribe contract. Publishing never blocks and never fails: ingest must not
/// wait for consumers.
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
        }
    }
}

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
        Subscription::from_broadcast(rx, filter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use infinibay_control::event::{Received, StatusEvent, StatusReason};
    use infinibay_store::VmStatus;

    fn status(vm: &str, s: VmStatus) -> BusEvent {
        BusEvent::Status(StatusEvent {
            vm_id: vm.into(),
            status: s,
            at: Utc::now(),
            reason: StatusReason::ValidMessage,
        })
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

//! The core's [`Bus`] over NATS.
//!
//! **Publishing** (a node): [`Bus::publish`] never blocks and never fails, as ingest requires.
//! The event goes into a bounded outbox with its place in the node's order (`seq`); one task
//! encodes and sends what the outbox holds while NATS is connected. While it is not, the outbox
//! keeps the newest `capacity` events and drops the oldest, counting them ([`BusStats`]); the
//! store path is separate and loses nothing. Encoding happens on that task, not on the
//! connection tasks.
//!
//! **Subscribing** (an API): a NATS subscription on the filter's subject pattern, decoded and
//! handed over through a bounded queue; a subscriber that falls behind gets
//! [`Received::Lagged`] with the count it lost instead of stalling the others.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use infinibay_control::event::{BusEvent, Filter, Received, Subscription, Topic};
use infinibay_core::Bus;

use crate::link::NatsLink;
use crate::subjects;
use crate::wire::{Envelope, EnvelopeRef, decode, encode};

const TARGET: &str = "infinibay::cluster";

/// Events a subscriber may have waiting before it lags.
const SUBSCRIBER_QUEUE: usize = 4_096;
/// Events taken from the outbox at once.
const SEND_BATCH: usize = 512;

/// The outbox's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusStats {
    /// Events waiting to be sent now.
    pub buffered: usize,
    /// The most that wait; beyond, the oldest are dropped.
    pub capacity: usize,
    /// Events handed to NATS.
    pub published: u64,
    /// Events dropped because NATS was away longer than the outbox lasts.
    pub dropped: u64,
    /// Received messages that did not decode.
    pub decode_errors: u64,
}

struct Inner {
    node: String,
    link: NatsLink,
    sender: tokio_util::task::TaskTracker,
    capacity: usize,
    outbox: Mutex<VecDeque<(u64, BusEvent)>>,
    wake: Notify,
    seq: AtomicU64,
    published: AtomicU64,
    dropped: AtomicU64,
    decode_errors: AtomicU64,
}

/// The bus over NATS. Cheap to clone.
#[derive(Clone)]
pub struct NatsBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("node", &self.inner.node)
            .field("stats", &self.stats())
            .finish()
    }
}

impl NatsBus {
    /// A bus publishing as `node` on `link`, keeping at most `capacity` events while NATS is
    /// away. Its sender task stops with `stop` (after one last attempt to send what waits).
    pub fn start(link: NatsLink, node: &str, capacity: usize, stop: CancellationToken) -> Self {
        let inner = Arc::new(Inner {
            node: node.to_owned(),
            link,
            sender: tokio_util::task::TaskTracker::new(),
            capacity: capacity.max(1),
            outbox: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            // Starting at the start time in microseconds, a restarted node's events are newer
            // than any of its previous run's (it would need to publish more than one event per
            // microsecond for that to fail).
            seq: AtomicU64::new(u64::try_from(chrono::Utc::now().timestamp_micros()).unwrap_or(0)),
            published: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            decode_errors: AtomicU64::new(0),
        });
        inner.sender.spawn(send_outbox(inner.clone(), stop));
        inner.sender.close();
        Self { inner }
    }

    /// Wait until the sender has ended (after the stop token, and its last attempt to send
    /// what waited).
    pub async fn stopped(&self) {
        self.inner.sender.wait().await;
    }

    /// The outbox's figures now.
    pub fn stats(&self) -> BusStats {
        let i = &self.inner;
        BusStats {
            buffered: lock(&i.outbox).len(),
            capacity: i.capacity,
            published: i.published.load(Ordering::Relaxed),
            dropped: i.dropped.load(Ordering::Relaxed),
            decode_errors: i.decode_errors.load(Ordering::Relaxed),
        }
    }

    /// The `seq` of the last event published (given to the outbox).
    pub fn seq(&self) -> u64 {
        self.inner.seq.load(Ordering::Relaxed)
    }

    /// The connection.
    pub fn link(&self) -> &NatsLink {
        &self.inner.link
    }

    /// Subscribe and wait until the server has the subscription, so that every event
    /// published from now on arrives. Events of `skip` (when given) are left out of what NATS
    /// brings and `merge`'s events (when given) are mixed in: the API's directory is the one
    /// source of status events.
    pub async fn subscribe_ready(
        &self,
        filter: Filter,
        skip: Option<Topic>,
        merge: Option<broadcast::Receiver<BusEvent>>,
    ) -> Subscription {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let nats = match (subjects::events(&filter), skip) {
            (None, _) => None,
            (Some(_), Some(skip)) if filter.topic == Some(skip) => None,
            (Some(subject), _) => {
                match self.inner.link.client().subscribe(subject.clone()).await {
                    Ok(sub) => {
                        // A round trip: once the server answered the PING sent after the SUB,
                        // it has the subscription. Bounded: the link may be down.
                        let client = self.inner.link.client();
                        let _ =
                            tokio::time::timeout(std::time::Duration::from_secs(2), client.flush())
                                .await;
                        Some(sub)
                    }
                    Err(e) => {
                        tracing::warn!(target: TARGET, %subject, "cannot subscribe: {e}");
                        None
                    }
                }
            }
        };
        if nats.is_none() && merge.is_none() {
            // Nothing can ever arrive: the subscription ends at once.
            return Subscription::from_channel(rx);
        }
        tokio::spawn(forward(self.inner.clone(), nats, skip, merge, filter, tx));
        Subscription::from_channel(rx)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Bus for NatsBus {
    fn publish(&self, event: BusEvent) {
        let i = &self.inner;
        let dropped = {
            let mut outbox = lock(&i.outbox);
            let seq = i.seq.fetch_add(1, Ordering::Relaxed) + 1;
            outbox.push_back((seq, event));
            let over = outbox.len().saturating_sub(i.capacity);
            outbox.drain(..over);
            over
        };
        if dropped > 0 {
            i.dropped.fetch_add(dropped as u64, Ordering::Relaxed);
        }
        i.wake.notify_one();
    }

    fn subscribe(&self, filter: Filter) -> Subscription {
        // The trait's subscribe cannot wait: the NATS subscription is made on a task, and
        // events published before the server has it are not received (`subscribe_ready`
        // waits).
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let Some(subject) = subjects::events(&filter) else {
                return;
            };
            match inner.link.client().subscribe(subject).await {
                Ok(sub) => forward(inner, Some(sub), None, None, filter, tx).await,
                Err(e) => tracing::warn!(target: TARGET, "cannot subscribe: {e}"),
            }
        });
        Subscription::from_channel(rx)
    }
}

/// The outbox's sender: while connected, encode and hand to NATS what waits.
async fn send_outbox(inner: Arc<Inner>, stop: CancellationToken) {
    let client = inner.link.client().clone();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = inner.wake.notified() => {}
        }
        loop {
            if !inner.link.is_up() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = inner.link.up() => {}
                }
            }
            let batch: Vec<(u64, BusEvent)> = {
                let mut outbox = lock(&inner.outbox);
                let n = outbox.len().min(SEND_BATCH);
                outbox.drain(..n).collect()
            };
            if batch.is_empty() {
                break;
            }
            for (seq, event) in &batch {
                let Some(payload) = encode(&EnvelopeRef {
                    node: &inner.node,
                    seq: *seq,
                    event,
                }) else {
                    continue;
                };
                tokio::select! {
                    sent = client.publish(event.subject(), payload) => match sent {
                        Ok(()) => { inner.published.fetch_add(1, Ordering::Relaxed); }
                        Err(e) => {
                            inner.dropped.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(target: TARGET, "publish failed: {e}");
                        }
                    },
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
    // Stopping: what waits goes out if NATS is there (the last statuses: `vm:offline` on
    // shutdown), without waiting for it if it is not.
    if inner.link.is_up() {
        let batch: Vec<(u64, BusEvent)> = lock(&inner.outbox).drain(..).collect();
        for (seq, event) in &batch {
            if let Some(payload) = encode(&EnvelopeRef {
                node: &inner.node,
                seq: *seq,
                event,
            }) && client.publish(event.subject(), payload).await.is_ok()
            {
                inner.published.fetch_add(1, Ordering::Relaxed);
            }
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), client.flush()).await;
    }
}

/// What a subscriber's queue is told: an event, or first how many it missed.
struct Outlet {
    tx: mpsc::Sender<Received>,
    lagged: u64,
}

impl Outlet {
    /// `false` when the subscriber is gone.
    fn deliver(&mut self, event: BusEvent) -> bool {
        use mpsc::error::TrySendError;
        if self.lagged > 0 {
            match self.tx.try_send(Received::Lagged(self.lagged)) {
                Ok(()) => self.lagged = 0,
                Err(TrySendError::Full(_)) => {
                    self.lagged += 1;
                    return true;
                }
                Err(TrySendError::Closed(_)) => return false,
            }
        }
        match self.tx.try_send(Received::Event(event)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.lagged += 1;
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }
}

/// Decode what NATS brings (without `skip`'s topic), mix in `merge`, keep `filter`'s.
async fn forward(
    inner: Arc<Inner>,
    mut nats: Option<async_nats::Subscriber>,
    skip: Option<Topic>,
    mut merge: Option<broadcast::Receiver<BusEvent>>,
    filter: Filter,
    tx: mpsc::Sender<Received>,
) {
    let mut out = Outlet { tx, lagged: 0 };
    loop {
        let event = tokio::select! {
            _ = out.tx.closed() => break,
            message = next_message(&mut nats) => {
                let Some(message) = message else {
                    nats = None;
                    if merge.is_none() { break }
                    continue;
                };
                match decode::<Envelope>("event", &message.payload) {
                    // `skip`'s topic comes from `merge` only.
                    Ok(envelope) if skip.is_some_and(|t| t == envelope.event.topic()) => continue,
                    Ok(envelope) => envelope.event,
                    Err(e) => {
                        inner.decode_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(target: TARGET, subject = %message.subject, "{e}");
                        continue;
                    }
                }
            }
            merged = next_merged(&mut merge) => match merged {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    out.lagged += n;
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    merge = None;
                    if nats.is_none() { break }
                    continue;
                }
            },
        };
        if !filter.matches(&event) {
            continue;
        }
        if !out.deliver(event) {
            break;
        }
    }
}

async fn next_message(nats: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match nats {
        Some(sub) => sub.next().await,
        None => std::future::pending().await,
    }
}

async fn next_merged(
    merge: &mut Option<broadcast::Receiver<BusEvent>>,
) -> Result<BusEvent, broadcast::error::RecvError> {
    match merge {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

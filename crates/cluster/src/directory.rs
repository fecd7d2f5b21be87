//! The API's view of the fleet: which node serves which VM and each VM's live state, kept from
//! what the nodes publish, never from one process's memory of another (seed 004).
//!
//! - **Heartbeats** say which nodes are alive. A node heard for the first time, restarted (new
//!   incarnation), whose VM set changed (membership generation), back from the dead, or not
//!   listed for a minute has its VM list fetched again, page by page.
//! - **Status events** update a VM at once and are passed on to the API's subscribers from
//!   here: the directory is their one source, so that what it concludes itself (a dead node's
//!   VMs going offline, a status missed during an outage found by a list) reaches them in order
//!   with what nodes said.
//! - **Order**: every event carries its place in its node's order (`seq`), and so does every
//!   list page; a VM's state is replaced only by something newer. A node's `seq` starts at its
//!   start time in microseconds, so a restarted node's events are newer than its past ones.
//! - **Liveness**: a node silent for the liveness window is dead and its online VMs go offline
//!   (reason `node unreachable`). While this process is itself cut off from NATS it concludes
//!   nothing: after a reconnect every node gets a whole window again, and every list is fetched
//!   again (events were missed).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use infinibay_control::event::{BusEvent, StatusEvent, StatusReason, Topic};
use infinibay_control::{CoreStats, Filter, PowerState, VmSnapshot};
use infinibay_store::VmStatus;

use crate::link::{LinkState, NatsLink};
use crate::rpc;
use crate::subjects;
use crate::wire::{self, Envelope, Heartbeat, NodeRequest, Page, WireError};

const TARGET: &str = "infinibay::cluster";
/// Status events waiting for a slow subscriber of this process before it lags.
const STATUS_CHANNEL: usize = 16_384;
/// A node's list is fetched again at least this often (a status event lost on the way, e.g. to
/// a slow consumer, is then corrected).
const RESYNC_EVERY: Duration = Duration::from_secs(60);

struct NodeView {
    heartbeat: Heartbeat,
    last_heard: Instant,
    alive: bool,
    /// (incarnation, membership) of the last list applied.
    synced: Option<(String, u64)>,
    synced_at: Option<Instant>,
    syncing: bool,
    resync_wanted: bool,
}

struct VmView {
    node: String,
    snapshot: VmSnapshot,
    /// `seq` of what last set its state.
    seq: u64,
}

#[derive(Default)]
struct State {
    nodes: HashMap<String, NodeView>,
    vms: HashMap<String, VmView>,
    /// When this process's NATS connection last came up (`None` while it is down).
    link_up_since: Option<Instant>,
}

struct Inner {
    link: NatsLink,
    window: Duration,
    request_timeout: Duration,
    state: Mutex<State>,
    statuses: broadcast::Sender<BusEvent>,
}

/// A node as `/healthz` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeSummary {
    /// Name.
    pub node: String,
    /// Heard within the liveness window.
    pub alive: bool,
    /// Seconds since its last heartbeat.
    pub last_heard_secs: f64,
    /// VMs it knows.
    pub vms: usize,
    /// Of which online.
    pub online: usize,
    /// Its store probe answered.
    pub store_ok: bool,
    /// Samples it keeps for a later write (its database refused them).
    pub store_backlog_samples: usize,
    /// Events it dropped while NATS was away.
    pub events_dropped: u64,
}

/// The fleet's VMs as this API knows them. Cheap to clone.
#[derive(Clone)]
pub struct Directory {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory").finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Directory {
    /// Subscribe to heartbeats, statuses and agent identifications and keep the view until
    /// `stop`. Nodes count as dead after `window` of silence; requests to them wait
    /// `request_timeout` at most.
    pub async fn start(
        link: NatsLink,
        window: Duration,
        request_timeout: Duration,
        stop: CancellationToken,
    ) -> Result<Self, async_nats::SubscribeError> {
        let client = link.client().clone();
        let heartbeats = client.subscribe(subjects::HEARTBEATS).await?;
        let statuses = client
            .subscribe(subjects::events(&Filter::topic(Topic::Status)).unwrap_or_default())
            .await?;
        let agents = client
            .subscribe(subjects::events(&Filter::topic(Topic::Agent)).unwrap_or_default())
            .await?;
        // Power changes are rare (a user's action or libvirt's lifecycle event): the view
        // follows them live rather than at the node's next list.
        let powers = client
            .subscribe(subjects::events(&Filter::topic(Topic::Power)).unwrap_or_default())
            .await?;
        let link_up_since = link.is_up().then(Instant::now);
        let inner = Arc::new(Inner {
            link,
            window,
            request_timeout,
            state: Mutex::new(State {
                link_up_since,
                ..State::default()
            }),
            statuses: broadcast::channel(STATUS_CHANNEL).0,
        });
        let directory = Self { inner };
        tokio::spawn(
            directory
                .clone()
                .run(heartbeats, statuses, agents, powers, stop),
        );
        Ok(directory)
    }

    async fn run(
        self,
        mut heartbeats: async_nats::Subscriber,
        mut statuses: async_nats::Subscriber,
        mut agents: async_nats::Subscriber,
        mut powers: async_nats::Subscriber,
        stop: CancellationToken,
    ) {
        let mut link = self.inner.link.watch();
        let mut ticker =
            tokio::time::interval((self.inner.window / 10).max(Duration::from_millis(50)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(m) = heartbeats.next() => match wire::decode::<Heartbeat>("heartbeat", &m.payload) {
                    Ok(hb) => self.on_heartbeat(hb),
                    Err(e) => tracing::debug!(target: TARGET, "{e}"),
                },
                Some(m) = statuses.next() => match wire::decode::<Envelope>("status event", &m.payload) {
                    Ok(env) => self.on_event(env),
                    Err(e) => tracing::debug!(target: TARGET, "{e}"),
                },
                Some(m) = agents.next() => match wire::decode::<Envelope>("agent event", &m.payload) {
                    Ok(env) => self.on_event(env),
                    Err(e) => tracing::debug!(target: TARGET, "{e}"),
                },
                Some(m) = powers.next() => match wire::decode::<Envelope>("power event", &m.payload) {
                    Ok(env) => self.on_event(env),
                    Err(e) => tracing::debug!(target: TARGET, "{e}"),
                },
                changed = link.changed() => {
                    if changed.is_err() { break }
                    let state = *link.borrow_and_update();
                    self.on_link(state);
                }
                _ = ticker.tick() => self.check_liveness(),
            }
        }
    }

    fn on_link(&self, link: LinkState) {
        let mut st = lock(&self.inner.state);
        match link {
            LinkState::Up(at) => {
                st.link_up_since = Some(at);
                // Events were missed while cut off: every list again.
                for node in st.nodes.values_mut() {
                    node.resync_wanted = true;
                }
            }
            LinkState::Down(_) => st.link_up_since = None,
        }
    }

    fn on_heartbeat(&self, hb: Heartbeat) {
        if !subjects::is_token(&hb.node) {
            return;
        }
        let now = Instant::now();
        let mut st = lock(&self.inner.state);
        let name = hb.node.clone();
        let node = st.nodes.entry(name.clone()).or_insert_with(|| NodeView {
            heartbeat: hb.clone(),
            last_heard: now,
            alive: false,
            synced: None,
            synced_at: None,
            syncing: false,
            resync_wanted: true,
        });
        let revived = !node.alive;
        if revived {
            tracing::info!(target: TARGET, node = %name, incarnation = %hb.incarnation, "node alive");
        }
        node.alive = true;
        node.last_heard = now;
        let stale_list = node.synced.as_ref() != Some(&(hb.incarnation.clone(), hb.membership))
            || node.synced_at.is_none_or(|at| at.elapsed() >= RESYNC_EVERY);
        node.heartbeat = hb;
        if (revived || stale_list || node.resync_wanted) && !node.syncing {
            node.syncing = true;
            node.resync_wanted = false;
            drop(st);
            tokio::spawn(self.clone().sync(name));
        }
    }

    /// A status or agent event from a node.
    fn on_event(&self, env: Envelope) {
        let mut st = lock(&self.inner.state);
        let vm_id = env.event.vm_id().to_owned();
        let view = st.vms.entry(vm_id.clone()).or_insert_with(|| VmView {
            node: env.node.clone(),
            snapshot: blank_snapshot(&vm_id),
            seq: 0,
        });
        if view.node == env.node && view.seq > env.seq {
            // Older than what the view holds (a list fetched meanwhile): already applied.
            return;
        }
        view.node = env.node;
        view.seq = env.seq;
        match &env.event {
            BusEvent::Status(s) => {
                view.snapshot.status = s.status;
                if s.status == VmStatus::Online {
                    view.snapshot.last_seen = Some(s.at);
                    view.snapshot.connected = true;
                }
            }
            BusEvent::Agent(a) => view.snapshot.agent = Some(a.agent.clone()),
            BusEvent::Power(p) => view.snapshot.power_state = p.power_state,
            _ => return,
        }
        drop(st);
        if matches!(env.event, BusEvent::Status(_)) {
            let _ = self.inner.statuses.send(env.event);
        }
    }

    /// Fetch `node`'s whole list and make the view agree with it.
    async fn sync(self, node: String) {
        let fetched = self.fetch_vms(&node).await;
        let mut events = Vec::new();
        {
            let mut st = lock(&self.inner.state);
            let Some(view) = st.nodes.get_mut(&node) else {
                return;
            };
            view.syncing = false;
            let (list, seq, incarnation, membership) = match fetched {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(target: TARGET, %node, "cannot fetch the node's VM list: {e}");
                    view.resync_wanted = true;
                    return;
                }
            };
            view.synced = Some((incarnation, membership));
            view.synced_at = Some(Instant::now());
            let listed: HashSet<String> = list.iter().map(|v| v.id.clone()).collect();
            for snapshot in list {
                let id = snapshot.id.clone();
                match st.vms.get_mut(&id) {
                    Some(v) if v.node == node && v.seq > seq => {
                        // An event newer than the list already set its status (or power
                        // state): keep that.
                        let (status, last_seen, power_state) = (
                            v.snapshot.status,
                            v.snapshot.last_seen,
                            v.snapshot.power_state,
                        );
                        v.snapshot = VmSnapshot {
                            status,
                            last_seen,
                            power_state,
                            ..snapshot
                        };
                    }
                    Some(v) => {
                        if v.snapshot.status != snapshot.status {
                            events.push(resync_event(&id, snapshot.status));
                        }
                        *v = VmView {
                            node: node.clone(),
                            snapshot,
                            seq,
                        };
                    }
                    None => {
                        if snapshot.status == VmStatus::Online {
                            events.push(resync_event(&id, snapshot.status));
                        }
                        st.vms.insert(
                            id,
                            VmView {
                                node: node.clone(),
                                snapshot,
                                seq,
                            },
                        );
                    }
                }
            }
            // Gone from the node's list: forgotten (deleted) there.
            st.vms.retain(|id, v| v.node != node || listed.contains(id));
        }
        for event in events {
            let _ = self.inner.statuses.send(event);
        }
    }

    async fn fetch_vms(&self, node: &str) -> Result<(Vec<VmSnapshot>, u64, String, u64), String> {
        let mut after = None;
        let mut all = Vec::new();
        loop {
            let page: Page<VmSnapshot> = node_request(
                &self.inner.link,
                node,
                NodeRequest::Vms { after },
                self.inner.request_timeout,
            )
            .await?;
            all.extend(page.items);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok((all, page.seq, page.incarnation, page.membership)),
            }
        }
    }

    /// Mark nodes silent for the liveness window dead, and their VMs offline.
    fn check_liveness(&self) {
        let now = Instant::now();
        let mut events = Vec::new();
        {
            let mut st = lock(&self.inner.state);
            let Some(up_since) = st.link_up_since else {
                return;
            };
            let window = self.inner.window;
            let mut dead = Vec::new();
            for (name, node) in st.nodes.iter_mut() {
                let heard = node.last_heard.max(up_since);
                if node.alive && now.duration_since(heard) > window {
                    node.alive = false;
                    dead.push(name.clone());
                }
            }
            for name in dead {
                tracing::warn!(target: TARGET, node = %name, "no heartbeat within the liveness window: node unreachable, its VMs offline");
                for (id, v) in st.vms.iter_mut() {
                    if v.node == name && v.snapshot.status == VmStatus::Online {
                        v.snapshot.status = VmStatus::Offline;
                        v.snapshot.connected = false;
                        events.push(BusEvent::Status(StatusEvent {
                            vm_id: id.clone(),
                            status: VmStatus::Offline,
                            at: Utc::now(),
                            reason: StatusReason::NodeUnreachable,
                        }));
                    }
                }
            }
        }
        for event in events {
            let _ = self.inner.statuses.send(event);
        }
    }

    /// Status events: the nodes', and what this directory concludes.
    pub fn statuses(&self) -> broadcast::Receiver<BusEvent> {
        self.inner.statuses.subscribe()
    }

    /// Every VM known, by id.
    pub fn vms(&self) -> Vec<VmSnapshot> {
        let st = lock(&self.inner.state);
        let mut out: Vec<VmSnapshot> = st.vms.values().map(|v| v.snapshot.clone()).collect();
        drop(st);
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// One VM.
    pub fn vm(&self, vm_id: &str) -> Option<VmSnapshot> {
        lock(&self.inner.state)
            .vms
            .get(vm_id)
            .map(|v| v.snapshot.clone())
    }

    /// The node that serves a VM (the last one that spoke for it).
    pub fn node_of(&self, vm_id: &str) -> Option<String> {
        lock(&self.inner.state)
            .vms
            .get(vm_id)
            .map(|v| v.node.clone())
    }

    /// Forget a VM (deleted through this API).
    pub fn forget(&self, vm_id: &str) {
        lock(&self.inner.state).vms.remove(vm_id);
    }

    /// The live nodes with the number of VMs each knows (as of its last heartbeat), fewest
    /// first (ties by name).
    pub fn alive_nodes_by_load(&self) -> Vec<(String, usize)> {
        let st = lock(&self.inner.state);
        let mut out: Vec<(String, usize)> = st
            .nodes
            .iter()
            .filter(|(_, n)| n.alive)
            .map(|(name, n)| (name.clone(), n.heartbeat.stats.vms))
            .collect();
        drop(st);
        out.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        out
    }

    /// The nodes heard within the liveness window.
    pub fn alive_nodes(&self) -> Vec<String> {
        let st = lock(&self.inner.state);
        let mut out: Vec<String> = st
            .nodes
            .iter()
            .filter(|(_, n)| n.alive)
            .map(|(name, _)| name.clone())
            .collect();
        out.sort();
        out
    }

    /// Every node ever heard, for `/healthz`.
    pub fn nodes(&self) -> Vec<NodeSummary> {
        let st = lock(&self.inner.state);
        let mut out: Vec<NodeSummary> = st
            .nodes
            .iter()
            .map(|(name, n)| NodeSummary {
                node: name.clone(),
                alive: n.alive,
                last_heard_secs: n.last_heard.elapsed().as_secs_f64(),
                vms: n.heartbeat.stats.vms,
                online: n.heartbeat.stats.online,
                store_ok: n.heartbeat.store_ok,
                store_backlog_samples: n.heartbeat.stats.queue.backlog_samples,
                events_dropped: n.heartbeat.bus.dropped,
            })
            .collect();
        drop(st);
        out.sort_by(|a, b| a.node.cmp(&b.node));
        out
    }

    /// The counters of the live nodes, added up (every number summed, every flag or-ed: a
    /// counter a node gains later is summed without a change here).
    pub fn stats(&self) -> CoreStats {
        let st = lock(&self.inner.state);
        let mut total: Option<serde_json::Value> = None;
        for node in st.nodes.values().filter(|n| n.alive) {
            let Ok(value) = serde_json::to_value(node.heartbeat.stats) else {
                continue;
            };
            match &mut total {
                None => total = Some(value),
                Some(t) => add_json(t, &value),
            }
        }
        drop(st);
        total
            .and_then(|t| serde_json::from_value(t).ok())
            .unwrap_or_else(empty_stats)
    }

    /// The connection this directory listens on.
    pub fn link(&self) -> &NatsLink {
        &self.inner.link
    }

    /// How long a request may wait.
    pub fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }
}

fn empty_stats() -> CoreStats {
    CoreStats {
        vms: 0,
        online: 0,
        totals: Default::default(),
        queue: Default::default(),
        alerts: Default::default(),
    }
}

fn add_json(total: &mut serde_json::Value, more: &serde_json::Value) {
    use serde_json::Value;
    match (total, more) {
        (Value::Object(t), Value::Object(m)) => {
            for (k, v) in m {
                match t.get_mut(k) {
                    Some(slot) => add_json(slot, v),
                    None => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Number(t), Value::Number(m)) => {
            if let (Some(a), Some(b)) = (t.as_u64(), m.as_u64()) {
                *t = a.saturating_add(b).into();
            } else if let (Some(a), Some(b)) = (t.as_f64(), m.as_f64())
                && let Some(n) = serde_json::Number::from_f64(a + b)
            {
                *t = n;
            }
        }
        (Value::Bool(t), Value::Bool(m)) => *t |= *m,
        _ => {}
    }
}

fn resync_event(vm_id: &str, status: VmStatus) -> BusEvent {
    BusEvent::Status(StatusEvent {
        vm_id: vm_id.to_owned(),
        status,
        at: Utc::now(),
        reason: StatusReason::Resync,
    })
}

/// A VM first heard of through an event, before its node's list says more.
fn blank_snapshot(vm_id: &str) -> VmSnapshot {
    VmSnapshot {
        id: vm_id.to_owned(),
        socket_path: Default::default(),
        status: VmStatus::Offline,
        power_state: PowerState::Unknown,
        domain_name: None,
        connected: false,
        socket_present: true,
        last_seen: None,
        agent: None,
        pending_commands: 0,
        stats: Default::default(),
    }
}

/// A request to one node, its answer decoded.
pub(crate) async fn node_request<T: serde::de::DeserializeOwned>(
    link: &NatsLink,
    node: &str,
    request: NodeRequest,
    timeout: Duration,
) -> Result<T, String> {
    let payload = wire::encode(&request).ok_or("cannot encode the request")?;
    let answer = rpc::request(link, subjects::node_requests(node), payload, timeout)
        .await
        .map_err(|e| e.to_string())?;
    let decoded: Result<T, WireError> =
        wire::decode("node answer", &answer).map_err(|e| e.to_string())?;
    decoded.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_add_up_numbers_and_or_flags_whatever_their_names() {
        let mut a = serde_json::json!({"vms": 2, "queue": {"x": 1, "f": false}, "r": 0.5});
        add_json(
            &mut a,
            &serde_json::json!({"vms": 3, "queue": {"x": 4, "f": true, "new": 7}, "r": 1.0}),
        );
        assert_eq!(
            a,
            serde_json::json!({"vms": 5, "queue": {"x": 5, "f": true, "new": 7}, "r": 1.5})
        );
    }
}

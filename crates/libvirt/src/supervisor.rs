//! The connection: opened, watched and reopened by one supervisor thread per [`Libvirt`].
//!
//! The thread connects with backoff, registers the lifecycle and close callbacks, publishes the
//! connection for operations, sends a snapshot, then turns raw callback events into typed
//! [`Event`]s until the connection closes; then it starts over. It never blocks on the
//! consumer: the event channel is fed with `try_send`, and whatever could not be delivered
//! (consumer behind, or libvirt's callback queue full) is replaced by one later snapshot.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use uuid::Uuid;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::ErrorNumber;

use crate::error::{Error, Operation, Result, from_virt};
use crate::events::{RawEvent, Registration, Signals, close_reason, ensure_event_loop};
use crate::state::{PowerState, classify};
use crate::xml::domain_facts;
use crate::{DomainInfo, Event, Events, LibvirtConfig, LifecycleEvent, SnapshotCause};

const TARGET: &str = "infinibay::libvirt";

/// How often the supervisor wakes without events, to notice a stop request or a close that
/// arrived while the callback queue was full.
const IDLE_WAKE: Duration = Duration::from_millis(200);

/// Keepalive: a daemon that stops answering is declared gone after about
/// `KEEPALIVE_INTERVAL * (KEEPALIVE_COUNT + 1)`, which also bounds calls blocked on it.
const KEEPALIVE_INTERVAL: i32 = 5;
const KEEPALIVE_COUNT: u32 = 3;

/// One open libvirt connection. `virt` 0.4's `Connect` has no `Drop`: closing is ours.
pub(crate) struct Conn {
    connect: Connect,
    pub uri: String,
}

impl Conn {
    pub fn open(uri: &str) -> Result<Conn> {
        if uri.contains('\0') {
            return Err(Error::Unreachable {
                uri: uri.escape_debug().to_string(),
                reason: "the URI contains a NUL byte".into(),
            });
        }
        ensure_event_loop()?;
        let connect = Connect::open(Some(uri)).map_err(|e| Error::Unreachable {
            uri: uri.to_owned(),
            reason: e.message().to_owned(),
        })?;
        Ok(Conn {
            connect,
            uri: uri.to_owned(),
        })
    }

    pub fn connect(&self) -> &Connect {
        &self.connect
    }

    /// Whether the connection still answers (false also when asking fails).
    pub fn is_alive(&self) -> bool {
        self.connect.is_alive().unwrap_or(false)
    }

    /// Turns a libvirt error from `operation` on this connection into ours.
    pub fn error(&self, e: virt::error::Error, operation: Operation, uuid: Option<Uuid>) -> Error {
        let alive = self.is_alive();
        from_virt(e, operation, uuid, &self.uri, alive)
    }

    pub fn lookup(&self, uuid: Uuid, operation: Operation) -> Result<Domain> {
        Domain::lookup_by_uuid(&self.connect, uuid)
            .map_err(|e| self.error(e, operation, Some(uuid)))
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Err(e) = self.connect.close() {
            tracing::debug!(target: TARGET, error = %e.message(), "closing the libvirt connection");
        }
    }
}

/// The power state of `dom` now.
pub(crate) fn power_state(
    conn: &Conn,
    dom: &Domain,
    uuid: Uuid,
    op: Operation,
) -> Result<PowerState> {
    let (state, reason) = dom.get_state().map_err(|e| conn.error(e, op, Some(uuid)))?;
    Ok(PowerState::from_libvirt(state, reason))
}

/// Everything the host needs about one domain (4 calls: uuid and name are local).
pub(crate) fn domain_info(conn: &Conn, dom: &Domain, op: Operation) -> Result<DomainInfo> {
    let uuid = dom.get_uuid().map_err(|e| conn.error(e, op, None))?;
    let name = dom.get_name().map_err(|e| conn.error(e, op, Some(uuid)))?;
    let power_state = power_state(conn, dom, uuid, op)?;
    let persistent = dom
        .is_persistent()
        .map_err(|e| conn.error(e, op, Some(uuid)))?;
    let xml = dom
        .get_xml_desc(0)
        .map_err(|e| conn.error(e, op, Some(uuid)))?;
    let facts = domain_facts(&xml)?;
    Ok(DomainInfo {
        uuid,
        name,
        power_state,
        persistent,
        agent_socket: facts.agent_socket,
        vnc_socket: facts.vnc_socket,
    })
}

/// All domains, active and inactive. A domain that disappears while being read is left out.
pub(crate) fn all_domains(conn: &Conn) -> Result<Vec<DomainInfo>> {
    let domains = conn
        .connect()
        .list_all_domains(0)
        .map_err(|e| conn.error(e, Operation::List, None))?;
    let mut infos = Vec::with_capacity(domains.len());
    for dom in &domains {
        match domain_info(conn, dom, Operation::List) {
            Ok(info) => infos.push(info),
            Err(Error::NoSuchDomain { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(infos)
}

/// Whether the crate is connected to libvirt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionStatus {
    /// The first attempt is under way.
    Connecting,
    /// Connected; events flow.
    Connected,
    /// Not connected; the supervisor retries with backoff.
    Disconnected {
        /// Why (libvirt's message for the last failed attempt, or the close reason).
        reason: String,
        /// Failed attempts since the last success.
        attempts: u32,
    },
}

pub(crate) struct Shared {
    pub config: LibvirtConfig,
    current: Mutex<Option<Arc<Conn>>>,
    status: watch::Sender<ConnectionStatus>,
    stop: AtomicBool,
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn publish(&self, conn: Option<Arc<Conn>>) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = conn;
    }

    fn set_status(&self, status: ConnectionStatus) {
        self.status.send_replace(status);
    }

    /// The connection operations use, or why there is none.
    pub fn conn(&self) -> Result<Arc<Conn>> {
        if let Some(conn) = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(conn);
        }
        let reason = match &*self.status.borrow() {
            ConnectionStatus::Connecting => "not connected yet".to_owned(),
            ConnectionStatus::Connected => "the connection was just lost".to_owned(),
            ConnectionStatus::Disconnected { reason, .. } => reason.clone(),
        };
        Err(Error::Unreachable {
            uri: self.config.uri.clone(),
            reason,
        })
    }
}

/// Stops the supervisor when the last [`Libvirt`] clone is dropped.
struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::SeqCst);
    }
}

/// A handle on libvirt: cheap to clone; the connection closes when the last clone is dropped.
#[derive(Clone)]
pub struct Libvirt {
    pub(crate) shared: Arc<Shared>,
    _stop: Arc<StopOnDrop>,
}

impl std::fmt::Debug for Libvirt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Libvirt")
            .field("uri", &self.shared.config.uri)
            .field("status", &*self.shared.status.borrow())
            .finish()
    }
}

impl Libvirt {
    /// Starts the supervisor thread, which connects to `config.uri` in the background (and
    /// again whenever the connection is lost). Returns at once; see [`Libvirt::status`] and
    /// [`Libvirt::wait_connected`]. Events go to the returned receiver (dropping it is fine:
    /// events are then discarded).
    pub fn start(config: LibvirtConfig) -> Result<(Libvirt, Events)> {
        if config.event_capacity == 0 {
            return Err(Error::InvalidSpec(
                "event_capacity must be at least 1".into(),
            ));
        }
        let (events_tx, events_rx) = mpsc::channel(config.event_capacity);
        let (status, _) = watch::channel(ConnectionStatus::Connecting);
        let shared = Arc::new(Shared {
            config,
            current: Mutex::new(None),
            status,
            stop: AtomicBool::new(false),
        });
        let for_thread = shared.clone();
        std::thread::Builder::new()
            .name("libvirt-supervisor".into())
            .spawn(move || supervise(&for_thread, &events_tx))
            .map_err(|e| Error::Internal(format!("starting the libvirt supervisor: {e}")))?;
        Ok((
            Libvirt {
                _stop: Arc::new(StopOnDrop(shared.clone())),
                shared,
            },
            events_rx,
        ))
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &LibvirtConfig {
        &self.shared.config
    }

    /// Connected or not, and why not.
    pub fn status(&self) -> ConnectionStatus {
        self.shared.status.borrow().clone()
    }

    /// Waits until connected, at most `timeout`; else [`Error::Unreachable`] with the last
    /// reason.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        let mut status = self.shared.status.subscribe();
        let connected = tokio::time::timeout(
            timeout,
            status.wait_for(|s| matches!(s, ConnectionStatus::Connected)),
        )
        .await;
        match connected {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::Unreachable {
                uri: self.shared.config.uri.clone(),
                reason: match self.status() {
                    ConnectionStatus::Disconnected { reason, .. } => reason,
                    ConnectionStatus::Connecting => format!("not connected after {timeout:?}"),
                    ConnectionStatus::Connected => "connection lost again".into(),
                },
            }),
        }
    }
}

fn supervise(shared: &Arc<Shared>, events: &mpsc::Sender<Event>) {
    let config = &shared.config;
    let mut backoff = config.reconnect_initial;
    let mut attempts = 0u32;
    let mut connected_before = false;
    while !shared.stopping() {
        match Session::open(shared) {
            Ok(session) => {
                attempts = 0;
                backoff = config.reconnect_initial;
                let cause = if connected_before {
                    SnapshotCause::Reconnected
                } else {
                    SnapshotCause::Connected
                };
                connected_before = true;
                tracing::info!(target: TARGET, uri = %config.uri, "connected to libvirt");
                let reason = session.run(shared, events, cause);
                if shared.stopping() {
                    break;
                }
                tracing::warn!(target: TARGET, uri = %config.uri, %reason, "lost the libvirt connection; reconnecting");
                shared.set_status(ConnectionStatus::Disconnected {
                    reason: reason.clone(),
                    attempts: 0,
                });
                // If the channel is full the consumer will still get the Reconnected snapshot.
                let _ = events.try_send(Event::Disconnected { reason });
            }
            Err(e) => {
                attempts += 1;
                let reason = match e {
                    Error::Unreachable { reason, .. } => reason,
                    other => other.to_string(),
                };
                if attempts == 1 {
                    tracing::warn!(target: TARGET, uri = %config.uri, %reason, "libvirt unreachable; retrying with backoff");
                } else {
                    tracing::debug!(target: TARGET, uri = %config.uri, %reason, attempts, "libvirt still unreachable");
                }
                shared.set_status(ConnectionStatus::Disconnected { reason, attempts });
            }
        }
        sleep_unless_stopped(shared, backoff);
        backoff = (backoff * 2).min(config.reconnect_max);
    }
    shared.publish(None);
}

fn sleep_unless_stopped(shared: &Shared, total: Duration) {
    let mut left = total;
    while !left.is_zero() && !shared.stopping() {
        let step = left.min(IDLE_WAKE);
        std::thread::sleep(step);
        left -= step;
    }
}

/// One connected period.
struct Session {
    conn: Arc<Conn>,
    registration: Option<Registration>,
    raw: Receiver<RawEvent>,
    signals: Arc<Signals>,
}

impl Session {
    fn open(shared: &Shared) -> Result<Session> {
        let conn = Arc::new(Conn::open(&shared.config.uri)?);
        // Remote connections only; local drivers answer -1 and need none.
        let _ = conn
            .connect()
            .set_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT);
        let (queue, raw) = sync_channel(shared.config.event_capacity);
        let signals = Arc::new(Signals {
            overflowed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        // SAFETY: the registration is deregistered in `run` before `conn` can be closed
        // (the session keeps an `Arc<Conn>` until then).
        let registration =
            unsafe { Registration::register(conn.connect().as_ptr(), queue, signals.clone()) }?;
        Ok(Session {
            conn,
            registration: Some(registration),
            raw,
            signals,
        })
    }

    /// Delivers events until the connection closes or the supervisor stops; returns why.
    fn run(
        mut self,
        shared: &Shared,
        events: &mpsc::Sender<Event>,
        cause: SnapshotCause,
    ) -> String {
        shared.publish(Some(self.conn.clone()));
        shared.set_status(ConnectionStatus::Connected);
        let reason = self.deliver(shared, events, cause);
        shared.publish(None);
        if let Some(registration) = self.registration.take() {
            registration.deregister();
        }
        reason
    }

    fn deliver(
        &self,
        shared: &Shared,
        events: &mpsc::Sender<Event>,
        cause: SnapshotCause,
    ) -> String {
        // Events are registered before the first snapshot, so nothing falls between them.
        let mut pending_snapshot = Some(cause);
        loop {
            if shared.stopping() {
                return "stopping".into();
            }
            if self.signals.closed.load(Ordering::SeqCst) {
                return close_reason_from_queue(&self.raw);
            }
            if self.signals.overflowed.swap(false, Ordering::SeqCst) {
                tracing::warn!(target: TARGET, "libvirt events overflowed the queue; resyncing");
                pending_snapshot = Some(SnapshotCause::EventsDropped);
            }
            if let Some(cause) = pending_snapshot {
                if events.is_closed() {
                    pending_snapshot = None;
                } else if events.capacity() > 0 {
                    match self.snapshot(cause) {
                        Ok(Some(snapshot)) => match events.try_send(snapshot) {
                            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {
                                pending_snapshot = None;
                            }
                            Err(mpsc::error::TrySendError::Full(_)) => {}
                        },
                        Ok(None) => return close_reason_from_queue(&self.raw),
                        Err(Error::Unreachable { reason, .. }) => return reason,
                        Err(e) => {
                            tracing::warn!(target: TARGET, error = %e, "listing domains for a resync failed; retrying");
                        }
                    }
                }
            }
            match self.raw.recv_timeout(IDLE_WAKE) {
                Ok(RawEvent::Lifecycle {
                    uuid,
                    name,
                    event,
                    detail,
                }) => {
                    if pending_snapshot.is_some() {
                        // The snapshot to come is newer than this event.
                        continue;
                    }
                    let Some(lifecycle) = self.lifecycle(uuid, name, event, detail) else {
                        continue;
                    };
                    match events.try_send(Event::Lifecycle(lifecycle)) {
                        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            tracing::warn!(target: TARGET, "event consumer is behind; a snapshot will replace dropped events");
                            pending_snapshot = Some(SnapshotCause::EventsDropped);
                        }
                    }
                }
                Ok(RawEvent::Closed { reason }) => return close_reason(reason).to_owned(),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return "libvirt dropped the event callbacks".into();
                }
            }
        }
    }

    /// Discards queued events (the snapshot supersedes them) and lists all domains.
    /// `Ok(None)`: the connection closed meanwhile.
    fn snapshot(&self, cause: SnapshotCause) -> Result<Option<Event>> {
        while let Ok(raw) = self.raw.try_recv() {
            if matches!(raw, RawEvent::Closed { .. }) {
                self.signals.closed.store(true, Ordering::SeqCst);
            }
        }
        if self.signals.closed.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let domains = all_domains(&self.conn)?;
        Ok(Some(Event::Snapshot { cause, domains }))
    }

    fn lifecycle(
        &self,
        uuid: Uuid,
        name: String,
        event: i32,
        detail: i32,
    ) -> Option<LifecycleEvent> {
        let Some(classified) = classify(event, detail) else {
            tracing::debug!(target: TARGET, %uuid, event, detail, "unknown lifecycle event ignored");
            return None;
        };
        let power_state = match classified.implied {
            Some(state) => state,
            None => self.current_state(uuid),
        };
        Some(LifecycleEvent {
            uuid,
            name,
            kind: classified.kind,
            detail: classified.detail,
            power_state,
        })
    }

    /// The state of a domain an event did not say enough about; a domain that is gone (an
    /// undefined inactive one) is shut off.
    fn current_state(&self, uuid: Uuid) -> PowerState {
        let dom = match Domain::lookup_by_uuid(self.conn.connect(), uuid) {
            Ok(dom) => dom,
            Err(e) if e.code() == ErrorNumber::NoDomain => return PowerState::Shutoff,
            Err(_) => return PowerState::Unknown,
        };
        power_state(&self.conn, &dom, uuid, Operation::List).unwrap_or(PowerState::Unknown)
    }
}

fn close_reason_from_queue(raw: &Receiver<RawEvent>) -> String {
    while let Ok(event) = raw.try_recv() {
        if let RawEvent::Closed { reason } = event {
            return close_reason(reason).to_owned();
        }
    }
    "libvirtd closed the connection".into()
}

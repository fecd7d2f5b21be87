//! The console service: mint tickets, admit upgrades, run sessions, end them from outside.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{FromRequestParts, Path as UrlPath, Query, Request, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::{TcpStream, UnixStream};
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::audit::{AuditRecord, AuditSink};
use crate::close::CloseCode;
use crate::registry::{Claim, OpenSession, Registry};
use crate::relay::{Limits, Traffic, refuse, relay};
use crate::ticket::{Redemption, Ticket, TicketRefusal, TicketStore, TicketStoreError};
use crate::upgrade::Handshake;

/// The URL of a console: `GET /console/{vm_id}?ticket=…[&takeover=1]`.
pub const CONSOLE_ROUTE: &str = "/console/{vm_id}";

/// Bounds and clocks of the console service.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// How long a minted ticket is valid (the issue: 30 s).
    pub ticket_ttl: Duration,
    /// How long tickets are kept after expiring, so that a replay is answered "already used"
    /// rather than "unknown". Minting purges older ones at most once a minute.
    pub ticket_retention: Duration,
    /// Pings to the viewer this often: below the 30–60 s idle timeouts of common proxies and
    /// load balancers (nginx `proxy_read_timeout` 60 s, AWS ALB 60 s).
    pub keepalive_interval: Duration,
    /// A viewer silent this long (no frame, not even a pong), or not accepting data this long,
    /// is gone.
    pub keepalive_timeout: Duration,
    /// At most this many bytes are read from the VNC server per WebSocket message (and held).
    /// A quiet console holds 16 KiB; the buffer doubles up to this while updates stream in
    /// (QEMU's and Xvnc's UNIX sockets queue about 200 KiB at a time).
    pub chunk_size: usize,
    /// Largest message (and frame) accepted from the viewer. noVNC sends input events and
    /// update requests of a few bytes; a clipboard paste is the largest.
    pub max_viewer_message: usize,
    /// Initial read buffer of the WebSocket (allocated per session up front; the viewer sends
    /// little, so small keeps an open console cheap).
    pub viewer_read_buffer: usize,
    /// How long connecting to the VNC endpoint may take.
    pub connect_timeout: Duration,
    /// How long to wait for the viewer's reply to our close frame.
    pub close_timeout: Duration,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            ticket_ttl: Duration::from_secs(30),
            ticket_retention: Duration::from_secs(600),
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(45),
            chunk_size: 256 * 1024,
            max_viewer_message: 1024 * 1024,
            viewer_read_buffer: 16 * 1024,
            connect_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(5),
        }
    }
}

/// Where a VM's VNC server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VncEndpoint {
    /// A UNIX socket: `vnc-<uuid>.sock` in the socket directory, or the `socket` attribute of
    /// the domain XML's `<graphics type='vnc'>`.
    Unix(PathBuf),
    /// A TCP address: the domain XML's `listen`/`port` when libvirt gave VNC a port.
    Tcp(SocketAddr),
}

/// Why the gate turns a redeemed ticket away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateRefusal {
    /// The user may not open this VM's console (any more).
    NotAllowed,
    /// The VM has no console (unknown VM, or no VNC configured).
    NoConsole,
    /// The VM is not running.
    NotRunning,
    /// The gate could not decide (its database failed); the detail is logged.
    Unavailable(String),
}

/// The host's side of admission: its access rules and what it knows of the VM. Asked after
/// the ticket was consumed, so that a ticket minted before a revocation opens nothing.
#[async_trait]
pub trait ConsoleGate: Send + Sync {
    /// May `user_id` open `vm_id`'s console now, and where does its VNC server listen?
    async fn admit(&self, user_id: i64, vm_id: &str) -> Result<VncEndpoint, GateRefusal>;
}

/// A minted ticket, as the API hands it to the viewer (GraphQL `vmConsoleTicket`).
#[derive(Debug, Clone)]
pub struct IssuedTicket {
    /// The secret (shown once).
    pub ticket: Ticket,
    /// When it stops being valid.
    pub expires_at: DateTime<Utc>,
    /// Path and query to open: `/console/<vm_id>?ticket=<ticket>`.
    pub path: String,
}

/// The console service of one process. Cheap to share (`Arc`); mount [`Console::router`].
pub struct Console {
    tickets: Arc<dyn TicketStore>,
    gate: Arc<dyn ConsoleGate>,
    audit: Arc<dyn AuditSink>,
    registry: Arc<Registry>,
    sessions: TaskTracker,
    last_purge: std::sync::Mutex<Option<DateTime<Utc>>>,
    config: ConsoleConfig,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("open", &self.registry.list().len())
            .field("config", &self.config)
            .finish()
    }
}

/// A refusal decided before the upgrade.
struct Refused {
    code: CloseCode,
    user_id: Option<i64>,
    /// What the log needs beyond the reason (an I/O error, the store's error).
    detail: Option<String>,
}

impl Refused {
    fn new(code: CloseCode, user_id: Option<i64>) -> Refused {
        Refused {
            code,
            user_id,
            detail: None,
        }
    }

    fn because(mut self, detail: impl std::fmt::Display) -> Refused {
        self.detail = Some(detail.to_string());
        self
    }
}

/// The VNC connection of an admitted session.
enum VncStream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

struct Admitted {
    user_id: i64,
    vnc: VncStream,
    claim: Claim,
}

/// Who asked, for logs and the audit record.
struct Attempt {
    vm_id: String,
    remote: Option<SocketAddr>,
    started_at: DateTime<Utc>,
}

impl Console {
    /// A console service over `tickets` (the store), `gate` (the host's rules) and `audit`.
    pub fn new(
        tickets: Arc<dyn TicketStore>,
        gate: Arc<dyn ConsoleGate>,
        audit: Arc<dyn AuditSink>,
        config: ConsoleConfig,
    ) -> Arc<Console> {
        Arc::new(Console {
            tickets,
            gate,
            audit,
            registry: Arc::new(Registry::default()),
            sessions: TaskTracker::new(),
            last_purge: std::sync::Mutex::new(None),
            config,
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &ConsoleConfig {
        &self.config
    }

    /// Mint a ticket for `user_id` to open `vm_id`'s console. The caller has checked that the
    /// user may see the VM; the check is repeated at the upgrade ([`ConsoleGate::admit`]).
    pub async fn issue_ticket(
        &self,
        user_id: i64,
        vm_id: &str,
    ) -> Result<IssuedTicket, TicketStoreError> {
        let now = Utc::now();
        self.purge_now_and_then(now).await;
        let ticket = Ticket::generate()?;
        let expires_at = now + self.config.ticket_ttl;
        self.tickets
            .mint(&ticket.hash(), user_id, vm_id, expires_at)
            .await?;
        let path = format!(
            "/console/{}?ticket={}",
            encode_path_segment(vm_id),
            ticket.as_str()
        );
        Ok(IssuedTicket {
            ticket,
            expires_at,
            path,
        })
    }

    /// Keep the ticket table small without a timer of its own: at most once a minute, the
    /// minting request deletes what expired more than `ticket_retention` ago.
    async fn purge_now_and_then(&self, now: DateTime<Utc>) {
        {
            let mut last = self.last_purge.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|at| now - at < chrono::Duration::seconds(60)) {
                return;
            }
            *last = Some(now);
        }
        match self
            .tickets
            .purge_expired(now - self.config.ticket_retention)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(target: crate::LOG_TARGET, "purged {n} old console tickets"),
            Err(e) => tracing::warn!(target: crate::LOG_TARGET, "purging console tickets: {e}"),
        }
    }

    /// `GET /console/{vm_id}` on a router of any state. The remote address is read from
    /// `ConnectInfo<SocketAddr>` when the listener provides it
    /// (`into_make_service_with_connect_info`).
    pub fn router<S>(self: &Arc<Self>) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        Router::new()
            .route(CONSOLE_ROUTE, get(console_handler))
            .with_state(self.clone())
    }

    /// Admit or refuse one request for `vm_id`'s console (what [`Console::router`]'s handler
    /// calls), for a host that routes it itself. Reads `ticket` and `takeover` from the query;
    /// answers HTTP 4xx to anything but a WebSocket upgrade (without touching the ticket).
    pub async fn upgrade(
        self: &Arc<Self>,
        request: Request,
        vm_id: String,
        remote: Option<SocketAddr>,
    ) -> Response {
        let (mut parts, _body) = request.into_parts();
        let handshake = match Handshake::accept(&mut parts) {
            Ok(handshake) => handshake,
            Err(not_a_websocket) => return not_a_websocket.into_response(),
        };
        // A query that does not parse carries no usable ticket: refused like a missing one.
        let params = Query::<ConsoleParams>::try_from_uri(&parts.uri)
            .map(|Query(p)| p)
            .unwrap_or_default();
        let takeover = params
            .takeover
            .as_deref()
            .is_some_and(|v| matches!(v, "1" | "true" | "yes"));
        let attempt = Attempt {
            vm_id,
            remote,
            started_at: Utc::now(),
        };
        match self
            .admit(&attempt, params.ticket.as_deref(), takeover)
            .await
        {
            Ok(admitted) => {
                tracing::info!(
                    target: crate::LOG_TARGET,
                    user = admitted.user_id,
                    vm = %attempt.vm_id,
                    remote = %display_remote(attempt.remote),
                    took_over = admitted.claim.took_over,
                    "console opened"
                );
                let pending = PendingSession {
                    console: self.clone(),
                    // Tracked from admission on, so that `closed` also waits for a session
                    // whose handshake is still being answered.
                    _tracked: self.sessions.token(),
                    attempt,
                    admitted,
                };
                handshake.respond(move |upgraded| pending.run_with(upgraded))
            }
            Err(refused) => {
                tracing::warn!(
                    target: crate::LOG_TARGET,
                    code = refused.code.code(),
                    user = %display_user(refused.user_id),
                    vm = %attempt.vm_id,
                    remote = %display_remote(attempt.remote),
                    detail = refused.detail.as_deref().unwrap_or(""),
                    "console refused: {}",
                    refused.code.reason()
                );
                self.audit
                    .record(AuditRecord {
                        user_id: refused.user_id,
                        vm_id: attempt.vm_id,
                        remote: attempt.remote,
                        started_at: attempt.started_at,
                        duration: Duration::ZERO,
                        opened: false,
                        took_over: false,
                        end: refused.code,
                        bytes_to_viewer: 0,
                        bytes_from_viewer: 0,
                    })
                    .await;
                let close_timeout = self.config.close_timeout;
                handshake.respond(move |upgraded| {
                    refuse(TokioIo::new(upgraded), refused.code, close_timeout)
                })
            }
        }
    }

    async fn admit(
        &self,
        attempt: &Attempt,
        ticket: Option<&str>,
        takeover: bool,
    ) -> Result<Admitted, Refused> {
        let ticket = ticket
            .and_then(Ticket::parse)
            .ok_or_else(|| Refused::new(CloseCode::TicketUnknownOrExpired, None))?;
        let redemption = self
            .tickets
            .redeem(&ticket.hash(), &attempt.vm_id, Utc::now())
            .await
            .map_err(|e| Refused::new(CloseCode::Unavailable, None).because(e))?;
        let user_id = match redemption {
            Redemption::Granted { user_id } => user_id,
            Redemption::Refused { refusal, user_id } => {
                let code = match refusal {
                    TicketRefusal::UnknownOrExpired => CloseCode::TicketUnknownOrExpired,
                    TicketRefusal::AlreadyUsed => CloseCode::TicketAlreadyUsed,
                    TicketRefusal::OtherVm => CloseCode::TicketForAnotherVm,
                };
                return Err(Refused::new(code, user_id));
            }
        };
        let endpoint = self
            .gate
            .admit(user_id, &attempt.vm_id)
            .await
            .map_err(|refusal| match refusal {
                GateRefusal::NotAllowed => Refused::new(CloseCode::NotAllowed, Some(user_id)),
                GateRefusal::NoConsole => Refused::new(CloseCode::NoConsole, Some(user_id)),
                GateRefusal::NotRunning => Refused::new(CloseCode::NotRunning, Some(user_id)),
                GateRefusal::Unavailable(detail) => {
                    Refused::new(CloseCode::Unavailable, Some(user_id)).because(detail)
                }
            })?;
        // Checked before connecting so that a refused duplicate never touches the VNC server;
        // `claim` below decides for real.
        if !takeover && self.registry.is_open(user_id, &attempt.vm_id) {
            return Err(Refused::new(CloseCode::AlreadyOpen, Some(user_id)));
        }
        let vnc = self
            .connect(&endpoint)
            .await
            .map_err(|(code, detail)| Refused::new(code, Some(user_id)).because(detail))?;
        let claim = self
            .registry
            .claim(
                OpenSession {
                    user_id,
                    vm_id: attempt.vm_id.clone(),
                    remote: attempt.remote,
                    started_at: attempt.started_at,
                },
                takeover,
            )
            .ok_or_else(|| Refused::new(CloseCode::AlreadyOpen, Some(user_id)))?;
        Ok(Admitted {
            user_id,
            vnc,
            claim,
        })
    }

    /// Connect to the VNC server. No socket file (or no such path) → no console; a socket
    /// nobody listens on, or no answer in time → not running.
    async fn connect(&self, endpoint: &VncEndpoint) -> Result<VncStream, (CloseCode, String)> {
        use std::io::ErrorKind;
        let connected = tokio::time::timeout(self.config.connect_timeout, async {
            match endpoint {
                VncEndpoint::Unix(path) => UnixStream::connect(path).await.map(VncStream::Unix),
                VncEndpoint::Tcp(addr) => TcpStream::connect(addr).await.map(|tcp| {
                    // RFB input events are tiny; they must not wait for Nagle.
                    let _ = tcp.set_nodelay(true);
                    VncStream::Tcp(tcp)
                }),
            }
        })
        .await;
        let described = || match endpoint {
            VncEndpoint::Unix(path) => path.display().to_string(),
            VncEndpoint::Tcp(addr) => addr.to_string(),
        };
        match connected {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => {
                let code = match e.kind() {
                    ErrorKind::NotFound | ErrorKind::NotADirectory | ErrorKind::InvalidInput => {
                        CloseCode::NoConsole
                    }
                    _ => CloseCode::NotRunning,
                };
                Err((code, format!("connecting to {}: {e}", described())))
            }
            Err(_) => Err((
                CloseCode::NotRunning,
                format!(
                    "connecting to {}: no answer within {:?}",
                    described(),
                    self.config.connect_timeout
                ),
            )),
        }
    }

    /// End every console session of `user_id` (deleted, password changed, token revoked):
    /// close code 4002. Returns how many were open.
    pub fn end_user(&self, user_id: i64) -> usize {
        self.registry
            .stop_where(CloseCode::AccessRevoked, |s| s.user_id == user_id)
    }

    /// End `user_id`'s console of `vm_id` (the VM was given to someone else): 4002.
    pub fn end_user_vm(&self, user_id: i64, vm_id: &str) -> usize {
        self.registry.stop_where(CloseCode::AccessRevoked, |s| {
            s.user_id == user_id && s.vm_id == vm_id
        })
    }

    /// End every console of `vm_id` (the VM was deleted or stopped): 4000.
    pub fn end_vm(&self, vm_id: &str) -> usize {
        self.registry
            .stop_where(CloseCode::ConsoleClosed, |s| s.vm_id == vm_id)
    }

    /// End every console with 1001 and refuse nothing new by itself (stop routing to it);
    /// await [`Console::closed`] for the sessions to finish.
    pub fn shutdown(&self) -> usize {
        self.sessions.close();
        self.registry
            .stop_where(CloseCode::ServerShutdown, |_| true)
    }

    /// Completes when [`Console::shutdown`] was called and every session ended (audit records
    /// written).
    pub async fn closed(&self) {
        self.sessions.close();
        self.sessions.wait().await;
    }

    /// The open sessions of this process.
    pub fn sessions(&self) -> Vec<OpenSession> {
        self.registry.list()
    }
}

/// An admitted session whose WebSocket is not open yet.
struct PendingSession {
    console: Arc<Console>,
    _tracked: TaskTrackerToken,
    attempt: Attempt,
    admitted: Admitted,
}

impl PendingSession {
    async fn run_with(self, upgraded: Upgraded) {
        let PendingSession {
            console,
            _tracked,
            attempt,
            admitted,
        } = self;
        let Admitted {
            user_id,
            vnc,
            claim,
        } = admitted;
        let c = &console.config;
        let limits = Limits {
            chunk: c.chunk_size,
            keepalive_interval: c.keepalive_interval,
            keepalive_timeout: c.keepalive_timeout,
            close_timeout: c.close_timeout,
            max_viewer_message: c.max_viewer_message,
            viewer_read_buffer: c.viewer_read_buffer,
        };
        let traffic = Traffic::default();
        let opened = tokio::time::Instant::now();
        let stop = &claim.stop;
        let vm_id = &attempt.vm_id;
        let remote = attempt.remote;
        let traffic_ref = &traffic;
        // Logged when the relay ends, before the closing handshake.
        let ended = |end: CloseCode| {
            tracing::info!(
                target: crate::LOG_TARGET,
                user = user_id,
                vm = %vm_id,
                remote = %display_remote(remote),
                code = end.code(),
                duration_ms = opened.elapsed().as_millis() as u64,
                bytes_to_viewer = traffic_ref.to_viewer.load(std::sync::atomic::Ordering::Relaxed),
                bytes_from_viewer = traffic_ref.from_viewer.load(std::sync::atomic::Ordering::Relaxed),
                "console closed: {}",
                end.reason()
            );
        };
        let end = match (viewer_halves(upgraded), vnc) {
            ((viewer_in, viewer_out), VncStream::Unix(stream)) => {
                let (from_vnc, to_vnc) = stream.into_split();
                relay(
                    viewer_in, viewer_out, from_vnc, to_vnc, stop, limits, &traffic, ended,
                )
                .await
            }
            ((viewer_in, viewer_out), VncStream::Tcp(stream)) => {
                let (from_vnc, to_vnc) = stream.into_split();
                relay(
                    viewer_in, viewer_out, from_vnc, to_vnc, stop, limits, &traffic, ended,
                )
                .await
            }
        };
        let duration = opened.elapsed();
        let record = AuditRecord {
            user_id: Some(user_id),
            vm_id: attempt.vm_id,
            remote: attempt.remote,
            started_at: attempt.started_at,
            duration,
            opened: true,
            took_over: claim.took_over,
            end,
            bytes_to_viewer: traffic.to_viewer.into_inner(),
            bytes_from_viewer: traffic.from_viewer.into_inner(),
        };
        // Free the (user, VM) slot before the audit write, which may wait for a database.
        drop(claim);
        console.audit.record(record).await;
    }
}

fn display_user(user_id: Option<i64>) -> String {
    user_id.map_or_else(|| "-".to_owned(), |id| id.to_string())
}

fn display_remote(remote: Option<SocketAddr>) -> String {
    remote.map_or_else(|| "-".to_owned(), |addr| addr.to_string())
}

/// Percent-encode everything but RFC 3986's unreserved characters (VM ids are UUIDs; this is
/// for the odd one that is not).
fn encode_path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Debug, Default, Deserialize)]
struct ConsoleParams {
    ticket: Option<String>,
    takeover: Option<String>,
}

/// The viewer's address when the listener records it.
struct RemoteAddr(Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for RemoteAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(RemoteAddr(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0),
        ))
    }
}

async fn console_handler(
    State(console): State<Arc<Console>>,
    UrlPath(vm_id): UrlPath<String>,
    RemoteAddr(remote): RemoteAddr,
    request: Request,
) -> Response {
    console.upgrade(request, vm_id, remote).await
}

/// The two halves of the viewer's connection. (hyper-util's server wraps every connection in
/// a private type before the upgrade, so the TCP socket cannot be had back for a lock-free
/// split or for `splice(2)`; tokio's generic split it is.)
type ViewerIn = tokio::io::ReadHalf<TokioIo<Upgraded>>;
type ViewerOut = tokio::io::WriteHalf<TokioIo<Upgraded>>;

fn viewer_halves(upgraded: Upgraded) -> (ViewerIn, ViewerOut) {
    tokio::io::split(TokioIo::new(upgraded))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_keep_uuids_and_encode_the_rest() {
        assert_eq!(
            encode_path_segment("8d2c6a4e-1f0b-4c7a-9e51-2b3c4d5e6f70"),
            "8d2c6a4e-1f0b-4c7a-9e51-2b3c4d5e6f70"
        );
        assert_eq!(encode_path_segment("a b/c?d"), "a%20b%2Fc%3Fd");
    }
}

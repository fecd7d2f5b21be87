//! The HTTP listeners' accept loop, on hyper directly rather than `axum::serve`, for what the
//! latter does not let one set:
//!
//! - a **header timeout** (`api.header_timeout_secs`): a client that does not finish its
//!   request's headers in time — or keeps an idle keep-alive connection open that long — is
//!   disconnected (`axum::serve` sets no timer, so half-sent requests stayed forever);
//! - the **bound on connections not yet authenticated** ([`ConnectionTracker`]): each accepted
//!   connection is admitted or closed at once, and travels with its requests so that the API
//!   can mark it authenticated;
//! - the client address (`ConnectInfo<SocketAddr>`) on every request, for per-address limits.
//!
//! HTTP/1.1 only (with WebSocket upgrades): every client of this server speaks it, and HTTP/2
//! over cleartext would be one more protocol's limits to get right.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use infinibay_api::connections::ConnectionTracker;

const TARGET: &str = "infinibay::http";

/// How one listener serves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Time to send a request's headers (and to keep an idle connection).
    pub header_timeout: Duration,
    /// Connections not yet authenticated (also in every request's extensions, for the
    /// counters of `/metrics`).
    pub tracker: ConnectionTracker,
    /// Whether this listener's connections count against [`Self::tracker`] (not the metrics
    /// listener's: it is private, or behind its own token).
    pub admit: bool,
}

/// Accept and serve connections on `listener` with `app` until `shutdown` is cancelled, then
/// let the connections in flight finish their requests (graceful shutdown) and return.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: ServeOptions,
    shutdown: CancellationToken,
) {
    // Every connection task holds a clone; when all are gone the last request has been
    // answered.
    let (connections_done, all_done) = tokio::sync::mpsc::channel::<()>(1);
    let mut all_done = all_done;
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors and the like: the listener itself is fine; wait a
                    // moment instead of spinning.
                    tracing::warn!(target: TARGET, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let connection = if options.admit {
            match options.tracker.admit(peer) {
                Some(c) => Some(c),
                None => {
                    tracing::debug!(target: TARGET, %peer, "connection refused: too many unauthenticated connections");
                    drop(tcp);
                    continue;
                }
            }
        } else {
            None
        };
        tokio::spawn(serve_connection(
            tcp,
            (peer, connection, options.tracker.clone()),
            app.clone(),
            options.header_timeout,
            shutdown.clone(),
            connections_done.clone(),
        ));
    }
    drop(connections_done);
    // `None` once every connection task has dropped its sender.
    let _ = all_done.recv().await;
}

/// Who is on the other end: its address, its admission (if counted), and the tracker.
type Origin = (
    SocketAddr,
    Option<infinibay_api::connections::Connection>,
    ConnectionTracker,
);

async fn serve_connection(
    tcp: TcpStream,
    (peer, connection, tracker): Origin,
    app: Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
    _done: tokio::sync::mpsc::Sender<()>,
) {
    // Real-time frames are small writes on long-lived sockets: with Nagle's algorithm one
    // could wait for the client's delayed ACK (40–200 ms), which is what a live chart shows.
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(target: TARGET, "TCP_NODELAY not set: {e}");
    }
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        let extensions = request.extensions_mut();
        extensions.insert(ConnectInfo(peer));
        extensions.insert(tracker.clone());
        if let Some(connection) = &connection {
            extensions.insert(connection.clone());
        }
        let app = app.clone();
        async move {
            let response = app.oneshot(request.map(Body::new)).await;
            Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let served = builder
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    tokio::pin!(served);
    tokio::select! {
        result = served.as_mut() => {
            if let Err(e) = result {
                tracing::trace!(target: TARGET, %peer, "connection ended: {e}");
            }
        }
        () = shutdown.cancelled() => {
            served.as_mut().graceful_shutdown();
            if let Err(e) = served.await {
                tracing::trace!(target: TARGET, %peer, "connection ended: {e}");
            }
        }
    }
}

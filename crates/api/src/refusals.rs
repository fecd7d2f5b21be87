//! Refused WebSocket upgrades and Socket.IO connections, logged (seed 004's lesson: a
//! frontend that cannot connect must leave a trace on the server). Each refusal names its
//! reason, the remote address and the path; a repeat of the same (surface, reason, address,
//! path) within [`REPEAT_WINDOW`] is counted, not logged, and the count goes with the next
//! line after the window.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

use crate::state::Api;

const TARGET: &str = "infinibay::api::refused";
/// How long repeats of one refusal are only counted.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(60);
/// Distinct refusals remembered at once (a scan from many addresses cannot grow it further).
const MAX_KEYS: usize = 1024;

type Key = (&'static str, String, Option<IpAddr>, String);

/// The deduplicating log of refusals.
#[derive(Debug, Default)]
pub struct RefusalLog {
    seen: Mutex<HashMap<Key, (Instant, u64)>>,
}

impl RefusalLog {
    /// Note one refusal on `surface` (`websocket`, `socket.io`); logs it unless the same one
    /// was logged within [`REPEAT_WINDOW`]. Whether it was logged.
    pub fn note(
        &self,
        surface: &'static str,
        reason: &str,
        remote: Option<SocketAddr>,
        path: &str,
    ) -> bool {
        let reason: String = reason.chars().take(200).collect();
        let path: String = path.chars().take(200).collect();
        let key = (surface, reason, remote.map(|r| r.ip()), path);
        let now = Instant::now();
        let suppressed = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.len() >= MAX_KEYS && !seen.contains_key(&key) {
                seen.retain(|_, (at, _)| now.duration_since(*at) < REPEAT_WINDOW);
                if seen.len() >= MAX_KEYS {
                    // Full of fresh refusals: this one is logged, not remembered.
                    drop(seen);
                    log(surface, &key, remote, 0);
                    return true;
                }
            }
            match seen.get_mut(&key) {
                Some((at, count)) if now.duration_since(*at) < REPEAT_WINDOW => {
                    *count += 1;
                    return false;
                }
                Some((at, count)) => {
                    let suppressed = *count;
                    *at = now;
                    *count = 0;
                    suppressed
                }
                None => {
                    seen.insert(key.clone(), (now, 0));
                    0
                }
            }
        };
        log(surface, &key, remote, suppressed);
        true
    }
}

fn log(surface: &str, key: &Key, remote: Option<SocketAddr>, suppressed: u64) {
    let remote = remote.map_or_else(|| "unknown".to_owned(), |r| r.to_string());
    tracing::warn!(
        target: TARGET,
        surface,
        reason = %key.1,
        remote = %remote,
        path = %key.3,
        repeats_since_last = suppressed,
        "{surface} connection refused: {} (from {remote}, path {})",
        key.1,
        key.3
    );
}

/// The client's address, when the listener provides it.
pub fn remote_of(extensions: &axum::http::Extensions) -> Option<SocketAddr> {
    extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0)
}

/// Middleware: a WebSocket upgrade or a Socket.IO request answered with an error status is
/// a refusal (graphql-ws without a subprotocol, a broken handshake, an unknown Socket.IO
/// session or transport).
pub async fn log_refused_upgrades(
    State(api): State<Api>,
    request: Request,
    next: Next,
) -> Response {
    let upgrade = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let path = request.uri().path().to_owned();
    let socket_io = path.starts_with("/socket.io");
    if !upgrade && !socket_io {
        return next.run(request).await;
    }
    let remote = remote_of(request.extensions());
    let response = next.run(request).await;
    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        let surface = if socket_io { "socket.io" } else { "websocket" };
        let reason = format!(
            "HTTP {}{}",
            status.as_u16(),
            status
                .canonical_reason()
                .map(|r| format!(" {r}"))
                .unwrap_or_default()
        );
        api.refusals().note(surface, &reason, remote, &path);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_refusal_is_logged_once_per_window_and_others_each_time() {
        let log = RefusalLog::default();
        let from: SocketAddr = "192.0.2.7:5000".parse().expect("addr");
        let other: SocketAddr = "192.0.2.8:5000".parse().expect("addr");
        assert!(log.note(
            "socket.io",
            "Invalid or expired token",
            Some(from),
            "/socket.io/"
        ));
        assert!(!log.note(
            "socket.io",
            "Invalid or expired token",
            Some(from),
            "/socket.io/"
        ));
        // Another port of the same address is the same client.
        let same_host: SocketAddr = "192.0.2.7:6000".parse().expect("addr");
        assert!(!log.note(
            "socket.io",
            "Invalid or expired token",
            Some(same_host),
            "/socket.io/"
        ));
        assert!(log.note(
            "socket.io",
            "Invalid or expired token",
            Some(other),
            "/socket.io/"
        ));
        assert!(log.note(
            "socket.io",
            "Authentication token required",
            Some(from),
            "/socket.io/"
        ));
        assert!(log.note("websocket", "HTTP 400 Bad Request", Some(from), "/graphql"));
    }

    #[test]
    fn distinct_refusals_beyond_the_bound_are_still_logged() {
        let log = RefusalLog::default();
        for i in 0..(MAX_KEYS + 10) {
            assert!(log.note("websocket", &format!("reason {i}"), None, "/graphql"));
        }
        let kept = log.seen.lock().expect("lock").len();
        assert!(kept <= MAX_KEYS, "{kept} kept");
    }
}

//! What one user (or anyone who can reach the listener) may cost the host: the `[api]` section
//! of the configuration, and the HTTP side of it — request bodies capped (`413` on the
//! `Content-Length` alone, chunked bodies cut at the cap), bodies that must arrive in time
//! (`408`), the peer address of a request.
//!
//! The other limits live beside what they limit: [`crate::login_throttle`] (guessing
//! passwords), [`crate::password_work`] (argon2's memory), [`crate::work_limiter`] (database
//! work per user), [`crate::connections`] (connections not yet authenticated), the graphql-ws
//! transport (connections per user, subscriptions per connection, messages per second), and
//! [`crate::realtime`] (Socket.IO events and payloads).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The `[api]` section: limits of the user-facing side, GraphiQL, and the metrics listener.
/// Every key is also an `INFINIBAY_API__<KEY>` environment variable (`docs/host.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Serve GraphiQL on `GET /graphql` and answer introspection queries. Off by default: the
    /// schema is documented in `docs/api.md`, and an IDE on the dashboard's origin is a page
    /// more that can run code next to its token.
    pub graphiql: bool,
    /// Largest HTTP request body (GraphQL, REST); larger ones are answered `413`.
    pub max_body_bytes: usize,
    /// Largest WebSocket message or frame (graphql-ws, Socket.IO), and Socket.IO's largest
    /// polling payload.
    pub max_message_bytes: usize,
    /// Time a client has to send a request's headers; also how long an idle keep-alive
    /// connection stays open.
    pub header_timeout_secs: f64,
    /// Time a client has to send a request body once its headers arrived (`408` after it).
    pub body_timeout_secs: f64,
    /// Time a new WebSocket has to authenticate: graphql-ws' `connection_init` with a valid
    /// token (closed `4408`/`4401` after it), Socket.IO's `CONNECT`.
    pub handshake_timeout_secs: f64,
    /// Connections not yet authenticated, per client address (IPv6: per /64). More are closed
    /// as soon as they are accepted.
    pub unauthenticated_connections_per_address: usize,
    /// Connections not yet authenticated, in all.
    pub unauthenticated_connections: usize,
    /// Open graphql-ws connections per user (`4429` beyond).
    pub ws_connections_per_user: usize,
    /// Operations (subscriptions, queries) running at once on one graphql-ws connection.
    pub ws_operations_per_connection: usize,
    /// graphql-ws messages a connection may send per second (twice as many at once); a faster
    /// client is simply read more slowly.
    pub ws_messages_per_sec: f64,
    /// Requests (or graphql-ws operations) of one user that may use the database at once;
    /// before login, of one client address.
    pub db_concurrency_per_user: usize,
    /// Requests of one user that may wait for their turn; more are answered `RATE_LIMITED`.
    pub db_queue_per_user: usize,
    /// Failed logins (per account and per client address) before delays start.
    pub login_free_failures: u32,
    /// The first delay after the free failures, doubling with every further failure.
    pub login_delay_initial_secs: f64,
    /// The longest delay.
    pub login_delay_max_secs: f64,
    /// Password hashes (argon2: 19 MiB each) computed at once.
    pub password_hash_concurrency: usize,
    /// Logins that may wait for a hash slot; more are answered `RATE_LIMITED`.
    pub password_hash_queue: usize,
    /// Socket.IO client events per user per minute, per event type (unknown events share one
    /// budget).
    pub event_limit_per_minute: u32,
    /// Where `/metrics` is served (never on the main listener).
    pub metrics_listen: SocketAddr,
    /// When set, `/metrics` also wants `Authorization: Bearer <metrics_token>` (for a
    /// `metrics_listen` that others can reach).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_token: Option<String>,
}

/// The metrics listener's default: private to this machine.
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9464);

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            graphiql: false,
            max_body_bytes: 2 * 1024 * 1024,
            max_message_bytes: 256 * 1024,
            header_timeout_secs: 10.0,
            body_timeout_secs: 30.0,
            handshake_timeout_secs: 10.0,
            unauthenticated_connections_per_address: 64,
            unauthenticated_connections: 1024,
            ws_connections_per_user: 16,
            ws_operations_per_connection: 100,
            ws_messages_per_sec: 50.0,
            db_concurrency_per_user: 2,
            db_queue_per_user: 32,
            login_free_failures: 5,
            login_delay_initial_secs: 1.0,
            login_delay_max_secs: 300.0,
            password_hash_concurrency: 2,
            password_hash_queue: 16,
            event_limit_per_minute: 100,
            metrics_listen: DEFAULT_METRICS_LISTEN,
            metrics_token: None,
        }
    }
}

impl ApiConfig {
    /// Refuse values that would switch a limit off or make the API unusable.
    pub fn validate(&self) -> Result<(), String> {
        let seconds = [
            ("api.header_timeout_secs", self.header_timeout_secs),
            ("api.body_timeout_secs", self.body_timeout_secs),
            ("api.handshake_timeout_secs", self.handshake_timeout_secs),
            ("api.ws_messages_per_sec", self.ws_messages_per_sec),
            (
                "api.login_delay_initial_secs",
                self.login_delay_initial_secs,
            ),
            ("api.login_delay_max_secs", self.login_delay_max_secs),
        ];
        for (name, value) in seconds {
            if !(value.is_finite() && value > 0.0 && value < 1e7) {
                return Err(format!("{name} must be a positive number, got {value}"));
            }
        }
        let counts = [
            ("api.max_body_bytes", self.max_body_bytes),
            ("api.max_message_bytes", self.max_message_bytes),
            (
                "api.unauthenticated_connections_per_address",
                self.unauthenticated_connections_per_address,
            ),
            (
                "api.unauthenticated_connections",
                self.unauthenticated_connections,
            ),
            ("api.ws_connections_per_user", self.ws_connections_per_user),
            (
                "api.ws_operations_per_connection",
                self.ws_operations_per_connection,
            ),
            ("api.db_concurrency_per_user", self.db_concurrency_per_user),
            (
                "api.password_hash_concurrency",
                self.password_hash_concurrency,
            ),
        ];
        for (name, value) in counts {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if self.max_message_bytes < 1024 {
            return Err("api.max_message_bytes must be at least 1024".into());
        }
        if self.event_limit_per_minute == 0 {
            return Err("api.event_limit_per_minute must be at least 1".into());
        }
        if self.metrics_token.as_deref().is_some_and(str::is_empty) {
            return Err("api.metrics_token must not be empty (leave it out instead)".into());
        }
        Ok(())
    }

    /// [`Self::header_timeout_secs`].
    pub fn header_timeout(&self) -> Duration {
        secs(self.header_timeout_secs)
    }

    /// [`Self::body_timeout_secs`].
    pub fn body_timeout(&self) -> Duration {
        secs(self.body_timeout_secs)
    }

    /// [`Self::handshake_timeout_secs`].
    pub fn handshake_timeout(&self) -> Duration {
        secs(self.handshake_timeout_secs)
    }
}

fn secs(value: f64) -> Duration {
    Duration::try_from_secs_f64(value).unwrap_or(Duration::from_secs(10))
}

/// The client address of a request: the TCP peer as the host's listener recorded it
/// (`ConnectInfo`), `None` where there is none (a router served without it, in tests).
pub fn peer_of<B>(request: &Request<B>) -> Option<IpAddr> {
    peer_in(request.extensions())
}

/// [`peer_of`] from a request's extensions (Socket.IO keeps the request's parts).
pub fn peer_in(extensions: &axum::http::Extensions) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| canonical(addr.ip()))
}

/// An IPv4 address as itself (also when it arrives mapped into IPv6), an IPv6 address as its
/// /64: one machine usually has a whole /64, and per-address limits keyed by the full address
/// would let it take 2^64 turns.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

/// Why a request body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Longer than the cap (`413`).
    TooLarge,
    /// Not complete within the body timeout (`408`).
    TooSlow,
    /// The connection failed while reading (`400`).
    Broken,
}

impl IntoResponse for BodyError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Self::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body larger than api.max_body_bytes",
            ),
            Self::TooSlow => (
                StatusCode::REQUEST_TIMEOUT,
                "request body not received within api.body_timeout_secs",
            ),
            Self::Broken => (StatusCode::BAD_REQUEST, "request body could not be read"),
        };
        let code = if self == Self::TooLarge {
            "PAYLOAD_TOO_LARGE"
        } else {
            "INVALID"
        };
        (
            status,
            axum::Json(serde_json::json!({"error": message, "code": code})),
        )
            .into_response()
    }
}

/// Read a whole request body of at most `limit` bytes within `timeout`. A declared
/// `Content-Length` over the cap is refused before a byte of the body is read; a chunked body
/// is cut as soon as it passes the cap (what was not read stays unread: the connection is
/// closed after the answer).
pub async fn read_body(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, BodyError> {
    use http_body::Body as _;
    if body.size_hint().lower() > limit as u64 {
        return Err(BodyError::TooLarge);
    }
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(BodyError::TooSlow),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            // axum wraps http-body-util's `LengthLimitError` in its own error.
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(s) = source {
                if s.is::<http_body_util::LengthLimitError>() {
                    return Err(BodyError::TooLarge);
                }
                source = s.source();
            }
            Err(BodyError::Broken)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_and_mapped_ipv4_by_itself() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().expect("ip");
        assert_eq!(canonical(a), canonical(b));
        let other: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_ne!(canonical(a), canonical(other));
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().expect("ip");
        assert_eq!(canonical(mapped), "10.0.0.7".parse::<IpAddr>().expect("ip"));
    }

    #[test]
    fn defaults_are_valid_and_a_zero_limit_is_not() {
        assert_eq!(ApiConfig::default().validate(), Ok(()));
        let zero = ApiConfig {
            ws_operations_per_connection: 0,
            ..ApiConfig::default()
        };
        assert!(zero.validate().is_err());
        let off = ApiConfig {
            header_timeout_secs: 0.0,
            ..ApiConfig::default()
        };
        assert!(off.validate().is_err());
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_refused_and_one_under_it_is_read() {
        let small = read_body(Body::from("x".repeat(100)), 1000, Duration::from_secs(5)).await;
        assert_eq!(small.map(|b| b.len()), Ok(100));
        let large = read_body(Body::from("x".repeat(2000)), 1000, Duration::from_secs(5)).await;
        assert_eq!(large, Err(BodyError::TooLarge));
        // A body of unknown length (chunked) that passes the cap.
        let chunks = futures_util::stream::iter(
            (0..100).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'y'; 100]))),
        );
        let streamed = read_body(Body::from_stream(chunks), 1000, Duration::from_secs(5)).await;
        assert_eq!(streamed, Err(BodyError::TooLarge));
    }
}

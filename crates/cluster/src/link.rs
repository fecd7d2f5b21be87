//! One NATS connection and what is known of its state. async-nats reconnects by itself; this
//! keeps whether it is connected now and since when, for the publishers (which hold events
//! back while it is away rather than block), for the directory (which does not conclude that
//! nodes died while it hears nothing because it is itself cut off) and for `/healthz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::{Client, ConnectOptions, Event};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::watch;

const TARGET: &str = "infinibay::cluster";

/// Whether the connection is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Connected since this instant.
    Up(Instant),
    /// Not connected since this instant (or never connected yet).
    Down(Instant),
}

impl LinkState {
    /// Connected now.
    pub fn is_up(self) -> bool {
        matches!(self, Self::Up(_))
    }
}

/// The connection's figures, for `/healthz` and `/metrics`.
#[derive(Debug, Clone, Serialize)]
pub struct LinkStats {
    /// Connected now.
    pub connected: bool,
    /// For how long it has been in its current state, in seconds.
    pub for_secs: f64,
    /// Since when (this process's clock made wall time).
    pub since: DateTime<Utc>,
    /// Connections made, the first included.
    pub connects: u64,
    /// Times the connection was lost.
    pub disconnects: u64,
    /// Messages sent and received, and their bytes.
    pub out_messages: u64,
    /// Messages received.
    pub in_messages: u64,
    /// Bytes sent.
    pub out_bytes: u64,
    /// Bytes received.
    pub in_bytes: u64,
    /// Messages the client dropped because a subscription's queue was full.
    pub slow_consumer_events: u64,
    /// The server URL(s) configured, passwords masked.
    pub url: String,
}

/// A NATS connection and its state.
#[derive(Clone)]
pub struct NatsLink {
    client: Client,
    state: watch::Receiver<LinkState>,
    counters: Arc<LinkCounters>,
    url: String,
}

#[derive(Debug, Default)]
struct LinkCounters {
    disconnects: AtomicU64,
    slow_consumers: AtomicU64,
}

impl std::fmt::Debug for NatsLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsLink")
            .field("url", &self.url)
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

/// Why there is no connection object at all (a bad URL; an unreachable server is not an
/// error: the connection is retried in the background).
#[derive(Debug, thiserror::Error)]
#[error("cannot use NATS at {url}: {reason}")]
pub struct LinkError {
    /// The URL.
    pub url: String,
    /// Why.
    pub reason: String,
}

impl NatsLink {
    /// Connect to `url` under `name` (seen in the server's connection list). Returns at once
    /// even when the server is down: async-nats keeps trying, every 100 ms growing to 2 s.
    pub async fn connect(url: &str, name: &str) -> Result<Self, LinkError> {
        let (state_tx, state) = watch::channel(LinkState::Down(Instant::now()));
        let counters = Arc::new(LinkCounters::default());
        let events = counters.clone();
        let options = ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .ping_interval(Duration::from_secs(5))
            .connection_timeout(Duration::from_secs(2))
            // A subscription's queue: a consumer this far behind loses messages (counted as
            // slow-consumer events) rather than let memory grow.
            .subscription_capacity(16_384)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((100 * attempts as u64).clamp(100, 2_000))
            })
            .event_callback(move |event| {
                let (state_tx, counters) = (state_tx.clone(), events.clone());
                async move {
                    match event {
                        Event::Connected => {
                            tracing::info!(target: TARGET, "connected to NATS");
                            state_tx.send_replace(LinkState::Up(Instant::now()));
                        }
                        Event::Disconnected => {
                            counters.disconnects.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(target: TARGET, "lost the connection to NATS; reconnecting");
                            state_tx.send_replace(LinkState::Down(Instant::now()));
                        }
                        Event::Closed => {
                            state_tx.send_replace(LinkState::Down(Instant::now()));
                        }
                        Event::SlowConsumer(sid) => {
                            counters.slow_consumers.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(target: TARGET, sid, "a NATS subscription fell behind: messages dropped");
                        }
                        other => tracing::info!(target: TARGET, "NATS: {other}"),
                    }
                }
            });
        let addrs: Vec<async_nats::ServerAddr> = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| {
                u.parse().map_err(|e| LinkError {
                    url: url.to_owned(),
                    reason: format!("`{u}`: {e}"),
                })
            })
            .collect::<Result<_, _>>()?;
        let client = options
            .connect(addrs.as_slice())
            .await
            .map_err(|e| LinkError {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            client,
            state,
            counters,
            url: mask_credentials(url),
        })
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The state now.
    pub fn state(&self) -> LinkState {
        *self.state.borrow()
    }

    /// Connected now.
    pub fn is_up(&self) -> bool {
        self.state().is_up()
    }

    /// A receiver of state changes.
    pub fn watch(&self) -> watch::Receiver<LinkState> {
        self.state.clone()
    }

    /// Wait until connected (at once when it is).
    pub async fn up(&self) {
        let mut rx = self.state.clone();
        let _ = rx.wait_for(|s| s.is_up()).await;
    }

    /// The figures now.
    pub fn stats(&self) -> LinkStats {
        let (connected, at) = match self.state() {
            LinkState::Up(at) => (true, at),
            LinkState::Down(at) => (false, at),
        };
        let elapsed = at.elapsed();
        let since = Utc::now()
            - chrono::Duration::from_std(elapsed).unwrap_or_else(|_| chrono::Duration::zero());
        let s = self.client.statistics();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LinkStats {
            connected,
            for_secs: elapsed.as_secs_f64(),
            since,
            connects: s.connects.load(Ordering::Relaxed),
            disconnects: get(&self.counters.disconnects),
            out_messages: s.out_messages.load(Ordering::Relaxed),
            in_messages: s.in_messages.load(Ordering::Relaxed),
            out_bytes: s.out_bytes.load(Ordering::Relaxed),
            in_bytes: s.in_bytes.load(Ordering::Relaxed),
            slow_consumer_events: get(&self.counters.slow_consumers),
            url: self.url.clone(),
        }
    }
}

/// `nats://user:secret@host` → `nats://user:***@host`, for every URL of a list.
fn mask_credentials(urls: &str) -> String {
    urls.split(',')
        .map(|url| {
            let url = url.trim();
            match url.split_once("://") {
                Some((scheme, rest)) => match rest.split_once('@') {
                    Some((auth, host)) => {
                        let user = auth.split_once(':').map_or(auth, |(u, _)| u);
                        format!("{scheme}://{user}:***@{host}")
                    }
                    None => url.to_owned(),
                },
                None => url.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_reach_the_health_page() {
        assert_eq!(
            mask_credentials("nats://u:pw@h:4222, nats://h2:4222"),
            "nats://u:***@h:4222,nats://h2:4222"
        );
        assert_eq!(mask_credentials("nats://tok@h"), "nats://tok:***@h");
    }
}

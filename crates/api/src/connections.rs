//! Connections nobody has authenticated yet: a TCP connection counts from the moment it is
//! accepted until a request on it (a GraphQL request, a graphql-ws `connection_init`, a
//! Socket.IO `CONNECT`, a download) carries a valid token. Their number is bounded per client
//! address and in all, so that half-sent requests and silent WebSockets cannot pile up; the
//! host's listener asks [`ConnectionTracker::admit`] for every connection it accepts and closes
//! the ones refused.
//!
//! The timeouts that end such connections (headers, handshakes) are the listener's and the
//! transports'; this only counts.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::limits::canonical;

#[derive(Debug, Default)]
struct Counts {
    /// Unauthenticated connections per client address (canonical, see [`canonical`]).
    per_address: HashMap<IpAddr, usize>,
    total: usize,
}

#[derive(Debug)]
struct Shared {
    counts: Mutex<Counts>,
    per_address_max: usize,
    total_max: usize,
    refused: AtomicU64,
}

/// Counts the connections that are not yet authenticated. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnectionTracker {
    shared: Arc<Shared>,
}

/// One accepted connection, in every request's extensions (`Arc` inside: cheap to clone).
/// It stops counting as unauthenticated when [`Connection::authenticated`] is called, or when
/// the last clone is dropped (the connection closed).
#[derive(Debug, Clone)]
pub struct Connection {
    inner: Arc<ConnectionInner>,
}

#[derive(Debug)]
struct ConnectionInner {
    shared: Arc<Shared>,
    address: IpAddr,
    authenticated: AtomicBool,
}

impl ConnectionTracker {
    /// At most `per_address` unauthenticated connections per client address, `total` in all.
    pub fn new(per_address: usize, total: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                counts: Mutex::new(Counts::default()),
                per_address_max: per_address.max(1),
                total_max: total.max(1),
                refused: AtomicU64::new(0),
            }),
        }
    }

    /// A new connection from `peer`, or `None` when its address (or everyone) already has as
    /// many unauthenticated connections as allowed.
    pub fn admit(&self, peer: SocketAddr) -> Option<Connection> {
        let address = canonical(peer.ip());
        let mut counts = self.lock();
        let mine = counts.per_address.get(&address).copied().unwrap_or(0);
        if mine >= self.shared.per_address_max || counts.total >= self.shared.total_max {
            drop(counts);
            self.shared.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *counts.per_address.entry(address).or_insert(0) += 1;
        counts.total += 1;
        Some(Connection {
            inner: Arc::new(ConnectionInner {
                shared: self.shared.clone(),
                address,
                authenticated: AtomicBool::new(false),
            }),
        })
    }

    /// Unauthenticated connections now.
    pub fn unauthenticated(&self) -> usize {
        self.lock().total
    }

    /// Connections refused since start.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.shared.lock()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn release(&self, address: IpAddr) {
        let mut counts = self.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_address.get_mut(&address) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_address.remove(&address);
            }
        }
    }
}

impl Connection {
    /// A request on this connection proved who it is: it no longer counts.
    pub fn authenticated(&self) {
        if !self.inner.authenticated.swap(true, Ordering::AcqRel) {
            self.inner.shared.release(self.inner.address);
        }
    }

    /// Whether a request on it carried a valid token.
    pub fn is_authenticated(&self) -> bool {
        self.inner.authenticated.load(Ordering::Acquire)
    }
}

impl Drop for ConnectionInner {
    fn drop(&mut self) {
        if !*self.authenticated.get_mut() {
            self.shared.release(self.address);
        }
    }
}

/// Mark the connection a request came on as authenticated (no-op without one).
pub fn mark_authenticated(extensions: &axum::http::Extensions) {
    if let Some(connection) = extensions.get::<Connection>() {
        connection.authenticated();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().expect("ip"), 40000)
    }

    #[test]
    fn unauthenticated_connections_are_bounded_per_address_and_in_all() {
        let tracker = ConnectionTracker::new(2, 3);
        let a1 = tracker.admit(peer("10.0.0.1")).expect("first");
        let a2 = tracker.admit(peer("10.0.0.1")).expect("second");
        assert!(tracker.admit(peer("10.0.0.1")).is_none(), "per address");
        let b1 = tracker.admit(peer("10.0.0.2")).expect("another address");
        assert!(tracker.admit(peer("10.0.0.3")).is_none(), "in all");
        assert_eq!(tracker.refused(), 2);
        // Authenticating one makes room; so does closing one.
        a1.authenticated();
        a1.authenticated();
        assert_eq!(tracker.unauthenticated(), 2);
        let a3 = tracker.admit(peer("10.0.0.1")).expect("room again");
        drop(a2);
        drop(b1);
        assert_eq!(tracker.unauthenticated(), 1);
        drop(a1);
        assert_eq!(
            tracker.unauthenticated(),
            1,
            "an authenticated one was not counted"
        );
        drop(a3);
        assert_eq!(tracker.unauthenticated(), 0);
    }
}

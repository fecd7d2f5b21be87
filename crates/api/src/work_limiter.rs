//! Database work per user. Every request (and every graphql-ws operation) that may read the
//! store first takes one of its user's few turns; a user who sends 20,000 requests at once
//! waits behind their own turns — at most `db_queue_per_user` of them, the rest are answered
//! `RATE_LIMITED` — and never in front of anyone else's query in the store's pool. Before
//! login (no valid token), the client address is the "user".
//!
//! Memory: one entry per principal with work running or waiting, removed with its last
//! permit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// Whose turn it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Principal {
    /// A user (by the id of a token that verified; the user may still turn out deleted).
    User(i64),
    /// A client without a valid token, by its address (canonical).
    Address(IpAddr),
    /// Neither is known (a router served without connection information).
    Unknown,
}

#[derive(Debug)]
struct Slot {
    turns: Arc<Semaphore>,
    waiting: AtomicUsize,
}

#[derive(Debug)]
struct Shared {
    slots: Mutex<HashMap<Principal, Arc<Slot>>>,
    concurrency: usize,
    queue: usize,
    running: AtomicUsize,
    waiting: AtomicUsize,
    refused: AtomicU64,
}

/// The per-user turns. Cheap to clone.
#[derive(Debug, Clone)]
pub struct WorkLimiter {
    shared: Arc<Shared>,
}

/// A turn: the database work of one request or operation may run while it is held.
#[derive(Debug)]
pub struct WorkPermit {
    shared: Arc<Shared>,
    principal: Principal,
    slot: Arc<Slot>,
    permit: Option<OwnedSemaphorePermit>,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkStats {
    /// Requests holding a turn.
    pub running: usize,
    /// Requests waiting for one.
    pub waiting: usize,
    /// Requests refused because their user already had `db_queue_per_user` waiting.
    pub refused: u64,
}

impl WorkLimiter {
    /// `concurrency` turns per principal, `queue` more may wait.
    pub fn new(concurrency: usize, queue: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                slots: Mutex::new(HashMap::new()),
                concurrency: concurrency.max(1),
                queue,
                running: AtomicUsize::new(0),
                waiting: AtomicUsize::new(0),
                refused: AtomicU64::new(0),
            }),
        }
    }

    /// Wait for one of `principal`'s turns; `RATE_LIMITED` at once when as many of its
    /// requests already wait as allowed.
    pub async fn acquire(&self, principal: Principal) -> Result<WorkPermit, ApiError> {
        let slot = {
            let mut slots = self.shared.lock();
            slots
                .entry(principal)
                .or_insert_with(|| {
                    Arc::new(Slot {
                        turns: Arc::new(Semaphore::new(self.shared.concurrency)),
                        waiting: AtomicUsize::new(0),
                    })
                })
                .clone()
        };
        let mut permit = WorkPermit {
            shared: self.shared.clone(),
            principal,
            slot: slot.clone(),
            permit: None,
        };
        if let Ok(p) = slot.turns.clone().try_acquire_owned() {
            permit.permit = Some(p);
            self.shared.running.fetch_add(1, Ordering::Relaxed);
            return Ok(permit);
        }
        if slot.waiting.fetch_add(1, Ordering::AcqRel) >= self.shared.queue {
            slot.waiting.fetch_sub(1, Ordering::AcqRel);
            self.shared.refused.fetch_add(1, Ordering::Relaxed);
            // `permit` (without a turn) is dropped here and forgets the slot if it is idle.
            return Err(ApiError::rate_limited(
                "too many of your requests are already waiting for the database; retry later",
            ));
        }
        self.shared.waiting.fetch_add(1, Ordering::Relaxed);
        // Counted as waiting until the turn comes, also when the caller gives up (dropped).
        let waited = WaitingGuard(&self.shared, &slot);
        let acquired = slot.turns.clone().acquire_owned().await;
        drop(waited);
        match acquired {
            Ok(p) => {
                permit.permit = Some(p);
                self.shared.running.fetch_add(1, Ordering::Relaxed);
                Ok(permit)
            }
            Err(_) => Err(ApiError::internal("database turns closed")),
        }
    }

    /// Counters now.
    pub fn stats(&self) -> WorkStats {
        WorkStats {
            running: self.shared.running.load(Ordering::Relaxed),
            waiting: self.shared.waiting.load(Ordering::Relaxed),
            refused: self.shared.refused.load(Ordering::Relaxed),
        }
    }

    /// Principals with work running or waiting (for tests of the bound).
    pub fn tracked(&self) -> usize {
        self.shared.lock().len()
    }
}

struct WaitingGuard<'a>(&'a Shared, &'a Slot);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.1.waiting.fetch_sub(1, Ordering::AcqRel);
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Principal, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for WorkPermit {
    fn drop(&mut self) {
        if self.permit.take().is_some() {
            self.shared.running.fetch_sub(1, Ordering::Relaxed);
        }
        // Forget an idle principal: only the map and this permit hold its slot, and nobody
        // waits. Checked under the map's lock, so no one can pick the slot up meanwhile.
        let mut slots = self.shared.lock();
        if Arc::strong_count(&self.slot) == 2
            && self.slot.waiting.load(Ordering::Acquire) == 0
            && self.slot.turns.available_permits() == self.shared.concurrency
        {
            slots.remove(&self.principal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_principal_waits_behind_its_own_turns_and_is_refused_beyond_its_queue() {
        let limiter = WorkLimiter::new(2, 1);
        let me = Principal::User(1);
        let first = limiter.acquire(me).await.expect("turn 1");
        let second = limiter.acquire(me).await.expect("turn 2");
        // A third waits; a fourth is refused at once.
        let waiting = {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.acquire(me).await.map(|_| ()) })
        };
        while limiter.stats().waiting == 0 {
            tokio::task::yield_now().await;
        }
        let refused = limiter.acquire(me).await.expect_err("queue full");
        assert_eq!(refused.code, "RATE_LIMITED");
        // Someone else is not affected.
        let other = limiter
            .acquire(Principal::User(2))
            .await
            .expect("another user has turns");
        drop(first);
        waiting.await.expect("join").expect("the waiting one runs");
        drop((second, other));
        assert_eq!(limiter.tracked(), 0, "idle principals are forgotten");
        assert_eq!(
            limiter.stats(),
            WorkStats {
                running: 0,
                waiting: 0,
                refused: 1
            }
        );
    }
}

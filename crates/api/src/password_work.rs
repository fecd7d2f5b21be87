//! argon2 on a leash. One password check costs 19 MiB and tens of milliseconds of a core
//! (argon2id's default parameters); 100 logins at once took 1.9 GB. Here at most
//! `password_hash_concurrency` hashes run at once in the process, on the blocking pool, and
//! at most `password_hash_queue` logins wait for one: more are refused at once
//! ([`Busy`]), so memory does not grow with concurrency. Setting a password waits its turn
//! without that bound (it is done by someone already authenticated, or on the command line).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::Semaphore;

use crate::users::{self, UserError};

/// Too many password checks are running and waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many logins in progress; retry in a moment")]
pub struct Busy;

#[derive(Debug)]
struct Gate {
    slots: Arc<Semaphore>,
    queue: usize,
    waiting: AtomicUsize,
    running: AtomicUsize,
}

static GATE: OnceLock<Gate> = OnceLock::new();

/// The defaults, for processes that never read the API's configuration (the CLI).
const DEFAULT_CONCURRENCY: usize = 2;
const DEFAULT_QUEUE: usize = 16;

fn gate() -> &'static Gate {
    GATE.get_or_init(|| Gate::new(DEFAULT_CONCURRENCY, DEFAULT_QUEUE))
}

impl Gate {
    fn new(concurrency: usize, queue: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            queue,
            waiting: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
        }
    }
}

/// Size the process's gate (the API does it at start). The first call wins: the gate is the
/// process's, like the memory it protects; later calls (a second API in one test process)
/// keep it and say so in the debug log.
pub fn configure(concurrency: usize, queue: usize) {
    if GATE.set(Gate::new(concurrency, queue)).is_err() {
        tracing::debug!(target: "infinibay::auth", "password hashing limits already set for this process");
    }
}

/// Password hashes running and password checks waiting, now.
pub fn in_progress() -> (usize, usize) {
    let gate = gate();
    (
        gate.running.load(Ordering::Relaxed),
        gate.waiting.load(Ordering::Relaxed),
    )
}

/// Counts a hash while it runs on the blocking pool.
struct Running(&'static Gate);

impl Running {
    fn start(gate: &'static Gate) -> Self {
        gate.running.fetch_add(1, Ordering::Relaxed);
        Self(gate)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether `password` matches `hash` (a malformed hash never matches), checked under the gate;
/// [`Busy`] without any work when the queue is full.
pub async fn verify(password: String, hash: String) -> Result<bool, Busy> {
    gate().verify(password, hash).await
}

impl Gate {
    async fn verify(&'static self, password: String, hash: String) -> Result<bool, Busy> {
        let gate = self;
        let permit = match gate.slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if gate.waiting.fetch_add(1, Ordering::AcqRel) >= gate.queue {
                    gate.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(Busy);
                }
                let acquired = gate.slots.clone().acquire_owned().await;
                gate.waiting.fetch_sub(1, Ordering::AcqRel);
                acquired.map_err(|_| Busy)?
            }
        };
        let running = Running::start(gate);
        let ok = tokio::task::spawn_blocking(move || {
            let ok = users::verify_password(&password, &hash);
            drop((permit, running));
            ok
        })
        .await
        .unwrap_or(false);
        Ok(ok)
    }
}

/// A new argon2id hash of `password`, computed under the gate (waiting for a slot as long as
/// it takes).
pub async fn hash(password: String) -> Result<String, UserError> {
    let gate = gate();
    let permit = gate
        .slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| UserError::Hash(e.to_string()))?;
    let running = Running::start(gate);
    tokio::task::spawn_blocking(move || {
        let hashed = users::hash_password(&password);
        drop((permit, running));
        hashed
    })
    .await
    .map_err(|e| UserError::Hash(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn checks_beyond_the_running_and_waiting_ones_are_refused_without_hashing() {
        let gate: &'static Gate = Box::leak(Box::new(Gate::new(1, 1)));
        let hash = users::hash_password("correct horse").expect("hash");
        // Hold the only slot, so that the next check waits and the one after is refused.
        let held = gate.slots.clone().acquire_owned().await.expect("slot");
        let waiting = tokio::spawn(gate.verify("correct horse".into(), hash.clone()));
        while gate.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(gate.verify("x".into(), hash.clone()).await, Err(Busy));
        drop(held);
        assert_eq!(waiting.await.expect("join"), Ok(true));
        assert_eq!(gate.verify("wrong".into(), hash).await, Ok(false));
        assert_eq!(gate.running.load(Ordering::Relaxed), 0);
    }
}

//! Open console sessions of this process, keyed by (user, VM): one at a time per key, ended
//! from outside (takeover, revocation, VM gone, shutdown).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::close::CloseCode;

/// A request to end one session; the first reason given wins.
#[derive(Debug, Default)]
pub(crate) struct Stop {
    token: CancellationToken,
    why: OnceLock<CloseCode>,
}

impl Stop {
    /// Ask the session to end with `why`; false if it was asked before.
    pub(crate) fn request(&self, why: CloseCode) -> bool {
        let first = self.why.set(why).is_ok();
        if first {
            self.token.cancel();
        }
        first
    }

    /// Completes once an end was requested; the reason.
    pub(crate) async fn requested(&self) -> CloseCode {
        self.token.cancelled().await;
        self.why.get().copied().unwrap_or(CloseCode::ServerShutdown)
    }
}

/// An open console session, as [`crate::Console::sessions`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenSession {
    /// Its user.
    pub user_id: i64,
    /// Its VM.
    pub vm_id: String,
    /// The viewer's address, if known.
    pub remote: Option<SocketAddr>,
    /// When it was admitted.
    pub started_at: DateTime<Utc>,
}

struct Entry {
    id: u64,
    stop: Arc<Stop>,
    info: OpenSession,
}

type Key = (i64, String);

/// Every open session of this process. Per process: two `infinibay` processes on one database
/// do not see each other's sessions (see `docs/console.md`).
#[derive(Default)]
pub(crate) struct Registry {
    next_id: AtomicU64,
    // A std mutex: held for map operations only, never across an await.
    open: Mutex<HashMap<Key, Entry>>,
}

/// The session's place in the registry; leaving it (dropping the claim) frees the key unless a
/// takeover already gave it to a newer session.
pub(crate) struct Claim {
    registry: Arc<Registry>,
    key: Key,
    id: u64,
    pub(crate) stop: Arc<Stop>,
    pub(crate) took_over: bool,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut open = self.registry.lock();
        if open.get(&self.key).is_some_and(|e| e.id == self.id) {
            open.remove(&self.key);
        }
    }
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `user` has `vm`'s console open here.
    pub(crate) fn is_open(&self, user_id: i64, vm_id: &str) -> bool {
        self.lock().contains_key(&(user_id, vm_id.to_owned()))
    }

    /// Take the (user, VM) slot. When it is taken: `None`, unless `takeover`, which ends the
    /// older session with [`CloseCode::TakenOver`] and gives the slot to this one.
    pub(crate) fn claim(self: &Arc<Self>, session: OpenSession, takeover: bool) -> Option<Claim> {
        let key = (session.user_id, session.vm_id.clone());
        let mut open = self.lock();
        let took_over = match open.get(&key) {
            Some(_) if !takeover => return None,
            Some(older) => {
                older.stop.request(CloseCode::TakenOver);
                true
            }
            None => false,
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let stop = Arc::new(Stop::default());
        open.insert(
            key.clone(),
            Entry {
                id,
                stop: stop.clone(),
                info: session,
            },
        );
        Some(Claim {
            registry: self.clone(),
            key,
            id,
            stop,
            took_over,
        })
    }

    /// End every session `matches` selects with `why`; returns how many were asked to end.
    pub(crate) fn stop_where(
        &self,
        why: CloseCode,
        matches: impl Fn(&OpenSession) -> bool,
    ) -> usize {
        self.lock()
            .values()
            .filter(|e| matches(&e.info))
            .filter(|e| e.stop.request(why))
            .count()
    }

    /// The open sessions.
    pub(crate) fn list(&self) -> Vec<OpenSession> {
        self.lock().values().map(|e| e.info.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(user_id: i64, vm_id: &str) -> OpenSession {
        OpenSession {
            user_id,
            vm_id: vm_id.into(),
            remote: None,
            started_at: Utc::now(),
        }
    }

    #[test]
    fn a_second_claim_is_refused_unless_it_takes_over_and_then_the_first_is_told_to_end() {
        let registry = Arc::new(Registry::default());
        let first = registry.claim(session(1, "vm"), false).expect("free");
        assert!(registry.claim(session(1, "vm"), false).is_none());
        let other_user = registry
            .claim(session(2, "vm"), false)
            .expect("another key");
        let second = registry.claim(session(1, "vm"), true).expect("takeover");
        assert!(second.took_over);
        assert_eq!(first.stop.why.get(), Some(&CloseCode::TakenOver));
        assert!(other_user.stop.why.get().is_none());
        // The first one leaving must not free the slot the second one holds now.
        drop(first);
        assert!(registry.is_open(1, "vm"));
        drop(second);
        assert!(!registry.is_open(1, "vm"));
        assert_eq!(registry.list().len(), 1);
    }

    #[test]
    fn stopping_selects_by_user_or_vm_and_counts_each_session_once() {
        let registry = Arc::new(Registry::default());
        let a = registry.claim(session(1, "vm-a"), false).expect("free");
        let b = registry.claim(session(1, "vm-b"), false).expect("free");
        let c = registry.claim(session(2, "vm-a"), false).expect("free");
        assert_eq!(
            registry.stop_where(CloseCode::AccessRevoked, |s| s.user_id == 1),
            2
        );
        assert_eq!(
            registry.stop_where(CloseCode::ConsoleClosed, |s| s.vm_id == "vm-a"),
            1
        );
        assert_eq!(a.stop.why.get(), Some(&CloseCode::AccessRevoked));
        assert_eq!(b.stop.why.get(), Some(&CloseCode::AccessRevoked));
        assert_eq!(c.stop.why.get(), Some(&CloseCode::ConsoleClosed));
    }
}

//! Open graphql-ws connections and whom they speak for, so that deleting a user or changing
//! their password closes them at once (Socket.IO sockets are found through their `uid:` room
//! instead). The revocation sweep also walks this list for changes made by another process.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;

/// WebSocket close code sent when a connection's token stops being valid (graphql-ws'
/// `Forbidden`; its client does not retry on it).
pub const REVOKED_CLOSE_CODE: u16 = 4403;
/// Close reason sent with [`REVOKED_CLOSE_CODE`].
pub const REVOKED_CLOSE_REASON: &str = "token revoked";

/// The token a connection authenticated with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bearer {
    /// The user.
    pub user_id: i64,
    /// When the token was issued (ms since the epoch).
    pub issued_ms: i64,
    /// When it expires (s since the epoch).
    pub expires: i64,
}

struct Session {
    bearer: Option<Bearer>,
    revoked: CancellationToken,
}

/// Every open graphql-ws connection of this process.
#[derive(Default)]
pub struct Sessions {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Session>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("open", &self.len())
            .finish()
    }
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Session>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new connection, not yet authenticated: its id and the token cancelled on revocation.
    pub fn open(&self) -> (u64, CancellationToken) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let revoked = CancellationToken::new();
        self.lock().insert(
            id,
            Session {
                bearer: None,
                revoked: revoked.clone(),
            },
        );
        (id, revoked)
    }

    /// The connection authenticated (`connection_init` carried a valid token).
    pub fn authenticated(&self, id: u64, bearer: Bearer) {
        if let Some(session) = self.lock().get_mut(&id) {
            session.bearer = Some(bearer);
        }
    }

    /// The connection ended.
    pub fn close(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Close every connection of `user_id`; returns how many.
    pub fn revoke_user(&self, user_id: i64) -> usize {
        self.revoke_where(|b| b.user_id == user_id)
    }

    /// Close every authenticated connection whose bearer `revoked` says is no longer valid;
    /// returns how many.
    pub fn revoke_where(&self, revoked: impl Fn(&Bearer) -> bool) -> usize {
        let mut count = 0;
        for session in self.lock().values() {
            if session.bearer.as_ref().is_some_and(&revoked) && !session.revoked.is_cancelled() {
                session.revoked.cancel();
                count += 1;
            }
        }
        count
    }

    /// Open connections (authenticated or not).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// No open connection.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Open connections authenticated as `user_id`.
    pub fn of_user(&self, user_id: i64) -> usize {
        self.lock()
            .values()
            .filter(|s| s.bearer.is_some_and(|b| b.user_id == user_id))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoking_a_user_cancels_only_their_authenticated_connections() {
        let sessions = Sessions::default();
        let (a, a_revoked) = sessions.open();
        let (b, b_revoked) = sessions.open();
        let (_anonymous, anonymous_revoked) = sessions.open();
        let bearer = |user_id| Bearer {
            user_id,
            issued_ms: 0,
            expires: i64::MAX,
        };
        sessions.authenticated(a, bearer(1));
        sessions.authenticated(b, bearer(2));
        assert_eq!(sessions.revoke_user(1), 1);
        assert!(a_revoked.is_cancelled());
        assert!(!b_revoked.is_cancelled());
        assert!(!anonymous_revoked.is_cancelled());
        assert_eq!(sessions.revoke_user(1), 0, "already revoked");
        sessions.close(a);
        assert_eq!(sessions.len(), 2);
        assert_eq!(sessions.of_user(2), 1);
    }
}

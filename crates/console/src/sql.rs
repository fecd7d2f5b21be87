//! The ticket table as the store should hold it, for SQLite and PostgreSQL.
//!
//! The store owns its migrations and implements [`crate::TicketStore`] with these statements;
//! they live here so that this crate's tests run them against real SQLite and PostgreSQL
//! (`tests/ticket_stores.rs`, including concurrent redemption) and `docs/console.md` quotes them.
//! In the store's migration the two id columns should also reference `users (id)` and
//! `vms (id)` with `ON DELETE CASCADE` (a deleted user's tickets go with them); they are left
//! out here because this crate has no such tables.
//!
//! Redeeming is [`sqlite::REDEEM`] / [`postgres::REDEEM`] — one `UPDATE … RETURNING`, so a
//! ticket is consumed at most once however many processes try at the same time — and, only
//! when it returned no row, [`sqlite::EXPLAIN`] / [`postgres::EXPLAIN`] to say why.

/// SQLite: times are milliseconds since the epoch (INTEGER), as in the rest of the store.
pub mod sqlite {
    /// The table and its expiry index.
    pub const CREATE: &str = "\
CREATE TABLE IF NOT EXISTS console_tickets (
    hash       BLOB PRIMARY KEY NOT NULL,  -- SHA-256 of the ticket; the ticket is never stored
    user_id    INTEGER NOT NULL,
    vm_id      TEXT NOT NULL,
    expires_at INTEGER NOT NULL,           -- ms since the epoch
    used_at    INTEGER                     -- ms since the epoch; NULL until redeemed
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS console_tickets_expires ON console_tickets (expires_at);";

    /// `?1` hash, `?2` user id, `?3` VM id, `?4` expiry (ms).
    pub const MINT: &str =
        "INSERT INTO console_tickets (hash, user_id, vm_id, expires_at) VALUES (?1, ?2, ?3, ?4)";

    /// `?1` hash, `?2` now (ms). Consumes an unused, unexpired ticket whatever its VM; returns
    /// `user_id, vm_id` when it did.
    pub const REDEEM: &str = "\
UPDATE console_tickets SET used_at = ?2
 WHERE hash = ?1 AND used_at IS NULL AND expires_at > ?2
 RETURNING user_id, vm_id";

    /// `?1` hash. Only after [`REDEEM`] returned nothing: why not.
    pub const EXPLAIN: &str =
        "SELECT user_id, vm_id, expires_at, used_at FROM console_tickets WHERE hash = ?1";

    /// `?1` cut-off (ms): delete tickets that expired before it.
    pub const PURGE: &str = "DELETE FROM console_tickets WHERE expires_at < ?1";
}

/// PostgreSQL: times are `TIMESTAMPTZ`, as in the rest of the store.
pub mod postgres {
    /// The table and its expiry index.
    pub const CREATE: &str = "\
CREATE TABLE IF NOT EXISTS console_tickets (
    hash       BYTEA PRIMARY KEY,          -- SHA-256 of the ticket; the ticket is never stored
    user_id    BIGINT NOT NULL,
    vm_id      TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ                 -- NULL until redeemed
);
CREATE INDEX IF NOT EXISTS console_tickets_expires ON console_tickets (expires_at);";

    /// `$1` hash, `$2` user id, `$3` VM id, `$4` expiry.
    pub const MINT: &str =
        "INSERT INTO console_tickets (hash, user_id, vm_id, expires_at) VALUES ($1, $2, $3, $4)";

    /// `$1` hash, `$2` now. Consumes an unused, unexpired ticket whatever its VM; returns
    /// `user_id, vm_id` when it did. Under READ COMMITTED a concurrent `UPDATE` of the same
    /// row waits for the first and then re-checks `used_at IS NULL`, so only one succeeds.
    pub const REDEEM: &str = "\
UPDATE console_tickets SET used_at = $2
 WHERE hash = $1 AND used_at IS NULL AND expires_at > $2
 RETURNING user_id, vm_id";

    /// `$1` hash. Only after [`REDEEM`] returned nothing: why not.
    pub const EXPLAIN: &str =
        "SELECT user_id, vm_id, expires_at, used_at FROM console_tickets WHERE hash = $1";

    /// `$1` cut-off: delete tickets that expired before it.
    pub const PURGE: &str = "DELETE FROM console_tickets WHERE expires_at < $1";
}

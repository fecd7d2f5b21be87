//! [`TicketStore`] (the web console's single-use tickets, `docs/console.md`) for every
//! [`Backend`]. The table is `console_tickets` (migration 0006); the statements are the console
//! crate's own ([`infinibay_console::sql`]), which its tests run against both databases. Both
//! backends run the `$n` form: SQLite binds `$1` to the first argument as PostgreSQL does, and
//! times are the backend's (`B::Time`).
//!
//! Redeeming is one `UPDATE … RETURNING` on the writer: of any number of concurrent attempts,
//! in this process or another on the same database, exactly one consumes a ticket.

use super::Connections;
use crate::{PgStore, SqliteStore};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use infinibay_console::sql::postgres as statements;
use infinibay_console::{Redemption, TicketHash, TicketRow, TicketStore, TicketStoreError};

/// How long used and expired tickets are kept (the console's default `ticket_retention`), so
/// that a replay is answered "already used" rather than "unknown": maintenance deletes older
/// ones.
pub const TICKET_RETENTION: chrono::Duration = chrono::Duration::minutes(10);

fn unavailable(what: &str) -> impl FnOnce(sqlx::Error) -> TicketStoreError + '_ {
    move |e| TicketStoreError::Unavailable(format!("{what}: {e}"))
}

/// The one implementation, for each backend (a foreign trait cannot be implemented for a type
/// parameter, so the two backends are named here; the body is the same for both).
macro_rules! ticket_store_for {
    ($($backend:ty),+) => {$(
#[async_trait]
impl TicketStore for $backend {
    async fn mint(
        &self,
        hash: &TicketHash,
        user_id: i64,
        vm_id: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), TicketStoreError> {
        sqlx::query(statements::MINT)
            .bind(hash.as_bytes().as_slice())
            .bind(user_id)
            .bind(vm_id)
            .bind(<$backend as Connections>::to_db(expires_at))
            .execute(&self.core().writer)
            .await
            .map_err(unavailable("minting a console ticket"))?;
        Ok(())
    }

    async fn redeem(
        &self,
        hash: &TicketHash,
        vm_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Redemption, TicketStoreError> {
        let consumed: Option<(i64, String)> = sqlx::query_as(statements::REDEEM)
            .bind(hash.as_bytes().as_slice())
            .bind(<$backend as Connections>::to_db(now))
            .fetch_optional(&self.core().writer)
            .await
            .map_err(unavailable("redeeming a console ticket"))?;
        if let Some((user_id, ticket_vm)) = consumed {
            return Ok(Redemption::consumed(user_id, &ticket_vm, vm_id));
        }
        // Only explains the refusal; the statement above decided it. Read on the writer too, so
        // that SQLite's reader pool cannot answer from before the consuming write.
        let row: Option<(i64, String, <$backend as Connections>::Time, Option<<$backend as Connections>::Time>)> =
            sqlx::query_as(statements::EXPLAIN)
                .bind(hash.as_bytes().as_slice())
                .fetch_optional(&self.core().writer)
                .await
                .map_err(unavailable("reading a console ticket"))?;
        let row = match row {
            None => None,
            Some((user_id, vm_id, expires_at, used_at)) => {
                let time = |t| <$backend as Connections>::from_db(t).map_err(|e| TicketStoreError::Unavailable(e.to_string()));
                Some(TicketRow {
                    user_id,
                    vm_id,
                    expires_at: time(expires_at)?,
                    used_at: used_at.map(time).transpose()?,
                })
            }
        };
        Ok(Redemption::not_consumed(row.as_ref()))
    }

    async fn purge_expired(&self, before: DateTime<Utc>) -> Result<u64, TicketStoreError> {
        let done = sqlx::query(statements::PURGE)
            .bind(<$backend as Connections>::to_db(before))
            .execute(&self.core().writer)
            .await
            .map_err(unavailable("purging console tickets"))?;
        Ok(done.rows_affected())
    }
}
)+};
}

ticket_store_for!(SqliteStore, PgStore);

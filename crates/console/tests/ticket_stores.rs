//! One story for every `TicketStore`: the in-memory one, and the ticket table's SQL
//! (`infinibay_console::sql`, quoted in docs/console.md) on real SQLite and PostgreSQL behind
//! the same trait the store will implement — one redemption out of many concurrent attempts,
//! and the right refusal for each case.
//!
//! PostgreSQL comes from `INFINIBAY_TEST_PG_URL` (`scripts/test` starts one; by hand:
//! `source scripts/lib/postgres.sh; pg_throwaway_start`).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use infinibay_console::sql;
use infinibay_console::{
    MemoryTicketStore, Redemption, Ticket, TicketHash, TicketRefusal, TicketRow, TicketStore,
    TicketStoreError,
};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Connection, Row};

fn unavailable(e: sqlx::Error) -> TicketStoreError {
    TicketStoreError::Unavailable(e.to_string())
}

fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn from_millis(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).expect("time in range")
}

struct SqliteTickets(sqlx::SqlitePool);

#[async_trait]
impl TicketStore for SqliteTickets {
    async fn mint(
        &self,
        hash: &TicketHash,
        user_id: i64,
        vm_id: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), TicketStoreError> {
        sqlx::query(sql::sqlite::MINT)
            .bind(&hash.as_bytes()[..])
            .bind(user_id)
            .bind(vm_id)
            .bind(millis(expires_at))
            .execute(&self.0)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn redeem(
        &self,
        hash: &TicketHash,
        vm_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Redemption, TicketStoreError> {
        let consumed = sqlx::query(sql::sqlite::REDEEM)
            .bind(&hash.as_bytes()[..])
            .bind(millis(now))
            .fetch_optional(&self.0)
            .await
            .map_err(unavailable)?;
        if let Some(row) = consumed {
            let ticket_vm: String = row.get("vm_id");
            return Ok(Redemption::consumed(row.get("user_id"), &ticket_vm, vm_id));
        }
        let row = sqlx::query(sql::sqlite::EXPLAIN)
            .bind(&hash.as_bytes()[..])
            .fetch_optional(&self.0)
            .await
            .map_err(unavailable)?
            .map(|row| TicketRow {
                user_id: row.get("user_id"),
                vm_id: row.get("vm_id"),
                expires_at: from_millis(row.get("expires_at")),
                used_at: row.get::<Option<i64>, _>("used_at").map(from_millis),
            });
        Ok(Redemption::not_consumed(row.as_ref()))
    }

    async fn purge_expired(&self, before: DateTime<Utc>) -> Result<u64, TicketStoreError> {
        let done = sqlx::query(sql::sqlite::PURGE)
            .bind(millis(before))
            .execute(&self.0)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected())
    }
}

struct PgTickets(sqlx::PgPool);

#[async_trait]
impl TicketStore for PgTickets {
    async fn mint(
        &self,
        hash: &TicketHash,
        user_id: i64,
        vm_id: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), TicketStoreError> {
        sqlx::query(sql::postgres::MINT)
            .bind(&hash.as_bytes()[..])
            .bind(user_id)
            .bind(vm_id)
            .bind(expires_at)
            .execute(&self.0)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn redeem(
        &self,
        hash: &TicketHash,
        vm_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Redemption, TicketStoreError> {
        let consumed = sqlx::query(sql::postgres::REDEEM)
            .bind(&hash.as_bytes()[..])
            .bind(now)
            .fetch_optional(&self.0)
            .await
            .map_err(unavailable)?;
        if let Some(row) = consumed {
            let ticket_vm: String = row.get("vm_id");
            return Ok(Redemption::consumed(row.get("user_id"), &ticket_vm, vm_id));
        }
        let row = sqlx::query(sql::postgres::EXPLAIN)
            .bind(&hash.as_bytes()[..])
            .fetch_optional(&self.0)
            .await
            .map_err(unavailable)?
            .map(|row| TicketRow {
                user_id: row.get("user_id"),
                vm_id: row.get("vm_id"),
                expires_at: row.get("expires_at"),
                used_at: row.get("used_at"),
            });
        Ok(Redemption::not_consumed(row.as_ref()))
    }

    async fn purge_expired(&self, before: DateTime<Utc>) -> Result<u64, TicketStoreError> {
        let done = sqlx::query(sql::postgres::PURGE)
            .bind(before)
            .execute(&self.0)
            .await
            .map_err(unavailable)?;
        Ok(done.rows_affected())
    }
}

async fn sqlite_store(dir: &tempfile::TempDir) -> Arc<dyn TicketStore> {
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("tickets.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(std::time::Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .expect("open SQLite");
    sqlx::raw_sql(sql::sqlite::CREATE)
        .execute(&pool)
        .await
        .expect("create the ticket table");
    Arc::new(SqliteTickets(pool))
}

async fn postgres_store() -> Arc<dyn TicketStore> {
    let admin = std::env::var("INFINIBAY_TEST_PG_URL").expect(
        "INFINIBAY_TEST_PG_URL must name a PostgreSQL server \
         (source scripts/lib/postgres.sh; pg_throwaway_start)",
    );
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("connect to {admin}: {e}"));
    let name = format!("console_tickets_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("CREATE DATABASE");
    let _ = conn.close().await;
    let (base, _) = admin.rsplit_once('/').expect("URL names a database");
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(&format!("{base}/{name}"))
        .await
        .expect("connect to the test database");
    sqlx::raw_sql(sql::postgres::CREATE)
        .execute(&pool)
        .await
        .expect("create the ticket table");
    Arc::new(PgTickets(pool))
}

fn new_hash() -> TicketHash {
    Ticket::generate().expect("OS randomness").hash()
}

/// The story every backend must tell.
async fn tickets_are_single_use_and_refusals_say_why(store: Arc<dyn TicketStore>) {
    let now = Utc::now();
    let in_30s = now + chrono::Duration::seconds(30);

    // Sixteen concurrent attempts on separate connections: exactly one opens the console.
    let contested = new_hash();
    store
        .mint(&contested, 7, "vm-a", in_30s)
        .await
        .expect("mint");
    let attempts: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.redeem(&contested, "vm-a", Utc::now()).await })
        })
        .collect();
    let mut granted = 0;
    for attempt in attempts {
        match attempt.await.expect("task").expect("redeem") {
            Redemption::Granted { user_id } => {
                assert_eq!(user_id, 7);
                granted += 1;
            }
            Redemption::Refused { refusal, user_id } => {
                assert_eq!(refusal, TicketRefusal::AlreadyUsed);
                assert_eq!(user_id, Some(7));
            }
        }
    }
    assert_eq!(granted, 1, "one redemption out of 16 concurrent attempts");

    let expired = new_hash();
    store.mint(&expired, 7, "vm-a", now).await.expect("mint");
    assert_eq!(
        store.redeem(&expired, "vm-a", now).await.expect("redeem"),
        Redemption::Refused {
            refusal: TicketRefusal::UnknownOrExpired,
            user_id: Some(7)
        },
        "valid while now < expires_at, not at it"
    );
    assert_eq!(
        store
            .redeem(&new_hash(), "vm-a", now)
            .await
            .expect("redeem"),
        Redemption::Refused {
            refusal: TicketRefusal::UnknownOrExpired,
            user_id: None
        }
    );

    let for_b = new_hash();
    store.mint(&for_b, 8, "vm-b", in_30s).await.expect("mint");
    assert_eq!(
        store.redeem(&for_b, "vm-a", now).await.expect("redeem"),
        Redemption::Refused {
            refusal: TicketRefusal::OtherVm,
            user_id: Some(8)
        }
    );
    assert_eq!(
        store.redeem(&for_b, "vm-b", now).await.expect("redeem"),
        Redemption::Refused {
            refusal: TicketRefusal::AlreadyUsed,
            user_id: Some(8)
        },
        "shown on the wrong VM, the ticket is burnt"
    );

    // Purging keeps what expired after the cut-off.
    assert_eq!(
        store
            .purge_expired(now + chrono::Duration::seconds(1))
            .await
            .expect("purge"),
        1,
        "only the ticket that expired at `now`"
    );
    assert_eq!(
        store.redeem(&contested, "vm-a", now).await.expect("redeem"),
        Redemption::Refused {
            refusal: TicketRefusal::AlreadyUsed,
            user_id: Some(7)
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_tickets_are_single_use_and_refusals_say_why() {
    tickets_are_single_use_and_refusals_say_why(Arc::new(MemoryTicketStore::new(64))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_tickets_are_single_use_and_refusals_say_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    tickets_are_single_use_and_refusals_say_why(sqlite_store(&dir).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tickets_are_single_use_and_refusals_say_why() {
    tickets_are_single_use_and_refusals_say_why(postgres_store().await).await;
}

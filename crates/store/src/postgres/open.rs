//! Connecting to PostgreSQL: one direct attempt that says at once what is wrong, then the
//! pool and the migrations.

use std::str::FromStr;
use std::time::Duration as StdDuration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};

use super::PgStore;
use crate::engine::Core;
use crate::{Result, Retention, StoreError};

impl PgStore {
    /// Connects to the database a `postgres://` URL names and migrates it.
    pub async fn open(url: &str, retention: Retention) -> Result<Self> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("invalid PostgreSQL URL: {e}")))?;
        // Never echo the URL: it may carry a password.
        let target = format!(
            "{}@{}:{}/{}",
            options.get_username(),
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("(default)")
        );
        let unavailable = |e: sqlx::Error| {
            StoreError::Unavailable(format!("cannot connect to PostgreSQL {target}: {e}"))
        };
        // One direct attempt first: the pool would retry a refused connection until its
        // acquire timeout, and start-up should say at once that the server is not there.
        tokio::time::timeout(
            StdDuration::from_secs(10),
            PgConnection::connect_with(&options),
        )
        .await
        .map_err(|_| {
            StoreError::Unavailable(format!(
                "cannot connect to PostgreSQL {target}: no answer within 10 s"
            ))
        })?
        .map_err(unavailable)?
        .close()
        .await
        .map_err(unavailable)?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .min_connections(1)
            // A dead server must fail a write within seconds: the store writer then keeps the
            // samples in its backlog (bounded), while a write waiting longer lets the per-VM
            // queue coalesce (lose) what arrives meanwhile (docs/scale-out.md, faults).
            .acquire_timeout(StdDuration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot migrate PostgreSQL {target}: {e}"))
            })?;
        Ok(Self {
            core: Core::new(pool.clone(), pool, retention),
        })
    }
}

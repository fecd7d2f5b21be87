//! Choosing a backend from a database URL.

use std::sync::Arc;

use crate::{PgStore, Result, Retention, SqliteStore, Store, StoreError};

/// Opens the store a URL names and brings its schema up to date (migrations).
///
/// * `sqlite://PATH?mode=rwc`, `sqlite:PATH`, `sqlite:///abs/path`, `sqlite::memory:` — the
///   embedded SQLite backend (the file is created when missing unless `mode=` says otherwise).
/// * `postgres://…`, `postgresql://…` — the PostgreSQL backend.
///
/// The metrics query's resolution rule uses the default [`Retention`] until the first
/// [`Store::maintain`]; use [`open_with_retention`] when another retention is configured.
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    open_with_retention(url, Retention::default()).await
}

/// [`open`], with the retention the metrics query plans with from the start.
pub async fn open_with_retention(url: &str, retention: Retention) -> Result<Arc<dyn Store>> {
    let scheme = url
        .split(':')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match scheme.as_str() {
        "sqlite" => Ok(Arc::new(SqliteStore::open(url, retention).await?)),
        "postgres" | "postgresql" => Ok(Arc::new(PgStore::open(url, retention).await?)),
        _ => Err(StoreError::Unavailable(format!(
            "unsupported database URL scheme `{scheme}` (expected sqlite:, postgres: or postgresql:)"
        ))),
    }
}

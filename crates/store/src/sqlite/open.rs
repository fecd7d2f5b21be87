//! Opening a SQLite database: the writer and reader pools, their settings, migrations, and
//! errors that say what to fix.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration as StdDuration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::SqliteStore;
use crate::engine::Core;
use crate::{Result, Retention, StoreError};

impl SqliteStore {
    /// Opens (creating when missing) the database a `sqlite:` URL names and migrates it.
    pub async fn open(url: &str, retention: Retention) -> Result<Self> {
        let base = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("invalid SQLite URL `{url}`: {e}")))?;
        let explicit_mode = url.contains("mode=");
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let base = if explicit_mode {
            base
        } else {
            base.create_if_missing(true)
        };
        let base = base
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(StdDuration::from_secs(10))
            .foreign_keys(true);
        let path = base.get_filename().to_path_buf();
        if !in_memory && !explicit_mode {
            probe_writable(&path)?;
        }
        let unavailable = |e: sqlx::Error| {
            StoreError::Unavailable(format!(
                "cannot open SQLite database {}: {e}",
                path.display()
            ))
        };
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(StdDuration::from_secs(60))
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(
                base.clone()
                    .pragma("cache_size", "-65536")
                    .pragma("wal_autocheckpoint", "8192")
                    // A read that overlaps a burst of writes keeps checkpoints from restarting
                    // the WAL, and the file keeps the size it grew to (seen: 1 GB at 25,000
                    // samples/s from 10,000 VMs). Give the disk back once the WAL restarts.
                    .pragma("journal_size_limit", "67108864"),
            )
            .await
            .map_err(unavailable)?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&writer)
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot migrate SQLite database {}: {e}",
                    path.display()
                ))
            })?;
        // An in-memory database exists only inside its one connection: readers share it.
        let reader = if in_memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(4)
                .acquire_timeout(StdDuration::from_secs(30))
                .connect_with(base.create_if_missing(false))
                .await
                .map_err(unavailable)?
        };
        Ok(Self {
            core: Core::new(writer, reader, retention),
        })
    }
}

/// Gives "directory does not exist" / "permission denied" instead of SQLite's bare "unable to
/// open database file".
fn probe_writable(path: &Path) -> Result<()> {
    let parent: PathBuf = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(StoreError::Unavailable(format!(
            "cannot create SQLite database {}: directory {} does not exist",
            path.display(),
            parent.display()
        )));
    }
    // Only a missing file is created here. An existing one must never be opened outside
    // SQLite: closing any descriptor of it drops every POSIX lock this process holds on it,
    // including the SHARED lock of connections still open (another store on the same file, or
    // one still closing); another process's last close then deletes the WAL and -shm under us
    // (lost writes, SQLITE_IOERR_SHORT_READ). SQLite itself reports an unwritable existing file.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
    .map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot open SQLite database {} for writing: {e} (is {} writable by this user?)",
            path.display(),
            parent.display()
        ))
    })
}

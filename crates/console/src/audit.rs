//! One record per console attempt, for the host's command log.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::close::CloseCode;

/// A console attempt: refused (`opened == false`, `end` is the refusal) or a session that ran
/// from `started_at` for `duration` and ended with `end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// The user, when known (a refused unknown ticket has none).
    pub user_id: Option<i64>,
    /// The VM of the URL.
    pub vm_id: String,
    /// The viewer's address, when the listener provides it (`ConnectInfo<SocketAddr>`).
    pub remote: Option<SocketAddr>,
    /// When the upgrade request arrived.
    pub started_at: DateTime<Utc>,
    /// How long the session lasted (zero for a refusal).
    pub duration: Duration,
    /// Whether bytes were relayed at all.
    pub opened: bool,
    /// Whether this session took over an older one of the same user and VM.
    pub took_over: bool,
    /// The refusal, or why the session ended.
    pub end: CloseCode,
    /// Bytes from the VNC server to the viewer.
    pub bytes_to_viewer: u64,
    /// Bytes from the viewer to the VNC server.
    pub bytes_from_viewer: u64,
}

/// Where audit records go. The host writes them to the command log (kind `console`). Called
/// once per attempt, after the session ended, from the session's own task: a slow sink delays
/// nothing but that task's exit.
#[async_trait]
pub trait AuditSink: Send + Sync {
    /// Keep one record.
    async fn record(&self, record: AuditRecord);
}

/// An audit sink that writes each record as one `info` line (target `infinibay::console`):
/// for a relay without a store (the bench binary).
#[derive(Debug, Default, Clone, Copy)]
pub struct LogAudit;

#[async_trait]
impl AuditSink for LogAudit {
    async fn record(&self, r: AuditRecord) {
        tracing::info!(
            target: crate::LOG_TARGET,
            user = ?r.user_id,
            vm = %r.vm_id,
            remote = ?r.remote,
            started_at = %r.started_at.to_rfc3339(),
            duration_ms = r.duration.as_millis() as u64,
            opened = r.opened,
            took_over = r.took_over,
            code = r.end.code(),
            bytes_to_viewer = r.bytes_to_viewer,
            bytes_from_viewer = r.bytes_from_viewer,
            "console session: {}",
            r.end.reason()
        );
    }
}

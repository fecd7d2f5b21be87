//! A web console session as the command log records it (issue 17): the API's console service
//! reports every attempt, refused or not, and the core writes it through the command log's one
//! writer, in the log's one shape (`kind` = `console`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One console attempt: refused (`opened == false`, `end_code` is the refusal) or a session
/// that ran from `started_at` for `duration_ms` and ended with `end_code`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleSession {
    /// The VM of the console URL.
    pub vm_id: String,
    /// The user whose ticket it was (`None` for a ticket nobody minted).
    pub user_id: Option<i64>,
    /// The viewer's address, when the listener knew it.
    pub remote: Option<String>,
    /// When the upgrade request arrived.
    pub started_at: DateTime<Utc>,
    /// How long the session lasted (0 for a refusal).
    pub duration_ms: u64,
    /// Whether bytes were relayed at all.
    pub opened: bool,
    /// Whether it took over an older session of the same user and VM.
    pub took_over: bool,
    /// The close code it ended (or was refused) with (docs/console.md).
    pub end_code: u16,
    /// The reason sent with that code.
    pub end_reason: String,
    /// Bytes from the VNC server to the viewer.
    pub bytes_to_viewer: u64,
    /// Bytes from the viewer to the VNC server.
    pub bytes_from_viewer: u64,
}

/// The command log's `kind` of a console session.
pub const CONSOLE_KIND: &str = "console";

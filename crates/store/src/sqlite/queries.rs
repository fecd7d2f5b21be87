//! SQLite's SQL dialect: times are integer ms, JSON is text, rows have a `rowid`.

use super::SqliteStore;
use crate::engine::Dialect;

impl Dialect for SqliteStore {
    const VM_SELECT: &'static str = "SELECT v.id, v.name, v.owner_id, v.department, v.status, \
         MAX(COALESCE(v.last_seen, l.at), COALESCE(l.at, v.last_seen)), v.agent, v.created_at \
         FROM vms v LEFT JOIN vm_latest_sample l ON l.vm_id = v.id";
    const JSON_PARAM: &'static str = "";
    const JSON_TEXT: &'static str = "";
    const COMMAND_LOG_SEQ: &'static str = "rowid";
    const LOCK_READ_ROW: &'static str = "";

    fn bucket_start(column: &str, width_ms: &str) -> String {
        format!("({column} / {width_ms}) * {width_ms}")
    }

    fn delete_some(table: &str, condition: &str) -> String {
        format!(
            "DELETE FROM {table} WHERE rowid IN \
             (SELECT rowid FROM {table} WHERE {condition} LIMIT $2)"
        )
    }
}

//! PostgreSQL's SQL dialect: `TIMESTAMPTZ`, `JSONB` read as text, `date_bin` buckets, rows
//! found again by `ctid`.

use super::PgStore;
use crate::engine::Dialect;

impl Dialect for PgStore {
    const VM_SELECT: &'static str = "SELECT v.id, v.name, v.owner_id, v.department, v.status, \
         GREATEST(v.last_seen, l.at), v.agent::text, v.created_at \
         FROM vms v LEFT JOIN vm_latest_sample l ON l.vm_id = v.id";
    const JSON_PARAM: &'static str = "::jsonb";
    const JSON_TEXT: &'static str = "::text";
    const COMMAND_LOG_SEQ: &'static str = "seq";
    const LOCK_READ_ROW: &'static str = " FOR UPDATE";

    fn bucket_start(column: &str, width_ms: &str) -> String {
        format!("date_bin({width_ms} * INTERVAL '1 millisecond', {column}, TIMESTAMPTZ 'epoch')")
    }

    fn delete_some(table: &str, condition: &str) -> String {
        format!(
            "DELETE FROM {table} WHERE ctid = ANY(ARRAY(\
             SELECT ctid FROM {table} WHERE {condition} LIMIT $2))"
        )
    }
}

//! [`AlertStore`] for every [`Backend`]: rules and records are few and human-paced, so plain
//! statements both backends run alike; only times and JSON columns are the backend's.

use async_trait::async_trait;
use sqlx::{ColumnIndex, Database, Encode, Executor, IntoArguments, Type};

use super::{Backend, Column, RowsAffected, TxKind};
use crate::Result;
use crate::alerts::{AlertChange, AlertQuery, AlertRecord, AlertRule, AlertStore, parse_kind};
use crate::common::{ctx, json_error};

/// id, vm, kind, threshold, mount, duration, webhooks (JSON text), created by, created at.
type RuleRow<T> = (
    String,
    Option<String>,
    String,
    Option<f64>,
    Option<String>,
    i64,
    String,
    Option<i64>,
    T,
);

/// id, rule, vm, kind, subject, message, value, threshold, raised, resolved.
type AlertRow<T> = (
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    Option<f64>,
    Option<f64>,
    T,
    Option<T>,
);

fn rule<B: Backend>(row: RuleRow<B::Time>) -> Result<AlertRule> {
    let (id, vm_id, kind, threshold, mount_point, duration_secs, urls, created_by, created_at) =
        row;
    Ok(AlertRule {
        id,
        vm_id,
        kind: parse_kind(&kind)?,
        threshold,
        mount_point,
        duration_secs,
        webhook_urls: serde_json::from_str(&urls)
            .map_err(|e| json_error("stored webhook URLs", e))?,
        created_by,
        created_at: B::from_db(created_at)?,
    })
}

fn alert<B: Backend>(row: AlertRow<B::Time>) -> Result<AlertRecord> {
    let (id, rule_id, vm_id, kind, subject, message, value, threshold, raised, resolved) = row;
    Ok(AlertRecord {
        id,
        rule_id,
        vm_id,
        kind: parse_kind(&kind)?,
        subject,
        message,
        value,
        threshold,
        raised_at: B::from_db(raised)?,
        resolved_at: resolved.map(B::from_db).transpose()?,
    })
}

const ALERT_COLUMNS: &str =
    "id, rule_id, vm_id, kind, subject, message, value, threshold, raised_at, resolved_at";

#[async_trait]
impl<B: Backend> AlertStore for B
where
    for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c, Database = B::Db>,
    for<'q> <B::Db as Database>::Arguments<'q>: IntoArguments<'q, B::Db>,
    usize: ColumnIndex<<B::Db as Database>::Row>,
    for<'q> &'q str: Encode<'q, B::Db> + Type<B::Db>,
    for<'q> Option<&'q str>: Encode<'q, B::Db>,
    for<'q> Option<i64>: Encode<'q, B::Db>,
    for<'q> Option<f64>: Encode<'q, B::Db>,
    i64: Column<B::Db>,
    f64: Column<B::Db>,
    String: Column<B::Db>,
{
    async fn insert_alert_rule(&self, rule: &AlertRule) -> Result<()> {
        let urls =
            serde_json::to_string(&rule.webhook_urls).map_err(|e| json_error("webhook URLs", e))?;
        sqlx::query(&format!(
            "INSERT INTO alert_rules (id, vm_id, kind, threshold, mount_point, duration_secs, \
             webhook_urls, created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7{}, $8, $9)",
            B::JSON_PARAM
        ))
        .bind(rule.id.as_str())
        .bind(rule.vm_id.as_deref())
        .bind(rule.kind.as_str())
        .bind(rule.threshold)
        .bind(rule.mount_point.as_deref())
        .bind(rule.duration_secs)
        .bind(urls.as_str())
        .bind(rule.created_by)
        .bind(B::to_db(rule.created_at))
        .execute(&self.core().writer)
        .await
        .map_err(ctx("insert_alert_rule"))?;
        Ok(())
    }

    async fn delete_alert_rule(&self, id: &str) -> Result<bool> {
        let deleted = sqlx::query("DELETE FROM alert_rules WHERE id = $1")
            .bind(id)
            .execute(&self.core().writer)
            .await
            .map_err(ctx("delete_alert_rule"))?
            .rows_affected();
        Ok(deleted > 0)
    }

    async fn alert_rules(&self) -> Result<Vec<AlertRule>> {
        let rows: Vec<RuleRow<B::Time>> = sqlx::query_as(&format!(
            "SELECT id, vm_id, kind, threshold, mount_point, duration_secs, webhook_urls{}, \
             created_by, created_at FROM alert_rules ORDER BY created_at, {}",
            B::JSON_TEXT,
            B::COMMAND_LOG_SEQ
        ))
        .fetch_all(&self.core().reader)
        .await
        .map_err(ctx("alert_rules"))?;
        rows.into_iter().map(rule::<B>).collect()
    }

    async fn record_alerts(&self, changes: &[AlertChange]) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin(TxKind::Plain).await?;
        for change in changes {
            match change {
                AlertChange::Raised(a) => {
                    sqlx::query(&format!(
                        "INSERT INTO alerts ({ALERT_COLUMNS}) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL) \
                         ON CONFLICT (id) DO NOTHING"
                    ))
                    .bind(a.id.as_str())
                    .bind(a.rule_id.as_str())
                    .bind(a.vm_id.as_str())
                    .bind(a.kind.as_str())
                    .bind(a.subject.as_deref())
                    .bind(a.message.as_str())
                    .bind(a.value)
                    .bind(a.threshold)
                    .bind(B::to_db(a.raised_at))
                    .execute(&mut *tx)
                    .await
                    .map_err(ctx("record_alerts: raise"))?;
                }
                AlertChange::Resolved { id, at } => {
                    sqlx::query(
                        "UPDATE alerts SET resolved_at = $2 WHERE id = $1 AND resolved_at IS NULL",
                    )
                    .bind(id.as_str())
                    .bind(B::to_db(*at))
                    .execute(&mut *tx)
                    .await
                    .map_err(ctx("record_alerts: resolve"))?;
                }
            }
        }
        tx.commit().await.map_err(ctx("record_alerts: commit"))
    }

    async fn alerts(&self, query: &AlertQuery) -> Result<Vec<AlertRecord>> {
        // Both filters are optional: `$n IS NULL OR …` keeps one statement for every query.
        let rows: Vec<AlertRow<B::Time>> = sqlx::query_as(&format!(
            "SELECT {ALERT_COLUMNS} FROM alerts \
             WHERE ($1 IS NULL OR vm_id = $1) \
             AND ($2 IS NULL OR vm_id IN (SELECT id FROM vms WHERE owner_id = $2)) \
             AND ($3 = 0 OR resolved_at IS NULL) \
             ORDER BY raised_at DESC, {} DESC LIMIT $4",
            B::COMMAND_LOG_SEQ
        ))
        .bind(query.vm_id.as_deref())
        .bind(query.owner_id)
        .bind(i64::from(query.open_only))
        .bind(i64::from(query.limit.max(1)))
        .fetch_all(&self.core().reader)
        .await
        .map_err(ctx("alerts"))?;
        rows.into_iter().map(alert::<B>).collect()
    }
}

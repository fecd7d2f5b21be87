//! Alert rules and alert records: the storage side of the host's alert engine.
//!
//! A separate trait, as [`crate::UserStore`] is, so that the ingest contract ([`crate::Store`])
//! stays about VMs; every store exposes it through [`crate::Store::alerts`]. Rules are written
//! when an administrator sets them; records are written by the alert engine's one writer (the
//! core's store queue), raised and later resolved by id.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Result, StoreError};

/// What a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// Overall CPU above the threshold (percent) for the rule's duration.
    Cpu,
    /// Memory used / total above the threshold (percent) for the rule's duration.
    Memory,
    /// A file system's used / total above the threshold (percent) for the rule's duration,
    /// per mount point (one mount, or each mount separately).
    Disk,
    /// The agent offline for the rule's duration while the VM is running.
    AgentOffline,
    /// The agent reported an error; resolved after the rule's duration without another.
    GuestError,
}

impl AlertKind {
    /// Every kind.
    pub const ALL: [AlertKind; 5] = [
        AlertKind::Cpu,
        AlertKind::Memory,
        AlertKind::Disk,
        AlertKind::AgentOffline,
        AlertKind::GuestError,
    ];

    /// As stored: `cpu`, `memory`, `disk`, `agent_offline`, `guest_error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Memory => "memory",
            Self::Disk => "disk",
            Self::AgentOffline => "agent_offline",
            Self::GuestError => "guest_error",
        }
    }

    /// From the stored name.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// Whether the rule compares a sample's value (percent) with a threshold.
    pub fn has_threshold(self) -> bool {
        matches!(self, Self::Cpu | Self::Memory | Self::Disk)
    }
}

/// A rule an administrator set, for one VM or for every VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRule {
    /// Id (a uuid made by the host).
    pub id: String,
    /// The VM it watches; `None`: every VM.
    pub vm_id: Option<String>,
    /// What it watches.
    pub kind: AlertKind,
    /// Percent (0–100], for `cpu`, `memory` and `disk`; `None` for the others.
    pub threshold: Option<f64>,
    /// `disk` only: the mount point watched; `None`: each mount separately.
    pub mount_point: Option<String>,
    /// Seconds the condition must hold before the alert is raised (`cpu`, `memory`, `disk`,
    /// `agent_offline`), or without a new error before it is resolved (`guest_error`).
    pub duration_secs: i64,
    /// Where raised and resolved notifications are POSTed (http or https).
    pub webhook_urls: Vec<String>,
    /// The administrator who set it.
    pub created_by: Option<i64>,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// An alert the engine raised, and when it was resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRecord {
    /// Id (a uuid made by the host).
    pub id: String,
    /// The rule that raised it (kept when the rule is deleted later).
    pub rule_id: String,
    /// The VM (from the socket path, never from a message).
    pub vm_id: String,
    /// The rule's kind.
    pub kind: AlertKind,
    /// What within the VM: the mount point of a `disk` alert.
    pub subject: Option<String>,
    /// For people: what crossed what, or the agent's error text.
    pub message: String,
    /// The value that raised it (percent), when the rule compares one.
    pub value: Option<f64>,
    /// The rule's threshold at the time.
    pub threshold: Option<f64>,
    /// Host time it was raised.
    pub raised_at: DateTime<Utc>,
    /// Host time it was resolved; `None` while open.
    pub resolved_at: Option<DateTime<Utc>>,
}

/// One write of the alert engine, in the order it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AlertChange {
    /// A new alert.
    Raised(AlertRecord),
    /// An open alert ended.
    Resolved {
        /// The alert.
        id: String,
        /// Host time.
        at: DateTime<Utc>,
    },
}

/// Which alerts [`AlertStore::alerts`] returns, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertQuery {
    /// Only this VM's.
    pub vm_id: Option<String>,
    /// Only alerts of VMs this user owns.
    pub owner_id: Option<i64>,
    /// Only alerts not resolved yet.
    pub open_only: bool,
    /// At most this many.
    pub limit: u32,
}

/// Alert rules and records; both backends implement it.
#[async_trait]
pub trait AlertStore: Send + Sync {
    /// Store a new rule (`Conflict` when its id exists).
    async fn insert_alert_rule(&self, rule: &AlertRule) -> Result<()>;
    /// Delete a rule; `true` when it existed. Its alerts stay (history).
    async fn delete_alert_rule(&self, id: &str) -> Result<bool>;
    /// Every rule, oldest first.
    async fn alert_rules(&self) -> Result<Vec<AlertRule>>;
    /// Apply raises and resolutions in order, in one transaction. A resolution of an alert
    /// that is not open (or not stored) changes nothing.
    async fn record_alerts(&self, changes: &[AlertChange]) -> Result<()>;
    /// Alerts, newest first.
    async fn alerts(&self, query: &AlertQuery) -> Result<Vec<AlertRecord>>;
}

/// `cpu` → [`AlertKind::Cpu`], or an error naming the stored text.
pub(crate) fn parse_kind(text: &str) -> Result<AlertKind> {
    AlertKind::parse(text)
        .ok_or_else(|| StoreError::Other(format!("unknown stored alert kind `{text}`")))
}

//! Alert rules as an administrator asks for them ([`NewAlertRule`]) and their checks, and what
//! the core's alert engine publishes when an alert is raised or resolved ([`AlertEvent`]).
//!
//! The checks are here, beside the types, so that every transport (in-process, NATS) refuses
//! the same input with the same words; the core runs them before anything is stored.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use infinibay_store::{AlertKind, AlertRecord, AlertRule};

/// Rules in all (every scope together).
pub const MAX_RULES: usize = 256;
/// Rules per scope: per VM, and for every VM. A sample is checked against the rules of its VM
/// and the rules for every VM, so this bounds the work per sample.
pub const MAX_RULES_PER_SCOPE: usize = 32;
/// Webhook URLs per rule.
pub const MAX_WEBHOOKS_PER_RULE: usize = 4;
/// Longest webhook URL.
pub const MAX_URL_BYTES: usize = 2048;
/// Longest duration of a rule, seconds (a day).
pub const MAX_DURATION_SECS: i64 = 86_400;
/// Longest mount point of a `disk` rule.
pub const MAX_MOUNT_POINT_BYTES: usize = 256;

/// A rule as an administrator asks for it, before any check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewAlertRule {
    /// The VM it watches; `None`: every VM.
    pub vm_id: Option<String>,
    /// What it watches.
    pub kind: AlertKind,
    /// Percent, strictly between 0 and 100 (`cpu`, `memory`, `disk` only).
    pub threshold: Option<f64>,
    /// `disk` only: one mount point; `None` watches each mount separately.
    pub mount_point: Option<String>,
    /// Seconds (0–86,400 for `cpu`, `memory`, `disk`; 1–86,400 for `agent_offline` and
    /// `guest_error`).
    pub duration_secs: i64,
    /// http(s) URLs notified when an alert of this rule is raised or resolved (at most 4).
    pub webhook_urls: Vec<String>,
}

impl NewAlertRule {
    /// Check everything that does not need the store; the message says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let kind = self.kind.as_str();
        match (self.kind.has_threshold(), self.threshold) {
            (true, None) => return Err(format!("a `{kind}` rule needs a threshold (percent)")),
            (true, Some(t)) if !(t.is_finite() && t > 0.0 && t < 100.0) => {
                return Err(format!(
                    "threshold {t} is out of range (a percent above 0 and below 100)"
                ));
            }
            (false, Some(_)) => return Err(format!("a `{kind}` rule takes no threshold")),
            _ => {}
        }
        let least = if self.kind.has_threshold() { 0 } else { 1 };
        if !(least..=MAX_DURATION_SECS).contains(&self.duration_secs) {
            return Err(format!(
                "durationSeconds {} is out of range ({least}–{MAX_DURATION_SECS} for `{kind}`)",
                self.duration_secs
            ));
        }
        match (&self.mount_point, self.kind) {
            (Some(_), k) if k != AlertKind::Disk => {
                return Err(format!("a `{kind}` rule takes no mount point"));
            }
            (Some(m), _)
                if m.trim().is_empty()
                    || m.len() > MAX_MOUNT_POINT_BYTES
                    || m.chars().any(char::is_control) =>
            {
                return Err(format!(
                    "mount point must be 1–{MAX_MOUNT_POINT_BYTES} bytes without control characters"
                ));
            }
            _ => {}
        }
        if let Some(vm) = &self.vm_id
            && (vm.is_empty() || vm.len() > 128)
        {
            return Err("vmId must be 1–128 characters".into());
        }
        if self.webhook_urls.len() > MAX_WEBHOOKS_PER_RULE {
            return Err(format!(
                "at most {MAX_WEBHOOKS_PER_RULE} webhook URLs per rule ({} given)",
                self.webhook_urls.len()
            ));
        }
        for url in &self.webhook_urls {
            check_webhook_url(url)?;
        }
        Ok(())
    }

    /// The stored rule, once checked.
    pub fn into_rule(
        self,
        id: String,
        created_by: Option<i64>,
        created_at: chrono::DateTime<chrono::Utc>,
    ) -> AlertRule {
        AlertRule {
            id,
            vm_id: self.vm_id,
            kind: self.kind,
            threshold: self.threshold,
            mount_point: self.mount_point.map(|m| m.trim().to_owned()),
            duration_secs: self.duration_secs,
            webhook_urls: self.webhook_urls,
            created_by,
            created_at,
        }
    }
}

/// A webhook URL: absolute `http` or `https` with a host, at most [`MAX_URL_BYTES`].
pub fn check_webhook_url(text: &str) -> Result<url::Url, String> {
    if text.len() > MAX_URL_BYTES {
        return Err(format!("webhook URL longer than {MAX_URL_BYTES} bytes"));
    }
    let url = url::Url::parse(text).map_err(|e| format!("webhook URL `{text}` is invalid: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "webhook URL `{text}` must be http or https, not `{}`",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("webhook URL `{text}` has no host"));
    }
    Ok(url)
}

/// Raised or resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertTransition {
    /// A new alert.
    Raised,
    /// An open alert ended.
    Resolved,
}

impl AlertTransition {
    /// `alert:raised` or `alert:resolved` (the Socket.IO event and the webhook's `event`).
    pub fn event_name(self) -> &'static str {
        match self {
            Self::Raised => "alert:raised",
            Self::Resolved => "alert:resolved",
        }
    }
}

/// An alert was raised or resolved: the record as it is after the change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertEvent {
    /// What happened.
    pub transition: AlertTransition,
    /// The alert (with `resolved_at` once resolved).
    pub alert: AlertRecord,
}

/// An alert as clients see it (Socket.IO `alert:*` and webhook bodies): camelCase, times in
/// RFC 3339.
pub fn alert_json(a: &AlertRecord) -> Value {
    let time =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    json!({
        "id": a.id,
        "ruleId": a.rule_id,
        "vmId": a.vm_id,
        "kind": a.kind.as_str(),
        "subject": a.subject,
        "message": a.message,
        "value": a.value,
        "threshold": a.threshold,
        "raisedAt": time(a.raised_at),
        "resolvedAt": a.resolved_at.map(time),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(kind: AlertKind) -> NewAlertRule {
        NewAlertRule {
            vm_id: None,
            kind,
            threshold: kind.has_threshold().then_some(90.0),
            mount_point: None,
            duration_secs: 60,
            webhook_urls: vec!["https://hooks.example/alert".into()],
        }
    }

    #[test]
    fn rules_in_range_pass_and_each_bad_field_is_named() {
        for kind in AlertKind::ALL {
            assert_eq!(rule(kind).validate(), Ok(()), "{kind:?}");
        }
        let cases: Vec<(NewAlertRule, &str)> = vec![
            (
                NewAlertRule {
                    threshold: None,
                    ..rule(AlertKind::Cpu)
                },
                "needs a threshold",
            ),
            (
                NewAlertRule {
                    threshold: Some(100.0),
                    ..rule(AlertKind::Cpu)
                },
                "out of range",
            ),
            (
                NewAlertRule {
                    threshold: Some(f64::NAN),
                    ..rule(AlertKind::Memory)
                },
                "out of range",
            ),
            (
                NewAlertRule {
                    threshold: Some(5.0),
                    ..rule(AlertKind::GuestError)
                },
                "no threshold",
            ),
            (
                NewAlertRule {
                    duration_secs: 86_401,
                    ..rule(AlertKind::Disk)
                },
                "durationSeconds",
            ),
            (
                NewAlertRule {
                    duration_secs: 0,
                    ..rule(AlertKind::AgentOffline)
                },
                "durationSeconds",
            ),
            (
                NewAlertRule {
                    mount_point: Some("/".into()),
                    ..rule(AlertKind::Cpu)
                },
                "no mount point",
            ),
            (
                NewAlertRule {
                    mount_point: Some(" ".into()),
                    ..rule(AlertKind::Disk)
                },
                "mount point",
            ),
            (
                NewAlertRule {
                    webhook_urls: vec!["ftp://x/y".into()],
                    ..rule(AlertKind::Cpu)
                },
                "http or https",
            ),
            (
                NewAlertRule {
                    webhook_urls: vec!["not a url".into()],
                    ..rule(AlertKind::Cpu)
                },
                "invalid",
            ),
            (
                NewAlertRule {
                    webhook_urls: vec!["http://h/x".into(); 5],
                    ..rule(AlertKind::Cpu)
                },
                "at most 4",
            ),
            (
                NewAlertRule {
                    webhook_urls: vec![format!("http://h/{}", "a".repeat(3000))],
                    ..rule(AlertKind::Cpu)
                },
                "longer than",
            ),
        ];
        for (rule, reason) in cases {
            let err = rule.validate().expect_err(reason);
            assert!(err.contains(reason), "{err} lacks {reason:?}");
        }
    }
}

//! Alerts: rules (ADMIN), the alerts raised and resolved (everyone, for the VMs they may see).
//! Rules are checked and evaluated by the core (`VmControl::create_alert_rule`); the records
//! are read from the store. Merged into the query and mutation roots (`schema`).

use async_graphql::{Context, Enum, ID, InputObject, Object};
use chrono::{DateTime, Utc};

use infinibay_control::NewAlertRule;
use infinibay_control::alert::MAX_WEBHOOKS_PER_RULE;
use infinibay_store::{AlertKind as StoreKind, AlertQuery, AlertRecord, AlertRule as StoreRule};

use super::context::{admin, api, caller, vm_scope};
use super::types::User;
use crate::authz;
use crate::error::{ApiError, ApiResult};

/// What a rule watches.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum AlertKind {
    /// CPU above the threshold (percent) for `durationSeconds`.
    Cpu,
    /// Memory used / total above the threshold (percent) for `durationSeconds`.
    Memory,
    /// A file system above the threshold (percent) for `durationSeconds`: `mountPoint`, or
    /// each mount separately.
    Disk,
    /// The agent offline for `durationSeconds` while the VM runs.
    AgentOffline,
    /// The agent reported an error; resolved after `durationSeconds` without another.
    GuestError,
}

impl From<StoreKind> for AlertKind {
    fn from(k: StoreKind) -> Self {
        match k {
            StoreKind::Cpu => Self::Cpu,
            StoreKind::Memory => Self::Memory,
            StoreKind::Disk => Self::Disk,
            StoreKind::AgentOffline => Self::AgentOffline,
            StoreKind::GuestError => Self::GuestError,
        }
    }
}

impl From<AlertKind> for StoreKind {
    fn from(k: AlertKind) -> Self {
        match k {
            AlertKind::Cpu => Self::Cpu,
            AlertKind::Memory => Self::Memory,
            AlertKind::Disk => Self::Disk,
            AlertKind::AgentOffline => Self::AgentOffline,
            AlertKind::GuestError => Self::GuestError,
        }
    }
}

/// A rule to create.
#[derive(InputObject, Debug)]
pub struct AlertRuleInput {
    /// The VM it watches; absent: every VM.
    vm_id: Option<ID>,
    kind: AlertKind,
    /// Percent, above 0 and below 100 (`CPU`, `MEMORY`, `DISK` only).
    threshold: Option<f64>,
    /// `DISK` only.
    mount_point: Option<String>,
    /// 0–86,400 (`CPU`, `MEMORY`, `DISK`); 1–86,400 (`AGENT_OFFLINE`, `GUEST_ERROR`).
    duration_seconds: i32,
    /// http(s) URLs POSTed `{event, alert, timestamp}` on raise and resolve (at most 4).
    #[graphql(default)]
    webhook_urls: Vec<String>,
}

/// A rule.
pub struct AlertRule(StoreRule);

#[Object]
impl AlertRule {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// `null`: every VM.
    async fn vm_id(&self) -> Option<ID> {
        self.0.vm_id.clone().map(ID)
    }
    async fn kind(&self) -> AlertKind {
        self.0.kind.into()
    }
    async fn threshold(&self) -> Option<f64> {
        self.0.threshold
    }
    async fn mount_point(&self) -> Option<&str> {
        self.0.mount_point.as_deref()
    }
    async fn duration_seconds(&self) -> i32 {
        i32::try_from(self.0.duration_secs).unwrap_or(i32::MAX)
    }
    async fn webhook_urls(&self) -> &[String] {
        &self.0.webhook_urls
    }
    async fn created_by(&self, ctx: &Context<'_>) -> ApiResult<Option<User>> {
        let Some(id) = self.0.created_by else {
            return Ok(None);
        };
        let user = api(ctx)?.store().users().get_user(id).await?;
        Ok(user.as_ref().map(User::from))
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

/// An alert a rule raised, and when it was resolved.
pub struct Alert(AlertRecord);

#[Object]
impl Alert {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn rule_id(&self) -> ID {
        ID(self.0.rule_id.clone())
    }
    async fn vm_id(&self) -> ID {
        ID(self.0.vm_id.clone())
    }
    async fn kind(&self) -> AlertKind {
        self.0.kind.into()
    }
    /// The mount point of a `DISK` alert.
    async fn subject(&self) -> Option<&str> {
        self.0.subject.as_deref()
    }
    async fn message(&self) -> &str {
        &self.0.message
    }
    /// The value that raised it (percent).
    async fn value(&self) -> Option<f64> {
        self.0.value
    }
    async fn threshold(&self) -> Option<f64> {
        self.0.threshold
    }
    async fn raised_at(&self) -> DateTime<Utc> {
        self.0.raised_at
    }
    /// `null` while open.
    async fn resolved_at(&self) -> Option<DateTime<Utc>> {
        self.0.resolved_at
    }
}

/// Alert queries.
#[derive(Default)]
pub struct AlertsQuery;

#[Object]
impl AlertsQuery {
    /// Alerts, newest first (at most `limit`, 1–1000): of one VM (owner or ADMIN), or of
    /// every VM the caller may see.
    async fn alerts(
        &self,
        ctx: &Context<'_>,
        vm_id: Option<ID>,
        #[graphql(default = false)] open_only: bool,
        #[graphql(default = 100)] limit: i32,
    ) -> ApiResult<Vec<Alert>> {
        let user = caller(ctx)?;
        let api = match &vm_id {
            Some(vm) => vm_scope(ctx, vm).await?,
            None => api(ctx)?,
        };
        let query = AlertQuery {
            vm_id: vm_id.map(|v| v.0),
            // A USER without a VM named sees the alerts of the VMs they own.
            owner_id: (!authz::is_admin(&user)).then_some(user.id),
            open_only,
            limit: limit.clamp(1, 1000) as u32,
        };
        let alerts = api.store().alerts().alerts(&query).await?;
        Ok(alerts.into_iter().map(Alert).collect())
    }

    /// Alert rules (ADMIN), oldest first: of one VM (with the rules for every VM), or all.
    async fn alert_rules(&self, ctx: &Context<'_>, vm_id: Option<ID>) -> ApiResult<Vec<AlertRule>> {
        let (_, api) = admin(ctx)?;
        let rules = api.store().alerts().alert_rules().await?;
        Ok(rules
            .into_iter()
            .filter(|r| match (&vm_id, &r.vm_id) {
                (None, _) | (_, None) => true,
                (Some(want), Some(have)) => want.as_str() == have,
            })
            .map(AlertRule)
            .collect())
    }
}

/// Alert rule changes (ADMIN).
#[derive(Default)]
pub struct AlertsMutation;

#[Object]
impl AlertsMutation {
    /// Create a rule (ADMIN). Out-of-range input, a bad URL or too many rules (256 in all,
    /// 32 per VM and for every VM, 4 URLs per rule) are `INVALID`; nothing is stored then.
    async fn create_alert_rule(
        &self,
        ctx: &Context<'_>,
        input: AlertRuleInput,
    ) -> ApiResult<AlertRule> {
        let (user, api) = admin(ctx)?;
        if input.webhook_urls.len() > MAX_WEBHOOKS_PER_RULE {
            return Err(ApiError::invalid(format!(
                "at most {MAX_WEBHOOKS_PER_RULE} webhook URLs per rule"
            )));
        }
        let rule = api
            .control()
            .create_alert_rule(
                NewAlertRule {
                    vm_id: input.vm_id.map(|v| v.0),
                    kind: input.kind.into(),
                    threshold: input.threshold,
                    mount_point: input.mount_point,
                    duration_secs: i64::from(input.duration_seconds),
                    webhook_urls: input.webhook_urls,
                },
                Some(user.id),
            )
            .await?;
        Ok(AlertRule(rule))
    }

    /// Delete a rule (ADMIN); its open alerts are resolved. `false` when there was none.
    async fn delete_alert_rule(&self, ctx: &Context<'_>, id: ID) -> ApiResult<bool> {
        let (_, api) = admin(ctx)?;
        if id.is_empty() || id.len() > 64 {
            return Err(ApiError::invalid("not an alert rule id"));
        }
        Ok(api.control().delete_alert_rule(&id).await?)
    }
}

//! The query root: what a caller may read.

use std::collections::HashMap;

use async_graphql::{Context, ID, Object};
use chrono::{DateTime, Utc};

use infinibay_protocol::message::{Application as AppItem, PortInfo, ProcessInfo, ServiceInfo};
use infinibay_store::InventoryKind;

use super::context::{admin, api, caller, vm_scope};
use super::types::{
    Application, CommandLog, Hypervisor, LiveFacts, MetricPoint, MetricSeries, Port, Process,
    Service, User, Vm, vm_object,
};
// `getVmMetrics` (seed 001's shape) is in `super::vms`.
use crate::authz;
use crate::error::{ApiError, ApiResult};
use crate::rest::issue_install_token;

/// Queries.
pub struct QueryRoot;

#[Object(name = "CoreQueries")]
impl QueryRoot {
    /// The caller.
    async fn me(&self, ctx: &Context<'_>) -> ApiResult<User> {
        Ok(User::from(&caller(ctx)?))
    }

    /// VMs the caller may see.
    async fn vms(&self, ctx: &Context<'_>) -> ApiResult<Vec<Vm>> {
        let user = caller(ctx)?;
        let api = api(ctx)?;
        let all = api.store().list_vms().await?;
        let mut live: HashMap<String, LiveFacts> = api
            .control()
            .vms()
            .await
            .iter()
            .map(|v| (v.id.clone(), LiveFacts::from(v)))
            .collect();
        let unknown = api.status_of_unknown_vms();
        Ok(all
            .into_iter()
            .filter(|vm| authz::can_see_vm(&user, vm))
            .map(|vm| {
                let facts = live
                    .remove(&vm.id)
                    .or_else(|| unknown.map(LiveFacts::unknown));
                Vm::new(vm, facts)
            })
            .collect())
    }

    /// One VM.
    async fn vm(&self, ctx: &Context<'_>, id: ID) -> ApiResult<Option<Vm>> {
        let user = caller(ctx)?;
        let api = api(ctx)?;
        match api.visible_vm(&user, &id).await {
            Ok(vm) => Ok(Some(vm_object(api, vm).await)),
            Err(e) if e.code == "NOT_FOUND" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A series between two instants, at most about `maxPoints` points.
    async fn vm_metrics(
        &self,
        ctx: &Context<'_>,
        vm_id: ID,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        #[graphql(default = 500)] max_points: i32,
    ) -> ApiResult<MetricSeries> {
        let api = vm_scope(ctx, &vm_id).await?;
        if max_points < 1 {
            return Err(ApiError::invalid("maxPoints must be at least 1"));
        }
        let series = api
            .store()
            .metrics_series(&vm_id, from, to, max_points as u32)
            .await?;
        Ok(MetricSeries {
            vm_id,
            resolution: series.resolution.into(),
            points: series.points.iter().map(MetricPoint::from).collect(),
        })
    }

    /// The latest process list.
    async fn vm_processes(&self, ctx: &Context<'_>, vm_id: ID) -> ApiResult<Vec<Process>> {
        inventory::<ProcessInfo, Process>(ctx, &vm_id, InventoryKind::Processes).await
    }

    /// The latest port list.
    async fn vm_ports(&self, ctx: &Context<'_>, vm_id: ID) -> ApiResult<Vec<Port>> {
        inventory::<PortInfo, Port>(ctx, &vm_id, InventoryKind::Ports).await
    }

    /// The latest application list.
    async fn vm_applications(&self, ctx: &Context<'_>, vm_id: ID) -> ApiResult<Vec<Application>> {
        inventory::<AppItem, Application>(ctx, &vm_id, InventoryKind::Applications).await
    }

    /// The latest service list.
    async fn vm_services(&self, ctx: &Context<'_>, vm_id: ID) -> ApiResult<Vec<Service>> {
        inventory::<ServiceInfo, Service>(ctx, &vm_id, InventoryKind::Services).await
    }

    /// Commands sent to a VM, newest first.
    async fn command_logs(
        &self,
        ctx: &Context<'_>,
        vm_id: ID,
        #[graphql(default = 50)] limit: i32,
    ) -> ApiResult<Vec<CommandLog>> {
        let api = vm_scope(ctx, &vm_id).await?;
        let limit = limit.clamp(1, 1000) as u32;
        let logs = api.store().command_logs(&vm_id, limit).await?;
        Ok(logs.into_iter().map(CommandLog).collect())
    }

    /// The hypervisor: whether libvirt is reachable, and the base images `createVm` can use.
    async fn hypervisor(&self, ctx: &Context<'_>) -> ApiResult<Hypervisor> {
        caller(ctx)?;
        Ok(api(ctx)?.control().hypervisor().await.into())
    }

    /// Every user (ADMIN).
    async fn users(&self, ctx: &Context<'_>) -> ApiResult<Vec<User>> {
        let (_, api) = admin(ctx)?;
        let users = api.store().users().list_users().await?;
        Ok(users.iter().map(User::from).collect())
    }

    /// A token that lets the VM's install script download the agent (`?token=` on
    /// `/infiniservice/…`), valid 24 h. Owner or ADMIN; it stops working when its issuer is
    /// deleted, changes password or may no longer see the VM.
    async fn vm_install_token(&self, ctx: &Context<'_>, vm_id: ID) -> ApiResult<String> {
        let api = vm_scope(ctx, &vm_id).await?;
        issue_install_token(api, &vm_id, &caller(ctx)?)
    }
}

/// The latest stored inventory of `kind`, each row read as the agent's `Row` and turned into
/// the GraphQL `Item`. A row that does not read is not dropped in silence: the others are
/// returned and the response carries an `INTERNAL` error saying how many did not, which is
/// logged too (the rows were sanitised before storage, so this means the stored shape and
/// this version disagree).
async fn inventory<Row, Item>(
    ctx: &Context<'_>,
    vm_id: &str,
    kind: InventoryKind,
) -> ApiResult<Vec<Item>>
where
    Row: serde::de::DeserializeOwned,
    Item: From<Row>,
{
    let api = vm_scope(ctx, vm_id).await?;
    let Some(inventory) = api.store().inventory(vm_id, kind).await? else {
        return Ok(Vec::new());
    };
    let rows = match inventory.items {
        serde_json::Value::Array(rows) => rows,
        other => vec![other],
    };
    let total = rows.len();
    let mut items = Vec::with_capacity(total);
    let mut first_failure = None;
    for row in rows {
        match serde_json::from_value::<Row>(row) {
            Ok(row) => items.push(Item::from(row)),
            Err(e) => {
                first_failure.get_or_insert(e);
            }
        }
    }
    if let Some(error) = first_failure {
        let unread = total - items.len();
        let what = format!(
            "{unread} of {total} rows of the stored {} inventory of VM {vm_id} could not be read (first: {error})",
            kind_name(kind)
        );
        tracing::warn!(target: "infinibay::api", "{what}");
        let error = async_graphql::Error::from(ApiError::internal(what));
        ctx.add_error(ctx.set_error_path(error.into_server_error(ctx.item.pos)));
    }
    Ok(items)
}

fn kind_name(kind: InventoryKind) -> &'static str {
    match kind {
        InventoryKind::Processes => "process",
        InventoryKind::Ports => "port",
        InventoryKind::Applications => "application",
        InventoryKind::Services => "service",
    }
}

//! GraphQL at `/graphql` (async-graphql): GraphiQL on GET, queries and mutations by POST,
//! subscriptions over graphql-ws at `/graphql` (and `/graphql/ws`). Every resolver asks [`super::authz`];
//! errors carry `extensions.code`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_graphql::futures_util::Stream;
use async_graphql::http::GraphiQLSource;
use async_graphql::http::WebSocketProtocols;
use async_graphql::{
    Context, Data, Enum, ErrorExtensions, ID, InputObject, Json, Object, Schema, SimpleObject,
    Subscription,
};
use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::Router;
use axum::extract::{FromRequestParts, State, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};

use infinibay_protocol::message::command::KNOWN_SAFE_ACTIONS;
use infinibay_protocol::message::{
    Application as AppItem, CommandResponse as WireResponse, MetricsBody, PortInfo, ProcessInfo,
    SafeAction, SafeCommand, ServiceInfo, UnsafeCommand,
};
use infinibay_store::{
    CommandLogEntry, InventoryKind, MetricPoint as StorePoint, MetricSample,
    Resolution as StoreRes, Role as StoreRole, UserRecord, VmRecord, VmStatus as StoreStatus,
};

use super::auth::{AuthError, bearer};
use super::authz;
use super::realtime::Realtime;
use super::sessions::{Bearer, REVOKED_CLOSE_CODE, REVOKED_CLOSE_REASON};
use super::state::{Api, ApiError};
use crate::command::Command;
use crate::event::{BusEvent, Filter, Topic};
use crate::users::{self, CreateUser};

/// The schema type.
pub type ApiSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// Who is asking: the result of checking the request's token (checked once per request).
#[derive(Clone)]
pub struct Caller(pub Result<UserRecord, ApiError>);

impl From<ApiError> for async_graphql::Error {
    fn from(e: ApiError) -> Self {
        let code = e.code;
        async_graphql::Error::new(e.message).extend_with(|_, ext| ext.set("code", code))
    }
}

type GqlResult<T> = Result<T, async_graphql::Error>;

fn api<'a>(ctx: &Context<'a>) -> GqlResult<&'a Api> {
    ctx.data::<Api>()
        .map_err(|_| ApiError::internal("API state missing").into())
}

fn realtime<'a>(ctx: &Context<'a>) -> GqlResult<&'a Arc<Realtime>> {
    ctx.data::<Arc<Realtime>>()
        .map_err(|_| ApiError::internal("real-time state missing").into())
}

fn caller_raw(ctx: &Context<'_>) -> Result<UserRecord, ApiError> {
    match ctx.data_opt::<Caller>() {
        Some(Caller(Ok(user))) => Ok(user.clone()),
        Some(Caller(Err(e))) => Err(e.clone()),
        None => Err(ApiError::from(AuthError::Missing)),
    }
}

fn caller(ctx: &Context<'_>) -> GqlResult<UserRecord> {
    caller_raw(ctx).map_err(Into::into)
}

fn parse_user_id(id: &ID) -> Result<i64, ApiError> {
    id.parse::<i64>()
        .map_err(|_| ApiError::invalid(format!("`{}` is not a user id", id.as_str())))
}

// ----- Types -------------------------------------------------------------------------------

/// Role.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum Role {
    /// Administrator.
    Admin,
    /// Regular user.
    User,
}

impl From<StoreRole> for Role {
    fn from(r: StoreRole) -> Self {
        match r {
            StoreRole::Admin => Self::Admin,
            StoreRole::User => Self::User,
        }
    }
}

impl From<Role> for StoreRole {
    fn from(r: Role) -> Self {
        match r {
            Role::Admin => Self::Admin,
            Role::User => Self::User,
        }
    }
}

/// VM status.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum VmStatus {
    /// Agent talking.
    Online,
    /// Not.
    Offline,
}

impl From<StoreStatus> for VmStatus {
    fn from(s: StoreStatus) -> Self {
        match s {
            StoreStatus::Online => Self::Online,
            StoreStatus::Offline => Self::Offline,
        }
    }
}

/// Metrics resolution.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum Resolution {
    /// Raw samples.
    Raw,
    /// Minute rollups.
    Minute,
    /// Hour rollups.
    Hour,
}

/// Command type.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum CommandType {
    /// Structured action.
    Safe,
    /// Raw command.
    Unsafe,
}

/// A user.
#[derive(SimpleObject, Clone, Debug)]
pub struct User {
    id: ID,
    username: String,
    role: Role,
    department: Option<String>,
    permissions: Vec<String>,
    created_at: DateTime<Utc>,
}

impl From<&UserRecord> for User {
    fn from(u: &UserRecord) -> Self {
        Self {
            id: ID(u.id.to_string()),
            username: u.username.clone(),
            role: u.role.into(),
            department: u.department.clone(),
            permissions: u.permissions.clone(),
            created_at: u.created_at,
        }
    }
}

/// Token and user.
#[derive(SimpleObject)]
pub struct AuthPayload {
    token: String,
    user: User,
}

/// What the agent said of itself.
#[derive(SimpleObject)]
pub struct AgentInfo {
    agent_version: String,
    protocol_version: i32,
    os: String,
    os_version: String,
    kernel: String,
    hostname: String,
    architecture: String,
    capabilities: Vec<String>,
}

/// A file system.
#[derive(SimpleObject)]
#[graphql(name = "DiskUsage")]
pub struct GqlDiskUsage {
    mount_point: String,
    filesystem: Option<String>,
    total_gb: f64,
    used_gb: f64,
    available_gb: f64,
}

/// A network interface.
#[derive(SimpleObject)]
pub struct NetInterface {
    name: String,
    is_up: bool,
    ip_addresses: Vec<String>,
    rx_bytes: Option<f64>,
    tx_bytes: Option<f64>,
    rx_bps: Option<f64>,
    tx_bps: Option<f64>,
}

/// The latest sample of a VM.
#[derive(SimpleObject)]
pub struct MetricsSnapshot {
    at: DateTime<Utc>,
    cpu_percent: f64,
    cores_usage: Vec<f64>,
    temperature: Option<f64>,
    mem_used_kb: f64,
    mem_total_kb: f64,
    mem_available_kb: f64,
    swap_used_kb: Option<f64>,
    swap_total_kb: Option<f64>,
    disks: Vec<GqlDiskUsage>,
    disk_read_bps: f64,
    disk_write_bps: f64,
    interfaces: Vec<NetInterface>,
    net_rx_bps: f64,
    net_tx_bps: f64,
    load1: f64,
    load5: f64,
    load15: f64,
    uptime_seconds: f64,
}

impl From<&MetricSample> for MetricsSnapshot {
    fn from(s: &MetricSample) -> Self {
        let m: &MetricsBody = &s.detail;
        Self {
            at: s.received_at,
            cpu_percent: m.cpu.usage_percent,
            cores_usage: m.cpu.cores_usage.clone(),
            temperature: m.cpu.temperature,
            mem_used_kb: m.memory.used_kb as f64,
            mem_total_kb: m.memory.total_kb as f64,
            mem_available_kb: m.memory.available_kb as f64,
            swap_used_kb: m.memory.swap_used_kb.map(|v| v as f64),
            swap_total_kb: m.memory.swap_total_kb.map(|v| v as f64),
            disks: m
                .disk
                .usage_stats
                .iter()
                .map(|d| GqlDiskUsage {
                    mount_point: d.mount_point.clone(),
                    filesystem: d.filesystem.clone(),
                    total_gb: d.total_gb,
                    used_gb: d.used_gb,
                    available_gb: d.available_gb,
                })
                .collect(),
            disk_read_bps: s.disk_read_bps,
            disk_write_bps: s.disk_write_bps,
            interfaces: m
                .network
                .stats
                .iter()
                .map(|i| NetInterface {
                    name: i.interface.clone(),
                    is_up: i.is_up,
                    ip_addresses: i.ip_addresses.clone(),
                    rx_bytes: i.bytes_received.map(|v| v as f64),
                    tx_bytes: i.bytes_sent.map(|v| v as f64),
                    rx_bps: i.bytes_received_per_sec,
                    tx_bps: i.bytes_sent_per_sec,
                })
                .collect(),
            net_rx_bps: s.net_rx_bps,
            net_tx_bps: s.net_tx_bps,
            load1: m.system.load_average.load1min,
            load5: m.system.load_average.load5min,
            load15: m.system.load_average.load15min,
            uptime_seconds: m.system.uptime as f64,
        }
    }
}

/// Addresses worth showing: not loopback, not link-local.
fn routable_addresses(sample: &MetricSample) -> Vec<String> {
    let mut out = Vec::new();
    for iface in &sample.detail.network.stats {
        for addr in &iface.ip_addresses {
            let ip_text = addr.split('/').next().unwrap_or(addr);
            let keep = match ip_text.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(v4)) => !v4.is_loopback() && !v4.is_link_local(),
                Ok(std::net::IpAddr::V6(v6)) => {
                    !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80
                }
                Err(_) => false,
            };
            if keep && !out.contains(addr) {
                out.push(addr.clone());
            }
        }
    }
    out
}

/// A VM.
pub struct Vm {
    record: VmRecord,
    live_status: Option<StoreStatus>,
}

#[Object]
impl Vm {
    async fn id(&self) -> ID {
        ID(self.record.id.clone())
    }
    async fn name(&self) -> &str {
        &self.record.name
    }
    async fn status(&self) -> VmStatus {
        self.live_status.unwrap_or(self.record.status).into()
    }
    async fn last_seen(&self) -> Option<DateTime<Utc>> {
        self.record.last_seen
    }
    async fn owner(&self, ctx: &Context<'_>) -> GqlResult<Option<User>> {
        let Some(owner) = self.record.owner_id else {
            return Ok(None);
        };
        let api = api(ctx)?;
        let user = api
            .store()
            .users()
            .get_user(owner)
            .await
            .map_err(ApiError::from)?;
        Ok(user.as_ref().map(User::from))
    }
    async fn department(&self) -> Option<&str> {
        self.record.department.as_deref()
    }
    async fn agent(&self) -> Option<AgentInfo> {
        self.record.agent.as_ref().map(|a| AgentInfo {
            agent_version: a.agent_version.clone(),
            protocol_version: i32::try_from(a.protocol_version).unwrap_or(i32::MAX),
            os: a.os.clone(),
            os_version: a.os_version.clone(),
            kernel: a.kernel.clone(),
            hostname: a.hostname.clone(),
            architecture: a.architecture.clone(),
            capabilities: a.capabilities.clone(),
        })
    }
    async fn ip_addresses(&self, ctx: &Context<'_>) -> GqlResult<Vec<String>> {
        let latest = api(ctx)?.latest_sample(&self.record.id).await?;
        Ok(latest.map(|s| routable_addresses(&s)).unwrap_or_default())
    }
    async fn latest_metrics(&self, ctx: &Context<'_>) -> GqlResult<Option<MetricsSnapshot>> {
        let latest = api(ctx)?.latest_sample(&self.record.id).await?;
        Ok(latest.map(|s| MetricsSnapshot::from(s.as_ref())))
    }
}

fn vm_object(api: &Api, record: VmRecord) -> Vm {
    let live_status = api.host().vm(&record.id).map(|v| v.status);
    Vm {
        record,
        live_status,
    }
}

/// A point of a series.
#[derive(SimpleObject)]
pub struct MetricPoint {
    at: DateTime<Utc>,
    cpu_avg: f64,
    cpu_min: f64,
    cpu_max: f64,
    mem_used_kb: f64,
    mem_total_kb: f64,
    disk_read_bps: f64,
    disk_write_bps: f64,
    net_rx_bps: f64,
    net_tx_bps: f64,
    samples: i32,
}

impl From<&StorePoint> for MetricPoint {
    fn from(p: &StorePoint) -> Self {
        Self {
            at: p.at,
            cpu_avg: p.cpu_avg,
            cpu_min: p.cpu_min,
            cpu_max: p.cpu_max,
            mem_used_kb: p.mem_used_kb_avg,
            mem_total_kb: p.mem_total_kb as f64,
            disk_read_bps: p.disk_read_bps,
            disk_write_bps: p.disk_write_bps,
            net_rx_bps: p.net_rx_bps,
            net_tx_bps: p.net_tx_bps,
            samples: i32::try_from(p.samples).unwrap_or(i32::MAX),
        }
    }
}

/// A series.
#[derive(SimpleObject)]
pub struct MetricSeries {
    vm_id: ID,
    resolution: Resolution,
    points: Vec<MetricPoint>,
}

/// A process.
#[derive(SimpleObject)]
pub struct Process {
    pid: i32,
    ppid: Option<i32>,
    name: String,
    cmdline: Option<String>,
    user: Option<String>,
    state: Option<String>,
    cpu_percent: f64,
    memory_kb: f64,
    start_time: Option<DateTime<Utc>>,
}

/// A port.
#[derive(SimpleObject)]
pub struct Port {
    port: i32,
    protocol: String,
    local_address: Option<String>,
    state: Option<String>,
    process_id: Option<i32>,
    process_name: Option<String>,
}

/// An installed application.
#[derive(SimpleObject)]
pub struct Application {
    name: String,
    version: Option<String>,
    size_kb: Option<f64>,
    architecture: Option<String>,
}

/// A service.
#[derive(SimpleObject)]
pub struct Service {
    name: String,
    description: Option<String>,
    load_state: Option<String>,
    active_state: Option<String>,
    sub_state: Option<String>,
    enabled: Option<bool>,
}

/// An error the agent reported for a command.
#[derive(SimpleObject)]
pub struct CommandError {
    code: String,
    message: String,
}

/// A command's response.
#[derive(SimpleObject)]
pub struct CommandResponse {
    id: ID,
    success: bool,
    exit_code: Option<i32>,
    stdout: String,
    stderr: String,
    stdout_truncated: bool,
    stderr_truncated: bool,
    data: Option<Json<serde_json::Value>>,
    execution_time_ms: i32,
    error: Option<CommandError>,
}

impl From<WireResponse> for CommandResponse {
    fn from(r: WireResponse) -> Self {
        Self {
            id: ID(r.id),
            success: r.success,
            exit_code: r.exit_code,
            stdout: r.stdout,
            stderr: r.stderr,
            stdout_truncated: r.stdout_truncated,
            stderr_truncated: r.stderr_truncated,
            data: r.data.map(Json),
            execution_time_ms: i32::try_from(r.execution_time_ms).unwrap_or(i32::MAX),
            error: r.error.map(|e| CommandError {
                code: e.code.as_str().to_owned(),
                message: e.message,
            }),
        }
    }
}

/// A command log entry.
pub struct CommandLog(CommandLogEntry);

#[Object]
impl CommandLog {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn vm_id(&self) -> ID {
        ID(self.0.vm_id.clone())
    }
    async fn user(&self, ctx: &Context<'_>) -> GqlResult<Option<User>> {
        let Some(id) = self.0.user_id else {
            return Ok(None);
        };
        let user = api(ctx)?
            .store()
            .users()
            .get_user(id)
            .await
            .map_err(ApiError::from)?;
        Ok(user.as_ref().map(User::from))
    }
    async fn kind(&self) -> &str {
        &self.0.kind
    }
    async fn command(&self) -> Json<serde_json::Value> {
        Json(self.0.command.clone())
    }
    async fn response(&self) -> Option<Json<serde_json::Value>> {
        self.0.response.clone().map(Json)
    }
    async fn success(&self) -> bool {
        self.0.success
    }
    async fn duration_ms(&self) -> i32 {
        i32::try_from(self.0.duration_ms).unwrap_or(i32::MAX)
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

/// A command to run.
#[derive(InputObject, Debug)]
pub struct CommandInput {
    #[graphql(name = "type")]
    kind: CommandType,
    action: Option<String>,
    params: Option<Json<serde_json::Value>>,
    raw_command: Option<String>,
    argv: Option<Vec<String>>,
    shell: Option<String>,
    working_dir: Option<String>,
    env_vars: Option<Json<serde_json::Value>>,
    /// Seconds; default 30 (host wait), the agent's own default applies to the run.
    timeout: Option<i32>,
}

/// A user to create.
#[derive(InputObject, Debug)]
pub struct CreateUserInput {
    username: String,
    password: String,
    #[graphql(default_with = "Role::User")]
    role: Role,
    department: Option<String>,
    #[graphql(default)]
    permissions: Vec<String>,
}

/// A status change.
#[derive(SimpleObject, Clone)]
pub struct VmStatusEvent {
    vm_id: ID,
    status: VmStatus,
    at: DateTime<Utc>,
}

// ----- Command construction ---------------------------------------------------------------

/// Default host wait for a command.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// The host waits this much longer than the agent's own timeout, so the agent's `timeout`
/// answer arrives first.
const WAIT_MARGIN: Duration = Duration::from_secs(3);

fn build_command(input: &CommandInput) -> Result<(Command, Duration), ApiError> {
    let timeout = match input.timeout {
        None => None,
        Some(t) if (1..=86_400).contains(&t) => Some(t as u64),
        Some(t) => {
            return Err(ApiError::invalid(format!(
                "timeout {t} out of range (1–86400 seconds)"
            )));
        }
    };
    let wait = timeout
        .map(|t| Duration::from_secs(t) + WAIT_MARGIN)
        .unwrap_or(DEFAULT_WAIT);
    match input.kind {
        CommandType::Safe => {
            let action = input
                .action
                .as_deref()
                .ok_or_else(|| ApiError::invalid("SAFE commands need `action`"))?;
            let mut object = match input.params.as_ref().map(|p| &p.0) {
                None | Some(serde_json::Value::Null) => serde_json::Map::new(),
                Some(serde_json::Value::Object(map)) => map.clone(),
                Some(_) => return Err(ApiError::invalid("`params` must be an object")),
            };
            object.insert(
                "action".into(),
                serde_json::Value::String(action.to_owned()),
            );
            let parsed = SafeAction::from_json(serde_json::Value::Object(object))
                .map_err(ApiError::invalid)?;
            if let SafeAction::Unknown { action } = &parsed {
                return Err(ApiError::invalid(format!(
                    "unknown action `{action}` (known: {})",
                    KNOWN_SAFE_ACTIONS.join(", ")
                )));
            }
            parsed.validate().map_err(ApiError::invalid)?;
            Ok((
                Command::Safe(SafeCommand {
                    id: String::new(),
                    command_type: parsed,
                    timeout,
                }),
                wait,
            ))
        }
        CommandType::Unsafe => {
            let raw = input.raw_command.clone().filter(|c| !c.trim().is_empty());
            let argv = input.argv.clone().filter(|a| !a.is_empty());
            if raw.is_none() && argv.is_none() {
                return Err(ApiError::invalid(
                    "UNSAFE commands need `rawCommand` or `argv`",
                ));
            }
            if raw.is_some() && argv.is_some() {
                return Err(ApiError::invalid("give `rawCommand` or `argv`, not both"));
            }
            let env_vars = match input.env_vars.as_ref().map(|e| &e.0) {
                None | Some(serde_json::Value::Null) => None,
                Some(value) => Some(
                    serde_json::from_value(value.clone())
                        .map_err(|_| ApiError::invalid("`envVars` must map names to strings"))?,
                ),
            };
            Ok((
                Command::Unsafe(UnsafeCommand {
                    id: String::new(),
                    raw_command: raw,
                    argv,
                    shell: input.shell.clone(),
                    timeout,
                    working_dir: input.working_dir.clone(),
                    env_vars,
                }),
                wait,
            ))
        }
    }
}

// ----- Roots --------------------------------------------------------------------------------

/// Queries.
pub struct QueryRoot;

#[Object]
impl QueryRoot {
    /// The caller.
    async fn me(&self, ctx: &Context<'_>) -> GqlResult<User> {
        Ok(User::from(&caller(ctx)?))
    }

    /// VMs the caller may see.
    async fn vms(&self, ctx: &Context<'_>) -> GqlResult<Vec<Vm>> {
        let user = caller(ctx)?;
        let api = api(ctx)?;
        let all = api.store().list_vms().await.map_err(ApiError::from)?;
        Ok(all
            .into_iter()
            .filter(|vm| authz::can_see_vm(&user, vm))
            .map(|vm| vm_object(api, vm))
            .collect())
    }

    /// One VM.
    async fn vm(&self, ctx: &Context<'_>, id: ID) -> GqlResult<Option<Vm>> {
        let user = caller(ctx)?;
        let api = api(ctx)?;
        match api.visible_vm(&user, &id).await {
            Ok(vm) => Ok(Some(vm_object(api, vm))),
            Err(e) if e.code == "NOT_FOUND" => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The last `hours` of metrics (seed 001), resolution picked by the store.
    async fn get_vm_metrics(
        &self,
        ctx: &Context<'_>,
        vm_id: ID,
        #[graphql(default = 24)] hours: i32,
    ) -> GqlResult<Vec<MetricPoint>> {
        let user = caller(ctx)?;
        let api = api(ctx)?;
        api.visible_vm(&user, &vm_id).await?;
        if !(1..=24 * 366).contains(&hours) {
            return Err(ApiError::invalid("hours must be 1–8784").into());
        }
        let to = Utc::now();
        let from = to - chrono::Duration::hours(hours.into());
        let (_, points) = api
            .store()
            .metrics(&vm_id, from, to, 500)
            .await
            .map_err(ApiError::from)?;
        Ok(points.iter().map(MetricPoint::from).collect())
    }

    /// A series between two instants, at most about `maxPoints` points.
    async fn vm_metrics(
        &self,
        ctx: &Context<'_>,
        vm_id: ID,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        #[graphql(default = 500)] max_points: i32,
    ) -> GqlResult<MetricSeries> {
        let user = caller(ctx)?;
        let api = api(ctx)?;
        api.visible_vm(&user, &vm_id).await?;
        if max_points < 1 {
            return Err(ApiError::invalid("maxPoints must be at least 1").into());
        }
        let series = api
            .store()
            .metrics_series(&vm_id, from, to, max_points as u32)
            .await
            .map_err(ApiError::from)?;
        Ok(MetricSeries {
            vm_id,
            resolution: match series.resolution {
                StoreRes::Raw => Resolution::Raw,
                StoreRes::Minute => Resolution::Minute,
                StoreRes::Hour => Resolution::Hour,
            },
            points: series.points.iter().map(MetricPoint::from).collect(),
        })
    }

    /// The latest process list.
    async fn vm_processes(&self, ctx: &Context<'_>, vm_id: ID) -> GqlResult<Vec<Process>> {
        let items: Vec<ProcessInfo> = inventory(ctx, &vm_id, InventoryKind::Processes).await?;
        Ok(items
            .into_iter()
            .map(|p| Process {
                pid: i32::try_from(p.pid).unwrap_or(i32::MAX),
                ppid: p.ppid.map(|v| i32::try_from(v).unwrap_or(i32::MAX)),
                name: p.name,
                cmdline: p.cmdline,
                user: p.user,
                state: p.state,
                cpu_percent: p.cpu_percent,
                memory_kb: p.memory_kb as f64,
                start_time: p.start_time.and_then(|s| DateTime::from_timestamp(s, 0)),
            })
            .collect())
    }

    /// The latest port list.
    async fn vm_ports(&self, ctx: &Context<'_>, vm_id: ID) -> GqlResult<Vec<Port>> {
        let items: Vec<PortInfo> = inventory(ctx, &vm_id, InventoryKind::Ports).await?;
        Ok(items
            .into_iter()
            .map(|p| Port {
                port: p.port.into(),
                protocol: p.protocol,
                local_address: p.local_address,
                state: p.state,
                process_id: p.process_id.map(|v| i32::try_from(v).unwrap_or(i32::MAX)),
                process_name: p.process_name,
            })
            .collect())
    }

    /// The latest application list.
    async fn vm_applications(&self, ctx: &Context<'_>, vm_id: ID) -> GqlResult<Vec<Application>> {
        let items: Vec<AppItem> = inventory(ctx, &vm_id, InventoryKind::Applications).await?;
        Ok(items
            .into_iter()
            .map(|a| Application {
                name: a.name,
                version: a.version,
                size_kb: a.size_kb.map(|v| v as f64),
                architecture: a.architecture,
            })
            .collect())
    }

    /// The latest service list.
    async fn vm_services(&self, ctx: &Context<'_>, vm_id: ID) -> GqlResult<Vec<Service>> {
        let items: Vec<ServiceInfo> = inventory(ctx, &vm_id, InventoryKind::Services).await?;
        Ok(items
            .into_iter()
            .map(|s| Service {
                name: s.name,
                description: s.description,
                load_state: s.load_state,
                active_state: s.active_state,
                sub_state: s.sub_state,
                enabled: s.enabled,
            })
            .collect())
    }

    /// Commands sent to a VM, newest first.
    async fn command_logs(
        &self,
        ctx: &Context<'_>,
        vm_id: ID,
        #[graphql(default = 50)] limit: i32,
    ) -> GqlResult<Vec<CommandLog>> {
        let user = caller(ctx)?;
        let api = api(ctx)?;
        api.visible_vm(&user, &vm_id).await?;
        let limit = limit.clamp(1, 1000) as u32;
        let logs = api
            .store()
            .command_logs(&vm_id, limit)
            .await
            .map_err(ApiError::from)?;
        Ok(logs.into_iter().map(CommandLog).collect())
    }

    /// Every user (ADMIN).
    async fn users(&self, ctx: &Context<'_>) -> GqlResult<Vec<User>> {
        let user = caller(ctx)?;
        authz::require_admin(&user).map_err(ApiError::from)?;
        let users = api(ctx)?
            .store()
            .users()
            .list_users()
            .await
            .map_err(ApiError::from)?;
        Ok(users.iter().map(User::from).collect())
    }

    /// A token that lets the VM's install script download the agent (`?token=` on
    /// `/infiniservice/…`), valid 24 h. Owner or ADMIN.
    async fn vm_install_token(&self, ctx: &Context<'_>, vm_id: ID) -> GqlResult<String> {
        let user = caller(ctx)?;
        let api = api(ctx)?;
        api.visible_vm(&user, &vm_id).await?;
        Ok(super::rest::issue_install_token(api, &vm_id)?)
    }
}

async fn inventory<T: serde::de::DeserializeOwned>(
    ctx: &Context<'_>,
    vm_id: &str,
    kind: InventoryKind,
) -> GqlResult<Vec<T>> {
    let user = caller(ctx)?;
    let api = api(ctx)?;
    api.visible_vm(&user, vm_id).await?;
    let Some(inv) = api
        .store()
        .inventory(vm_id, kind)
        .await
        .map_err(ApiError::from)?
    else {
        return Ok(Vec::new());
    };
    match inv.items {
        serde_json::Value::Array(items) => Ok(items
            .into_iter()
            .filter_map(|item| serde_json::from_value(item).ok())
            .collect()),
        _ => Ok(Vec::new()),
    }
}

/// Mutations.
pub struct MutationRoot;

#[Object]
impl MutationRoot {
    /// Exchange a user name and password for a token.
    async fn login(
        &self,
        ctx: &Context<'_>,
        username: String,
        password: String,
    ) -> GqlResult<AuthPayload> {
        let api = api(ctx)?;
        match api.auth().login(&username, &password).await {
            Ok((token, user)) => Ok(AuthPayload {
                token,
                user: User::from(&user),
            }),
            Err(e) => Err(ApiError::from(e).into()),
        }
    }

    /// Run a command on a VM (seed 001), waiting for its response.
    async fn execute_vm_command(
        &self,
        ctx: &Context<'_>,
        vm_id: ID,
        command: CommandInput,
    ) -> GqlResult<CommandResponse> {
        let user = caller(ctx)?;
        let api = api(ctx)?;
        let vm = api
            .store()
            .get_vm(&vm_id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::not_found(format!("VM {} not found", vm_id.as_str())))?;
        authz::require_command(&user, &vm, command.kind == CommandType::Unsafe)
            .map_err(ApiError::from)?;
        let kind = match command.kind {
            CommandType::Safe => "safe",
            CommandType::Unsafe => "unsafe",
        };
        let requested = serde_json::json!({
            "type": kind, "action": command.action, "params": command.params.as_ref().map(|p| &p.0),
            "rawCommand": command.raw_command, "argv": command.argv,
        });
        let (cmd, wait) = match build_command(&command) {
            Ok(c) => c,
            Err(e) => {
                api.log_refused_command(&vm_id, &user, kind, requested, &e)
                    .await;
                return Err(e.into());
            }
        };
        let started = Instant::now();
        let pending = match api.host().start_command(&vm_id, cmd, Some(user.id)) {
            Ok(p) => p,
            Err(e) => {
                let e = ApiError::from(e);
                api.log_refused_command(&vm_id, &user, kind, requested, &e)
                    .await;
                api.observe_command(false, started.elapsed());
                return Err(e.into());
            }
        };
        let outcome = pending.wait(Some(wait)).await;
        api.observe_command(outcome.as_ref().is_ok_and(|r| r.success), started.elapsed());
        match outcome {
            Ok(response) => Ok(response.into()),
            Err(e) => Err(ApiError::from(e).into()),
        }
    }

    /// Create a user (ADMIN).
    async fn create_user(&self, ctx: &Context<'_>, input: CreateUserInput) -> GqlResult<User> {
        let user = caller(ctx)?;
        authz::require_admin(&user).map_err(ApiError::from)?;
        let api = api(ctx)?;
        let created = users::create_user(
            api.store().as_ref(),
            CreateUser {
                username: input.username,
                password: input.password,
                role: input.role.into(),
                department: input.department,
                permissions: input.permissions,
            },
        )
        .await
        .map_err(ApiError::from)?;
        Ok(User::from(&created))
    }

    /// Delete a user (ADMIN); their tokens stop working and their sockets are closed.
    async fn delete_user(&self, ctx: &Context<'_>, id: ID) -> GqlResult<bool> {
        let user = caller(ctx)?;
        authz::require_admin(&user).map_err(ApiError::from)?;
        let id = parse_user_id(&id)?;
        if id == user.id {
            return Err(ApiError::invalid("you cannot delete yourself").into());
        }
        let api = api(ctx)?;
        api.store()
            .users()
            .delete_user(id)
            .await
            .map_err(ApiError::from)?;
        realtime(ctx)?.revoke_user(id).await;
        Ok(true)
    }

    /// Set a password (ADMIN, or the user themself); older tokens stop working.
    async fn set_user_password(
        &self,
        ctx: &Context<'_>,
        id: ID,
        password: String,
    ) -> GqlResult<bool> {
        let user = caller(ctx)?;
        let id = parse_user_id(&id)?;
        authz::require_self_or_admin(&user, id).map_err(ApiError::from)?;
        let api = api(ctx)?;
        users::set_password(api.store().as_ref(), id, &password)
            .await
            .map_err(ApiError::from)?;
        realtime(ctx)?.revoke_user(id).await;
        Ok(true)
    }

    /// Grant a permission (ADMIN).
    async fn grant_permission(
        &self,
        ctx: &Context<'_>,
        id: ID,
        permission: String,
    ) -> GqlResult<User> {
        let user = caller(ctx)?;
        authz::require_admin(&user).map_err(ApiError::from)?;
        let id = parse_user_id(&id)?;
        users::check_permission(&permission).map_err(ApiError::from)?;
        let api = api(ctx)?;
        let store = api.store();
        store
            .users()
            .grant_permission(id, &permission)
            .await
            .map_err(ApiError::from)?;
        let updated = store
            .users()
            .get_user(id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::not_found(format!("user {id}")))?;
        Ok(User::from(&updated))
    }

    /// Give a VM an owner and a department (ADMIN).
    async fn set_vm_owner(
        &self,
        ctx: &Context<'_>,
        vm_id: ID,
        user_id: Option<ID>,
        department: Option<String>,
    ) -> GqlResult<Vm> {
        let user = caller(ctx)?;
        authz::require_admin(&user).map_err(ApiError::from)?;
        let api = api(ctx)?;
        let store = api.store();
        let before = store
            .get_vm(&vm_id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::not_found(format!("VM {} not found", vm_id.as_str())))?;
        let owner = match &user_id {
            None => None,
            Some(id) => {
                let id = parse_user_id(id)?;
                store
                    .users()
                    .get_user(id)
                    .await
                    .map_err(ApiError::from)?
                    .ok_or_else(|| ApiError::not_found(format!("user {id} not found")))?;
                Some(id)
            }
        };
        let department = department
            .map(|d| d.trim().to_owned())
            .filter(|d| !d.is_empty());
        if let Some(d) = &department {
            store
                .users()
                .ensure_department(d, Utc::now())
                .await
                .map_err(ApiError::from)?;
        }
        store
            .set_vm_owner(&vm_id, owner, department.as_deref())
            .await
            .map_err(ApiError::from)?;
        api.set_owner_cached(&vm_id, owner);
        let after = store
            .get_vm(&vm_id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::not_found(format!("VM {} not found", vm_id.as_str())))?;
        realtime(ctx)?
            .owner_changed(&vm_id, before.owner_id, &after)
            .await;
        Ok(vm_object(api, after))
    }

    /// Delete a VM (ADMIN): close its connection, remove its record and data.
    async fn delete_vm(&self, ctx: &Context<'_>, vm_id: ID) -> GqlResult<bool> {
        let user = caller(ctx)?;
        authz::require_admin(&user).map_err(ApiError::from)?;
        let api = api(ctx)?;
        let store = api.store();
        let vm = store
            .get_vm(&vm_id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::not_found(format!("VM {} not found", vm_id.as_str())))?;
        api.host().forget_vm(&vm_id);
        store.delete_vm(&vm_id).await.map_err(ApiError::from)?;
        // Samples already read or queued before the connection closed would register the VM
        // again: delete once more after the next directory scan has stopped the connection.
        let later = store.clone();
        let id = vm_id.to_string();
        let after =
            Duration::from_secs_f64(api.host().config().discovery.rescan_interval_secs.max(0.1))
                + Duration::from_secs(2);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = later.delete_vm(&id).await;
        });
        api.forget_cached(&vm_id);
        realtime(ctx)?.vm_deleted(&vm).await;
        Ok(true)
    }
}

/// Subscriptions.
pub struct SubscriptionRoot;

/// A stream that first checks access (`check`), then yields what `next` makes of each bus
/// event; it ends when `next` says access was lost (`Err(())`) or the bus ends.
fn guarded_stream<T, C, N, NF>(
    api: Option<Api>,
    check: C,
    filter: Filter,
    next: N,
) -> impl Stream<Item = GqlResult<T>> + Send + 'static
where
    T: Send + 'static,
    C: std::future::Future<Output = Result<(), ApiError>> + Send + 'static,
    N: Fn(Api, BusEvent) -> NF + Send + Sync + 'static,
    NF: std::future::Future<Output = Result<Option<T>, ()>> + Send + 'static,
{
    enum Phase<C> {
        Check(std::pin::Pin<Box<C>>),
        Live(crate::event::Subscription),
        Done,
    }
    futures_util::stream::unfold(
        (Phase::Check(Box::pin(check)), api, filter, next),
        |(phase, api, filter, next)| async move {
            let Some(state) = api.clone() else {
                return match phase {
                    Phase::Done => None,
                    _ => Some((
                        Err(ApiError::internal("API state missing").into()),
                        (Phase::Done, api, filter, next),
                    )),
                };
            };
            let mut sub = match phase {
                Phase::Done => return None,
                Phase::Check(check) => match check.await {
                    Ok(()) => state.host().subscribe(filter.clone()),
                    Err(e) => return Some((Err(e.into()), (Phase::Done, api, filter, next))),
                },
                Phase::Live(sub) => sub,
            };
            loop {
                let event = sub.next_event().await?;
                match next(state.clone(), event).await {
                    Ok(Some(item)) => {
                        return Some((Ok(item), (Phase::Live(sub), api, filter, next)));
                    }
                    Ok(None) => continue,
                    Err(()) => return None,
                }
            }
        },
    )
}

#[Subscription]
impl SubscriptionRoot {
    /// Every new sample of a VM the caller may see.
    async fn vm_metrics(
        &self,
        ctx: &Context<'_>,
        vm_id: ID,
    ) -> impl Stream<Item = GqlResult<MetricsSnapshot>> + use<> {
        let user = caller_raw(ctx);
        let api = ctx.data::<Api>().ok().cloned();
        let check = {
            let (user, api, vm) = (user.clone(), api.clone(), vm_id.to_string());
            async move {
                let user = user?;
                match api {
                    Some(api) => api.visible_vm(&user, &vm).await.map(|_| ()),
                    None => Err(ApiError::internal("API state missing")),
                }
            }
        };
        let filter = Filter {
            vm_id: Some(vm_id.to_string()),
            topic: Some(Topic::Metrics),
        };
        let user = user.ok();
        guarded_stream(api, check, filter, move |api: Api, event: BusEvent| {
            let user = user.clone();
            async move {
                let (Some(user), BusEvent::Metrics(sample)) = (user, event) else {
                    return Ok(None);
                };
                // Ownership may change while subscribed.
                let owner = api.owner_of(&sample.vm_id).await;
                if !authz::can_see_vm_owned_by(&user, owner) {
                    return Err(());
                }
                Ok(Some(MetricsSnapshot::from(sample.as_ref())))
            }
        })
    }

    /// Status changes of the VMs the caller may see.
    async fn vm_status(
        &self,
        ctx: &Context<'_>,
    ) -> impl Stream<Item = GqlResult<VmStatusEvent>> + use<> {
        let user = caller_raw(ctx);
        let api = ctx.data::<Api>().ok().cloned();
        let check = {
            let user = user.clone();
            async move { user.map(|_| ()) }
        };
        let user = user.ok();
        guarded_stream(
            api,
            check,
            Filter::topic(Topic::Status),
            move |api: Api, event: BusEvent| {
                let user = user.clone();
                async move {
                    let (Some(user), BusEvent::Status(status)) = (user, event) else {
                        return Ok(None);
                    };
                    let owner = api.owner_of(&status.vm_id).await;
                    if !authz::can_see_vm_owned_by(&user, owner) {
                        return Ok(None);
                    }
                    Ok(Some(VmStatusEvent {
                        vm_id: ID(status.vm_id.clone()),
                        status: status.status.into(),
                        at: status.at,
                    }))
                }
            },
        )
    }
}

/// The schema with the API state attached.
pub fn schema(api: Api, realtime: Arc<Realtime>) -> ApiSchema {
    Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .data(api)
        .data(realtime)
        .limit_depth(12)
        .limit_complexity(5_000)
        .finish()
}

/// `/graphql` (GraphiQL on a plain GET, graphql-ws on a WebSocket upgrade, POST) and
/// `/graphql/ws` (graphql-ws only).
pub fn routes(api: Api, realtime: Arc<Realtime>) -> Router {
    let schema = schema(api.clone(), realtime);
    Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/graphql/ws", get(graphql_ws))
        .with_state((api, schema))
}

async fn graphiql() -> impl IntoResponse {
    Html(
        GraphiQLSource::build()
            .endpoint("/graphql")
            .subscription_endpoint("/graphql")
            .finish(),
    )
}

/// GraphQL clients (Apollo, urql, graphql-ws) expect subscriptions on the same URL as queries:
/// a WebSocket upgrade on `GET /graphql` is graphql-ws, any other GET is GraphiQL.
async fn graphql_get(state: State<(Api, ApiSchema)>, request: axum::extract::Request) -> Response {
    let wants_websocket = request
        .headers()
        .get(axum::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !wants_websocket {
        return graphiql().await.into_response();
    }
    let (mut parts, _body) = request.into_parts();
    let headers = parts.headers.clone();
    match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => graphql_ws(state, headers, upgrade).await,
        Err(rejection) => rejection.into_response(),
    }
}

fn header_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| bearer(v).to_owned())
        .filter(|t| !t.is_empty())
}

async fn caller_for(api: &Api, token: Option<String>) -> Caller {
    Caller(api.authenticate(token.as_deref()).await)
}

async fn graphql_post(
    State((api, schema)): State<(Api, ApiSchema)>,
    headers: HeaderMap,
    request: GraphQLRequest,
) -> GraphQLResponse {
    let caller = caller_for(&api, header_token(&headers)).await;
    schema
        .execute(request.into_inner().data(caller))
        .await
        .into()
}

async fn graphql_ws(
    State((api, schema)): State<(Api, ApiSchema)>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    // What async-graphql-axum's `GraphQLProtocol` extracts (its field is private).
    let protocol = headers
        .get(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|list| {
            list.split(',')
                .find_map(|p| p.trim().parse::<WebSocketProtocols>().ok())
        });
    let Some(protocol) = protocol else {
        return axum::http::StatusCode::BAD_REQUEST.into_response();
    };
    let header = header_token(&headers);
    upgrade
        .protocols(async_graphql::http::ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| serve_ws(api, schema, protocol, header, socket))
}

/// Unregisters a graphql-ws connection however its task ends.
struct OpenSession {
    api: Api,
    id: u64,
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.api.sessions().close(self.id);
    }
}

/// async-graphql-axum's `GraphQLWebSocket::serve`, plus a way out: when the connection's
/// user is deleted or changes password, every subscription on it ends and the socket is
/// closed with [`REVOKED_CLOSE_CODE`].
async fn serve_ws(
    api: Api,
    schema: ApiSchema,
    protocol: WebSocketProtocols,
    header: Option<String>,
    socket: axum::extract::ws::WebSocket,
) {
    use axum::extract::ws::{CloseFrame, Message};
    use futures_util::{SinkExt, StreamExt};

    let (id, revoked) = api.sessions().open();
    let _open = OpenSession {
        api: api.clone(),
        id,
    };
    let (mut sink, stream) = socket.split();
    let input = stream
        .take_while(|m| std::future::ready(m.is_ok()))
        .filter_map(|m| {
            std::future::ready(match m {
                Ok(m @ (Message::Text(_) | Message::Binary(_))) => Some(m.into_data()),
                _ => None,
            })
        });
    let for_init = api.clone();
    let connection = async_graphql::http::WebSocket::new(schema, input, protocol)
        .on_connection_init(move |payload| async move {
            let token = payload_token(&payload).or(header);
            let caller = caller_for(&for_init, token.clone()).await;
            if let (Ok(user), Some(token)) = (&caller.0, token)
                && let Ok(claims) = for_init.auth().decode(&token)
            {
                for_init.sessions().authenticated(
                    id,
                    Bearer {
                        user_id: user.id,
                        issued_ms: claims.iat_ms.unwrap_or(claims.iat.saturating_mul(1000)),
                        expires: claims.exp,
                    },
                );
            }
            let mut data = Data::default();
            data.insert(caller);
            Ok(data)
        });
    futures_util::pin_mut!(connection);
    loop {
        let outgoing = tokio::select! {
            next = connection.next() => match next {
                Some(async_graphql::http::WsMessage::Text(text)) => Message::Text(text.into()),
                Some(async_graphql::http::WsMessage::Close(code, reason)) => {
                    Message::Close(Some(CloseFrame { code, reason: reason.into() }))
                }
                None => break,
            },
            () = revoked.cancelled() => {
                let close = Message::Close(Some(CloseFrame {
                    code: REVOKED_CLOSE_CODE,
                    reason: REVOKED_CLOSE_REASON.into(),
                }));
                let _ = sink.send(close).await;
                break;
            }
        };
        if sink.send(outgoing).await.is_err() {
            break;
        }
    }
}

/// `{"Authorization": "Bearer …"}`, `{"authorization": …}` or `{"token": "…"}`.
fn payload_token(payload: &serde_json::Value) -> Option<String> {
    ["Authorization", "authorization", "token"]
        .iter()
        .find_map(|k| payload.get(*k).and_then(|v| v.as_str()))
        .map(|v| bearer(v).to_owned())
        .filter(|t| !t.is_empty())
}

/// The SDL of the schema (the authorization matrix enumerates its root fields).
pub fn sdl() -> String {
    Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .finish()
        .sdl()
}

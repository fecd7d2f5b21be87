//! The GraphQL types (enums, objects, inputs) and their conversions from the store's and the
//! protocol's records.

use async_graphql::{Context, Enum, ID, InputObject, Json, Object, SimpleObject};
use chrono::{DateTime, Utc};

use infinibay_protocol::message::{
    Application as AppItem, CommandResponse as WireResponse, MetricsBody, PortInfo, ProcessInfo,
    ServiceInfo,
};
use infinibay_store::{
    CommandLogEntry, MetricPoint as StorePoint, MetricSample, Resolution as StoreRes,
    Role as StoreRole, UserRecord, VmRecord, VmStatus as StoreStatus,
};

use super::context::api;
use crate::error::ApiResult;
use crate::state::Api;
use infinibay_control::command::{CommandKind, CommandSpec};
use infinibay_control::lifecycle::{self, CreateVmSpec, KernelBootSpec};
use infinibay_control::vm::VmSnapshot;

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

/// The hypervisor's power state of a VM (beside the agent's `VmStatus`).
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum PowerState {
    /// vCPUs run.
    Running,
    /// vCPUs paused.
    Paused,
    /// Not running.
    Shutoff,
    /// The guest or its emulator died.
    Crashed,
    /// Not known: no libvirt domain, or libvirt unreachable.
    Unknown,
}

impl From<lifecycle::PowerState> for PowerState {
    fn from(s: lifecycle::PowerState) -> Self {
        match s {
            lifecycle::PowerState::Running => Self::Running,
            lifecycle::PowerState::Paused => Self::Paused,
            lifecycle::PowerState::Shutoff => Self::Shutoff,
            lifecycle::PowerState::Crashed => Self::Crashed,
            lifecycle::PowerState::Unknown => Self::Unknown,
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

impl From<StoreRes> for Resolution {
    fn from(r: StoreRes) -> Self {
        match r {
            StoreRes::Raw => Self::Raw,
            StoreRes::Minute => Self::Minute,
            StoreRes::Hour => Self::Hour,
        }
    }
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
    pub(crate) id: ID,
    pub(crate) username: String,
    pub(crate) role: Role,
    pub(crate) department: Option<String>,
    pub(crate) permissions: Vec<String>,
    pub(crate) created_at: DateTime<Utc>,
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
    pub(crate) token: String,
    pub(crate) user: User,
}

/// A single-use ticket to open a VM's console (docs/console.md): open `path` as a WebSocket
/// on this server before `expiresAt`, offering the subprotocol `binary`.
#[derive(SimpleObject)]
pub struct ConsoleTicket {
    /// 43 characters of base64url (256 random bits); shown once, never stored.
    pub(crate) ticket: String,
    /// 30 s after minting.
    pub(crate) expires_at: DateTime<Utc>,
    /// `/console/<vmId>?ticket=<ticket>`.
    pub(crate) path: String,
}

/// What the agent said of itself.
#[derive(SimpleObject)]
pub struct AgentInfo {
    pub(crate) agent_version: String,
    pub(crate) protocol_version: i32,
    pub(crate) os: String,
    pub(crate) os_version: String,
    pub(crate) kernel: String,
    pub(crate) hostname: String,
    pub(crate) architecture: String,
    pub(crate) capabilities: Vec<String>,
}

/// A file system.
#[derive(SimpleObject)]
#[graphql(name = "DiskUsage")]
pub struct GqlDiskUsage {
    pub(crate) mount_point: String,
    pub(crate) filesystem: Option<String>,
    pub(crate) total_gb: f64,
    pub(crate) used_gb: f64,
    pub(crate) available_gb: f64,
}

/// A network interface.
#[derive(SimpleObject)]
pub struct NetInterface {
    pub(crate) name: String,
    pub(crate) is_up: bool,
    pub(crate) ip_addresses: Vec<String>,
    pub(crate) rx_bytes: Option<f64>,
    pub(crate) tx_bytes: Option<f64>,
    pub(crate) rx_bps: Option<f64>,
    pub(crate) tx_bps: Option<f64>,
}

/// The latest sample of a VM.
#[derive(SimpleObject)]
pub struct MetricsSnapshot {
    pub(crate) at: DateTime<Utc>,
    pub(crate) cpu_percent: f64,
    pub(crate) cores_usage: Vec<f64>,
    pub(crate) temperature: Option<f64>,
    pub(crate) mem_used_kb: f64,
    pub(crate) mem_total_kb: f64,
    pub(crate) mem_available_kb: f64,
    pub(crate) swap_used_kb: Option<f64>,
    pub(crate) swap_total_kb: Option<f64>,
    pub(crate) disks: Vec<GqlDiskUsage>,
    pub(crate) disk_read_bps: f64,
    pub(crate) disk_write_bps: f64,
    pub(crate) interfaces: Vec<NetInterface>,
    pub(crate) net_rx_bps: f64,
    pub(crate) net_tx_bps: f64,
    load1: f64,
    load5: f64,
    load15: f64,
    pub(crate) uptime_seconds: f64,
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

/// What the core knows of a VM now, beside its stored record.
#[derive(Debug, Clone)]
pub(crate) struct LiveFacts {
    pub status: StoreStatus,
    pub power_state: lifecycle::PowerState,
    pub domain_name: Option<String>,
}

impl LiveFacts {
    /// A VM no live source knows (scale-out: no node serves it now): `status`, power unknown.
    pub(crate) fn unknown(status: StoreStatus) -> Self {
        Self {
            status,
            power_state: lifecycle::PowerState::Unknown,
            domain_name: None,
        }
    }
}

impl From<&VmSnapshot> for LiveFacts {
    fn from(v: &VmSnapshot) -> Self {
        Self {
            status: v.status,
            power_state: v.power_state,
            domain_name: v.domain_name.clone(),
        }
    }
}

/// A VM.
pub struct Vm {
    pub(crate) record: VmRecord,
    pub(crate) live: Option<LiveFacts>,
}

#[Object]
impl Vm {
    async fn id(&self) -> ID {
        ID(self.record.id.clone())
    }
    async fn name(&self) -> &str {
        &self.record.name
    }
    /// The agent: ONLINE after a valid message, OFFLINE otherwise.
    async fn status(&self) -> VmStatus {
        self.live
            .as_ref()
            .map_or(self.record.status, |l| l.status)
            .into()
    }
    /// The hypervisor's power state; a VM that is not RUNNING has a silent agent for a reason.
    async fn power_state(&self) -> PowerState {
        self.live
            .as_ref()
            .map_or(lifecycle::PowerState::Unknown, |l| l.power_state)
            .into()
    }
    /// The libvirt domain's name, when libvirt knows the VM.
    async fn domain_name(&self) -> Option<&str> {
        self.live.as_ref().and_then(|l| l.domain_name.as_deref())
    }
    async fn last_seen(&self) -> Option<DateTime<Utc>> {
        self.record.last_seen
    }
    async fn owner(&self, ctx: &Context<'_>) -> ApiResult<Option<User>> {
        let Some(owner) = self.record.owner_id else {
            return Ok(None);
        };
        let api = api(ctx)?;
        let user = api.store().users().get_user(owner).await?;
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
    async fn ip_addresses(&self, ctx: &Context<'_>) -> ApiResult<Vec<String>> {
        let latest = api(ctx)?.latest_sample(&self.record.id).await?;
        Ok(latest.map(|s| routable_addresses(&s)).unwrap_or_default())
    }
    async fn latest_metrics(&self, ctx: &Context<'_>) -> ApiResult<Option<MetricsSnapshot>> {
        let latest = api(ctx)?.latest_sample(&self.record.id).await?;
        Ok(latest.map(|s| MetricsSnapshot::from(s.as_ref())))
    }
}

impl Vm {
    /// A stored VM with what the core knows of it now, when it knows it.
    pub(crate) fn new(record: VmRecord, live: Option<LiveFacts>) -> Self {
        Self { record, live }
    }
}

/// A stored VM with its live state asked of the core.
pub(crate) async fn vm_object(api: &Api, record: VmRecord) -> Vm {
    let live = api
        .control()
        .vm(&record.id)
        .await
        .map(|v| LiveFacts::from(&v))
        .or_else(|| api.status_of_unknown_vms().map(LiveFacts::unknown));
    Vm::new(record, live)
}

/// Direct kernel boot (files in the host's image directory).
#[derive(InputObject, Debug)]
pub struct KernelBootInput {
    /// A file name in the image directory (or an absolute path inside it).
    pub(crate) kernel: String,
    /// The initrd, likewise.
    pub(crate) initrd: String,
    /// Kernel command line.
    #[graphql(default)]
    pub(crate) cmdline: String,
}

/// A VM to create: a disk overlay over `baseImage` (a qcow2 file in the host's image
/// directory), or `kernel` to boot; at least one.
#[derive(InputObject, Debug)]
pub struct CreateVmInput {
    /// Name (1–128 characters, no `/`, no control characters).
    pub(crate) name: String,
    /// RAM in MiB (at least 16).
    pub(crate) memory_mib: i32,
    /// Virtual CPUs (1–256).
    #[graphql(default = 1)]
    pub(crate) vcpus: i32,
    /// A qcow2 file of the image directory (see `hypervisor { baseImages }`).
    pub(crate) base_image: Option<String>,
    /// Boot this kernel.
    pub(crate) kernel: Option<KernelBootInput>,
    /// Start it at once.
    #[graphql(default = true)]
    pub(crate) start: bool,
}

impl CreateVmInput {
    /// The core's spec for the VM with this id; sizes that cannot be sizes are `INVALID`.
    pub(crate) fn into_spec(self, id: String) -> ApiResult<CreateVmSpec> {
        let memory_mib = u64::try_from(self.memory_mib)
            .map_err(|_| crate::error::ApiError::invalid("memoryMib must be positive"))?;
        let vcpus = u32::try_from(self.vcpus)
            .map_err(|_| crate::error::ApiError::invalid("vcpus must be positive"))?;
        Ok(CreateVmSpec {
            id: Some(id),
            name: self.name,
            memory_mib,
            vcpus,
            base_image: self.base_image.filter(|b| !b.is_empty()),
            kernel: self.kernel.map(|k| KernelBootSpec {
                kernel: k.kernel,
                initrd: k.initrd,
                cmdline: k.cmdline,
            }),
            start: self.start,
        })
    }
}

/// What a power action did.
#[derive(SimpleObject)]
pub struct PowerActionResult {
    /// The VM after the call.
    pub(crate) vm: Vm,
    /// `powerOn`, `shutdown`, `powerOff`, `reboot`, `suspend`, `resume`.
    pub(crate) action: String,
    /// How it reached the VM: `libvirt`, `acpi` (the guest decides) or `agent` (our agent's
    /// Shutdown).
    pub(crate) via: String,
    /// The power state right after the call (a shutdown is RUNNING until the guest powered
    /// off; `vms:update` says when).
    pub(crate) power_state: PowerState,
}

/// What `attachAgentChannel` did.
#[derive(SimpleObject)]
pub struct AgentChannel {
    /// Host side of the VM's agent channel.
    pub(crate) socket: String,
    /// Hot-plugged into the running domain now.
    pub(crate) attached_live: bool,
    /// Added to the persistent definition.
    pub(crate) attached_config: bool,
}

/// The hypervisor behind this host.
#[derive(SimpleObject)]
pub struct Hypervisor {
    /// `disabled`, `connecting`, `connected` or `disconnected`.
    pub(crate) state: String,
    /// libvirt's URI (none when disabled).
    pub(crate) uri: Option<String>,
    /// Why it is not connected.
    pub(crate) reason: Option<String>,
    /// qcow2 files of the image directory `createVm` can use.
    pub(crate) base_images: Vec<String>,
}

impl From<lifecycle::HypervisorInfo> for Hypervisor {
    fn from(info: lifecycle::HypervisorInfo) -> Self {
        use lifecycle::HypervisorState as H;
        let state = info.state.as_str().to_owned();
        let (uri, reason) = match info.state {
            H::Disabled => (None, None),
            H::Connecting { uri } | H::Connected { uri } => (Some(uri), None),
            H::Disconnected { uri, reason } => (Some(uri), Some(reason)),
        };
        Self {
            state,
            uri,
            reason,
            base_images: info.base_images,
        }
    }
}

/// A point of a series.
#[derive(SimpleObject)]
pub struct MetricPoint {
    pub(crate) at: DateTime<Utc>,
    pub(crate) cpu_avg: f64,
    pub(crate) cpu_min: f64,
    pub(crate) cpu_max: f64,
    pub(crate) mem_used_kb: f64,
    pub(crate) mem_total_kb: f64,
    pub(crate) disk_read_bps: f64,
    pub(crate) disk_write_bps: f64,
    pub(crate) net_rx_bps: f64,
    pub(crate) net_tx_bps: f64,
    pub(crate) samples: i32,
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
    pub(crate) vm_id: ID,
    pub(crate) resolution: Resolution,
    pub(crate) points: Vec<MetricPoint>,
}

/// A process.
#[derive(SimpleObject)]
pub struct Process {
    pub(crate) pid: i32,
    pub(crate) ppid: Option<i32>,
    pub(crate) name: String,
    pub(crate) cmdline: Option<String>,
    pub(crate) user: Option<String>,
    pub(crate) state: Option<String>,
    pub(crate) cpu_percent: f64,
    pub(crate) memory_kb: f64,
    pub(crate) start_time: Option<DateTime<Utc>>,
}

/// A port.
#[derive(SimpleObject)]
pub struct Port {
    pub(crate) port: i32,
    pub(crate) protocol: String,
    pub(crate) local_address: Option<String>,
    pub(crate) state: Option<String>,
    pub(crate) process_id: Option<i32>,
    pub(crate) process_name: Option<String>,
}

/// An installed application.
#[derive(SimpleObject)]
pub struct Application {
    pub(crate) name: String,
    pub(crate) version: Option<String>,
    pub(crate) size_kb: Option<f64>,
    pub(crate) architecture: Option<String>,
}

/// A service.
#[derive(SimpleObject)]
pub struct Service {
    pub(crate) name: String,
    pub(crate) description: Option<String>,
    /// systemd's load state (`loaded`, `not-found`); null on Windows.
    pub(crate) load_state: Option<String>,
    pub(crate) active_state: Option<String>,
    pub(crate) sub_state: Option<String>,
    pub(crate) enabled: Option<bool>,
    /// How the service starts, in its OS's words: systemd's unit-file state (`enabled`,
    /// `disabled`, `static`, `masked`, …) or the Windows start type (`auto`, `auto-delayed`,
    /// `manual`, `disabled`, `boot`, `system`); null from agents that predate it.
    pub(crate) start_type: Option<String>,
}

impl From<ProcessInfo> for Process {
    fn from(p: ProcessInfo) -> Self {
        Self {
            pid: i32::try_from(p.pid).unwrap_or(i32::MAX),
            ppid: p.ppid.map(|v| i32::try_from(v).unwrap_or(i32::MAX)),
            name: p.name,
            cmdline: p.cmdline,
            user: p.user,
            state: p.state,
            cpu_percent: p.cpu_percent,
            memory_kb: p.memory_kb as f64,
            start_time: p.start_time.and_then(|s| DateTime::from_timestamp(s, 0)),
        }
    }
}

impl From<PortInfo> for Port {
    fn from(p: PortInfo) -> Self {
        Self {
            port: p.port.into(),
            protocol: p.protocol,
            local_address: p.local_address,
            state: p.state,
            process_id: p.process_id.map(|v| i32::try_from(v).unwrap_or(i32::MAX)),
            process_name: p.process_name,
        }
    }
}

impl From<AppItem> for Application {
    fn from(a: AppItem) -> Self {
        Self {
            name: a.name,
            version: a.version,
            size_kb: a.size_kb.map(|v| v as f64),
            architecture: a.architecture,
        }
    }
}

impl From<ServiceInfo> for Service {
    fn from(s: ServiceInfo) -> Self {
        Self {
            name: s.name,
            description: s.description,
            load_state: s.load_state,
            active_state: s.active_state,
            sub_state: s.sub_state,
            enabled: s.enabled,
            start_type: s.start_type,
        }
    }
}

/// An error the agent reported for a command.
#[derive(SimpleObject)]
pub struct CommandError {
    pub(crate) code: String,
    pub(crate) message: String,
}

/// A command's response.
#[derive(SimpleObject)]
pub struct CommandResponse {
    pub(crate) id: ID,
    pub(crate) success: bool,
    pub(crate) exit_code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    pub(crate) stdout_truncated: bool,
    pub(crate) stderr_truncated: bool,
    pub(crate) data: Option<Json<serde_json::Value>>,
    pub(crate) execution_time_ms: i32,
    pub(crate) error: Option<CommandError>,
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
pub struct CommandLog(pub(crate) CommandLogEntry);

#[Object]
impl CommandLog {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn vm_id(&self) -> ID {
        ID(self.0.vm_id.clone())
    }
    async fn user(&self, ctx: &Context<'_>) -> ApiResult<Option<User>> {
        let Some(id) = self.0.user_id else {
            return Ok(None);
        };
        let user = api(ctx)?.store().users().get_user(id).await?;
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
    pub(crate) kind: CommandType,
    pub(crate) action: Option<String>,
    pub(crate) params: Option<Json<serde_json::Value>>,
    pub(crate) raw_command: Option<String>,
    pub(crate) argv: Option<Vec<String>>,
    pub(crate) shell: Option<String>,
    pub(crate) working_dir: Option<String>,
    pub(crate) env_vars: Option<Json<serde_json::Value>>,
    /// Seconds; default 30 (host wait), the agent's own default applies to the run.
    pub(crate) timeout: Option<i32>,
}

impl From<CommandInput> for CommandSpec {
    fn from(input: CommandInput) -> Self {
        Self {
            kind: match input.kind {
                CommandType::Safe => CommandKind::Safe,
                CommandType::Unsafe => CommandKind::Unsafe,
            },
            action: input.action,
            params: input.params.map(|p| p.0),
            raw_command: input.raw_command,
            argv: input.argv,
            shell: input.shell,
            working_dir: input.working_dir,
            env_vars: input.env_vars.map(|e| e.0),
            timeout: input.timeout.map(i64::from),
        }
    }
}

/// A user to create.
#[derive(InputObject, Debug)]
pub struct CreateUserInput {
    pub(crate) username: String,
    pub(crate) password: String,
    #[graphql(default_with = "Role::User")]
    pub(crate) role: Role,
    pub(crate) department: Option<String>,
    #[graphql(default)]
    pub(crate) permissions: Vec<String>,
}

/// A status change.
#[derive(SimpleObject, Clone)]
pub struct VmStatusEvent {
    pub(crate) vm_id: ID,
    pub(crate) status: VmStatus,
    pub(crate) at: DateTime<Utc>,
}

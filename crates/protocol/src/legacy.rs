//! The original InfiniService agent (v0.1.1) as deployed in the field, read into the v1 model.
//!
//! Its quirks, and what we do about them (see `docs/protocol.md`):
//! - one `metrics` message carries system metrics, processes, ports and Windows services: it
//!   becomes `system_metrics` + `process_snapshot` + `port_usage` (+ `service_inventory`), and,
//!   the first time on a connection, a synthesized `vm_identification` (it sends none);
//! - network numbers are totals in its first message and per-second rates afterwards, under
//!   the same names: the first `metrics` of a connection fills the counters, later ones the rates;
//! - per-process CPU can exceed 100 % by far: kept here, clamped by [`crate::sanitize`];
//! - responses carry no `type` (handled in [`crate::decode`]).

use serde::Deserialize;

use crate::message::{
    CpuMetrics, DiskMetrics, GuestError, GuestMessage, InterfaceStats, LoadAverage, MemoryMetrics,
    MetricsBody, NetworkMetrics, PortInfo, PortUsage, ProcessInfo, ProcessSnapshot, ServiceInfo,
    ServiceInventory, SystemLoad, SystemMetrics, VmIdentification,
};
use crate::time::Timestamp;

/// Per-connection memory of the legacy decoder.
#[derive(Debug, Default, Clone)]
pub struct LegacyState {
    metrics_seen: u64,
}

/// Any message of which only the timestamp matters.
#[derive(Deserialize)]
pub(crate) struct Stamped {
    #[serde(default)]
    pub timestamp: Option<Timestamp>,
}

/// `error_report`.
#[derive(Deserialize)]
pub(crate) struct ErrorReport {
    #[serde(default)]
    timestamp: Option<Timestamp>,
    #[serde(default)]
    error_type: Option<String>,
    #[serde(default)]
    severity: Option<String>,
    #[serde(default)]
    recovery_suggestion: Option<String>,
    #[serde(default)]
    retry_attempt: Option<u64>,
}

impl From<ErrorReport> for GuestError {
    fn from(r: ErrorReport) -> Self {
        let details = match (r.severity, r.retry_attempt) {
            (Some(sev), Some(n)) => Some(format!("severity {sev}, retry attempt {n}")),
            (Some(sev), None) => Some(format!("severity {sev}")),
            (None, Some(n)) => Some(format!("retry attempt {n}")),
            (None, None) => None,
        };
        GuestError {
            timestamp: r.timestamp,
            error: r
                .recovery_suggestion
                .unwrap_or_else(|| "error reported by agent".into()),
            code: r.error_type,
            details,
        }
    }
}

/// `metrics` as the original agent sends it.
#[derive(Deserialize)]
pub(crate) struct LegacyMetrics {
    #[serde(default)]
    timestamp: Option<Timestamp>,
    data: LegacyData,
}

#[derive(Deserialize)]
struct LegacyData {
    system: LegacySystem,
}

#[derive(Deserialize)]
struct LegacySystem {
    // Required, as in v1 (`MetricsBody`): a sample without them is refused, never zeros.
    cpu: CpuMetrics,
    memory: LegacyMemory,
    #[serde(default)]
    disk: DiskMetrics,
    #[serde(default)]
    network: LegacyNetwork,
    #[serde(default)]
    system: LegacySystemInfo,
    #[serde(default)]
    processes: Vec<LegacyProcess>,
    #[serde(default)]
    ports: Vec<LegacyPort>,
    #[serde(default)]
    windows_services: Vec<serde_json::Value>,
}

#[derive(Deserialize, Default)]
struct LegacyMemory {
    total_kb: u64,
    used_kb: u64,
    #[serde(default)]
    available_kb: u64,
    #[serde(default)]
    swap_total_kb: Option<u64>,
    #[serde(default)]
    swap_used_kb: Option<u64>,
}

#[derive(Deserialize, Default)]
struct LegacyNetwork {
    #[serde(default)]
    interfaces: Vec<LegacyInterface>,
}

#[derive(Deserialize)]
struct LegacyInterface {
    #[serde(default)]
    name: String,
    #[serde(default)]
    bytes_received: u64,
    #[serde(default)]
    bytes_sent: u64,
    #[serde(default)]
    packets_received: u64,
    #[serde(default)]
    packets_sent: u64,
    #[serde(default)]
    errors_in: u64,
    #[serde(default)]
    errors_out: u64,
    #[serde(default)]
    ip_addresses: Vec<String>,
    #[serde(default)]
    is_up: bool,
}

#[derive(Deserialize, Default)]
struct LegacySystemInfo {
    #[serde(default)]
    uptime_seconds: u64,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    os_version: Option<String>,
    #[serde(default)]
    kernel_version: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    load_average: LoadAverage,
}

#[derive(Deserialize)]
struct LegacyProcess {
    id: u32,
    #[serde(default)]
    parent_id: Option<u32>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    command_line: Option<String>,
    #[serde(default)]
    cpu_usage_percent: f64,
    #[serde(default)]
    memory_usage_kb: u64,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    start_time: Option<i64>,
}

#[derive(Deserialize)]
struct LegacyPort {
    port: u16,
    #[serde(default)]
    protocol: String,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    process_id: Option<u32>,
    #[serde(default)]
    process_name: Option<String>,
    #[serde(default)]
    is_listening: bool,
}

/// Split one legacy `metrics` message into v1 messages.
pub(crate) fn metrics_into(
    legacy: LegacyMetrics,
    state: &mut LegacyState,
    out: &mut Vec<GuestMessage>,
) {
    let first = state.metrics_seen == 0;
    state.metrics_seen += 1;
    let timestamp = legacy.timestamp;
    let sys = legacy.data.system;

    if first {
        let os_version = match (&sys.system.name, &sys.system.os_version) {
            (Some(name), Some(version)) => format!("{name} {version}"),
            (Some(name), None) => name.clone(),
            (None, Some(version)) => version.clone(),
            (None, None) => String::new(),
        };
        out.push(GuestMessage::VmIdentification(VmIdentification {
            timestamp,
            agent_version: "legacy-0.1".into(),
            protocol_version: 0,
            capabilities: vec!["legacy_metrics".into(), "safe_commands".into()],
            os: if sys.windows_services.is_empty() {
                "linux".into()
            } else {
                "windows".into()
            },
            os_version,
            kernel: sys.system.kernel_version.clone().unwrap_or_default(),
            hostname: sys.system.hostname.clone().unwrap_or_default(),
            architecture: String::new(),
            claimed_vm_id: None,
        }));
    }

    let interfaces = sys
        .network
        .interfaces
        .into_iter()
        .map(|i| {
            let mut stats = InterfaceStats {
                interface: i.name,
                is_up: i.is_up,
                ip_addresses: i.ip_addresses,
                ..InterfaceStats::default()
            };
            if first {
                stats.bytes_received = Some(i.bytes_received);
                stats.bytes_sent = Some(i.bytes_sent);
                stats.packets_received = Some(i.packets_received);
                stats.packets_sent = Some(i.packets_sent);
                stats.errors_in = Some(i.errors_in);
                stats.errors_out = Some(i.errors_out);
            } else {
                stats.bytes_received_per_sec = Some(i.bytes_received as f64);
                stats.bytes_sent_per_sec = Some(i.bytes_sent as f64);
                stats.packets_received_per_sec = Some(i.packets_received as f64);
                stats.packets_sent_per_sec = Some(i.packets_sent as f64);
                stats.errors_per_sec = Some((i.errors_in + i.errors_out) as f64);
            }
            stats
        })
        .collect();

    out.push(GuestMessage::SystemMetrics(SystemMetrics {
        timestamp,
        claimed_vm_id: None,
        metrics: MetricsBody {
            cpu: sys.cpu,
            memory: MemoryMetrics {
                total_kb: sys.memory.total_kb,
                used_kb: sys.memory.used_kb,
                available_kb: sys.memory.available_kb,
                swap_total_kb: sys.memory.swap_total_kb,
                swap_used_kb: sys.memory.swap_used_kb,
            },
            disk: sys.disk,
            network: NetworkMetrics { stats: interfaces },
            system: SystemLoad {
                uptime: sys.system.uptime_seconds,
                load_average: sys.system.load_average,
            },
        },
    }));

    let total = sys.processes.len() as u64;
    out.push(GuestMessage::ProcessSnapshot(ProcessSnapshot {
        timestamp,
        total_processes: Some(total),
        processes: sys
            .processes
            .into_iter()
            .map(|p| ProcessInfo {
                pid: p.id,
                ppid: p.parent_id,
                name: p.name,
                cmdline: p.command_line,
                user: None,
                state: p.status.map(|s| s.to_ascii_lowercase()),
                cpu_percent: p.cpu_usage_percent,
                memory_kb: p.memory_usage_kb,
                start_time: p.start_time,
            })
            .collect(),
    }));

    out.push(GuestMessage::PortUsage(PortUsage {
        timestamp,
        ports: sys
            .ports
            .into_iter()
            .map(|p| PortInfo {
                port: p.port,
                protocol: p.protocol.to_ascii_lowercase(),
                local_address: None,
                state: p.state.map(|s| s.to_ascii_lowercase()),
                process_id: p.process_id,
                process_name: p.process_name,
                is_listening: p.is_listening,
            })
            .collect(),
    }));

    if !sys.windows_services.is_empty() {
        let text = |v: &serde_json::Value, key: &str| {
            v.get(key).and_then(|x| x.as_str()).map(str::to_owned)
        };
        out.push(GuestMessage::ServiceInventory(ServiceInventory {
            timestamp,
            services: sys
                .windows_services
                .iter()
                .filter_map(|s| {
                    let start_type = text(s, "start_type").map(|t| start_type_in_our_words(&t));
                    Some(ServiceInfo {
                        name: text(s, "name")?,
                        description: text(s, "display_name"),
                        load_state: None,
                        active_state: text(s, "state")
                            .or_else(|| text(s, "status"))
                            .map(|x| x.to_ascii_lowercase()),
                        sub_state: None,
                        enabled: start_type.as_deref().map(starts_at_boot),
                        start_type,
                    })
                })
                .collect(),
        }));
    }
}

/// The original agent's Windows start type (WMI's `StartMode`, or the Services console's
/// words) in the words our Windows agent uses; anything else is kept, lower-cased.
fn start_type_in_our_words(word: &str) -> String {
    let lower = word.trim().to_ascii_lowercase();
    let ours = match lower.as_str() {
        "auto" | "automatic" | "auto_start" => "auto",
        "automatic (delayed start)" | "auto-delayed" | "delayed" => "auto-delayed",
        "manual" | "demand" | "demand_start" => "manual",
        "disabled" => "disabled",
        "boot" | "boot_start" => "boot",
        "system" | "system_start" => "system",
        _ => return lower,
    };
    ours.to_owned()
}

/// Whether a Windows start type (in our words) starts the service at boot.
fn starts_at_boot(start_type: &str) -> bool {
    matches!(start_type, "auto" | "auto-delayed" | "boot" | "system")
}

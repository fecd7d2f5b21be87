//! What the guest reports about itself: system metrics and inventories.
//!
//! Field names and units follow the seeds (seed 003 `system_metrics`) so that the original
//! backend and frontend read our data unchanged; additions are optional fields.

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// `system_metrics`: one periodic sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SystemMetrics {
    /// When the guest took the sample (guest clock, informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
    /// The VM id the guest believes it has. Informational only: the host's identity for a
    /// VM is its socket path.
    #[serde(
        rename = "vmId",
        alias = "vm_id",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub claimed_vm_id: Option<String>,
    /// The sample itself.
    pub metrics: MetricsBody,
}

/// The body of a `system_metrics` message.
///
/// `cpu` (with `usage_percent`) and `memory` (with `total_kb` and `used_kb`) are required, as
/// seed 001's `validateMetrics` requires them: a sample without them is refused whole rather
/// than read as zeros, which would put invented 0 % points into charts and roll-ups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct MetricsBody {
    /// CPU usage.
    pub cpu: CpuMetrics,
    /// Memory and swap.
    pub memory: MemoryMetrics,
    /// File systems and block-device throughput.
    #[serde(default)]
    pub disk: DiskMetrics,
    /// Network interfaces.
    #[serde(default)]
    pub network: NetworkMetrics,
    /// Uptime and load.
    #[serde(default)]
    pub system: SystemLoad,
}

/// CPU usage in percent (0–100), overall and per core.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct CpuMetrics {
    /// Whole-machine busy time, percent of all cores (required).
    pub usage_percent: f64,
    /// Busy time per core, percent of that core.
    #[serde(default)]
    pub cores_usage: Vec<f64>,
    /// Package temperature in °C, when a sensor exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
}

/// Memory in kB (1024 bytes), as /proc/meminfo counts it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct MemoryMetrics {
    /// MemTotal (required).
    pub total_kb: u64,
    /// Total minus available (required).
    pub used_kb: u64,
    /// MemAvailable.
    #[serde(default)]
    pub available_kb: u64,
    /// SwapTotal; absent when the guest has no swap information.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_total_kb: Option<u64>,
    /// SwapTotal minus SwapFree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_used_kb: Option<u64>,
}

/// Disk usage per mount and I/O rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct DiskMetrics {
    /// One entry per real (non-pseudo) mounted file system, no duplicates.
    #[serde(default)]
    pub usage_stats: Vec<DiskUsage>,
    /// Throughput summed over whole disks, plus per device.
    #[serde(default)]
    pub io_stats: DiskIo,
}

/// Usage of one mounted file system, in GiB (the seeds' `_gb` fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct DiskUsage {
    /// Where it is mounted.
    pub mount_point: String,
    /// File-system type (`ext4`, `xfs`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<String>,
    /// Backing device (`/dev/vda1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Size.
    #[serde(default)]
    pub total_gb: f64,
    /// Used.
    #[serde(default)]
    pub used_gb: f64,
    /// Available to unprivileged users.
    #[serde(default)]
    pub available_gb: f64,
}

/// Block I/O per second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct DiskIo {
    /// Bytes read per second.
    #[serde(default)]
    pub read_bytes_per_sec: f64,
    /// Bytes written per second.
    #[serde(default)]
    pub write_bytes_per_sec: f64,
    /// Completed reads per second.
    #[serde(default)]
    pub read_ops_per_sec: f64,
    /// Completed writes per second.
    #[serde(default)]
    pub write_ops_per_sec: f64,
    /// The same per whole device (`vda`, `nvme0n1`, `md0`, `dm-0`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceIo>,
}

/// Block I/O per second of one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct DeviceIo {
    /// Kernel name of the device.
    pub device: String,
    /// Bytes read per second.
    #[serde(default)]
    pub read_bytes_per_sec: f64,
    /// Bytes written per second.
    #[serde(default)]
    pub write_bytes_per_sec: f64,
    /// Completed reads per second.
    #[serde(default)]
    pub read_ops_per_sec: f64,
    /// Completed writes per second.
    #[serde(default)]
    pub write_ops_per_sec: f64,
}

/// Network interfaces (seed 003 calls the list `stats`; the original agent `interfaces`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct NetworkMetrics {
    /// One entry per interface.
    #[serde(default, alias = "interfaces")]
    pub stats: Vec<InterfaceStats>,
}

/// Counters (totals since boot) and rates (per second since the previous sample) of one
/// interface. Counters and rates are separate fields, never the same name for both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct InterfaceStats {
    /// Interface name as the kernel spells it.
    #[serde(alias = "name")]
    pub interface: String,
    /// Total bytes received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_received: Option<u64>,
    /// Total bytes sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_sent: Option<u64>,
    /// Total packets received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets_received: Option<u64>,
    /// Total packets sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets_sent: Option<u64>,
    /// Total receive errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors_in: Option<u64>,
    /// Total transmit errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors_out: Option<u64>,
    /// Bytes received per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_received_per_sec: Option<f64>,
    /// Bytes sent per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_sent_per_sec: Option<f64>,
    /// Packets received per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets_received_per_sec: Option<f64>,
    /// Packets sent per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets_sent_per_sec: Option<f64>,
    /// Errors (in + out) per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors_per_sec: Option<f64>,
    /// Administratively and operationally up.
    #[serde(default)]
    pub is_up: bool,
    /// IPv4 and IPv6 addresses, without prefix length.
    #[serde(default)]
    pub ip_addresses: Vec<String>,
}

/// Uptime and load average.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SystemLoad {
    /// Seconds since boot.
    #[serde(default, alias = "uptime_seconds")]
    pub uptime: u64,
    /// Load averages.
    #[serde(default)]
    pub load_average: LoadAverage,
}

/// The kernel's 1, 5 and 15 minute load averages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct LoadAverage {
    /// 1 minute.
    #[serde(default, alias = "load_1min")]
    pub load1min: f64,
    /// 5 minutes.
    #[serde(default, alias = "load_5min")]
    pub load5min: f64,
    /// 15 minutes.
    #[serde(default, alias = "load_15min")]
    pub load15min: f64,
}

/// `process_snapshot`: the top processes by CPU, then memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ProcessSnapshot {
    /// When the snapshot was taken (guest clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
    /// How many processes the guest had in all (the list is the top N of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_processes: Option<u64>,
    /// The processes.
    #[serde(default)]
    pub processes: Vec<ProcessInfo>,
}

/// One process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ProcessInfo {
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
    /// Short name (`comm`).
    #[serde(default)]
    pub name: String,
    /// Command line, arguments joined by spaces, capped by the sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Owner's user name (or numeric uid when unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Scheduler state (`running`, `sleeping`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// CPU percent of one core since the previous snapshot (may exceed 100 on several cores,
    /// never 100 × cores).
    #[serde(default)]
    pub cpu_percent: f64,
    /// Resident set size in kB.
    #[serde(default)]
    pub memory_kb: u64,
    /// Start time, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<i64>,
}

/// `port_usage`: listening sockets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PortUsage {
    /// When collected (guest clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
    /// The sockets.
    #[serde(default)]
    pub ports: Vec<PortInfo>,
}

/// One listening (TCP) or bound (UDP) socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct PortInfo {
    /// Port number.
    pub port: u16,
    /// `tcp` or `udp` (lower case).
    pub protocol: String,
    /// Local address (`0.0.0.0`, `::`, `127.0.0.1`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_address: Option<String>,
    /// Socket state (`listen` for TCP, `unconn` for UDP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Owning process, when it could be found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_id: Option<u32>,
    /// Owning process name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_name: Option<String>,
    /// Whether the socket accepts connections (TCP LISTEN) or datagrams (UDP).
    #[serde(default)]
    pub is_listening: bool,
}

/// `application_usage`: installed applications (packages).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ApplicationUsage {
    /// When collected (guest clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
    /// The package database read (`dpkg`, `rpm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The applications.
    #[serde(default)]
    pub applications: Vec<Application>,
}

/// One installed application.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Application {
    /// Package name.
    pub name: String,
    /// Installed version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Installed size in kB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_kb: Option<u64>,
    /// Architecture (`amd64`, `noarch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
}

/// `service_inventory`: system services (systemd units on Linux, the Service Control Manager's
/// services on Windows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ServiceInventory {
    /// When collected (guest clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
    /// The services.
    #[serde(default)]
    pub services: Vec<ServiceInfo>,
}

/// One service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ServiceInfo {
    /// Unit name (`ssh.service`), or the Windows service name (`Spooler`).
    pub name: String,
    /// Human description (on Windows the display name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// systemd's load state: `loaded`, `not-found`, … (absent on Windows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_state: Option<String>,
    /// `active`, `inactive`, `failed`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_state: Option<String>,
    /// `running`, `exited`, `dead`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_state: Option<String>,
    /// Whether it starts at boot, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// How it starts, in the OS's own words: on Linux systemd's unit-file state (`enabled`,
    /// `disabled`, `static`, `masked`, `indirect`, `generated`, …), on Windows the start type
    /// (`auto`, `auto-delayed`, `manual`, `disabled`, `boot`, `system`). Added after v1 first
    /// shipped: older agents leave it out, and older hosts ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_type: Option<String>,
}

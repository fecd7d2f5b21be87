//! What a simulated VM writes: its profile's sample, its identification, and the ready-made
//! buffers the flooding VMs repeat.

use std::sync::Arc;

use infinibay_protocol::message::{
    CommandResponse, PortUsage, ProcessSnapshot, SystemMetrics, VmIdentification,
};
use infinibay_protocol::samples::{self, Jitter};
use infinibay_protocol::{GuestMessage, Timestamp, encode_line};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::Profile;

/// Processes in a `process_snapshot` of the typical profile.
pub const TYPICAL_PROCESSES: usize = 150;
/// Services in the typical profile's `service_inventory`.
pub const TYPICAL_SERVICES: usize = 100;
/// Ports in the typical profile's `port_usage`.
pub const TYPICAL_PORTS: usize = 40;
/// Processes in a legacy `metrics` message (the original agent sends them all, every time).
pub const LEGACY_PROCESSES: usize = 60;
/// Ports in a legacy `metrics` message.
pub const LEGACY_PORTS: usize = 10;

/// Which v1 messages a sample contains; `configure` switches them (legacy ignores it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Collectors {
    /// `system_metrics`.
    pub system_metrics: bool,
    /// `process_snapshot` (typical profile).
    pub process_snapshot: bool,
    /// `service_inventory` (typical profile).
    pub service_inventory: bool,
    /// `port_usage` (typical profile).
    pub port_usage: bool,
}

impl Default for Collectors {
    fn default() -> Self {
        Self {
            system_metrics: true,
            process_snapshot: true,
            service_inventory: true,
            port_usage: true,
        }
    }
}

impl Collectors {
    /// Packed into a byte, for an atomic.
    pub fn to_bits(self) -> u8 {
        u8::from(self.system_metrics)
            | u8::from(self.process_snapshot) << 1
            | u8::from(self.service_inventory) << 2
            | u8::from(self.port_usage) << 3
    }

    /// Unpacked from [`Collectors::to_bits`].
    pub fn from_bits(bits: u8) -> Self {
        Self {
            system_metrics: bits & 1 != 0,
            process_snapshot: bits & 2 != 0,
            service_inventory: bits & 4 != 0,
            port_usage: bits & 8 != 0,
        }
    }
}

/// Encoded lines, ready to write in one call.
#[derive(Debug, Clone, Default)]
pub struct Lines {
    /// The bytes, every line ending in `\n`.
    pub bytes: Vec<u8>,
    /// How many lines.
    pub count: u64,
}

impl Lines {
    fn push<T: serde::Serialize>(&mut self, message: &T) {
        // Our own types always serialize; a failure would be a bug in the protocol crate, and
        // a sample without that line is the most honest thing to send.
        match encode_line(message) {
            Ok(line) => {
                self.bytes.extend_from_slice(&line);
                self.count += 1;
            }
            Err(e) => tracing::error!(target: "infinibay::sim", "cannot encode a sample line: {e}"),
        }
    }
}

/// One VM's sample generator: deterministic per VM, varying per sample.
#[derive(Debug, Clone)]
pub struct SampleSource {
    profile: Profile,
    jitter: Jitter,
    hostname: String,
    boot_uptime: u64,
}

impl SampleSource {
    /// The generator of VM `index` with id `id`.
    pub fn new(index: u64, id: Uuid, profile: Profile) -> Self {
        let seed = id.as_u64_pair().0 ^ index;
        let mut jitter = Jitter::new(seed);
        let boot_uptime = (jitter.unit() * 86_400.0) as u64;
        Self {
            profile,
            jitter,
            hostname: hostname(index),
            boot_uptime,
        }
    }

    /// The guest's host name.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// Its profile.
    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// The `vm_identification` a v1 agent sends at start and after every `hello`.
    pub fn identification(&self) -> VmIdentification {
        samples::identification(&self.hostname)
    }

    /// What the agent sends by itself when a client connects: a v1 agent's identification was
    /// written at its start and held by QEMU until the first client; the original agent sends
    /// a `connection_status` whenever it (re)opens the port.
    pub fn greeting(&self, first_client: bool) -> Lines {
        let mut lines = Lines::default();
        match self.profile {
            Profile::Legacy => lines.push(&json!({
                "type": "connection_status",
                "timestamp": Timestamp::now(),
                "state": "connected",
                "details": "VirtIO connection established with IP data successfully",
            })),
            Profile::Small | Profile::Typical if first_client => {
                lines.push(&GuestMessage::VmIdentification(self.identification()))
            }
            Profile::Small | Profile::Typical => {}
        }
        lines
    }

    /// The sample of one interval, `elapsed_secs` after the simulator started.
    pub fn sample(&mut self, elapsed_secs: u64, collectors: Collectors) -> Lines {
        let uptime = self.boot_uptime + elapsed_secs;
        let mut lines = Lines::default();
        match self.profile {
            Profile::Small => {
                if collectors.system_metrics {
                    lines.push(&GuestMessage::SystemMetrics(self.metrics(uptime)));
                }
            }
            Profile::Typical => {
                if collectors.system_metrics {
                    lines.push(&GuestMessage::SystemMetrics(self.metrics(uptime)));
                }
                if collectors.process_snapshot {
                    lines.push(&GuestMessage::ProcessSnapshot(
                        self.processes(TYPICAL_PROCESSES),
                    ));
                }
                if collectors.service_inventory {
                    lines.push(&GuestMessage::ServiceInventory(samples::typical_services(
                        TYPICAL_SERVICES,
                    )));
                }
                if collectors.port_usage {
                    lines.push(&GuestMessage::PortUsage(samples::typical_ports(
                        TYPICAL_PORTS,
                    )));
                }
            }
            Profile::Legacy => lines.push(&self.legacy_metrics(uptime)),
        }
        lines
    }

    fn metrics(&mut self, uptime: u64) -> SystemMetrics {
        samples::small_metrics(&mut self.jitter, uptime)
    }

    /// The simulated guest's processes (also what `ProcessList` answers).
    pub fn processes(&mut self, count: usize) -> ProcessSnapshot {
        samples::typical_processes(&mut self.jitter, count)
    }

    /// The original agent's `metrics` message: everything in one line, its field names.
    fn legacy_metrics(&mut self, uptime: u64) -> Value {
        let metrics = self.metrics(uptime).metrics;
        let processes = self.processes(LEGACY_PROCESSES);
        let ports: PortUsage = samples::typical_ports(LEGACY_PORTS);
        json!({
            "type": "metrics",
            "timestamp": Timestamp::now(),
            "data": { "system": {
                "cpu": {
                    "usage_percent": metrics.cpu.usage_percent,
                    "cores_usage": metrics.cpu.cores_usage,
                    "temperature": null,
                },
                "memory": {
                    "total_kb": metrics.memory.total_kb,
                    "used_kb": metrics.memory.used_kb,
                    "available_kb": metrics.memory.available_kb,
                    "swap_total_kb": metrics.memory.swap_total_kb,
                    "swap_used_kb": metrics.memory.swap_used_kb,
                },
                "disk": {
                    "usage_stats": metrics.disk.usage_stats.iter().map(|d| json!({
                        "mount_point": d.mount_point,
                        "total_gb": d.total_gb,
                        "used_gb": d.used_gb,
                        "available_gb": d.available_gb,
                        "filesystem": d.filesystem,
                    })).collect::<Vec<_>>(),
                    "io_stats": {
                        "read_bytes_per_sec": metrics.disk.io_stats.read_bytes_per_sec.round() as u64,
                        "write_bytes_per_sec": metrics.disk.io_stats.write_bytes_per_sec.round() as u64,
                        "read_ops_per_sec": metrics.disk.io_stats.read_ops_per_sec.round() as u64,
                        "write_ops_per_sec": metrics.disk.io_stats.write_ops_per_sec.round() as u64,
                    },
                },
                "network": { "interfaces": metrics.network.stats.iter().map(|i| json!({
                    "name": i.interface,
                    "bytes_received": i.bytes_received.unwrap_or(0),
                    "bytes_sent": i.bytes_sent.unwrap_or(0),
                    "packets_received": i.packets_received.unwrap_or(0),
                    "packets_sent": i.packets_sent.unwrap_or(0),
                    "errors_in": 0,
                    "errors_out": 0,
                    "ip_addresses": i.ip_addresses,
                    "is_up": i.is_up,
                })).collect::<Vec<_>>() },
                "system": {
                    "uptime_seconds": uptime,
                    "name": "Debian GNU/Linux",
                    "os_version": "12",
                    "kernel_version": "6.1.0-27-cloud-amd64",
                    "hostname": self.hostname,
                    "load_average": {
                        "load_1min": metrics.system.load_average.load1min,
                        "load_5min": metrics.system.load_average.load5min,
                        "load_15min": metrics.system.load_average.load15min,
                    },
                },
                "processes": processes.processes.iter().map(|p| json!({
                    "id": p.pid,
                    "parent_id": p.ppid,
                    "name": p.name,
                    "executable_path": null,
                    "command_line": p.cmdline,
                    // The original agent reports per-process CPU summed over cores, often >100.
                    "cpu_usage_percent": p.cpu_percent * 4.0,
                    "memory_usage_kb": p.memory_kb,
                    "status": "Sleeping",
                    "start_time": p.start_time,
                })).collect::<Vec<_>>(),
                "ports": ports.ports.iter().map(|p| json!({
                    "port": p.port,
                    "protocol": p.protocol.to_ascii_uppercase(),
                    "state": if p.is_listening { "Listen" } else { "Unconn" },
                    "process_id": p.process_id,
                    "process_name": p.process_name,
                    "is_listening": p.is_listening,
                })).collect::<Vec<_>>(),
                "windows_services": [],
            }},
        })
    }
}

/// `sim-00042`: the host name of VM 42.
pub fn hostname(index: u64) -> String {
    format!("sim-{index:05}")
}

/// Ready-made samples the flooding VMs cycle through: building 64 KB of JSON per message would
/// spend the simulator's CPU on the generator instead of on the host under test.
#[derive(Debug, Clone)]
pub struct FloodPayload {
    variants: Arc<[Lines]>,
}

impl FloodPayload {
    /// Variants of one profile's sample.
    pub fn new(profile: Profile, variants: usize) -> Self {
        let mut source = SampleSource::new(u64::MAX, Uuid::nil(), profile);
        let variants = (0..variants.max(1) as u64)
            .map(|n| source.sample(n, Collectors::default()))
            .collect();
        Self { variants }
    }

    /// The `n`th message to send (cycling).
    pub fn get(&self, n: u64) -> &Lines {
        &self.variants[(n % self.variants.len() as u64) as usize]
    }
}

/// A response as this VM's agent writes it: v1 with `type`, the original agent without.
pub fn response_line(profile: Profile, response: CommandResponse) -> Lines {
    let mut lines = Lines::default();
    match profile {
        Profile::Legacy => lines.push(&response),
        Profile::Small | Profile::Typical => lines.push(&GuestMessage::Response(response)),
    }
    lines
}

/// Any guest message as one line.
pub fn message_line(message: &GuestMessage) -> Lines {
    let mut lines = Lines::default();
    lines.push(message);
    lines
}

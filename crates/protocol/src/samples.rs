//! Deterministic, realistic messages for benchmarks, tests and the host's simulator.
//!
//! Sizes match what real guests send: [`small_metrics`] is a ~1 KB `system_metrics` of a
//! 2-core VM; [`typical_processes`], [`typical_services`] and [`typical_ports`] together are
//! the ~64 KB a busy Windows-like guest sends (150 processes, 100 services, 40 ports).

use crate::message::{
    CpuMetrics, DeviceIo, DiskIo, DiskMetrics, DiskUsage, InterfaceStats, LoadAverage,
    MemoryMetrics, MetricsBody, NetworkMetrics, PortInfo, PortUsage, ProcessInfo, ProcessSnapshot,
    ServiceInfo, ServiceInventory, SystemLoad, SystemMetrics, VmIdentification,
};
use crate::time::Timestamp;

/// A small deterministic generator (xorshift), so samples vary without a `rand` dependency.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    /// Seeded generator; the same seed gives the same sequence.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Next value in `0.0..1.0`.
    pub fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Next value in `lo..hi`, rounded to two decimals (as agents print them).
    pub fn between(&mut self, lo: f64, hi: f64) -> f64 {
        ((lo + (hi - lo) * self.unit()) * 100.0).round() / 100.0
    }
}

/// The `vm_identification` of a simulated Debian guest.
pub fn identification(hostname: &str) -> VmIdentification {
    VmIdentification {
        timestamp: Some(Timestamp::now()),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        protocol_version: crate::PROTOCOL_VERSION,
        capabilities: [
            "system_metrics",
            "process_snapshot",
            "port_usage",
            "application_usage",
            "service_inventory",
            "safe_commands",
            "unsafe_commands",
            "cancel",
        ]
        .map(String::from)
        .to_vec(),
        os: "linux".into(),
        os_version: "Debian GNU/Linux 12 (bookworm)".into(),
        kernel: "6.1.0-27-cloud-amd64".into(),
        hostname: hostname.into(),
        architecture: "x86_64".into(),
        claimed_vm_id: None,
    }
}

/// A ~1 KB `system_metrics` of a 2-core, 4 GiB guest with one disk and one NIC.
pub fn small_metrics(jitter: &mut Jitter, uptime: u64) -> SystemMetrics {
    let cores = vec![jitter.between(0.0, 100.0), jitter.between(0.0, 100.0)];
    let usage = ((cores[0] + cores[1]) / 2.0 * 100.0).round() / 100.0;
    let total_kb = 4_028_440;
    let used_kb = (jitter.between(0.2, 0.9) * total_kb as f64) as u64;
    let rx = 1_000_000 + uptime * 1500;
    SystemMetrics {
        timestamp: Some(Timestamp::now()),
        claimed_vm_id: None,
        metrics: MetricsBody {
            cpu: CpuMetrics {
                usage_percent: usage,
                cores_usage: cores,
                temperature: None,
            },
            memory: MemoryMetrics {
                total_kb,
                used_kb,
                available_kb: total_kb - used_kb,
                swap_total_kb: Some(1_048_572),
                swap_used_kb: Some(0),
            },
            disk: DiskMetrics {
                usage_stats: vec![DiskUsage {
                    mount_point: "/".into(),
                    filesystem: Some("ext4".into()),
                    device: Some("/dev/vda1".into()),
                    total_gb: 19.52,
                    used_gb: jitter.between(3.0, 9.0),
                    available_gb: 9.7,
                }],
                io_stats: DiskIo {
                    read_bytes_per_sec: jitter.between(0.0, 2e6),
                    write_bytes_per_sec: jitter.between(0.0, 1e6),
                    read_ops_per_sec: jitter.between(0.0, 50.0),
                    write_ops_per_sec: jitter.between(0.0, 30.0),
                    devices: vec![DeviceIo {
                        device: "vda".into(),
                        read_bytes_per_sec: 0.0,
                        write_bytes_per_sec: 0.0,
                        read_ops_per_sec: 0.0,
                        write_ops_per_sec: 0.0,
                    }],
                },
            },
            network: NetworkMetrics {
                stats: vec![InterfaceStats {
                    interface: "enp1s0".into(),
                    bytes_received: Some(rx),
                    bytes_sent: Some(rx / 3),
                    packets_received: Some(rx / 900),
                    packets_sent: Some(rx / 2000),
                    errors_in: Some(0),
                    errors_out: Some(0),
                    bytes_received_per_sec: Some(jitter.between(0.0, 5e4)),
                    bytes_sent_per_sec: Some(jitter.between(0.0, 2e4)),
                    packets_received_per_sec: Some(jitter.between(0.0, 60.0)),
                    packets_sent_per_sec: Some(jitter.between(0.0, 30.0)),
                    errors_per_sec: Some(0.0),
                    is_up: true,
                    ip_addresses: vec!["192.0.2.15".into(), "fe80::5054:ff:fe12:3456".into()],
                }],
            },
            system: SystemLoad {
                uptime,
                load_average: LoadAverage {
                    load1min: jitter.between(0.0, 2.0),
                    load5min: jitter.between(0.0, 1.5),
                    load15min: jitter.between(0.0, 1.0),
                },
            },
        },
    }
}

const PROCESS_NAMES: &[&str] = &[
    "systemd",
    "svchost.exe",
    "explorer.exe",
    "chrome.exe",
    "postgres",
    "nginx",
    "sshd",
    "java",
    "python3",
    "node",
    "dockerd",
    "containerd",
    "MsMpEng.exe",
    "SearchIndexer.exe",
    "code",
];

/// A `process_snapshot` of `count` processes with realistic command lines.
pub fn typical_processes(jitter: &mut Jitter, count: usize) -> ProcessSnapshot {
    let processes = (0..count)
        .map(|i| {
            let name = PROCESS_NAMES[i % PROCESS_NAMES.len()];
            ProcessInfo {
                pid: 100 + i as u32 * 7,
                ppid: Some(1 + (i as u32 % 5) * 50),
                name: name.into(),
                cmdline: Some(format!(
                    "C:\\Program Files\\Vendor\\{name} --profile-directory=Default --type=renderer --lang=en-US --field-trial-handle={i}"
                )),
                user: Some(if i % 3 == 0 { "SYSTEM" } else { "alice" }.into()),
                state: Some("sleeping".into()),
                cpu_percent: jitter.between(0.0, 25.0),
                memory_kb: (jitter.between(1_000.0, 900_000.0)) as u64,
                start_time: Some(1_795_300_000 + i as i64),
            }
        })
        .collect();
    ProcessSnapshot {
        timestamp: Some(Timestamp::now()),
        total_processes: Some(count as u64 + 40),
        processes,
    }
}

/// A `service_inventory` of `count` services.
pub fn typical_services(count: usize) -> ServiceInventory {
    ServiceInventory {
        timestamp: Some(Timestamp::now()),
        services: (0..count)
            .map(|i| ServiceInfo {
                name: format!("service-{i:03}.service"),
                description: Some(format!(
                    "Example background service number {i} providing a system facility"
                )),
                load_state: Some("loaded".into()),
                active_state: Some(if i % 4 == 0 { "inactive" } else { "active" }.into()),
                sub_state: Some(if i % 4 == 0 { "dead" } else { "running" }.into()),
                enabled: Some(i % 4 != 0),
                start_type: Some(if i % 4 == 0 { "disabled" } else { "enabled" }.into()),
            })
            .collect(),
    }
}

/// A `port_usage` of `count` listening sockets.
pub fn typical_ports(count: usize) -> PortUsage {
    PortUsage {
        timestamp: Some(Timestamp::now()),
        ports: (0..count)
            .map(|i| PortInfo {
                port: 1000 + i as u16 * 13,
                protocol: if i % 5 == 0 { "udp" } else { "tcp" }.into(),
                local_address: Some(if i % 2 == 0 { "0.0.0.0" } else { "::" }.into()),
                state: Some(if i % 5 == 0 { "unconn" } else { "listen" }.into()),
                process_id: Some(100 + i as u32 * 7),
                process_name: Some(PROCESS_NAMES[i % PROCESS_NAMES.len()].into()),
                is_listening: true,
            })
            .collect(),
    }
}

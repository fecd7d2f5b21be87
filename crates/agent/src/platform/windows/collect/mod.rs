//! Collectors on Windows, from native Win32 and NT calls (no WMI, no child process).
//!
//! | message | source |
//! | --- | --- |
//! | `system_metrics` | `NtQuerySystemInformation` (CPU per core), `GlobalMemoryStatusEx` and the page-file list, the volumes (`FindFirstVolumeW`, `GetDiskFreeSpaceExW`), `IOCTL_DISK_PERFORMANCE` per physical drive, `GetAdaptersAddresses` + `GetIfEntry2`, `GetTickCount64` |
//! | `process_snapshot` | one `NtQuerySystemInformation(SystemProcessInformation)`; command line and owner for the top N only |
//! | `port_usage` | `GetExtendedTcpTable` / `GetExtendedUdpTable` with owning pids |
//! | `application_usage` | the Uninstall keys in the registry's 64-bit and 32-bit views |
//! | `service_inventory` | the Service Control Manager (`EnumServicesStatusExW`) and each service's start type |
//!
//! Fields and units are the Linux collector's (`docs/agent-collectors.md`); what differs is
//! in `docs/windows.md`. Every list is sorted, inventories carry no timestamp.

mod apps;
mod cpu;
mod disks;
mod identity;
mod memory;
mod net;
mod ports;
pub(crate) mod process;
mod services;
mod volumes;

use std::collections::HashSet;
use std::time::Instant;

use infinibay_protocol::Timestamp;
use infinibay_protocol::message::{
    ApplicationUsage, CpuMetrics, DiskMetrics, LoadAverage, MetricsBody, NetworkMetrics, PortUsage,
    ProcessSnapshot, ServiceInventory, SystemLoad, SystemMetrics, VmIdentification,
};
use tracing::{debug, warn};

use crate::platform::rates::{round1, round2};

pub(crate) use apps::installed_programs;

/// Facts `SystemInfo` and `OsInfo` share with the collectors.
pub(crate) mod facts {
    pub(crate) use super::identity::{WindowsVersion, architecture, hostname, kernel_version};
    pub(crate) use super::memory::{memory, uptime_seconds};
}
pub(crate) use services::{list_services, start_type};

/// Where the collectors look. Windows has one live system and no tree to point them at: the
/// type exists so that both platforms build a collector the same way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roots {}

impl Roots {
    /// Always the running system.
    pub fn is_live(&self) -> bool {
        true
    }
}

/// Default number of processes in a snapshot.
pub const DEFAULT_TOP_PROCESSES: usize = 50;

/// Samples between two looks for new physical drives and network adapters.
const RESCAN_EVERY: u32 = 60;

/// Stateful collector: keeps the previous counters to turn them into rates and percentages.
#[derive(Debug)]
pub struct Collector {
    roots: Roots,
    previous_cpu: Option<cpu::Times>,
    previous_cores: Vec<cpu::Times>,
    /// When the previous `system_metrics` read its counters: the clock for rates.
    previous_sample: Option<Instant>,
    disks: disks::Disks,
    net: net::Interfaces,
    processes: process::Table,
    /// Sources that already produced a warning; later failures are logged at debug level.
    warned: HashSet<&'static str>,
}

impl Collector {
    /// A collector of the running system.
    pub fn new(roots: Roots) -> Self {
        Self {
            roots,
            previous_cpu: None,
            previous_cores: Vec::new(),
            previous_sample: None,
            disks: disks::Disks::default(),
            net: net::Interfaces::default(),
            processes: process::Table::default(),
            warned: HashSet::new(),
        }
    }

    /// A fresh collector over the same sources (the session's second one, for inventories).
    pub fn sibling(&self) -> Self {
        Self::new(self.roots.clone())
    }

    /// Where this collector reads.
    pub fn roots(&self) -> &Roots {
        &self.roots
    }

    /// One `system_metrics` sample. CPU percentages and disk rates of the first sample are
    /// averages since boot; network rates are `None` until the second sample.
    pub fn system_metrics(&mut self) -> SystemMetrics {
        let now = Instant::now();
        let elapsed = self
            .previous_sample
            .map(|before| now.duration_since(before).as_secs_f64());
        let uptime = memory::uptime_seconds();
        let metrics = MetricsBody {
            cpu: self.cpu(),
            memory: self.memory(),
            disk: DiskMetrics {
                usage_stats: volumes::usage(),
                io_stats: self.disks.sample(elapsed, uptime as f64),
            },
            network: NetworkMetrics {
                stats: self.net.sample(elapsed),
            },
            system: SystemLoad {
                uptime,
                // Windows keeps no load average (its processor queue length is a
                // performance counter, not a kernel figure); zeros, as documented.
                load_average: LoadAverage::default(),
            },
        };
        self.previous_sample = Some(now);
        SystemMetrics {
            timestamp: Some(Timestamp::now()),
            claimed_vm_id: None,
            metrics,
        }
    }

    /// The top `top_n` processes by CPU then memory. CPU % is of one CPU since the previous
    /// snapshot; processes not seen before get their average since they started.
    pub fn process_snapshot(&mut self, top_n: usize) -> ProcessSnapshot {
        match self.processes.snapshot(top_n) {
            Ok((processes, total)) => ProcessSnapshot {
                timestamp: Some(Timestamp::now()),
                total_processes: Some(total),
                processes,
            },
            Err(e) => {
                self.note("processes", &e);
                ProcessSnapshot {
                    timestamp: Some(Timestamp::now()),
                    ..ProcessSnapshot::default()
                }
            }
        }
    }

    /// Listening TCP sockets and bound UDP sockets, IPv4 and IPv6, with their owning process.
    /// No timestamp (the caller stamps what it sends, so equal inventories compare equal).
    pub fn port_usage(&mut self) -> PortUsage {
        match ports::listeners() {
            Ok(ports) => PortUsage {
                timestamp: None,
                ports,
            },
            Err(e) => {
                self.note("ports", &e);
                PortUsage::default()
            }
        }
    }

    /// Installed programs from the registry's Uninstall keys (64-bit and 32-bit views).
    pub fn applications(&mut self) -> ApplicationUsage {
        ApplicationUsage {
            timestamp: None,
            source: Some("registry".into()),
            applications: installed_programs(),
        }
    }

    /// Every Windows service (own-process and shared-process services, not drivers).
    pub fn services(&mut self) -> ServiceInventory {
        match list_services() {
            Ok(services) => ServiceInventory {
                timestamp: None,
                services,
            },
            Err(e) => {
                self.note("services", &e);
                ServiceInventory::default()
            }
        }
    }

    /// `os`, `os_version`, `kernel`, `hostname`, `architecture` for `vm_identification`.
    pub fn identification(&self) -> VmIdentification {
        identity::identification()
    }

    fn cpu(&mut self) -> CpuMetrics {
        let cores = match cpu::per_core() {
            Ok(cores) if !cores.is_empty() => cores,
            Ok(_) => return CpuMetrics::default(),
            Err(e) => {
                self.note("cpu", &e);
                return CpuMetrics::default();
            }
        };
        let all = cpu::Times::sum(&cores);
        let cores_usage = cores
            .iter()
            .enumerate()
            .map(|(i, now)| cpu::usage_percent(self.previous_cores.get(i).copied(), *now))
            .collect();
        let usage_percent = cpu::usage_percent(self.previous_cpu, all);
        self.previous_cpu = Some(all);
        self.previous_cores = cores;
        CpuMetrics {
            usage_percent,
            cores_usage,
            // The only source would be WMI's MSAcpi_ThermalZoneTemperature (admin only, and
            // virtual machines expose no sensor): not collected, as on most Linux VMs.
            temperature: None,
        }
    }

    fn memory(&mut self) -> infinibay_protocol::message::MemoryMetrics {
        match memory::memory() {
            Ok(m) => m,
            Err(e) => {
                self.note("memory", &e);
                Default::default()
            }
        }
    }

    fn note(&mut self, source: &'static str, error: &std::io::Error) {
        if self.warned.insert(source) {
            warn!(source, %error, "collector source failed (repeats are logged at debug level)");
        } else {
            debug!(source, %error, "collector source failed again");
        }
    }
}

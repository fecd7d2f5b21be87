//! Collectors reading /proc, /sys and the package databases.
//!
//! Metrics (`system_metrics`, `process_snapshot`) come from kernel files only and never
//! spawn a process. The inventories (`port_usage`, `application_usage`,
//! `service_inventory`) run on their own, slower cadence; of them only the service list
//! (systemctl) and rpm-based package lists start a tool. Every output is sorted so that the
//! service loop can compare two inventories with `==` and send only changes. What is read
//! where, and the choices made, are in `docs/agent-collectors.md`.

mod cpu;
mod disks;
mod identity;
mod load;
mod memory;
mod mounts;
mod net;
mod packages;
mod ports;
mod process;
mod read;
mod services;
mod thermal;
mod tool;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use infinibay_protocol::Timestamp;
use infinibay_protocol::message::{
    ApplicationUsage, CpuMetrics, DiskMetrics, MetricsBody, NetworkMetrics, PortUsage,
    ProcessSnapshot, ServiceInventory, SystemLoad, SystemMetrics, VmIdentification,
};
use tracing::{debug, warn};

pub use process::KernelUnits;

use cpu::{CpuTimes, ProcStat};
use disks::{DiskClass, DiskCounters};
use net::NetCounters;
use read::{CollectError, read_into, read_kept_open, read_trimmed, text};

/// Where the collectors look; tests point these at captured fixtures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    /// Normally `/proc`.
    pub proc: PathBuf,
    /// Normally `/sys`.
    pub sys: PathBuf,
    /// Normally `/` (for `/etc/os-release`, `/var/lib/dpkg/status`, mount points).
    pub root: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Self {
            proc: "/proc".into(),
            sys: "/sys".into(),
            root: "/".into(),
        }
    }
}

impl Roots {
    /// A tree laid out like a root file system: `<base>/proc`, `<base>/sys`, `<base>/etc`….
    pub fn under(base: impl Into<PathBuf>) -> Self {
        let base = base.into();
        Self {
            proc: base.join("proc"),
            sys: base.join("sys"),
            root: base,
        }
    }

    /// True for the running system's own `/proc`, `/sys` and `/`: only then are addresses
    /// asked from the kernel (`getifaddrs`) and tools (systemctl) run.
    pub fn is_live(&self) -> bool {
        *self == Self::default()
    }
}

/// Default number of processes in a snapshot.
pub const DEFAULT_TOP_PROCESSES: usize = 50;

/// How long an inventory tool (systemctl, rpm) may run before it is killed.
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// While no temperature sensor is found, look again every this many samples (drivers such
/// as coretemp can load after the agent starts).
const SENSOR_RESCAN_EVERY: u32 = 60;

/// Stateful collector: keeps the previous counters to turn them into rates and percentages.
#[derive(Debug)]
pub struct Collector {
    roots: Roots,
    units: KernelUnits,
    /// Reused for every kernel file read by `system_metrics`.
    buf: Vec<u8>,
    /// Whether the roots are the running system's (see [`Roots::is_live`]).
    live: bool,
    /// The /proc files read every sample, kept open on the live system (see
    /// `read::read_kept_open`).
    kept_open: HashMap<PathBuf, std::fs::File>,
    stat: ProcStat,
    previous_cpu: Option<CpuTimes>,
    previous_cores: Vec<(u32, CpuTimes)>,
    /// `/proc/uptime` at the previous `system_metrics`: the clock for disk and network rates.
    previous_uptime: Option<f64>,
    previous_disks: Vec<DiskCounters>,
    disk_classes: HashMap<String, DiskClass>,
    previous_nets: Vec<NetCounters>,
    sensor: Option<PathBuf>,
    samples_until_sensor_scan: u32,
    processes: process::ProcessTable,
    users: process::UserNames,
    /// Sources that already produced a warning; later failures are logged at debug level.
    warned: HashSet<&'static str>,
}

impl Collector {
    /// A collector over `roots`, with the running kernel's clock tick and page size.
    pub fn new(roots: Roots) -> Self {
        Self::with_kernel_units(roots, KernelUnits::of_running_kernel())
    }

    /// A collector whose `/proc` was captured on a kernel with other units (fixtures).
    pub fn with_kernel_units(roots: Roots, units: KernelUnits) -> Self {
        Self {
            live: roots.is_live(),
            kept_open: HashMap::new(),
            roots,
            units,
            buf: Vec::with_capacity(8 * 1024),
            stat: ProcStat::default(),
            previous_cpu: None,
            previous_cores: Vec::new(),
            previous_uptime: None,
            previous_disks: Vec::new(),
            disk_classes: HashMap::new(),
            previous_nets: Vec::new(),
            sensor: None,
            samples_until_sensor_scan: 0,
            processes: process::ProcessTable::default(),
            users: process::UserNames::default(),
            warned: HashSet::new(),
        }
    }

    /// A fresh collector over the same sources (the session's second one, for inventories).
    pub fn sibling(&self) -> Self {
        Self::with_kernel_units(self.roots.clone(), self.units)
    }

    /// Where this collector reads.
    pub fn roots(&self) -> &Roots {
        &self.roots
    }

    /// One `system_metrics` sample.
    ///
    /// CPU percentages and disk rates of the first sample are averages since boot; network
    /// rates are `None` until the second sample. Sources that cannot be read leave their
    /// part at its default (and are logged once).
    pub fn system_metrics(&mut self) -> SystemMetrics {
        let uptime = self.uptime();
        let elapsed = match (self.previous_uptime, uptime) {
            (Some(before), Some(now)) => Some(now - before),
            _ => None,
        };
        let metrics = MetricsBody {
            cpu: self.cpu(),
            memory: self.memory(),
            disk: DiskMetrics {
                usage_stats: self.disk_usage(),
                io_stats: self.disk_io(elapsed, uptime),
            },
            network: NetworkMetrics {
                stats: self.network(elapsed),
            },
            system: SystemLoad {
                uptime: uptime.map(|u| u as u64).unwrap_or(0),
                load_average: self.load_average(),
            },
        };
        if uptime.is_some() {
            self.previous_uptime = uptime;
        }
        SystemMetrics {
            timestamp: Some(Timestamp::now()),
            claimed_vm_id: None,
            metrics,
        }
    }

    /// The top `top_n` processes by CPU then memory (see [`DEFAULT_TOP_PROCESSES`]).
    ///
    /// CPU % is of one CPU since the previous snapshot; processes not seen before (all of
    /// them at the first call) get their average since they started.
    pub fn process_snapshot(&mut self, top_n: usize) -> ProcessSnapshot {
        let uptime = self.uptime().unwrap_or(0.0);
        let path = self.roots.proc.join("stat");
        match self.read_sampled(&path) {
            Ok(()) => cpu::parse_proc_stat(&text(&self.buf), &mut self.stat),
            Err(e) => self.note("proc_stat", &e),
        }
        let clock = process::Clock {
            uptime_secs: uptime,
            boot_time: self.stat.btime,
            cpus: self.stat.cores.len(),
        };
        self.users.refresh(&self.roots.root.join("etc/passwd"));
        let (processes, total) =
            self.processes
                .snapshot(&self.roots.proc, self.units, clock, &self.users, top_n);
        ProcessSnapshot {
            timestamp: Some(Timestamp::now()),
            total_processes: Some(total),
            processes,
        }
    }

    /// Listening TCP sockets and unbound-peer UDP sockets, IPv4 and IPv6, with their owning
    /// process. Sorted by protocol, port, address; no timestamp (the caller stamps what it
    /// sends, so that equal inventories compare equal).
    pub fn port_usage(&mut self) -> PortUsage {
        let mut listeners = Vec::new();
        for (file, protocol) in [
            ("net/tcp", "tcp"),
            ("net/tcp6", "tcp"),
            ("net/udp", "udp"),
            ("net/udp6", "udp"),
        ] {
            let path = self.roots.proc.join(file);
            match read_into(&path, &mut self.buf) {
                Ok(()) => listeners.extend(ports::parse_socket_table(&text(&self.buf), protocol)),
                // A kernel without IPv6 has no tcp6/udp6.
                Err(e) => self.note("proc_net_sockets", &e),
            }
        }
        let inodes: Vec<u64> = listeners
            .iter()
            .map(|l| l.inode)
            .filter(|&i| i != 0)
            .collect();
        let owners = ports::socket_owners(&self.roots.proc, &inodes);
        let proc_dir = self.roots.proc.clone();
        let name_of = |pid: u32| read_trimmed(&proc_dir.join(pid.to_string()).join("comm")).ok();
        PortUsage {
            timestamp: None,
            ports: ports::port_list(&listeners, &owners, name_of),
        }
    }

    /// Installed packages from dpkg's status file, or from rpm when there is no dpkg.
    /// Sorted by name and architecture; no timestamp (see [`Collector::port_usage`]).
    pub fn applications(&mut self) -> ApplicationUsage {
        let dpkg_status = self.roots.root.join("var/lib/dpkg/status");
        match std::fs::File::open(&dpkg_status) {
            Ok(file) => {
                let reader = std::io::BufReader::with_capacity(16 * 1024, file);
                match packages::parse_dpkg_status(reader) {
                    Ok(applications) => {
                        return ApplicationUsage {
                            timestamp: None,
                            source: Some("dpkg".into()),
                            applications,
                        };
                    }
                    Err(e) => self.note("dpkg_status", &CollectError::read(&dpkg_status, e)),
                }
            }
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                self.note("dpkg_status", &CollectError::read(&dpkg_status, e));
            }
            Err(_) => {}
        }
        if let Some(db_dir) = packages::find_rpm_db(&self.roots.root) {
            match packages::query_rpm(&self.roots.root, db_dir, TOOL_TIMEOUT) {
                Ok(applications) => {
                    return ApplicationUsage {
                        timestamp: None,
                        source: Some("rpm".into()),
                        applications,
                    };
                }
                Err(e) => self.note("rpm", &e),
            }
        }
        ApplicationUsage::default()
    }

    /// systemd services (loaded units and installed unit files), sorted by name; empty
    /// without running anything when systemd is not the init (containers, busybox guests)
    /// or when the roots are not the live system. No timestamp (see
    /// [`Collector::port_usage`]).
    pub fn services(&mut self) -> ServiceInventory {
        if !self.roots.is_live() || !services::systemd_running(&self.roots.root) {
            return ServiceInventory::default();
        }
        match services::query_systemd(TOOL_TIMEOUT) {
            Ok(services) => ServiceInventory {
                timestamp: None,
                services,
            },
            Err(e) => {
                self.note("systemctl", &e);
                ServiceInventory::default()
            }
        }
    }

    /// What the agent says of the machine in `vm_identification`: `os`, `os_version`,
    /// `kernel`, `hostname`, `architecture`. `agent_version`, `capabilities` and the
    /// timestamp are the caller's.
    pub fn identification(&self) -> VmIdentification {
        let os_version = ["etc/os-release", "usr/lib/os-release"]
            .iter()
            .find_map(|file| {
                let raw = std::fs::read(self.roots.root.join(file)).ok()?;
                identity::pretty_name(&text(&raw))
            })
            .unwrap_or_default();
        let kernel_file = |name: &str| {
            read_trimmed(&self.roots.proc.join("sys/kernel").join(name)).unwrap_or_default()
        };
        VmIdentification {
            os: "linux".into(),
            os_version,
            kernel: kernel_file("osrelease"),
            hostname: kernel_file("hostname"),
            architecture: identity::machine(),
            ..VmIdentification::default()
        }
    }

    fn note(&mut self, source: &'static str, error: &CollectError) {
        if error.is_absent() {
            debug!(source, %error, "collector source absent");
        } else if self.warned.insert(source) {
            warn!(source, %error, "collector source failed (repeats are logged at debug level)");
        } else {
            debug!(source, %error, "collector source failed again");
        }
    }

    /// Read a /proc file that is read every sample into `buf`: through a handle kept open on
    /// the live system; opened each time in a fixture tree (whose files tests may replace).
    fn read_sampled(&mut self, path: &Path) -> Result<(), CollectError> {
        if self.live {
            read_kept_open(&mut self.kept_open, path, &mut self.buf)
        } else {
            read_into(path, &mut self.buf)
        }
    }

    fn uptime(&mut self) -> Option<f64> {
        let path = self.roots.proc.join("uptime");
        match self.read_sampled(&path) {
            Ok(()) => {
                let uptime = load::parse_uptime(&text(&self.buf));
                if uptime.is_none() {
                    self.note("uptime", &CollectError::format(&path, "no seconds"));
                }
                uptime
            }
            Err(e) => {
                self.note("uptime", &e);
                None
            }
        }
    }

    fn cpu(&mut self) -> CpuMetrics {
        let path = self.roots.proc.join("stat");
        if let Err(e) = self.read_sampled(&path) {
            self.note("proc_stat", &e);
            return CpuMetrics::default();
        }
        cpu::parse_proc_stat(&text(&self.buf), &mut self.stat);
        let Some(all) = self.stat.all else {
            self.note("proc_stat", &CollectError::format(&path, "no cpu line"));
            return CpuMetrics::default();
        };
        let usage_percent = cpu::usage_percent(self.previous_cpu, all);
        let cores_usage = self
            .stat
            .cores
            .iter()
            .enumerate()
            .map(|(position, (index, now))| {
                // Same position is the usual case; a search only after a CPU went offline.
                let before = match self.previous_cores.get(position) {
                    Some((i, t)) if i == index => Some(*t),
                    _ => self
                        .previous_cores
                        .iter()
                        .find(|(i, _)| i == index)
                        .map(|(_, t)| *t),
                };
                cpu::usage_percent(before, *now)
            })
            .collect();
        self.previous_cpu = Some(all);
        self.previous_cores.clone_from(&self.stat.cores);
        CpuMetrics {
            usage_percent,
            cores_usage,
            temperature: self.temperature(),
        }
    }

    fn temperature(&mut self) -> Option<f64> {
        if self.sensor.is_none() {
            if self.samples_until_sensor_scan == 0 {
                self.sensor = thermal::find_sensor(&self.roots.sys);
                self.samples_until_sensor_scan = SENSOR_RESCAN_EVERY;
            }
            self.samples_until_sensor_scan -= 1;
        }
        let celsius = thermal::read_celsius(self.sensor.as_deref()?);
        if celsius.is_none() {
            // The sensor vanished or broke; look for another one next time.
            self.sensor = None;
            self.samples_until_sensor_scan = 0;
        }
        celsius
    }

    fn memory(&mut self) -> infinibay_protocol::message::MemoryMetrics {
        let path = self.roots.proc.join("meminfo");
        if let Err(e) = self.read_sampled(&path) {
            self.note("meminfo", &e);
            return Default::default();
        }
        memory::parse_meminfo(&text(&self.buf)).unwrap_or_else(|| {
            self.note("meminfo", &CollectError::format(&path, "no MemTotal"));
            Default::default()
        })
    }

    fn disk_usage(&mut self) -> Vec<infinibay_protocol::message::DiskUsage> {
        let path = self.roots.proc.join("mounts");
        if let Err(e) = self.read_sampled(&path) {
            self.note("mounts", &e);
            return Vec::new();
        }
        let mounts = mounts::parse_mounts(&text(&self.buf));
        mounts::select_reported(&mounts)
            .iter()
            .filter_map(|m| mounts::usage(&self.roots.root, m))
            .collect()
    }

    fn disk_io(
        &mut self,
        elapsed: Option<f64>,
        uptime: Option<f64>,
    ) -> infinibay_protocol::message::DiskIo {
        let path = self.roots.proc.join("diskstats");
        if let Err(e) = self.read_sampled(&path) {
            self.note("diskstats", &e);
            return Default::default();
        }
        let counters = disks::parse_diskstats(&text(&self.buf));
        let sys_block = self.roots.sys.join("block");
        let sys_block = sys_block.is_dir().then_some(sys_block);
        let classified: Vec<(DiskCounters, DiskClass)> = counters
            .into_iter()
            .map(|c| {
                let class = *self
                    .disk_classes
                    .entry(c.name.clone())
                    .or_insert_with(|| disks::classify(&c.name, sys_block.as_deref()));
                (c, class)
            })
            .collect();
        // First sample: counters since boot over the uptime.
        let (previous, interval) = match elapsed {
            Some(secs) => (Some(self.previous_disks.as_slice()), Some(secs)),
            None => (None, uptime),
        };
        let io = disks::rates(&classified, previous, interval.unwrap_or(0.0));
        self.previous_disks = classified
            .into_iter()
            .filter(|(_, class)| *class != DiskClass::Skip)
            .map(|(c, _)| c)
            .collect();
        io
    }

    fn network(
        &mut self,
        elapsed: Option<f64>,
    ) -> Vec<infinibay_protocol::message::InterfaceStats> {
        let path = self.roots.proc.join("net/dev");
        if let Err(e) = self.read_sampled(&path) {
            self.note("net_dev", &e);
            return Vec::new();
        }
        let mut counters = net::parse_net_dev(&text(&self.buf));
        counters.sort_by(|a, b| a.name.cmp(&b.name));
        let net::LiveInterfaces {
            mut addresses,
            flags,
        } = self.interfaces();
        let stats = counters
            .iter()
            .map(|now| {
                let previous = self.previous_nets.iter().find(|p| p.name == now.name);
                let up = match flags.get(&now.name) {
                    Some(&flags) => net::flags_say_up(flags),
                    None => net::sysfs_is_up(&self.roots.sys, &now.name),
                };
                net::interface_stats(
                    now,
                    elapsed.and(previous),
                    elapsed.unwrap_or(0.0),
                    up,
                    net::address_strings(addresses.remove(&now.name).unwrap_or_default()),
                )
            })
            .collect();
        self.previous_nets = counters;
        stats
    }

    /// Addresses and flags from the kernel (`getifaddrs`) on the live system; a fixture tree
    /// has only the IPv6 addresses /proc lists, and its interfaces' state is read from sysfs.
    fn interfaces(&mut self) -> net::LiveInterfaces {
        if self.roots.is_live() {
            match net::getifaddrs_interfaces() {
                Ok(live) => return live,
                Err(e) => self.note(
                    "getifaddrs",
                    &CollectError::Tool {
                        program: "getifaddrs",
                        detail: e.to_string(),
                    },
                ),
            }
        }
        // A fixture tree (or a failed getifaddrs) has only what /proc lists: IPv6.
        let mut live = net::LiveInterfaces::default();
        let path = self.roots.proc.join("net/if_inet6");
        if read_into(&path, &mut self.buf).is_ok() {
            net::parse_if_inet6(&text(&self.buf), &mut live.addresses);
        }
        live
    }

    fn load_average(&mut self) -> infinibay_protocol::message::LoadAverage {
        let path = self.roots.proc.join("loadavg");
        if let Err(e) = self.read_sampled(&path) {
            self.note("loadavg", &e);
            return Default::default();
        }
        load::parse_loadavg(&text(&self.buf)).unwrap_or_else(|| {
            self.note("loadavg", &CollectError::format(&path, "not three numbers"));
            Default::default()
        })
    }
}

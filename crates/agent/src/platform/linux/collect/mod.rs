//! Collectors reading /proc, /sys and the package databases. (Being written; the API below is
//! the contract the agent's service loop is built against.)

use std::path::PathBuf;

use infinibay_protocol::message::{
    ApplicationUsage, PortUsage, ProcessSnapshot, ServiceInventory, SystemMetrics,
    VmIdentification,
};

/// Where the collectors look; tests point these at captured fixtures.
#[derive(Debug, Clone)]
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

/// Stateful collector: keeps the previous counters to turn them into rates and percentages.
#[derive(Debug)]
pub struct Collector {
    roots: Roots,
}

impl Collector {
    /// A collector over `roots`.
    pub fn new(roots: Roots) -> Self {
        Self { roots }
    }

    /// Where this collector reads.
    pub fn roots(&self) -> &Roots {
        &self.roots
    }

    /// One `system_metrics` sample.
    pub fn system_metrics(&mut self) -> SystemMetrics {
        SystemMetrics::default()
    }

    /// The top `top_n` processes by CPU then memory.
    pub fn process_snapshot(&mut self, _top_n: usize) -> ProcessSnapshot {
        ProcessSnapshot::default()
    }

    /// Listening sockets.
    pub fn port_usage(&mut self) -> PortUsage {
        PortUsage::default()
    }

    /// Installed applications.
    pub fn applications(&mut self) -> ApplicationUsage {
        ApplicationUsage::default()
    }

    /// Services.
    pub fn services(&mut self) -> ServiceInventory {
        ServiceInventory::default()
    }

    /// What the agent says of the machine in `vm_identification` (agent fields left empty).
    pub fn identification(&self) -> VmIdentification {
        VmIdentification::default()
    }
}

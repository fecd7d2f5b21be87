//! `--once` and `--bench-collect`: the collectors outside the service loop.

use std::time::Duration;

use infinibay_protocol::message::VmIdentification;
use serde::Serialize;

use crate::platform::collect::Collector;

/// Every collector's output once.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// What `vm_identification` would say.
    pub vm_identification: VmIdentification,
    /// `system_metrics` (rates and CPU % over the priming gap).
    pub system_metrics: infinibay_protocol::message::SystemMetrics,
    /// `process_snapshot`.
    pub process_snapshot: infinibay_protocol::message::ProcessSnapshot,
    /// `port_usage`.
    pub port_usage: infinibay_protocol::message::PortUsage,
    /// `application_usage`.
    pub application_usage: infinibay_protocol::message::ApplicationUsage,
    /// `service_inventory`.
    pub service_inventory: infinibay_protocol::message::ServiceInventory,
}

/// Take one snapshot. CPU percentages and rates need two readings: the first primes the
/// counters, `gap` later the second is reported.
pub fn take(
    collector: &mut Collector,
    identification: VmIdentification,
    top_n: usize,
    gap: Duration,
) -> Snapshot {
    let _ = collector.system_metrics();
    let _ = collector.process_snapshot(top_n);
    std::thread::sleep(gap);
    Snapshot {
        vm_identification: identification,
        system_metrics: collector.system_metrics(),
        process_snapshot: collector.process_snapshot(top_n),
        port_usage: collector.port_usage(),
        application_usage: collector.applications(),
        service_inventory: collector.services(),
    }
}

/// CPU (user + system) this process used so far.
pub fn cpu_time() -> Duration {
    crate::platform::info::process_cpu_time()
}

/// Result of `--bench-collect`; a collector left out by `--bench-only` has no figure.
#[derive(Debug, Serialize)]
pub struct CollectBench {
    /// Cycles per collector.
    pub cycles: u32,
    /// Processes seen by the last snapshot (all, not only the top N).
    pub processes: u64,
    /// CPU µs per `system_metrics`.
    pub system_metrics_cpu_us: Option<f64>,
    /// CPU µs per `process_snapshot`.
    pub process_snapshot_cpu_us: Option<f64>,
    /// CPU µs per `port_usage`.
    pub port_usage_cpu_us: Option<f64>,
}

/// Run each collector (or only the one named: `system_metrics`, `process_snapshot`,
/// `port_usage`) `cycles` times and measure this process's CPU per call. Measuring one at a
/// time lets an outside observer add the CPU other processes spend for it (wine's server).
pub fn bench(
    collector: &mut Collector,
    cycles: u32,
    top_n: usize,
    only: Option<&str>,
) -> CollectBench {
    let cycles = cycles.max(1);
    let wanted = |name: &str| only.is_none_or(|o| o == name);
    let per = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(cycles);
    let mut result = CollectBench {
        cycles,
        processes: 0,
        system_metrics_cpu_us: None,
        process_snapshot_cpu_us: None,
        port_usage_cpu_us: None,
    };
    if wanted("system_metrics") {
        let _ = collector.system_metrics();
        let t = cpu_time();
        for _ in 0..cycles {
            std::hint::black_box(collector.system_metrics());
        }
        result.system_metrics_cpu_us = Some(per(cpu_time() - t));
    }
    let _ = collector.process_snapshot(top_n);
    if wanted("process_snapshot") {
        let t = cpu_time();
        for _ in 0..cycles {
            let s = collector.process_snapshot(top_n);
            result.processes = s.total_processes.unwrap_or(s.processes.len() as u64);
            std::hint::black_box(s);
        }
        result.process_snapshot_cpu_us = Some(per(cpu_time() - t));
    } else {
        let s = collector.process_snapshot(0);
        result.processes = s.total_processes.unwrap_or(0);
    }
    if wanted("port_usage") {
        let t = cpu_time();
        for _ in 0..cycles {
            std::hint::black_box(collector.port_usage());
        }
        result.port_usage_cpu_us = Some(per(cpu_time() - t));
    }
    result
}

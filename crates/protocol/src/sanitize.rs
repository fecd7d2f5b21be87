//! Validation and sanitising of guest messages: every guest is hostile.
//!
//! Decoding already refused what JSON or the types cannot hold (NaN, 1e309, negative counters,
//! wrong types, nesting beyond serde_json's depth limit). What remains is made safe here, in
//! place: numbers forced into their ranges, lists capped, strings capped and stripped of control
//! characters. The result says how many fields had to be changed, so that the host can count
//! and log misbehaving guests without refusing data that is merely odd.

use crate::message::{
    Application, CommandResponse, DiskUsage, GuestMessage, InterfaceStats, PortInfo, ProcessInfo,
    ServiceInfo, SystemMetrics,
};

/// Caps applied to guest data. The defaults are generous for real guests and small enough that
/// one guest cannot make the host store or publish megabytes per sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Names, labels, states, versions.
    pub max_short_string: usize,
    /// Command lines, descriptions, error messages.
    pub max_long_string: usize,
    /// Command output (stdout, stderr) kept per stream.
    pub max_output: usize,
    /// Per-core CPU entries.
    pub max_cores: usize,
    /// Mounted file systems, block devices, interfaces.
    pub max_devices: usize,
    /// Addresses per interface.
    pub max_addresses: usize,
    /// Processes per snapshot.
    pub max_processes: usize,
    /// Listening sockets.
    pub max_ports: usize,
    /// Installed applications.
    pub max_applications: usize,
    /// Services.
    pub max_services: usize,
    /// Capabilities in `vm_identification`.
    pub max_capabilities: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_short_string: 256,
            max_long_string: 4096,
            max_output: 1024 * 1024,
            max_cores: 1024,
            max_devices: 256,
            max_addresses: 64,
            max_processes: 1000,
            max_ports: 4096,
            max_applications: 20_000,
            max_services: 5000,
            max_capabilities: 64,
        }
    }
}

/// What sanitising changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Number of values that had to be clamped, cut or cleaned.
    pub fixes: u32,
}

impl Report {
    /// Whether the message was clean.
    pub fn is_clean(&self) -> bool {
        self.fixes == 0
    }
}

struct Fixer<'a> {
    limits: &'a Limits,
    fixes: u32,
}

impl Fixer<'_> {
    fn note(&mut self, changed: bool) {
        if changed {
            self.fixes += 1;
        }
    }

    /// Strip control characters (all of them in short strings) and cap the length at a char
    /// boundary.
    fn text(&mut self, s: &mut String, max: usize, keep_layout: bool) {
        let is_bad = |c: char| {
            c.is_control() && !(keep_layout && matches!(c, '\n' | '\t' | '\r'))
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{FEFF}')
        };
        // Printable ASCII (the common case: names, mount points, addresses) has nothing to
        // strip; checking bytes is much cheaper than decoding chars.
        let printable_ascii = s.bytes().all(|b| (0x20..0x7f).contains(&b));
        if !printable_ascii && s.chars().any(is_bad) {
            s.retain(|c| !is_bad(c));
            self.fixes += 1;
        }
        if s.len() > max {
            let mut cut = max;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            self.fixes += 1;
        }
    }

    fn short(&mut self, s: &mut String) {
        let max = self.limits.max_short_string;
        self.text(s, max, false);
    }

    fn long(&mut self, s: &mut String) {
        let max = self.limits.max_long_string;
        self.text(s, max, false);
    }

    fn opt_short(&mut self, s: &mut Option<String>) {
        if let Some(s) = s {
            self.short(s);
        }
    }

    fn opt_long(&mut self, s: &mut Option<String>) {
        if let Some(s) = s {
            self.long(s);
        }
    }

    fn cap<T>(&mut self, v: &mut Vec<T>, max: usize) {
        if v.len() > max {
            v.truncate(max);
            self.fixes += 1;
        }
    }

    /// Finite (guaranteed by decoding) and within `lo..=hi`.
    fn range(&mut self, x: &mut f64, lo: f64, hi: f64) {
        let fixed = if x.is_nan() { lo } else { x.clamp(lo, hi) };
        self.note(fixed != *x || x.is_nan());
        *x = fixed;
    }
}

/// Upper bound for any rate or size in f64 fields: 1 EB/s or 1 EB. Anything larger is absurd.
const ABSURD: f64 = 1e18;

/// Sanitise one guest message in place.
pub fn sanitize(message: &mut GuestMessage, limits: &Limits) -> Report {
    let mut f = Fixer { limits, fixes: 0 };
    match message {
        GuestMessage::VmIdentification(id) => {
            for s in [
                &mut id.agent_version,
                &mut id.os,
                &mut id.os_version,
                &mut id.kernel,
                &mut id.hostname,
                &mut id.architecture,
            ] {
                f.short(s);
            }
            f.opt_short(&mut id.claimed_vm_id);
            f.cap(&mut id.capabilities, limits.max_capabilities);
            id.capabilities.iter_mut().for_each(|c| f.short(c));
        }
        GuestMessage::SystemMetrics(m) => system_metrics(&mut f, m),
        GuestMessage::ProcessSnapshot(p) => {
            f.cap(&mut p.processes, limits.max_processes);
            p.processes.iter_mut().for_each(|p| process(&mut f, p));
        }
        GuestMessage::PortUsage(p) => {
            f.cap(&mut p.ports, limits.max_ports);
            p.ports.iter_mut().for_each(|p| port(&mut f, p));
        }
        GuestMessage::ApplicationUsage(a) => {
            f.opt_short(&mut a.source);
            f.cap(&mut a.applications, limits.max_applications);
            a.applications
                .iter_mut()
                .for_each(|a| application(&mut f, a));
        }
        GuestMessage::ServiceInventory(s) => {
            f.cap(&mut s.services, limits.max_services);
            s.services.iter_mut().for_each(|s| service(&mut f, s));
        }
        GuestMessage::Response(r) => response(&mut f, r),
        GuestMessage::Error(e) => {
            f.opt_short(&mut e.code);
            f.long(&mut e.error);
            f.opt_long(&mut e.details);
        }
        GuestMessage::Pong(p) => f.opt_short(&mut p.id),
    }
    Report { fixes: f.fixes }
}

fn system_metrics(f: &mut Fixer<'_>, m: &mut SystemMetrics) {
    f.opt_short(&mut m.claimed_vm_id);
    let body = &mut m.metrics;

    let cpu = &mut body.cpu;
    f.range(&mut cpu.usage_percent, 0.0, 100.0);
    f.cap(&mut cpu.cores_usage, f.limits.max_cores);
    cpu.cores_usage
        .iter_mut()
        .for_each(|c| f.range(c, 0.0, 100.0));
    if let Some(t) = cpu.temperature.as_mut() {
        // Beyond this range no sensor reading is real; keep the sample, drop the reading.
        if !(-100.0..=250.0).contains(t) {
            cpu.temperature = None;
            f.fixes += 1;
        }
    }

    let mem = &mut body.memory;
    if mem.used_kb > mem.total_kb {
        mem.used_kb = mem.total_kb;
        f.fixes += 1;
    }
    if mem.available_kb > mem.total_kb {
        mem.available_kb = mem.total_kb;
        f.fixes += 1;
    }
    if let (Some(total), Some(used)) = (mem.swap_total_kb, mem.swap_used_kb.as_mut())
        && *used > total
    {
        *used = total;
        f.fixes += 1;
    }

    let disk = &mut body.disk;
    f.cap(&mut disk.usage_stats, f.limits.max_devices);
    let before = disk.usage_stats.len();
    let mut seen = std::collections::HashSet::new();
    disk.usage_stats
        .retain(|d| seen.insert(d.mount_point.clone()));
    f.note(before != disk.usage_stats.len());
    disk.usage_stats.iter_mut().for_each(|d| disk_usage(f, d));
    let io = &mut disk.io_stats;
    for x in [
        &mut io.read_bytes_per_sec,
        &mut io.write_bytes_per_sec,
        &mut io.read_ops_per_sec,
        &mut io.write_ops_per_sec,
    ] {
        f.range(x, 0.0, ABSURD);
    }
    f.cap(&mut io.devices, f.limits.max_devices);
    for dev in &mut io.devices {
        f.short(&mut dev.device);
        for x in [
            &mut dev.read_bytes_per_sec,
            &mut dev.write_bytes_per_sec,
            &mut dev.read_ops_per_sec,
            &mut dev.write_ops_per_sec,
        ] {
            f.range(x, 0.0, ABSURD);
        }
    }

    f.cap(&mut body.network.stats, f.limits.max_devices);
    body.network.stats.iter_mut().for_each(|i| interface(f, i));

    let load = &mut body.system.load_average;
    for x in [&mut load.load1min, &mut load.load5min, &mut load.load15min] {
        f.range(x, 0.0, 1e6);
    }
}

fn disk_usage(f: &mut Fixer<'_>, d: &mut DiskUsage) {
    f.short(&mut d.mount_point);
    f.opt_short(&mut d.filesystem);
    f.opt_short(&mut d.device);
    f.range(&mut d.total_gb, 0.0, ABSURD);
    let total = d.total_gb;
    f.range(&mut d.used_gb, 0.0, total);
    f.range(&mut d.available_gb, 0.0, total);
}

fn interface(f: &mut Fixer<'_>, i: &mut InterfaceStats) {
    f.short(&mut i.interface);
    f.cap(&mut i.ip_addresses, f.limits.max_addresses);
    i.ip_addresses.iter_mut().for_each(|a| f.short(a));
    for rate in [
        &mut i.bytes_received_per_sec,
        &mut i.bytes_sent_per_sec,
        &mut i.packets_received_per_sec,
        &mut i.packets_sent_per_sec,
        &mut i.errors_per_sec,
    ]
    .into_iter()
    .flatten()
    {
        f.range(rate, 0.0, ABSURD);
    }
}

fn process(f: &mut Fixer<'_>, p: &mut ProcessInfo) {
    f.short(&mut p.name);
    f.opt_long(&mut p.cmdline);
    f.opt_short(&mut p.user);
    f.opt_short(&mut p.state);
    // Per-process CPU is percent of one core; more than 100 × the cores a guest may have is
    // nonsense (the original agent reported 1925 % for PID 1). Clamp to one core's worth per
    // core we allow.
    let max = 100.0 * f.limits.max_cores as f64;
    f.range(&mut p.cpu_percent, 0.0, max);
}

fn port(f: &mut Fixer<'_>, p: &mut PortInfo) {
    let lower = p.protocol.to_ascii_lowercase();
    if lower != p.protocol {
        p.protocol = lower;
        f.fixes += 1;
    }
    f.short(&mut p.protocol);
    f.opt_short(&mut p.local_address);
    f.opt_short(&mut p.state);
    f.opt_short(&mut p.process_name);
}

fn application(f: &mut Fixer<'_>, a: &mut Application) {
    f.short(&mut a.name);
    f.opt_short(&mut a.version);
    f.opt_short(&mut a.architecture);
}

fn service(f: &mut Fixer<'_>, s: &mut ServiceInfo) {
    f.short(&mut s.name);
    f.opt_long(&mut s.description);
    f.opt_short(&mut s.load_state);
    f.opt_short(&mut s.active_state);
    f.opt_short(&mut s.sub_state);
    f.opt_short(&mut s.start_type);
}

fn response(f: &mut Fixer<'_>, r: &mut CommandResponse) {
    f.short(&mut r.id);
    let max = f.limits.max_output;
    for (out, truncated) in [
        (&mut r.stdout, &mut r.stdout_truncated),
        (&mut r.stderr, &mut r.stderr_truncated),
    ] {
        let before = out.len();
        f.text(out, max, true);
        if out.len() < before && before > max {
            *truncated = true;
        }
    }
    f.opt_short(&mut r.command_type);
    if let Some(e) = r.error.as_mut() {
        f.long(&mut e.message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{CpuMetrics, MemoryMetrics, MetricsBody, ProcessSnapshot};

    #[test]
    fn out_of_range_numbers_are_clamped_and_counted() {
        let mut m = GuestMessage::SystemMetrics(SystemMetrics {
            metrics: MetricsBody {
                cpu: CpuMetrics {
                    usage_percent: 250.0,
                    cores_usage: vec![-5.0, 50.0],
                    temperature: Some(9999.0),
                },
                memory: MemoryMetrics {
                    total_kb: 100,
                    used_kb: 500,
                    available_kb: 50,
                    ..Default::default()
                },
                ..Default::default()
            },
            ..Default::default()
        });
        let report = sanitize(&mut m, &Limits::default());
        let GuestMessage::SystemMetrics(m) = m else {
            unreachable!("variant does not change")
        };
        assert_eq!(m.metrics.cpu.usage_percent, 100.0);
        assert_eq!(m.metrics.cpu.cores_usage, vec![0.0, 50.0]);
        assert_eq!(m.metrics.cpu.temperature, None);
        assert_eq!(m.metrics.memory.used_kb, 100);
        assert_eq!(report.fixes, 4);
    }

    #[test]
    fn control_characters_are_stripped_and_lists_capped() {
        let limits = Limits {
            max_processes: 2,
            ..Limits::default()
        };
        let p = ProcessInfo {
            pid: 7,
            name: "evil\u{0}\u{1b}[31m<img src=x onerror=alert(1)>".into(),
            cpu_percent: 1925.0,
            ..Default::default()
        };
        let mut m = GuestMessage::ProcessSnapshot(ProcessSnapshot {
            processes: vec![p.clone(), p.clone(), p],
            ..Default::default()
        });
        sanitize(&mut m, &limits);
        let GuestMessage::ProcessSnapshot(s) = m else {
            unreachable!("variant does not change")
        };
        assert_eq!(s.processes.len(), 2);
        // HTML is data, not markup: it is kept as text; escaping is the renderer's job.
        assert_eq!(s.processes[0].name, "evil[31m<img src=x onerror=alert(1)>");
        assert!(s.processes[0].cpu_percent <= 100.0 * 1024.0);
    }

    #[test]
    fn long_strings_are_cut_at_a_char_boundary() {
        let limits = Limits {
            max_short_string: 5,
            ..Limits::default()
        };
        let mut m = GuestMessage::Pong(crate::message::Pong {
            id: Some("ééé".into()),
            timestamp: None,
        });
        sanitize(&mut m, &limits);
        let GuestMessage::Pong(p) = m else {
            unreachable!("variant does not change")
        };
        assert_eq!(p.id.as_deref(), Some("éé"));
    }
}

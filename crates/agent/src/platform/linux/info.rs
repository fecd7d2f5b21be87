//! Facts about the machine for `SystemInfo`, `OsInfo` and `vm_identification`: uname(2),
//! sysinfo(2) and /etc/os-release. No process is spawned.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use infinibay_protocol::message::VmIdentification;
use serde_json::json;

use super::actions::{self, PackageManager};
use super::collect::{Collector, Roots};

/// What the machine says of itself in `vm_identification` (`os`, `os_version`, `kernel`,
/// `hostname`, `architecture`): the collector's view, completed from uname(2) and os-release
/// where it left a field empty.
pub fn identification(collector: &Collector) -> VmIdentification {
    let mut id = collector.identification();
    if id.kernel.is_empty() || id.hostname.is_empty() || id.architecture.is_empty() {
        let u = uname();
        if id.kernel.is_empty() {
            id.kernel = u.release;
        }
        if id.hostname.is_empty() {
            id.hostname = u.nodename;
        }
        if id.architecture.is_empty() {
            id.architecture = u.machine;
        }
    }
    if id.os_version.is_empty() {
        let os = os_release(&collector.roots().root);
        id.os_version = os
            .get("PRETTY_NAME")
            .or_else(|| os.get("NAME"))
            .cloned()
            .unwrap_or_default();
    }
    id
}

/// `SystemInfo`'s data.
pub fn system_info(roots: &Roots) -> serde_json::Value {
    let u = uname();
    let mem = memory_and_uptime();
    let os = os_release(&roots.root);
    json!({
        "hostname": u.nodename,
        "kernel_version": u.release,
        "architecture": u.machine,
        "os_type": u.sysname,
        "linux_distro": os.get("NAME"),
        "version": os.get("PRETTY_NAME"),
        "cpu_count": cpu_count(),
        "total_memory_kb": mem.total_memory_kb,
        "uptime_seconds": mem.uptime_seconds,
        "package_manager": PackageManager::detect(),
        "systemd": actions::systemd_running(&roots.root),
    })
}

/// `OsInfo`'s data.
pub fn os_info(roots: &Roots) -> serde_json::Value {
    let u = uname();
    let os = os_release(&roots.root);
    json!({
        "os_type": u.sysname,
        "name": os.get("NAME"),
        "pretty_name": os.get("PRETTY_NAME"),
        "id": os.get("ID"),
        "version": os.get("VERSION"),
        "version_id": os.get("VERSION_ID"),
        "kernel_version": u.release,
        "architecture": u.machine,
    })
}

/// CPU (user + system) this process used so far.
pub fn process_cpu_time() -> Duration {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// What uname(2) says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Uname {
    /// `sysname` (`Linux`).
    pub sysname: String,
    /// Host name.
    pub nodename: String,
    /// Kernel release.
    pub release: String,
    /// Architecture (`x86_64`).
    pub machine: String,
}

fn field(raw: &[libc::c_char]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// uname(2).
pub fn uname() -> Uname {
    // SAFETY: utsname is plain data; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return Uname::default();
    }
    Uname {
        sysname: field(&uts.sysname),
        nodename: field(&uts.nodename),
        release: field(&uts.release),
        machine: field(&uts.machine),
    }
}

/// Memory and uptime from sysinfo(2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryAndUptime {
    /// Total RAM in kB.
    pub total_memory_kb: u64,
    /// Seconds since boot.
    pub uptime_seconds: u64,
}

/// sysinfo(2).
pub fn memory_and_uptime() -> MemoryAndUptime {
    // SAFETY: sysinfo is plain data.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return MemoryAndUptime::default();
    }
    let unit = u64::from(info.mem_unit.max(1));
    MemoryAndUptime {
        total_memory_kb: (info.totalram as u64).saturating_mul(unit) / 1024,
        uptime_seconds: u64::try_from(info.uptime).unwrap_or(0),
    }
}

/// Online CPUs.
pub fn cpu_count() -> usize {
    std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
}

/// Parse os-release(5) text: `KEY=value` lines, values optionally quoted.
pub fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.starts_with('#') {
                return None;
            }
            let (key, value) = line.split_once('=')?;
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(value);
            Some((key.trim().to_owned(), value.replace("\\\"", "\"")))
        })
        .collect()
}

/// `/etc/os-release`, else `/usr/lib/os-release`, under `root`.
pub fn os_release(root: &Path) -> BTreeMap<String, String> {
    ["etc/os-release", "usr/lib/os-release"]
        .iter()
        .find_map(|p| std::fs::read_to_string(root.join(p)).ok())
        .map(|t| parse_os_release(&t))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_values_are_unquoted() {
        let m = parse_os_release(
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n# comment\nVERSION_ID='12'\n\n",
        );
        assert_eq!(m["PRETTY_NAME"], "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(m["ID"], "debian");
        assert_eq!(m["VERSION_ID"], "12");
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn uname_and_sysinfo_describe_this_machine() {
        let u = uname();
        assert_eq!(u.sysname, "Linux");
        assert!(!u.release.is_empty());
        assert!(memory_and_uptime().total_memory_kb > 0);
    }
}

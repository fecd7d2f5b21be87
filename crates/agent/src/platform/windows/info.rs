//! Facts about the machine for `SystemInfo`, `OsInfo` and `vm_identification`: the registry's
//! Windows version, `RtlGetVersion`, memory and uptime. No process is spawned.

use std::time::Duration;

use infinibay_protocol::message::VmIdentification;
use serde_json::json;
use windows_sys::Win32::Foundation::FILETIME;
use windows_sys::Win32::System::Threading::{GetCurrentProcess, GetProcessTimes};

use super::actions::find_winget;
use super::collect::facts::{
    WindowsVersion, architecture, hostname, kernel_version, memory, uptime_seconds,
};
use super::collect::{Collector, Roots};

/// What the machine says of itself in `vm_identification`.
pub fn identification(collector: &Collector) -> VmIdentification {
    collector.identification()
}

/// `SystemInfo`'s data: the Linux agent's keys where they mean the same.
pub fn system_info(_roots: &Roots) -> serde_json::Value {
    let version = WindowsVersion::read();
    json!({
        "hostname": hostname(),
        "kernel_version": kernel_version(),
        "architecture": architecture(),
        "os_type": "Windows",
        "version": version.pretty(),
        "edition": version.edition_id,
        "build": version.build,
        "cpu_count": std::thread::available_parallelism().map_or(1, usize::from),
        "total_memory_kb": memory().map(|m| m.total_kb).unwrap_or(0),
        "uptime_seconds": uptime_seconds(),
        "package_manager": find_winget().map(|_| "winget"),
    })
}

/// `OsInfo`'s data: edition and build.
pub fn os_info(_roots: &Roots) -> serde_json::Value {
    let version = WindowsVersion::read();
    json!({
        "os_type": "Windows",
        "name": version.product_name,
        "pretty_name": version.pretty(),
        "id": "windows",
        "edition": version.edition_id,
        "version": version.display_version,
        "build": version.build,
        "installation_type": version.installation_type,
        "kernel_version": kernel_version(),
        "architecture": architecture(),
    })
}

/// CPU (user + kernel) this process used so far.
pub fn process_cpu_time() -> Duration {
    let (mut created, mut exited, mut kernel, mut user) = (
        FILETIME::default(),
        FILETIME::default(),
        FILETIME::default(),
        FILETIME::default(),
    );
    // SAFETY: the current-process pseudo-handle and valid out-pointers.
    unsafe {
        GetProcessTimes(
            GetCurrentProcess(),
            &mut created,
            &mut exited,
            &mut kernel,
            &mut user,
        )
    };
    let ticks = |t: FILETIME| (u64::from(t.dwHighDateTime) << 32) | u64::from(t.dwLowDateTime);
    Duration::from_nanos((ticks(kernel) + ticks(user)) * 100)
}

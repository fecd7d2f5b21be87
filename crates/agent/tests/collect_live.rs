//! The collectors on the machine running the tests: values agree with what the kernel
//! says through other paths, and sockets and processes this test creates show up.
#![cfg(target_os = "linux")]

use std::net::{TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use infiniservice::platform::collect::{Collector, DEFAULT_TOP_PROCESSES, Roots};

fn live() -> Collector {
    Collector::new(Roots::default())
}

fn proc_file(name: &str) -> String {
    std::fs::read_to_string(format!("/proc/{name}")).expect("readable /proc file")
}

fn meminfo_kb(key: &str) -> u64 {
    proc_file("meminfo")
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("meminfo key present")
}

fn online_cpus() -> usize {
    proc_file("stat")
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count()
}

#[test]
fn memory_total_matches_meminfo_and_cpu_stays_within_percent_bounds() {
    let mut collector = live();
    for _ in 0..2 {
        let body = collector.system_metrics().metrics;
        assert_eq!(body.memory.total_kb, meminfo_kb("MemTotal"));
        assert!(body.memory.used_kb <= body.memory.total_kb);
        assert_eq!(body.memory.swap_total_kb, Some(meminfo_kb("SwapTotal")));
        assert!(
            (0.0..=100.0).contains(&body.cpu.usage_percent),
            "{:?}",
            body.cpu
        );
        assert_eq!(body.cpu.cores_usage.len(), online_cpus());
        assert!(
            body.cpu
                .cores_usage
                .iter()
                .all(|c| (0.0..=100.0).contains(c))
        );
        assert!(body.system.uptime > 0);
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn loopback_is_listed_up_with_its_addresses_and_gets_rates_on_the_second_sample() {
    let mut collector = live();
    let first = collector.system_metrics().metrics.network.stats;
    let lo = first
        .iter()
        .find(|i| i.interface == "lo")
        .expect("loopback listed");
    assert!(lo.is_up);
    assert!(lo.ip_addresses.iter().any(|a| a == "127.0.0.1"), "{lo:?}");
    assert_eq!(lo.bytes_received_per_sec, None);
    std::thread::sleep(Duration::from_millis(100));
    let second = collector.system_metrics().metrics.network.stats;
    let lo = second
        .iter()
        .find(|i| i.interface == "lo")
        .expect("loopback listed");
    assert!(lo.bytes_received_per_sec.is_some_and(|r| r >= 0.0));
}

#[test]
fn root_file_system_and_a_disk_are_reported() {
    let body = live().system_metrics().metrics;
    assert!(
        body.disk.usage_stats.iter().any(|u| u.mount_point == "/"),
        "{:?}",
        body.disk.usage_stats
    );
    let whole_disks: Vec<String> = std::fs::read_dir("/sys/block")
        .expect("sysfs block")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !n.starts_with("loop") && !n.starts_with("ram") && !n.starts_with("zram"))
        .collect();
    let reported: Vec<&str> = body
        .disk
        .io_stats
        .devices
        .iter()
        .map(|d| d.device.as_str())
        .collect();
    for disk in &whole_disks {
        assert!(reported.contains(&disk.as_str()), "{disk} in {reported:?}");
    }
}

#[test]
fn our_listening_tcp_and_bound_udp_sockets_appear_with_our_pid() {
    let tcp = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
    let udp = UdpSocket::bind("[::1]:0")
        .or_else(|_| UdpSocket::bind("127.0.0.1:0"))
        .expect("bind udp");
    let tcp_port = tcp.local_addr().expect("tcp addr").port();
    let udp_addr = udp.local_addr().expect("udp addr");
    let ports = live().port_usage().ports;
    let ours = ports
        .iter()
        .find(|p| p.protocol == "tcp" && p.port == tcp_port)
        .expect("our tcp listener listed");
    assert_eq!(ours.process_id, Some(std::process::id()));
    assert_eq!(ours.local_address.as_deref(), Some("127.0.0.1"));
    assert_eq!(ours.state.as_deref(), Some("listen"));
    let comm = proc_file("self/comm");
    assert_eq!(ours.process_name.as_deref(), Some(comm.trim()));
    let ours = ports
        .iter()
        .find(|p| p.protocol == "udp" && p.port == udp_addr.port())
        .expect("our udp socket listed");
    assert_eq!(ours.process_id, Some(std::process::id()));
    assert_eq!(
        ours.local_address.as_deref(),
        Some(udp_addr.ip().to_string().as_str())
    );
}

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    // SAFETY: an all-zero timespec is valid and clock_gettime only writes it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: ts is a valid out-pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[test]
fn our_process_is_in_the_snapshot_and_a_busy_interval_shows_as_cpu() {
    let mut collector = live();
    let all = collector.process_snapshot(usize::MAX);
    let total = all.total_processes.expect("total counted");
    assert_eq!(total as usize, all.processes.len());
    let me = all
        .processes
        .iter()
        .find(|p| p.pid == std::process::id())
        .expect("own process listed");
    assert!(
        me.cmdline
            .as_deref()
            .is_some_and(|c| c.contains("collect_live"))
    );
    assert!(me.user.as_deref().is_some_and(|u| !u.is_empty()));
    assert!(me.memory_kb > 0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    let started = me.start_time.expect("start time known");
    assert!(started <= now && started > now - 3600, "{started} vs {now}");
    let cap = 100.0 * online_cpus() as f64;
    assert!(
        all.processes
            .iter()
            .all(|p| (0.0..=cap).contains(&p.cpu_percent))
    );
    let top = collector.process_snapshot(DEFAULT_TOP_PROCESSES);
    assert!(top.processes.len() <= DEFAULT_TOP_PROCESSES);
    let ranked: Vec<f64> = top.processes.iter().map(|p| p.cpu_percent).collect();
    assert!(ranked.windows(2).all(|w| w[0] >= w[1]), "{ranked:?}");

    // Burn 300 ms of CPU on this thread; however loaded the machine, our share over the
    // interval is at least that CPU time over the wall time it took.
    let wall = Instant::now();
    let cpu_before = thread_cpu();
    while thread_cpu() - cpu_before < Duration::from_millis(300) {
        std::hint::black_box((0..1000u64).sum::<u64>());
    }
    let expected_floor = 0.3 / wall.elapsed().as_secs_f64() * 100.0;
    let after = collector.process_snapshot(usize::MAX);
    let me = after
        .processes
        .iter()
        .find(|p| p.pid == std::process::id())
        .expect("own process listed");
    // /proc/uptime and the tick counters have 10 ms resolution: allow half the floor.
    assert!(
        me.cpu_percent >= expected_floor * 0.5,
        "measured {} %, floor {expected_floor} %",
        me.cpu_percent
    );
}

#[test]
fn identification_matches_the_kernel_files() {
    let id = live().identification();
    assert_eq!(id.os, "linux");
    assert_eq!(id.kernel, proc_file("sys/kernel/osrelease").trim());
    assert_eq!(id.hostname, proc_file("sys/kernel/hostname").trim());
    assert!(!id.os_version.is_empty());
    assert!(!id.architecture.is_empty());
}

#[test]
fn dpkg_inventory_counts_every_installed_package() {
    let Ok(status) = std::fs::read_to_string("/var/lib/dpkg/status") else {
        eprintln!("no dpkg on this machine; the fixture tests cover the parser");
        return;
    };
    let installed = status
        .split("\n\n")
        .filter(|p| {
            p.lines()
                .any(|l| l.starts_with("Status:") && l.ends_with(" installed"))
        })
        .count();
    let apps = live().applications();
    assert_eq!(apps.source.as_deref(), Some("dpkg"));
    assert_eq!(apps.applications.len(), installed);
    assert!(apps.applications.iter().all(|a| a.version.is_some()));
}

#[test]
fn services_are_listed_exactly_when_systemd_runs() {
    let services = live().services().services;
    if std::path::Path::new("/run/systemd/system").is_dir() {
        assert!(!services.is_empty());
        assert!(
            services
                .iter()
                .any(|s| s.active_state.as_deref() == Some("active"))
        );
        let mut sorted = services.clone();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(sorted, services);
    } else {
        assert!(services.is_empty(), "no systemd, no services: {services:?}");
    }
}

//! The collectors pointed at captured and hand-written /proc + /sys trees
//! (`tests/fixtures/`): two successive samples with known counter changes must give exactly
//! the expected percentages and rates.
#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};

use infiniservice::platform::collect::{Collector, KernelUnits, Roots};

/// The units the fixtures were written for (x86-64: 100 Hz ticks, 4 KiB pages).
const FIXTURE_UNITS: KernelUnits = KernelUnits {
    clock_ticks_per_sec: 100,
    page_size: 4096,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Copies a fixture tree (symlinks kept as symlinks: `/proc/<pid>/fd/*` are links).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create target dir");
    for entry in std::fs::read_dir(from).expect("read fixture dir") {
        let entry = entry.expect("fixture dir entry");
        let target = to.join(entry.file_name());
        let kind = entry.file_type().expect("fixture file type");
        if kind.is_symlink() {
            let link = std::fs::read_link(entry.path()).expect("read fixture link");
            let _ = std::fs::remove_file(&target);
            std::os::unix::fs::symlink(link, &target).expect("copy fixture link");
        } else if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy fixture file");
        }
    }
}

/// A private copy of a fixture, so a test can lay the next sample over it.
struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn of(name: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        copy_tree(&fixture(name), dir.path());
        Self { dir }
    }

    fn advance_to(&self, next: &str) {
        copy_tree(&fixture(next), self.dir.path());
    }

    fn collector(&self) -> Collector {
        Collector::with_kernel_units(Roots::under(self.dir.path()), FIXTURE_UNITS)
    }
}

#[test]
fn cpu_percent_is_since_boot_first_then_from_the_counter_deltas() {
    let tree = Tree::of("storage-host");
    let mut collector = tree.collector();
    let first = collector.system_metrics().metrics.cpu;
    assert_eq!(first.usage_percent, 15.0);
    assert_eq!(first.cores_usage, [15.0, 15.0]);

    tree.advance_to("storage-host.next");
    let second = collector.system_metrics().metrics.cpu;
    // +1000 busy of +1500 jiffies overall; cpu0 busy all of its +1000, cpu1 idle.
    assert_eq!(second.usage_percent, 66.67);
    assert_eq!(second.cores_usage, [100.0, 0.0]);
}

#[test]
fn cpu_temperature_prefers_the_coretemp_package_sensor() {
    let tree = Tree::of("storage-host");
    let cpu = tree.collector().system_metrics().metrics.cpu;
    assert_eq!(cpu.temperature, Some(45.0));
}

#[test]
fn a_guest_without_hwmon_or_thermal_zones_has_no_temperature() {
    let tree = Tree::of("container");
    assert_eq!(
        tree.collector().system_metrics().metrics.cpu.temperature,
        None
    );
}

#[test]
fn disk_rates_sum_whole_physical_disks_and_list_md_and_dm_separately() {
    let tree = Tree::of("storage-host");
    let mut collector = tree.collector();
    let first = collector.system_metrics().metrics.disk.io_stats;
    // First sample: averages since boot (uptime 1000 s). nvme0n1 read 80000 sectors,
    // nvme1n1 40000, sda 80, each × 512 / 1000 rounded to 0.1 and summed.
    assert_eq!(first.read_bytes_per_sec, 61481.0);

    tree.advance_to("storage-host.next");
    let io = collector.system_metrics().metrics.disk.io_stats;
    let devices: Vec<&str> = io.devices.iter().map(|d| d.device.as_str()).collect();
    assert_eq!(devices, ["dm-0", "md0", "nvme0n1", "nvme1n1", "sda", "sr0"]);
    let nvme0 = &io.devices[2];
    assert_eq!(nvme0.read_bytes_per_sec, 1_048_576.0);
    assert_eq!(nvme0.write_bytes_per_sec, 2_097_152.0);
    assert_eq!(nvme0.read_ops_per_sec, 10.0);
    assert_eq!(nvme0.write_ops_per_sec, 20.0);
    // md0 and dm-0 carry the same I/O again; loop0's heavy reads are not a disk.
    assert_eq!(io.read_bytes_per_sec, 1_572_864.0);
    assert_eq!(io.write_bytes_per_sec, 3_145_728.0);
    assert_eq!(io.read_ops_per_sec, 15.0);
    assert_eq!(io.write_ops_per_sec, 30.0);
    assert_eq!(io.devices[1].read_bytes_per_sec, 1_572_864.0);
}

#[test]
fn without_sysfs_disks_are_told_from_partitions_by_name() {
    let tree = Tree::of("container");
    let io = tree.collector().system_metrics().metrics.disk.io_stats;
    let devices: Vec<&str> = io.devices.iter().map(|d| d.device.as_str()).collect();
    assert_eq!(devices, ["vda"]);
}

#[test]
fn network_counters_rates_state_and_addresses_with_odd_interface_names() {
    let tree = Tree::of("storage-host");
    let mut collector = tree.collector();
    let first = collector.system_metrics().metrics.network.stats;
    let names: Vec<&str> = first.iter().map(|i| i.interface.as_str()).collect();
    assert_eq!(
        names,
        ["br-1a2b3c4d5e6f", "eth0.100", "lo", "vethabcdef12345"]
    );
    assert!(first.iter().all(|i| i.bytes_received_per_sec.is_none()));
    let veth = &first[3];
    assert_eq!(
        (veth.bytes_received, veth.bytes_sent),
        (Some(700), Some(900))
    );

    tree.advance_to("storage-host.next");
    let stats = collector.system_metrics().metrics.network.stats;
    let vlan = &stats[1];
    assert_eq!(vlan.interface, "eth0.100");
    assert_eq!(vlan.bytes_received, Some(150_000));
    assert_eq!(vlan.errors_in, Some(2));
    assert_eq!(vlan.errors_out, Some(1));
    assert_eq!(vlan.bytes_received_per_sec, Some(10_000.0));
    assert_eq!(vlan.bytes_sent_per_sec, Some(5_000.0));
    assert_eq!(vlan.packets_received_per_sec, Some(10.0));
    assert_eq!(vlan.packets_sent_per_sec, Some(5.0));
    assert_eq!(vlan.errors_per_sec, Some(0.2));
    assert!(vlan.is_up);
    assert_eq!(vlan.ip_addresses, ["2001:db8::5", "fe80::1"]);
    let bridge = &stats[0];
    assert!(!bridge.is_up);
    assert!(bridge.ip_addresses.is_empty());
    let lo = &stats[2];
    assert!(lo.is_up, "loopback reports operstate unknown and is up");
    assert_eq!(lo.ip_addresses, ["::1"]);
    assert_eq!(lo.bytes_sent_per_sec, Some(200.0));
}

#[test]
fn memory_swap_uptime_and_load_come_straight_from_proc() {
    let tree = Tree::of("storage-host");
    let body = tree.collector().system_metrics().metrics;
    assert_eq!(body.memory.total_kb, 16_384_000);
    assert_eq!(body.memory.available_kb, 12_000_000);
    assert_eq!(body.memory.used_kb, 4_384_000);
    assert_eq!(body.memory.swap_total_kb, Some(8_388_608));
    assert_eq!(body.memory.swap_used_kb, Some(388_608));
    assert_eq!(body.system.uptime, 1000);
    assert_eq!(body.system.load_average.load1min, 1.5);
    assert_eq!(body.system.load_average.load15min, 0.5);
}

#[test]
fn a_guest_without_swap_reports_zero_swap_not_unknown() {
    let tree = Tree::of("container");
    let memory = tree.collector().system_metrics().metrics.memory;
    assert_eq!(memory.swap_total_kb, Some(0));
    assert_eq!(memory.swap_used_kb, Some(0));
    assert_eq!(memory.used_kb, 248_000);
}

#[test]
fn file_systems_skip_pseudo_network_snap_and_bind_duplicates() {
    let tree = Tree::of("storage-host");
    let usage = tree.collector().system_metrics().metrics.disk.usage_stats;
    let mounts: Vec<(&str, Option<&str>, Option<&str>)> = usage
        .iter()
        .map(|u| {
            (
                u.mount_point.as_str(),
                u.filesystem.as_deref(),
                u.device.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        mounts,
        [
            ("/", Some("ext4"), Some("/dev/mapper/vg-root")),
            ("/boot/efi", Some("vfat"), Some("/dev/nvme0n1p1")),
            ("/srv/data", Some("xfs"), Some("/dev/md0")),
        ]
    );
    for u in &usage {
        assert!(u.total_gb > 0.0 && u.used_gb <= u.total_gb, "{u:?}");
    }
}

#[test]
fn a_container_reports_its_overlay_root_and_not_the_bind_mounted_files() {
    let tree = Tree::of("container");
    let usage = tree.collector().system_metrics().metrics.disk.usage_stats;
    assert_eq!(usage.len(), 1, "{usage:?}");
    assert_eq!(usage[0].mount_point, "/");
    assert_eq!(usage[0].filesystem.as_deref(), Some("overlay"));
}

#[test]
fn process_cpu_is_lifetime_average_first_then_delta_capped_at_all_cores() {
    let tree = Tree::of("storage-host");
    let mut collector = tree.collector();
    let first = collector.process_snapshot(50);
    assert_eq!(first.total_processes, Some(6));
    let order: Vec<(u32, f64)> = first
        .processes
        .iter()
        .map(|p| (p.pid, p.cpu_percent))
        .collect();
    assert_eq!(
        order,
        [
            (200, 6.25),
            (100, 1.58),
            (1, 0.5),
            (400, 0.1),
            (300, 0.02),
            (2, 0.01)
        ]
    );

    tree.advance_to("storage-host.next");
    let second = collector.process_snapshot(50);
    let order: Vec<(u32, f64)> = second
        .processes
        .iter()
        .map(|p| (p.pid, p.cpu_percent))
        .collect();
    // worker: 30 s of CPU in 10 s on a 2-CPU guest is capped at 200 %; pid 400 is a new
    // process (other start time) averaged over its 20 s of life; idle ones rank by RSS.
    assert_eq!(
        order,
        [
            (200, 200.0),
            (100, 100.0),
            (400, 5.0),
            (300, 0.0),
            (1, 0.0),
            (2, 0.0)
        ]
    );
    assert_eq!(second.processes[2].name, "backup");
    assert_eq!(second.processes[2].state.as_deref(), Some("disk-sleep"));
}

#[test]
fn process_details_name_cmdline_user_memory_and_start_time() {
    let tree = Tree::of("storage-host");
    let snapshot = tree.collector().process_snapshot(3);
    assert_eq!(snapshot.total_processes, Some(6));
    assert_eq!(snapshot.processes.len(), 3);
    let worker = &snapshot.processes[0];
    assert_eq!(worker.name, "worker (x) 1");
    assert_eq!(worker.cmdline.as_deref(), Some("/opt/worker --threads 8"));
    assert_eq!(
        worker.user.as_deref(),
        Some("1000"),
        "uid not in passwd stays numeric"
    );
    assert_eq!(worker.ppid, Some(1));
    assert_eq!(worker.state.as_deref(), Some("running"));
    assert_eq!(worker.memory_kb, 160_000);
    // btime 1763770000 + 20000 ticks / 100.
    assert_eq!(worker.start_time, Some(1_763_770_200));
    let nginx = &snapshot.processes[1];
    assert_eq!(nginx.user.as_deref(), Some("www-data"));
    assert_eq!(
        nginx.cmdline.as_deref(),
        Some("nginx: master process /usr/sbin/nginx -g daemon on;")
    );
}

#[test]
fn kernel_threads_have_no_cmdline() {
    let tree = Tree::of("storage-host");
    let snapshot = tree.collector().process_snapshot(50);
    let kthreadd = snapshot
        .processes
        .iter()
        .find(|p| p.pid == 2)
        .expect("kthreadd listed");
    assert_eq!(kthreadd.cmdline, None);
    assert_eq!(kthreadd.user.as_deref(), Some("root"));
}

/// protocol, port, address, pid, process name, state.
type PortRow<'a> = (
    &'a str,
    u16,
    &'a str,
    Option<u32>,
    Option<&'a str>,
    Option<&'a str>,
);

#[test]
fn listening_sockets_with_owners_and_no_connected_ones() {
    let tree = Tree::of("storage-host");
    let ports = tree.collector().port_usage().ports;
    let summary: Vec<PortRow> = ports
        .iter()
        .map(|p| {
            (
                p.protocol.as_str(),
                p.port,
                p.local_address.as_deref().unwrap_or("?"),
                p.process_id,
                p.process_name.as_deref(),
                p.state.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "tcp",
                80,
                "0.0.0.0",
                Some(100),
                Some("nginx"),
                Some("listen")
            ),
            ("tcp", 443, "::", Some(100), Some("nginx"), Some("listen")),
            ("tcp", 5432, "127.0.0.1", None, None, Some("listen")),
            (
                "udp",
                53,
                "0.0.0.0",
                Some(300),
                Some("dnsmasq"),
                Some("unconn")
            ),
        ]
    );
    assert!(ports.iter().all(|p| p.is_listening));
}

#[test]
fn inventories_are_deterministic_between_calls() {
    let tree = Tree::of("storage-host");
    let mut collector = tree.collector();
    assert_eq!(collector.port_usage(), collector.port_usage());
    let tree = Tree::of("debian12-vm");
    let mut collector = tree.collector();
    assert_eq!(collector.applications(), collector.applications());
}

#[test]
fn dpkg_packages_from_a_captured_status_file() {
    let tree = Tree::of("debian12-vm");
    let apps = tree.collector().applications();
    assert_eq!(apps.source.as_deref(), Some("dpkg"));
    assert_eq!(apps.applications.len(), 25);
    let adduser = &apps.applications[0];
    assert_eq!(adduser.name, "adduser");
    assert_eq!(adduser.version.as_deref(), Some("3.134"));
    assert_eq!(adduser.size_kb, Some(686));
    assert_eq!(adduser.architecture.as_deref(), Some("all"));
    let mut sorted = apps.applications.clone();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(sorted, apps.applications);
}

#[test]
fn no_package_database_and_no_systemd_give_empty_inventories() {
    let tree = Tree::of("container");
    let mut collector = tree.collector();
    let apps = collector.applications();
    assert_eq!(apps.source, None);
    assert!(apps.applications.is_empty());
    assert!(collector.services().services.is_empty());
}

#[test]
fn identification_reads_os_release_kernel_and_hostname() {
    let tree = Tree::of("debian12-vm");
    let id = tree.collector().identification();
    assert_eq!(id.os, "linux");
    assert_eq!(id.os_version, "Debian GNU/Linux 12 (bookworm)");
    assert!(!id.kernel.is_empty());
    assert!(!id.hostname.is_empty());
    assert!(!id.architecture.is_empty());

    // No /etc/os-release: the /usr/lib one is the fallback.
    let tree = Tree::of("storage-host");
    let id = tree.collector().identification();
    assert_eq!(id.os_version, "Fedora Linux 40 (Server Edition)");
    assert_eq!(id.kernel, "6.8.0-45-generic");
    assert_eq!(id.hostname, "storage-01");
}

#[test]
fn a_real_capture_of_this_debian_vm_parses_completely() {
    let tree = Tree::of("debian12-vm");
    let mut collector = tree.collector();
    let body = collector.system_metrics().metrics;
    assert!(body.memory.total_kb > 0);
    assert!(body.memory.used_kb <= body.memory.total_kb);
    assert_eq!(body.cpu.cores_usage.len(), 2);
    assert!((0.0..=100.0).contains(&body.cpu.usage_percent));
    let devices: Vec<&str> = body
        .disk
        .io_stats
        .devices
        .iter()
        .map(|d| d.device.as_str())
        .collect();
    assert_eq!(devices, ["vda"], "loop and zram are not disks");
    let names: Vec<&str> = body
        .network
        .stats
        .iter()
        .map(|i| i.interface.as_str())
        .collect();
    assert_eq!(names, ["eth0", "ifb0", "ifb1", "lo"]);
    assert!(body.network.stats[0].is_up);
    assert!(!body.network.stats[1].is_up);
    assert_eq!(body.disk.usage_stats.len(), 1, "only / is block-backed");
    assert!(body.system.uptime > 0);

    let snapshot = collector.process_snapshot(50);
    assert_eq!(snapshot.total_processes, Some(4));
    let init = snapshot
        .processes
        .iter()
        .find(|p| p.pid == 1)
        .expect("pid 1 listed");
    assert_eq!(init.user.as_deref(), Some("root"));

    let ports = collector.port_usage().ports;
    let tcp_2024 = ports
        .iter()
        .find(|p| p.protocol == "tcp" && p.port == 2024)
        .expect("the captured listener on 2024");
    assert_eq!(tcp_2024.process_id, Some(1));
}

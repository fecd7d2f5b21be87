//! One real QEMU guest shared by every test here: qemu-ga and infiniservice on their real
//! virtio-serial ports, driven from the host side of QEMU's sockets (no `infinibay`).

use std::time::Duration;

use infinibay_e2e::fixture::{serial, shared_guest};
use infinibay_e2e::{AgentClient, Guest, GuestOptions, QgaClient};
use infinibay_protocol::GuestMessage;
use infinibay_protocol::message::{ErrorCode, SafeAction, SystemMetrics};

const HOSTNAME: &str = "e2e-in-guest";
/// Boot under TCG on a loaded 2-core machine: generous on purpose.
const BOOT: Duration = Duration::from_secs(90);
const REPLY: Duration = Duration::from_secs(20);

fn guest() -> &'static Guest {
    shared_guest(|| GuestOptions {
        name: "in-guest".into(),
        hostname: HOSTNAME.into(),
        ..GuestOptions::default()
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

fn qga(guest: &Guest) -> QgaClient {
    guest
        .qga(BOOT)
        .unwrap_or_else(|e| panic!("qemu-ga session: {e}\n{}", guest.diagnostics()))
}

/// A connection to our agent after a successful handshake.
fn agent(guest: &Guest) -> AgentClient {
    let mut client = guest
        .agent(BOOT)
        .unwrap_or_else(|e| panic!("agent port: {e}\n{}", guest.diagnostics()));
    client
        .hello(BOOT)
        .unwrap_or_else(|e| panic!("agent handshake: {e}\n{}", guest.diagnostics()));
    client
}

fn meminfo_total_kb(qga: &mut QgaClient) -> u64 {
    let meminfo = qga
        .shell("cat /proc/meminfo", REPLY)
        .expect("reading /proc/meminfo through qemu-ga");
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("MemTotal in /proc/meminfo")
}

#[test]
fn qemu_ga_answers_guest_ping_through_the_real_virtio_serial_port() {
    let _serial = serial();
    let guest = guest();
    let mut qga = qga(guest);
    qga.ping(REPLY).expect("guest-ping");
    let info = qga.info(REPLY).expect("guest-info");
    assert!(
        info["version"].as_str().is_some_and(|v| !v.is_empty()),
        "guest-info has a version: {info}"
    );
}

#[test]
fn qemu_ga_guest_exec_runs_bin_true_and_reports_exit_code_zero() {
    let _serial = serial();
    let guest = guest();
    let mut qga = qga(guest);
    let output = qga
        .run("/bin/true", &[], Duration::from_millis(10), REPLY)
        .expect("guest-exec /bin/true");
    assert_eq!(output.exit_code, Some(0), "{output:?}");
    let output = qga
        .run("/bin/false", &[], Duration::from_millis(10), REPLY)
        .expect("guest-exec /bin/false");
    assert_eq!(
        output.exit_code,
        Some(1),
        "a failing command is reported as such"
    );
}

#[test]
fn guest_has_the_requested_hostname_memory_and_named_ports() {
    let _serial = serial();
    let guest = guest();
    let mut qga = qga(guest);
    let hostname = qga.shell("hostname", REPLY).expect("hostname");
    assert_eq!(hostname.trim(), HOSTNAME);
    let total_kb = meminfo_total_kb(&mut qga);
    assert!(
        (150_000..=262_144).contains(&total_kb),
        "-m 256 gives a MemTotal a little under 256 MiB, got {total_kb} kB"
    );
    let ports = qga.shell("ls /dev/virtio-ports", REPLY).expect("ls ports");
    assert!(ports.contains("org.infinibay.agent"), "{ports}");
    assert!(ports.contains("org.qemu.guest_agent.0"), "{ports}");
}

#[test]
fn agent_identifies_itself_with_the_guest_hostname_kernel_and_os() {
    let _serial = serial();
    let guest = guest();
    let mut client = guest
        .agent(BOOT)
        .unwrap_or_else(|e| panic!("agent port: {e}\n{}", guest.diagnostics()));
    let identification = client
        .hello(BOOT)
        .unwrap_or_else(|e| panic!("agent handshake: {e}\n{}", guest.diagnostics()));
    assert_eq!(identification.hostname, HOSTNAME, "{identification:?}");
    assert_eq!(identification.os, "linux", "{identification:?}");
    let image = infinibay_e2e::GuestImage::shared().expect("image");
    assert_eq!(identification.kernel, image.kernel_release);
    assert_eq!(identification.architecture, "x86_64");
    assert!(
        identification.os_version.contains("Infinibay e2e guest"),
        "os_version comes from the guest's /etc/os-release: {identification:?}"
    );
    assert!(
        client.decode_errors().is_empty(),
        "{:?}",
        client.decode_errors()
    );
}

#[test]
fn agent_metrics_report_the_guest_memory_size_and_its_interfaces() {
    let _serial = serial();
    let guest = guest();
    let expected_total_kb = meminfo_total_kb(&mut qga(guest));
    let mut client = agent(guest);
    let metrics: SystemMetrics = client
        .wait_for("system_metrics", Duration::from_secs(30), |m| match m {
            GuestMessage::SystemMetrics(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", guest.diagnostics()));
    let memory = &metrics.metrics.memory;
    assert_eq!(
        memory.total_kb, expected_total_kb,
        "the agent reports the guest's MemTotal"
    );
    assert!(
        memory.used_kb > 0 && memory.used_kb <= memory.total_kb,
        "{memory:?}"
    );
    let interfaces = &metrics.metrics.network.stats;
    let eth0 = interfaces
        .iter()
        .find(|i| i.interface == "eth0")
        .unwrap_or_else(|| panic!("eth0 listed: {interfaces:?}"));
    assert!(eth0.is_up, "{eth0:?}");
    assert!(
        eth0.ip_addresses.iter().any(|a| a == "10.0.2.15"),
        "eth0 carries the address init gave it: {eth0:?}"
    );
    assert!(
        interfaces.iter().any(|i| i.interface == "lo"),
        "{interfaces:?}"
    );
    assert_eq!(metrics.metrics.cpu.cores_usage.len(), 1, "-smp 1");
}

#[test]
fn agent_answers_ping_with_a_pong_carrying_the_same_id() {
    let _serial = serial();
    let guest = guest();
    let mut client = agent(guest);
    let round_trip = client.ping(REPLY).expect("pong");
    eprintln!("ping round trip through the guest: {round_trip:?}");
}

#[test]
fn unsafe_command_runs_inside_the_guest_and_returns_its_output() {
    let _serial = serial();
    let guest = guest();
    let mut client = agent(guest);
    let response = client
        .run_argv(&["cat", "/etc/hostname"], REPLY)
        .expect("response to UnsafeCommand");
    assert!(response.success, "{response:?}");
    assert_eq!(response.exit_code, Some(0));
    assert_eq!(response.stdout.trim(), HOSTNAME);
    let response = client
        .run_shell("echo out; echo err >&2; exit 3", REPLY)
        .expect("response to a shell UnsafeCommand");
    assert!(!response.success, "exit 3 is a failure: {response:?}");
    assert_eq!(response.exit_code, Some(3));
    assert_eq!(response.stdout, "out\n");
    assert_eq!(response.stderr, "err\n");
}

#[test]
fn safe_system_info_describes_this_guest() {
    let _serial = serial();
    let guest = guest();
    let mut client = agent(guest);
    let response = client
        .safe(SafeAction::SystemInfo, REPLY)
        .expect("response to SystemInfo");
    assert!(response.success, "{response:?}");
    let data = response.data.expect("SystemInfo carries data");
    assert!(
        data.to_string().contains(HOSTNAME),
        "SystemInfo names the guest: {data}"
    );
}

#[test]
fn unknown_safe_action_is_answered_with_unknown_action() {
    let _serial = serial();
    let guest = guest();
    let mut client = agent(guest);
    let response = client
        .safe(
            SafeAction::Unknown {
                action: "FormatAllDisks".into(),
            },
            REPLY,
        )
        .expect("an unknown action still gets a response");
    assert!(!response.success);
    assert_eq!(
        response.error.map(|e| e.code),
        Some(ErrorCode::UnknownAction)
    );
}

#[test]
fn agent_killed_inside_the_guest_is_restarted_and_identifies_again() {
    let _serial = serial();
    let guest = guest();
    let mut client = agent(guest);
    let mut qga = qga(guest);
    let before = qga
        .shell(
            "cat /run/infiniservice.pid /run/infiniservice.restarts",
            REPLY,
        )
        .expect("agent pid and restart count");
    let mut values = before.split_whitespace();
    let (old_pid, old_restarts) = (values.next().unwrap_or(""), values.next().unwrap_or(""));
    client
        .ping(REPLY)
        .expect("the agent answers before it is killed");
    client.clear_backlog();
    qga.shell(&format!("kill -KILL {old_pid}"), REPLY)
        .expect("killing the agent");
    // The new agent announces itself on start, without being asked.
    let identification = client
        .wait_for(
            "vm_identification from the restarted agent",
            BOOT,
            |m| match m {
                GuestMessage::VmIdentification(id) => Some(id.clone()),
                _ => None,
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", guest.diagnostics()));
    assert_eq!(identification.hostname, HOSTNAME);
    let after = qga
        .shell(
            "cat /run/infiniservice.pid /run/infiniservice.restarts",
            REPLY,
        )
        .expect("agent pid and restart count");
    let mut values = after.split_whitespace();
    assert_ne!(values.next(), Some(old_pid), "a new process runs");
    assert_ne!(
        values.next(),
        Some(old_restarts),
        "the supervisor counted a restart"
    );
    // The same host connection keeps working with the new agent.
    client
        .ping(REPLY)
        .expect("the restarted agent answers ping");
}

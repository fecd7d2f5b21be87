//! The crate against a real libvirtd (a private session daemon, `scripts/lib/libvirt.sh`)
//! running the e2e tiny guest under TCG: one shared guest for the power tests, one short-lived
//! guest for delete, one bare domain (no OS) for adoption and the daemon restart.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use infinibay_libvirt::{
    DomainInfo, Error, Event, Libvirt, LibvirtConfig, LifecycleKind, Operation, PowerState,
    SnapshotCause, agent_channel_xml, agent_socket_path, overlay_path, probe, vnc_socket_path,
};
use support::*;
use uuid::Uuid;

fn find(domains: &[DomainInfo], uuid: Uuid) -> &DomainInfo {
    domains
        .iter()
        .find(|d| d.uuid == uuid)
        .unwrap_or_else(|| panic!("{uuid} missing from {domains:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_vm_boots_a_tcg_guest_whose_agent_answers_on_its_channel_and_vnc_listens() {
    let _serial = serial().await;
    let mut client = client().await;
    let guest = running_guest(&mut client).await;
    let scratch = scratch();

    let info = client.libvirt.domain(guest.uuid).await.expect("domain");
    assert_eq!(info.name, guest.name);
    assert_eq!(info.power_state, PowerState::Running);
    assert!(info.persistent);
    let agent_socket = agent_socket_path(&scratch.sockets, guest.uuid);
    let vnc_socket = vnc_socket_path(&scratch.sockets, guest.uuid);
    assert_eq!(info.agent_socket.as_deref(), Some(agent_socket.as_path()));
    assert_eq!(info.vnc_socket.as_deref(), Some(vnc_socket.as_path()));
    assert!(is_socket(&agent_socket) && is_socket(&vnc_socket));

    // Our agent inside, through the channel libvirt bound: it identifies as the guest.
    let mut agent = agent_identification(agent_socket, BOOT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", scratch.console(&guest.name)));
    let identification = tokio::task::spawn_blocking(move || agent.hello(BOOT))
        .await
        .expect("join")
        .expect("hello");
    assert_eq!(identification.hostname, guest.name);
    assert_eq!(
        identification.claimed_vm_id.as_deref(),
        Some(guest.uuid.to_string().as_str())
    );
    // A real RFB server on the VNC socket.
    assert!(vnc_banner(&vnc_socket).starts_with("RFB 003."));
    // TCG here (no usable KVM), chosen from the daemon's capabilities.
    let xml = daemon().virsh(&["dumpxml", &guest.name]);
    assert!(xml.contains("<domain type='qemu'"), "{xml}");
    assert!(xml.contains("org.qemu.guest_agent.0"), "{xml}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_and_resume_arrive_as_paused_and_running_events_and_wrong_states_are_refused() {
    let _serial = serial().await;
    let mut client = client().await;
    let guest = running_guest(&mut client).await;
    let lv = &client.libvirt;

    lv.suspend(guest.uuid).await.expect("suspend");
    let paused = wait_lifecycle(&mut client.events, guest.uuid, LifecycleKind::Paused, EVENT).await;
    assert_eq!(paused.power_state, PowerState::Paused);
    assert_eq!(paused.name, guest.name);
    assert_eq!(
        lv.domain(guest.uuid).await.expect("domain").power_state,
        PowerState::Paused
    );

    let again = lv.suspend(guest.uuid).await;
    assert!(
        matches!(
            again,
            Err(Error::InvalidState {
                state: PowerState::Paused,
                operation: Operation::Suspend,
                ..
            })
        ),
        "{again:?}"
    );
    let shutdown = lv.shutdown(guest.uuid).await;
    assert!(
        matches!(shutdown, Err(Error::InvalidState { .. })),
        "{shutdown:?}"
    );
    let start = lv.power_on(guest.uuid).await;
    assert!(
        matches!(start, Err(Error::AlreadyRunning { uuid }) if uuid == guest.uuid),
        "{start:?}"
    );

    lv.resume(guest.uuid).await.expect("resume");
    let resumed = wait_lifecycle(
        &mut client.events,
        guest.uuid,
        LifecycleKind::Resumed,
        EVENT,
    )
    .await;
    assert_eq!(resumed.power_state, PowerState::Running);
    let again = lv.resume(guest.uuid).await;
    assert!(
        matches!(
            again,
            Err(Error::InvalidState {
                state: PowerState::Running,
                ..
            })
        ),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acpi_shutdown_powers_the_guest_off_and_then_running_only_actions_say_not_running() {
    let _serial = serial().await;
    let mut client = client().await;
    let guest = running_guest(&mut client).await;
    let lv = &client.libvirt;

    lv.shutdown(guest.uuid).await.expect("shutdown");
    let stopped =
        wait_lifecycle(&mut client.events, guest.uuid, LifecycleKind::Stopped, BOOT).await;
    assert_eq!(stopped.power_state, PowerState::Shutoff);
    assert_eq!(stopped.detail, "shut down");
    let console = scratch().console(&guest.name);
    assert!(
        console.contains("acpi: power button pressed"),
        "the guest powered off through ACPI:\n{console}"
    );
    assert_eq!(
        lv.domain(guest.uuid).await.expect("domain").power_state,
        PowerState::Shutoff
    );

    for (operation, result) in [
        (Operation::Shutdown, lv.shutdown(guest.uuid).await),
        (Operation::PowerOff, lv.power_off(guest.uuid).await),
        (Operation::Reboot, lv.reboot(guest.uuid).await),
        (Operation::Suspend, lv.suspend(guest.uuid).await),
        (Operation::Resume, lv.resume(guest.uuid).await),
    ] {
        assert!(
            matches!(&result, Err(Error::NotRunning { uuid, operation: op }) if *uuid == guest.uuid && *op == operation),
            "{operation}: {result:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_on_and_forced_power_off_arrive_as_started_and_destroyed_events() {
    let _serial = serial().await;
    let mut client = client().await;
    let guest = running_guest(&mut client).await;
    let lv = &client.libvirt;

    lv.power_off(guest.uuid).await.expect("power off");
    let stopped = wait_lifecycle(
        &mut client.events,
        guest.uuid,
        LifecycleKind::Stopped,
        EVENT,
    )
    .await;
    assert_eq!(
        (stopped.detail, stopped.power_state),
        ("destroyed", PowerState::Shutoff)
    );

    lv.power_on(guest.uuid).await.expect("power on");
    let started = wait_lifecycle(
        &mut client.events,
        guest.uuid,
        LifecycleKind::Started,
        EVENT,
    )
    .await;
    assert_eq!(
        (started.detail, started.power_state),
        ("booted", PowerState::Running)
    );
    // Libvirt binds the agent channel again at every start.
    let socket = agent_socket_path(&scratch().sockets, guest.uuid);
    agent_identification(socket, BOOT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", scratch().console(&guest.name)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_restarts_the_guest_through_acpi_and_it_stays_running() {
    let _serial = serial().await;
    let mut client = client().await;
    let guest = running_guest(&mut client).await;
    let scratch = scratch();
    let boots = |console: &str| {
        console
            .matches(&format!("init: guest {} up", guest.name))
            .count()
    };
    let before = boots(&scratch.console(&guest.name));

    client.libvirt.reboot(guest.uuid).await.expect("reboot");
    eventually("the guest booting again", BOOT, || {
        boots(&scratch.console(&guest.name)) > before
    })
    .await;
    let console = scratch.console(&guest.name);
    assert!(console.contains("acpi: power button pressed"), "{console}");
    assert_eq!(
        client
            .libvirt
            .domain(guest.uuid)
            .await
            .expect("domain")
            .power_state,
        PowerState::Running
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virsh_destroy_outside_infinibay_is_seen_as_a_stopped_event() {
    let _serial = serial().await;
    let mut client = client().await;
    let guest = running_guest(&mut client).await;

    daemon().virsh(&["destroy", &guest.name]);
    let stopped = wait_lifecycle(
        &mut client.events,
        guest.uuid,
        LifecycleKind::Stopped,
        EVENT,
    )
    .await;
    assert_eq!(stopped.power_state, PowerState::Shutoff);
    assert_eq!(stopped.detail, "destroyed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_vm_destroys_undefines_and_removes_both_sockets_and_the_overlay() {
    let _serial = serial().await;
    let mut client = client().await;
    let daemon = daemon();
    let scratch = scratch();
    let base = scratch.images.join("base.qcow2");
    if !base.exists() {
        let status = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&base)
            .arg("16M")
            .status()
            .expect("qemu-img");
        assert!(status.success());
    }
    let name = unique_name("delete");
    let uuid = Uuid::new_v4();
    remember_domain(&name);
    let mut spec = scratch.guest_spec(&name, uuid, false);
    spec.base_image = Some("base.qcow2".into());
    let info = client.libvirt.create_vm(spec).await.expect("create");
    assert_eq!(info.power_state, PowerState::Shutoff);
    let overlay = overlay_path(&scratch.images, uuid);
    let qemu_img = std::process::Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&overlay)
        .output()
        .expect("qemu-img info");
    let overlay_info = String::from_utf8_lossy(&qemu_img.stdout);
    assert!(
        overlay_info.contains("\"backing-filename-format\": \"qcow2\""),
        "{overlay_info}"
    );
    assert!(overlay_info.contains("base.qcow2"), "{overlay_info}");
    daemon.give(&overlay);

    client.libvirt.power_on(uuid).await.expect("power on");
    let agent_socket = agent_socket_path(&scratch.sockets, uuid);
    let vnc_socket = vnc_socket_path(&scratch.sockets, uuid);
    eventually("both sockets", EVENT, || {
        is_socket(&agent_socket) && is_socket(&vnc_socket)
    })
    .await;

    let report = client.libvirt.delete_vm(uuid).await.expect("delete");
    assert!(report.destroyed && report.undefined, "{report:?}");
    // libvirt removes the channel socket when QEMU stops; QEMU leaves its VNC socket behind,
    // and the overlay is ours: both must have been removed by delete_vm.
    for path in [&vnc_socket, &overlay] {
        assert!(
            report.removed_files.contains(path),
            "{} not in {report:?}",
            path.display()
        );
    }
    for path in [&agent_socket, &vnc_socket, &overlay] {
        assert!(!path.exists(), "{} still exists", path.display());
    }
    assert!(base.exists(), "the base image is never removed");
    let gone = client.libvirt.domain(uuid).await;
    assert!(
        matches!(gone, Err(Error::NoSuchDomain { uuid: u }) if u == uuid),
        "{gone:?}"
    );
    let undefined = wait_lifecycle(&mut client.events, uuid, LifecycleKind::Undefined, EVENT).await;
    assert_eq!(undefined.power_state, PowerState::Shutoff);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_name_reaches_libvirt_unchanged_and_a_second_vm_of_that_name_is_refused() {
    let _serial = serial().await;
    let mut client = client().await;
    let scratch = scratch();
    let name = format!("{} <name> & 'q' \"é\"", unique_name("name"));
    let uuid = Uuid::new_v4();
    remember_domain(&name);
    let info = client
        .libvirt
        .create_vm(scratch.guest_spec(&name, uuid, false))
        .await
        .expect("create");
    assert_eq!(info.name, name);
    let defined = wait_lifecycle(&mut client.events, uuid, LifecycleKind::Defined, EVENT).await;
    assert_eq!(
        (defined.name.as_str(), defined.power_state),
        (name.as_str(), PowerState::Shutoff)
    );

    let duplicate = client
        .libvirt
        .create_vm(scratch.guest_spec(&name, Uuid::new_v4(), false))
        .await;
    assert!(
        matches!(duplicate, Err(Error::AlreadyExists { .. })),
        "{duplicate:?}"
    );

    let report = client.libvirt.delete_vm(uuid).await.expect("delete");
    assert!(!report.destroyed && report.undefined, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_on_a_domain_that_does_not_exist_say_no_such_domain() {
    let _serial = serial().await;
    let client = client().await;
    let missing = Uuid::new_v4();
    let lv = &client.libvirt;
    for result in [
        lv.power_on(missing).await,
        lv.shutdown(missing).await,
        lv.suspend(missing).await,
        lv.delete_vm(missing).await.map(drop),
        lv.attach_agent_channel(missing).await.map(drop),
        lv.domain(missing).await.map(drop),
    ] {
        assert!(
            matches!(result, Err(Error::NoSuchDomain { uuid }) if uuid == missing),
            "{result:?}"
        );
    }
}

/// A domain adopted from outside: no OS (SeaBIOS finds nothing to boot and idles), qemu-ga's
/// channel only, defined with virsh. Started when not running.
fn bare_domain() -> (&'static str, Uuid) {
    static BARE: std::sync::OnceLock<(String, Uuid)> = std::sync::OnceLock::new();
    let (name, uuid) = BARE.get_or_init(|| {
        let name = unique_name("bare");
        let uuid = Uuid::new_v4();
        let xml = format!(
            "<domain type='qemu'><name>{name}</name><uuid>{uuid}</uuid>\
             <memory unit='MiB'>64</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64' machine='q35'>hvm</type></os>\
             <devices><controller type='virtio-serial' index='0'/>\
             <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\
             </devices></domain>"
        );
        let file = scratch().root.join(format!("{name}.xml"));
        std::fs::write(&file, xml).expect("write domain XML");
        remember_domain(&name);
        daemon().virsh(&["define", &file.to_string_lossy()]);
        (name, uuid)
    });
    if !daemon().virsh(&["domstate", name]).contains("running") {
        daemon().virsh(&["start", name]);
    }
    (name, *uuid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_agent_channel_hot_plugs_the_channel_into_a_running_domain_and_its_definition() {
    let _serial = serial().await;
    let client = client().await;
    let (name, uuid) = bare_domain();
    let socket = agent_socket_path(&scratch().sockets, uuid);
    let before = client.libvirt.domain(uuid).await.expect("domain");
    assert_eq!(before.agent_socket, None);

    let outcome = client
        .libvirt
        .attach_agent_channel(uuid)
        .await
        .expect("attach");
    assert_eq!(outcome.socket, socket);
    assert!(
        outcome.attached_live && outcome.attached_config,
        "{outcome:?}"
    );
    assert!(
        is_socket(&socket),
        "QEMU binds the hot-plugged channel at once"
    );
    let after = client.libvirt.domain(uuid).await.expect("domain");
    assert_eq!(after.agent_socket.as_deref(), Some(socket.as_path()));
    let inactive = daemon().virsh(&["dumpxml", "--inactive", name]);
    assert!(
        inactive.contains(&socket.to_string_lossy().to_string()),
        "{inactive}"
    );
    // What `infinibay channel-xml` prints is what was plugged in.
    let printed = agent_channel_xml(&scratch().sockets, uuid).expect("xml");
    assert!(printed.contains(&*socket.to_string_lossy()), "{printed}");

    let again = client
        .libvirt
        .attach_agent_channel(uuid)
        .await
        .expect("again");
    assert!(!again.attached_live && !again.attached_config, "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirtd_going_away_is_seen_and_when_it_returns_the_crate_reconnects_and_resyncs() {
    let _serial = serial().await;
    let mut client = client().await;
    let guest = running_guest(&mut client).await;
    let (bare, bare_uuid) = bare_domain();
    let daemon = daemon();

    daemon.stop();
    let reason = wait_event(&mut client.events, EVENT, "Disconnected", |e| match e {
        Event::Disconnected { reason } => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(!reason.is_empty());
    // Operations fail at once with the reason, they do not wait for the daemon.
    let started = Instant::now();
    let listed = client.libvirt.list_domains().await;
    assert!(
        matches!(listed, Err(Error::Unreachable { .. })),
        "{listed:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // While libvirtd is away, one domain's QEMU dies: nobody can send an event for it.
    let pid = daemon.qemu_pid(bare);
    // SAFETY: plain kill(2) of the QEMU this test's daemon started for its own domain.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    eventually("the killed QEMU gone", EVENT, || {
        !Path::new(&format!("/proc/{pid}")).exists()
    })
    .await;

    daemon.start();
    let domains = wait_event(
        &mut client.events,
        Duration::from_secs(60),
        "a resync",
        |e| match e {
            Event::Snapshot {
                cause: SnapshotCause::Reconnected,
                domains,
            } => Some(domains.clone()),
            _ => None,
        },
    )
    .await;
    assert_eq!(find(&domains, guest.uuid).power_state, PowerState::Running);
    assert_eq!(find(&domains, bare_uuid).power_state, PowerState::Crashed);

    // Events flow again on the new connection.
    client.libvirt.suspend(guest.uuid).await.expect("suspend");
    wait_lifecycle(&mut client.events, guest.uuid, LifecycleKind::Paused, EVENT).await;
    client.libvirt.resume(guest.uuid).await.expect("resume");
    wait_lifecycle(
        &mut client.events,
        guest.uuid,
        LifecycleKind::Resumed,
        EVENT,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reports_the_daemon_with_tcg_and_an_absent_daemon_with_libvirts_reason() {
    let _serial = serial().await;
    let report = probe(&daemon().uri, Duration::from_secs(30))
        .await
        .expect("probe");
    assert!(
        report
            .libvirt_version
            .starts_with(|c: char| c.is_ascii_digit()),
        "{report:?}"
    );
    assert_eq!(report.hypervisor, "QEMU");
    assert!(
        report.domain_types.iter().any(|t| t == "qemu"),
        "{report:?}"
    );

    let absent = "qemu+unix:///session?socket=/nonexistent/libvirt-sock";
    let started = Instant::now();
    let error = probe(absent, Duration::from_secs(30))
        .await
        .expect_err("absent");
    assert!(started.elapsed() < Duration::from_secs(10));
    match &error {
        Error::Unreachable { uri, reason } => {
            assert_eq!(uri, absent);
            assert!(reason.contains("No such file"), "{reason}");
        }
        other => panic!("{other:?}"),
    }

    // A handle on an absent daemon: not connected, says why, and operations fail at once.
    let mut config = LibvirtConfig::new(absent, "/tmp".into(), "/tmp".into());
    config.reconnect_initial = Duration::from_millis(100);
    let (libvirt, _events) = Libvirt::start(config).expect("start");
    let waited = libvirt.wait_connected(Duration::from_secs(2)).await;
    assert!(
        matches!(&waited, Err(Error::Unreachable { reason, .. }) if reason.contains("No such file")),
        "{waited:?}"
    );
    let power_on = libvirt.power_on(Uuid::new_v4()).await;
    assert!(
        matches!(power_on, Err(Error::Unreachable { .. })),
        "{power_on:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_libvirtd_makes_operations_time_out_instead_of_hanging() {
    let _serial = serial().await;
    let daemon = daemon();
    let mut config = config();
    config.call_timeout = Duration::from_secs(3);
    let (libvirt, _events) = Libvirt::start(config).expect("start");
    libvirt
        .wait_connected(Duration::from_secs(30))
        .await
        .expect("connected");
    let pid_file = daemon.dir.join("libvirtd.pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {}", pid_file.display()));
    // SAFETY: kill(2) on the libvirtd this test's script started; SIGCONT follows below.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let started = Instant::now();
    let listed = libvirt.list_domains().await;
    let waited = started.elapsed();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    assert!(
        matches!(
            listed,
            Err(Error::Timeout {
                operation: Operation::List,
                ..
            })
        ),
        "{listed:?}"
    );
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    // The daemon answers again on the same connection.
    libvirt.list_domains().await.expect("list after SIGCONT");
}

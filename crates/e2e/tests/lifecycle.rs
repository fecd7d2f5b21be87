//! Guest lifecycle: every way a guest ends, and that none outlives the test runner.
//! Each test boots its own guest (it ends it), one at a time.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use infinibay_e2e::fixture::serial;
use infinibay_e2e::guest::pid_is_alive;
use infinibay_e2e::{Guest, GuestImage, GuestOptions};
use infinibay_protocol::message::SafeAction;

const BOOT: Duration = Duration::from_secs(90);

fn boot(name: &str) -> Guest {
    let image = GuestImage::shared().expect("guest image builds");
    Guest::boot(
        image,
        GuestOptions {
            name: name.into(),
            hostname: name.into(),
            ..GuestOptions::default()
        },
    )
    .expect("guest boots")
}

fn wait_until_gone(pid: u32, timeout: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if !pid_is_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    !pid_is_alive(pid)
}

#[test]
fn killed_test_runner_takes_its_qemu_with_it() {
    let _serial = serial();
    // Build the image here, so that the child only boots.
    GuestImage::shared().expect("guest image builds");
    let mut holder = Command::new(env!("CARGO_BIN_EXE_infinibay-e2e-guest"))
        .args(["--hostname", "leak-check"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting infinibay-e2e-guest");
    let stdout = holder.stdout.take().expect("piped stdout");
    let qemu_pid: u32 = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| line.strip_prefix("qemu_pid=").map(str::to_owned))
        .and_then(|pid| pid.parse().ok())
        .expect("the holder prints qemu_pid=");
    assert!(
        pid_is_alive(qemu_pid),
        "qemu {qemu_pid} runs under the holder"
    );
    // SIGKILL: no destructor, no atexit, only PR_SET_PDEATHSIG can save us.
    holder.kill().expect("killing the holder");
    holder.wait().expect("reaping the holder");
    assert!(
        wait_until_gone(qemu_pid, Duration::from_secs(10)),
        "qemu {qemu_pid} outlived the process that started it"
    );
}

#[test]
fn dropping_a_guest_kills_its_qemu_and_removes_its_socket() {
    let _serial = serial();
    let guest = boot("drop-check");
    let pid = guest.pid();
    let socket = guest.agent_socket().to_path_buf();
    assert!(socket.exists());
    drop(guest);
    assert!(
        wait_until_gone(pid, Duration::from_secs(5)),
        "qemu {pid} survived Drop"
    );
    assert!(!socket.exists(), "{} left behind", socket.display());
}

#[test]
fn qmp_quit_stops_a_running_guest_cleanly() {
    let _serial = serial();
    let guest = boot("quit-check");
    guest
        .qga(BOOT)
        .and_then(|mut qga| qga.ping(Duration::from_secs(20)))
        .unwrap_or_else(|e| panic!("guest up: {e}\n{}", guest.diagnostics()));
    let status = guest.quit(Duration::from_secs(20)).expect("qmp quit");
    assert!(status.success(), "qemu exits 0 on quit: {status}");
    assert!(!guest.is_running());
}

#[test]
fn guest_powers_off_through_the_agent_and_qemu_exits() {
    let _serial = serial();
    let guest = boot("poweroff-check");
    let mut agent = guest
        .agent(BOOT)
        .unwrap_or_else(|e| panic!("agent port: {e}\n{}", guest.diagnostics()));
    agent
        .hello(BOOT)
        .unwrap_or_else(|e| panic!("handshake: {e}\n{}", guest.diagnostics()));
    let response = agent
        .safe(SafeAction::Shutdown, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("Shutdown response: {e}\n{}", guest.diagnostics()));
    assert!(response.success, "{response:?}");
    let status = guest
        .wait_exit(Duration::from_secs(60))
        .expect("waiting for qemu");
    let status = status.unwrap_or_else(|| panic!("qemu still runs\n{}", guest.diagnostics()));
    // -no-reboot + a guest power-off: QEMU exits by itself with status 0.
    assert!(status.success(), "{status}\n{}", guest.diagnostics());
    assert!(
        guest.console_tail(20).contains("reboot: Power down"),
        "the kernel powered off\n{}",
        guest.diagnostics()
    );
}

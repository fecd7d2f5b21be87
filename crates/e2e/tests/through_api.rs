//! A user drives a real guest through the host's API (`docs/api.md`): commands run inside
//! the guest, the guest powers off through the agent and goes offline, and metrics reach a
//! real Socket.IO client. Own host and own guest (the power-off ends it).

use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use infinibay_e2e::fixture::{TiedChild, scratch_dir, serial};
use infinibay_e2e::host::host_binary;
use infinibay_e2e::image::workspace_root;
use infinibay_e2e::{Guest, GuestImage, GuestOptions, HostOptions, HostProcess, StoreView};
use infinibay_store::VmStatus;
use serde_json::{Value, json};

const BOOT: Duration = Duration::from_secs(90);
const HOSTNAME: &str = "e2e-through-api";

struct World {
    socket_dir: tempfile::TempDir,
    /// Kept so that it outlives the host (dropping it removes the directory).
    _data_dir: tempfile::TempDir,
    host: HostProcess,
    /// One read-only view on the host's database for the whole run (see `StoreView`).
    store: StoreView,
    guest: Guest,
    token: String,
}

fn world() -> &'static World {
    static WORLD: OnceLock<Result<World, String>> = OnceLock::new();
    WORLD
        .get_or_init(|| {
            let socket_dir = scratch_dir("s").map_err(|e| e.to_string())?;
            let data_dir = scratch_dir("d").map_err(|e| e.to_string())?;
            // The first start creates `admin` and prints its generated password once.
            let options = HostOptions::new(socket_dir.path(), data_dir.path());
            let binary = host_binary().map_err(|e| e.to_string())?;
            let host = HostProcess::start(&binary, options, Duration::from_secs(60))
                .map_err(|e| format!("starting infinibay: {e}"))?;
            let password = host
                .first_admin_password()
                .ok_or_else(|| format!("no first-start banner in\n{}", host.log_tail(40)))?;
            let token = host
                .login("admin", &password)
                .map_err(|e| format!("admin login: {e}"))?;
            let store = StoreView::open_sqlite(data_dir.path())
                .map_err(|e| format!("opening the host's database: {e}"))?;
            let image = GuestImage::shared().map_err(|e| e.to_string())?;
            let guest = Guest::boot(
                image,
                GuestOptions {
                    name: "through-api".into(),
                    hostname: HOSTNAME.into(),
                    socket_dir: Some(socket_dir.path().to_path_buf()),
                    ..GuestOptions::default()
                },
            )
            .map_err(|e| format!("booting the guest: {e}"))?;
            Ok(World {
                socket_dir,
                _data_dir: data_dir,
                host,
                store,
                guest,
                token,
            })
        })
        .as_ref()
        .unwrap_or_else(|e| panic!("{e}"))
}

impl World {
    fn context(&self) -> String {
        self.context_of(&self.guest)
    }

    fn context_of(&self, guest: &Guest) -> String {
        format!(
            "--- host log ---\n{}\n{}",
            self.host.log_tail(60),
            guest.diagnostics()
        )
    }

    fn wait_status(&self, guest: &Guest, status: VmStatus, timeout: Duration) -> Duration {
        let store = &self.store;
        let vm = guest.vm_id().to_string();
        let started = Instant::now();
        loop {
            if store.vm(&vm).ok().flatten().map(|r| r.status) == Some(status) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < timeout,
                "VM not {} within {timeout:?}\n{}",
                status.as_str(),
                self.context_of(guest)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn execute(&self, command: Value) -> Value {
        self.execute_on(&self.guest, command)
    }

    fn execute_on(&self, guest: &Guest, command: Value) -> Value {
        let reply = self
            .host
            .graphql(
                Some(&self.token),
                "mutation($vm: ID!, $c: CommandInput!) { executeVmCommand(vmId: $vm, command: $c) \
                 { id success exitCode stdout stderr data executionTimeMs error { code message } } }",
                json!({ "vm": guest.vm_id().to_string(), "c": command }),
                Duration::from_secs(60),
            )
            .unwrap_or_else(|e| panic!("executeVmCommand: {e}\n{}", self.context_of(guest)));
        assert!(
            reply.get("errors").is_none(),
            "{reply}\n{}",
            self.context_of(guest)
        );
        reply["data"]["executeVmCommand"].clone()
    }
}

#[test]
fn safe_and_unsafe_commands_run_inside_the_guest_through_the_api() {
    let _serial = serial();
    let world = world();
    world.wait_status(&world.guest, VmStatus::Online, BOOT);
    let info = world.execute(json!({"type": "SAFE", "action": "SystemInfo"}));
    assert_eq!(info["success"], true, "{info}");
    assert!(info["data"].to_string().contains(HOSTNAME), "{info}");
    let cat = world.execute(json!({"type": "UNSAFE", "argv": ["cat", "/etc/hostname"]}));
    assert_eq!(cat["success"], true, "{cat}");
    assert_eq!(
        cat["stdout"].as_str().map(str::trim),
        Some(HOSTNAME),
        "{cat}"
    );
    let failing = world.execute(json!({"type": "UNSAFE", "rawCommand": "echo oops >&2; exit 4"}));
    assert_eq!(failing["success"], false, "{failing}");
    assert_eq!(failing["exitCode"], 4, "{failing}");
    assert_eq!(failing["stderr"], "oops\n", "{failing}");
}

#[test]
fn guest_metrics_reach_a_socket_io_client() {
    let _serial = serial();
    let world = world();
    world.wait_status(&world.guest, VmStatus::Online, BOOT);
    let root = workspace_root();
    assert!(
        root.join("tests/node/node_modules/socket.io-client")
            .is_dir(),
        "socket.io-client is not installed: run `npm ci --prefix tests/node`"
    );
    let probe = root.join("e2e/socketio-probe.cjs");
    let mut command = Command::new("node");
    command
        .env("NODE_PATH", root.join("tests/node/node_modules"))
        .arg(&probe)
        .arg(format!("http://{}", world.host.listen_addr()))
        .arg(&world.token)
        .arg(world.guest.vm_id().to_string())
        .current_dir(workspace_root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut probe_process = TiedChild::spawn(command).expect("starting node");
    let child = probe_process.child();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for node") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no metricsUpdate within 60 s\n{}",
            world.context()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    use std::io::Read as _;
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut stdout);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    assert!(
        status.success(),
        "probe failed: {stderr}\n{}",
        world.context()
    );
    let update: Value = serde_json::from_str(stdout.trim()).expect("the probe prints the update");
    assert_eq!(update["vmId"], world.guest.vm_id().to_string());
    assert!(
        update["metrics"]["memory"]["total_kb"]
            .as_u64()
            .unwrap_or(0)
            > 100_000,
        "{update}"
    );
}

#[test]
fn guest_powered_off_through_the_agent_goes_offline() {
    let _serial = serial();
    let world = world();
    // Its own guest: this one ends.
    let guest = Guest::boot(
        GuestImage::shared().expect("image"),
        GuestOptions {
            name: "api-poweroff".into(),
            hostname: "e2e-api-poweroff".into(),
            socket_dir: Some(world.socket_dir.path().to_path_buf()),
            ..GuestOptions::default()
        },
    )
    .expect("guest boots");
    world.wait_status(&guest, VmStatus::Online, BOOT);
    let shutdown = world.execute_on(&guest, json!({"type": "SAFE", "action": "Shutdown"}));
    assert_eq!(shutdown["success"], true, "{shutdown}");
    let exited = guest
        .wait_exit(Duration::from_secs(60))
        .expect("waiting for qemu");
    assert!(
        exited.is_some(),
        "QEMU still runs\n{}",
        world.context_of(&guest)
    );
    let took = world.wait_status(&guest, VmStatus::Offline, Duration::from_secs(40));
    eprintln!("offline {took:?} after QEMU exited");
}

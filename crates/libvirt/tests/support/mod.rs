//! What the tests run against: a real libvirtd (`IB_TEST_LIBVIRT_URI` / `IB_TEST_LIBVIRT_DIR`
//! from `scripts/lib/libvirt.sh`, else a throwaway one this process starts through the same
//! script), a short scratch directory the daemon's QEMU can use, and the e2e tiny guest's kernel
//! and initramfs.
//!
//! Domains the tests define are destroyed and undefined when the test binary exits (an
//! `atexit` hook), so that no guest keeps running while the rest of the suite does.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use infinibay_libvirt::{
    Event, Events, KernelBoot, Libvirt, LibvirtConfig, LifecycleEvent, LifecycleKind, PowerState,
    VmSpec,
};
use uuid::Uuid;

pub const URI_ENV: &str = "IB_TEST_LIBVIRT_URI";
pub const DIR_ENV: &str = "IB_TEST_LIBVIRT_DIR";

/// Boot under TCG on a loaded 2-core machine: generous on purpose.
pub const BOOT: Duration = Duration::from_secs(120);
/// A libvirt event after the action that causes it.
pub const EVENT: Duration = Duration::from_secs(30);

/// The daemon the tests talk to.
pub struct Daemon {
    pub uri: String,
    /// The throwaway daemon's directory (its pid files; what the script's functions take).
    pub dir: PathBuf,
    /// The user its QEMU runs as (owner of `dir`).
    pub uid: u32,
    pub gid: u32,
}

/// Keeps the throwaway daemon of this process: closing its stdin (at exit) stops it.
static WATCHDOG: Mutex<Option<Child>> = Mutex::new(None);

/// What the exit hook undoes.
struct Leftovers {
    uri: Option<String>,
    scratch: Option<PathBuf>,
    domains: Vec<String>,
}

static LEFTOVERS: Mutex<Leftovers> = Mutex::new(Leftovers {
    uri: None,
    scratch: None,
    domains: Vec::new(),
});

fn leftovers() -> std::sync::MutexGuard<'static, Leftovers> {
    LEFTOVERS.lock().unwrap_or_else(|p| p.into_inner())
}

extern "C" fn clean_up_at_exit() {
    let (uri, scratch, domains) = {
        let mut l = leftovers();
        (
            l.uri.take(),
            l.scratch.take(),
            std::mem::take(&mut l.domains),
        )
    };
    if let Some(uri) = uri {
        for name in &domains {
            for args in [&["destroy", name][..], &["undefine", "--nvram", name][..]] {
                let _ = Command::new("virsh")
                    .args(["-q", "-c", &uri])
                    .args(args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
    if let Some(scratch) = scratch {
        let _ = std::fs::remove_dir_all(scratch);
    }
}

/// Undefine `name` when the test binary exits.
pub fn remember_domain(name: &str) {
    leftovers().domains.push(name.to_owned());
}

fn script() -> PathBuf {
    infinibay_e2e::image::workspace_root().join("scripts/lib/libvirt.sh")
}

/// Runs one function of `scripts/lib/libvirt.sh` with `args`.
pub fn script_function(function: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new("bash")
        .arg("-c")
        .arg(format!("source \"$0\" && {function} \"$@\""))
        .arg(script())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {function}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{function} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// A throwaway daemon through the script, held by a shell that stops it when our end of its
/// stdin closes (when this process exits, however it exits).
fn start_throwaway() -> Result<(String, PathBuf), String> {
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(
            "source \"$0\" && libvirt_throwaway_start >/dev/null || exit 1; \
             printf '%s\\n%s\\n' \"$IB_TEST_LIBVIRT_URI\" \"$IB_TEST_LIBVIRT_DIR\"; \
             read -r _ || true; libvirt_throwaway_stop",
        )
        .arg(script())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting the throwaway libvirtd: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let uri = lines.next().and_then(|l| l.ok()).unwrap_or_default();
    let dir = lines.next().and_then(|l| l.ok()).unwrap_or_default();
    if uri.is_empty() || dir.is_empty() {
        let status = child.wait().map_err(|e| e.to_string())?;
        return Err(format!(
            "libvirt_throwaway_start failed ({status}); its output is above"
        ));
    }
    *WATCHDOG.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
    Ok((uri, PathBuf::from(dir)))
}

pub fn daemon() -> &'static Daemon {
    static DAEMON: OnceLock<Result<Daemon, String>> = OnceLock::new();
    DAEMON
        .get_or_init(|| {
            let (uri, dir) = match std::env::var(URI_ENV) {
                Ok(uri) if !uri.is_empty() => {
                    let dir = std::env::var(DIR_ENV).map_err(|_| {
                        format!(
                            "{URI_ENV} is set but {DIR_ENV} is not (libvirt_throwaway_start \
                             in scripts/lib/libvirt.sh sets both)"
                        )
                    })?;
                    (uri, PathBuf::from(dir))
                }
                _ => start_throwaway()?,
            };
            let meta = std::fs::metadata(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            leftovers().uri = Some(uri.clone());
            static HOOK: std::sync::Once = std::sync::Once::new();
            // SAFETY: registers a plain `extern "C" fn()` with the C library.
            HOOK.call_once(|| unsafe {
                libc::atexit(clean_up_at_exit);
            });
            Ok(Daemon {
                uri,
                dir,
                uid: meta.uid(),
                gid: meta.gid(),
            })
        })
        .as_ref()
        .unwrap_or_else(|e| panic!("the libvirt tests need a libvirtd: {e}"))
}

impl Daemon {
    /// Stops libvirtd (its QEMU processes keep running).
    pub fn stop(&self) {
        let dir = self.dir.to_string_lossy();
        script_function("libvirt_throwaway_daemon_stop", &[&dir]).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts libvirtd again on the same directory.
    pub fn start(&self) {
        let dir = self.dir.to_string_lossy();
        script_function("libvirt_throwaway_daemon_start", &[&dir])
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// `virsh -c URI ARGS...`: a change made outside infinibay.
    pub fn virsh(&self, args: &[&str]) -> String {
        let output = Command::new("virsh")
            .args(["-q", "-c", &self.uri])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running virsh: {e}"));
        assert!(
            output.status.success(),
            "virsh {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The pid of a running domain's QEMU (libvirt's pid file).
    pub fn qemu_pid(&self, name: &str) -> i32 {
        let file = self.dir.join(format!("run/libvirt/qemu/run/{name}.pid"));
        std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("no QEMU pid in {}", file.display()))
    }

    /// Lets the daemon's user own `path` (QEMU opens overlays read-write as that user; a
    /// session daemon does not chown images the way the system one does).
    pub fn give(&self, path: &Path) {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

/// The scratch directory of this test binary: short (`/tmp/ibl-XXXXXX`: sockets go in it),
/// reachable by the daemon's QEMU, with the guest kernel and initramfs copied in (the
/// workspace may sit where that user cannot read).
pub struct Scratch {
    pub root: PathBuf,
    /// The socket directory (sticky, world-writable: QEMU binds sockets in it).
    pub sockets: PathBuf,
    /// The image directory.
    pub images: PathBuf,
    /// Serial console logs.
    pub logs: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

pub fn scratch() -> &'static Scratch {
    static SCRATCH: OnceLock<Result<Scratch, String>> = OnceLock::new();
    SCRATCH
        .get_or_init(|| {
            let image = infinibay_e2e::GuestImage::shared()
                .map_err(|e| format!("building the e2e guest image: {e}"))?;
            let root = tempfile::Builder::new()
                .prefix("ibl-")
                .tempdir_in("/tmp")
                .map_err(|e| e.to_string())?
                .keep();
            leftovers().scratch = Some(root.clone());
            let mode = |path: &Path, mode: u32| {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| format!("chmod {}: {e}", path.display()))
            };
            mode(&root, 0o755)?;
            let dirs = ["s", "i", "log"].map(|d| root.join(d));
            for (dir, m) in dirs.iter().zip([0o1777, 0o755, 0o1777]) {
                std::fs::create_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                mode(dir, m)?;
            }
            let kernel = root.join("vmlinuz");
            let initrd = root.join("initramfs.gz");
            for (from, to) in [(&image.kernel, &kernel), (&image.initrd, &initrd)] {
                std::fs::copy(from, to).map_err(|e| format!("copy {}: {e}", from.display()))?;
                mode(to, 0o644)?;
            }
            let [sockets, images, logs] = dirs;
            Ok(Scratch {
                root,
                sockets,
                images,
                logs,
                kernel,
                initrd,
            })
        })
        .as_ref()
        .unwrap_or_else(|e| panic!("{e}"))
}

impl Scratch {
    pub fn console_log(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{name}.log"))
    }

    /// The console so far (failure context).
    pub fn console(&self, name: &str) -> String {
        std::fs::read_to_string(self.console_log(name)).unwrap_or_default()
    }

    /// The tiny guest booting from its kernel, with `ib.vm_id` set to the domain UUID.
    pub fn guest_spec(&self, name: &str, uuid: Uuid, start: bool) -> VmSpec {
        VmSpec {
            uuid: Some(uuid),
            name: name.to_owned(),
            memory_mib: 256,
            vcpus: 1,
            base_image: None,
            kernel: Some(KernelBoot {
                kernel: self.kernel.clone(),
                initrd: self.initrd.clone(),
                cmdline: format!(
                    "console=ttyS0 quiet panic=-1 no_timer_check ib.hostname={name} ib.vm_id={uuid}"
                ),
            }),
            accel: Default::default(),
            serial_log: Some(self.console_log(name)),
            start,
        }
    }
}

/// A unique domain name for this run (the daemon may be shared with earlier runs).
pub fn unique_name(what: &str) -> String {
    format!("ibt-{what}-{}", &Uuid::new_v4().simple().to_string()[..8])
}

pub fn config() -> LibvirtConfig {
    let scratch = scratch();
    let mut config = LibvirtConfig::new(
        daemon().uri.clone(),
        scratch.sockets.clone(),
        scratch.images.clone(),
    );
    // TCG domain starts on a busy 2-core machine can take a while.
    config.call_timeout = Duration::from_secs(60);
    config.reconnect_max = Duration::from_secs(2);
    config
}

/// A connected client and its event stream, past the first snapshot.
pub struct Client {
    pub libvirt: Libvirt,
    pub events: Events,
}

pub async fn client() -> Client {
    let (libvirt, mut events) = Libvirt::start(config()).expect("start");
    libvirt
        .wait_connected(Duration::from_secs(30))
        .await
        .expect("connected to the test libvirtd");
    let first = next_event(&mut events, EVENT).await;
    assert!(
        matches!(first, Event::Snapshot { .. }),
        "the first event is a snapshot, got {first:?}"
    );
    Client { libvirt, events }
}

pub async fn next_event(events: &mut Events, timeout: Duration) -> Event {
    match tokio::time::timeout(timeout, events.recv()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("the event channel closed"),
        Err(_) => panic!("no event within {timeout:?}"),
    }
}

/// The first event `pick` accepts within `timeout`; what came before is listed on failure.
pub async fn wait_event<T>(
    events: &mut Events,
    timeout: Duration,
    what: &str,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(event)) => {
                if let Some(found) = pick(&event) {
                    return found;
                }
                seen.push(event);
            }
            Ok(None) => panic!("event channel closed while waiting for {what}; seen {seen:#?}"),
            Err(_) => panic!("no {what} within {timeout:?}; seen {seen:#?}"),
        }
    }
}

/// Waits for a lifecycle event of `uuid` of `kind`.
pub async fn wait_lifecycle(
    events: &mut Events,
    uuid: Uuid,
    kind: LifecycleKind,
    timeout: Duration,
) -> LifecycleEvent {
    wait_event(
        events,
        timeout,
        &format!("{kind} event of {uuid}"),
        |e| match e {
            Event::Lifecycle(l) if l.uuid == uuid && l.kind == kind => Some(l.clone()),
            _ => None,
        },
    )
    .await
}

/// Polls `check` every 100 ms until it holds or `timeout` passes.
pub async fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

/// Connects to our agent through the channel socket and does the host's handshake.
pub async fn agent_identification(
    socket: PathBuf,
    timeout: Duration,
) -> Result<infinibay_e2e::agent::AgentClient, String> {
    tokio::task::spawn_blocking(move || {
        let mut agent = infinibay_e2e::AgentClient::connect(&socket, timeout)
            .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
        agent
            .hello(timeout)
            .map_err(|e| format!("handshake on {}: {e}", socket.display()))?;
        Ok(agent)
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The first bytes a VNC server sends: its RFB version.
pub fn vnc_banner(socket: &Path) -> String {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut banner = [0u8; 12];
    stream.read_exact(&mut banner).expect("RFB banner");
    String::from_utf8_lossy(&banner).into_owned()
}

/// The guest every test that needs a booted guest shares: created once with `create_vm`
/// (kernel + initramfs of the e2e image, started), then brought back to running by whoever
/// needs it running.
pub struct SharedGuest {
    pub uuid: Uuid,
    pub name: String,
}

pub async fn shared_guest(libvirt: &Libvirt) -> &'static SharedGuest {
    static GUEST: tokio::sync::OnceCell<SharedGuest> = tokio::sync::OnceCell::const_new();
    GUEST
        .get_or_init(|| async {
            let name = unique_name("guest");
            let uuid = Uuid::new_v4();
            remember_domain(&name);
            libvirt
                .create_vm(scratch().guest_spec(&name, uuid, true))
                .await
                .unwrap_or_else(|e| panic!("create_vm of the shared guest: {e}"));
            SharedGuest { uuid, name }
        })
        .await
}

/// The shared guest, running with our agent answering (so its init, acpid included, is up).
pub async fn running_guest(client: &mut Client) -> &'static SharedGuest {
    let guest = shared_guest(&client.libvirt).await;
    let info = client.libvirt.domain(guest.uuid).await.expect("domain");
    match info.power_state {
        PowerState::Running => {}
        PowerState::Paused => client.libvirt.resume(guest.uuid).await.expect("resume"),
        _ => client.libvirt.power_on(guest.uuid).await.expect("power on"),
    }
    let socket = infinibay_libvirt::agent_socket_path(&scratch().sockets, guest.uuid);
    if let Err(e) = agent_identification(socket, BOOT).await {
        panic!(
            "the shared guest's agent does not answer: {e}\n--- console ---\n{}",
            scratch().console(&guest.name)
        );
    }
    // Whatever the setup caused is not what the test is about.
    while client.events.try_recv().is_ok() {}
    guest
}

/// One test at a time in this binary: they share the guest and the daemon. (A tokio mutex:
/// it is held across awaits, and a failed test must not poison it for the next one.)
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

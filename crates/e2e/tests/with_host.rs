//! The real host (`infinibay serve`) serving real QEMU guests: discovery, liveness, ingest
//! into the store, restarts on both sides, and a guest speaking the original agent's format
//! alongside. One host and one long-lived guest are shared; the tests that end a guest boot
//! their own.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use infinibay_e2e::fixture::{TiedChild, scratch_dir, serial};
use infinibay_e2e::host::host_binary;
use infinibay_e2e::image::cargo_build_binary;
use infinibay_e2e::{Guest, GuestImage, GuestOptions, HostOptions, HostProcess, StoreView};
use infinibay_store::VmStatus;

const BOOT: Duration = Duration::from_secs(90);
const REPLY: Duration = Duration::from_secs(20);
/// The host's default liveness window: 3 missed pings at a 10 s interval.
const LIVENESS_WINDOW: Duration = Duration::from_secs(30);
const SHARED_HOSTNAME: &str = "e2e-with-host";

struct World {
    /// Short, because QEMU binds `vm-<uuid>.sock` in it (AF_UNIX paths ≤ 107 bytes).
    socket_dir: tempfile::TempDir,
    data_dir: tempfile::TempDir,
    host: Mutex<Option<HostProcess>>,
    /// The one read-only view on the host's database, open for the whole run (see
    /// `StoreView` for why it is never reopened).
    store: StoreView,
    guest: Guest,
}

fn world() -> &'static World {
    static WORLD: OnceLock<Result<World, String>> = OnceLock::new();
    WORLD
        .get_or_init(|| {
            let socket_dir = scratch_dir("s").map_err(|e| e.to_string())?;
            let data_dir = scratch_dir("d").map_err(|e| e.to_string())?;
            let started = Instant::now();
            let binary = host_binary().map_err(|e| e.to_string())?;
            eprintln!("e2e: infinibay built after {:?}", started.elapsed());
            let host = HostProcess::start(
                &binary,
                HostOptions::new(socket_dir.path(), data_dir.path()),
                Duration::from_secs(60),
            )
            .map_err(|e| format!("starting infinibay: {e}"))?;
            eprintln!("e2e: infinibay healthy after {:?}", started.elapsed());
            let store = StoreView::open_sqlite(data_dir.path())
                .map_err(|e| format!("opening the host's database: {e}"))?;
            let image = GuestImage::shared().map_err(|e| e.to_string())?;
            eprintln!("e2e: guest image ready after {:?}", started.elapsed());
            let guest = Guest::boot(
                image,
                GuestOptions {
                    name: "with-host".into(),
                    hostname: SHARED_HOSTNAME.into(),
                    socket_dir: Some(socket_dir.path().to_path_buf()),
                    ..GuestOptions::default()
                },
            )
            .map_err(|e| format!("booting the guest: {e}"))?;
            Ok(World {
                socket_dir,
                data_dir,
                host: Mutex::new(Some(host)),
                store,
                guest,
            })
        })
        .as_ref()
        .unwrap_or_else(|e| panic!("{e}"))
}

impl World {
    fn host(&self) -> MutexGuard<'_, Option<HostProcess>> {
        self.host.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn store(&self) -> &StoreView {
        &self.store
    }

    fn host_log(&self) -> String {
        self.host()
            .as_ref()
            .map(|h| h.log_tail(60))
            .unwrap_or_default()
    }

    /// Diagnostics for a failed wait: host log and the guest's console.
    fn context(&self, guest: &Guest) -> String {
        format!(
            "--- host log ---\n{}\n{}",
            self.host_log(),
            guest.diagnostics()
        )
    }
}

/// Poll `check` every 200 ms until it yields a value or `timeout` passes.
fn eventually<T>(
    timeout: Duration,
    what: &str,
    context: impl Fn() -> String,
    mut check: impl FnMut() -> Option<T>,
) -> (T, Duration) {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return (value, started.elapsed());
        }
        if started.elapsed() > timeout {
            panic!("{what}: not within {timeout:?}\n{}", context());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn status_of(store: &StoreView, vm: &str) -> Option<VmStatus> {
    store.vm(vm).ok().flatten().map(|r| r.status)
}

fn wait_status(world: &World, guest: &Guest, status: VmStatus, timeout: Duration) -> Duration {
    let store = world.store();
    let vm = guest.vm_id().to_string();
    eventually(
        timeout,
        &format!("VM {vm} {}", status.as_str()),
        || world.context(guest),
        || (status_of(store, &vm) == Some(status)).then_some(()),
    )
    .1
}

fn boot_own_guest(world: &World, name: &str) -> Guest {
    let image = GuestImage::shared().expect("guest image");
    Guest::boot(
        image,
        GuestOptions {
            name: name.into(),
            hostname: name.into(),
            socket_dir: Some(world.socket_dir.path().to_path_buf()),
            ..GuestOptions::default()
        },
    )
    .expect("guest boots")
}

#[test]
fn host_discovers_the_guest_and_marks_it_online_with_its_identity() {
    let _serial = serial();
    let world = world();
    let guest = &world.guest;
    let took = wait_status(world, guest, VmStatus::Online, BOOT);
    eprintln!("online {took:?} after the first poll");
    let record = world
        .store()
        .vm(&guest.vm_id().to_string())
        .expect("store")
        .expect("VM registered under the uuid of its socket name");
    let agent = record.agent.expect("the agent's identification is stored");
    assert_eq!(agent.hostname, SHARED_HOSTNAME);
    assert_eq!(agent.os, "linux");
    let health = world
        .host()
        .as_ref()
        .expect("host runs")
        .get("/healthz")
        .expect("healthz");
    assert_eq!(health.status, 200, "{}", health.body);
}

#[test]
fn guest_metrics_reach_the_store_with_its_memory_size_and_interfaces() {
    let _serial = serial();
    let world = world();
    let guest = &world.guest;
    let mut qga = guest.qga(BOOT).expect("qemu-ga");
    let meminfo = qga.shell("cat /proc/meminfo", REPLY).expect("meminfo");
    let mem_total_kb: i64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("MemTotal");
    let store = world.store();
    let vm = guest.vm_id().to_string();
    let (sample, _) = eventually(
        BOOT,
        "a stored sample",
        || world.context(guest),
        || store.latest_sample(&vm).ok().flatten(),
    );
    assert_eq!(
        sample.mem_total_kb, mem_total_kb,
        "the guest's real MemTotal"
    );
    assert!(sample.mem_used_kb > 0 && sample.mem_used_kb <= mem_total_kb);
    let interfaces: Vec<&str> = sample
        .detail
        .network
        .stats
        .iter()
        .map(|i| i.interface.as_str())
        .collect();
    assert!(interfaces.contains(&"eth0"), "{interfaces:?}");
    let eth0 = sample
        .detail
        .network
        .stats
        .iter()
        .find(|i| i.interface == "eth0")
        .expect("eth0");
    assert!(
        eth0.ip_addresses.iter().any(|a| a == "10.0.2.15"),
        "{eth0:?}"
    );
}

#[test]
fn host_restart_reconnects_and_stores_no_sample_twice() {
    let _serial = serial();
    let world = world();
    let guest = &world.guest;
    let vm = guest.vm_id().to_string();
    wait_status(world, guest, VmStatus::Online, BOOT);
    let store = world.store();
    let before = store.sample_guest_times(&vm).expect("samples").len();

    let options = {
        let mut host = world.host();
        let running = host.take().expect("host runs");
        let options = running.options().clone();
        running
            .stop(Duration::from_secs(20))
            .expect("graceful stop");
        options
    };
    // The agent keeps collecting (and keeps its newest sample) while no host is connected.
    std::thread::sleep(Duration::from_secs(4));
    let restarted = HostProcess::start(
        &host_binary().expect("host binary"),
        HostOptions {
            log_file: options.log_file.with_extension("restarted.log"),
            ..options
        },
        Duration::from_secs(60),
    )
    .expect("host restarts");
    *world.host() = Some(restarted);

    wait_status(world, guest, VmStatus::Online, BOOT);
    eventually(
        Duration::from_secs(30),
        "new samples after the restart",
        || world.context(guest),
        || (store.sample_guest_times(&vm).ok()?.len() >= before + 3).then_some(()),
    );
    let times: Vec<i64> = store
        .sample_guest_times(&vm)
        .expect("samples")
        .into_iter()
        .flatten()
        .collect();
    let mut unique = times.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        times.len(),
        "a sample was stored twice across the restart: {times:?}"
    );
}

#[test]
fn agent_restart_inside_the_guest_is_seen_and_ingest_goes_on() {
    let _serial = serial();
    let world = world();
    let guest = &world.guest;
    let vm = guest.vm_id().to_string();
    wait_status(world, guest, VmStatus::Online, BOOT);
    let store = world.store();
    let mut qga = guest.qga(BOOT).expect("qemu-ga");
    qga.shell("kill -KILL $(cat /run/infiniservice.pid)", REPLY)
        .expect("killing the agent");
    let killed_at = chrono::Utc::now();
    eventually(
        BOOT,
        "a sample from the restarted agent",
        || world.context(guest),
        || {
            let sample = store.latest_sample(&vm).ok()??;
            (sample.received_at > killed_at + chrono::Duration::seconds(2)).then_some(())
        },
    );
    assert_eq!(status_of(store, &vm), Some(VmStatus::Online));
}

#[test]
fn qemu_killed_vm_goes_offline_within_the_liveness_window() {
    let _serial = serial();
    let world = world();
    let guest = boot_own_guest(world, "e2e-killed");
    wait_status(world, &guest, VmStatus::Online, BOOT);
    guest.kill().expect("killing qemu");
    let took = wait_status(
        world,
        &guest,
        VmStatus::Offline,
        LIVENESS_WINDOW + Duration::from_secs(10),
    );
    eprintln!("offline {took:?} after QEMU was killed");
}

#[test]
fn removed_socket_file_takes_the_vm_offline() {
    let _serial = serial();
    let world = world();
    let guest = boot_own_guest(world, "e2e-unlinked");
    wait_status(world, &guest, VmStatus::Online, BOOT);
    std::fs::remove_file(guest.agent_socket()).expect("removing the socket file");
    let took = wait_status(
        world,
        &guest,
        VmStatus::Offline,
        LIVENESS_WINDOW + Duration::from_secs(10),
    );
    eprintln!("offline {took:?} after the socket file was removed");
}

fn vm_sockets(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "sock"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn legacy_format_guest_is_served_alongside_ours() {
    let _serial = serial();
    let world = world();
    wait_status(world, &world.guest, VmStatus::Online, BOOT);
    let sim_binary =
        cargo_build_binary("infinibay-sim", "infinibay-sim").expect("building infinibay-sim");
    let before = vm_sockets(world.socket_dir.path());
    let mut command = Command::new(sim_binary);
    command
        .args(["--vms", "1", "--profile", "legacy", "--seed", "4242"])
        .arg("--socket-dir")
        .arg(world.socket_dir.path())
        .args(["--stats-every", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    // One VM speaking the original agent's format (the simulator's legacy profile).
    let _simulator = TiedChild::spawn(command).expect("starting infinibay-sim");
    let (socket, _) = eventually(
        Duration::from_secs(20),
        "the simulator's socket",
        || world.host_log(),
        || {
            vm_sockets(world.socket_dir.path())
                .into_iter()
                .find(|p| !before.contains(p))
        },
    );
    let legacy_vm = socket
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.strip_prefix("vm-"))
        .expect("vm-<uuid>.sock")
        .to_owned();
    let store = world.store();
    eventually(
        Duration::from_secs(30),
        "a stored sample from the legacy guest",
        || world.host_log(),
        || store.latest_sample(&legacy_vm).ok().flatten(),
    );
    assert_eq!(status_of(store, &legacy_vm), Some(VmStatus::Online));
    // Ours is still served.
    let ours = world.guest.vm_id().to_string();
    assert_eq!(status_of(store, &ours), Some(VmStatus::Online));
}

/// POSIX locks `pid` holds on the file with inode `inode`, from `/proc/locks`.
fn posix_locks_of(pid: u32, inode: u64) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/locks").expect("reading /proc/locks");
    table
        .lines()
        .filter(|line| !line.contains("->"))
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // `N: POSIX ADVISORY READ PID MAJ:MIN:INODE START END`
            fields.len() >= 6
                && fields[1] == "POSIX"
                && fields[4].parse::<u32>().ok() == Some(pid)
                && fields[5]
                    .rsplit(':')
                    .next()
                    .and_then(|i| i.parse::<u64>().ok())
                    == Some(inode)
        })
        .map(str::to_owned)
        .collect()
}

/// In WAL mode every open SQLite connection holds a SHARED lock on the database file; it is
/// how another process's last connection knows, when it closes, that it must not checkpoint
/// and delete the WAL and `-shm`. A host that lost that lock (closing any descriptor of the
/// file drops all of a process's POSIX locks on it) has its WAL deleted by the next outside
/// reader that closes — `sqlite3`, a backup, the CLI — and then writes into an unlinked file:
/// lost samples and status changes, `SQLITE_IOERR_SHORT_READ` on its reads.
#[test]
fn host_keeps_its_lock_on_the_database_so_outside_readers_cannot_delete_its_wal() {
    let _serial = serial();
    let world = world();
    wait_status(world, &world.guest, VmStatus::Online, BOOT);
    let pid = world.host().as_ref().expect("host runs").pid();
    let db = world.data_dir.path().join("infinibay.db");
    let inode = std::fs::metadata(&db).expect("the database exists").ino();
    let locks = posix_locks_of(pid, inode);
    assert!(
        !locks.is_empty(),
        "infinibay (pid {pid}) holds no lock on {} (inode {inode}); every outside reader's \
         close can now delete its WAL\n{}",
        db.display(),
        std::fs::read_to_string("/proc/locks").unwrap_or_default()
    );
    assert!(
        db.with_extension("db-wal").exists(),
        "the host's WAL is gone while it runs"
    );
}

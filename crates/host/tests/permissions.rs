//! EACCES for real: the `infinibay` binary runs as `nobody` against a socket owned by
//! root:root with mode 0660 (as QEMU's are owned by libvirt-qemu:kvm). The test itself must run
//! as root to create that situation; the CI runs tests as root.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn is_root() -> bool {
    // SAFETY: geteuid has no failure mode.
    unsafe { libc::geteuid() == 0 }
}

struct Setup {
    _dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    sockets: std::path::PathBuf,
    data: std::path::PathBuf,
    _listener: std::os::unix::net::UnixListener,
}

fn setup() -> Setup {
    let dir = tempfile::Builder::new()
        .prefix("ibperm")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let open = |p: &Path, mode| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    open(dir.path(), 0o755);
    let sockets = dir.path().join("s");
    std::fs::create_dir(&sockets).expect("mkdir");
    open(&sockets, 0o755);
    // The data directory belongs to the service user (here nobody) and is private, as `serve`
    // wants it (it makes its data directory 0700, which only the owner may do).
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    std::os::unix::fs::chown(&data, Some(65534), Some(65534)).expect("chown data to nobody");
    open(&data, 0o700);
    let socket = sockets.join(format!("vm-{}.sock", uuid::Uuid::new_v4()));
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    open(&socket, 0o660);
    // A copy nobody may execute whatever the target directory's permissions are.
    let bin = dir.path().join("infinibay");
    std::fs::copy(env!("CARGO_BIN_EXE_infinibay"), &bin).expect("copy binary");
    open(&bin, 0o755);
    Setup {
        _dir: dir,
        bin,
        sockets,
        data,
        _listener: listener,
    }
}

/// Run `make()`'s command, again if exec hit ETXTBSY: another test thread may fork while our
/// copy of the binary is still open for writing, and the child then briefly holds it.
fn output_retrying(make: impl Fn() -> Command) -> std::process::Output {
    for _ in 0..20 {
        let out = make().output().expect("run");
        if !String::from_utf8_lossy(&out.stderr).contains("Text file busy") {
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("binary stayed busy");
}

fn as_nobody(bin: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(bin);
    c
}

#[test]
fn eacces_is_one_actionable_line_then_silence_while_retrying() {
    if !is_root() {
        eprintln!("not root: cannot run the host as another user; nothing checked");
        return;
    }
    let s = setup();
    let log = s.data.join("stderr.log");
    let start = || {
        as_nobody(&s.bin)
            .arg("serve")
            // Not the default 127.0.0.1:9464: the tests run side by side.
            .env("INFINIBAY_API__METRICS_LISTEN", "127.0.0.1:0")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--socket-dir")
            .arg(&s.sockets)
            .arg("--data-dir")
            .arg(&s.data)
            .env("RUST_LOG", "info")
            // Retry fast so that many attempts fall into the observation window.
            .env("INFINIBAY_CONNECTION__BACKOFF_INITIAL_SECS", "0.05")
            .env("INFINIBAY_CONNECTION__BACKOFF_MAX_SECS", "0.2")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start infinibay as nobody")
    };
    let mut child = start();
    // ETXTBSY (see `output_retrying`): start again.
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(200));
        let busy = matches!(child.try_wait(), Ok(Some(_)))
            && std::fs::read_to_string(&log).is_ok_and(|t| t.contains("Text file busy"));
        if !busy {
            break;
        }
        child = start();
    }
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().expect("wait");
    let text = std::fs::read_to_string(&log).expect("read log");
    let denied: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("permission denied"))
        .collect();
    assert_eq!(
        denied.len(),
        1,
        "exactly one EACCES line in 3 s of retries:\n{text}"
    );
    let line = denied[0];
    for needle in [
        "owner root (uid 0)",
        "group root (gid 0)",
        "mode 0660",
        "user nobody (uid 65534)",
        "add the service user to group kvm and restart",
    ] {
        assert!(line.contains(needle), "{needle:?} missing in: {line}");
    }
    assert!(
        status.success(),
        "clean exit on SIGTERM: {status:?}\n{text}"
    );
}

#[test]
fn doctor_names_the_socket_problem_and_exits_non_zero() {
    if !is_root() {
        eprintln!("not root: cannot run doctor as another user; nothing checked");
        return;
    }
    let s = setup();
    let out = output_retrying(|| {
        let mut c = as_nobody(&s.bin);
        c.arg("doctor")
            .arg("--socket-dir")
            .arg(&s.sockets)
            .arg("--data-dir")
            .arg(&s.data);
        c
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "problems mean a non-zero exit:\n{stdout}"
    );
    assert!(
        stdout.contains("1 of 1 socket(s) may not be opened"),
        "{stdout}"
    );
    assert!(stdout.contains("NOT in group root"), "{stdout}");
    assert!(
        stdout.contains("add the service user to group kvm and restart"),
        "{stdout}"
    );
    assert!(
        stdout.contains("database sqlite://"),
        "the database check ran:\n{stdout}"
    );

    // As root everything is fine.
    let ok = output_retrying(|| {
        let mut c = Command::new(&s.bin);
        c.arg("doctor")
            .arg("--socket-dir")
            .arg(&s.sockets)
            .arg("--data-dir")
            .arg(&s.data);
        c
    });
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{stdout}");
    assert!(stdout.contains("no problems found"), "{stdout}");
}

#[test]
fn serve_refuses_a_taken_port_with_a_clear_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_infinibay"))
        .arg("serve")
        .env("INFINIBAY_API__METRICS_LISTEN", "127.0.0.1:0")
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--socket-dir")
        .arg(dir.path())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("address already in use"), "{stderr}");
}

#[test]
fn serve_reports_an_unreachable_database_without_its_password() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_infinibay"))
        .arg("serve")
        .env("INFINIBAY_API__METRICS_LISTEN", "127.0.0.1:0")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--socket-dir")
        .arg(dir.path())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--database")
        .arg("postgres://infinibay:s3cret@127.0.0.1:1/infinibay")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("is unreachable"), "{stderr}");
    assert!(stderr.contains("infinibay:***@127.0.0.1:1"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "password leaked: {stderr}");
}

#[test]
fn doctor_lists_stale_sockets_and_fix_removes_only_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sockets = dir.path().join("s");
    let data = dir.path().join("data");
    std::fs::create_dir(&sockets).expect("mkdir");
    let live = sockets.join(format!("vm-{}.sock", uuid::Uuid::new_v4()));
    let _listener = std::os::unix::net::UnixListener::bind(&live).expect("bind live");
    // A VM whose QEMU is gone: the file stays, nothing listens.
    let stale = sockets.join(format!("vm-{}.sock", uuid::Uuid::new_v4()));
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind stale"));
    assert!(stale.exists());
    let doctor = |fix: bool| {
        output_retrying(|| {
            let mut c = Command::new(env!("CARGO_BIN_EXE_infinibay"));
            c.arg("doctor")
                .arg("--socket-dir")
                .arg(&sockets)
                .arg("--data-dir")
                .arg(&data);
            if fix {
                c.arg("--fix");
            }
            c
        })
    };
    let out = doctor(false);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "a stale socket is a problem:\n{stdout}"
    );
    assert!(
        stdout.contains("1 stale socket(s)") && stdout.contains(&stale.display().to_string()),
        "{stdout}"
    );
    assert!(!stdout.contains(&live.display().to_string()), "{stdout}");
    assert!(stale.exists(), "without --fix nothing is removed");

    let out = doctor(true);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("removed 1 stale socket(s)"), "{stdout}");
    assert!(!stale.exists(), "the stale socket is gone");
    assert!(live.exists(), "a socket someone listens on stays");
}

//! Windows guests without Windows: `infiniservice.exe` under wine64.
//!
//! A real Windows guest's agent talks to the host over a port QEMU bridges to a UNIX socket in
//! the host's socket directory. Here the port is a COM port that wine maps to a pty
//! (`$WINEPREFIX/dosdevices/comN` → pty), and socat bridges the pty to
//! `<socket_dir>/vm-<uuid>.sock`, listening like QEMU's `server=on` chardev: the host cannot
//! tell the difference. The wine set-up (prefix, the test-only `bcryptprimitives.dll` shim) is
//! `scripts/lib/wine/env.sh`; `docs/windows.md` says what wine can and cannot verify.
//!
//! Every process started here is tied to the test process (see `spawn`): the prefix's own
//! wineserver is started first, in the foreground, so that it and every wine process of the
//! prefix end with the test, however it ends.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::fixture::TiedChild;
use crate::image::{target_dir, workspace_root};
use crate::{Error, Result};

/// The wine loader (Debian's wine64 is not on `PATH`).
pub const WINE64: &str = "/usr/lib/wine/wine64";
const WINESERVER: &str = "/usr/lib/wine/wineserver";

/// How long the prefix's first program may take to start: wine's start-up in a fresh prefix
/// (wineboot, the service manager, device hosts) on a loaded machine.
const KEEPALIVE_READY_WITHIN: Duration = Duration::from_secs(180);

/// Environment variable naming a prebuilt `infiniservice.exe` to use instead of building one.
pub const WINDOWS_AGENT_ENV: &str = "IB_E2E_WINDOWS_AGENT";

fn build_windows(args: &[&str]) -> Result<()> {
    let script = workspace_root().join("scripts/build-windows");
    let output = Command::new(&script)
        .args(args)
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .output()
        .map_err(Error::io(format!("running {}", script.display())))?;
    if output.status.success() {
        return Ok(());
    }
    Err(Error::Build {
        step: format!("scripts/build-windows {}", args.join(" ")),
        status: output.status.to_string(),
        output: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// `infiniservice.exe`: [`WINDOWS_AGENT_ENV`], else `scripts/build-windows` (incremental:
/// seconds when it is up to date; `./scripts/test` builds it before the tests run).
pub fn windows_agent() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(WINDOWS_AGENT_ENV) {
        return Ok(PathBuf::from(path));
    }
    build_windows(&[])?;
    Ok(target_dir().join("windows/infiniservice.exe"))
}

/// The MSI of that exe (`scripts/build-windows --msi`).
pub fn windows_msi() -> Result<PathBuf> {
    build_windows(&["--msi"])?;
    Ok(target_dir().join("windows/infiniservice.msi"))
}

/// A path as a Windows program under wine sees it: wine maps `Z:` to `/`.
pub fn windows_path(path: &Path) -> String {
    format!("Z:{}", path.display()).replace('/', "\\")
}

/// A wine prefix of the test's own, with its wineserver running (and tied to the test).
pub struct WinePrefix {
    dir: PathBuf,
    log_dir: PathBuf,
    server: Option<TiedChild>,
    /// A user process that keeps the prefix's services running: wine stops its service
    /// manager (and every service) when the last user process exits.
    keepalive: Option<TiedChild>,
}

impl WinePrefix {
    /// Create (or reuse) the prefix `dir`, ready for our programs (the shim installed,
    /// Windows 10 as the reported version), and start its wineserver. Logs go to `log_dir`.
    pub fn create(dir: &Path, log_dir: &Path) -> Result<Self> {
        fs::create_dir_all(log_dir)
            .map_err(Error::io(format!("creating {}", log_dir.display())))?;
        let env_sh = workspace_root().join("scripts/lib/wine/env.sh");
        let output = Command::new("bash")
            .arg("-c")
            .arg(r#"source "$1" && wine_prefix_ready "$2""#)
            .arg("wine-prefix")
            .arg(&env_sh)
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .map_err(Error::io("preparing the wine prefix"))?;
        if !output.status.success() {
            return Err(Error::Build {
                step: format!("wine_prefix_ready {}", dir.display()),
                status: output.status.to_string(),
                output: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        register_exit_cleanup(dir);
        let mut prefix = Self {
            dir: dir.to_path_buf(),
            log_dir: log_dir.to_path_buf(),
            server: None,
            keepalive: None,
        };
        let log = prefix.log_file("wineserver.log")?;
        let mut server = Command::new(WINESERVER);
        // Foreground (a child we can tie to the test), persistent until killed.
        server
            .args(["-f", "-p"])
            .envs(prefix.env())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(Error::io("log handle"))?)
            .stderr(log);
        prefix.server = Some(TiedChild::spawn(server)?);
        // A cmd waiting for a line that never comes. It is the prefix's first program: the
        // first one starts wineboot, which starts the service manager, and both inherit its
        // stderr. So wine's messages about services, and what a service itself writes to
        // stderr, land in `wine-services.log` (the failure reports print it), not in the
        // output file of whichever program happened to come first.
        let mut keepalive = prefix.command("cmd.exe");
        keepalive
            .args(["/c", "echo ready& set /p never="])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(prefix.log_file("wine-services.log")?);
        let mut keepalive = TiedChild::spawn(keepalive)?;
        // cmd runs its command once wine's start-up (wineboot) is done.
        let stdout = keepalive.child().stdout.take();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            let Some(stdout) = stdout else { return };
            let mut lines = std::io::BufReader::new(stdout).lines();
            let _ = ready_tx.send(lines.next().and_then(|line| line.ok()));
            // Keep reading, so that cmd never writes into a closed pipe.
            for _ in lines {}
        });
        let ready = KEEPALIVE_READY_WITHIN;
        match ready_rx.recv_timeout(ready) {
            Ok(Some(line)) if line.trim() == "ready" => {}
            other => {
                return Err(Error::Timeout {
                    what: format!(
                        "the prefix's first program (cmd) starting; it printed {other:?}; \
                         wine-services.log:\n{}",
                        fs::read_to_string(prefix.log_dir.join("wine-services.log"))
                            .unwrap_or_default()
                    ),
                    after: ready,
                });
            }
        }
        prefix.keepalive = Some(keepalive);
        Ok(prefix)
    }

    /// The prefix directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `drive_c` inside it.
    pub fn drive_c(&self) -> PathBuf {
        self.dir.join("drive_c")
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("WINEPREFIX", self.dir.display().to_string()),
            // Wine's own errors (not its fixme noise) go with each program's stderr, so that a
            // failure's logs say what wine refused.
            ("WINEDEBUG", "-all,err+all".into()),
            ("WINEDLLOVERRIDES", "mscoree,mshtml=".into()),
        ]
    }

    /// A log file in the log directory (created or truncated).
    pub fn log_file(&self, name: &str) -> Result<fs::File> {
        let path = self.log_dir.join(name);
        fs::File::create(&path).map_err(Error::io(format!("creating {}", path.display())))
    }

    /// `wine64 program`, with the prefix's environment and no display.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(WINE64);
        command
            .arg(program)
            .envs(self.env())
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY");
        command
    }

    /// Run a Windows program to its end (at most `timeout`), its output captured.
    pub fn run(&self, program: &str, args: &[&str], timeout: Duration) -> Result<Output> {
        let name = format!(
            "run-{}-{}.log",
            Path::new(program)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        );
        let out_path = self.log_dir.join(format!("{name}.out"));
        let err_path = self.log_dir.join(format!("{name}.err"));
        let out = fs::File::create(&out_path).map_err(Error::io("creating an output file"))?;
        let err = fs::File::create(&err_path).map_err(Error::io("creating an output file"))?;
        let mut command = self.command(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let mut child = TiedChild::spawn(command)?;
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child
                .child()
                .try_wait()
                .map_err(Error::io(format!("waiting for {program}")))?
            {
                break status;
            }
            if started.elapsed() > timeout {
                // What it printed before it hung is the clue to why it hung.
                let printed = |path: &Path| {
                    String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned()
                };
                return Err(Error::Timeout {
                    what: format!(
                        "wine64 {program} {}\n--- its stdout ---\n{}\n--- its stderr ---\n{}",
                        args.join(" "),
                        printed(&out_path),
                        printed(&err_path)
                    ),
                    after: started.elapsed(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Ok(Output {
            status,
            stdout: fs::read(&out_path).unwrap_or_default(),
            stderr: fs::read(&err_path).unwrap_or_default(),
        })
    }

    /// Map `COMn` to `target` (a pty).
    pub fn map_com(&self, n: u32, target: &Path) -> Result<()> {
        let link = self.dir.join("dosdevices").join(format!("com{n}"));
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link)
            .map_err(Error::io(format!("linking {}", link.display())))
    }
}

/// `wineserver -k` for `prefix`: the server ends every wine process of the prefix, its
/// service manager and device hosts included (they are not our children: if the server were
/// killed first they would be orphaned).
fn kill_prefix(prefix: &Path) {
    let _ = Command::new(WINESERVER)
        .arg("-k")
        .env("WINEPREFIX", prefix)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Prefixes to end at exit. A prefix kept in a static (a test binary's shared world) is never
/// dropped; the spawn module's exit hook then SIGKILLs the server it started, which would
/// orphan the prefix's other processes. This hook is registered after that one (its first
/// spawn comes later), so it runs before it (exit hooks run in reverse order).
static EXIT_PREFIXES: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

extern "C" fn kill_prefixes_at_exit() {
    let prefixes = match EXIT_PREFIXES.try_lock() {
        Ok(list) => list.clone(),
        Err(_) => return,
    };
    for prefix in prefixes {
        kill_prefix(&prefix);
        // Hundreds of MB of Windows each; the logs beside it stay for a post-mortem.
        let _ = std::fs::remove_dir_all(&prefix);
    }
}

fn register_exit_cleanup(prefix: &Path) {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    // The spawn module's hook must exist first, so that ours runs before it.
    crate::spawn::ensure_exit_hook();
    REGISTERED.call_once(|| {
        // SAFETY: registering a plain extern "C" function with no captured state.
        unsafe {
            libc::atexit(kill_prefixes_at_exit);
        }
    });
    EXIT_PREFIXES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(prefix.to_path_buf());
}

impl Drop for WinePrefix {
    fn drop(&mut self) {
        self.keepalive = None;
        kill_prefix(&self.dir);
        EXIT_PREFIXES
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|p| *p != self.dir);
        self.server = None;
    }
}

/// A pty standing in for a COM port, bridged to a UNIX socket that listens like QEMU's
/// `server=on` chardev (socat, one client at a time).
pub struct ComBridge {
    socat: TiedChild,
    pty: PathBuf,
    socket: PathBuf,
    /// The pty's slave end, held open: when the Windows program closes its COM port (an
    /// agent restart), the master would otherwise read EIO and socat would end the host's
    /// connection. QEMU keeps a guest port's host connection the same way.
    _slave: fs::File,
}

impl ComBridge {
    /// `socat PTY,link=<pty>,raw,echo=0 UNIX-LISTEN:<socket>`; returns once both exist.
    pub fn start(pty: &Path, socket: &Path, log: fs::File) -> Result<Self> {
        let _ = fs::remove_file(pty);
        let _ = fs::remove_file(socket);
        let mut command = Command::new("socat");
        command
            .arg(format!("PTY,link={},raw,echo=0", pty.display()))
            .arg(format!("UNIX-LISTEN:{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let mut socat = TiedChild::spawn(command)?;
        let started = Instant::now();
        while !(pty.exists() && socket.exists()) {
            if let Some(status) = socat.child().try_wait().map_err(Error::io("socat"))? {
                return Err(Error::Build {
                    step: "socat".into(),
                    status: status.to_string(),
                    output: String::new(),
                });
            }
            if started.elapsed() > Duration::from_secs(10) {
                return Err(Error::Timeout {
                    what: format!("socat creating {}", socket.display()),
                    after: started.elapsed(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let slave = {
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY)
                .open(pty)
                .map_err(Error::io(format!("opening {}", pty.display())))?
        };
        Ok(Self {
            socat,
            pty: pty.to_path_buf(),
            socket: socket.to_path_buf(),
            _slave: slave,
        })
    }

    /// The pty (what `COMn` points at).
    pub fn pty(&self) -> &Path {
        &self.pty
    }

    /// The socket (what the host connects to).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Is socat still bridging?
    pub fn is_running(&mut self) -> bool {
        matches!(self.socat.child().try_wait(), Ok(None))
    }
}

//! One QEMU guest: boot, sockets, stop.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::agent::AgentClient;
use crate::image::{GuestImage, target_dir};
use crate::qga::QgaClient;
use crate::qmp::Qmp;
use crate::spawn::{forget, spawn_tied_to_process};
use crate::{Error, Result};

/// Name of the agent's virtio-serial port (what the guest sees in /dev/virtio-ports).
pub const AGENT_PORT_NAME: &str = "org.infinibay.agent";
/// Name of qemu-ga's port.
pub const QGA_PORT_NAME: &str = "org.qemu.guest_agent.0";

/// How a guest is booted.
#[derive(Debug, Clone)]
pub struct GuestOptions {
    /// Label for log directories and messages.
    pub name: String,
    /// The guest's host name (the agent reports it).
    pub hostname: String,
    /// RAM in MiB.
    pub memory_mib: u32,
    /// The VM id: the agent socket is `vm-<vm_id>.sock`, the host's identity for the VM.
    pub vm_id: Uuid,
    /// Start `infiniservice` in the guest.
    pub agent: bool,
    /// Start `qemu-ga` in the guest.
    pub qga: bool,
    /// Give the guest a NIC (QEMU user networking, `restrict=on`: no way out of the host).
    pub network: bool,
    /// Directory for `vm-<uuid>.sock` (the host's socket directory); default: the guest's own
    /// private directory.
    pub socket_dir: Option<PathBuf>,
    /// `RUST_LOG` for the agent inside the guest.
    pub agent_log: Option<String>,
    /// Give the guest a VGA display served by QEMU's VNC server on the UNIX socket
    /// `<socket_dir>/vnc-<uuid>.sock` (security type None), with a root shell on tty1 so
    /// that what is typed there shows on the screen.
    pub vnc: bool,
}

impl Default for GuestOptions {
    fn default() -> Self {
        Self {
            name: "guest".into(),
            hostname: "infinibay-e2e".into(),
            memory_mib: 256,
            vm_id: Uuid::new_v4(),
            agent: true,
            qga: true,
            network: true,
            socket_dir: None,
            agent_log: None,
            vnc: false,
        }
    }
}

/// A picture of the guest's display: `width` × `height` RGB pixels, row by row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Screen {
    /// Pixels per row.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// 3 bytes (R, G, B) per pixel.
    pub rgb: Vec<u8>,
}

impl Screen {
    /// Parse the binary PPM (`P6`, maxval 255) QEMU's `screendump` writes.
    fn from_ppm(ppm: &[u8]) -> Result<Screen> {
        let bad = |detail: &str| Error::protocol("screendump", detail.to_owned());
        // The header is four whitespace-separated words: P6 WIDTH HEIGHT MAXVAL, then one
        // whitespace byte, then the pixels. (QEMU writes no comments.)
        let mut words = Vec::new();
        let mut at = 0;
        while words.len() < 4 {
            while ppm.get(at).is_some_and(u8::is_ascii_whitespace) {
                at += 1;
            }
            let start = at;
            while ppm.get(at).is_some_and(|b| !b.is_ascii_whitespace()) {
                at += 1;
            }
            if start == at {
                return Err(bad("truncated header"));
            }
            words.push(String::from_utf8_lossy(&ppm[start..at]).into_owned());
        }
        let number = |word: &str| {
            word.parse::<u32>()
                .map_err(|_| bad("header is not numeric"))
        };
        if words[0] != "P6" || number(&words[3])? != 255 {
            return Err(bad("not a P6 PPM with maxval 255"));
        }
        let (width, height) = (number(&words[1])?, number(&words[2])?);
        let rgb = ppm.get(at + 1..).ok_or_else(|| bad("no pixels"))?.to_vec();
        if rgb.len() != width as usize * height as usize * 3 {
            return Err(bad("pixel data does not match the size"));
        }
        Ok(Screen { width, height, rgb })
    }
}

/// A running QEMU guest. Dropping it kills QEMU.
pub struct Guest {
    options: GuestOptions,
    /// Short private directory (`/tmp/ib-XXXXXX`): AF_UNIX paths must stay under 108 bytes.
    private_dir: tempfile::TempDir,
    agent_socket: PathBuf,
    /// `<socket_dir>/vnc-<uuid>.sock` when booted with [`GuestOptions::vnc`].
    vnc_socket: Option<PathBuf>,
    qga_socket: PathBuf,
    qmp_socket: PathBuf,
    /// Kept after the guest is gone, for failure reports (`target/e2e/runs/...`).
    run_dir: PathBuf,
    child: Mutex<Child>,
    pid: u32,
}

/// `ps`-style liveness of a pid that is not our child (for leak checks).
pub fn pid_is_alive(pid: u32) -> bool {
    // A zombie still has /proc/<pid>; count it as gone.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Remove `/tmp/ib-*` directories whose owning process is gone (a runner that was killed
/// cannot clean up; its QEMU died with it through PDEATHSIG, the directory stays).
fn sweep_stale_private_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_ours = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("ib-"));
        if !is_ours {
            continue;
        }
        let owner = fs::read_to_string(path.join("owner.pid"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if let Some(owner) = owner {
            if !pid_is_alive(owner) {
                let _ = fs::remove_dir_all(&path);
            }
        }
    }
}

/// A value that goes on the kernel command line must be one word the guest's init can read.
fn check_cmdline_word(what: &str, value: &str, extra: &[u8]) -> Result<()> {
    let ok = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || extra.contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::protocol(
            "guest options",
            format!("{what} `{value}` must be letters, digits, `-` and `.`"),
        ))
    }
}

impl Guest {
    /// Boot `image` with `options`. Returns once QEMU runs and its sockets exist; use
    /// [`Guest::qga`] / [`Guest::agent`] with a timeout to wait for the agents.
    pub fn boot(image: &GuestImage, options: GuestOptions) -> Result<Guest> {
        check_cmdline_word("hostname", &options.hostname, b"")?;
        if let Some(filter) = &options.agent_log {
            check_cmdline_word("agent_log", filter, b"_=,:")?;
        }
        static SWEEP: std::sync::Once = std::sync::Once::new();
        SWEEP.call_once(sweep_stale_private_dirs);

        let private_dir = crate::fixture::scratch_dir("")?;
        let socket_dir = options
            .socket_dir
            .clone()
            .unwrap_or_else(|| private_dir.path().to_path_buf());
        let agent_socket = socket_dir.join(format!("vm-{}.sock", options.vm_id));
        let vnc_socket = options
            .vnc
            .then(|| socket_dir.join(format!("vnc-{}.sock", options.vm_id)));
        let qga_socket = private_dir.path().join("qga.sock");
        let qmp_socket = private_dir.path().join("qmp.sock");
        for socket in [&agent_socket, &qga_socket, &qmp_socket]
            .into_iter()
            .chain(vnc_socket.as_ref())
        {
            if socket.as_os_str().len() > 107 {
                return Err(Error::protocol(
                    "socket path",
                    format!("{} is longer than 107 bytes", socket.display()),
                ));
            }
        }

        let run_dir = target_dir()
            .join("e2e/runs")
            .join(format!("{}-{}", options.name, options.vm_id));
        fs::create_dir_all(&run_dir)
            .map_err(Error::io(format!("creating {}", run_dir.display())))?;
        let console_log = run_dir.join("console.log");
        let stderr_log = run_dir.join("qemu.stderr");
        let stderr = fs::File::create(&stderr_log)
            .map_err(Error::io(format!("creating {}", stderr_log.display())))?;

        let mut append = format!(
            // no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer check can
            // miss its window and panic at boot ("IO-APIC + timer doesn't work").
            "console=ttyS0 quiet panic=-1 no_timer_check ib.hostname={} ib.vm_id={}",
            options.hostname, options.vm_id
        );
        if !options.agent {
            append.push_str(" ib.agent=off");
        }
        if !options.qga {
            append.push_str(" ib.qga=off");
        }
        if let Some(filter) = &options.agent_log {
            append.push_str(&format!(" ib.log={filter}"));
        }
        if options.vnc {
            append.push_str(" ib.tty1=shell");
        }

        let mut command = Command::new("qemu-system-x86_64");
        command
            .args(["-machine", "q35", "-accel", "tcg"])
            .args(["-m", &options.memory_mib.to_string(), "-smp", "1"])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .arg("-no-reboot")
            .arg("-serial")
            .arg(format!("file:{}", console_log.display()))
            .args(["-monitor", "none"])
            .arg("-kernel")
            .arg(&image.kernel)
            .arg("-initrd")
            .arg(&image.initrd)
            .args(["-append", &append])
            .args(["-device", "virtio-serial-pci,id=vser0"])
            .arg("-chardev")
            .arg(format!(
                "socket,id=ch0,path={},server=on,wait=off",
                agent_socket.display()
            ))
            .arg("-device")
            .arg(format!(
                "virtserialport,bus=vser0.0,chardev=ch0,name={AGENT_PORT_NAME}"
            ))
            .arg("-chardev")
            .arg(format!(
                "socket,id=ch1,path={},server=on,wait=off",
                qga_socket.display()
            ))
            .arg("-device")
            .arg(format!(
                "virtserialport,bus=vser0.0,chardev=ch1,name={QGA_PORT_NAME}"
            ))
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_socket.display()));
        if let Some(vnc_socket) = &vnc_socket {
            // The guest's text console (VGA, 720x400) through QEMU's own VNC server.
            command
                .args(["-vga", "std", "-vnc"])
                .arg(format!("unix:{}", vnc_socket.display()));
        }
        if options.network {
            command.args(["-netdev", "user,id=net0,restrict=on"]).args([
                "-device",
                "virtio-net-pci,netdev=net0,mac=52:54:00:12:34:56",
            ]);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child =
            spawn_tied_to_process(command).map_err(Error::io("starting qemu-system-x86_64"))?;
        let pid = child.id();
        let guest = Guest {
            options,
            private_dir,
            agent_socket,
            vnc_socket,
            qga_socket,
            qmp_socket,
            run_dir,
            child: Mutex::new(child),
            pid,
        };
        guest.wait_for_sockets(Duration::from_secs(20))?;
        Ok(guest)
    }

    fn wait_for_sockets(&self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.try_exit_status()? {
                return Err(self.exited_error(status));
            }
            let vnc_ready = self.vnc_socket.as_ref().is_none_or(|s| s.exists());
            if self.agent_socket.exists()
                && self.qga_socket.exists()
                && self.qmp_socket.exists()
                && vnc_ready
            {
                return Ok(());
            }
            if started.elapsed() > timeout {
                return Err(Error::Timeout {
                    what: format!(
                        "qemu creating its sockets in {}",
                        self.private_dir.path().display()
                    ),
                    after: started.elapsed(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn exited_error(&self, status: ExitStatus) -> Error {
        Error::QemuExited {
            status: status.to_string(),
            stderr: fs::read_to_string(self.run_dir.join("qemu.stderr")).unwrap_or_default(),
            console: self.console_log_path(),
            console_tail: self.console_tail(30),
        }
    }

    /// The options it was booted with.
    pub fn options(&self) -> &GuestOptions {
        &self.options
    }

    /// The VM id (the uuid in the agent socket's name).
    pub fn vm_id(&self) -> Uuid {
        self.options.vm_id
    }

    /// QEMU's pid on the host.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Host side of the agent's port: `<socket_dir>/vm-<uuid>.sock`.
    pub fn agent_socket(&self) -> &Path {
        &self.agent_socket
    }

    /// QEMU's VNC server (`<socket_dir>/vnc-<uuid>.sock`), when booted with
    /// [`GuestOptions::vnc`].
    pub fn vnc_socket(&self) -> Option<&Path> {
        self.vnc_socket.as_deref()
    }

    /// Host side of qemu-ga's port.
    pub fn qga_socket(&self) -> &Path {
        &self.qga_socket
    }

    /// The directory holding the agent socket.
    pub fn socket_dir(&self) -> &Path {
        self.agent_socket
            .parent()
            .unwrap_or(self.private_dir.path())
    }

    /// Where this guest's console and QEMU's stderr are written; survives the guest.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The serial console log file.
    pub fn console_log_path(&self) -> PathBuf {
        self.run_dir.join("console.log")
    }

    /// The last `lines` lines of the serial console, for failure messages.
    pub fn console_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.console_log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// A failure context for assertions: where the logs are and the console's last lines.
    pub fn diagnostics(&self) -> String {
        format!(
            "guest {} (qemu pid {}), logs in {}\n--- console tail ---\n{}",
            self.options.name,
            self.pid,
            self.run_dir.display(),
            self.console_tail(40)
        )
    }

    /// A qemu-ga session; waits up to `timeout` for the guest to boot and qemu-ga to answer.
    pub fn qga(&self, timeout: Duration) -> Result<QgaClient> {
        QgaClient::connect(&self.qga_socket, timeout)
    }

    /// A raw connection to the agent's port (no handshake yet).
    pub fn agent(&self, timeout: Duration) -> Result<AgentClient> {
        AgentClient::connect(&self.agent_socket, timeout)
    }

    fn try_exit_status(&self) -> Result<Option<ExitStatus>> {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let status = child.try_wait().map_err(Error::io("waiting for qemu"))?;
        if status.is_some() {
            forget(self.pid);
        }
        Ok(status)
    }

    /// What the guest's display shows now, from QEMU itself (QMP `screendump`): the
    /// reference a VNC client's view is compared with. Needs [`GuestOptions::vnc`] (without a
    /// display device there is nothing to dump).
    pub fn screendump(&self, timeout: Duration) -> Result<Screen> {
        let path = self.private_dir.path().join("screen.ppm");
        let deadline = Instant::now() + timeout;
        Qmp::connect(&self.qmp_socket, timeout)?.execute_with(
            "screendump",
            serde_json::json!({ "filename": path }),
            deadline,
        )?;
        let ppm = fs::read(&path).map_err(Error::io(format!("reading {}", path.display())))?;
        let _ = fs::remove_file(&path);
        Screen::from_ppm(&ppm)
    }

    /// Whether QEMU still runs.
    pub fn is_running(&self) -> bool {
        matches!(self.try_exit_status(), Ok(None))
    }

    /// Wait up to `timeout` for QEMU to exit by itself (guest power-off); `None` if it still
    /// runs.
    pub fn wait_exit(&self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.try_exit_status()? {
                return Ok(Some(status));
            }
            if started.elapsed() > timeout {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop cleanly through QMP `quit`; kills if QEMU does not exit within `timeout`.
    pub fn quit(&self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_exit_status()? {
            return Ok(status);
        }
        let asked = Qmp::connect(&self.qmp_socket, timeout)
            .and_then(|mut qmp| qmp.execute("quit", Instant::now() + timeout));
        // QEMU may exit before it answers `quit`: a closed connection is success here.
        if let Err(e) = asked {
            if !matches!(e, Error::Closed { .. }) && self.is_running() {
                self.kill()?;
                return Err(e);
            }
        }
        match self.wait_exit(timeout)? {
            Some(status) => Ok(status),
            None => {
                self.kill()?;
                Err(Error::Timeout {
                    what: "qemu exiting after QMP quit".into(),
                    after: timeout,
                })
            }
        }
    }

    /// SIGKILL QEMU (the "host crashed / VM killed" case) and reap it.
    pub fn kill(&self) -> Result<()> {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if child
            .try_wait()
            .map_err(Error::io("waiting for qemu"))?
            .is_none()
        {
            child.kill().map_err(Error::io("killing qemu"))?;
            child.wait().map_err(Error::io("reaping qemu"))?;
        }
        forget(self.pid);
        Ok(())
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        let _ = self.kill();
        // The agent socket may live in a shared socket directory: remove ours.
        let _ = fs::remove_file(&self.agent_socket);
        if let Some(vnc_socket) = &self.vnc_socket {
            let _ = fs::remove_file(vnc_socket);
        }
    }
}

//! The real host, `infinibay serve`, as a child process of the test.
//!
//! Tests point it at a socket directory where guests put their `vm-<uuid>.sock`
//! ([`crate::GuestOptions::socket_dir`]), then observe it from outside: its HTTP API and its log.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::image::{cargo_build_binary, target_dir};
use crate::spawn::{forget, spawn_tied_to_process};
use crate::{Error, Result};

/// How `infinibay serve` is started.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// `--socket-dir`: where the guests' `vm-<uuid>.sock` files are.
    pub socket_dir: PathBuf,
    /// `--data-dir`: database and secrets.
    pub data_dir: PathBuf,
    /// More arguments after `serve ...`.
    pub extra_args: Vec<String>,
    /// Environment (e.g. `RUST_LOG`, `INFINIBAY_ADMIN_PASSWORD`).
    pub env: Vec<(String, String)>,
    /// Where the host's stdout+stderr go.
    pub log_file: PathBuf,
}

impl HostOptions {
    /// Defaults around a socket directory and a data directory; the log goes to
    /// `target/e2e/runs/host-<pid>-<n>.log`.
    pub fn new(socket_dir: &Path, data_dir: &Path) -> Self {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self {
            socket_dir: socket_dir.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            extra_args: Vec::new(),
            env: vec![("RUST_LOG".into(), "info,infinibay=debug".into())],
            log_file: target_dir()
                .join("e2e/runs")
                .join(format!("host-{}-{n}.log", std::process::id())),
        }
    }
}

/// A running `infinibay serve`. Dropping it kills the process.
pub struct HostProcess {
    child: Mutex<Child>,
    pid: u32,
    listen: SocketAddr,
    options: HostOptions,
}

/// An HTTP response, as much as tests need.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body (lossy UTF-8).
    pub body: String,
}

/// Environment variable naming a prebuilt `infinibay` to run instead of building one.
pub const HOST_BINARY_ENV: &str = "IB_E2E_HOST";

/// The `infinibay` binary: [`HOST_BINARY_ENV`], else `cargo build -p infinibay` (debug).
pub fn host_binary() -> Result<PathBuf> {
    match std::env::var_os(HOST_BINARY_ENV) {
        Some(path) => Ok(PathBuf::from(path)),
        None => cargo_build_binary("infinibay", "infinibay"),
    }
}

fn free_local_port() -> Result<SocketAddr> {
    // Bind-then-release has a small race with other processes; the host's start-up error
    // for a taken port makes such a failure obvious rather than silent.
    let listener = TcpListener::bind("127.0.0.1:0").map_err(Error::io("finding a free port"))?;
    listener
        .local_addr()
        .map_err(Error::io("reading the free port"))
}

/// One HTTP/1.1 request with `Connection: close`.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    timeout: Duration,
) -> Result<HttpResponse> {
    let what = format!("{method} http://{addr}{path}");
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(Error::io(format!("{what}: connect")))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(Error::io(what.clone()))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    if let Some(body) = body {
        request.push_str(body);
    }
    stream
        .write_all(request.as_bytes())
        .map_err(Error::io(format!("{what}: write")))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(Error::io(format!("{what}: read")))?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| Error::protocol(what.clone(), "no HTTP status line"))?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(HttpResponse { status, body })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size_line, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size_line.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

impl HostProcess {
    /// Start `binary serve --socket-dir .. --data-dir .. --listen 127.0.0.1:PORT` and wait
    /// until `GET /healthz` answers 200.
    pub fn start(binary: &Path, options: HostOptions, timeout: Duration) -> Result<Self> {
        let listen = free_local_port()?;
        fs::create_dir_all(&options.data_dir).map_err(Error::io(format!(
            "creating {}",
            options.data_dir.display()
        )))?;
        if let Some(parent) = options.log_file.parent() {
            fs::create_dir_all(parent)
                .map_err(Error::io(format!("creating {}", parent.display())))?;
        }
        let log = fs::File::create(&options.log_file).map_err(Error::io(format!(
            "creating {}",
            options.log_file.display()
        )))?;
        let log_err = log
            .try_clone()
            .map_err(Error::io("duplicating the host log handle"))?;
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .arg("--socket-dir")
            .arg(&options.socket_dir)
            .arg("--data-dir")
            .arg(&options.data_dir)
            .arg("--listen")
            .arg(listen.to_string())
            .args(&options.extra_args)
            // /metrics on a port of its own choosing: hosts of tests running side by side
            // would otherwise all want the default 127.0.0.1:9464.
            .env("INFINIBAY_API__METRICS_LISTEN", "127.0.0.1:0")
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let child = spawn_tied_to_process(command)
            .map_err(Error::io(format!("starting {}", binary.display())))?;
        let host = Self {
            pid: child.id(),
            child: Mutex::new(child),
            listen,
            options,
        };
        host.wait_healthy(timeout)?;
        Ok(host)
    }

    fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.try_exit_status()? {
                return Err(Error::Build {
                    step: "infinibay serve".into(),
                    status: status.to_string(),
                    output: self.log_tail(40),
                });
            }
            if let Ok(response) = self.get("/healthz") {
                if response.status == 200 {
                    return Ok(());
                }
            }
            if started.elapsed() > timeout {
                return Err(Error::Timeout {
                    what: format!(
                        "infinibay /healthz on {}; log:\n{}",
                        self.listen,
                        self.log_tail(40)
                    ),
                    after: started.elapsed(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The HTTP address it listens on.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The options it runs with (to restart it with the same directories).
    pub fn options(&self) -> &HostOptions {
        &self.options
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<HttpResponse> {
        http_request(self.listen, "GET", path, &[], None, Duration::from_secs(10))
    }

    /// `POST /graphql` with an optional bearer token; the whole reply (`data`, `errors`).
    pub fn graphql(
        &self,
        token: Option<&str>,
        query: &str,
        variables: serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value> {
        let body = serde_json::json!({ "query": query, "variables": variables }).to_string();
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(bearer) = &bearer {
            headers.push(("Authorization", bearer.as_str()));
        }
        let response = http_request(
            self.listen,
            "POST",
            "/graphql",
            &headers,
            Some(&body),
            timeout,
        )?;
        serde_json::from_str(&response.body).map_err(|e| {
            Error::protocol(
                "POST /graphql",
                format!("status {}: {e}: {}", response.status, response.body),
            )
        })
    }

    /// The password of the `admin` account a first start created, from the banner it prints
    /// once (`password: …` after `Created the administrator account.`).
    pub fn first_admin_password(&self) -> Option<String> {
        let log = self.log();
        let banner = log.split("Created the administrator account.").nth(1)?;
        banner
            .lines()
            .find_map(|line| line.trim().strip_prefix("password:"))
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
    }

    /// The `login` mutation: a token for `username`.
    pub fn login(&self, username: &str, password: &str) -> Result<String> {
        let reply = self.graphql(
            None,
            "mutation($u: String!, $p: String!) { login(username: $u, password: $p) { token } }",
            serde_json::json!({ "u": username, "p": password }),
            Duration::from_secs(30),
        )?;
        reply["data"]["login"]["token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::protocol("login", reply.to_string()))
    }

    /// The host's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.options.log_file).unwrap_or_default()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn try_exit_status(&self) -> Result<Option<ExitStatus>> {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let status = child
            .try_wait()
            .map_err(Error::io("waiting for infinibay"))?;
        if status.is_some() {
            forget(self.pid);
        }
        Ok(status)
    }

    /// SIGTERM and wait up to `timeout` (then SIGKILL): a graceful restart.
    pub fn stop(&self, timeout: Duration) -> Result<Option<ExitStatus>> {
        if let Some(status) = self.try_exit_status()? {
            return Ok(Some(status));
        }
        // SAFETY: kill(2) on our own child, which has not been reaped (checked above).
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Some(status) = self.try_exit_status()? {
                return Ok(Some(status));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill()?;
        Ok(None)
    }

    /// SIGKILL (a crash) and reap.
    pub fn kill(&self) -> Result<()> {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if child
            .try_wait()
            .map_err(Error::io("waiting for infinibay"))?
            .is_none()
        {
            child.kill().map_err(Error::io("killing infinibay"))?;
            child.wait().map_err(Error::io("reaping infinibay"))?;
        }
        forget(self.pid);
        Ok(())
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "infinibay (pid {}) log {}:\n{}",
                self.pid,
                self.options.log_file.display(),
                self.log_tail(60)
            );
        }
        let _ = self.kill();
    }
}

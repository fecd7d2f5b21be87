//! A real host for the hostile-user tests: the `infinibay serve` binary as a child process
//! (so that its memory is its own: `/proc/<pid>/status`), on a fresh data directory, with two
//! simulated VMs, and three users — a bystander (`alice`, owns VM 0), an attacker
//! (`mallory`, owns VM 1) and a victim of password guessing (`victor`).
//!
//! Every test measures the bystander's GraphQL latency (`{ vms { id status } }`, from its own
//! loopback address) idle and during the attack, and the host's peak RSS during it; then
//! [`Finding::conclude`] asserts the refusal, latency within 5× idle, and bounded memory.
//!
//! The same tests make the report of `bench/security/run.sh`: with
//! `INFINIBAY_HOSTILE_REPORT=<file>` they append one JSON line per attack instead of asserting,
//! and `INFINIBAY_HOSTILE_BIN` / `INFINIBAY_HOSTILE_GENERATION=before` run them against another
//! build (the one before the fixes: no `[api]` settings are passed to it).
#![allow(dead_code)]

// The core's test helpers (fake guests), shared rather than copied.
#[path = "../../../core/tests/common/mod.rs"]
pub mod core_common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use infinibay_sim::{SimArgs, Simulator};

/// Password of every user the harness creates.
pub const PASSWORD: &str = "correct-horse-battery";

/// Loopback addresses: the attacker's, the bystander's (Linux routes all of 127/8 to `lo`,
/// and per-address limits must not mistake one for the other).
pub const ATTACKER_IP: &str = "127.0.0.2";
pub const BYSTANDER_IP: &str = "127.0.0.3";

/// The bystander's query.
const BYSTANDER_QUERY: &str = "{ vms { id status } }";

/// The attack tests run one at a time: each measures latency and memory, which another
/// attack running beside it would spoil.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Which build is under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// This tree's (knows the `[api]` section).
    Current,
    /// The build before the fixes (for the report only).
    Before,
}

impl Generation {
    pub fn from_env() -> Self {
        match std::env::var("INFINIBAY_HOSTILE_GENERATION").as_deref() {
            Ok("before") => Self::Before,
            _ => Self::Current,
        }
    }
}

/// Where report lines go instead of assertions.
pub fn report_file() -> Option<PathBuf> {
    std::env::var_os("INFINIBAY_HOSTILE_REPORT").map(PathBuf::from)
}

/// A user the harness created and logged in.
#[derive(Debug, Clone)]
pub struct Account {
    pub id: String,
    pub name: String,
    pub token: String,
}

/// The running host and its users.
pub struct Host {
    pub generation: Generation,
    pub addr: SocketAddr,
    pub url: String,
    pub metrics_url: String,
    pub pid: u32,
    pub data_dir: PathBuf,
    pub socket_dir: PathBuf,
    pub log: PathBuf,
    pub admin: Account,
    pub bystander: Account,
    pub attacker: Account,
    pub victim: Account,
    /// VM ids: `vms[0]` is the bystander's, `vms[1]` the attacker's.
    pub vms: Vec<String>,
    child: Option<tokio::process::Child>,
    sim: Option<Simulator>,
    dir: tempfile::TempDir,
}

/// How to start a host.
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    /// `INFINIBAY_API__*` settings for the current build (ignored for the one before).
    pub api: Vec<(&'static str, String)>,
    /// `RUST_LOG` (default `info`).
    pub rust_log: Option<&'static str>,
    /// The umask the process is started with (default: the test's).
    pub umask: Option<u32>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The binary under test.
pub fn binary() -> PathBuf {
    std::env::var_os("INFINIBAY_HOSTILE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_infinibay")))
}

/// A client whose connections come from `ip`.
pub fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().expect("ip"))
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

impl Host {
    /// Start the binary with two simulated VMs and the three users.
    pub async fn start(options: HostOptions) -> Self {
        let generation = Generation::from_env();
        let dir = tempfile::Builder::new()
            .prefix("ibhostile")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let socket_dir = dir.path().join("s");
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&socket_dir).expect("socket dir");
        let log = dir.path().join("host.log");

        let mut args = SimArgs::new(2, &socket_dir);
        args.interval = Duration::from_millis(500);
        args.stats_every = Duration::ZERO;
        let sim = Simulator::start(&args).await.expect("simulator");
        let vms: Vec<String> = sim.vms().iter().map(|v| v.id.to_string()).collect();

        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let metrics_port = free_port();
        let mut command = tokio::process::Command::new(binary());
        command
            .arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--socket-dir")
            .arg(&socket_dir);
        for (key, _) in std::env::vars() {
            if key.starts_with("INFINIBAY_") {
                command.env_remove(key);
            }
        }
        command
            .env("INFINIBAY_ADMIN_PASSWORD", PASSWORD)
            .env("RUST_LOG", options.rust_log.unwrap_or("info"));
        let metrics_url = match generation {
            Generation::Current => {
                command.env(
                    "INFINIBAY_API__METRICS_LISTEN",
                    format!("127.0.0.1:{metrics_port}"),
                );
                for (key, value) in &options.api {
                    command.env(format!("INFINIBAY_API__{}", key.to_uppercase()), value);
                }
                format!("http://127.0.0.1:{metrics_port}/metrics")
            }
            Generation::Before => format!("http://{addr}/metrics"),
        };
        if let Some(mask) = options.umask {
            // SAFETY: umask is async-signal-safe and only changes the child's mask.
            unsafe {
                command.pre_exec(move || {
                    libc::umask(mask as libc::mode_t);
                    Ok(())
                });
            }
        }
        let stderr = std::fs::File::create(&log).expect("log file");
        command
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        let child = command.spawn().expect("start infinibay serve");
        let pid = child.id().expect("pid");
        let url = format!("http://{addr}");
        let mut host = Self {
            generation,
            addr,
            url,
            metrics_url,
            pid,
            data_dir,
            socket_dir,
            log,
            admin: Account {
                id: String::new(),
                name: "admin".into(),
                token: String::new(),
            },
            bystander: Account {
                id: String::new(),
                name: "alice".into(),
                token: String::new(),
            },
            attacker: Account {
                id: String::new(),
                name: "mallory".into(),
                token: String::new(),
            },
            victim: Account {
                id: String::new(),
                name: "victor".into(),
                token: String::new(),
            },
            vms,
            child: Some(child),
            sim: Some(sim),
            dir,
        };
        host.wait_ready().await;
        host.set_up_users().await;
        host
    }

    async fn wait_ready(&mut self) {
        let started = Instant::now();
        let client = reqwest::Client::new();
        loop {
            if let Ok(r) = client.get(format!("{}/healthz", self.url)).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "infinibay serve exited ({status}) before answering:\n{}",
                    self.log_text()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "infinibay serve did not answer /healthz within 30 s:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn set_up_users(&mut self) {
        let client = reqwest::Client::new();
        self.admin.token = self.login_as(&client, "admin", PASSWORD).await;
        // Both simulated VMs registered.
        let started = Instant::now();
        loop {
            let (_, r) = self
                .gql(
                    &client,
                    Some(&self.admin.token),
                    "{ vms { id } }",
                    json!({}),
                )
                .await;
            let known = r["data"]["vms"]
                .as_array()
                .map(|l| l.iter().filter_map(|v| v["id"].as_str()).count())
                .unwrap_or(0);
            if known >= self.vms.len() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the simulated VMs did not register: {r}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for account in [&mut self.bystander, &mut self.attacker, &mut self.victim] {
            let (_, r) = gql_with(
                &client,
                &self.url,
                Some(&self.admin.token),
                "mutation($u: String!, $p: String!) { createUser(input: {username: $u, password: $p, role: USER}) { id } }",
                json!({"u": account.name, "p": PASSWORD}),
            )
            .await;
            account.id = r["data"]["createUser"]["id"]
                .as_str()
                .unwrap_or_else(|| panic!("create {}: {r}", account.name))
                .to_owned();
        }
        for (vm, owner) in [(0, &self.bystander.id), (1, &self.attacker.id)] {
            let (_, r) = self
                .gql(
                    &client,
                    Some(&self.admin.token),
                    "mutation($vm: ID!, $u: ID) { setVmOwner(vmId: $vm, userId: $u) { id } }",
                    json!({"vm": self.vms[vm], "u": owner}),
                )
                .await;
            assert!(r.get("errors").is_none(), "setVmOwner: {r}");
        }
        let bystander = client_from(BYSTANDER_IP);
        self.bystander.token = self.login_as(&bystander, "alice", PASSWORD).await;
        self.attacker.token = self.login_as(&client, "mallory", PASSWORD).await;
        self.victim.token = self.login_as(&client, "victor", PASSWORD).await;
    }

    /// A token for `name`, retried while the host warms up.
    pub async fn login_as(&self, client: &reqwest::Client, name: &str, password: &str) -> String {
        let started = Instant::now();
        loop {
            let (_, r) = self
                .gql(
                    client,
                    None,
                    "mutation($u: String!, $p: String!) { login(username: $u, password: $p) { token } }",
                    json!({"u": name, "p": password}),
                )
                .await;
            if let Some(token) = r["data"]["login"]["token"].as_str() {
                return token.to_owned();
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "login of {name} failed: {r}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// POST a GraphQL request; the status and the JSON (`Null` when the answer was not JSON).
    pub async fn gql(
        &self,
        client: &reqwest::Client,
        token: Option<&str>,
        query: &str,
        variables: Value,
    ) -> (u16, Value) {
        gql_with(client, &self.url, token, query, variables).await
    }

    /// The host's resident memory now (kB).
    pub fn rss_kb(&self) -> u64 {
        status_kb(self.pid, "VmRSS:")
    }

    /// The host's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The simulated VM of the bystander.
    pub fn bystander_vm(&self) -> &str {
        &self.vms[0]
    }

    /// The simulated VM of the attacker.
    pub fn attacker_vm(&self) -> &str {
        &self.vms[1]
    }

    /// The temporary directory everything lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stop the host (SIGTERM, then kill) and the simulator.
    pub async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                // SAFETY: kill(2) on our own child's pid.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGTERM);
                }
            }
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        if let Some(sim) = self.sim.take() {
            sim.shutdown().await;
        }
    }
}

/// POST `/graphql` on `url`.
pub async fn gql_with(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    query: &str,
    variables: Value,
) -> (u16, Value) {
    let mut request = client
        .post(format!("{url}/graphql"))
        .json(&json!({"query": query, "variables": variables}));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// The `extensions.code` of the first error.
pub fn error_code(response: &Value) -> Option<&str> {
    response
        .pointer("/errors/0/extensions/code")
        .and_then(Value::as_str)
}

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Latency figures of a sample.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Requests that failed or timed out (counted at their full wait).
    pub failed: usize,
}

impl Latency {
    fn of(mut durations: Vec<Duration>, failed: usize) -> Self {
        durations.sort();
        let at = |q: f64| {
            if durations.is_empty() {
                return f64::NAN;
            }
            let i = ((durations.len() - 1) as f64 * q).round() as usize;
            durations[i].as_secs_f64() * 1000.0
        };
        Self {
            samples: durations.len(),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: at(1.0),
            failed,
        }
    }
}

/// One bystander request; its duration, or `Err` with the time it took to fail.
async fn bystander_request(
    client: &reqwest::Client,
    url: &str,
    token: &str,
) -> Result<Duration, Duration> {
    let started = Instant::now();
    let (status, r) = gql_with(client, url, Some(token), BYSTANDER_QUERY, json!({})).await;
    let took = started.elapsed();
    if status == 200 && r["data"]["vms"].is_array() {
        Ok(took)
    } else {
        Err(took)
    }
}

/// The bystander's latency at rest: `n` requests one after another.
pub async fn idle_latency(host: &Host, n: usize) -> Latency {
    let client = client_from(BYSTANDER_IP);
    // Warm the connection and the host's caches.
    for _ in 0..10 {
        let _ = bystander_request(&client, &host.url, &host.bystander.token).await;
    }
    let mut durations = Vec::with_capacity(n);
    let mut failed = 0;
    for _ in 0..n {
        match bystander_request(&client, &host.url, &host.bystander.token).await {
            Ok(d) => durations.push(d),
            Err(d) => {
                failed += 1;
                durations.push(d);
            }
        }
    }
    Latency::of(durations, failed)
}

/// What a [`Watch`] saw: the bystander at rest and during the attack, the host's RSS before
/// it and at its peak.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub idle: Latency,
    pub during: Latency,
    pub rss_before_kb: u64,
    pub peak_kb: u64,
}

impl Measured {
    /// How much the host grew during the attack.
    pub fn growth_kb(&self) -> u64 {
        self.peak_kb.saturating_sub(self.rss_before_kb)
    }
}

/// The bystander querying in a loop, and the host's memory sampled, while an attack runs.
pub struct Watch {
    stop: Arc<AtomicBool>,
    bystander: tokio::task::JoinHandle<(Vec<Duration>, usize)>,
    memory: tokio::task::JoinHandle<()>,
    peak_kb: Arc<AtomicU64>,
    idle: Latency,
    rss_before_kb: u64,
}

impl Watch {
    /// Measure the bystander at rest (`idle_samples` requests, [`idle_latency`]), then start
    /// watching `host` for the attack.
    pub async fn after_idle(host: &Host, idle_samples: usize) -> Self {
        let idle = idle_latency(host, idle_samples).await;
        Self::start(host, idle)
    }

    fn start(host: &Host, idle: Latency) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak_kb = Arc::new(AtomicU64::new(0));
        let rss_before_kb = host.rss_kb();
        let bystander = {
            let stop = stop.clone();
            let url = host.url.clone();
            let token = host.bystander.token.clone();
            tokio::spawn(async move {
                let client = client_from(BYSTANDER_IP);
                let mut durations = Vec::new();
                let mut failed = 0;
                while !stop.load(Ordering::Relaxed) {
                    match bystander_request(&client, &url, &token).await {
                        Ok(d) => durations.push(d),
                        Err(d) => {
                            failed += 1;
                            durations.push(d);
                        }
                    }
                    // About 100 requests a second: a steady load, not a second attack.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (durations, failed)
            })
        };
        let memory = {
            let stop = stop.clone();
            let peak = peak_kb.clone();
            let pid = host.pid;
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(status_kb(pid, "VmRSS:"), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        Self {
            stop,
            bystander,
            memory,
            peak_kb,
            idle,
            rss_before_kb,
        }
    }

    /// Stop watching: the bystander's latency during the attack and the host's peak RSS.
    pub async fn finish(self) -> Measured {
        self.stop.store(true, Ordering::Relaxed);
        let (durations, failed) = self.bystander.await.unwrap_or_default();
        let _ = self.memory.await;
        Measured {
            idle: self.idle,
            during: Latency::of(durations, failed),
            rss_before_kb: self.rss_before_kb,
            peak_kb: self.peak_kb.load(Ordering::Relaxed),
        }
    }
}

/// What one attack test found.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// The attack, as the report names it.
    pub attack: &'static str,
    /// The build.
    pub generation: &'static str,
    /// Whether the host refused it (every check of the test held).
    pub refused: bool,
    /// What was observed, for people.
    pub detail: String,
    pub idle: Option<Latency>,
    pub during: Option<Latency>,
    pub rss_before_kb: u64,
    pub rss_peak_kb: u64,
}

/// How much more than at rest the host may hold during an attack.
pub const RSS_GROWTH_LIMIT_KB: u64 = 96 * 1024;
/// The latency bound: the bystander's median during the attack within this many times its
/// idle median …
pub const LATENCY_FACTOR: f64 = 5.0;
/// … taking an idle median below this as this (sub-millisecond medians make 5× a matter of
/// scheduler noise on a shared 2-core machine).
pub const IDLE_FLOOR_MS: f64 = 2.0;

impl Finding {
    /// A finding about `attack`.
    pub fn new(attack: &'static str, host: &Host) -> Self {
        Self {
            attack,
            generation: match host.generation {
                Generation::Current => "after",
                Generation::Before => "before",
            },
            refused: true,
            detail: String::new(),
            idle: None,
            during: None,
            rss_before_kb: 0,
            rss_peak_kb: 0,
        }
    }

    /// Record one check: `held` or not, with what was seen.
    pub fn check(&mut self, held: bool, what: impl AsRef<str>) {
        if !self.detail.is_empty() {
            self.detail.push_str("; ");
        }
        if !held {
            self.refused = false;
            self.detail.push_str("NOT: ");
        }
        self.detail.push_str(what.as_ref());
    }

    /// Record the watch's figures.
    pub fn measured(&mut self, m: Measured) {
        self.idle = Some(m.idle);
        self.during = Some(m.during);
        self.rss_before_kb = m.rss_before_kb;
        self.rss_peak_kb = m.peak_kb.max(m.rss_before_kb);
    }

    /// Report it (report mode) or assert it: refused, the bystander's median within
    /// [`LATENCY_FACTOR`]× idle, the host's growth within [`RSS_GROWTH_LIMIT_KB`].
    pub fn conclude(self) {
        eprintln!(
            "{}: {}",
            self.attack,
            serde_json::to_string(&self).unwrap_or_default()
        );
        if let Some(path) = report_file() {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .expect("report file");
            writeln!(file, "{}", serde_json::to_string(&self).expect("json")).expect("write");
            return;
        }
        assert!(self.refused, "{}: {}", self.attack, self.detail);
        if let (Some(idle), Some(during)) = (self.idle, self.during) {
            let bound = LATENCY_FACTOR * idle.p50_ms.max(IDLE_FLOOR_MS);
            assert!(
                during.p50_ms <= bound,
                "{}: the bystander's median latency was {:.1} ms during the attack, over {bound:.1} ms ({}× its idle {:.2} ms)",
                self.attack,
                during.p50_ms,
                LATENCY_FACTOR,
                idle.p50_ms
            );
            assert_eq!(
                during.failed, 0,
                "{}: bystander requests failed during the attack",
                self.attack
            );
        }
        if self.rss_peak_kb > 0 {
            let growth = self.rss_peak_kb.saturating_sub(self.rss_before_kb);
            assert!(
                growth <= RSS_GROWTH_LIMIT_KB,
                "{}: the host grew by {} MiB during the attack (limit {} MiB)",
                self.attack,
                growth / 1024,
                RSS_GROWTH_LIMIT_KB / 1024
            );
        }
    }
}

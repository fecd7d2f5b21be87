//! Test helpers: a stand-in for QEMU (a `server=on` UNIX socket at `<dir>/vm-<uuid>.sock`) with
//! a scripted guest behind it, a host on a real SQLite store, and polling waits.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use infinibay_core::Core;
use infinibay_core::CoreConfig;
use infinibay_core::protocol::message::{CommandResponse, ErrorCode, Pong, SafeAction};
use infinibay_core::protocol::samples::{Jitter, identification, small_metrics};
use infinibay_core::protocol::{GuestMessage, HostMessage, HostStreamDecoder, encode_line};
use infinibay_core::store::Store;

/// A guest behind a fake QEMU socket: gets each accepted connection.
pub type GuestFn =
    Arc<dyn Fn(UnixStream) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A fake QEMU `server=on` socket for one VM.
pub struct FakeVm {
    pub id: String,
    pub path: PathBuf,
    pub accepted: Arc<AtomicU64>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl FakeVm {
    /// Bind `<dir>/vm-<id>.sock` (a fresh uuid when `id` is `None`) and serve `guest` on every
    /// connection, as QEMU does: it accepts even when the guest does nothing.
    pub fn spawn(dir: &Path, id: Option<&str>, guest: GuestFn) -> Self {
        let id = id
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let path = dir.join(format!("vm-{id}.sock"));
        Self::spawn_at(id, path, guest)
    }

    /// Serve at an explicit path (for the `<uuid>.socket` form).
    pub fn spawn_at(id: String, path: PathBuf, guest: GuestFn) -> Self {
        let listener = UnixListener::bind(&path).expect("bind fake QEMU socket");
        let stop = CancellationToken::new();
        let accepted = Arc::new(AtomicU64::new(0));
        let task = {
            let stop = stop.clone();
            let accepted = accepted.clone();
            tokio::spawn(async move {
                let mut conns = JoinSet::new();
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        r = listener.accept() => {
                            let Ok((stream, _)) = r else { break };
                            accepted.fetch_add(1, Ordering::SeqCst);
                            // QEMU serves one client at a time: a new one replaces the old.
                            conns.abort_all();
                            conns.spawn(guest(stream));
                        }
                    }
                }
                conns.abort_all();
            })
        };
        Self {
            id,
            path,
            accepted,
            stop,
            task,
        }
    }

    /// The VM stops: connections close and the socket file goes away.
    pub async fn remove(self) {
        self.stop.cancel();
        let _ = self.task.await;
        let _ = std::fs::remove_file(&self.path);
    }

    /// Close the current connection and stop accepting, leaving the file (a dead QEMU).
    pub async fn kill_keep_file(self) -> PathBuf {
        self.stop.cancel();
        let _ = self.task.await;
        self.path
    }
}

/// What the scripted agent does.
#[derive(Clone)]
pub struct AgentOpts {
    /// Seconds between `system_metrics`.
    pub interval: Duration,
    /// Sequence number shared across connections: encoded as cpu = seq / 100.
    pub seq: Arc<AtomicU64>,
    /// Delay before answering a command.
    pub command_delay: Duration,
    /// Claimed VM id in `vm_identification` and metrics.
    pub claimed_id: Option<String>,
    /// Commands received (ids), for assertions.
    pub received: Arc<Mutex<Vec<String>>>,
    /// Whether to answer commands at all.
    pub answer_commands: bool,
    /// The `data` of the answer to `SystemInfo` (default `{"hostname": "fake-guest"}`).
    pub system_info: Option<serde_json::Value>,
    /// When set, the cpu value of every sample (as `f64::to_bits`) instead of `cpu_for(seq)`.
    pub cpu: Option<Arc<AtomicU64>>,
    /// `configure` messages received (answered with a success `response` when they carry an
    /// id).
    pub configures: Arc<Mutex<Vec<infinibay_core::protocol::message::Configure>>>,
}

impl Default for AgentOpts {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(200),
            seq: Arc::new(AtomicU64::new(1)),
            command_delay: Duration::ZERO,
            claimed_id: None,
            received: Arc::new(Mutex::new(Vec::new())),
            answer_commands: true,
            system_info: None,
            cpu: None,
            configures: Arc::new(Mutex::new(Vec::new())),
        }
    }
}

/// A shared cpu value for [`AgentOpts::cpu`].
pub fn cpu_dial(value: f64) -> Arc<AtomicU64> {
    Arc::new(AtomicU64::new(value.to_bits()))
}

/// Turn a [`cpu_dial`].
pub fn set_cpu(dial: &AtomicU64, value: f64) {
    dial.store(value.to_bits(), Ordering::SeqCst);
}

pub fn line(message: &GuestMessage) -> Vec<u8> {
    encode_line(message).expect("encode")
}

/// The cpu value that encodes `seq`.
pub fn cpu_for(seq: u64) -> f64 {
    seq as f64 / 100.0
}

/// A protocol-v1 agent: identification on hello, metrics every `interval`, pong for ping,
/// command responses (an `UnsafeCommand` starting with `sleep` runs until cancelled).
pub fn agent(opts: AgentOpts) -> GuestFn {
    Arc::new(move |stream| {
        let opts = opts.clone();
        Box::pin(async move { run_agent(stream, opts).await })
    })
}

async fn run_agent(stream: UnixStream, opts: AgentOpts) {
    let (mut rd, wr) = stream.into_split();
    let wr = Arc::new(Mutex::new(wr));
    let mut decoder = HostStreamDecoder::default();
    let mut buf = vec![0u8; 8192];
    let mut tick = tokio::time::interval(opts.interval);
    let mut jitter = Jitter::new(7);
    let mut sleeping: Vec<String> = Vec::new();
    let send = |wr: Arc<Mutex<tokio::net::unix::OwnedWriteHalf>>, bytes: Vec<u8>| async move {
        wr.lock().await.write_all(&bytes).await.is_ok()
    };
    loop {
        tokio::select! {
            r = rd.read(&mut buf) => {
                let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                let mut inbound = Vec::new();
                decoder.decode(&buf[..n], |m| if let Ok(m) = m { inbound.push(m) });
                for m in inbound {
                    let reply = match m {
                        HostMessage::Hello(_) => {
                            let mut id = identification("fake-guest");
                            id.claimed_vm_id = opts.claimed_id.clone();
                            Some(GuestMessage::VmIdentification(id))
                        }
                        HostMessage::Ping(p) => Some(GuestMessage::Pong(Pong { id: p.id, timestamp: None })),
                        HostMessage::Cancel(c) => {
                            opts.received.lock().await.push(format!("cancel:{}", c.id));
                            if let Some(pos) = sleeping.iter().position(|s| *s == c.id) {
                                sleeping.remove(pos);
                                Some(GuestMessage::Response(CommandResponse::failure(
                                    c.id, ErrorCode::Cancelled, "cancelled by host")))
                            } else { None }
                        }
                        HostMessage::UnsafeCommand(c) => {
                            opts.received.lock().await.push(c.id.clone());
                            let raw = c.raw_command.clone().unwrap_or_default();
                            if !opts.answer_commands || raw.starts_with("sleep") {
                                sleeping.push(c.id);
                                None
                            } else {
                                let wr = wr.clone();
                                let delay = opts.command_delay;
                                tokio::spawn(async move {
                                    tokio::time::sleep(delay).await;
                                    let r = CommandResponse {
                                        id: c.id, success: true, exit_code: Some(0),
                                        stdout: format!("ran: {raw}"),
                                        command_type: Some("unsafe".into()),
                                        ..CommandResponse::default()
                                    };
                                    send(wr, line(&GuestMessage::Response(r))).await;
                                });
                                None
                            }
                        }
                        HostMessage::SafeCommand(c) => {
                            opts.received.lock().await.push(c.id.clone());
                            if !opts.answer_commands { sleeping.push(c.id); None } else {
                                let data = match c.command_type {
                                    SafeAction::SystemInfo => Some(opts.system_info.clone().unwrap_or_else(|| serde_json::json!({"hostname": "fake-guest"}))),
                                    _ => None,
                                };
                                Some(GuestMessage::Response(CommandResponse {
                                    id: c.id, success: true, data,
                                    command_type: Some("safe".into()),
                                    ..CommandResponse::default()
                                }))
                            }
                        }
                        HostMessage::Configure(c) => {
                            opts.configures.lock().await.push(c.clone());
                            c.id.map(|id| GuestMessage::Response(CommandResponse {
                                id, success: true,
                                data: Some(serde_json::json!({"collection_interval": c.collection_interval})),
                                command_type: Some("configure".into()),
                                ..CommandResponse::default()
                            }))
                        }
                        HostMessage::Welcome(_) => None,
                    };
                    if let Some(reply) = reply
                        && !send(wr.clone(), line(&reply)).await { return; }
                }
            }
            _ = tick.tick() => {
                let seq = opts.seq.fetch_add(1, Ordering::SeqCst);
                let mut m = small_metrics(&mut jitter, seq);
                m.metrics.cpu.usage_percent = match &opts.cpu {
                    Some(dial) => f64::from_bits(dial.load(Ordering::SeqCst)),
                    None => cpu_for(seq),
                };
                m.claimed_vm_id = opts.claimed_id.clone();
                if !send(wr.clone(), line(&GuestMessage::SystemMetrics(m))).await { return; }
            }
        }
    }
}

/// A guest that writes `script` (chunks with pauses) and then holds the connection open,
/// answering nothing.
pub fn scripted(chunks: Vec<(Vec<u8>, Duration)>) -> GuestFn {
    let chunks = Arc::new(chunks);
    Arc::new(move |mut stream| {
        let chunks = chunks.clone();
        Box::pin(async move {
            for (bytes, pause) in chunks.iter() {
                if stream.write_all(bytes).await.is_err() {
                    return;
                }
                tokio::time::sleep(*pause).await;
            }
            // Drain what the host sends so it is never blocked on us.
            let mut buf = [0u8; 1024];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    return;
                }
            }
        })
    })
}

/// Accepts and never reads or writes.
pub fn silent() -> GuestFn {
    Arc::new(|stream| {
        Box::pin(async move {
            let _keep = stream;
            std::future::pending::<()>().await
        })
    })
}

/// Core configuration for tests: fast backoff, fast flushes.
pub fn test_config(socket_dir: &Path) -> CoreConfig {
    let mut c = CoreConfig {
        socket_dir: socket_dir.to_owned(),
        ..CoreConfig::default()
    };
    c.discovery.rescan_interval_secs = 1.0;
    c.connection.backoff_initial_secs = 0.05;
    c.connection.backoff_max_secs = 0.5;
    c.store.flush_interval_ms = 50;
    c
}

pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub sockets: PathBuf,
    pub db_url: String,
}

impl TestEnv {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ib")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let sockets = dir.path().join("s");
        std::fs::create_dir(&sockets).expect("socket dir");
        let db_url = format!("sqlite://{}", dir.path().join("host.db").display());
        Self {
            dir,
            sockets,
            db_url,
        }
    }

    pub fn config(&self) -> CoreConfig {
        test_config(&self.sockets)
    }

    pub async fn store(&self) -> Arc<dyn Store> {
        infinibay_core::store::open(&self.db_url)
            .await
            .expect("open the SQLite store")
    }

    /// A core with the test settings and one VM whose scripted agent is online.
    pub async fn start_with_one_agent(&self) -> (FakeVm, Core) {
        let vm = FakeVm::spawn(&self.sockets, None, agent(AgentOpts::default()));
        let host = self.start(self.config()).await;
        wait_online(&host, &vm.id).await;
        (vm, host)
    }

    pub async fn start(&self, config: CoreConfig) -> Core {
        let store = infinibay_core::store::open(&self.db_url)
            .await
            .expect("open the SQLite store");
        Core::start(config, store, CancellationToken::new())
    }
}

/// Poll `check` until it holds or `timeout` passes.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub async fn wait_online(host: &Core, vm: &str) {
    let host = host.clone();
    let vm = vm.to_owned();
    wait_for(&format!("VM {vm} online"), Duration::from_secs(10), || {
        let online = host
            .vm(&vm)
            .is_some_and(|v| v.status == infinibay_core::store::VmStatus::Online);
        async move { online }
    })
    .await;
}

/// Wait until the host holds an open connection to the VM's socket (agent or not).
pub async fn wait_connected(host: &Core, vm: &str) {
    let host = host.clone();
    let vm = vm.to_owned();
    wait_for(
        &format!("VM {vm} connected"),
        Duration::from_secs(5),
        || {
            let connected = host.vm(&vm).is_some_and(|v| v.connected);
            async move { connected }
        },
    )
    .await;
}

/// Raw samples stored for a VM in the last hour.
pub async fn stored_cpus(store: &Arc<dyn Store>, vm: &str) -> Vec<f64> {
    let now = Utc::now();
    let series = store
        .metrics_series(
            vm,
            now - chrono::Duration::hours(1),
            now + chrono::Duration::minutes(1),
            1_000_000,
        )
        .await
        .expect("metrics query");
    series.points.iter().map(|p| p.cpu_avg).collect()
}

pub async fn wait_samples(store: &Arc<dyn Store>, vm: &str, at_least: usize) {
    let what = format!("{at_least} samples stored for {vm}");
    wait_for(&what, Duration::from_secs(15), || async {
        stored_cpus(store, vm).await.len() >= at_least
    })
    .await;
}

/// Resident memory of this process in kB.
pub fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

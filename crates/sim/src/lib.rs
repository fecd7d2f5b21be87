//! Simulated VMs for the infinibay host.
//!
//! One process holds many simulated VMs. Each is what the host sees of a real one: a QEMU-like
//! `server=on` UNIX socket at `DIR/vm-<uuid>.sock` that accepts one client at a time, with an
//! agent behind it that speaks protocol v1 (or the original agent's format), sends samples at an
//! interval, and answers `hello`, `ping`, commands, `cancel` and `configure`.
//!
//! The data path: [`ticker`] wakes the VMs in staggered slots → each [`vm`] task builds its
//! profile's sample with [`payload`] and writes it to its client → the client's requests are
//! answered by [`agent`]. [`feed`] and [`drain`] are the load drivers of the host benchmarks.
//!
//! Cheapness matters: the simulator shares a 2-core machine with the host in the benchmarks, so
//! there is one ticker task for all VMs (not one timer each), at most one pending sample per VM
//! while no client is connected, and every write is awaited (backpressure, no unbounded queue).
#![deny(missing_docs)]

pub mod agent;
pub mod drain;
pub mod feed;
pub mod ids;
pub mod limits;
pub mod paced;
pub mod payload;
pub mod stats;
pub mod ticker;
pub mod vm;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinSet;
use uuid::Uuid;

pub use stats::{Stats, StatsSnapshot};

/// What a simulated VM sends every interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// One ~1 KB `system_metrics` (protocol v1).
    Small,
    /// ~64 KB: `system_metrics` + `process_snapshot` (150 processes) + `service_inventory`
    /// (100 services) + `port_usage` (40 ports) (protocol v1).
    Typical,
    /// The original InfiniService agent: one untyped-response, `metrics`-message agent that
    /// sends no `vm_identification` and ignores `hello`/`ping`.
    Legacy,
}

impl Profile {
    /// The CLI spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Small => "small",
            Self::Typical => "typical",
            Self::Legacy => "legacy",
        }
    }
}

/// `infinibay-sim`: options of the simulator.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Number of simulated VMs.
    #[arg(long, default_value_t = 10)]
    pub vms: usize,
    /// Seconds between samples (fractions allowed, e.g. 0.2).
    #[arg(long, default_value = "1", value_parser = parse_seconds)]
    pub interval: Duration,
    /// Directory for the `vm-<uuid>.sock` files (created if missing).
    #[arg(long)]
    pub socket_dir: PathBuf,
    /// What each VM sends per interval.
    #[arg(long, value_enum, default_value_t = Profile::Small)]
    pub profile: Profile,
    /// The first K VMs send as fast as their client reads, instead of once per interval.
    #[arg(long, default_value_t = 0)]
    pub flood: usize,
    /// What the flooding VMs send (default: the ~64 KB typical set).
    #[arg(long, value_enum, default_value_t = Profile::Typical)]
    pub flood_profile: Profile,
    /// Seed of the VM ids: the same seed and index give the same uuid on every run.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Index of the first VM; lets several simulator processes share one seed without
    /// overlapping ids (e.g. two processes of 5,000 VMs when one would exceed RLIMIT_NOFILE).
    #[arg(long, default_value_t = 0)]
    pub first_index: u64,
    /// Seconds between statistics lines; 0 turns them off.
    #[arg(long, default_value = "10", value_parser = parse_seconds)]
    pub stats_every: Duration,
    /// Also write the counters as JSON to this file at every statistics tick (replaced
    /// atomically), so scripts can take the difference over a measuring window.
    #[arg(long)]
    pub stats_file: Option<PathBuf>,
    /// Stop by itself after this many seconds (for scripts); default: run until Ctrl-C/SIGTERM.
    #[arg(long, value_parser = parse_seconds)]
    pub duration: Option<Duration>,
}

impl SimArgs {
    /// Defaults for `vms` VMs in `socket_dir` (what the CLI gives without options).
    pub fn new(vms: usize, socket_dir: impl Into<PathBuf>) -> Self {
        Self {
            vms,
            interval: Duration::from_secs(1),
            socket_dir: socket_dir.into(),
            profile: Profile::Small,
            flood: 0,
            flood_profile: Profile::Typical,
            seed: 1,
            first_index: 0,
            stats_every: Duration::from_secs(10),
            stats_file: None,
            duration: None,
        }
    }
}

/// Parse seconds given as an integer or a decimal fraction (`1`, `0.25`).
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("`{text}` is not a usable number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Why the simulator could not start or run.
#[derive(Debug, Error)]
pub enum SimError {
    /// A bad combination of options.
    #[error("invalid options: {0}")]
    Invalid(String),
    /// The socket directory could not be created.
    #[error("cannot create socket directory {path}: {source}")]
    SocketDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A socket could not be bound.
    #[error("cannot bind {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not enough file descriptors for the requested number of VMs.
    #[error(transparent)]
    FileLimit(#[from] limits::FileLimitError),
    /// Installing the signal handlers failed.
    #[error("cannot install signal handler: {0}")]
    Signal(std::io::Error),
}

/// One simulated VM as seen from outside.
#[derive(Debug, Clone)]
pub struct VmInfo {
    /// Its index (from `--first-index`).
    pub index: u64,
    /// Its stable id.
    pub id: Uuid,
    /// Its socket.
    pub socket: PathBuf,
    /// Whether it floods.
    pub flood: bool,
}

/// A running simulator. Dropping it stops the VMs and removes their socket files.
pub struct Simulator {
    vms: Vec<VmInfo>,
    stats: Arc<Stats>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    started: Instant,
}

impl Simulator {
    /// Bind every socket and start the VMs and the ticker. Logs progress while binding.
    pub async fn start(args: &SimArgs) -> Result<Self, SimError> {
        if args.vms == 0 {
            return Err(SimError::Invalid("--vms must be at least 1".into()));
        }
        if args.flood > args.vms {
            return Err(SimError::Invalid(format!(
                "--flood {} is more than --vms {}",
                args.flood, args.vms
            )));
        }
        if args.interval < Duration::from_millis(10) {
            return Err(SimError::Invalid(
                "--interval must be at least 0.01 seconds".into(),
            ));
        }
        limits::ensure_fds_for(args.vms)?;
        std::fs::create_dir_all(&args.socket_dir).map_err(|source| SimError::SocketDir {
            path: args.socket_dir.clone(),
            source,
        })?;

        let stats = Arc::new(Stats::default());
        let (shutdown, shutdown_rx) = watch::channel(false);
        let started = Instant::now();
        let mut tasks = JoinSet::new();
        let mut vms = Vec::with_capacity(args.vms);
        let mut slots = Vec::with_capacity(args.vms);
        let mut last_progress = Instant::now();
        let flood_payload =
            (args.flood > 0).then(|| payload::FloodPayload::new(args.flood_profile, 8));

        for n in 0..args.vms {
            let index = args.first_index + n as u64;
            let id = ids::vm_uuid(args.seed, index);
            let socket = socket_path(&args.socket_dir, id);
            let listener = match vm::bind(&socket) {
                Ok(listener) => listener,
                Err(source) => {
                    // Sockets bound so far are removed by Drop.
                    let partial = Self {
                        vms,
                        stats,
                        shutdown,
                        tasks,
                        started,
                    };
                    drop(partial);
                    return Err(SimError::Bind {
                        path: socket,
                        source,
                    });
                }
            };
            let flood = n < args.flood;
            let profile = if flood {
                args.flood_profile
            } else {
                args.profile
            };
            let slot = Arc::new(vm::VmSlot::new(index, id, profile, flood));
            slots.push(slot.clone());
            vms.push(VmInfo {
                index,
                id,
                socket,
                flood,
            });
            let context = vm::VmContext {
                stats: stats.clone(),
                shutdown: shutdown_rx.clone(),
                started,
                interval: args.interval,
                flood_payload: flood_payload.clone(),
            };
            tasks.spawn(vm::run_vm(slot, listener, context));

            let bound = n + 1;
            if bound % 500 == 0 || last_progress.elapsed() >= Duration::from_secs(1) {
                tracing::info!(target: "infinibay::sim", "bound {bound}/{} sockets", args.vms);
                last_progress = Instant::now();
                // Let the VMs already bound start accepting while thousands more are bound.
                tokio::task::yield_now().await;
            }
        }
        tracing::info!(
            target: "infinibay::sim",
            "bound {0}/{0} sockets in {1:.2} s in {2}; profile {3}, {4} flooding ({5}), interval {6:?}, seed {7}",
            args.vms,
            started.elapsed().as_secs_f64(),
            args.socket_dir.display(),
            args.profile.as_str(),
            args.flood,
            args.flood_profile.as_str(),
            args.interval,
            args.seed,
        );
        let periodic: Vec<_> = slots.into_iter().filter(|s| !s.flood).collect();
        tasks.spawn(ticker::run_ticker(
            periodic,
            args.interval,
            shutdown_rx.clone(),
        ));
        Ok(Self {
            vms,
            stats,
            shutdown,
            tasks,
            started,
        })
    }

    /// The VMs, in index order.
    pub fn vms(&self) -> &[VmInfo] {
        &self.vms
    }

    /// Live counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Time since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stop every VM, close their connections and remove the socket files.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        // A VM blocked writing to a client that never reads does not see the signal: give the
        // others a moment to finish their line, then abort the rest.
        let drained = tokio::time::timeout(Duration::from_secs(2), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
        self.remove_sockets();
    }

    fn remove_sockets(&mut self) {
        for vm in self.vms.drain(..) {
            if let Err(e) = std::fs::remove_file(&vm.socket)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(target: "infinibay::sim", "cannot remove {}: {e}", vm.socket.display());
            }
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.tasks.abort_all();
        self.remove_sockets();
    }
}

/// `DIR/vm-<uuid>.sock`, the name the host discovers.
pub fn socket_path(dir: &Path, id: Uuid) -> PathBuf {
    dir.join(format!("vm-{id}.sock"))
}

/// Replace `path` with the counters (write a temporary file, then rename: readers never see a
/// half-written file).
fn write_stats_file(path: &Path, stats: &StatsSnapshot, uptime: Duration) {
    let temporary = path.with_extension("tmp");
    let result = std::fs::write(&temporary, stats.to_json(uptime))
        .and_then(|()| std::fs::rename(&temporary, path));
    if let Err(e) = result {
        tracing::warn!(target: "infinibay::sim", "cannot write {}: {e}", path.display());
    }
}

/// Run the simulator until Ctrl-C, SIGTERM or `--duration`, printing statistics lines, then
/// remove the sockets and print the totals.
pub async fn run(args: SimArgs) -> Result<(), SimError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).map_err(SimError::Signal)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(SimError::Signal)?;

    let sim = Simulator::start(&args).await?;
    let stats = sim.stats().clone();
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let stats_every = if args.stats_every.is_zero() {
        Duration::from_secs(3600 * 24 * 365)
    } else {
        args.stats_every
    };
    let mut report =
        tokio::time::interval_at(tokio::time::Instant::now() + stats_every, stats_every);
    let mut previous = stats.snapshot();
    let mut previous_at = Instant::now();
    let reason = loop {
        tokio::select! {
            _ = terminate.recv() => break "SIGTERM",
            _ = interrupt.recv() => break "SIGINT",
            _ = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => break "--duration elapsed",
            _ = report.tick() => {
                let now = stats.snapshot();
                let secs = previous_at.elapsed().as_secs_f64();
                tracing::info!(target: "infinibay::sim", "{}", now.rate_line(&previous, secs));
                if let Some(path) = &args.stats_file {
                    write_stats_file(path, &now, sim.uptime());
                }
                previous = now;
                previous_at = Instant::now();
            }
        }
    };
    let uptime = sim.uptime();
    tracing::info!(target: "infinibay::sim", "{reason}: stopping {} VMs", sim.vms().len());
    sim.shutdown().await;
    let totals = stats.snapshot();
    // One machine-readable line on stdout, for scripts.
    println!("{}", totals.to_json(uptime));
    Ok(())
}

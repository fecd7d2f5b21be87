//! `drain`: a stand-in host for load runs before (or beside) the real one.
//!
//! It connects to every `vm-<uuid>.sock` in a directory, sends 0xFF + `hello` like the host,
//! and runs the host's ingest steps on everything that arrives — decode, sanitise, publish on
//! one in-process bus — with no discovery, storage or API. It measures what the simulator's
//! VMs deliver: samples per second, and whether each periodic VM's samples arrive on time (the
//! gap between consecutive `system_metrics` of one VM). It is not `infinibay serve`; reports say
//! which of the two was measured.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use infinibay_protocol::sanitize::{Limits, sanitize};
use infinibay_protocol::{DEFAULT_MAX_LINE, GuestMessage, GuestStreamDecoder, RESYNC};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

use crate::feed::{FeedError, process_usage};

/// Width of one gap-histogram bucket.
const BUCKET: Duration = Duration::from_millis(10);
/// Buckets: gaps up to 20 s; longer ones land in the last.
const BUCKETS: usize = 2000;

/// Options of a drain run.
#[derive(Debug, Clone)]
pub struct DrainOptions {
    /// Where the sockets are.
    pub socket_dir: PathBuf,
    /// Wait (up to `settle`) until at least this many sockets exist.
    pub expect: usize,
    /// How long to wait for the sockets and the first samples before measuring.
    pub settle: Duration,
    /// Measuring window.
    pub duration: Duration,
    /// The simulator's interval: a gap above 1.5 intervals is a late sample.
    pub interval: Duration,
    /// VMs to leave out of the gap statistics (the flooders).
    pub exclude: Vec<Uuid>,
}

/// What a drain run measured.
#[derive(Debug, Clone, Default)]
pub struct DrainReport {
    /// Sockets connected.
    pub vms: usize,
    /// Messages decoded in the window.
    pub messages: u64,
    /// Of which `system_metrics`.
    pub samples: u64,
    /// Bytes read in the window.
    pub bytes: u64,
    /// Lines that did not decode.
    pub bad_lines: u64,
    /// Bus messages the one subscriber missed.
    pub lagged: u64,
    /// Window length.
    pub wall_secs: f64,
    /// CPU of this process in the window.
    pub cpu_secs: f64,
    /// Peak RSS of this process, KiB.
    pub max_rss_kb: u64,
    /// Gaps between consecutive samples of periodic VMs: count, p50, p99, max (ms).
    pub gaps: (u64, f64, f64, f64),
    /// Gaps above 1.5 intervals.
    pub late_gaps: u64,
}

impl DrainReport {
    /// As one JSON object.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "consumer": "drain (protocol pipeline stand-in host)",
            "vms": self.vms,
            "messages": self.messages,
            "samples": self.samples,
            "samples_per_sec": self.samples as f64 / self.wall_secs.max(1e-9),
            "bytes": self.bytes,
            "bad_lines": self.bad_lines,
            "lagged": self.lagged,
            "wall_secs": self.wall_secs,
            "cpu_secs": self.cpu_secs,
            "cpu_percent_of_one_core": 100.0 * self.cpu_secs / self.wall_secs.max(1e-9),
            "max_rss_kb": self.max_rss_kb,
            "gap_count": self.gaps.0,
            "gap_p50_ms": self.gaps.1,
            "gap_p99_ms": self.gaps.2,
            "gap_max_ms": self.gaps.3,
            "late_gaps": self.late_gaps,
        })
        .to_string()
    }
}

#[derive(Default)]
struct Shared {
    messages: AtomicU64,
    samples: AtomicU64,
    bytes: AtomicU64,
    bad_lines: AtomicU64,
    late_gaps: AtomicU64,
    max_gap_ms: AtomicU64,
    histogram: Vec<AtomicU64>,
}

fn vm_sockets(dir: &Path) -> Vec<(Uuid, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name();
            let name = name.to_str()?;
            let id = name.strip_prefix("vm-")?.strip_suffix(".sock")?;
            Some((Uuid::parse_str(id).ok()?, entry.path()))
        })
        .collect()
}

/// Run the stand-in host over every socket in `options.socket_dir`.
pub async fn drain(options: DrainOptions) -> Result<DrainReport, FeedError> {
    let settle_until = Instant::now() + options.settle;
    let mut sockets = vm_sockets(&options.socket_dir);
    while sockets.len() < options.expect && Instant::now() < settle_until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        sockets = vm_sockets(&options.socket_dir);
    }
    let needed = sockets.len() as u64 + crate::limits::RESERVED_FDS;
    if let Err(hard) = crate::limits::raise_nofile(needed) {
        tracing::warn!(target: "infinibay::sim", "drain: {needed} descriptors needed, hard limit {hard}: some sockets will not be read");
    }
    let shared = Arc::new(Shared {
        histogram: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        ..Shared::default()
    });
    let (bus, mut subscriber) = broadcast::channel::<Arc<(Uuid, GuestMessage)>>(8192);
    let listener = tokio::spawn(async move {
        let mut lagged = 0u64;
        loop {
            match subscriber.recv().await {
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => lagged += n,
                Err(broadcast::error::RecvError::Closed) => return lagged,
            }
        }
    });
    let (measuring_tx, measuring) = watch::channel(false);
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for (id, path) in &sockets {
        let exclude = options.exclude.contains(id);
        tasks.spawn(read_vm(
            *id,
            path.clone(),
            !exclude,
            options.interval,
            bus.clone(),
            shared.clone(),
            measuring.clone(),
            stop.clone(),
        ));
        if tasks.len() % 500 == 0 {
            tokio::task::yield_now().await;
        }
    }
    drop(bus);
    tracing::info!(target: "infinibay::sim", "drain: connecting to {} sockets; settling", sockets.len());
    tokio::time::sleep_until(tokio::time::Instant::from_std(
        settle_until.max(Instant::now() + Duration::from_secs(2)),
    ))
    .await;

    let _ = measuring_tx.send(true);
    let started = Instant::now();
    let cpu_before = process_usage().0;
    tokio::time::sleep(options.duration).await;
    let wall_secs = started.elapsed().as_secs_f64();
    let (cpu_after, max_rss_kb) = process_usage();
    let _ = stop_tx.send(true);
    let vms = tasks.len();
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let lagged = listener.await.unwrap_or(0);

    let counts: Vec<u64> = shared.histogram.iter().map(|b| b.load(Relaxed)).collect();
    let total: u64 = counts.iter().sum();
    let percentile = |p: f64| -> f64 {
        let target = (total as f64 * p).ceil() as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= target.max(1) {
                return ((i + 1) as u128 * BUCKET.as_millis()) as f64;
            }
        }
        0.0
    };
    Ok(DrainReport {
        vms,
        messages: shared.messages.load(Relaxed),
        samples: shared.samples.load(Relaxed),
        bytes: shared.bytes.load(Relaxed),
        bad_lines: shared.bad_lines.load(Relaxed),
        lagged,
        wall_secs,
        cpu_secs: cpu_after - cpu_before,
        max_rss_kb,
        gaps: (
            total,
            percentile(0.5),
            percentile(0.99),
            shared.max_gap_ms.load(Relaxed) as f64,
        ),
        late_gaps: shared.late_gaps.load(Relaxed),
    })
}

#[allow(clippy::too_many_arguments)]
async fn read_vm(
    id: Uuid,
    path: PathBuf,
    track_gaps: bool,
    interval: Duration,
    bus: broadcast::Sender<Arc<(Uuid, GuestMessage)>>,
    shared: Arc<Shared>,
    measuring: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut stream = None;
    for _ in 0..50 {
        match UnixStream::connect(&path).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let Some(mut stream) = stream else {
        tracing::warn!(target: "infinibay::sim", "drain: cannot connect to {}", path.display());
        return;
    };
    let mut hello = vec![RESYNC];
    hello.extend_from_slice(br#"{"type":"hello","protocol_version":1}"#);
    hello.push(b'\n');
    if stream.write_all(&hello).await.is_err() {
        return;
    }
    let limits = Limits::default();
    let mut decoder = GuestStreamDecoder::new(DEFAULT_MAX_LINE);
    let mut buffer = vec![0u8; 8 * 1024];
    let mut last_sample: Option<Instant> = None;
    let late = interval.mul_f64(1.5);
    loop {
        let read = tokio::select! {
            _ = stop.changed() => return,
            read = stream.read(&mut buffer) => read,
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let counting = *measuring.borrow();
        let now = Instant::now();
        if counting {
            shared.bytes.fetch_add(n as u64, Relaxed);
        }
        decoder.decode(&buffer[..n], |item| match item {
            Ok(mut message) => {
                sanitize(&mut message, &limits);
                let is_sample = matches!(message, GuestMessage::SystemMetrics(_));
                if counting {
                    shared.messages.fetch_add(1, Relaxed);
                    if is_sample {
                        shared.samples.fetch_add(1, Relaxed);
                    }
                }
                if is_sample && track_gaps {
                    if let (Some(previous), true) = (last_sample, counting) {
                        let gap = now.duration_since(previous);
                        let bucket =
                            ((gap.as_nanos() / BUCKET.as_nanos()) as usize).min(BUCKETS - 1);
                        shared.histogram[bucket].fetch_add(1, Relaxed);
                        shared.max_gap_ms.fetch_max(gap.as_millis() as u64, Relaxed);
                        if gap > late {
                            shared.late_gaps.fetch_add(1, Relaxed);
                        }
                    }
                    last_sample = Some(now);
                }
                let _ = bus.send(Arc::new((id, message)));
            }
            Err(_) => {
                if counting {
                    shared.bad_lines.fetch_add(1, Relaxed);
                }
            }
        });
    }
}

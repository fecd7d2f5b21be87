//! A paced fleet feed, the load of the storage budget in `bench/host/run.sh` (section
//! `sustain`): `vms` QEMU-like sockets, each writing its share of a pre-rendered corpus once
//! per tick, so that the consumer sees a steady `rate` of samples spread over many VMs.
//!
//! It is measured like the ingest budget (a corpus fed over UNIX sockets), not with the
//! per-sample simulator: that one encodes every sample and writes it alone, and at 50,000
//! samples/s it takes a third of this 2-core machine away from the host it is measuring.
//! Here a VM costs one write of a few ready lines per tick.
//!
//! Every line a tick owes is counted as offered; a tick that comes more than one tick late
//! (the consumer did not read the previous write in time) is skipped and counted, so
//! `skipped == 0` means the consumer kept pace.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::time::MissedTickBehavior;

use crate::feed::FeedError;

/// What to feed.
#[derive(Debug, Clone)]
pub struct PacedOptions {
    /// Where the `vm-<uuid>.sock` files are created.
    pub socket_dir: PathBuf,
    /// Number of VMs (sockets).
    pub vms: usize,
    /// Index of the first VM: two feeders with the same seed and disjoint ranges make one
    /// fleet (10,000 VMs need more descriptors than one process may have here).
    pub first_index: u64,
    /// VM ids are [`crate::ids::vm_uuid`]`(seed, index)`.
    pub seed: u64,
    /// Lines per second, all of this feeder's VMs together.
    pub rate: f64,
    /// How often each VM writes its share.
    pub tick: Duration,
    /// Stop after this long (from start); `None`: until killed.
    pub duration: Option<Duration>,
    /// Cumulative counters written here every second.
    pub stats_file: Option<PathBuf>,
}

#[derive(Debug, Default)]
struct Counters {
    connected: AtomicU64,
    offered: AtomicU64,
    written: AtomicU64,
    skipped: AtomicU64,
}

/// Cumulative counters, as the stats file and the final report carry them.
#[derive(Debug, Clone, Serialize)]
pub struct PacedStats {
    /// Seconds since the sockets were bound.
    pub uptime_secs: f64,
    /// Lines per second actually scheduled (the requested rate rounded to whole lines per VM
    /// per tick).
    pub rate: f64,
    /// Sockets with a consumer connected now.
    pub connected: u64,
    /// Lines the ticks owed since each VM's consumer connected.
    pub offered: u64,
    /// Lines written.
    pub written: u64,
    /// Lines of ticks skipped because the consumer had not read the previous write in time.
    pub skipped: u64,
}

/// The corpus split into lines, shared by every VM.
struct Lines {
    bytes: Arc<Vec<u8>>,
    ranges: Vec<Range<usize>>,
}

impl Lines {
    fn new(bytes: Arc<Vec<u8>>) -> Self {
        let mut ranges = Vec::new();
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'\n' {
                ranges.push(start..i + 1);
                start = i + 1;
            }
        }
        Self { bytes, ranges }
    }
}

/// Bind the sockets and feed whoever connects, until `duration` (or forever).
pub async fn paced_feed(
    options: PacedOptions,
    corpus: Arc<Vec<u8>>,
) -> Result<PacedStats, FeedError> {
    let lines = Arc::new(Lines::new(corpus));
    if lines.ranges.is_empty() {
        return Err(FeedError::Io {
            what: "no complete line in the corpus for",
            path: options.socket_dir.clone(),
            source: std::io::ErrorKind::InvalidData.into(),
        });
    }
    crate::limits::ensure_fds_for(options.vms)?;
    let vms = options.vms.max(1);
    let tick_secs = options.tick.as_secs_f64().max(1e-3);
    let per_tick = ((options.rate * tick_secs / vms as f64).round() as usize).max(1);
    let rate = (per_tick * vms) as f64 / tick_secs;
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut paths = Vec::with_capacity(vms);
    for index in 0..vms {
        let id = crate::ids::vm_uuid(options.seed, options.first_index + index as u64);
        let path = options.socket_dir.join(format!("vm-{id}.sock"));
        paths.push(path.clone());
        let listener = crate::vm::bind(&path).map_err(|source| FeedError::Io {
            what: "cannot bind",
            path: path.clone(),
            source,
        })?;
        // Spread the VMs' writes over the tick instead of all at its start.
        let phase = options.tick.mul_f64(index as f64 / vms as f64);
        tasks.spawn(feed_one(
            listener,
            path,
            lines.clone(),
            (index * 7919) % lines.ranges.len(),
            per_tick,
            options.tick,
            started + phase,
            counters.clone(),
        ));
    }
    let snapshot = |counters: &Counters| PacedStats {
        uptime_secs: started.elapsed().as_secs_f64(),
        rate,
        connected: counters.connected.load(Ordering::Relaxed),
        offered: counters.offered.load(Ordering::Relaxed),
        written: counters.written.load(Ordering::Relaxed),
        skipped: counters.skipped.load(Ordering::Relaxed),
    };
    let mut every_second = tokio::time::interval(Duration::from_secs(1));
    loop {
        every_second.tick().await;
        if let Some(file) = &options.stats_file {
            write_stats(file, &snapshot(&counters))?;
        }
        if options.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
    }
    tasks.abort_all();
    for path in &paths {
        let _ = std::fs::remove_file(path);
    }
    Ok(snapshot(&counters))
}

fn write_stats(file: &Path, stats: &PacedStats) -> Result<(), FeedError> {
    // Written aside and renamed: a reader never sees half a file.
    let partial = file.with_extension("partial");
    let text = serde_json::to_string(stats)?;
    std::fs::write(&partial, text)
        .and_then(|()| std::fs::rename(&partial, file))
        .map_err(|source| FeedError::Io {
            what: "cannot write stats to",
            path: file.to_owned(),
            source,
        })
}

/// One VM: accept a consumer, write `per_tick` lines every tick while it stays; accept the
/// next one when it goes.
#[allow(clippy::too_many_arguments)]
async fn feed_one(
    listener: UnixListener,
    path: PathBuf,
    lines: Arc<Lines>,
    mut next_line: usize,
    per_tick: usize,
    tick: Duration,
    first_tick: Instant,
    counters: Arc<Counters>,
) {
    let mut chunk = Vec::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tracing::warn!("accept failed on {}; this VM stops", path.display());
            return;
        };
        counters.connected.fetch_add(1, Ordering::Relaxed);
        let (mut reader, mut writer) = stream.into_split();
        // The host's pings and commands: read and dropped (a full buffer would stall it).
        let discard = tokio::spawn(async move {
            let mut sink = [0u8; 4096];
            while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::from_std(first_tick.max(Instant::now())),
            tick,
        );
        ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
        loop {
            let scheduled = ticker.tick().await;
            counters
                .offered
                .fetch_add(per_tick as u64, Ordering::Relaxed);
            if scheduled.elapsed() > tick {
                counters
                    .skipped
                    .fetch_add(per_tick as u64, Ordering::Relaxed);
                continue;
            }
            chunk.clear();
            for _ in 0..per_tick {
                chunk.extend_from_slice(&lines.bytes[lines.ranges[next_line].clone()]);
                next_line = (next_line + 1) % lines.ranges.len();
            }
            if writer.write_all(&chunk).await.is_err() {
                break;
            }
            counters
                .written
                .fetch_add(per_tick as u64, Ordering::Relaxed);
        }
        discard.abort();
        counters.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    #[tokio::test]
    async fn each_vm_gets_its_share_of_whole_lines_at_the_paced_rate() {
        let dir = tempfile::tempdir().expect("temp dir");
        let corpus: Vec<u8> = (0..10)
            .flat_map(|n| format!("{{\"line\":{n}}}\n").into_bytes())
            .collect();
        let options = PacedOptions {
            socket_dir: dir.path().to_owned(),
            vms: 2,
            first_index: 0,
            seed: 3,
            rate: 40.0,
            tick: Duration::from_millis(100),
            duration: Some(Duration::from_secs(2)),
            stats_file: None,
        };
        let feeder = tokio::spawn(paced_feed(options, Arc::new(corpus)));
        let path = dir
            .path()
            .join(format!("vm-{}.sock", crate::ids::vm_uuid(3, 1)));
        let mut stream = None;
        for _ in 0..100 {
            if let Ok(s) = tokio::net::UnixStream::connect(&path).await {
                stream = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stream = stream.expect("the feeder binds its sockets");
        let mut reader = tokio::io::BufReader::new(stream).lines();
        let mut received = Vec::new();
        while let Ok(Some(line)) = reader.next_line().await {
            received.push(line);
            if received.len() == 10 {
                break;
            }
        }
        // 40 lines/s over 2 VMs in 100 ms ticks: 2 lines per VM per tick, whole lines, in
        // corpus order from this VM's starting point.
        assert_eq!(received.len(), 10);
        assert!(received.iter().all(|l| l.starts_with("{\"line\":")));
        let stats = feeder.await.expect("feeder task").expect("feeder ran");
        assert_eq!(stats.rate, 40.0);
        assert!(stats.written >= 10, "{stats:?}");
        assert_eq!(stats.skipped, 0, "{stats:?}");
    }
}

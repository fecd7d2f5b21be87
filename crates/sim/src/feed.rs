//! Load drivers for the host benchmarks (`bench/host/run.sh`).
//!
//! The ingest benchmark feeds the same bytes to two consumers over a real UNIX socket: our
//! protocol pipeline ([`ingest_pipeline`]) and the seeds' Node watcher re-implemented in
//! `bench/host/node-watcher.js`. [`corpus`] makes the bytes, [`serve_corpus`] is the QEMU-like
//! server end that writes them as fast as the consumer reads. The pipeline can stop early
//! ([`IngestStage`]): its lower stages are the floors any ingest that checks its input pays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use infinibay_protocol::samples::Jitter;
use infinibay_protocol::sanitize::{Limits, sanitize};
use infinibay_protocol::{
    DEFAULT_MAX_LINE, Frame, GuestMessage, GuestStreamDecoder, LineDecoder, encode_line,
};
use serde::de::IgnoredAny;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::Profile;
use crate::payload::{Collectors, SampleSource};

/// A load driver failed.
#[derive(Debug, Error)]
pub enum FeedError {
    /// Socket trouble.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The socket or file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A sample could not be encoded.
    #[error("cannot encode a sample: {0}")]
    Encode(#[from] serde_json::Error),
    /// Not enough file descriptors.
    #[error(transparent)]
    FileLimit(#[from] crate::limits::FileLimitError),
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FeedError + use<> {
    let path = path.to_owned();
    move |source| FeedError::Io { what, path, source }
}

/// `messages` distinct samples of `profile` as lines (for `small`: `system_metrics` of ~1 KB).
pub fn corpus(profile: Profile, messages: usize, seed: u64) -> Result<Vec<u8>, FeedError> {
    let mut source = SampleSource::new(seed, Uuid::nil(), profile);
    let mut out = Vec::with_capacity(messages * 1100);
    match profile {
        Profile::Small => {
            let mut jitter = Jitter::new(seed);
            for n in 0..messages {
                let sample =
                    infinibay_protocol::samples::small_metrics(&mut jitter, 1000 + n as u64);
                out.extend_from_slice(&encode_line(&GuestMessage::SystemMetrics(sample))?);
            }
        }
        Profile::Typical | Profile::Legacy => {
            for n in 0..messages {
                out.extend_from_slice(&source.sample(n as u64, Collectors::default()).bytes);
            }
        }
    }
    Ok(out)
}

/// Number of lines in a corpus.
pub fn count_lines(corpus: &[u8]) -> u64 {
    corpus.iter().filter(|&&b| b == b'\n').count() as u64
}

/// What the feeder did.
#[derive(Debug, Clone, Copy)]
pub struct FeedReport {
    /// Lines written.
    pub messages: u64,
    /// Bytes written.
    pub bytes: u64,
    /// From accept to the last byte written.
    pub wall: Duration,
}

/// Bind `socket`, accept one client, write `corpus` `repeat` times as fast as it reads, close.
pub async fn serve_corpus(
    socket: &Path,
    corpus: Arc<Vec<u8>>,
    repeat: u64,
) -> Result<FeedReport, FeedError> {
    let listener = crate::vm::bind(socket).map_err(io_error("cannot bind", socket))?;
    let (mut stream, _) = listener
        .accept()
        .await
        .map_err(io_error("accept failed on", socket))?;
    let started = Instant::now();
    for _ in 0..repeat {
        stream
            .write_all(&corpus)
            .await
            .map_err(io_error("write failed on", socket))?;
    }
    stream
        .shutdown()
        .await
        .map_err(io_error("shutdown failed on", socket))?;
    let wall = started.elapsed();
    drop(listener);
    let _ = std::fs::remove_file(socket);
    let lines = count_lines(&corpus);
    Ok(FeedReport {
        messages: lines * repeat,
        bytes: corpus.len() as u64 * repeat,
        wall,
    })
}

/// What the consumer measured, from its first byte to end of stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct IngestReport {
    /// Messages decoded, sanitised and published.
    pub messages: u64,
    /// Messages the subscriber received.
    pub delivered: u64,
    /// Messages the subscriber missed because it lagged (the bus keeps the newest).
    pub lagged: u64,
    /// Lines that did not decode.
    pub bad_lines: u64,
    /// Values sanitising had to fix.
    pub fixes: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Wall time.
    pub wall_secs: f64,
    /// CPU time (user + system) of this process over the same span.
    pub cpu_secs: f64,
    /// Peak RSS of this process, KiB.
    pub max_rss_kb: u64,
}

impl IngestReport {
    /// As one JSON object.
    pub fn to_json(&self, consumer: &str) -> String {
        serde_json::json!({
            "consumer": consumer,
            "messages": self.messages,
            "delivered": self.delivered,
            "lagged": self.lagged,
            "bad_lines": self.bad_lines,
            "fixes": self.fixes,
            "bytes": self.bytes,
            "wall_secs": self.wall_secs,
            "cpu_secs": self.cpu_secs,
            "msg_per_sec": self.messages as f64 / self.wall_secs.max(1e-9),
            "msg_per_cpu_sec": self.messages as f64 / self.cpu_secs.max(1e-9),
            "max_rss_kb": self.max_rss_kb,
        })
        .to_string()
    }
}

/// (user + system CPU seconds, peak RSS KiB) of this process.
pub fn process_usage() -> (f64, u64) {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own; RUSAGE_SELF is valid.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return (0.0, 0);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (
        secs(usage.ru_utime) + secs(usage.ru_stime),
        usage.ru_maxrss as u64,
    )
}

/// How much of the ingest [`ingest_pipeline`] runs on each line. The stages below `Full` are
/// floors, not ingests: each one is what every design that reads its input that far must pay,
/// so that the budget's ratio can be set against what is reachable at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum IngestStage {
    /// Split the stream into lines and check each is UTF-8; nothing is parsed.
    Framing,
    /// Framing, then a complete JSON syntax check of each line (serde_json, every value
    /// skipped as it is read, nothing built): the least a host can do and still reject bad JSON.
    Syntax,
    /// Framing and the typed decode ([`GuestStreamDecoder`]), without sanitising or publishing.
    Typed,
    /// Decode, sanitise and publish: the protocol pipeline.
    #[default]
    Full,
}

impl IngestStage {
    /// The `consumer` name in the JSON report.
    pub fn consumer_name(self) -> &'static str {
        match self {
            Self::Framing => "rust-floor-framing",
            Self::Syntax => "rust-floor-syntax",
            Self::Typed => "rust-floor-typed",
            Self::Full => "rust-protocol-pipeline",
        }
    }
}

/// Connect to `socket` and run the host's ingest steps, up to `stage`, on everything it sends
/// until it closes. `Full`: decode ([`GuestStreamDecoder`]) → validate and clamp
/// ([`sanitize`]) → publish on a tokio `broadcast` bus to one subscriber, with storage left out
/// (as the peer was measured). The lower stages count what they accept as `messages` and what
/// they reject as `bad_lines`, and publish nothing.
pub async fn ingest_pipeline(socket: &Path, stage: IngestStage) -> Result<IngestReport, FeedError> {
    let mut stream = UnixStream::connect(socket)
        .await
        .map_err(io_error("cannot connect to", socket))?;
    let vm = Uuid::nil();
    let (bus, mut subscriber) = broadcast::channel::<Arc<(Uuid, GuestMessage)>>(4096);
    let consumer = tokio::spawn(async move {
        let (mut delivered, mut lagged) = (0u64, 0u64);
        loop {
            match subscriber.recv().await {
                Ok(_) => delivered += 1,
                Err(broadcast::error::RecvError::Lagged(n)) => lagged += n,
                Err(broadcast::error::RecvError::Closed) => return (delivered, lagged),
            }
        }
    });
    let limits = Limits::default();
    let mut decoder = GuestStreamDecoder::new(DEFAULT_MAX_LINE);
    let mut lines = LineDecoder::new(DEFAULT_MAX_LINE);
    let mut buffer = vec![0u8; 64 * 1024];
    let mut report = IngestReport::default();
    let mut start: Option<(Instant, f64)> = None;
    loop {
        let n = stream
            .read(&mut buffer)
            .await
            .map_err(io_error("read failed on", socket))?;
        if n == 0 {
            break;
        }
        if start.is_none() {
            start = Some((Instant::now(), process_usage().0));
        }
        report.bytes += n as u64;
        let chunk = &buffer[..n];
        match stage {
            IngestStage::Framing | IngestStage::Syntax => lines.decode(chunk, |frame| {
                let accepted = match frame {
                    Frame::Line(line) => std::str::from_utf8(line).is_ok_and(|text| {
                        stage == IngestStage::Framing
                            || serde_json::from_str::<IgnoredAny>(text).is_ok()
                    }),
                    Frame::Oversize { .. } | Frame::Resynced { .. } => false,
                };
                if accepted {
                    report.messages += 1;
                } else {
                    report.bad_lines += 1;
                }
            }),
            IngestStage::Typed => decoder.decode(chunk, |item| match item {
                Ok(_) => report.messages += 1,
                Err(_) => report.bad_lines += 1,
            }),
            IngestStage::Full => decoder.decode(chunk, |item| match item {
                Ok(mut message) => {
                    report.fixes += u64::from(sanitize(&mut message, &limits).fixes);
                    report.messages += 1;
                    // No receiver only means nobody listens right now; ingest goes on.
                    let _ = bus.send(Arc::new((vm, message)));
                }
                Err(_) => report.bad_lines += 1,
            }),
        }
        // Let the subscriber run between reads, as a runtime with other tasks would.
        tokio::task::yield_now().await;
    }
    drop(bus);
    let (delivered, lagged) = consumer.await.unwrap_or((0, 0));
    let (started, cpu_before) = start.unwrap_or((Instant::now(), process_usage().0));
    let (cpu_after, max_rss_kb) = process_usage();
    report.delivered = delivered;
    report.lagged = lagged;
    report.wall_secs = started.elapsed().as_secs_f64();
    report.cpu_secs = cpu_after - cpu_before;
    report.max_rss_kb = max_rss_kb;
    Ok(report)
}

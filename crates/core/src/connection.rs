//! One task per VM: connect to QEMU's `server=on` socket as a client, say hello, read, decode,
//! ingest; ping; reconnect with backoff.
//!
//! QEMU accepts a connection even when no agent runs in the guest, so an open connection says
//! nothing about the agent: the VM is `online` only after a valid message and goes `offline`
//! after `missed_pings` ping intervals without one, or when the connection closes.
//!
//! Writes go through a separate small task per connection with a bounded queue, so a guest
//! that never reads cannot block this task's reads (or anyone else's commands): its queue
//! fills, pings are dropped and counted, and commands fail with `QueueFull`.

use std::io::ErrorKind;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use infinibay_control::StatusReason;
use infinibay_protocol::message::{Hello, Ping};
use infinibay_protocol::{
    GuestStreamDecoder, HostMessage, PROTOCOL_VERSION, RESYNC, Timestamp, encode_line,
};
use infinibay_store::VmStatus;

use crate::backoff::Backoff;
use crate::commands::fail_all_pending;
use crate::config::secs;
use crate::diag::{DEDUP_PERIOD, Deduper, Occurrence, Ownership, permission_denied_message};
use crate::ingest::{Ingest, TokenBucket, ingest_read};
use crate::registry::{VmCounters, VmEntry};
use crate::shared::Shared;

const TARGET: &str = "infinibay::connection";

static PING_IDS: AtomicU64 = AtomicU64::new(1);

/// First size of a connection's read buffer (two small samples).
const INITIAL_READ: usize = 2 * 1024;

struct SessionEnd {
    useful: bool,
    stopped: bool,
}

/// Run the VM's connection until `stop` (socket removed, or host shutdown).
pub(crate) async fn run(shared: Arc<Shared>, vm: Arc<VmEntry>, stop: CancellationToken) {
    let cc = &shared.config.connection;
    let mut backoff = Backoff::new(secs(cc.backoff_initial_secs), secs(cc.backoff_max_secs));
    let mut dedup = Deduper::new(DEDUP_PERIOD);
    loop {
        if stop.is_cancelled() {
            break;
        }
        let path = vm.socket_path();
        VmCounters::bump(&vm.counters.connect_attempts);
        let connected = tokio::select! {
            r = UnixStream::connect(&path) => r,
            _ = stop.cancelled() => break,
        };
        match connected {
            Ok(stream) => {
                for kind in CONNECT_ERROR_KINDS {
                    if let Some(n) = dedup.clear(kind) {
                        tracing::info!(target: TARGET, vm = vm.id(),
                            "connected after {n} more failed attempts ({kind})");
                    }
                }
                VmCounters::bump(&vm.counters.connections);
                tracing::debug!(target: TARGET, vm = vm.id(), "connected");
                let end = session(&shared, &vm, stream, &stop).await;
                if end.useful {
                    backoff.reset();
                }
                if end.stopped {
                    break;
                }
            }
            Err(e) => log_connect_error(&shared, &mut dedup, &vm, &path, &e),
        }
        let delay = backoff.next_delay();
        tracing::trace!(target: TARGET, vm = vm.id(), ?delay, "reconnecting later");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => break,
        }
    }
    let reason = if shared.shutdown.is_cancelled() {
        StatusReason::Shutdown
    } else {
        StatusReason::SocketRemoved
    };
    vm.set_status(
        VmStatus::Offline,
        reason,
        &shared.queue,
        shared.bus.as_ref(),
    );
    tracing::debug!(target: TARGET, vm = vm.id(), %reason, "connection task ended");
}

const CONNECT_ERROR_KINDS: [&str; 4] = ["eacces", "refused", "enoent", "connect_error"];

fn log_connect_error(
    shared: &Shared,
    dedup: &mut Deduper,
    vm: &VmEntry,
    path: &Path,
    e: &std::io::Error,
) {
    let kind = match e.kind() {
        ErrorKind::PermissionDenied => "eacces",
        ErrorKind::ConnectionRefused => "refused",
        ErrorKind::NotFound => "enoent",
        _ => "connect_error",
    };
    let vm_id = vm.id();
    match (dedup.record(kind), kind) {
        (Occurrence::First, "eacces") => {
            let owner = Ownership::of(path).ok();
            tracing::error!(target: "infinibay::watcher", vm = vm_id,
                "{}", permission_denied_message(path, owner.as_ref(), &shared.identity));
        }
        (Occurrence::First, "refused") => tracing::warn!(target: TARGET, vm = vm_id,
            "socket {} refuses connections (QEMU gone, or another client holds it); retrying with backoff", path.display()),
        (Occurrence::First, "enoent") => tracing::debug!(target: TARGET, vm = vm_id,
            "socket {} vanished; waiting for it to come back", path.display()),
        (Occurrence::First, _) => tracing::warn!(target: TARGET, vm = vm_id,
            "cannot connect to {}: {e}; retrying with backoff", path.display()),
        (Occurrence::Summary(n), _) => tracing::warn!(target: TARGET, vm = vm_id,
            "{n} more failed connection attempts ({kind}): {e}"),
        (Occurrence::Suppressed, _) => {}
    }
}

async fn session(
    shared: &Shared,
    vm: &Arc<VmEntry>,
    stream: UnixStream,
    stop: &CancellationToken,
) -> SessionEnd {
    let config = &shared.config;
    let (mut reader, writer) = stream.into_split();
    let (tx, rx) = mpsc::channel(config.connection.outbound_queue);
    let session_token = stop.child_token();
    shared.tasks.spawn(write_loop(
        writer,
        rx,
        session_token.clone(),
        vm.id().to_owned(),
    ));
    vm.live().outbound = Some(tx.clone());

    let mut decoder = GuestStreamDecoder::new(config.ingest.max_line_bytes);
    let mut ingest = Ingest::new(
        vm.clone(),
        shared.queue.clone(),
        shared.bus.clone(),
        tx.clone(),
        shared.alerts.clone(),
        shared.telemetry.clone(),
        DEDUP_PERIOD,
    );
    let rate = config.ingest.rate_per_sec;
    let mut bucket = TokenBucket::new(config.ingest.burst, rate);
    // The read buffer starts small and grows only for a guest whose reads fill it: an idle or
    // small-sample VM then costs 2 KiB, not `read_buffer_bytes`, times 10,000 VMs.
    let max_read = config.ingest.read_buffer_bytes.max(INITIAL_READ);
    let mut buf = vec![0u8; INITIAL_READ];
    let mut small_reads = 0u32;
    let ping_every = secs(config.connection.ping_interval_secs);
    let silence_limit = ping_every * config.connection.missed_pings;
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_valid = Instant::now();
    let mut paused = false;
    let mut stopped = false;

    // Made once per session, not once per read: every wake-up of 10,000 VMs would otherwise
    // register and unregister two cancellation waiters and build a timer.
    let stop_requested = stop.cancelled();
    tokio::pin!(stop_requested);
    let write_failed = session_token.cancelled();
    tokio::pin!(write_failed);
    let pause = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(pause);

    let reason = loop {
        let wait = bucket.wait_time();
        if wait.is_zero() {
            paused = false;
        } else {
            pause.as_mut().reset(Instant::now() + wait);
            if !paused {
                paused = true;
                ingest.note_pause(rate);
            }
        }
        tokio::select! {
            biased;
            _ = &mut stop_requested => {
                stopped = true;
                break if shared.shutdown.is_cancelled() {
                    StatusReason::Shutdown
                } else {
                    StatusReason::SocketRemoved
                };
            }
            _ = &mut write_failed => break StatusReason::WriteFailed,
            _ = ping.tick() => {
                let silent = vm.live().status == VmStatus::Online && last_valid.elapsed() >= silence_limit;
                if silent {
                    vm.set_status(VmStatus::Offline, StatusReason::MissedPings, &shared.queue, shared.bus.as_ref());
                }
                let ping = HostMessage::Ping(Ping {
                    id: Some(PING_IDS.fetch_add(1, Ordering::Relaxed).to_string()),
                    timestamp: Some(Timestamp::now()),
                });
                if encode_line(&ping).map(|line| tx.try_send(line).is_err()).unwrap_or(true) {
                    VmCounters::bump(&vm.counters.pings_dropped);
                }
            }
            _ = &mut pause, if !wait.is_zero() => {}
            read = reader.read(&mut buf), if wait.is_zero() => match read {
                Ok(0) => break StatusReason::SocketClosed,
                Ok(n) => {
                    let got_valid = ingest_read(&mut decoder, &mut ingest, &mut bucket, vm, &buf[..n]);
                    if n == buf.len() && buf.len() < max_read {
                        buf = vec![0u8; (buf.len() * 2).min(max_read)];
                        small_reads = 0;
                    } else if buf.len() > INITIAL_READ && n < buf.len() / 4 {
                        small_reads += 1;
                        if small_reads >= 64 {
                            buf = vec![0u8; INITIAL_READ];
                            small_reads = 0;
                        }
                    } else {
                        small_reads = 0;
                    }
                    if got_valid {
                        last_valid = Instant::now();
                    }
                }
                Err(e) => {
                    tracing::debug!(target: TARGET, vm = vm.id(), "read failed: {e}");
                    break StatusReason::ReadError;
                }
            },
        }
    };

    vm.live().outbound = None;
    vm.counters.buffered_bytes.store(0, Ordering::Relaxed);
    fail_all_pending(vm);
    session_token.cancel();
    drop(tx);
    vm.set_status(
        VmStatus::Offline,
        reason,
        &shared.queue,
        shared.bus.as_ref(),
    );
    tracing::debug!(target: TARGET, vm = vm.id(), %reason, buffered = decoder.buffered(), "connection closed");
    SessionEnd {
        useful: ingest.proved_useful,
        stopped,
    }
}

async fn write_loop(
    mut writer: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Vec<u8>>,
    token: CancellationToken,
    vm_id: String,
) {
    // 0xFF makes the agent drop any partial line; then `hello` asks it to identify itself.
    let hello = HostMessage::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        timestamp: Some(Timestamp::now()),
    });
    let mut first = vec![RESYNC];
    match encode_line(&hello) {
        Ok(line) => first.extend_from_slice(&line),
        Err(e) => tracing::error!(target: TARGET, vm = %vm_id, "cannot encode hello: {e}"),
    }
    if !write(&mut writer, &first, &token, &vm_id).await {
        return;
    }
    loop {
        let line = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => m,
                None => break,
            },
            _ = token.cancelled() => break,
        };
        if !write(&mut writer, &line, &token, &vm_id).await {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

async fn write(
    writer: &mut OwnedWriteHalf,
    bytes: &[u8],
    token: &CancellationToken,
    vm_id: &str,
) -> bool {
    tokio::select! {
        r = writer.write_all(bytes) => match r {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(target: TARGET, vm = %vm_id, "write failed: {e}");
                token.cancel();
                false
            }
        },
        _ = token.cancelled() => false,
    }
}

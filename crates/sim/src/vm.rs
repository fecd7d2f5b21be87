//! One simulated VM: a QEMU-like `server=on` socket with an agent behind it.
//!
//! Like QEMU's socket chardev, the VM accepts one client at a time (further clients wait in the
//! listen backlog until the first disconnects). While no client is connected, the agent's
//! samples are not queued: only the newest is kept and delivered on the next connect.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use infinibay_protocol::{DEFAULT_MAX_LINE, HostStreamDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::AbortHandle;
use uuid::Uuid;

use crate::Profile;
use crate::agent::{self, Reply};
use crate::payload::{Collectors, FloodPayload, Lines, SampleSource};
use crate::stats::Stats;

/// What the ticker and a VM's tasks share about one VM.
#[derive(Debug)]
pub struct VmSlot {
    /// Index (from `--first-index`).
    pub index: u64,
    /// Stable id.
    pub id: Uuid,
    /// What it sends.
    pub profile: Profile,
    /// Whether it sends as fast as its client reads.
    pub flood: bool,
    /// Woken by the ticker once per interval; a stored permit is a tick not yet consumed.
    pub tick: Notify,
    /// Ticks the ticker has issued to this VM; tells the VM how many it coalesced.
    pub ticks_issued: AtomicU64,
    /// `configure`d sampling period, in ticks.
    every_ticks: AtomicU32,
    /// `configure`d collectors ([`Collectors::to_bits`]).
    collectors: AtomicU8,
}

impl VmSlot {
    /// A VM with default settings (a sample every tick, every collector on).
    pub fn new(index: u64, id: Uuid, profile: Profile, flood: bool) -> Self {
        Self {
            index,
            id,
            profile,
            flood,
            tick: Notify::new(),
            ticks_issued: AtomicU64::new(0),
            every_ticks: AtomicU32::new(1),
            collectors: AtomicU8::new(Collectors::default().to_bits()),
        }
    }

    /// Current (sampling period in ticks, collectors).
    pub fn settings(&self) -> (u32, Collectors) {
        (
            self.every_ticks.load(Relaxed).max(1),
            Collectors::from_bits(self.collectors.load(Relaxed)),
        )
    }
}

/// What every VM task shares.
#[derive(Debug, Clone)]
pub struct VmContext {
    /// Counters.
    pub stats: Arc<Stats>,
    /// Becomes `true` at shutdown.
    pub shutdown: watch::Receiver<bool>,
    /// Simulator start (the guests' uptime grows from it).
    pub started: Instant,
    /// The ticker's interval.
    pub interval: Duration,
    /// What flooding VMs repeat (shared: one copy for all of them).
    pub flood_payload: Option<FloodPayload>,
}

/// Bind `path` as a listening socket, replacing a stale socket file a killed run left behind.
/// Anything at `path` that is not a socket is left alone and reported.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    listener.set_nonblocking(true)?;
    UnixListener::from_std(listener)
}

/// Per-VM sampling state that survives reconnects.
struct Sampler {
    source: SampleSource,
    ticks_seen: u64,
    ticks_toward_sample: u32,
    /// A sample is due but no client was connected to take it.
    pending: bool,
}

impl Sampler {
    /// Account the ticks since the last wake; `true` when a sample is due.
    fn on_wake(&mut self, slot: &VmSlot, stats: &Stats) -> bool {
        let issued = slot.ticks_issued.load(Relaxed);
        let new_ticks = issued.saturating_sub(self.ticks_seen).max(1);
        self.ticks_seen = issued;
        let every = u64::from(slot.settings().0);
        let total = u64::from(self.ticks_toward_sample) + new_ticks;
        let due_samples = total / every;
        self.ticks_toward_sample = (total % every) as u32;
        if due_samples == 0 {
            return false;
        }
        // More than one sample came due since the last wake: only the newest is sent.
        stats
            .ticks_coalesced
            .fetch_add(due_samples - 1 + u64::from(self.pending), Relaxed);
        true
    }
}

/// Run one VM until shutdown: accept a client, serve it until it leaves, accept the next.
pub async fn run_vm(slot: Arc<VmSlot>, listener: UnixListener, mut context: VmContext) {
    let mut sampler = Sampler {
        source: SampleSource::new(slot.index, slot.id, slot.profile),
        ticks_seen: 0,
        ticks_toward_sample: 0,
        pending: false,
    };
    let mut clients = 0u64;
    let mut accept_errors = 0u64;
    loop {
        tokio::select! {
            biased;
            changed = context.shutdown.changed() => {
                if changed.is_err() || *context.shutdown.borrow() {
                    return;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    clients += 1;
                    serve(&slot, stream, &mut context, &mut sampler, clients == 1).await;
                }
                Err(e) => {
                    accept_errors += 1;
                    // EMFILE and friends repeat until something changes: log the first and
                    // then every 100th, and do not spin.
                    if accept_errors == 1 || accept_errors % 100 == 0 {
                        tracing::warn!(target: "infinibay::sim", vm = %slot.id, "accept failed ({accept_errors} times): {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = slot.tick.notified(), if !slot.flood => {
                if sampler.on_wake(&slot, &context.stats) {
                    sampler.pending = true;
                }
            }
        }
    }
}

/// Decrements the connected gauge however `serve` ends.
struct ConnectedGuard<'a>(&'a Stats);

impl Drop for ConnectedGuard<'_> {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Relaxed);
    }
}

async fn write(writer: &mut OwnedWriteHalf, lines: &Lines, stats: &Stats) -> io::Result<()> {
    if lines.count == 0 {
        return Ok(());
    }
    writer.write_all(&lines.bytes).await?;
    stats.wrote(lines.count, lines.bytes.len());
    Ok(())
}

/// Serve one client until it disconnects, a write fails, or shutdown.
async fn serve(
    slot: &Arc<VmSlot>,
    stream: UnixStream,
    context: &mut VmContext,
    sampler: &mut Sampler,
    first_client: bool,
) {
    let stats = context.stats.clone();
    stats.connections.fetch_add(1, Relaxed);
    stats.connected.fetch_add(1, Relaxed);
    let _connected = ConnectedGuard(&stats);

    let (reader_half, mut writer) = stream.into_split();
    // Small and bounded: when the host stops reading our answers, we stop reading its requests.
    let (replies, mut outgoing) = mpsc::channel::<Lines>(16);
    let mut reader = tokio::spawn(read_requests(
        reader_half,
        replies,
        slot.clone(),
        sampler.source.clone(),
        context.interval,
        stats.clone(),
    ));
    let reader_abort = reader.abort_handle();
    let _stop_reader = scopeguard(move || reader_abort.abort());

    if write(&mut writer, &sampler.source.greeting(first_client), &stats)
        .await
        .is_err()
    {
        return;
    }
    if sampler.pending {
        sampler.pending = false;
        if send_sample(slot, &mut writer, context, sampler, Instant::now())
            .await
            .is_err()
        {
            return;
        }
    }
    let mut flooded = 0u64;
    let flood_payload = context.flood_payload.clone().filter(|_| slot.flood);
    loop {
        tokio::select! {
            biased;
            changed = context.shutdown.changed() => {
                if changed.is_err() || *context.shutdown.borrow() {
                    return;
                }
            }
            _ = &mut reader => return,
            Some(lines) = outgoing.recv() => {
                if write(&mut writer, &lines, &stats).await.is_err() {
                    return;
                }
            }
            _ = slot.tick.notified(), if flood_payload.is_none() => {
                let woke = Instant::now();
                if sampler.on_wake(slot, &stats)
                    && send_sample(slot, &mut writer, context, sampler, woke).await.is_err()
                {
                    return;
                }
            }
            _ = std::future::ready(()), if flood_payload.is_some() => {
                if let Some(payload) = &flood_payload {
                    let lines = payload.get(flooded);
                    flooded += 1;
                    if write(&mut writer, lines, &stats).await.is_err() {
                        return;
                    }
                    stats.flood_messages.fetch_add(lines.count, Relaxed);
                }
            }
        }
    }
}

async fn send_sample(
    slot: &VmSlot,
    writer: &mut OwnedWriteHalf,
    context: &VmContext,
    sampler: &mut Sampler,
    woke: Instant,
) -> io::Result<()> {
    let elapsed = context.started.elapsed().as_secs();
    let lines = sampler.source.sample(elapsed, slot.settings().1);
    write(writer, &lines, &context.stats).await?;
    context.stats.samples.fetch_add(1, Relaxed);
    if woke.elapsed() > context.interval / 4 {
        context.stats.samples_late.fetch_add(1, Relaxed);
    }
    Ok(())
}

/// Runs a closure when dropped.
struct ScopeGuard<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for ScopeGuard<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

fn scopeguard<F: FnOnce()>(f: F) -> ScopeGuard<F> {
    ScopeGuard(Some(f))
}

/// Commands running in the simulated agent, by id.
type Running = Arc<Mutex<HashMap<String, AbortHandle>>>;

/// Read the host's lines, answer them through `replies` (awaited: a host that does not read
/// our answers stops being read).
async fn read_requests(
    mut reader: OwnedReadHalf,
    replies: mpsc::Sender<Lines>,
    slot: Arc<VmSlot>,
    mut source: SampleSource,
    interval: Duration,
    stats: Arc<Stats>,
) {
    let profile = slot.profile;
    let mut decoder = HostStreamDecoder::new(DEFAULT_MAX_LINE);
    // Host requests are small; a long one is assembled by the decoder. Thousands of idle
    // connections each hold this buffer, so it stays small.
    let mut buffer = vec![0u8; 2048];
    let running: Running = Arc::default();
    let abort_running = running.clone();
    let _stop_running = scopeguard(move || {
        let mut map = abort_running.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, handle) in map.drain() {
            handle.abort();
        }
    });
    let mut decoded = Vec::new();
    loop {
        let read = match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        decoder.decode(&buffer[..read], |item| decoded.push(item));
        for item in decoded.drain(..) {
            let message = match item {
                Ok(message) => message,
                Err(error) => {
                    stats.bad_lines.fetch_add(1, Relaxed);
                    if let Some(lines) = agent::answer_bad_line(&error, profile) {
                        if replies.send(lines).await.is_err() {
                            return;
                        }
                        stats.requests_answered.fetch_add(1, Relaxed);
                    }
                    continue;
                }
            };
            let reply = agent::answer(message, &mut source, interval, slot.settings());
            let lines = match reply {
                Reply::Nothing => continue,
                Reply::Now(lines) => lines,
                Reply::Configure {
                    every_ticks,
                    collectors,
                    lines,
                } => {
                    if let Some(every) = every_ticks {
                        slot.every_ticks.store(every, Relaxed);
                    }
                    if let Some(collectors) = collectors {
                        slot.collectors.store(collectors.to_bits(), Relaxed);
                    }
                    lines
                }
                Reply::Later {
                    id,
                    after,
                    response,
                } => {
                    start_running(&running, id, after, response, profile, &replies, &stats);
                    continue;
                }
                Reply::Cancel(id) => {
                    let handle = running
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&id);
                    // Cancelling a command that already ended (or never ran) gets no answer.
                    let Some(handle) = handle else { continue };
                    handle.abort();
                    agent::cancelled(id, profile)
                }
            };
            if lines.count == 0 {
                continue;
            }
            if replies.send(lines).await.is_err() {
                return;
            }
            stats.requests_answered.fetch_add(1, Relaxed);
        }
    }
}

fn start_running(
    running: &Running,
    id: String,
    after: Duration,
    response: infinibay_protocol::message::CommandResponse,
    profile: Profile,
    replies: &mpsc::Sender<Lines>,
    stats: &Arc<Stats>,
) {
    // The lock is held across spawn so the task cannot finish before it is registered.
    let mut map = running.lock().unwrap_or_else(PoisonError::into_inner);
    let task_running = running.clone();
    let task_replies = replies.clone();
    let task_stats = stats.clone();
    let task_id = id.clone();
    let handle = tokio::spawn(async move {
        tokio::time::sleep(after).await;
        // Whoever removes the id answers: this task (finished) or a `cancel` (cancelled).
        let finished = task_running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&task_id)
            .is_some();
        if finished
            && task_replies
                .send(crate::payload::response_line(profile, response))
                .await
                .is_ok()
        {
            task_stats.requests_answered.fetch_add(1, Relaxed);
        }
    });
    if let Some(previous) = map.insert(id, handle.abort_handle()) {
        // A second command with a running command's id replaces it.
        previous.abort();
    }
}

//! The Windows channel: the port to the host (vioser's named port or a COM port), opened for
//! overlapped I/O and driven by tokio's completion-port reactor.
//!
//! tokio has no type for an arbitrary overlapped handle, but its named-pipe client is exactly
//! that: overlapped `ReadFile`/`WriteFile` on the handle it is given, nothing pipe-specific
//! (tokio-serial drives COM ports the same way). When the port fails or the host goes away
//! (an error, or a read that completes with 0 bytes) the handle is closed and the port is
//! looked for and opened again after a growing delay: 1 s, doubling up to 30 s while it keeps
//! failing, back to 1 s once bytes arrived. Nothing else wakes the agent: never a busy loop.

use std::os::windows::io::{IntoRawHandle, OwnedHandle};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::windows::named_pipe::NamedPipeClient;

use super::port::{self, PortSource};
use crate::channel::{ChannelError, Event, HOST_PROBE_PERIOD, PortHints};

/// Longest wait between two attempts to open the port.
const MAX_REOPEN_DELAY: Duration = Duration::from_secs(30);

/// Most bytes offered to one overlapped write. The reactor copies what it writes into a
/// buffer of its own until the write completes; a 1 MiB response offered whole would be held
/// twice.
const MAX_WRITE: usize = 64 * 1024;

/// The channel's OS part.
#[derive(Debug)]
pub enum Inner {
    /// The port to the host.
    Port(Port),
}

/// The port, and when to try it again if it is closed.
#[derive(Debug)]
pub struct Port {
    hints: PortHints,
    open: Option<NamedPipeClient>,
    /// The path last opened (or tried), for logs.
    path: Option<PathBuf>,
    next_attempt: tokio::time::Instant,
    delay: Duration,
    /// Failures since the last success, for the log level (warn once, then debug).
    failures: u32,
    /// Bytes arrived on the current handle: the port works, the next reopen may be quick.
    received_on_this_handle: bool,
}

/// The port is looked for and opened in `next`, so a service started before the driver is
/// ready (or with the host away) keeps trying instead of exiting.
pub fn open_port(hints: &PortHints) -> Result<Inner, ChannelError> {
    Ok(Inner::Port(Port {
        hints: hints.clone(),
        open: None,
        path: None,
        next_attempt: tokio::time::Instant::now(),
        delay: HOST_PROBE_PERIOD,
        failures: 0,
        received_on_this_handle: false,
    }))
}

/// `--listen-unix` exists for Linux development and tests only.
pub fn listen_unix(path: &Path) -> Result<Inner, ChannelError> {
    Err(ChannelError::Io {
        what: format!(
            "--listen-unix {}: not available on Windows (the agent talks to a port: --device)",
            path.display()
        ),
        source: std::io::ErrorKind::Unsupported.into(),
    })
}

impl Inner {
    /// Is the port open?
    pub fn is_connected(&self) -> bool {
        let Self::Port(p) = self;
        p.open.is_some()
    }

    /// QEMU keeps a virtio-serial port's byte stream across host reconnects.
    pub fn stream_survives_reconnect(&self) -> bool {
        true
    }

    /// What the channel is, for logs.
    pub fn describe(&self) -> String {
        let Self::Port(p) = self;
        match &p.path {
            Some(path) => format!("port {}", path.display()),
            None => "port (not found yet)".into(),
        }
    }

    /// The next event (see `Channel::next`).
    pub async fn next(&mut self, buffer: &mut [u8], pending: Option<&[u8]>) -> Event {
        let Self::Port(p) = self;
        p.next(buffer, pending).await
    }
}

impl Port {
    async fn next(&mut self, buffer: &mut [u8], pending: Option<&[u8]>) -> Event {
        loop {
            let Some(client) = &self.open else {
                // The deadline lives in self, so a select! that drops this future every
                // second still tries on time.
                tokio::time::sleep_until(self.next_attempt).await;
                match self.try_open() {
                    Ok(client) => {
                        self.open = Some(client);
                        self.received_on_this_handle = false;
                        return Event::Connected;
                    }
                    Err(()) => continue,
                }
            };
            let outcome = tokio::select! {
                ready = client.readable() => match ready {
                    Ok(()) => match client.try_read(buffer) {
                        Ok(0) => Err("the port reported end of stream".to_string()),
                        Ok(n) => Ok(Some(Event::Received(n))),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::Interrupted => Ok(None),
                        Err(e) => Err(format!("reading the port failed: {e}")),
                    },
                    Err(e) => Err(format!("waiting on the port failed: {e}")),
                },
                ready = client.writable(), if pending.is_some() => match ready {
                    Ok(()) => {
                        let chunk = pending.unwrap_or_default();
                        match client.try_write(&chunk[..chunk.len().min(MAX_WRITE)]) {
                        Ok(n) => Ok(Some(Event::Wrote(n))),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::Interrupted => Ok(None),
                        Err(e) => Err(format!("writing the port failed: {e}")),
                        }
                    }
                    Err(e) => Err(format!("waiting on the port failed: {e}")),
                },
            };
            match outcome {
                Ok(Some(event)) => {
                    if matches!(event, Event::Received(_)) && !self.received_on_this_handle {
                        self.received_on_this_handle = true;
                        self.failures = 0;
                        self.delay = HOST_PROBE_PERIOD;
                    }
                    return event;
                }
                Ok(None) => continue,
                Err(why) => {
                    self.open = None;
                    if !self.received_on_this_handle {
                        self.delay = (self.delay * 2).min(MAX_REOPEN_DELAY);
                    }
                    self.next_attempt = tokio::time::Instant::now() + self.delay;
                    tracing::info!(
                        reason = %why,
                        retry_in_s = self.delay.as_secs(),
                        "port closed; opening it again later"
                    );
                    return Event::Disconnected;
                }
            }
        }
    }

    /// Find and open the port once; on failure, schedule the next attempt.
    fn try_open(&mut self) -> Result<NamedPipeClient, ()> {
        let attempt = port::discover(&self.hints).and_then(|(path, source)| {
            self.path = Some(path.clone());
            port::open_port(&path).map(|handle| (path, source, handle))
        });
        let failed = |this: &mut Self, error: &dyn std::fmt::Display| {
            this.failures += 1;
            if this.failures == 1 {
                tracing::warn!(%error, "no port to the host yet; retrying (repeats are logged at debug level)");
            } else {
                tracing::debug!(%error, failures = this.failures, "no port to the host yet");
            }
            this.next_attempt = tokio::time::Instant::now() + this.delay;
            this.delay = (this.delay * 2).min(MAX_REOPEN_DELAY);
        };
        match attempt {
            Ok((path, source, handle)) => match register(handle) {
                Ok(client) => {
                    log_opened(&path, source);
                    Ok(client)
                }
                Err(error) => {
                    failed(self, &error);
                    Err(())
                }
            },
            Err(error) => {
                failed(self, &error);
                Err(())
            }
        }
    }
}

fn log_opened(path: &Path, source: PortSource) {
    tracing::info!(port = %path.display(), from = source.describe(), "port opened");
}

/// Hand the overlapped handle to tokio's reactor.
fn register(handle: OwnedHandle) -> std::io::Result<NamedPipeClient> {
    let raw = handle.into_raw_handle();
    // SAFETY: `raw` is an open overlapped handle whose ownership passes to the client (which
    // closes it on drop). On error tokio drops it, closing the handle.
    unsafe { NamedPipeClient::from_raw_handle(raw) }
}

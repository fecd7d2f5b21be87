//! The Linux channel: a virtio-serial port (an `AsyncFd` on a non-blocking fd), or a UNIX
//! socket the agent listens on and that behaves like QEMU's `server=on` chardev.
//!
//! While no host is there, nothing wakes the agent except a probe once a second (virtio) or
//! the arrival of a client (UNIX socket): never a busy loop.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::{UnixListener, UnixStream};

use super::port;
use crate::channel::PortHints;
use crate::channel::{ChannelError, Event, HOST_PROBE_PERIOD};

/// The channel's OS part.
#[derive(Debug)]
pub enum Inner {
    /// A virtio-serial port.
    Virtio(Virtio),
    /// A listening UNIX socket.
    Unix(UnixServer),
}

/// Find the port (see `port::discover`) and open it (once: a second open would fail with
/// EBUSY).
pub fn open_port(hints: &PortHints) -> Result<Inner, ChannelError> {
    let (path, source) = port::discover(hints, Path::new("/sys"), Path::new("/dev"))?;
    tracing::info!(port = %path.display(), from = source.describe(), "using port");
    let fd = port::open_port(&path)?;
    Ok(Inner::Virtio(Virtio {
        path,
        state: VirtioState::Absent(fd),
        next_probe: tokio::time::Instant::now(),
    }))
}

/// Bind a UNIX socket and wait for hosts on it, one at a time.
pub fn listen_unix(path: &Path) -> Result<Inner, ChannelError> {
    // A socket file left by an earlier run would make bind fail; only a socket is removed.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        }
    }
    // Bound and listening under a temporary name, then renamed: the socket path appears
    // only once connections to it succeed, so a host that waits for the file never races
    // the listen() call.
    let io_error = |what: String| move |source| ChannelError::Io { what, source };
    let staging = path.with_extension("binding");
    let _ = std::fs::remove_file(&staging);
    let std_listener = std::os::unix::net::UnixListener::bind(&staging)
        .map_err(io_error(format!("cannot listen on {}", staging.display())))?;
    std::fs::rename(&staging, path).map_err(io_error(format!(
        "cannot move the socket to {}",
        path.display()
    )))?;
    std_listener
        .set_nonblocking(true)
        .map_err(io_error("cannot make the socket non-blocking".into()))?;
    let listener = UnixListener::from_std(std_listener)
        .map_err(io_error("cannot register the socket".into()))?;
    Ok(Inner::Unix(UnixServer {
        path: path.to_owned(),
        listener,
        client: None,
    }))
}

impl Inner {
    /// Is a host connected?
    pub fn is_connected(&self) -> bool {
        match self {
            Self::Virtio(v) => matches!(v.state, VirtioState::Present(_)),
            Self::Unix(u) => u.client.is_some(),
        }
    }

    /// True for virtio-serial (QEMU delivers what the guest wrote during the gap), false for
    /// a UNIX socket (a new client is a new stream).
    pub fn stream_survives_reconnect(&self) -> bool {
        matches!(self, Self::Virtio(_))
    }

    /// What the channel is, for logs.
    pub fn describe(&self) -> String {
        match self {
            Self::Virtio(v) => format!("virtio-serial port {}", v.path.display()),
            Self::Unix(u) => format!("UNIX socket {}", u.path.display()),
        }
    }

    /// The next event (see `Channel::next`).
    pub async fn next(&mut self, buffer: &mut [u8], pending: Option<&[u8]>) -> Event {
        match self {
            Self::Virtio(v) => v.next(buffer, pending).await,
            Self::Unix(u) => u.next(buffer, pending).await,
        }
    }
}

#[derive(Debug)]
enum VirtioState {
    /// No host: the fd is not registered with the runtime at all, so a port that keeps
    /// reporting POLLHUP cannot wake the agent.
    Absent(OwnedFd),
    /// A host is connected.
    Present(AsyncFd<OwnedFd>),
    /// Transitional, never observed outside `next`.
    Moving,
}

/// A virtio-serial port and whether a host is on its other end.
#[derive(Debug)]
pub struct Virtio {
    path: PathBuf,
    state: VirtioState,
    next_probe: tokio::time::Instant,
}

impl Virtio {
    async fn next(&mut self, buffer: &mut [u8], pending: Option<&[u8]>) -> Event {
        loop {
            match &self.state {
                VirtioState::Absent(_) | VirtioState::Moving => {
                    // The deadline lives in self, so a select! that drops this future every
                    // second still probes on time.
                    tokio::time::sleep_until(self.next_probe).await;
                    self.next_probe = tokio::time::Instant::now() + HOST_PROBE_PERIOD;
                    let VirtioState::Absent(fd) =
                        std::mem::replace(&mut self.state, VirtioState::Moving)
                    else {
                        continue;
                    };
                    if !port::host_connected(&fd) {
                        self.state = VirtioState::Absent(fd);
                        continue;
                    }
                    // SAFETY: OwnedFd's fd stays open and the same until the AsyncFd is
                    // dropped or turned back into the OwnedFd.
                    let registered = unsafe {
                        AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE)
                    };
                    match registered {
                        Ok(registered) => {
                            self.state = VirtioState::Present(registered);
                            return Event::Connected;
                        }
                        Err(failed) => {
                            // Not expected for a character device; retry on the next probe.
                            let (fd, error) = failed.into_parts();
                            tracing::error!(%error, "cannot register the port with the runtime");
                            self.state = VirtioState::Absent(fd);
                            continue;
                        }
                    }
                }
                VirtioState::Present(fd) => {
                    match Self::io_once(fd, buffer, pending).await {
                        Some(event) => return event,
                        None => {
                            // Readiness claimed "closed" but the port says otherwise, or the
                            // host is gone: either way drop the registration (tokio keeps
                            // closed readiness for ever, which would spin) and re-probe.
                            let VirtioState::Present(registered) =
                                std::mem::replace(&mut self.state, VirtioState::Moving)
                            else {
                                continue;
                            };
                            let fd = registered.into_inner();
                            let connected = port::host_connected(&fd);
                            self.state = VirtioState::Absent(fd);
                            if connected {
                                self.next_probe = tokio::time::Instant::now();
                            } else {
                                self.next_probe = tokio::time::Instant::now() + HOST_PROBE_PERIOD;
                                return Event::Disconnected;
                            }
                        }
                    }
                }
            }
        }
    }

    /// One read or write. `None` means "the registration must be renewed" (see caller).
    async fn io_once(
        fd: &AsyncFd<OwnedFd>,
        buffer: &mut [u8],
        pending: Option<&[u8]>,
    ) -> Option<Event> {
        loop {
            tokio::select! {
                guard = fd.readable() => {
                    let mut guard = guard.ok()?;
                    let closed = guard.ready().is_read_closed();
                    match guard.try_io(|inner| port::read_fd(inner.get_ref().as_raw_fd(), buffer)) {
                        Ok(Ok(0)) => return None,
                        Ok(Ok(n)) => return Some(Event::Received(n)),
                        Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "reading the port failed");
                            return None;
                        }
                        Err(_would_block) if closed => return None,
                        Err(_would_block) => continue,
                    }
                }
                guard = fd.writable(), if pending.is_some() => {
                    let mut guard = guard.ok()?;
                    let closed = guard.ready().is_write_closed();
                    let chunk = pending.unwrap_or_default();
                    match guard.try_io(|inner| port::write_fd(inner.get_ref().as_raw_fd(), chunk)) {
                        Ok(Ok(n)) => return Some(Event::Wrote(n)),
                        Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "writing the port failed");
                            return None;
                        }
                        Err(_would_block) if closed => return None,
                        Err(_would_block) => continue,
                    }
                }
            }
        }
    }
}

/// A UNIX socket served one client at a time.
#[derive(Debug)]
pub struct UnixServer {
    path: PathBuf,
    listener: UnixListener,
    client: Option<UnixStream>,
}

impl UnixServer {
    async fn next(&mut self, buffer: &mut [u8], pending: Option<&[u8]>) -> Event {
        loop {
            let Some(client) = &self.client else {
                // Like QEMU's server=on chardev: one client at a time; others wait in the
                // listen backlog until this one leaves.
                match self.listener.accept().await {
                    Ok((stream, _)) => {
                        self.client = Some(stream);
                        return Event::Connected;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            };
            let outcome = tokio::select! {
                ready = client.readable() => match ready {
                    Ok(()) => match client.try_read(buffer) {
                        Ok(0) => Err(()),
                        Ok(n) => Ok(Some(Event::Received(n))),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::Interrupted => Ok(None),
                        Err(_) => Err(()),
                    },
                    Err(_) => Err(()),
                },
                ready = client.writable(), if pending.is_some() => match ready {
                    Ok(()) => match client.try_write(pending.unwrap_or_default()) {
                        Ok(n) => Ok(Some(Event::Wrote(n))),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::Interrupted => Ok(None),
                        Err(_) => Err(()),
                    },
                    Err(_) => Err(()),
                },
            };
            match outcome {
                Ok(Some(event)) => return event,
                Ok(None) => continue,
                Err(()) => {
                    self.client = None;
                    return Event::Disconnected;
                }
            }
        }
    }
}

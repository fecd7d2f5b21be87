//! The byte channel to the host: the OS's port to the host (a virtio-serial port; on Windows
//! also a COM port), or, for development and tests, a UNIX socket the agent listens on and
//! that behaves like QEMU's `server=on` chardev. The OS part is `platform::channel`.
//!
//! Both look the same from above: the connection comes and goes, and [`Channel::next`]
//! yields one event at a time — connected, disconnected, bytes received, bytes written.
//! While no host is there, nothing wakes the agent except a probe once a second or the
//! arrival of a client: never a busy loop.

use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::platform::channel::{self as os, Inner};
use crate::platform::port;

/// How often a port is probed for a host while none is connected.
pub const HOST_PROBE_PERIOD: Duration = Duration::from_secs(1);

/// Bytes read per wake-up.
const READ_BUFFER: usize = 16 * 1024;

/// Where the operator may name the port; each wins over the next, and all over the OS's own
/// discovery.
#[derive(Debug, Clone, Default)]
pub struct PortHints {
    /// `--device`.
    pub flag: Option<PathBuf>,
    /// `INFINISERVICE_DEVICE`.
    pub env: Option<String>,
    /// `virtio_serial_path`.
    pub config: Option<String>,
}

/// Which hint named the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    /// `--device`.
    Flag,
    /// `INFINISERVICE_DEVICE`.
    Env,
    /// `virtio_serial_path` in the config.
    Config,
}

impl Hint {
    /// How to say it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Flag => "--device",
            Self::Env => "INFINISERVICE_DEVICE",
            Self::Config => "config virtio_serial_path",
        }
    }
}

impl PortHints {
    /// The first hint given, and which one it was. Explicit paths are taken as given, even if
    /// they do not exist yet, so that an error names what the operator asked for.
    pub fn explicit(&self) -> Option<(PathBuf, Hint)> {
        if let Some(p) = &self.flag {
            return Some((p.clone(), Hint::Flag));
        }
        if let Some(p) = self.env.as_deref().filter(|p| !p.trim().is_empty()) {
            return Some((PathBuf::from(p), Hint::Env));
        }
        self.config
            .as_deref()
            .filter(|p| !p.trim().is_empty())
            .map(|p| (PathBuf::from(p), Hint::Config))
    }
}

/// The channel could not be set up.
#[derive(Debug, Error)]
pub enum ChannelError {
    /// The port could not be found or opened.
    #[error(transparent)]
    Port(#[from] port::PortError),
    /// Registering with the runtime, or binding the socket, failed.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// One thing that happened on the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A host is now connected.
    Connected,
    /// The host went away.
    Disconnected,
    /// This many bytes arrived; read them with [`Channel::received`].
    Received(usize),
    /// This many bytes of the offered chunk were written.
    Wrote(usize),
}

/// The channel to the host.
#[derive(Debug)]
pub struct Channel {
    inner: Inner,
    buffer: Box<[u8]>,
}

impl Channel {
    fn with(inner: Inner) -> Self {
        Self {
            inner,
            buffer: vec![0; READ_BUFFER].into_boxed_slice(),
        }
    }

    /// Find the port to the host (flag, environment, config, then the OS's own discovery)
    /// and open it.
    pub fn open_port(hints: &PortHints) -> Result<Self, ChannelError> {
        os::open_port(hints).map(Self::with)
    }

    /// Bind a UNIX socket and wait for hosts on it, one at a time.
    pub fn listen_unix(path: &Path) -> Result<Self, ChannelError> {
        os::listen_unix(path).map(Self::with)
    }

    /// Is a host connected?
    pub fn is_connected(&self) -> bool {
        self.inner.is_connected()
    }

    /// Does the byte stream survive a host reconnect? True for virtio-serial (QEMU delivers
    /// what the guest wrote during the gap), false for a UNIX socket (a new client is a new
    /// stream). Decides what happens to a partly written line; see the outbox.
    pub fn stream_survives_reconnect(&self) -> bool {
        self.inner.stream_survives_reconnect()
    }

    /// What the channel is, for logs.
    pub fn describe(&self) -> String {
        self.inner.describe()
    }

    /// The bytes of the last [`Event::Received`].
    pub fn received(&self, n: usize) -> &[u8] {
        &self.buffer[..n.min(self.buffer.len())]
    }

    /// Wait for the next event; `pending` is what to write, if anything. Cancel-safe: no
    /// bytes are read or written unless the event reporting them is returned.
    pub async fn next(&mut self, pending: Option<&[u8]>) -> Event {
        self.inner.next(&mut self.buffer, pending).await
    }
}

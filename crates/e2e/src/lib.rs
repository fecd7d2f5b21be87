//! End-to-end harness: real QEMU guests running `infiniservice` and `qemu-ga`.
//!
//! The path of a test:
//!
//! - [`image`]: build the agent with cargo, then `e2e/build-guest.sh` turns it into a bootable
//!   guest (Debian's cloud kernel + a busybox initramfs holding both agents). Cached.
//! - [`guest`]: boot that image under `qemu-system-x86_64 -accel tcg` with two virtio-serial
//!   ports whose host ends are UNIX sockets; stop it with QMP `quit` or kill it.
//! - [`qga`]: a client for qemu-ga's JSON protocol on one port (the control channel the tests
//!   trust, and the peer the benchmark compares us with).
//! - [`agent`]: a client for our protocol on the other port, for tests without the host.
//! - [`host`]: run the real `infinibay serve` against a socket directory.
//! - [`wine`]: the Windows agent under wine64, its COM port bridged into a socket directory.
//!
//! **Invariant:** no QEMU (or host) process started here outlives the process that started
//! it, however that process ends: children get `PR_SET_PDEATHSIG(SIGKILL)` from a thread that
//! lives as long as the process, `Drop` kills, and an `atexit` hook kills what statics still
//! hold. See `docs/e2e.md`.
#![deny(missing_docs)]

pub mod agent;
pub mod fixture;
pub mod guest;
pub mod host;
pub mod image;
mod lines;
pub mod qga;
mod qmp;
mod spawn;
pub mod store;
pub mod wine;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

pub use agent::AgentClient;
pub use guest::{Guest, GuestOptions, Screen};
pub use host::{HostOptions, HostProcess, HttpResponse, host_binary, http_request};
pub use image::GuestImage;
pub use qga::{ExecOutput, QgaClient};
pub use store::StoreView;

/// Everything that can go wrong while driving a guest.
#[derive(Debug, Error)]
pub enum Error {
    /// An I/O operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: io::Error,
    },
    /// Nothing arrived in time.
    #[error("{what}: timed out after {after:?}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long we waited.
        after: Duration,
    },
    /// The peer closed the connection.
    #[error("{what}: connection closed by the peer")]
    Closed {
        /// Which connection.
        what: String,
    },
    /// A build step (cargo, build-guest.sh) failed.
    #[error("{step} failed ({status}); output:\n{output}")]
    Build {
        /// The command.
        step: String,
        /// Its exit status.
        status: String,
        /// The tail of its output.
        output: String,
    },
    /// QEMU exited while we still needed it.
    #[error("qemu exited ({status}); stderr:\n{stderr}\nconsole ({console}):\n{console_tail}")]
    QemuExited {
        /// Its exit status.
        status: String,
        /// What it wrote to stderr.
        stderr: String,
        /// The console log file.
        console: PathBuf,
        /// The last lines of the console.
        console_tail: String,
    },
    /// qemu-ga or QMP answered with an error object.
    #[error("{command}: {class}: {desc}")]
    Remote {
        /// The command sent.
        command: String,
        /// Error class.
        class: String,
        /// Error description.
        desc: String,
    },
    /// The peer sent something this client cannot use.
    #[error("{what}: {detail}")]
    Protocol {
        /// Which exchange.
        what: String,
        /// What was wrong.
        detail: String,
    },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    pub(crate) fn protocol(what: impl Into<String>, detail: impl Into<String>) -> Error {
        Error::Protocol {
            what: what.into(),
            detail: detail.into(),
        }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! libvirt for the Infinibay host, over the `virt` crate (libvirt's own bindings).
//!
//! - [`Libvirt::start`] connects to a URI (default [`DEFAULT_URI`]) on a supervisor thread and
//!   keeps reconnecting with backoff when libvirtd goes away; [`Libvirt::status`] says whether
//!   it is connected and, if not, why. [`probe`] is the one-shot check for `infinibay doctor`.
//! - Events arrive on the bounded [`Events`] receiver: a [`Event::Snapshot`] of every domain
//!   on each (re)connect, then one [`Event::Lifecycle`] per libvirt lifecycle event, each with
//!   the domain's UUID and resulting [`PowerState`]; [`Event::Disconnected`] when the
//!   connection drops. A consumer that falls behind gets a fresh snapshot instead of a gap.
//! - Operations ([`Libvirt::create_vm`], power actions, [`Libvirt::delete_vm`],
//!   [`Libvirt::attach_agent_channel`], listing) are `async`, run the blocking libvirt calls on
//!   tokio's blocking pool and are each bounded by [`LibvirtConfig::call_timeout`]: an
//!   operation ends with a typed [`Error`], never a hang.
//! - [`agent_channel_xml`] is the `<channel>` that binds a domain's `org.infinibay.agent` port at
//!   `<socket_dir>/vm-<uuid>.sock`, the path the host discovers.
//!
//! **Invariants:** a VM's id is its libvirt domain UUID, the same UUID as in its socket name;
//! every domain this crate creates has the agent channel, qemu-ga's channel and VNC on a UNIX
//! socket in the socket directory; nothing here blocks libvirt's event thread or a tokio worker.
//! See `docs/libvirt.md`.
#![deny(missing_docs)]

mod error;
mod events;
mod ops;
mod state;
mod supervisor;
mod xml;

use std::path::{Path, PathBuf};
use std::time::Duration;

use uuid::Uuid;

pub use error::{Error, Operation, Result};
pub use ops::{AttachOutcome, DeleteReport, ProbeReport, probe};
pub use state::{LifecycleKind, PowerState};
pub use supervisor::{ConnectionStatus, Libvirt};
pub use xml::{AGENT_CHANNEL_NAME, QEMU_GA_CHANNEL_NAME};

/// The URI used when none is configured: the system QEMU driver.
pub const DEFAULT_URI: &str = "qemu:///system";

/// The host side of a VM's agent channel: `<socket_dir>/vm-<uuid>.sock`.
pub fn agent_socket_path(socket_dir: &Path, uuid: Uuid) -> PathBuf {
    socket_dir.join(format!("vm-{uuid}.sock"))
}

/// A VM's VNC server socket: `<socket_dir>/vnc-<uuid>.sock`.
pub fn vnc_socket_path(socket_dir: &Path, uuid: Uuid) -> PathBuf {
    socket_dir.join(format!("vnc-{uuid}.sock"))
}

/// The qcow2 overlay `createVm` makes for a VM: `<image_dir>/vm-<uuid>.qcow2`.
pub fn overlay_path(image_dir: &Path, uuid: Uuid) -> PathBuf {
    image_dir.join(format!("vm-{uuid}.qcow2"))
}

/// The `<channel>` XML that binds the `org.infinibay.agent` port of VM `uuid` at
/// `<socket_dir>/vm-<uuid>.sock` (for `infinibay channel-xml <uuid>`: add it to an existing
/// domain with `virsh edit` or `virsh attach-device`). Fails only for a socket directory that is
/// not UTF-8.
pub fn agent_channel_xml(socket_dir: &Path, uuid: Uuid) -> Result<String> {
    xml::agent_channel_xml(&agent_socket_path(socket_dir, uuid))
}

/// How the crate connects and where it puts files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibvirtConfig {
    /// The connection URI (default [`DEFAULT_URI`]).
    pub uri: String,
    /// The host's socket directory: agent channels and VNC sockets of created VMs go there.
    pub socket_dir: PathBuf,
    /// The host's image directory: base images are read from it, overlays written to it.
    pub image_dir: PathBuf,
    /// Upper bound for one operation (libvirt calls block; a hung daemon must not hang a
    /// caller). Default 30 s.
    pub call_timeout: Duration,
    /// First wait before reconnecting; doubles per failed attempt. Default 500 ms.
    pub reconnect_initial: Duration,
    /// Longest wait between reconnect attempts. Default 30 s.
    pub reconnect_max: Duration,
    /// Bound of the event channel (and of the queue behind libvirt's callbacks). Default 1024.
    pub event_capacity: usize,
}

impl LibvirtConfig {
    /// Defaults for everything but the directories.
    pub fn new(uri: impl Into<String>, socket_dir: PathBuf, image_dir: PathBuf) -> Self {
        Self {
            uri: uri.into(),
            socket_dir,
            image_dir,
            call_timeout: Duration::from_secs(30),
            reconnect_initial: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            event_capacity: 1024,
        }
    }
}

/// A domain as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInfo {
    /// The domain UUID: the VM's id.
    pub uuid: Uuid,
    /// libvirt's domain name.
    pub name: String,
    /// Its power state now.
    pub power_state: PowerState,
    /// Whether it has a persistent definition (transient domains vanish when stopped).
    pub persistent: bool,
    /// Host side of its `org.infinibay.agent` channel, when it has one on a UNIX socket.
    pub agent_socket: Option<PathBuf>,
    /// Its VNC server's UNIX socket, when VNC listens on one.
    pub vnc_socket: Option<PathBuf>,
}

/// What the event channel carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Every domain and its state, taken after lifecycle events were (re)registered: sent on
    /// each connect and reconnect, and after events had to be dropped. A domain the consumer
    /// knows but that is missing here no longer exists in libvirt.
    Snapshot {
        /// Why this snapshot was taken.
        cause: SnapshotCause,
        /// All domains, active and inactive.
        domains: Vec<DomainInfo>,
    },
    /// One domain lifecycle change.
    Lifecycle(LifecycleEvent),
    /// The connection was lost; the crate is reconnecting (a `Snapshot` follows when it is
    /// back). Power states are unknown meanwhile.
    Disconnected {
        /// Why (libvirt's close reason or error).
        reason: String,
    },
}

/// Why a [`Event::Snapshot`] was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotCause {
    /// The first connection.
    Connected,
    /// Connected again after [`Event::Disconnected`].
    Reconnected,
    /// The consumer or the callback queue fell behind and events were dropped; this snapshot
    /// replaces them.
    EventsDropped,
}

/// A domain lifecycle event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleEvent {
    /// The domain (the VM's id).
    pub uuid: Uuid,
    /// Its libvirt name.
    pub name: String,
    /// What happened.
    pub kind: LifecycleKind,
    /// libvirt's detail in words ("destroyed", "booted", "guest finished shutting down"...).
    pub detail: &'static str,
    /// The power state after the event (for an undefined domain that is gone: `Shutoff`).
    pub power_state: PowerState,
}

/// The receiving end of the event channel.
pub type Events = tokio::sync::mpsc::Receiver<Event>;

/// Which accelerator a new domain uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accel {
    /// KVM when libvirt offers it for x86_64 guests, else TCG.
    #[default]
    Auto,
    /// KVM; refused when libvirt does not offer it.
    Kvm,
    /// TCG (`type='qemu'`): emulation, works everywhere, slow.
    Tcg,
}

/// Direct kernel boot (for tests and appliance-style VMs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelBoot {
    /// Absolute path of the kernel image (readable by QEMU's user).
    pub kernel: PathBuf,
    /// Absolute path of the initrd.
    pub initrd: PathBuf,
    /// Kernel command line.
    pub cmdline: String,
}

/// What `createVm` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// The UUID to give the domain; `None`: a new random one.
    pub uuid: Option<Uuid>,
    /// Domain name (unique in libvirt; 1–128 characters, no `/`, no control characters).
    pub name: String,
    /// RAM in MiB (at least 16).
    pub memory_mib: u64,
    /// Virtual CPUs (1–256).
    pub vcpus: u32,
    /// A disk: a qcow2 overlay over this base image, which must be a qcow2 file inside the
    /// image directory (a file name there, or an absolute path under it).
    pub base_image: Option<PathBuf>,
    /// Boot this kernel + initrd instead of the disk. At least one of `base_image` and
    /// `kernel` is required.
    pub kernel: Option<KernelBoot>,
    /// Accelerator.
    pub accel: Accel,
    /// Write the serial console to this file (else a pty, for `virsh console`).
    pub serial_log: Option<PathBuf>,
    /// Start it right after defining it.
    pub start: bool,
}

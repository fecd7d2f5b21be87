//! The virtio-serial port: finding it, opening it once, and telling whether a host is there.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::channel::{Hint, PortHints};

/// The port name the host's QEMU config gives the agent's channel.
pub const PORT_NAME: &str = "org.infinibay.agent";

/// Where udev links named ports.
pub const DEFAULT_DEVICE: &str = "/dev/virtio-ports/org.infinibay.agent";

/// Why no port could be used.
#[derive(Debug, Error)]
pub enum PortError {
    /// Nothing found by any discovery step.
    #[error(
        "no virtio-serial port named `{PORT_NAME}`: not given by --device, INFINISERVICE_DEVICE or \
         virtio_serial_path, {DEFAULT_DEVICE} does not exist, and no /sys/class/virtio-ports/*/name \
         says `{PORT_NAME}` (is the VM's virtserialport configured, and virtio_console loaded?)"
    )]
    NotFound,
    /// Opening failed.
    #[error("cannot open {path}: {source}{hint}")]
    Open {
        /// The device.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
        /// What it probably means.
        hint: &'static str,
    },
}

/// A port as /sys lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysPort {
    /// Kernel device name (`vport1p1`).
    pub device: String,
    /// The name the host gave it (`org.infinibay.agent`), when set.
    pub name: Option<String>,
    /// `/dev/<device>`.
    pub dev_path: PathBuf,
}

/// Every port in `<sys>/class/virtio-ports`, sorted by device name.
pub fn list_sys_ports(sys: &Path, dev: &Path) -> Vec<SysPort> {
    let Ok(entries) = std::fs::read_dir(sys.join("class/virtio-ports")) else {
        return Vec::new();
    };
    let mut ports: Vec<SysPort> = entries
        .flatten()
        .map(|entry| {
            let device = entry.file_name().to_string_lossy().into_owned();
            let name = std::fs::read_to_string(entry.path().join("name"))
                .ok()
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty());
            SysPort {
                dev_path: dev.join(&device),
                device,
                name,
            }
        })
        .collect();
    ports.sort_by(|a, b| a.device.cmp(&b.device));
    ports
}

/// Where a port path came from, for logs and `--diagnose`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortSource {
    /// `--device`, `INFINISERVICE_DEVICE` or the config.
    Hint(Hint),
    /// The udev link.
    UdevLink,
    /// A `/sys/class/virtio-ports` entry with our name.
    SysScan,
}

impl PortSource {
    /// How to say it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Hint(hint) => hint.describe(),
            Self::UdevLink => DEFAULT_DEVICE,
            Self::SysScan => "/sys/class/virtio-ports scan",
        }
    }
}

/// Find the port, in the documented order. Explicit paths (flag, env, config) are taken as
/// given, even if they do not exist yet, so that the error names what the operator asked for.
pub fn discover(
    hints: &PortHints,
    sys: &Path,
    dev: &Path,
) -> Result<(PathBuf, PortSource), PortError> {
    if let Some((path, hint)) = hints.explicit() {
        return Ok((path, PortSource::Hint(hint)));
    }
    let link = dev.join("virtio-ports").join(PORT_NAME);
    if link.exists() {
        return Ok((link, PortSource::UdevLink));
    }
    list_sys_ports(sys, dev)
        .into_iter()
        .find(|p| p.name.as_deref() == Some(PORT_NAME))
        .map(|p| (p.dev_path, PortSource::SysScan))
        .ok_or(PortError::NotFound)
}

/// Open the port read-write and non-blocking. Called once per agent: a second open of a
/// virtio-serial port fails with EBUSY, which is why the original agent sent nothing.
pub fn open_port(path: &Path) -> Result<OwnedFd, PortError> {
    let open_error = |source: std::io::Error| {
        let hint = match source.raw_os_error() {
            Some(libc::EBUSY) => {
                " (the port is already open: another infiniservice, or qemu-ga, holds it)"
            }
            Some(libc::EACCES) | Some(libc::EPERM) => " (permission denied: run as root)",
            Some(libc::ENOENT) => " (no such device)",
            _ => "",
        };
        PortError::Open {
            path: path.to_owned(),
            source,
            hint,
        }
    };
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| open_error(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    // SAFETY: c_path is a valid NUL-terminated string; the returned fd is owned below.
    let fd = unsafe {
        libc::open(
            c_path.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY,
        )
    };
    if fd < 0 {
        return Err(open_error(std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Is a host connected right now? While none is, a virtio-serial port polls POLLHUP at once.
pub fn host_connected(fd: &impl AsRawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN | libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n >= 0 && pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) == 0
}

/// `read(2)` on a raw fd.
pub fn read_fd(fd: RawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `write(2)` on a raw fd.
pub fn write_fd(fd: RawFd, buf: &[u8]) -> std::io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Mode, owner and group of a path, as `--diagnose` shows them.
pub fn describe_permissions(path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(m) => format!(
            "mode {:o}, uid {}, gid {}",
            m.permissions().mode() & 0o7777,
            m.uid(),
            m.gid()
        ),
        Err(e) => format!("not accessible: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_sys(ports: &[(&str, Option<&str>)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (dev, name) in ports {
            let p = dir.path().join("sys/class/virtio-ports").join(dev);
            std::fs::create_dir_all(&p).expect("mkdir");
            if let Some(name) = name {
                std::fs::write(p.join("name"), format!("{name}\n")).expect("write name");
            }
        }
        std::fs::create_dir_all(dir.path().join("dev")).expect("mkdir dev");
        dir
    }

    #[test]
    fn flag_then_env_then_config_win_in_that_order() {
        let d = fake_sys(&[("vport1p1", Some(PORT_NAME))]);
        let (sys, dev) = (d.path().join("sys"), d.path().join("dev"));
        let mut hints = PortHints {
            flag: Some("/f".into()),
            env: Some("/e".into()),
            config: Some("/c".into()),
        };
        assert_eq!(
            discover(&hints, &sys, &dev).expect("found").1,
            PortSource::Hint(Hint::Flag)
        );
        hints.flag = None;
        assert_eq!(
            discover(&hints, &sys, &dev).expect("found").0,
            PathBuf::from("/e")
        );
        hints.env = Some(String::new());
        assert_eq!(
            discover(&hints, &sys, &dev).expect("found").1,
            PortSource::Hint(Hint::Config)
        );
        hints.config = Some(String::new());
        let (path, source) = discover(&hints, &sys, &dev).expect("found");
        assert_eq!(source, PortSource::SysScan);
        assert_eq!(path, dev.join("vport1p1"));
    }

    #[test]
    fn udev_link_wins_over_the_sys_scan() {
        let d = fake_sys(&[("vport1p1", Some(PORT_NAME))]);
        let dev = d.path().join("dev");
        std::fs::create_dir_all(dev.join("virtio-ports")).expect("mkdir");
        std::fs::write(dev.join("virtio-ports").join(PORT_NAME), b"").expect("link");
        let (_, source) =
            discover(&PortHints::default(), &d.path().join("sys"), &dev).expect("found");
        assert_eq!(source, PortSource::UdevLink);
    }

    #[test]
    fn scan_ignores_other_ports_and_reports_not_found() {
        let d = fake_sys(&[
            ("vport0p1", Some("org.qemu.guest_agent.0")),
            ("vport0p2", None),
        ]);
        let (sys, dev) = (d.path().join("sys"), d.path().join("dev"));
        assert!(matches!(
            discover(&PortHints::default(), &sys, &dev),
            Err(PortError::NotFound)
        ));
        let listed = list_sys_ports(&sys, &dev);
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].name.as_deref(), Some("org.qemu.guest_agent.0"));
        assert_eq!(listed[1].name, None);
    }
}

//! `--diagnose` on Linux: the virtio-serial ports in /sys, the one the agent would use, and
//! whether it opens.

use std::fmt::Write as _;
use std::path::Path;

use super::port;
use crate::channel::PortHints;
use crate::config::Config;
use crate::diagnose::{Findings, Problem};

/// The live system's ports.
pub fn inspect(config: &Config, hints: &PortHints) -> Findings {
    inspect_under(config, hints, Path::new("/sys"), Path::new("/dev"))
}

/// Ports under `sys`/`dev` (tests point these at a temporary tree).
pub fn inspect_under(config: &Config, hints: &PortHints, sys: &Path, dev: &Path) -> Findings {
    let mut f = Findings::default();
    let r = &mut f.report;
    let ports = port::list_sys_ports(sys, dev);
    let _ = writeln!(
        r,
        "\nvirtio-serial ports in {}/class/virtio-ports:",
        sys.display()
    );
    if ports.is_empty() {
        let _ = writeln!(
            r,
            "  none (no virtio-serial device, or virtio_console not loaded)"
        );
    }
    for p in &ports {
        let _ = writeln!(
            r,
            "  {} name={} dev={} ({})",
            p.device,
            p.name.as_deref().unwrap_or("<unnamed>"),
            p.dev_path.display(),
            port::describe_permissions(&p.dev_path)
        );
    }
    f.ok = match port::discover(hints, sys, dev) {
        Ok((path, source)) => {
            let _ = writeln!(
                r,
                "\nport: {} (from {}), {}",
                path.display(),
                source.describe(),
                port::describe_permissions(&path)
            );
            match port::open_port(&path) {
                Ok(fd) => {
                    let host = if port::host_connected(&fd) {
                        "a host is connected"
                    } else {
                        "no host connected right now (POLLHUP)"
                    };
                    let _ = writeln!(r, "open: ok; {host}");
                    true
                }
                Err(e) => {
                    let errno = match &e {
                        port::PortError::Open { source, .. } => source.raw_os_error(),
                        port::PortError::NotFound => None,
                    };
                    let _ = writeln!(r, "open: FAILED: {e}");
                    match errno {
                        Some(libc::EBUSY) => {
                            let _ = writeln!(
                                r,
                                "  (EBUSY is expected while the {} service runs)",
                                config.service_name
                            );
                        }
                        Some(libc::EACCES) | Some(libc::EPERM) => f.problems.push(Problem::new(
                            format!("{} cannot be opened: permission denied", path.display()),
                            "run the agent as root (the systemd unit deploy/infiniservice.service does)",
                        )),
                        _ => f.problems.push(Problem::new(
                            format!("{} cannot be opened", path.display()),
                            "check that the path names the VM's virtio-serial port (--device, INFINISERVICE_DEVICE, virtio_serial_path), or leave them empty to auto-detect",
                        )),
                    }
                    errno == Some(libc::EBUSY)
                }
            }
        }
        Err(e) => {
            let _ = writeln!(r, "\nport: MISSING: {e}");
            f.problems.push(Problem::new(
                format!("no virtio-serial port named `{}`", port::PORT_NAME),
                format!(
                    "give the VM a virtio-serial channel named {} (infinibay's VMs have one), and load the driver: `modprobe virtio_console`",
                    port::PORT_NAME
                ),
            ));
            false
        }
    };
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_port_is_not_ok_and_says_how_to_fix_it() {
        let d = tempfile::tempdir().expect("tempdir");
        let found = inspect_under(
            &Config::default(),
            &PortHints::default(),
            &d.path().join("sys"),
            &d.path().join("dev"),
        );
        assert!(!found.ok);
        assert!(found.report.contains("MISSING"));
        assert!(found.problems[0].fix.contains("modprobe virtio_console"));
    }

    #[test]
    fn a_port_that_opens_is_ok() {
        let d = tempfile::tempdir().expect("tempdir");
        let fake = d.path().join("port");
        std::fs::write(&fake, b"").expect("create");
        let hints = PortHints {
            flag: Some(fake),
            ..PortHints::default()
        };
        let found = inspect_under(
            &Config::default(),
            &hints,
            &d.path().join("sys"),
            &d.path().join("dev"),
        );
        assert!(found.ok, "{}", found.report);
        assert!(found.problems.is_empty());
    }
}

//! `--diagnose`: what the agent would use, and why it cannot, in plain words.

use std::fmt::Write as _;
use std::path::Path;

use crate::config::Config;
use crate::platform::port::{self, PortHints};

/// The report, and whether the agent could run (a port was found and opens).
#[derive(Debug, Clone)]
pub struct Diagnosis {
    /// Human-readable report.
    pub report: String,
    /// True when the port exists and could be opened (or is held by a running agent).
    pub ok: bool,
}

/// Inspect ports under `sys`/`dev` for `config` and `hints`.
pub fn diagnose(config: &Config, hints: &PortHints, sys: &Path, dev: &Path) -> Diagnosis {
    let mut r = String::new();
    let _ = writeln!(r, "infiniservice {} diagnosis", env!("CARGO_PKG_VERSION"));
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
    let ok = match port::discover(hints, sys, dev) {
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
                    let busy = matches!(&e, port::PortError::Open { source, .. } if source.raw_os_error() == Some(libc::EBUSY));
                    let _ = writeln!(r, "open: FAILED: {e}");
                    if busy {
                        let _ = writeln!(
                            r,
                            "  (EBUSY is expected while the {} service runs)",
                            config.service_name
                        );
                    }
                    busy
                }
            }
        }
        Err(e) => {
            let _ = writeln!(r, "\nport: MISSING: {e}");
            false
        }
    };
    let policy = &config.policy;
    let _ = writeln!(r, "\npolicy:");
    let _ = writeln!(r, "  allow_unsafe = {}", policy.allow_unsafe);
    let _ = writeln!(
        r,
        "  allowed_safe_actions = {}",
        if policy.allowed_safe_actions.is_empty() {
            "all".to_string()
        } else {
            policy.allowed_safe_actions.join(", ")
        }
    );
    let _ = writeln!(
        r,
        "  denied_safe_actions = {}",
        if policy.denied_safe_actions.is_empty() {
            "none".to_string()
        } else {
            policy.denied_safe_actions.join(", ")
        }
    );
    let l = &config.limits;
    let _ = writeln!(
        r,
        "limits: max_concurrent_commands={} max_output_bytes={} default_timeout_secs={} process_top_n={} inventory_interval={}",
        l.max_concurrent_commands,
        l.max_output_bytes,
        l.default_timeout_secs,
        l.process_top_n,
        l.inventory_interval
    );
    let _ = writeln!(r, "collection_interval = {} s", config.collection_interval);
    let _ = writeln!(
        r,
        "\nresult: {}",
        if ok {
            "OK"
        } else {
            "NOT OK: the agent cannot reach the host"
        }
    );
    Diagnosis { report: r, ok }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_port_is_not_ok_and_says_why() {
        let d = tempfile::tempdir().expect("tempdir");
        let diag = diagnose(
            &Config::default(),
            &PortHints::default(),
            &d.path().join("sys"),
            &d.path().join("dev"),
        );
        assert!(!diag.ok);
        assert!(diag.report.contains("MISSING"));
        assert!(diag.report.contains("allow_unsafe = false"));
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
        let diag = diagnose(
            &Config::default(),
            &hints,
            &d.path().join("sys"),
            &d.path().join("dev"),
        );
        assert!(diag.ok, "{}", diag.report);
    }
}

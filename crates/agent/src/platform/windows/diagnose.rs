//! `--diagnose` on Windows: vioser's named port, the COM ports, the one the agent would use
//! and whether it opens, the service's state, and where config and logs are.

use std::fmt::Write as _;

use windows_sys::Win32::Foundation::{ERROR_ACCESS_DENIED, ERROR_SERVICE_DOES_NOT_EXIST};
use windows_sys::Win32::System::Services::{SERVICE_RUNNING, SERVICE_STOPPED};

use super::port::{self, PORT_NAME, PortError, VIOSER_PATH};
use super::{scm, service};
use crate::channel::PortHints;
use crate::config::Config;
use crate::diagnose::{Findings, Problem};

/// The live system.
pub fn inspect(config: &Config, hints: &PortHints) -> Findings {
    let mut f = Findings::default();
    let service_state = scm::query_state(&config.service_name);
    let service_running = matches!(service_state, Ok(SERVICE_RUNNING));
    ports(&mut f, hints, service_running, config);
    service_section(&mut f, config, &service_state);
    let r = &mut f.report;
    let config_path = service::default_config_path();
    let _ = writeln!(
        r,
        "\nconfig: {} ({})",
        config_path.display(),
        if config_path.is_file() {
            "present"
        } else {
            "absent: defaults apply"
        }
    );
    let _ = writeln!(r, "log file (service): {}", service::log_path().display());
    f
}

fn ports(f: &mut Findings, hints: &PortHints, service_running: bool, config: &Config) {
    let r = &mut f.report;
    let vioser = port::dos_device_target(&format!(r"Global\{PORT_NAME}"))
        .or_else(|| port::dos_device_target(PORT_NAME));
    let _ = writeln!(
        r,
        "\nvirtio-serial (vioser) port {VIOSER_PATH}: {}",
        match &vioser {
            Some(target) => format!("present ({target})"),
            None => "absent".into(),
        }
    );
    let com = port::list_com_ports();
    let _ = writeln!(r, "COM ports:");
    if com.is_empty() {
        let _ = writeln!(r, "  none");
    }
    for p in &com {
        let _ = writeln!(
            r,
            "  {}{}",
            p.describe(),
            p.hardware_id
                .as_deref()
                .map(|h| format!(" {h}"))
                .unwrap_or_default()
        );
    }
    f.ok = match port::discover(hints) {
        Ok((path, source)) => {
            let _ = writeln!(r, "\nport: {} (from {})", path.display(), source.describe());
            match port::open_port(&path) {
                Ok(_handle) => {
                    let _ = writeln!(r, "open: ok");
                    true
                }
                Err(PortError::Open { source, .. })
                    if service_running
                        && source.raw_os_error() == Some(ERROR_ACCESS_DENIED as i32) =>
                {
                    let _ = writeln!(
                        r,
                        "open: in use (expected: the {} service holds it)",
                        config.service_name
                    );
                    true
                }
                Err(e) => {
                    let _ = writeln!(r, "open: FAILED: {e}");
                    f.problems.push(Problem::new(
                        format!("{} cannot be opened", path.display()),
                        "stop whatever holds the port (another infiniservice, or a qemu-ga \
                         configured for it), or name the right port with --device, \
                         INFINISERVICE_DEVICE or virtio_serial_path",
                    ));
                    false
                }
            }
        }
        Err(e) => {
            let _ = writeln!(r, "\nport: MISSING: {e}");
            let fix = match &e {
                PortError::Ambiguous(_) => {
                    "name the port: --device \\\\.\\COMn, INFINISERVICE_DEVICE, \
                    or virtio_serial_path in the config"
                        .to_string()
                }
                _ => format!(
                    "install the VirtIO serial driver (vioser, from the virtio-win ISO; without it \
                     Device Manager shows a \"PCI Simple Communications Controller\"), and give the \
                     VM a virtio-serial channel named {PORT_NAME} (infinibay's VMs have one)"
                ),
            };
            f.problems.push(Problem::new("no port to the host", fix));
            false
        }
    };
}

fn service_section(f: &mut Findings, config: &Config, state: &std::io::Result<u32>) {
    let name = &config.service_name;
    let start_type = super::collect::start_type(name).unwrap_or("unknown");
    let _ = match state {
        Ok(s) => writeln!(
            f.report,
            "\nservice {name}: {} (start type {start_type})",
            scm::state_name(*s)
        ),
        Err(e) => writeln!(f.report, "\nservice {name}: {e}"),
    };
    match state {
        Ok(SERVICE_RUNNING) => {}
        Ok(SERVICE_STOPPED) => f.problems.push(Problem::new(
            format!("the {name} service is stopped"),
            format!(
                "Start-Service {name}   (or: sc.exe start {name}); its log says why it stopped"
            ),
        )),
        Ok(other) => f.problems.push(Problem::new(
            format!("the {name} service is {}", scm::state_name(*other)),
            "wait a few seconds and run --diagnose again",
        )),
        Err(e) if e.raw_os_error() == Some(ERROR_SERVICE_DOES_NOT_EXIST as i32) => {
            f.problems.push(Problem::new(
                format!("the {name} service is not installed"),
                "as Administrator: infiniservice.exe --install-service, or \
                 install-windows.ps1 -ServiceMode normal -VmId <VM_ID>, or the MSI",
            ))
        }
        Err(e) => f.problems.push(Problem::new(
            format!("the Service Control Manager cannot be asked about {name}: {e}"),
            "run --diagnose as Administrator",
        )),
    }
}

//! The OS tools behind safe actions on Linux: which programs, with which arguments, and how to
//! read their output. Every invocation is an argv (no shell); names reaching these functions
//! were validated by `SafeAction::validate` and [`validate`] (no leading `-`, strict character
//! sets).

use std::path::{Path, PathBuf};

use infinibay_protocol::message::command::{ServiceNaming, check_service_name, signal_number};
use infinibay_protocol::message::{Application, ErrorCode, SafeAction, ServiceOperation};
use serde::Serialize;
use serde_json::json;

use super::collect::Roots;
use crate::commands::{Programs, Work};
use crate::exec::Invocation;

/// What Linux adds to the protocol's validation: a service must be a systemd unit name (the
/// protocol also lets Windows names such as `MSSQL$SQLEXPRESS` through, for Windows guests).
pub fn validate(action: &SafeAction) -> Result<(), String> {
    match action {
        SafeAction::ServiceControl { service, .. } => {
            check_service_name(service, ServiceNaming::Systemd)
        }
        _ => Ok(()),
    }
}

/// `ProcessKill`: kill(2) with `signal` (a name or number the protocol accepted), SIGKILL
/// when `force`, else SIGTERM.
pub fn kill_process(
    pid: u32,
    force: bool,
    signal: Option<&str>,
) -> Result<(String, serde_json::Value), (ErrorCode, String)> {
    let sig = match signal {
        Some(s) => signal_number(s).unwrap_or(libc::SIGTERM),
        None if force => libc::SIGKILL,
        None => libc::SIGTERM,
    };
    match send_signal(pid, sig) {
        Ok(()) => Ok((
            format!("Sent signal {sig} to process {pid}"),
            json!({"pid": pid, "signal": sig}),
        )),
        Err(e) => {
            let code = match e.raw_os_error() {
                Some(libc::EPERM) => ErrorCode::Forbidden,
                _ => ErrorCode::Failed,
            };
            Err((code, format!("cannot signal process {pid}: {e}")))
        }
    }
}

/// `ServiceControl` through systemctl; `unsupported` when systemd is not the init.
pub fn service_control(service: &str, operation: ServiceOperation, roots: &Roots) -> Work {
    if !systemd_running(&roots.root) {
        return Work::Refuse(
            ErrorCode::Unsupported,
            "systemd is not the init system of this guest (no /run/systemd/system)".into(),
        );
    }
    let mut programs = Programs::new(vec![service_control_invocation(service, operation)]);
    programs.succeeded = match operation {
        ServiceOperation::Status => {
            |code| service_control_succeeded(ServiceOperation::Status, code)
        }
        _ => |code| code == 0,
    };
    Work::Programs(programs)
}

/// The package actions through apt/dpkg, dnf or yum; `unsupported` without any.
pub fn packages(action: &SafeAction) -> Work {
    let Some(manager) = PackageManager::detect() else {
        return Work::Refuse(
            ErrorCode::Unsupported,
            "no supported package manager (apt-get/dpkg, dnf, yum) on this guest".into(),
        );
    };
    let programs = match action {
        SafeAction::PackageList => {
            let mut p = Programs::new(vec![manager.list()]);
            p.parse = Some(Box::new(move |stdout: &str| {
                let packages = manager.parse_list(stdout);
                (
                    format!("Found {} packages", packages.len()),
                    json!(packages),
                )
            }));
            p
        }
        SafeAction::PackageSearch { query } => {
            let mut p = Programs::new(vec![manager.search(query)]);
            p.parse = Some(Box::new(move |stdout: &str| {
                let hits = manager.parse_search(stdout);
                (format!("Found {} packages", hits.len()), json!(hits))
            }));
            p
        }
        SafeAction::PackageInstall { package } => Programs::new(vec![manager.install(package)]),
        SafeAction::PackageRemove { package } => Programs::new(vec![manager.remove(package)]),
        SafeAction::PackageUpdate { package } => Programs::new(manager.update(package.as_deref())),
        other => {
            return Work::Refuse(
                ErrorCode::Internal,
                format!("`{}` is not a package action", other.name()),
            );
        }
    };
    Work::Programs(programs)
}

/// `Shutdown` / `Reboot`: systemctl, or shutdown(8) without systemd.
pub fn power(reboot: bool, roots: &Roots) -> Work {
    Work::Programs(Programs::new(vec![power_invocation(reboot, &roots.root)]))
}

/// Is `program` an executable file in `PATH`?
pub fn find_in_path(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Is systemd the init system? (sd_booted(3): `/run/systemd/system` exists.)
pub fn systemd_running(root: &Path) -> bool {
    root.join("run/systemd/system").is_dir()
}

/// `systemctl <operation> <service>`.
pub fn service_control_invocation(service: &str, operation: ServiceOperation) -> Invocation {
    Invocation::new(
        "systemctl",
        &["--no-pager", "--no-ask-password", operation.as_str(), "--"],
    )
    .with_arg(service)
}

/// Did `systemctl <operation>` succeed? `status` exits 3 for a unit that is merely inactive.
pub fn service_control_succeeded(operation: ServiceOperation, exit_code: i32) -> bool {
    exit_code == 0 || (operation == ServiceOperation::Status && exit_code == 3)
}

/// The package manager families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageManager {
    /// apt-get and dpkg (Debian, Ubuntu).
    Apt,
    /// dnf and rpm (Fedora, RHEL 8+).
    Dnf,
    /// yum and rpm (older RHEL/CentOS).
    Yum,
}

impl PackageManager {
    /// The first one installed.
    pub fn detect() -> Option<Self> {
        if find_in_path("apt-get").is_some() && find_in_path("dpkg-query").is_some() {
            Some(Self::Apt)
        } else if find_in_path("dnf").is_some() {
            Some(Self::Dnf)
        } else if find_in_path("yum").is_some() {
            Some(Self::Yum)
        } else {
            None
        }
    }

    fn tool(self) -> &'static str {
        match self {
            Self::Apt => "apt-get",
            Self::Dnf => "dnf",
            Self::Yum => "yum",
        }
    }

    fn env(self, mut inv: Invocation) -> Invocation {
        if self == Self::Apt {
            // No debconf prompt can ever be answered: there is no terminal.
            inv.env
                .push(("DEBIAN_FRONTEND".into(), "noninteractive".into()));
        }
        inv
    }

    /// List installed packages, tab-separated: name, version, size, architecture.
    pub fn list(self) -> Invocation {
        match self {
            Self::Apt => Invocation::new(
                "dpkg-query",
                &[
                    "-W",
                    "-f=${Package}\t${Version}\t${Installed-Size}\t${Architecture}\n",
                ],
            ),
            Self::Dnf | Self::Yum => Invocation::new(
                "rpm",
                &[
                    "-qa",
                    "--qf",
                    "%{NAME}\t%{VERSION}-%{RELEASE}\t%{SIZE}\t%{ARCH}\n",
                ],
            ),
        }
    }

    /// Parse [`Self::list`] output. dpkg reports sizes in kB, rpm in bytes.
    pub fn parse_list(self, stdout: &str) -> Vec<Application> {
        stdout
            .lines()
            .filter_map(|line| {
                let mut cols = line.split('\t');
                let name = cols.next()?.trim();
                if name.is_empty() {
                    return None;
                }
                let version = cols.next().map(str::to_owned).filter(|v| !v.is_empty());
                let size = cols.next().and_then(|s| s.trim().parse::<u64>().ok());
                let size_kb = match self {
                    Self::Apt => size,
                    Self::Dnf | Self::Yum => size.map(|b| b / 1024),
                };
                let architecture = cols.next().map(str::to_owned).filter(|a| !a.is_empty());
                Some(Application {
                    name: name.to_owned(),
                    version,
                    size_kb,
                    architecture,
                })
            })
            .collect()
    }

    /// Search the repositories (by name).
    pub fn search(self, query: &str) -> Invocation {
        match self {
            Self::Apt => Invocation::new("apt-cache", &["search", "--names-only"]).with_arg(query),
            Self::Dnf | Self::Yum => {
                Invocation::new(self.tool(), &["-q", "search", "--"]).with_arg(query)
            }
        }
    }

    /// Parse [`Self::search`] output into (name, summary) pairs.
    pub fn parse_search(self, stdout: &str) -> Vec<SearchHit> {
        stdout
            .lines()
            .filter_map(|line| {
                let (name, summary) = match self {
                    Self::Apt => line.split_once(" - ")?,
                    Self::Dnf | Self::Yum => line.split_once(" : ")?,
                };
                let name = name.trim();
                (!name.is_empty() && !name.starts_with('=')).then(|| SearchHit {
                    name: name.to_owned(),
                    summary: summary.trim().to_owned(),
                })
            })
            .collect()
    }

    /// Install one package.
    pub fn install(self, package: &str) -> Invocation {
        self.env(Invocation::new(self.tool(), &["-y", "install"]).with_arg(package))
    }

    /// Remove one package.
    pub fn remove(self, package: &str) -> Invocation {
        self.env(Invocation::new(self.tool(), &["-y", "remove"]).with_arg(package))
    }

    /// Upgrade one package, or everything; as steps run in order.
    pub fn update(self, package: Option<&str>) -> Vec<Invocation> {
        match (self, package) {
            (Self::Apt, Some(p)) => {
                vec![self.env(
                    Invocation::new("apt-get", &["-y", "install", "--only-upgrade"]).with_arg(p),
                )]
            }
            (Self::Apt, None) => vec![
                self.env(Invocation::new("apt-get", &["update"])),
                self.env(Invocation::new("apt-get", &["-y", "upgrade"])),
            ],
            (_, Some(p)) => vec![Invocation::new(self.tool(), &["-y", "upgrade"]).with_arg(p)],
            (_, None) => vec![Invocation::new(self.tool(), &["-y", "upgrade"])],
        }
    }
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SearchHit {
    /// Package name.
    pub name: String,
    /// One-line description.
    pub summary: String,
}

/// Power-off or reboot, trying systemd first.
pub fn power_invocation(reboot: bool, root: &Path) -> Invocation {
    match (systemd_running(root), reboot) {
        (true, false) => Invocation::new("systemctl", &["--no-ask-password", "poweroff"]),
        (true, true) => Invocation::new("systemctl", &["--no-ask-password", "reboot"]),
        (false, false) => Invocation::new("shutdown", &["-h", "now"]),
        (false, true) => Invocation::new("shutdown", &["-r", "now"]),
    }
}

/// kill(2).
pub fn send_signal(pid: u32, signal: i32) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: kill has no memory effects.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_follow_a_double_dash() {
        let inv = service_control_invocation("ssh.service", ServiceOperation::Restart);
        assert_eq!(inv.program, "systemctl");
        let dd = inv.args.iter().position(|a| a == "--").expect("has --");
        assert_eq!(inv.args[dd - 1], "restart");
        assert_eq!(inv.args[dd + 1], "ssh.service");
    }

    #[test]
    fn service_control_takes_unit_names_and_refuses_windows_names() {
        let control = |service: &str| SafeAction::ServiceControl {
            service: service.into(),
            operation: ServiceOperation::Status,
        };
        for unit in [
            "ssh.service",
            "getty@tty1.service",
            r"systemd-fsck@dev-disk-by\x2duuid-0a1b.service",
        ] {
            assert_eq!(validate(&control(unit)), Ok(()), "{unit}");
        }
        for windows_only in ["MSSQL$SQLEXPRESS", "Apple Mobile Device Service"] {
            assert!(control(windows_only).validate().is_ok(), "{windows_only}");
            let reason = validate(&control(windows_only)).expect_err(windows_only);
            assert!(reason.contains("systemd unit name"), "{reason}");
        }
    }

    #[test]
    fn status_of_an_inactive_unit_is_a_success() {
        assert!(service_control_succeeded(ServiceOperation::Status, 3));
        assert!(!service_control_succeeded(ServiceOperation::Start, 3));
        assert!(!service_control_succeeded(ServiceOperation::Status, 4));
    }

    #[test]
    fn apt_installs_are_noninteractive_and_argv_only() {
        let inv = PackageManager::Apt.install("openssh-server");
        assert_eq!(inv.program, "apt-get");
        assert_eq!(inv.args, ["-y", "install", "openssh-server"]);
        assert!(
            inv.env
                .contains(&("DEBIAN_FRONTEND".into(), "noninteractive".into()))
        );
        assert_eq!(PackageManager::Apt.update(None).len(), 2);
    }

    #[test]
    fn dpkg_and_rpm_lists_parse_with_sizes_in_kb() {
        let apt = PackageManager::Apt.parse_list("bash\t5.2.15-2+b7\t7164\tamd64\nodd\t\t\t\n\n");
        assert_eq!(apt.len(), 2);
        assert_eq!(apt[0].name, "bash");
        assert_eq!(apt[0].size_kb, Some(7164));
        assert_eq!(apt[1].version, None);
        let rpm = PackageManager::Dnf.parse_list("bash\t5.1.8-6.el9\t8192000\tx86_64\n");
        assert_eq!(rpm[0].size_kb, Some(8000));
    }

    #[test]
    fn search_output_parses() {
        let hits = PackageManager::Apt.parse_search("coreutils - GNU core utilities\nnoise\n");
        assert_eq!(
            hits,
            vec![SearchHit {
                name: "coreutils".into(),
                summary: "GNU core utilities".into()
            }]
        );
        let hits = PackageManager::Dnf
            .parse_search("=== Name Matched: vim ===\nvim-enhanced.x86_64 : A version of vi\n");
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].name, "vim-enhanced.x86_64");
    }
}

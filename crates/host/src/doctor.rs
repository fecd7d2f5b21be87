//! `infinibay doctor`: check what the host needs and say what to fix.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use infinibay_core::diag::{KVM_GROUP_HINT, Ownership, ProcessIdentity};
use infinibay_core::discover::scan;

use crate::config::Config;

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `true` when something must be fixed.
    pub problem: bool,
    /// What was checked and found.
    pub message: String,
    /// What to do, for problems.
    pub fix: Option<String>,
}

fn ok(message: String) -> Finding {
    Finding {
        problem: false,
        message,
        fix: None,
    }
}

fn problem(message: String, fix: impl Into<String>) -> Finding {
    Finding {
        problem: true,
        message,
        fix: Some(fix.into()),
    }
}

/// Run every check; with `fix`, remove the stale sockets found.
pub async fn check(config: &Config, fix: bool) -> Vec<Finding> {
    let mut findings = Vec::new();
    let who = ProcessIdentity::current();
    findings.push(ok(format!("running as {}", who.describe())));
    check_socket_dir(config, &who, fix, &mut findings);
    check_data_dir(config, &mut findings);
    check_database(config, &mut findings).await;
    match infinibay_core::system::raise_nofile_limit() {
        Ok((_, after)) if after < 4096 => findings.push(problem(
            format!("open-files hard limit is {after}: fewer VMs than that can be connected"),
            "raise it (systemd: LimitNOFILE=65536 in the unit; shell: ulimit -Hn)",
        )),
        Ok((_, after)) => findings.push(ok(format!("open-files limit can be raised to {after}"))),
        Err(e) => findings.push(problem(
            format!("cannot read the open-files limit: {e}"),
            "check the process's resource limits",
        )),
    }
    findings
}

fn check_socket_dir(
    config: &Config,
    who: &ProcessIdentity,
    fix: bool,
    findings: &mut Vec<Finding>,
) {
    let dir = &config.core.socket_dir;
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) => {
            findings.push(problem(
                format!("socket directory {} is not accessible: {e}", dir.display()),
                format!(
                    "create it (mkdir -p {0}; chgrp kvm {0}; chmod 2770 {0}) or set --socket-dir / INFINIBAY_SOCKET_DIR",
                    dir.display()
                ),
            ));
            return;
        }
    };
    if !meta.is_dir() {
        findings.push(problem(
            format!("{} is not a directory", dir.display()),
            "point --socket-dir at the directory QEMU creates the VM sockets in",
        ));
        return;
    }
    let sockets = match scan(dir) {
        Ok(s) => s,
        Err(e) => {
            let owner = Ownership::of(dir).ok();
            let detail = owner.map_or(String::new(), |o| {
                format!(
                    " (owner {}, group {}, mode {:04o})",
                    o.user, o.group, o.mode
                )
            });
            findings.push(problem(
                format!(
                    "cannot list socket directory {}{detail}: {e}",
                    dir.display()
                ),
                KVM_GROUP_HINT,
            ));
            return;
        }
    };
    findings.push(ok(format!(
        "socket directory {} readable (mode {:04o}), {} VM socket(s)",
        dir.display(),
        meta.permissions().mode() & 0o7777,
        sockets.len()
    )));
    let mut denied = Vec::new();
    for path in sockets.values() {
        if let Ok(o) = Ownership::of(path)
            && !o.allows_connect(who)
        {
            denied.push((path.clone(), o));
        }
    }
    denied.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some((path, o)) = denied.first() {
        let member = if who.in_group(o.gid) {
            format!("this process IS in group {}", o.group)
        } else {
            format!("this process is NOT in group {}", o.group)
        };
        findings.push(problem(
            format!(
                "{} of {} socket(s) may not be opened, e.g. {} (owner {}, group {}, mode {:04o}); {member}",
                denied.len(),
                sockets.len(),
                path.display(),
                o.user,
                o.group,
                o.mode
            ),
            format!("{KVM_GROUP_HINT} (usermod -aG kvm {})", who.user),
        ));
    } else if !sockets.is_empty() {
        findings.push(ok("every VM socket may be opened by this user".into()));
    }
    let mut openable: Vec<_> = sockets
        .values()
        .filter(|p| !denied.iter().any(|(d, _)| d == *p))
        .cloned()
        .collect();
    openable.sort();
    check_stale(&openable, fix, findings);
}

/// Sockets nobody listens on any more: the file of a VM whose QEMU is gone (seed 000). A
/// connection to them is refused; a live QEMU accepts (or queues) it, and sees it close.
fn stale_sockets(sockets: &[PathBuf]) -> Vec<PathBuf> {
    sockets
        .iter()
        .filter(|p| {
            matches!(
                std::os::unix::net::UnixStream::connect(p),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
            )
        })
        .cloned()
        .collect()
}

fn check_stale(sockets: &[PathBuf], fix: bool, findings: &mut Vec<Finding>) {
    let stale = stale_sockets(sockets);
    if stale.is_empty() {
        return;
    }
    let listed = |paths: &[PathBuf]| {
        let mut text = paths
            .iter()
            .take(10)
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        if paths.len() > 10 {
            text.push_str(&format!(" and {} more", paths.len() - 10));
        }
        text
    };
    if !fix {
        findings.push(problem(
            format!(
                "{} stale socket(s) of VMs that no longer run (nothing listens): {}",
                stale.len(),
                listed(&stale)
            ),
            "infinibay doctor --fix removes them",
        ));
        return;
    }
    let mut removed = Vec::new();
    let mut failed = Vec::new();
    for path in stale {
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => removed.push(path),
            Err(e) => failed.push((path, e)),
        }
    }
    if !removed.is_empty() {
        findings.push(ok(format!(
            "removed {} stale socket(s): {}",
            removed.len(),
            listed(&removed)
        )));
    }
    if let Some((path, e)) = failed.first() {
        findings.push(problem(
            format!(
                "cannot remove {} stale socket(s), e.g. {}: {e}",
                failed.len(),
                path.display()
            ),
            "run doctor --fix as a user who may write the socket directory",
        ));
    }
}

/// The data directory holds the password hashes, the command log and the JWT secret: it must
/// be `0700` and its files `0600` (`serve` makes them so at start; a copy or a restore may
/// not have).
fn check_data_dir(config: &Config, findings: &mut Vec<Finding>) {
    let dir = &config.process.data_dir;
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            findings.push(ok(format!(
                "data directory {} does not exist yet (serve creates it 0700)",
                dir.display()
            )));
            return;
        }
        Err(e) => {
            findings.push(problem(
                format!("data directory {} is not accessible: {e}", dir.display()),
                "check its owner and permissions (it must belong to the service user)",
            ));
            return;
        }
    };
    let mut loose = Vec::new();
    let dir_mode = meta.permissions().mode() & 0o777;
    if dir_mode & 0o077 != 0 {
        loose.push(format!("{} is {dir_mode:04o}", dir.display()));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut files: Vec<_> = entries
            .flatten()
            .filter_map(|e| Some((e.path(), e.metadata().ok()?)))
            .filter(|(_, m)| m.is_file() && m.permissions().mode() & 0o077 != 0)
            .map(|(p, m)| format!("{} is {:04o}", p.display(), m.permissions().mode() & 0o777))
            .collect();
        files.sort();
        loose.extend(files);
    }
    if loose.is_empty() {
        findings.push(ok(format!(
            "data directory {} is private (0700, files 0600)",
            dir.display()
        )));
    } else {
        findings.push(problem(
            format!(
                "data directory is readable by others: {} (database, password hashes, command output, JWT secret)",
                loose.join(", ")
            ),
            format!(
                "chmod 700 {0} && find {0} -maxdepth 1 -type f -exec chmod 600 {{}} + (infinibay serve also does it at start)",
                dir.display()
            ),
        ));
    }
}

async fn check_database(config: &Config, findings: &mut Vec<Finding>) {
    match crate::serve::open_store(config).await {
        Ok(store) => findings.push(ok(format!(
            "database {} reachable ({})",
            crate::serve::mask_password(&config.database_url()),
            store.backend()
        ))),
        Err(e) => findings.push(problem(
            e.to_string(),
            "check --database / INFINIBAY_DATABASE, that the server runs and the credentials",
        )),
    }
}

/// Print the findings; returns the number of problems.
pub fn print(findings: &[Finding], out: &mut impl Write) -> std::io::Result<usize> {
    let mut problems = 0;
    for f in findings {
        if f.problem {
            problems += 1;
            writeln!(out, "PROBLEM  {}", f.message)?;
            if let Some(fix) = &f.fix {
                writeln!(out, "   fix:  {fix}")?;
            }
        } else {
            writeln!(out, "ok       {}", f.message)?;
        }
    }
    if problems == 0 {
        writeln!(out, "no problems found")?;
    } else {
        writeln!(out, "{problems} problem(s) found")?;
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_readable_by_others_is_a_problem_and_a_private_one_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("mkdir");
        let chmod = |p: &std::path::Path, mode| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod")
        };
        chmod(&data, 0o755);
        std::fs::write(data.join("infinibay.db-wal"), b"x").expect("write");
        chmod(&data.join("infinibay.db-wal"), 0o644);
        let mut config = Config::default();
        config.process.data_dir = data.clone();
        let mut findings = Vec::new();
        check_data_dir(&config, &mut findings);
        assert_eq!(findings.len(), 1);
        assert!(findings[0].problem, "{findings:?}");
        assert!(findings[0].message.contains("0755"), "{findings:?}");
        assert!(
            findings[0].message.contains("infinibay.db-wal is 0644"),
            "{findings:?}"
        );
        chmod(&data, 0o700);
        chmod(&data.join("infinibay.db-wal"), 0o600);
        let mut findings = Vec::new();
        check_data_dir(&config, &mut findings);
        assert!(!findings[0].problem, "{findings:?}");
    }
}

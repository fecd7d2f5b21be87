//! What the safe actions do on Windows: the Service Control Manager for services, the
//! registry and winget for packages, `TerminateProcess` for ProcessKill, `InitiateShutdownW`
//! for power. Names reaching here passed `SafeAction::validate` and [`validate`].

use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use std::path::PathBuf;

use infinibay_protocol::message::command::{ServiceNaming, check_service_name};
use infinibay_protocol::message::{ErrorCode, SafeAction, ServiceOperation};
use serde::Serialize;
use serde_json::json;
use windows_sys::Wdk::System::Threading::{NtQueryInformationProcess, PROCESSINFOCLASS};
use windows_sys::Win32::Foundation::{
    ERROR_ACCESS_DENIED, ERROR_INVALID_PARAMETER, ERROR_NOT_ALL_ASSIGNED, GetLastError, LUID,
};
use windows_sys::Win32::Security::{
    AdjustTokenPrivileges, LUID_AND_ATTRIBUTES, LookupPrivilegeValueW, SE_PRIVILEGE_ENABLED,
    SE_SHUTDOWN_NAME, TOKEN_ADJUST_PRIVILEGES, TOKEN_PRIVILEGES, TOKEN_QUERY,
};
use windows_sys::Win32::System::Shutdown::{
    InitiateShutdownW, SHTDN_REASON_FLAG_PLANNED, SHTDN_REASON_MAJOR_OTHER,
    SHTDN_REASON_MINOR_OTHER, SHUTDOWN_FORCE_OTHERS, SHUTDOWN_GRACE_OVERRIDE, SHUTDOWN_POWEROFF,
    SHUTDOWN_RESTART,
};
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, OpenProcess, OpenProcessToken, PROCESS_QUERY_LIMITED_INFORMATION,
    PROCESS_TERMINATE, TerminateProcess,
};

use super::collect::{Roots, installed_programs};
use super::scm;
use super::wide::to_wide;
use crate::commands::{Programs, Work};
use crate::exec::Invocation;

/// The System process: never a target.
const SYSTEM_PID: u32 = 4;

/// `ProcessBreakOnTermination` (not named in windows-sys).
const PROCESS_BREAK_ON_TERMINATION: PROCESSINFOCLASS = 29;

/// winget package ids (`Git.Git`, `Notepad++.Notepad++`, `9NBLGGH4NNS1`) and search terms:
/// stricter than the protocol's names, which also allow `:` and `@`.
pub fn validate(action: &SafeAction) -> Result<(), String> {
    let (what, name) = match action {
        SafeAction::ServiceControl { service, .. } => {
            return check_service_name(service, ServiceNaming::Windows);
        }
        SafeAction::PackageInstall { package } | SafeAction::PackageRemove { package } => {
            ("package id", package.as_str())
        }
        SafeAction::PackageUpdate {
            package: Some(package),
        } => ("package id", package.as_str()),
        SafeAction::PackageSearch { query } => ("search term", query.as_str()),
        _ => return Ok(()),
    };
    if is_winget_id(name) {
        Ok(())
    } else {
        Err(format!(
            "{what} `{}` is not a winget id (letters, digits and . _ + -, starting with a letter or digit)",
            name.escape_debug()
        ))
    }
}

/// `^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$`.
pub fn is_winget_id(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'))
}

/// `ProcessKill`: Windows has no signals; TERM, KILL and INT (or `force`) end the process
/// with `TerminateProcess`. Critical system processes are refused: ending one stops Windows.
pub fn kill_process(
    pid: u32,
    _force: bool,
    signal: Option<&str>,
) -> Result<(String, serde_json::Value), (ErrorCode, String)> {
    if let Some(signal) = signal {
        let name = signal.trim().to_ascii_uppercase();
        let name = name.strip_prefix("SIG").unwrap_or(&name);
        if !matches!(name, "TERM" | "KILL" | "INT" | "15" | "9" | "2") {
            return Err((
                ErrorCode::Unsupported,
                format!(
                    "Windows has no signal `{signal}`: ProcessKill ends the process (signal TERM, KILL or INT, or force)"
                ),
            ));
        }
    }
    if pid == SYSTEM_PID {
        return Err((ErrorCode::Invalid, "pid 4 is the System process".into()));
    }
    // SAFETY: no inheritance; the handle is owned below.
    let raw = unsafe {
        OpenProcess(
            PROCESS_TERMINATE | PROCESS_QUERY_LIMITED_INFORMATION,
            0,
            pid,
        )
    };
    if raw.is_null() {
        // SAFETY: reads the calling thread's last error.
        let code = unsafe { GetLastError() };
        return Err(match code {
            ERROR_INVALID_PARAMETER => (ErrorCode::Failed, format!("no process with pid {pid}")),
            ERROR_ACCESS_DENIED => (
                ErrorCode::Forbidden,
                format!("cannot end process {pid}: access denied"),
            ),
            _ => (
                ErrorCode::Failed,
                format!(
                    "cannot open process {pid}: {}",
                    std::io::Error::from_raw_os_error(code as i32)
                ),
            ),
        });
    }
    // SAFETY: a handle nobody else owns.
    let process = unsafe { OwnedHandle::from_raw_handle(raw) };
    if is_critical(&process) {
        return Err((
            ErrorCode::Forbidden,
            format!("process {pid} is a critical system process: ending it would stop Windows"),
        ));
    }
    // SAFETY: a valid handle with PROCESS_TERMINATE.
    if unsafe { TerminateProcess(process.as_raw_handle(), 1) } == 0 {
        let error = std::io::Error::last_os_error();
        let code = if error.raw_os_error() == Some(ERROR_ACCESS_DENIED as i32) {
            ErrorCode::Forbidden
        } else {
            ErrorCode::Failed
        };
        return Err((code, format!("cannot end process {pid}: {error}")));
    }
    Ok((
        format!("Ended process {pid}"),
        json!({"pid": pid, "exit_code": 1}),
    ))
}

/// Is the process critical (its end is a bugcheck)? Asked through the information class
/// `IsProcessCritical` itself uses (`ProcessBreakOnTermination`): wine has only a stub of
/// `IsProcessCritical` that ends the calling process, but answers the NT call with
/// `STATUS_INVALID_INFO_CLASS` (then: not critical, there are no critical processes in wine).
fn is_critical(process: &OwnedHandle) -> bool {
    let mut flag = 0u32;
    // SAFETY: a valid handle with query rights and a 4-byte output buffer.
    let status = unsafe {
        NtQueryInformationProcess(
            process.as_raw_handle(),
            PROCESS_BREAK_ON_TERMINATION,
            (&mut flag as *mut u32).cast(),
            4,
            std::ptr::null_mut(),
        )
    };
    status >= 0 && flag != 0
}

/// `ServiceControl` through the Service Control Manager (native calls, no sc.exe).
pub fn service_control(service: &str, operation: ServiceOperation, _roots: &Roots) -> Work {
    let service = service.to_owned();
    Work::Native(Box::new(move |deadline| {
        scm::control(&service, operation, deadline)
    }))
}

/// Where winget is: on `PATH` for a user; for the LocalSystem account (the service) only
/// inside App Installer's package folder, newest version first.
pub fn find_winget() -> Option<PathBuf> {
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("winget.exe");
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    let program_files = std::env::var_os("ProgramFiles").map(PathBuf::from)?;
    let apps = std::fs::read_dir(program_files.join("WindowsApps")).ok()?;
    let mut found: Vec<(Vec<u32>, PathBuf)> = apps
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix("Microsoft.DesktopAppInstaller_")?;
            let (version, tail) = rest.split_once('_')?;
            if !tail.ends_with("__8wekyb3d8bbwe") {
                return None;
            }
            let exe = entry.path().join("winget.exe");
            exe.is_file().then(|| {
                let version = version.split('.').filter_map(|p| p.parse().ok()).collect();
                (version, exe)
            })
        })
        .collect();
    found.sort();
    found.pop().map(|(_, exe)| exe)
}

/// The flags every winget call gets: no prompt can be answered, and no terminal to draw on.
const WINGET_QUIET: &[&str] = &["--accept-source-agreements", "--disable-interactivity"];

fn winget(exe: &std::path::Path, args: &[&str]) -> Invocation {
    let mut all: Vec<&str> = args.to_vec();
    all.extend_from_slice(WINGET_QUIET);
    Invocation::new(&exe.display().to_string(), &all)
}

/// The package actions: `PackageList` from the registry (what "Apps & features" shows),
/// the others through winget; `unsupported` where winget is missing.
pub fn packages(action: &SafeAction) -> Work {
    if let SafeAction::PackageList = action {
        return Work::Native(Box::new(|_deadline| {
            let programs = installed_programs();
            Ok((
                format!("Found {} packages", programs.len()),
                json!(programs),
            ))
        }));
    }
    let Some(exe) = find_winget() else {
        return Work::Refuse(
            ErrorCode::Unsupported,
            "winget (App Installer) is not installed on this guest: install \"App Installer\" from \
             the Microsoft Store or github.com/microsoft/winget-cli, or manage packages another way"
                .into(),
        );
    };
    let (steps, parse) = match action {
        SafeAction::PackageSearch { query } => {
            (vec![winget(&exe, &["search", "--query", query])], true)
        }
        SafeAction::PackageInstall { package } => (
            vec![winget(
                &exe,
                &[
                    "install",
                    "--id",
                    package,
                    "--exact",
                    "--silent",
                    "--accept-package-agreements",
                ],
            )],
            false,
        ),
        SafeAction::PackageRemove { package } => (
            vec![winget(
                &exe,
                &["uninstall", "--id", package, "--exact", "--silent"],
            )],
            false,
        ),
        SafeAction::PackageUpdate {
            package: Some(package),
        } => (
            vec![winget(
                &exe,
                &[
                    "upgrade",
                    "--id",
                    package,
                    "--exact",
                    "--silent",
                    "--accept-package-agreements",
                ],
            )],
            false,
        ),
        SafeAction::PackageUpdate { package: None } => (
            vec![winget(
                &exe,
                &[
                    "upgrade",
                    "--all",
                    "--silent",
                    "--accept-package-agreements",
                ],
            )],
            false,
        ),
        other => {
            return Work::Refuse(
                ErrorCode::Internal,
                format!("`{}` is not a package action", other.name()),
            );
        }
    };
    let mut programs = Programs::new(steps);
    if parse {
        programs.parse = Some(Box::new(|stdout: &str| {
            let hits = parse_winget_table(stdout);
            (format!("Found {} packages", hits.len()), json!(hits))
        }));
    }
    programs.data = Some(json!({"package_manager": "winget"}));
    Work::Programs(programs)
}

/// One row of a winget table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WingetRow {
    /// Display name.
    pub name: String,
    /// Package id.
    pub id: String,
    /// Version.
    pub version: String,
    /// Source (`winget`, `msstore`), when shown.
    pub source: Option<String>,
}

/// Read winget's table output: a header line (`Name  Id  Version  …`), a line of dashes, then
/// rows whose columns start where the header's words do. Progress lines before the header
/// (spinners, `\r` redraws) are skipped.
pub fn parse_winget_table(stdout: &str) -> Vec<WingetRow> {
    let lines: Vec<&str> = stdout
        .lines()
        .map(|l| l.rsplit('\r').next().unwrap_or(l))
        .collect();
    let Some(header_at) = lines.iter().position(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        words.len() >= 3 && words[1] == "Id" && words[2] == "Version"
    }) else {
        return Vec::new();
    };
    let header: Vec<char> = lines[header_at].chars().collect();
    let starts: Vec<usize> = (0..header.len())
        .filter(|&i| header[i] != ' ' && (i == 0 || header[i - 1] == ' '))
        .collect();
    let names: Vec<String> = starts
        .iter()
        .map(|&s| header[s..].iter().take_while(|c| **c != ' ').collect())
        .collect();
    let column = |row: &[char], index: usize| -> String {
        let start = starts[index].min(row.len());
        let end = starts
            .get(index + 1)
            .copied()
            .unwrap_or(row.len())
            .min(row.len());
        row[start..end].iter().collect::<String>().trim().to_owned()
    };
    let source_index = names.iter().position(|n| n == "Source");
    // A value that runs into the next column (no space at the boundary) cannot be split
    // with certainty, and an id cut short with "…" is no id: such rows are left out.
    let overflows = |row: &[char]| {
        starts[1..]
            .iter()
            .any(|&b| b < row.len() && row[b - 1] != ' ' && row[b] != ' ')
    };
    lines[header_at + 1..]
        .iter()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('-'))
        .filter_map(|line| {
            let row: Vec<char> = line.chars().collect();
            if overflows(&row) {
                return None;
            }
            let id = column(&row, 1);
            if id.is_empty() || id.contains(' ') || id.ends_with('…') {
                return None;
            }
            Some(WingetRow {
                name: column(&row, 0),
                id,
                version: column(&row, 2),
                source: source_index
                    .map(|i| column(&row, i))
                    .filter(|s| !s.is_empty()),
            })
        })
        .collect()
}

/// `Shutdown` / `Reboot`: `InitiateShutdownW` (forcing applications closed: no one is there
/// to answer "save changes?"), after enabling the shutdown privilege the service holds.
pub fn power(reboot: bool, _roots: &Roots) -> Work {
    Work::Native(Box::new(move |_deadline| {
        enable_shutdown_privilege().map_err(|e| {
            (
                ErrorCode::Forbidden,
                format!("cannot enable the shutdown privilege: {e}"),
            )
        })?;
        let message = to_wide("Infinibay: requested by the host");
        let mode = if reboot {
            SHUTDOWN_RESTART
        } else {
            SHUTDOWN_POWEROFF
        };
        // SAFETY: the local machine; a NUL-terminated message.
        let status = unsafe {
            InitiateShutdownW(
                std::ptr::null(),
                message.as_ptr(),
                0,
                mode | SHUTDOWN_FORCE_OTHERS | SHUTDOWN_GRACE_OVERRIDE,
                SHTDN_REASON_MAJOR_OTHER | SHTDN_REASON_MINOR_OTHER | SHTDN_REASON_FLAG_PLANNED,
            )
        };
        if status != 0 {
            return Err((
                ErrorCode::Failed,
                format!(
                    "InitiateShutdown failed: {}",
                    std::io::Error::from_raw_os_error(status as i32)
                ),
            ));
        }
        let what = if reboot { "reboot" } else { "power-off" };
        Ok((format!("{what} started"), json!({ "started": what })))
    }))
}

fn enable_shutdown_privilege() -> std::io::Result<()> {
    let mut token_raw = std::ptr::null_mut();
    // SAFETY: the pseudo-handle of this process and a valid out-pointer.
    if unsafe {
        OpenProcessToken(
            GetCurrentProcess(),
            TOKEN_ADJUST_PRIVILEGES | TOKEN_QUERY,
            &mut token_raw,
        )
    } == 0
    {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a token handle nobody else owns.
    let token = unsafe { OwnedHandle::from_raw_handle(token_raw) };
    let mut luid = LUID::default();
    // SAFETY: a constant privilege name and a valid out-pointer.
    if unsafe { LookupPrivilegeValueW(std::ptr::null(), SE_SHUTDOWN_NAME, &mut luid) } == 0 {
        return Err(std::io::Error::last_os_error());
    }
    let privileges = TOKEN_PRIVILEGES {
        PrivilegeCount: 1,
        Privileges: [LUID_AND_ATTRIBUTES {
            Luid: luid,
            Attributes: SE_PRIVILEGE_ENABLED,
        }],
    };
    // SAFETY: a token with TOKEN_ADJUST_PRIVILEGES and one privilege.
    let ok = unsafe {
        AdjustTokenPrivileges(
            token.as_raw_handle(),
            0,
            &privileges,
            0,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    // SAFETY: reads the calling thread's last error (AdjustTokenPrivileges sets it on success).
    if ok == 0 || unsafe { GetLastError() } == ERROR_NOT_ALL_ASSIGNED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn winget_ids_are_strict() {
        for ok in [
            "Git.Git",
            "Notepad++.Notepad++",
            "9NBLGGH4NNS1",
            "Microsoft.VisualStudioCode",
        ] {
            assert!(is_winget_id(ok), "{ok}");
        }
        for bad in [
            "",
            "-q",
            "a b",
            "x&calc",
            "a:b",
            "a@b",
            "..\\x",
            "a\"b",
            &"a".repeat(129),
        ] {
            assert!(!is_winget_id(bad), "{bad}");
        }
        let install = SafeAction::PackageInstall {
            package: "pkg@evil".into(),
        };
        assert!(validate(&install).is_err());
        assert!(validate(&SafeAction::ServiceList).is_ok());
    }

    #[test]
    fn service_control_takes_windows_service_names_and_refuses_unit_escapes() {
        let control = |service: &str| SafeAction::ServiceControl {
            service: service.into(),
            operation: ServiceOperation::Status,
        };
        for name in [
            "Spooler",
            "MSSQL$SQLEXPRESS",
            "Apple Mobile Device Service",
            "Intel(R) TPM Provisioning Service",
        ] {
            assert_eq!(validate(&control(name)), Ok(()), "{name}");
        }
        for bad in [r"dev-disk-by\x2duuid.service", "a/b", "-x"] {
            assert!(validate(&control(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_winget_table_is_read_by_its_header_columns() {
        let out = "   - \r   \\ \r\
Name                 Id                  Version   Match         Source\n\
-----------------------------------------------------------------------\n\
Git                  Git.Git             2.43.0    Command: git  winget\n\
Visual Studio Code   Microsoft.VisualStudioCode 1.85.1           winget\n\
GitHub Desktop       GitHub.GitHubDesktop 3.3.6                  winget\n";
        let rows = parse_winget_table(out);
        assert_eq!(rows[0].name, "Git");
        assert_eq!(rows[0].id, "Git.Git");
        assert_eq!(rows[0].version, "2.43.0");
        assert_eq!(rows[0].source.as_deref(), Some("winget"));
        // A row whose id runs into the next column is not guessed at.
        assert_eq!(
            rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["Git.Git", "GitHub.GitHubDesktop"]
        );
        assert_eq!(rows[1].version, "3.3.6");
        assert!(parse_winget_table("No package found matching input criteria.\n").is_empty());
    }

    #[test]
    fn signals_windows_cannot_send_are_unsupported_and_the_system_process_is_refused() {
        let hup = kill_process(999_999, false, Some("HUP")).expect_err("no SIGHUP on Windows");
        assert_eq!(hup.0, ErrorCode::Unsupported);
        assert_eq!(
            kill_process(4, true, None).expect_err("System").0,
            ErrorCode::Invalid
        );
        let gone = kill_process(0x7FFF_FFF0, true, None).expect_err("no such pid");
        assert_eq!(gone.0, ErrorCode::Failed, "{}", gone.1);
    }

    #[test]
    fn without_winget_package_changes_are_unsupported_with_the_reason() {
        if find_winget().is_some() {
            return; // a machine with App Installer: the programs path applies
        }
        for action in [
            SafeAction::PackageInstall {
                package: "Git.Git".into(),
            },
            SafeAction::PackageUpdate { package: None },
        ] {
            match packages(&action) {
                Work::Refuse(code, reason) => {
                    assert_eq!(code, ErrorCode::Unsupported);
                    assert!(reason.contains("winget"), "{reason}");
                }
                other => panic!("{other:?}"),
            }
        }
        // The list needs no winget: it is the registry.
        assert!(matches!(
            packages(&SafeAction::PackageList),
            Work::Native(_)
        ));
    }

    #[test]
    fn process_kill_ends_a_child() {
        let mut child = std::process::Command::new("cmd.exe")
            .args(["/C", "ping -n 60 127.0.0.1 >nul"])
            .spawn()
            .expect("spawn");
        let (summary, _) = kill_process(child.id(), false, Some("TERM")).expect("ended");
        assert!(summary.contains(&child.id().to_string()));
        let status = child.wait().expect("reaped");
        assert_eq!(status.code(), Some(1));
    }
}

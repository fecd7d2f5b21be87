//! Commands from the host and the guest's responses.
//!
//! The shapes are the original agent's (`SafeCommand` with `command_type.action`,
//! `UnsafeCommand` with `raw_command`), so that our host can command agents already in the field
//! and the original backend can command ours. Ours adds `argv` for unsafe commands, `signal` for
//! `ProcessKill`, `Shutdown`, and `cancel`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A structured ("safe") action: `command_type` of a `SafeCommand`.
///
/// Decoding never fails on an unknown action name: it becomes [`SafeAction::Unknown`], which an
/// agent answers with `unknown_action`.
#[derive(Debug, Clone, PartialEq)]
pub enum SafeAction {
    /// List services.
    ServiceList,
    /// Start, stop, restart, enable, disable a service, or ask its status.
    ServiceControl {
        /// Service (unit) name.
        service: String,
        /// What to do.
        operation: ServiceOperation,
    },
    /// List installed packages.
    PackageList,
    /// Search the package repositories.
    PackageSearch {
        /// Search term.
        query: String,
    },
    /// Install a package.
    PackageInstall {
        /// Package name.
        package: String,
    },
    /// Remove a package.
    PackageRemove {
        /// Package name.
        package: String,
    },
    /// Upgrade one package, or all when `package` is absent.
    PackageUpdate {
        /// Package name.
        package: Option<String>,
    },
    /// List processes.
    ProcessList {
        /// At most this many.
        limit: Option<usize>,
    },
    /// Top processes by a key.
    ProcessTop {
        /// At most this many.
        limit: Option<usize>,
        /// `cpu` (default) or `memory`.
        sort_by: Option<String>,
    },
    /// Send a signal to a process.
    ProcessKill {
        /// Target process.
        pid: u32,
        /// The original agent's flag: SIGKILL instead of SIGTERM.
        force: Option<bool>,
        /// Signal name (`TERM`, `KILL`, `HUP`, `INT`, `USR1`, `USR2`) or number; wins over `force`.
        signal: Option<String>,
    },
    /// Host name, kernel, architecture, memory, CPUs.
    SystemInfo,
    /// Distribution name and version.
    OsInfo,
    /// Power the guest off.
    Shutdown,
    /// Reboot the guest.
    Reboot,
    /// An action this protocol version does not know.
    Unknown {
        /// The name the host sent.
        action: String,
    },
}

/// Operations of `ServiceControl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceOperation {
    /// `systemctl start`.
    Start,
    /// `systemctl stop`.
    Stop,
    /// `systemctl restart`.
    Restart,
    /// `systemctl enable`.
    Enable,
    /// `systemctl disable`.
    Disable,
    /// `systemctl status`.
    Status,
}

impl ServiceOperation {
    /// The `systemctl` verb.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Restart => "restart",
            Self::Enable => "enable",
            Self::Disable => "disable",
            Self::Status => "status",
        }
    }
}

/// Every action name v1 knows, in the order the docs list them.
pub const KNOWN_SAFE_ACTIONS: &[&str] = &[
    "ServiceList",
    "ServiceControl",
    "PackageList",
    "PackageSearch",
    "PackageInstall",
    "PackageRemove",
    "PackageUpdate",
    "ProcessList",
    "ProcessTop",
    "ProcessKill",
    "SystemInfo",
    "OsInfo",
    "Shutdown",
    "Reboot",
];

/// The serde shape of the known actions; [`SafeAction`] adds `Unknown` on top of it.
#[derive(Serialize, Deserialize)]
#[serde(tag = "action")]
enum KnownAction {
    ServiceList {},
    ServiceControl {
        service: String,
        operation: ServiceOperation,
    },
    PackageList {},
    PackageSearch {
        query: String,
    },
    PackageInstall {
        package: String,
    },
    PackageRemove {
        package: String,
    },
    PackageUpdate {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        package: Option<String>,
    },
    ProcessList {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
    ProcessTop {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sort_by: Option<String>,
    },
    ProcessKill {
        pid: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        force: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<String>,
    },
    SystemInfo {},
    OsInfo {},
    Shutdown {},
    Reboot {},
}

impl SafeAction {
    /// The action's wire name.
    pub fn name(&self) -> &str {
        match self {
            Self::ServiceList => "ServiceList",
            Self::ServiceControl { .. } => "ServiceControl",
            Self::PackageList => "PackageList",
            Self::PackageSearch { .. } => "PackageSearch",
            Self::PackageInstall { .. } => "PackageInstall",
            Self::PackageRemove { .. } => "PackageRemove",
            Self::PackageUpdate { .. } => "PackageUpdate",
            Self::ProcessList { .. } => "ProcessList",
            Self::ProcessTop { .. } => "ProcessTop",
            Self::ProcessKill { .. } => "ProcessKill",
            Self::SystemInfo => "SystemInfo",
            Self::OsInfo => "OsInfo",
            Self::Shutdown => "Shutdown",
            Self::Reboot => "Reboot",
            Self::Unknown { action } => action,
        }
    }

    /// Read `command_type` from its JSON form.
    ///
    /// `Ok(Unknown)` for a well-formed object whose action is not known; `Err` (a reason to
    /// answer `invalid`) when the object is malformed or a known action has bad parameters.
    pub fn from_json(value: serde_json::Value) -> Result<Self, String> {
        let action = match value.get("action") {
            Some(serde_json::Value::String(a)) => a.clone(),
            Some(_) => return Err("`command_type.action` must be a string".into()),
            None => return Err("`command_type.action` is missing".into()),
        };
        if !KNOWN_SAFE_ACTIONS.contains(&action.as_str()) {
            return Ok(Self::Unknown { action });
        }
        let known: KnownAction =
            serde_json::from_value(value).map_err(|e| format!("{action}: {e}"))?;
        Ok(known.into())
    }

    /// Strict parameter checks, done before anything runs (by the agent, and by the host
    /// before it sends). Names that could be read as options, or that fail a strict pattern,
    /// are refused.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Self::ServiceControl { service, .. } => check_service_name_of_any_os(service),
            Self::PackageSearch { query } => check_name("query", query),
            Self::PackageInstall { package } | Self::PackageRemove { package } => {
                check_name("package", package)
            }
            Self::PackageUpdate { package: Some(p) } => check_name("package", p),
            Self::ProcessTop {
                sort_by: Some(key), ..
            } if !matches!(key.as_str(), "cpu" | "memory") => {
                Err(format!("sort_by must be `cpu` or `memory`, not `{key}`"))
            }
            Self::ProcessKill { pid, signal, .. } => {
                if *pid <= 1 {
                    return Err(format!("refusing to signal pid {pid}"));
                }
                match signal {
                    Some(sig) if signal_number(sig).is_none() => {
                        Err(format!("unknown or disallowed signal `{sig}`"))
                    }
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }
}

impl From<KnownAction> for SafeAction {
    fn from(k: KnownAction) -> Self {
        match k {
            KnownAction::ServiceList {} => Self::ServiceList,
            KnownAction::ServiceControl { service, operation } => {
                Self::ServiceControl { service, operation }
            }
            KnownAction::PackageList {} => Self::PackageList,
            KnownAction::PackageSearch { query } => Self::PackageSearch { query },
            KnownAction::PackageInstall { package } => Self::PackageInstall { package },
            KnownAction::PackageRemove { package } => Self::PackageRemove { package },
            KnownAction::PackageUpdate { package } => Self::PackageUpdate { package },
            KnownAction::ProcessList { limit } => Self::ProcessList { limit },
            KnownAction::ProcessTop { limit, sort_by } => Self::ProcessTop { limit, sort_by },
            KnownAction::ProcessKill { pid, force, signal } => {
                Self::ProcessKill { pid, force, signal }
            }
            KnownAction::SystemInfo {} => Self::SystemInfo,
            KnownAction::OsInfo {} => Self::OsInfo,
            KnownAction::Shutdown {} => Self::Shutdown,
            KnownAction::Reboot {} => Self::Reboot,
        }
    }
}

impl Serialize for SafeAction {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let known = match self.clone() {
            Self::ServiceList => KnownAction::ServiceList {},
            Self::ServiceControl { service, operation } => {
                KnownAction::ServiceControl { service, operation }
            }
            Self::PackageList => KnownAction::PackageList {},
            Self::PackageSearch { query } => KnownAction::PackageSearch { query },
            Self::PackageInstall { package } => KnownAction::PackageInstall { package },
            Self::PackageRemove { package } => KnownAction::PackageRemove { package },
            Self::PackageUpdate { package } => KnownAction::PackageUpdate { package },
            Self::ProcessList { limit } => KnownAction::ProcessList { limit },
            Self::ProcessTop { limit, sort_by } => KnownAction::ProcessTop { limit, sort_by },
            Self::ProcessKill { pid, force, signal } => {
                KnownAction::ProcessKill { pid, force, signal }
            }
            Self::SystemInfo => KnownAction::SystemInfo {},
            Self::OsInfo => KnownAction::OsInfo {},
            Self::Shutdown => KnownAction::Shutdown {},
            Self::Reboot => KnownAction::Reboot {},
            Self::Unknown { action } => {
                use serde::ser::SerializeMap;
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("action", &action)?;
                return map.end();
            }
        };
        known.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SafeAction {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        Self::from_json(value).map_err(serde::de::Error::custom)
    }
}

/// Longest service or package name accepted.
pub const MAX_NAME_LEN: usize = 128;

/// A service or package name: starts with an ASCII letter or digit, then letters, digits and
/// `. _ + : @ -`, at most [`MAX_NAME_LEN`] bytes. Covers Debian and RPM package names and
/// systemd unit names (`getty@tty1.service`), and nothing a command line could read as an
/// option, a path or a glob.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let Some(first) = bytes.first() else {
        return Err(format!("{what} is empty"));
    };
    if bytes.len() > MAX_NAME_LEN {
        return Err(format!("{what} is longer than {MAX_NAME_LEN} bytes"));
    }
    if !first.is_ascii_alphanumeric() {
        return Err(format!(
            "{what} `{}` must start with a letter or digit",
            name.escape_debug()
        ));
    }
    if let Some(bad) = bytes
        .iter()
        .find(|b| !(b.is_ascii_alphanumeric() || b"._+:@-".contains(b)))
    {
        return Err(format!(
            "{what} `{}` contains a character that is not allowed ({:?})",
            name.escape_debug(),
            char::from(*bad)
        ));
    }
    Ok(())
}

/// Longest service name accepted: Windows allows 256 characters, systemd 255 bytes.
pub const MAX_SERVICE_NAME_LEN: usize = 256;

/// Whose service names a check follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceNaming {
    /// systemd unit names, as `systemctl` receives them in argv (after `--`, never through a
    /// shell): an ASCII letter or digit, then letters, digits and `. _ + : @ - \`, at most
    /// 255 bytes. `\` is systemd's escape (`systemd-fsck@dev-disk-by\x2duuid-….service`).
    Systemd,
    /// Windows service names, as the Service Control Manager receives them (native calls, no
    /// command line): what Windows allows, at most 256 UTF-16 units and neither `/` nor `\`
    /// (`MSSQL$SQLEXPRESS`, `Apple Mobile Device Service`, `Intel(R) TPM Provisioning Service`),
    /// except control characters (no real service has them; they would forge lines in logs)
    /// and a leading `-` (none has it either, and it reads as an option).
    Windows,
}

/// Checks a `ServiceControl` service name against one OS's rules ([`ServiceNaming`]).
pub fn check_service_name(name: &str, naming: ServiceNaming) -> Result<(), String> {
    let shown = name.escape_debug();
    if name.is_empty() {
        return Err("service is empty".into());
    }
    match naming {
        ServiceNaming::Systemd => {
            if name.len() > MAX_SERVICE_NAME_LEN - 1 {
                return Err(format!(
                    "service `{shown}` is longer than {} bytes",
                    MAX_SERVICE_NAME_LEN - 1
                ));
            }
            if !name.as_bytes()[0].is_ascii_alphanumeric() {
                return Err(format!(
                    "service `{shown}` must start with a letter or digit"
                ));
            }
            match name
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || "._+:@-\\".contains(*c)))
            {
                Some(bad) => Err(format!(
                    "service `{shown}` contains a character a systemd unit name cannot have ({bad:?})"
                )),
                None => Ok(()),
            }
        }
        ServiceNaming::Windows => {
            if name.encode_utf16().count() > MAX_SERVICE_NAME_LEN {
                return Err(format!(
                    "service `{shown}` is longer than {MAX_SERVICE_NAME_LEN} characters"
                ));
            }
            if name.starts_with('-') {
                return Err(format!("service `{shown}` must not start with `-`"));
            }
            match name
                .chars()
                .find(|c| matches!(c, '/' | '\\') || c.is_control())
            {
                Some(bad) => Err(format!(
                    "service `{shown}` contains a character a Windows service name cannot have ({bad:?})"
                )),
                None => Ok(()),
            }
        }
    }
}

/// What the host checks before it sends a `ServiceControl` (it need not know the guest's OS):
/// a name that some OS's rules accept. Each agent then applies its own OS's rules
/// ([`check_service_name`]) and answers `invalid` for the rest.
pub fn check_service_name_of_any_os(name: &str) -> Result<(), String> {
    let systemd = check_service_name(name, ServiceNaming::Systemd);
    if systemd.is_ok() {
        return systemd;
    }
    check_service_name(name, ServiceNaming::Windows)
}

/// Signals `ProcessKill` may send, by name or number.
pub fn signal_number(signal: &str) -> Option<i32> {
    let name = signal
        .trim_start_matches("SIG")
        .trim_start_matches("sig")
        .to_ascii_uppercase();
    let by_name = match name.as_str() {
        "HUP" => Some(1),
        "INT" => Some(2),
        "QUIT" => Some(3),
        "KILL" => Some(9),
        "USR1" => Some(10),
        "USR2" => Some(12),
        "TERM" => Some(15),
        "CONT" => Some(18),
        "STOP" => Some(19),
        _ => None,
    };
    by_name.or_else(|| {
        signal
            .parse::<i32>()
            .ok()
            .filter(|n| [1, 2, 3, 9, 10, 12, 15, 18, 19].contains(n))
    })
}

/// A raw command: a shell string or an argv vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct UnsafeCommand {
    /// Correlates the response.
    pub id: String,
    /// A command line for `shell -c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_command: Option<String>,
    /// Program and arguments, run without a shell. Wins over `raw_command`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// Shell for `raw_command` (`sh` default, `bash`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Seconds; the agent's default (60) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Extra environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_vars: Option<BTreeMap<String, String>>,
}

/// A structured command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SafeCommand {
    /// Correlates the response.
    pub id: String,
    /// What to do.
    pub command_type: SafeAction,
    /// Seconds; the agent's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}

/// Machine-readable reason of a failed command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The agent's policy refuses this command.
    Forbidden,
    /// Parameters failed validation; nothing ran.
    Invalid,
    /// The command ran past its deadline and was killed.
    Timeout,
    /// The host cancelled it.
    Cancelled,
    /// The safe action is not known to this agent.
    UnknownAction,
    /// Too many commands are running; try again.
    Busy,
    /// The action is not available on this guest (no systemd, no package manager).
    Unsupported,
    /// The program could not be started.
    SpawnFailed,
    /// The command ran and failed.
    Failed,
    /// Anything else.
    #[serde(other)]
    Internal,
}

impl ErrorCode {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forbidden => "forbidden",
            Self::Invalid => "invalid",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
            Self::UnknownAction => "unknown_action",
            Self::Busy => "busy",
            Self::Unsupported => "unsupported",
            Self::SpawnFailed => "spawn_failed",
            Self::Failed => "failed",
            Self::Internal => "internal",
        }
    }
}

/// Why a command failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseError {
    /// Stable code.
    pub code: ErrorCode,
    /// Human explanation.
    #[serde(default)]
    pub message: String,
}

/// `response`: the one answer to a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct CommandResponse {
    /// The command's id.
    pub id: String,
    /// Whether it succeeded.
    pub success: bool,
    /// Exit status of the process, when one ran and exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Captured standard output (UTF-8, lossy), capped.
    #[serde(default)]
    pub stdout: String,
    /// Captured standard error, capped.
    #[serde(default)]
    pub stderr: String,
    /// stdout was longer than the cap and was cut.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdout_truncated: bool,
    /// stderr was longer than the cap and was cut.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stderr_truncated: bool,
    /// Structured result of a safe action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// Wall time from receipt to completion.
    #[serde(default)]
    pub execution_time_ms: u64,
    /// Set when `success` is false for a reason other than a non-zero exit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ResponseError>,
    /// `safe` or `unsafe` (the original agent's field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_type: Option<String>,
}

impl CommandResponse {
    /// A failure that ran nothing.
    pub fn failure(id: impl Into<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            success: false,
            error: Some(ResponseError {
                code,
                message: message.into(),
            }),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_action_is_kept_not_rejected() {
        let a = SafeAction::from_json(json!({"action": "FormatDisk"})).expect("decodes");
        assert_eq!(
            a,
            SafeAction::Unknown {
                action: "FormatDisk".into()
            }
        );
        assert_eq!(
            serde_json::to_value(&a).expect("serializes"),
            json!({"action":"FormatDisk"})
        );
    }

    #[test]
    fn known_action_with_bad_params_is_invalid() {
        assert!(SafeAction::from_json(json!({"action":"ProcessKill","pid":"x"})).is_err());
        assert!(SafeAction::from_json(json!({"action":"ServiceControl","service":"ssh"})).is_err());
        assert!(SafeAction::from_json(json!({"noaction":1})).is_err());
    }

    #[test]
    fn option_like_and_odd_names_are_refused() {
        for bad in [
            "-oDebug::NoLocking=1",
            "--purge",
            "",
            "a b",
            "pkg;rm",
            "../x",
            "a*",
            "é",
        ] {
            assert!(check_name("package", bad).is_err(), "{bad:?} accepted");
        }
        for good in [
            "openssh-server",
            "libc6:amd64",
            "g++",
            "getty@tty1.service",
            "python3.11",
        ] {
            assert!(check_name("package", good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn service_names_follow_the_rules_of_their_os() {
        use ServiceNaming::{Systemd, Windows};
        let long_windows = "S".repeat(MAX_SERVICE_NAME_LEN);
        // (name, systemd accepts, Windows accepts)
        let cases: &[(&str, bool, bool)] = &[
            ("ssh.service", true, true),
            ("getty@tty1.service", true, true),
            (
                r"systemd-fsck@dev-disk-by\x2duuid-0a1b.service",
                true,
                false,
            ),
            ("MSSQL$SQLEXPRESS", false, true),
            ("SQLAgent$SQLEXPRESS", false, true),
            ("Apple Mobile Device Service", false, true),
            ("Intel(R) TPM Provisioning Service", false, true),
            ("{4F2A1E3B-0000-4C6D-9E8F-0123456789AB}", false, true),
            ("!SASCORE", false, true),
            ("Dienst für Überwachung", false, true),
            (&long_windows, false, true),
            ("", false, false),
            ("--evil", false, false),
            ("-x", false, false),
            ("a/b", false, false),
            ("../etc", false, false),
            ("line\nbreak", false, false),
            ("nul\0byte", false, false),
            ("tab\there", false, false),
        ];
        for (name, systemd, windows) in cases {
            assert_eq!(
                check_service_name(name, Systemd).is_ok(),
                *systemd,
                "systemd: {name:?} {:?}",
                check_service_name(name, Systemd)
            );
            assert_eq!(
                check_service_name(name, Windows).is_ok(),
                *windows,
                "Windows: {name:?} {:?}",
                check_service_name(name, Windows)
            );
            assert_eq!(
                check_service_name_of_any_os(name).is_ok(),
                *systemd || *windows,
                "any OS: {name:?}"
            );
        }
        let too_long = "S".repeat(MAX_SERVICE_NAME_LEN + 1);
        assert!(check_service_name(&too_long, Windows).is_err());
        assert!(check_service_name(&"s".repeat(MAX_SERVICE_NAME_LEN), Systemd).is_err());
        // 200 characters outside the Basic Multilingual Plane are 400 UTF-16 units.
        assert!(check_service_name(&"😀".repeat(200), Windows).is_err());
    }

    #[test]
    fn service_control_with_a_windows_instance_name_passes_the_protocol_check() {
        let action = SafeAction::from_json(
            json!({"action":"ServiceControl","service":"MSSQL$SQLEXPRESS","operation":"restart"}),
        )
        .expect("decodes");
        assert_eq!(action.validate(), Ok(()));
        let evil = SafeAction::from_json(
            json!({"action":"ServiceControl","service":"--evil","operation":"restart"}),
        )
        .expect("decodes");
        let reason = evil.validate().expect_err("refused");
        assert!(reason.contains("must not start with `-`"), "{reason}");
    }

    #[test]
    fn process_kill_validates_pid_and_signal() {
        let kill = |pid, signal: Option<&str>| SafeAction::ProcessKill {
            pid,
            force: None,
            signal: signal.map(String::from),
        };
        assert!(kill(1, None).validate().is_err());
        assert!(kill(42, Some("SIGSEGV")).validate().is_err());
        assert!(kill(42, Some("TERM")).validate().is_ok());
        assert!(kill(42, Some("9")).validate().is_ok());
    }

    #[test]
    fn unknown_error_codes_read_as_internal() {
        let e: ResponseError =
            serde_json::from_value(json!({"code":"weird","message":"m"})).expect("decodes");
        assert_eq!(e.code, ErrorCode::Internal);
    }
}

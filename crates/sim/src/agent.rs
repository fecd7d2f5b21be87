//! The simulated agent's answers to the host: `hello`, `ping`, commands, `cancel`, `configure`.
//!
//! Answers are plausible and deterministic, not executed: `SystemInfo` describes the simulated
//! guest, `UnsafeCommand` echoes what it would have run. `sleep N` runs for N seconds (honouring
//! the command's timeout and `cancel`), so the host's timeout, cancel and disconnect paths can be
//! exercised against the simulator.

use std::time::Duration;

use infinibay_protocol::message::command::{ServiceNaming, check_service_name};
use infinibay_protocol::message::{
    CommandResponse, Configure, ErrorCode, Pong, SafeAction, SafeCommand, UnsafeCommand,
};
use infinibay_protocol::samples::typical_services;
use infinibay_protocol::{DecodeError, GuestMessage, HostMessage, Timestamp};
use serde_json::json;

use crate::Profile;
use crate::payload::{
    Collectors, Lines, SampleSource, TYPICAL_PROCESSES, TYPICAL_SERVICES, message_line,
    response_line,
};

/// What the agent does about one line from the host.
#[derive(Debug)]
pub enum Reply {
    /// Nothing to send (`welcome`, or a message the original agent does not know).
    Nothing,
    /// Send these lines now.
    Now(Lines),
    /// A command that runs for a while: send `response` after `after`, unless cancelled.
    Later {
        /// The command id.
        id: String,
        /// How long it runs.
        after: Duration,
        /// What it answers when it ends.
        response: CommandResponse,
    },
    /// Stop the running command with this id; it answers `cancelled`.
    Cancel(String),
    /// `configure`: apply these settings, then send the lines.
    Configure {
        /// Sample every `every_ticks` intervals (`None`: unchanged).
        every_ticks: Option<u32>,
        /// New collector switches (`None`: unchanged).
        collectors: Option<Collectors>,
        /// The answer, when the request had an id.
        lines: Lines,
    },
}

/// Longest a simulated `sleep` may run, so a typo cannot hold a command for hours.
pub const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// The agent's default command timeout (seconds) when the command sets none.
pub const DEFAULT_TIMEOUT_SECS: u64 = 60;

/// Answer one decoded host message. `base_interval` is the simulator's interval, the finest
/// `collection_interval` it can honour; `current` is the VM's current setting.
pub fn answer(
    message: HostMessage,
    source: &mut SampleSource,
    base_interval: Duration,
    current: (u32, Collectors),
) -> Reply {
    let profile = source.profile();
    let legacy = profile == Profile::Legacy;
    match message {
        // The original agent knows none of these: it logs and ignores them.
        HostMessage::Hello(_)
        | HostMessage::Ping(_)
        | HostMessage::Cancel(_)
        | HostMessage::Configure(_)
            if legacy =>
        {
            Reply::Nothing
        }
        HostMessage::Welcome(_) => Reply::Nothing,
        HostMessage::Hello(_) => Reply::Now(message_line(&GuestMessage::VmIdentification(
            source.identification(),
        ))),
        HostMessage::Ping(ping) => Reply::Now(message_line(&GuestMessage::Pong(Pong {
            id: ping.id,
            timestamp: Some(Timestamp::now()),
        }))),
        HostMessage::Cancel(cancel) => Reply::Cancel(cancel.id),
        HostMessage::Configure(configure) => apply_configure(configure, base_interval, current),
        HostMessage::SafeCommand(command) => {
            Reply::Now(response_line(profile, safe_command(command, source)))
        }
        HostMessage::UnsafeCommand(command) => unsafe_command(command, source),
    }
}

/// The answer to a line that did not decode: a command whose id could be read gets `invalid`
/// (the host is waiting for it); anything else is only counted.
pub fn answer_bad_line(error: &DecodeError, profile: Profile) -> Option<Lines> {
    match error {
        DecodeError::InvalidMessage {
            kind,
            id: Some(id),
            message,
        } if kind == "SafeCommand" || kind == "UnsafeCommand" => {
            let mut response =
                CommandResponse::failure(id.clone(), ErrorCode::Invalid, message.clone());
            response.command_type = Some(command_type_of(kind).into());
            Some(response_line(profile, response))
        }
        _ => None,
    }
}

fn command_type_of(kind: &str) -> &'static str {
    if kind == "UnsafeCommand" {
        "unsafe"
    } else {
        "safe"
    }
}

fn apply_configure(configure: Configure, base: Duration, current: (u32, Collectors)) -> Reply {
    let every_ticks = configure.collection_interval.map(|secs| {
        let wanted = Duration::from_secs(secs.max(1));
        let ticks = (wanted.as_secs_f64() / base.as_secs_f64()).round();
        ticks.clamp(1.0, u32::MAX as f64) as u32
    });
    let collectors = configure.collectors.as_ref().map(|switches| {
        let mut c = current.1;
        if let Some(on) = switches.system_metrics {
            c.system_metrics = on;
        }
        if let Some(on) = switches.process_snapshot {
            c.process_snapshot = on;
        }
        if let Some(on) = switches.service_inventory {
            c.service_inventory = on;
        }
        if let Some(on) = switches.port_usage {
            c.port_usage = on;
        }
        c
    });
    let lines = match &configure.id {
        Some(id) => {
            let ticks = every_ticks.unwrap_or(current.0);
            let effective = collectors.unwrap_or(current.1);
            let response = CommandResponse {
                id: id.clone(),
                success: true,
                data: Some(json!({
                    "collection_interval_secs": base.as_secs_f64() * f64::from(ticks),
                    "inventory_interval_secs": base.as_secs_f64() * f64::from(ticks),
                    "collectors": {
                        "system_metrics": effective.system_metrics,
                        "process_snapshot": effective.process_snapshot,
                        "service_inventory": effective.service_inventory,
                        "port_usage": effective.port_usage,
                        "application_usage": false,
                    },
                })),
                ..CommandResponse::default()
            };
            message_line(&GuestMessage::Response(response))
        }
        None => Lines::default(),
    };
    Reply::Configure {
        every_ticks,
        collectors,
        lines,
    }
}

fn success(
    id: String,
    stdout: impl Into<String>,
    data: Option<serde_json::Value>,
) -> CommandResponse {
    CommandResponse {
        id,
        success: true,
        exit_code: Some(0),
        stdout: stdout.into(),
        data,
        command_type: Some("safe".into()),
        ..CommandResponse::default()
    }
}

fn safe_command(command: SafeCommand, source: &mut SampleSource) -> CommandResponse {
    let id = command.id;
    // The simulated guest is a Debian one: its service names are systemd's, as on a real
    // Linux agent.
    let systemd_name = |action: &SafeAction| match action {
        SafeAction::ServiceControl { service, .. } => {
            check_service_name(service, ServiceNaming::Systemd)
        }
        _ => Ok(()),
    };
    if let Err(reason) = command
        .command_type
        .validate()
        .and_then(|()| systemd_name(&command.command_type))
    {
        let mut response = CommandResponse::failure(id, ErrorCode::Invalid, reason);
        response.command_type = Some("safe".into());
        return response;
    }
    let hostname = source.hostname().to_owned();
    match command.command_type {
        SafeAction::SystemInfo => success(
            id,
            "System information retrieved successfully",
            Some(json!({
                "hostname": hostname,
                "os_type": "Linux",
                "linux_distro": "Debian",
                "version": "Debian GNU/Linux 12 (bookworm)",
                "kernel_version": "6.1.0-27-cloud-amd64",
                "architecture": "x86_64",
                "cpu_count": 2,
                "memory_total_kb": 4_028_440,
                "windows_edition": null,
            })),
        ),
        SafeAction::OsInfo => success(
            id,
            "OS information retrieved successfully",
            Some(json!({
                "name": "Debian GNU/Linux",
                "version": "12 (bookworm)",
                "id": "debian",
                "kernel": "6.1.0-27-cloud-amd64",
            })),
        ),
        SafeAction::ServiceList => {
            let services = typical_services(TYPICAL_SERVICES).services;
            success(
                id,
                format!("Found {} services", services.len()),
                serde_json::to_value(services).ok(),
            )
        }
        SafeAction::ServiceControl { service, operation } => success(
            id,
            format!("{} {service}: done", operation.as_str()),
            Some(json!({ "service": service, "operation": operation.as_str() })),
        ),
        SafeAction::PackageList => success(
            id,
            "Found 3 packages",
            Some(json!([
                {"name": "openssh-server", "version": "1:9.2p1-2+deb12u3"},
                {"name": "nginx", "version": "1.22.1-9"},
                {"name": "postgresql-15", "version": "15.8-0+deb12u1"},
            ])),
        ),
        SafeAction::PackageSearch { query } => success(
            id,
            format!("Found 1 package matching {query}"),
            Some(json!([{ "name": query, "version": "1.0-1" }])),
        ),
        SafeAction::PackageInstall { package } => {
            success(id, format!("Setting up {package} (1.0-1) ..."), None)
        }
        SafeAction::PackageRemove { package } => {
            success(id, format!("Removing {package} (1.0-1) ..."), None)
        }
        SafeAction::PackageUpdate { package } => success(
            id,
            match package {
                Some(p) => format!("{p} is already the newest version"),
                None => "0 upgraded, 0 newly installed, 0 to remove".into(),
            },
            None,
        ),
        SafeAction::ProcessList { limit } | SafeAction::ProcessTop { limit, .. } => {
            let mut processes = source.processes(TYPICAL_PROCESSES).processes;
            processes.truncate(limit.unwrap_or(TYPICAL_PROCESSES));
            success(
                id,
                format!("Found {} processes", processes.len()),
                serde_json::to_value(processes).ok(),
            )
        }
        SafeAction::ProcessKill { pid, .. } => {
            // The simulated guest's pids are 100, 107, 114, … (see `samples::typical_processes`).
            let exists =
                pid >= 100 && (pid - 100) % 7 == 0 && (pid - 100) / 7 < TYPICAL_PROCESSES as u32;
            if exists {
                success(id, format!("Signal sent to process {pid}"), None)
            } else {
                let mut response = CommandResponse::failure(
                    id,
                    ErrorCode::Failed,
                    format!("no process with pid {pid}"),
                );
                response.command_type = Some("safe".into());
                response
            }
        }
        SafeAction::Shutdown | SafeAction::Reboot => {
            success(id, "System going down (simulated)", None)
        }
        SafeAction::Unknown { action } => {
            let mut response = CommandResponse::failure(
                id,
                ErrorCode::UnknownAction,
                format!("unknown action `{action}`"),
            );
            response.command_type = Some("safe".into());
            response
        }
    }
}

fn unsafe_command(command: UnsafeCommand, source: &SampleSource) -> Reply {
    let profile = source.profile();
    let text = match (&command.argv, &command.raw_command) {
        (Some(argv), _) if !argv.is_empty() => argv.join(" "),
        (_, Some(raw)) if !raw.trim().is_empty() => raw.clone(),
        _ => {
            let mut response = CommandResponse::failure(
                command.id,
                ErrorCode::Invalid,
                "neither `argv` nor `raw_command` given",
            );
            response.command_type = Some("unsafe".into());
            return Reply::Now(response_line(profile, response));
        }
    };
    let id = command.id;
    let mut words = text.split_whitespace();
    let program = words.next().unwrap_or_default();
    let rest: Vec<&str> = words.collect();

    if program == "sleep"
        && let Some(secs) = rest.first().and_then(|s| s.parse::<f64>().ok())
        && secs.is_finite()
        && secs >= 0.0
    {
        let runs_for = Duration::from_secs_f64(secs).min(MAX_SLEEP);
        let timeout = Duration::from_secs(command.timeout.unwrap_or(DEFAULT_TIMEOUT_SECS));
        let response = if runs_for > timeout {
            let mut r = CommandResponse::failure(
                id.clone(),
                ErrorCode::Timeout,
                format!("killed after the {}s timeout", timeout.as_secs()),
            );
            r.execution_time_ms = timeout.as_millis() as u64;
            r
        } else {
            CommandResponse {
                id: id.clone(),
                success: true,
                exit_code: Some(0),
                execution_time_ms: runs_for.as_millis() as u64,
                ..CommandResponse::default()
            }
        };
        let mut response = response;
        response.command_type = Some("unsafe".into());
        return Reply::Later {
            id,
            after: runs_for.min(timeout),
            response,
        };
    }

    let (exit_code, stdout) = match program {
        "echo" => (0, format!("{}\n", rest.join(" "))),
        "true" => (0, String::new()),
        "false" => (1, String::new()),
        "hostname" => (0, format!("{}\n", source.hostname())),
        "uname" => (0, "Linux\n".into()),
        _ => (0, format!("{}: simulated `{text}`\n", source.hostname())),
    };
    let response = CommandResponse {
        id,
        success: exit_code == 0,
        exit_code: Some(exit_code),
        stdout,
        command_type: Some("unsafe".into()),
        ..CommandResponse::default()
    };
    Reply::Now(response_line(profile, response))
}

/// The `cancelled` answer of a running command.
pub fn cancelled(id: String, profile: Profile) -> Lines {
    let mut response = CommandResponse::failure(id, ErrorCode::Cancelled, "cancelled by the host");
    response.command_type = Some("unsafe".into());
    response_line(profile, response)
}

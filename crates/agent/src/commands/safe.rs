//! `SafeCommand`: structured actions, validated strictly before anything runs and executed with
//! argv, never through a shell.

use std::time::{Duration, Instant};

use infinibay_protocol::message::command::signal_number;
use infinibay_protocol::message::{
    CommandResponse, ErrorCode, ProcessInfo, SafeAction, SafeCommand,
};
use serde_json::json;
use tokio::sync::oneshot;

use super::{Plan, elapsed_ms, exec_response, refused, run_steps, spawn_failed};
use crate::config::Limits;
use crate::platform::actions::{self, Invocation, PackageManager};
use crate::platform::collect::Collector;
use crate::platform::exec::ExecSpec;
use crate::platform::info;
use crate::policy::Policy;

const COMMAND_TYPE: &str = "safe";

/// Most processes `ProcessList` / `ProcessTop` return.
const MAX_PROCESS_LIMIT: usize = 4096;

/// Delay between answering `Shutdown`/`Reboot` and doing it, so the response reaches the host.
const POWER_DELAY: Duration = Duration::from_secs(2);

/// Decide what to do with a safe command. Order: unknown action, validation, policy — so a
/// malformed request is `invalid` whatever the policy, and nothing runs before all three pass.
pub fn plan(
    command: SafeCommand,
    received: Instant,
    policy: &Policy,
    limits: &Limits,
    collector: &mut Collector,
    cancel: oneshot::Receiver<()>,
) -> Plan {
    let id = command.id.as_str();
    let action = &command.command_type;
    if let SafeAction::Unknown { action } = action {
        return Plan::Done(refused(
            id,
            ErrorCode::UnknownAction,
            format!("unknown safe action `{action}`"),
            COMMAND_TYPE,
        ));
    }
    if let Err(reason) = action.validate() {
        return Plan::Done(refused(id, ErrorCode::Invalid, reason, COMMAND_TYPE));
    }
    if let Err(reason) = policy.check_safe(action) {
        return Plan::Done(refused(id, ErrorCode::Forbidden, reason, COMMAND_TYPE));
    }
    let timeout = super::effective_timeout(command.timeout, limits);
    let spec = |inv: Invocation| ExecSpec {
        program: inv.program,
        args: inv.args,
        env: inv.env,
        working_dir: None,
        timeout,
        max_output: limits.max_output_bytes,
    };
    let roots = collector.roots().clone();
    match action.clone() {
        SafeAction::ProcessList { limit } => {
            let limit = limit.unwrap_or(MAX_PROCESS_LIMIT).min(MAX_PROCESS_LIMIT);
            let snapshot = collector.process_snapshot(limit);
            Plan::Done(with_data(
                id,
                received,
                format!("Found {} processes", snapshot.processes.len()),
                json!(snapshot.processes),
            ))
        }
        SafeAction::ProcessTop { limit, sort_by } => {
            let limit = limit.unwrap_or(10).min(MAX_PROCESS_LIMIT);
            let mut processes = collector.process_snapshot(MAX_PROCESS_LIMIT).processes;
            sort_processes(&mut processes, sort_by.as_deref());
            processes.truncate(limit);
            Plan::Done(with_data(
                id,
                received,
                format!("Top {} processes", processes.len()),
                json!(processes),
            ))
        }
        SafeAction::ProcessKill { pid, force, signal } => {
            let sig = match signal.as_deref() {
                Some(s) => signal_number(s).unwrap_or(libc::SIGTERM),
                None if force == Some(true) => libc::SIGKILL,
                None => libc::SIGTERM,
            };
            if pid == std::process::id() {
                return Plan::Done(refused(
                    id,
                    ErrorCode::Invalid,
                    "refusing to signal the agent itself",
                    COMMAND_TYPE,
                ));
            }
            match actions::send_signal(pid, sig) {
                Ok(()) => Plan::Done(with_data(
                    id,
                    received,
                    format!("Sent signal {sig} to process {pid}"),
                    json!({"pid": pid, "signal": sig}),
                )),
                Err(e) => {
                    let code = match e.raw_os_error() {
                        Some(libc::EPERM) => ErrorCode::Forbidden,
                        _ => ErrorCode::Failed,
                    };
                    Plan::Done(CommandResponse {
                        execution_time_ms: elapsed_ms(received),
                        ..refused(
                            id,
                            code,
                            format!("cannot signal process {pid}: {e}"),
                            COMMAND_TYPE,
                        )
                    })
                }
            }
        }
        SafeAction::SystemInfo => {
            let u = info::uname();
            let mem = info::memory_and_uptime();
            let os = info::os_release(&roots.root);
            Plan::Done(with_data(
                id,
                received,
                "System information retrieved successfully".into(),
                json!({
                    "hostname": u.nodename,
                    "kernel_version": u.release,
                    "architecture": u.machine,
                    "os_type": u.sysname,
                    "linux_distro": os.get("NAME"),
                    "version": os.get("PRETTY_NAME"),
                    "cpu_count": info::cpu_count(),
                    "total_memory_kb": mem.total_memory_kb,
                    "uptime_seconds": mem.uptime_seconds,
                    "package_manager": PackageManager::detect(),
                    "systemd": actions::systemd_running(&roots.root),
                }),
            ))
        }
        SafeAction::OsInfo => {
            let u = info::uname();
            let os = info::os_release(&roots.root);
            Plan::Done(with_data(
                id,
                received,
                "OS information retrieved successfully".into(),
                json!({
                    "os_type": u.sysname,
                    "name": os.get("NAME"),
                    "pretty_name": os.get("PRETTY_NAME"),
                    "id": os.get("ID"),
                    "version": os.get("VERSION"),
                    "version_id": os.get("VERSION_ID"),
                    "kernel_version": u.release,
                    "architecture": u.machine,
                }),
            ))
        }
        SafeAction::ServiceList => {
            let services = collector.services().services;
            Plan::Done(with_data(
                id,
                received,
                format!("Found {} services", services.len()),
                json!(services),
            ))
        }
        SafeAction::ServiceControl { service, operation } => {
            if !actions::systemd_running(&roots.root) {
                return Plan::Done(refused(
                    id,
                    ErrorCode::Unsupported,
                    "systemd is not the init system of this guest (no /run/systemd/system)",
                    COMMAND_TYPE,
                ));
            }
            let step = spec(actions::service_control(&service, operation));
            let id = id.to_owned();
            Plan::Run(Box::pin(async move {
                match run_steps(vec![step], cancel).await {
                    Ok(outcome) => {
                        let mut r = exec_response(&id, COMMAND_TYPE, received, outcome, |c| {
                            actions::service_control_succeeded(operation, c)
                        });
                        r.data = Some(json!({"service": service, "operation": operation}));
                        r
                    }
                    Err(e) => spawn_failed(&id, COMMAND_TYPE, received, &e),
                }
            }))
        }
        SafeAction::PackageList
        | SafeAction::PackageSearch { .. }
        | SafeAction::PackageInstall { .. }
        | SafeAction::PackageRemove { .. }
        | SafeAction::PackageUpdate { .. } => {
            let Some(manager) = PackageManager::detect() else {
                return Plan::Done(refused(
                    id,
                    ErrorCode::Unsupported,
                    "no supported package manager (apt-get/dpkg, dnf, yum) on this guest",
                    COMMAND_TYPE,
                ));
            };
            let (steps, parse): (Vec<Invocation>, Parse) = match action.clone() {
                SafeAction::PackageList => (vec![manager.list()], Parse::List),
                SafeAction::PackageSearch { query } => {
                    (vec![manager.search(&query)], Parse::Search)
                }
                SafeAction::PackageInstall { package } => {
                    (vec![manager.install(&package)], Parse::None)
                }
                SafeAction::PackageRemove { package } => {
                    (vec![manager.remove(&package)], Parse::None)
                }
                SafeAction::PackageUpdate { package } => {
                    (manager.update(package.as_deref()), Parse::None)
                }
                _ => (Vec::new(), Parse::None),
            };
            let steps: Vec<ExecSpec> = steps.into_iter().map(spec).collect();
            let id = id.to_owned();
            Plan::Run(Box::pin(async move {
                match run_steps(steps, cancel).await {
                    Ok(outcome) => {
                        let mut r = exec_response(&id, COMMAND_TYPE, received, outcome, |c| c == 0);
                        parse.apply(manager, &mut r);
                        r
                    }
                    Err(e) => spawn_failed(&id, COMMAND_TYPE, received, &e),
                }
            }))
        }
        SafeAction::Shutdown | SafeAction::Reboot => {
            let reboot = matches!(action, SafeAction::Reboot);
            let step = spec(actions::power(reboot, &roots.root));
            let what = if reboot { "reboot" } else { "power-off" };
            let response = with_data(
                id,
                received,
                format!("{what} in {} s", POWER_DELAY.as_secs()),
                json!({"scheduled": what, "delay_seconds": POWER_DELAY.as_secs(), "program": step.program}),
            );
            let id = id.to_owned();
            Plan::RespondThenRun(
                response.clone(),
                Box::pin(async move {
                    // The host may still cancel during the delay; run_steps sees that cancel
                    // before it spawns anything.
                    let mut cancel = cancel;
                    tokio::select! {
                        () = tokio::time::sleep(POWER_DELAY) => {}
                        _ = &mut cancel => {
                            return refused(&id, ErrorCode::Cancelled, "cancelled before it ran", COMMAND_TYPE);
                        }
                    }
                    match run_steps(vec![step], cancel).await {
                        Ok(outcome) => {
                            exec_response(&id, COMMAND_TYPE, received, outcome, |c| c == 0)
                        }
                        Err(e) => spawn_failed(&id, COMMAND_TYPE, received, &e),
                    }
                }),
            )
        }
        SafeAction::Unknown { .. } => Plan::Done(refused(
            id,
            ErrorCode::UnknownAction,
            "unknown safe action",
            COMMAND_TYPE,
        )),
    }
}

/// What to make of a package tool's stdout.
#[derive(Debug, Clone, Copy)]
enum Parse {
    None,
    List,
    Search,
}

impl Parse {
    fn apply(self, manager: PackageManager, response: &mut CommandResponse) {
        if !response.success {
            return;
        }
        let data = match self {
            Self::None => return,
            Self::List => {
                let packages = manager.parse_list(&response.stdout);
                response.stdout = format!("Found {} packages", packages.len());
                json!(packages)
            }
            Self::Search => {
                let hits = manager.parse_search(&response.stdout);
                response.stdout = format!("Found {} packages", hits.len());
                json!(hits)
            }
        };
        response.data = Some(data);
    }
}

fn with_data(
    id: &str,
    received: Instant,
    summary: String,
    data: serde_json::Value,
) -> CommandResponse {
    CommandResponse {
        id: id.to_owned(),
        success: true,
        exit_code: Some(0),
        stdout: summary,
        data: Some(data),
        execution_time_ms: elapsed_ms(received),
        command_type: Some(COMMAND_TYPE.into()),
        ..CommandResponse::default()
    }
}

/// Order for `ProcessTop`: CPU (then memory), or memory (then CPU).
pub fn sort_processes(processes: &mut [ProcessInfo], sort_by: Option<&str>) {
    let by_memory = sort_by == Some("memory");
    processes.sort_by(|a, b| {
        let cpu = b.cpu_percent.total_cmp(&a.cpu_percent);
        let mem = b.memory_kb.cmp(&a.memory_kb);
        if by_memory {
            mem.then(cpu)
        } else {
            cpu.then(mem)
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::collect::Roots;

    fn p(pid: u32, cpu: f64, mem: u64) -> ProcessInfo {
        ProcessInfo {
            pid,
            cpu_percent: cpu,
            memory_kb: mem,
            ..ProcessInfo::default()
        }
    }

    #[test]
    fn process_top_sorts_by_cpu_or_memory() {
        let mut v = vec![p(1, 1.0, 500), p(2, 9.0, 10), p(3, 1.0, 900)];
        sort_processes(&mut v, None);
        assert_eq!(v.iter().map(|p| p.pid).collect::<Vec<_>>(), [2, 3, 1]);
        sort_processes(&mut v, Some("memory"));
        assert_eq!(v.iter().map(|p| p.pid).collect::<Vec<_>>(), [3, 1, 2]);
    }

    fn plan_for(action: serde_json::Value, policy: &Policy) -> Plan {
        let command = SafeCommand {
            id: "t".into(),
            command_type: SafeAction::from_json(action).expect("decodes"),
            timeout: None,
        };
        let (_tx, rx) = oneshot::channel();
        let mut collector = Collector::new(Roots::default());
        plan(
            command,
            Instant::now(),
            policy,
            &Limits::default(),
            &mut collector,
            rx,
        )
    }

    fn code(plan: &Plan) -> Option<ErrorCode> {
        match plan {
            Plan::Done(r) => r.error.as_ref().map(|e| e.code),
            _ => None,
        }
    }

    #[test]
    fn option_like_package_is_invalid_even_when_the_action_is_denied() {
        let policy = Policy::new(crate::config::PolicyConfig {
            denied_safe_actions: vec!["PackageInstall".into()],
            ..Default::default()
        });
        let plan = plan_for(
            json!({"action":"PackageInstall","package":"-oDebug::NoLocking=1"}),
            &policy,
        );
        assert_eq!(code(&plan), Some(ErrorCode::Invalid));
    }

    #[test]
    fn denied_power_actions_are_forbidden_and_nothing_is_scheduled() {
        let policy = Policy::new(crate::config::PolicyConfig {
            denied_safe_actions: vec!["Shutdown".into(), "Reboot".into()],
            ..Default::default()
        });
        for action in ["Shutdown", "Reboot"] {
            let plan = plan_for(json!({ "action": action }), &policy);
            assert_eq!(code(&plan), Some(ErrorCode::Forbidden), "{action}");
        }
    }

    #[test]
    fn unknown_action_is_answered_unknown_action() {
        let plan = plan_for(json!({"action":"FormatDisk"}), &Policy::default());
        assert_eq!(code(&plan), Some(ErrorCode::UnknownAction));
    }

    #[test]
    fn killing_pid_1_or_the_agent_is_refused() {
        let plan1 = plan_for(json!({"action":"ProcessKill","pid":1}), &Policy::default());
        assert_eq!(code(&plan1), Some(ErrorCode::Invalid));
        let me = plan_for(
            json!({"action":"ProcessKill","pid":std::process::id()}),
            &Policy::default(),
        );
        assert_eq!(code(&me), Some(ErrorCode::Invalid));
    }
}

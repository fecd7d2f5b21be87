//! `SafeCommand`: structured actions, validated strictly before anything runs and executed
//! without a shell: programs by argv, or native OS calls. What each action does on an OS is
//! `platform::actions`; the checks, the deadline, cancellation and the response are here.

use std::time::{Duration, Instant};

use infinibay_protocol::message::{
    CommandResponse, ErrorCode, ProcessInfo, SafeAction, SafeCommand,
};
use serde_json::json;
use tokio::sync::oneshot;

use super::{
    CommandFuture, Plan, Programs, Work, cancelled, elapsed_ms, exec_response, refused, run_steps,
    spawn_failed,
};
use crate::config::Limits;
use crate::exec::ExecSpec;
use crate::platform::actions;
use crate::platform::collect::Collector;
use crate::platform::info;
use crate::policy::Policy;

const COMMAND_TYPE: &str = "safe";

/// Most processes `ProcessList` / `ProcessTop` return.
const MAX_PROCESS_LIMIT: usize = 4096;

/// Delay between answering `Shutdown`/`Reboot` and doing it, so the response reaches the host.
const POWER_DELAY: Duration = Duration::from_secs(2);

/// Decide what to do with a safe command. Order: unknown action, validation (the protocol's,
/// then the OS's own, e.g. winget ids), policy — so a malformed request is `invalid` whatever
/// the policy, and nothing runs before all of them pass.
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
    if let Err(reason) = action.validate().and_then(|()| actions::validate(action)) {
        return Plan::Done(refused(id, ErrorCode::Invalid, reason, COMMAND_TYPE));
    }
    if let Err(reason) = policy.check_safe(action) {
        return Plan::Done(refused(id, ErrorCode::Forbidden, reason, COMMAND_TYPE));
    }
    let timeout = super::effective_timeout(command.timeout, limits);
    let run = Runner {
        id: id.to_owned(),
        received,
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
            if pid == std::process::id() {
                return Plan::Done(refused(
                    id,
                    ErrorCode::Invalid,
                    "refusing to signal the agent itself",
                    COMMAND_TYPE,
                ));
            }
            match actions::kill_process(pid, force == Some(true), signal.as_deref()) {
                Ok((summary, data)) => Plan::Done(with_data(id, received, summary, data)),
                Err((code, message)) => Plan::Done(CommandResponse {
                    execution_time_ms: elapsed_ms(received),
                    ..refused(id, code, message, COMMAND_TYPE)
                }),
            }
        }
        SafeAction::SystemInfo => Plan::Done(with_data(
            id,
            received,
            "System information retrieved successfully".into(),
            info::system_info(&roots),
        )),
        SafeAction::OsInfo => Plan::Done(with_data(
            id,
            received,
            "OS information retrieved successfully".into(),
            info::os_info(&roots),
        )),
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
            let data = json!({"service": service, "operation": operation});
            run.plan(
                actions::service_control(&service, operation, &roots),
                Some(data),
                cancel,
            )
        }
        SafeAction::PackageList
        | SafeAction::PackageSearch { .. }
        | SafeAction::PackageInstall { .. }
        | SafeAction::PackageRemove { .. }
        | SafeAction::PackageUpdate { .. } => run.plan(actions::packages(action), None, cancel),
        SafeAction::Shutdown | SafeAction::Reboot => {
            let reboot = matches!(action, SafeAction::Reboot);
            let what = if reboot { "reboot" } else { "power-off" };
            let work = actions::power(reboot, &roots);
            if let Work::Refuse(code, message) = work {
                return Plan::Done(refused(id, code, message, COMMAND_TYPE));
            }
            let response = with_data(
                id,
                received,
                format!("{what} in {} s", POWER_DELAY.as_secs()),
                json!({"scheduled": what, "delay_seconds": POWER_DELAY.as_secs()}),
            );
            Plan::RespondThenRun(
                response,
                Box::pin(async move {
                    // The host may still cancel during the delay; nothing is started then.
                    let mut cancel = cancel;
                    tokio::select! {
                        () = tokio::time::sleep(POWER_DELAY) => {}
                        _ = &mut cancel => {
                            return refused(&run.id, ErrorCode::Cancelled, "cancelled before it ran", COMMAND_TYPE);
                        }
                    }
                    run.future(work, None, cancel).await
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

/// What every piece of [`Work`] needs to become a response.
struct Runner {
    id: String,
    received: Instant,
    timeout: Duration,
    max_output: usize,
}

impl Runner {
    /// The plan for `work`: answered at once, or a task. `data` is the response's `data`
    /// when the work itself gives none.
    fn plan(
        self,
        work: Work,
        data: Option<serde_json::Value>,
        cancel: oneshot::Receiver<()>,
    ) -> Plan {
        match work {
            Work::Refuse(code, message) => Plan::Done(CommandResponse {
                execution_time_ms: elapsed_ms(self.received),
                ..refused(&self.id, code, message, COMMAND_TYPE)
            }),
            Work::Answer { summary, data } => {
                Plan::Done(with_data(&self.id, self.received, summary, data))
            }
            work => Plan::Run(self.future(work, data, cancel)),
        }
    }

    fn future(
        self,
        work: Work,
        data: Option<serde_json::Value>,
        cancel: oneshot::Receiver<()>,
    ) -> CommandFuture {
        Box::pin(async move {
            let Runner {
                id,
                received,
                timeout,
                max_output,
            } = self;
            match work {
                Work::Refuse(code, message) => CommandResponse {
                    execution_time_ms: elapsed_ms(received),
                    ..refused(&id, code, message, COMMAND_TYPE)
                },
                Work::Answer { summary, data } => with_data(&id, received, summary, data),
                Work::Programs(programs) => {
                    let Programs {
                        steps,
                        succeeded,
                        parse,
                        data: own_data,
                    } = programs;
                    let steps = steps
                        .into_iter()
                        .map(|step| ExecSpec::of(step, timeout, max_output))
                        .collect();
                    match run_steps(steps, cancel).await {
                        Ok(outcome) => {
                            let mut r =
                                exec_response(&id, COMMAND_TYPE, received, outcome, succeeded);
                            if let (true, Some(parse)) = (r.success, parse) {
                                let (summary, parsed) = parse(&r.stdout);
                                r.stdout = summary;
                                r.data = Some(parsed);
                            } else {
                                r.data = own_data.or(data);
                            }
                            r
                        }
                        Err(e) => spawn_failed(&id, COMMAND_TYPE, received, &e),
                    }
                }
                Work::Native(call) => {
                    let deadline = Instant::now() + timeout;
                    let task = tokio::task::spawn_blocking(move || call(deadline));
                    let cancel = cancelled(cancel);
                    tokio::select! {
                        joined = task => match joined {
                            Ok(Ok((summary, native_data))) => {
                                with_data(&id, received, summary, native_data)
                            }
                            Ok(Err((code, message))) => CommandResponse {
                                execution_time_ms: elapsed_ms(received),
                                data,
                                ..refused(&id, code, message, COMMAND_TYPE)
                            },
                            Err(e) => CommandResponse {
                                execution_time_ms: elapsed_ms(received),
                                ..refused(&id, ErrorCode::Internal, e.to_string(), COMMAND_TYPE)
                            },
                        },
                        () = tokio::time::sleep(timeout) => CommandResponse {
                            execution_time_ms: elapsed_ms(received),
                            ..refused(&id, ErrorCode::Timeout, format!("the OS did not finish within {} s", timeout.as_secs()), COMMAND_TYPE)
                        },
                        () = cancel => CommandResponse {
                            execution_time_ms: elapsed_ms(received),
                            ..refused(&id, ErrorCode::Cancelled, "cancelled by the host; what the OS had started is not undone", COMMAND_TYPE)
                        },
                    }
                }
            }
        })
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

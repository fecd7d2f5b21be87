//! `UnsafeCommand`: a shell string or an argv, only when the policy allows raw commands.
//! Runs as a process tree of its own (a process group, a Job Object) with a deadline; on
//! timeout or cancel the whole tree dies.

use std::path::{Path, PathBuf};
use std::time::Instant;

use infinibay_protocol::message::{ErrorCode, UnsafeCommand};
use tokio::sync::oneshot;

use super::{Plan, exec_response, refused, run_steps, spawn_failed};
use crate::config::Limits;
use crate::exec::{ArgStyle, ExecSpec};
use crate::platform::exec::shell_command;
use crate::policy::Policy;

const COMMAND_TYPE: &str = "unsafe";

/// Decide what to do with an unsafe command: policy first (a refused command is not even
/// looked at), then validation.
pub fn plan(
    command: UnsafeCommand,
    received: Instant,
    policy: &Policy,
    limits: &Limits,
    cancel: oneshot::Receiver<()>,
) -> Plan {
    let id = command.id.clone();
    if let Err(reason) = policy.check_unsafe() {
        return Plan::Done(refused(&id, ErrorCode::Forbidden, reason, COMMAND_TYPE));
    }
    let spec = match to_spec(&command, limits) {
        Ok(spec) => spec,
        Err(reason) => return Plan::Done(refused(&id, ErrorCode::Invalid, reason, COMMAND_TYPE)),
    };
    Plan::Run(Box::pin(async move {
        match run_steps(vec![spec], cancel).await {
            Ok(outcome) => exec_response(&id, COMMAND_TYPE, received, outcome, |c| c == 0),
            Err(e) => spawn_failed(&id, COMMAND_TYPE, received, &e),
        }
    }))
}

/// Check a command and turn it into what to execute.
pub fn to_spec(command: &UnsafeCommand, limits: &Limits) -> Result<ExecSpec, String> {
    let (program, args, arg_style) = match (&command.argv, &command.raw_command) {
        (Some(argv), _) => {
            let (program, args) = argv
                .split_first()
                .ok_or_else(|| "`argv` is empty".to_string())?;
            if program.is_empty() {
                return Err("`argv[0]` is empty".into());
            }
            (program.clone(), args.to_vec(), ArgStyle::Separate)
        }
        (None, Some(raw)) => {
            if raw.trim().is_empty() {
                return Err("`raw_command` is empty".into());
            }
            shell_command(command.shell.as_deref(), raw)?
        }
        (None, None) => return Err("neither `raw_command` nor `argv` given".into()),
    };
    if std::iter::once(&program)
        .chain(&args)
        .any(|a| a.contains('\0'))
    {
        return Err("arguments must not contain NUL".into());
    }
    let mut env = Vec::new();
    for (key, value) in command.env_vars.iter().flatten() {
        if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
            // The key is shown, never the value: values may be secrets.
            return Err(format!(
                "environment variable name `{}` is not valid",
                key.escape_debug()
            ));
        }
        env.push((key.clone(), value.clone()));
    }
    let working_dir = match command.working_dir.as_deref() {
        None | Some("") => None,
        Some(dir) if Path::new(dir).is_absolute() && !dir.contains('\0') => {
            Some(PathBuf::from(dir))
        }
        Some(dir) => {
            return Err(format!(
                "working_dir `{}` must be an absolute path",
                dir.escape_debug()
            ));
        }
    };
    Ok(ExecSpec {
        program,
        args,
        arg_style,
        env,
        working_dir,
        timeout: super::effective_timeout(command.timeout, limits),
        max_output: limits.max_output_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn cmd() -> UnsafeCommand {
        UnsafeCommand {
            id: "u".into(),
            raw_command: Some("echo hi".into()),
            ..UnsafeCommand::default()
        }
    }

    #[test]
    fn raw_command_runs_through_the_default_shell_with_the_default_timeout() {
        let spec = to_spec(&cmd(), &Limits::default()).expect("valid");
        let (shell, args, _) = shell_command(None, "echo hi").expect("default shell");
        assert_eq!(spec.program, shell);
        assert_eq!(spec.args, args);
        assert_eq!(spec.timeout, Duration::from_secs(60));
        assert_eq!(spec.max_output, 1024 * 1024);
    }

    #[test]
    fn argv_wins_and_is_passed_verbatim() {
        let c = UnsafeCommand {
            argv: Some(vec!["printf".into(), "%s;rm -rf /".into()]),
            ..cmd()
        };
        let spec = to_spec(&c, &Limits::default()).expect("valid");
        assert_eq!(spec.program, "printf");
        assert_eq!(spec.args, ["%s;rm -rf /"]);
    }

    #[test]
    fn bad_shell_env_and_dir_are_invalid() {
        let limits = Limits::default();
        let bad_shell = UnsafeCommand {
            shell: Some("python3".into()),
            ..cmd()
        };
        assert!(to_spec(&bad_shell, &limits).is_err());
        let bad_env = UnsafeCommand {
            env_vars: Some(BTreeMap::from([("A=B".to_string(), "x".to_string())])),
            ..cmd()
        };
        assert!(to_spec(&bad_env, &limits).is_err());
        let rel_dir = UnsafeCommand {
            working_dir: Some("tmp".into()),
            ..cmd()
        };
        assert!(to_spec(&rel_dir, &limits).is_err());
        let empty = UnsafeCommand {
            raw_command: None,
            ..cmd()
        };
        assert!(to_spec(&empty, &limits).is_err());
    }

    #[test]
    fn refused_by_default_policy() {
        let (_tx, rx) = oneshot::channel();
        let plan = plan(
            cmd(),
            Instant::now(),
            &Policy::default(),
            &Limits::default(),
            rx,
        );
        match plan {
            Plan::Done(r) => assert_eq!(r.error.map(|e| e.code), Some(ErrorCode::Forbidden)),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}

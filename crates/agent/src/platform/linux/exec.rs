//! Linux side of running a command (`crate::exec`): every command is the leader of its own
//! process group, and the group is the tree that a timeout or cancel kills with SIGKILL.

use std::process::{ExitStatus, Stdio};

use tokio::process::{Child, Command};

use crate::exec::{ArgStyle, ExecEnd};

/// Shells a `raw_command` may name; the first is the default.
pub const SHELLS: &[&str] = &["sh", "bash", "/bin/sh", "/bin/bash", "/usr/bin/bash"];

/// The program and arguments that run `raw` in `shell` (`sh` when none is named).
pub fn shell_command(
    shell: Option<&str>,
    raw: &str,
) -> Result<(String, Vec<String>, ArgStyle), String> {
    let shell = shell.unwrap_or(SHELLS[0]);
    if !SHELLS.contains(&shell) {
        return Err(format!(
            "shell `{}` is not one of {SHELLS:?}",
            shell.escape_debug()
        ));
    }
    Ok((
        shell.to_owned(),
        vec!["-c".to_owned(), raw.to_owned()],
        ArgStyle::Separate,
    ))
}

/// Linux has argv only: both styles pass each argument as one.
pub fn add_args(command: &mut Command, args: &[String], _style: ArgStyle) {
    command.args(args);
}

/// A pipe end the runner reads a command's output from.
pub type Reader = Box<dyn tokio::io::AsyncRead + Unpin + Send>;

/// The command's stdout and stderr: ordinary pipes, read through the runtime's epoll.
#[derive(Debug)]
pub struct Output;

impl Output {
    /// Give `command` a pipe for stdout and one for stderr.
    pub fn attach(command: &mut Command) -> std::io::Result<Self> {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        Ok(Self)
    }

    /// Our ends of the pipes, once `child` runs.
    pub async fn readers(self, child: &mut Child) -> (Option<Reader>, Option<Reader>) {
        (
            child.stdout.take().map(|r| Box::new(r) as Reader),
            child.stderr.take().map(|r| Box::new(r) as Reader),
        )
    }
}

/// Make the child the leader of a new process group.
pub fn prepare(command: &mut Command) {
    command.process_group(0);
}

/// The process group of a running command. Dropping it kills the group: if the agent stops
/// awaiting a command (shutdown, a panic elsewhere), nothing it started is left running
/// unattended.
#[derive(Debug)]
pub struct Tree {
    pgid: Option<i32>,
}

impl Tree {
    /// The group of a child started after [`prepare`].
    pub fn adopt(child: &Child) -> std::io::Result<Self> {
        Ok(Self {
            pgid: child.id().and_then(|p| i32::try_from(p).ok()),
        })
    }

    /// SIGKILL every process of the group.
    pub fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            kill_group(pgid);
        }
    }

    /// The leader was reaped: its pid, the group id, may be reused from now on.
    pub fn release(&mut self) {
        self.pgid = None;
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        self.kill();
    }
}

/// SIGKILL every process of group `pgid`.
pub fn kill_group(pgid: i32) {
    if pgid <= 1 {
        return;
    }
    // SAFETY: killpg has no memory effects; a stale pgid yields ESRCH, which is fine.
    unsafe {
        libc::killpg(pgid, libc::SIGKILL);
    }
}

/// How a reaped child ended.
pub fn end_of(status: ExitStatus) -> ExecEnd {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExecEnd::Exited(code),
        (None, Some(signal)) => ExecEnd::Signaled(signal),
        (None, None) => ExecEnd::Exited(-1),
    }
}

/// A command that creates the file `path` (tests of what runs and what does not).
#[cfg(test)]
pub fn touch_spec(path: &std::path::Path) -> crate::exec::ExecSpec {
    crate::exec::ExecSpec::of(
        crate::exec::Invocation::new("touch", &[&path.display().to_string()]),
        std::time::Duration::from_secs(5),
        1024,
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::exec::{ExecSpec, Invocation, run};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn sh(script: &str, timeout: Duration) -> ExecSpec {
        ExecSpec::of(Invocation::new("sh", &["-c", script]), timeout, 1024)
    }

    #[test]
    fn exit_code_and_both_streams_are_captured() {
        let out = rt()
            .block_on(run(
                &sh("echo out; echo err >&2; exit 3", Duration::from_secs(10)),
                std::future::pending(),
            ))
            .expect("runs");
        assert_eq!(out.end, ExecEnd::Exited(3));
        assert_eq!(out.stdout.bytes, b"out\n");
        assert_eq!(out.stderr.bytes, b"err\n");
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let spec = ExecSpec {
            program: "/nonexistent/program".into(),
            ..sh("", Duration::from_secs(1))
        };
        assert!(rt().block_on(run(&spec, std::future::pending())).is_err());
    }

    #[test]
    fn background_child_holding_the_pipe_does_not_hang_the_command() {
        let started = Instant::now();
        let out = rt()
            .block_on(run(
                &sh("sleep 5 & echo done", Duration::from_secs(30)),
                std::future::pending(),
            ))
            .expect("runs");
        assert_eq!(out.end, ExecEnd::Exited(0));
        assert_eq!(out.stdout.bytes, b"done\n");
        assert!(started.elapsed() < Duration::from_secs(4));
        if let Some(pid) = out.pid {
            kill_group(pid as i32);
        }
    }

    #[test]
    fn raw_commands_run_through_sh_c_and_other_shells_are_refused() {
        let (program, args, style) = shell_command(None, "echo hi").expect("valid");
        assert_eq!(program, "sh");
        assert_eq!(args, ["-c", "echo hi"]);
        assert_eq!(style, ArgStyle::Separate);
        assert!(shell_command(Some("python3"), "x").is_err());
    }
}

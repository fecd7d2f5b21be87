//! Running a program for a command: a process tree the agent can kill as a whole, a
//! deadline, cancellation, and capped output.
//!
//! The tree is the OS's: a process group on Linux, a Job Object on Windows
//! (`platform::exec::Tree`). On timeout or cancel every process of it dies, and if the agent
//! stops awaiting a command the tree is killed when its guard is dropped.
//!
//! Output is read as it comes, in 8 KiB reads: up to the cap it is kept, beyond it is counted
//! and thrown away, so the child never blocks on a full pipe and the agent never holds more
//! than the cap (qemu-ga buffers everything and peaks at 64 MB on a 20 MB output).

use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::platform::exec::{Output, Tree};

/// How long the pipes are still read after the program exited. A background process it left
/// behind may hold them open for ever; its later output is not part of this command.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

const READ_CHUNK: usize = 8 * 1024;

/// One program invocation, before limits are attached: what a safe action runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// Program.
    pub program: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

impl Invocation {
    /// `program` with `args`, no extra environment.
    pub fn new(program: &str, args: &[&str]) -> Self {
        Self {
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
        }
    }

    /// One more argument.
    pub fn with_arg(mut self, arg: &str) -> Self {
        self.args.push(arg.into());
        self
    }
}

/// How the arguments reach the program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArgStyle {
    /// Each argument is passed as one argument (argv on Linux; quoted the way the C runtime
    /// splits them on Windows).
    #[default]
    Separate,
    /// The arguments are joined with spaces and appended to the command line as they are.
    /// Only Windows has a command line to append to; `cmd /S /C "…"` needs it, because cmd
    /// does not split its command line the way the C runtime does.
    Verbatim,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    /// Program (looked up in `PATH`).
    pub program: String,
    /// Arguments (no shell).
    pub args: Vec<String>,
    /// How `args` are passed.
    pub arg_style: ArgStyle,
    /// Added to the agent's environment.
    pub env: Vec<(String, String)>,
    /// Working directory; the agent's when absent.
    pub working_dir: Option<PathBuf>,
    /// Killed (with its whole process tree) after this long.
    pub timeout: Duration,
    /// Bytes kept of stdout, and of stderr.
    pub max_output: usize,
}

impl ExecSpec {
    /// An invocation with a timeout and an output cap.
    pub fn of(invocation: Invocation, timeout: Duration, max_output: usize) -> Self {
        Self {
            program: invocation.program,
            args: invocation.args,
            arg_style: ArgStyle::Separate,
            env: invocation.env,
            working_dir: None,
            timeout,
            max_output,
        }
    }
}

/// Output kept from one pipe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CappedOutput {
    /// The first `cap` bytes.
    pub bytes: Vec<u8>,
    /// More than `cap` bytes arrived.
    pub truncated: bool,
    /// Bytes that arrived in all.
    pub total: u64,
}

/// Keeps the first `cap` bytes of a stream and counts the rest.
#[derive(Debug)]
pub struct OutputCap {
    cap: usize,
    out: CappedOutput,
}

impl OutputCap {
    /// A capper keeping `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            out: CappedOutput::default(),
        }
    }

    /// Take in one chunk.
    pub fn push(&mut self, chunk: &[u8]) {
        self.out.total += chunk.len() as u64;
        let room = self.cap.saturating_sub(self.out.bytes.len());
        if chunk.len() > room {
            self.out.truncated = true;
        }
        let keep = chunk.len().min(room);
        if keep > 0 {
            // Grow by what arrives, never to the cap up front: most outputs are tiny.
            self.out.bytes.extend_from_slice(&chunk[..keep]);
        }
    }

    /// What was kept.
    pub fn finish(self) -> CappedOutput {
        self.out
    }
}

/// How the program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecEnd {
    /// It exited with this code.
    Exited(i32),
    /// A signal it did not get from us ended it (Linux only).
    Signaled(i32),
    /// It ran past its deadline; its process tree was killed.
    TimedOut,
    /// It was cancelled; its process tree was killed.
    Cancelled,
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct ExecOutcome {
    /// How it ended.
    pub end: ExecEnd,
    /// Captured stdout.
    pub stdout: CappedOutput,
    /// Captured stderr.
    pub stderr: CappedOutput,
    /// Wall time from spawn to end.
    pub elapsed: Duration,
    /// The program's pid (on Linux also its process group id).
    pub pid: Option<u32>,
}

/// The program could not be started.
#[derive(Debug, Error)]
#[error("cannot start `{program}`: {source}")]
pub struct SpawnError {
    /// What we tried to run.
    pub program: String,
    /// Why it failed.
    pub source: std::io::Error,
}

/// Run `spec`; `cancel` resolving stops it like a timeout does.
pub async fn run(
    spec: &ExecSpec,
    cancel: impl Future<Output = ()>,
) -> Result<ExecOutcome, SpawnError> {
    let started = Instant::now();
    let spawn_error = |source| SpawnError {
        program: spec.program.clone(),
        source,
    };
    let mut command = Command::new(&spec.program);
    crate::platform::exec::add_args(&mut command, &spec.args, spec.arg_style);
    command
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null());
    if let Some(dir) = &spec.working_dir {
        command.current_dir(dir);
    }
    // Pipes for stdout and stderr that the runtime's reactor reads (no thread per pipe).
    let output = Output::attach(&mut command).map_err(spawn_error)?;
    // A tree of its own, so that a timeout or cancel can kill every descendant at once.
    crate::platform::exec::prepare(&mut command);
    let spawned = command.spawn();
    // The command holds our copies of the child's pipe ends: without dropping it now, the
    // pipes would never report the end of the output.
    drop(command);
    let mut child = spawned.map_err(spawn_error)?;
    let pid = child.id();
    let mut tree = match Tree::adopt(&child) {
        Ok(tree) => tree,
        Err(source) => {
            // Without its tree the command could not be stopped: do not let it run.
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(spawn_error(source));
        }
    };
    let (mut stdout, mut stderr) = output.readers(&mut child).await;
    let mut out_cap = OutputCap::new(spec.max_output);
    let mut err_cap = OutputCap::new(spec.max_output);
    let mut out_buf = vec![0u8; READ_CHUNK];
    let mut err_buf = vec![0u8; READ_CHUNK];

    let deadline = tokio::time::sleep(spec.timeout);
    tokio::pin!(deadline);
    tokio::pin!(cancel);
    let grace = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(grace);

    let mut killed: Option<ExecEnd> = None;
    let mut exited: Option<ExecEnd> = None;
    let mut cancel_done = false;

    loop {
        if exited.is_some() && stdout.is_none() && stderr.is_none() {
            break;
        }
        tokio::select! {
            read = read_some(&mut stdout, &mut out_buf), if stdout.is_some() => {
                match read {
                    Some(n) => out_cap.push(&out_buf[..n]),
                    None => stdout = None,
                }
            }
            read = read_some(&mut stderr, &mut err_buf), if stderr.is_some() => {
                match read {
                    Some(n) => err_cap.push(&err_buf[..n]),
                    None => stderr = None,
                }
            }
            waited = child.wait(), if exited.is_none() => {
                exited = Some(match waited {
                    Ok(status) => crate::platform::exec::end_of(status),
                    Err(e) => {
                        tracing::warn!(error = %e, "waiting for a command failed");
                        ExecEnd::Exited(-1)
                    }
                });
                grace.as_mut().reset(tokio::time::Instant::now() + DRAIN_GRACE);
            }
            () = &mut deadline, if killed.is_none() && exited.is_none() => {
                tree.kill();
                killed = Some(ExecEnd::TimedOut);
            }
            () = &mut cancel, if !cancel_done && killed.is_none() && exited.is_none() => {
                cancel_done = true;
                tree.kill();
                killed = Some(ExecEnd::Cancelled);
            }
            () = &mut grace, if exited.is_some() => break,
        }
    }
    // Our child was reaped: from now on its pid may be reused, so the guard must not fire
    // later. What the command left running in the background stays, as in a shell.
    tree.release();

    Ok(ExecOutcome {
        end: killed.or(exited).unwrap_or(ExecEnd::Exited(-1)),
        stdout: out_cap.finish(),
        stderr: err_cap.finish(),
        elapsed: started.elapsed(),
        pid,
    })
}

/// One read; `None` at EOF or on a read error (both end the capture of that pipe).
async fn read_some<R: tokio::io::AsyncRead + Unpin>(
    pipe: &mut Option<R>,
    buf: &mut [u8],
) -> Option<usize> {
    let reader = pipe.as_mut()?;
    match reader.read(buf).await {
        Ok(0) | Err(_) => None,
        Ok(n) => Some(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capper_keeps_the_first_cap_bytes_and_counts_all() {
        let mut cap = OutputCap::new(10);
        cap.push(b"hello");
        cap.push(b" world, and more");
        let out = cap.finish();
        assert_eq!(out.bytes, b"hello worl");
        assert!(out.truncated);
        assert_eq!(out.total, 21);
    }

    #[test]
    fn capper_exactly_at_cap_is_not_truncated() {
        let mut cap = OutputCap::new(4);
        cap.push(b"ab");
        cap.push(b"cd");
        cap.push(b"");
        let out = cap.finish();
        assert_eq!(out.bytes, b"abcd");
        assert!(!out.truncated);
    }

    #[test]
    fn capper_never_holds_more_than_the_cap() {
        let mut cap = OutputCap::new(1024);
        let chunk = [b'x'; 8192];
        for _ in 0..2560 {
            cap.push(&chunk);
        }
        let out = cap.finish();
        assert_eq!(out.bytes.len(), 1024);
        assert!(out.bytes.capacity() < 8192);
        assert_eq!(out.total, 20 * 1024 * 1024);
    }
}

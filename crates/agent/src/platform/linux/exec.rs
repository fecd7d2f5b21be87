//! Running a program for a command: its own process group, a deadline, cancellation, and
//! capped output.
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

/// How long the pipes are still read after the program exited. A background process it left
/// behind may hold them open for ever; its later output is not part of this command.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

const READ_CHUNK: usize = 8 * 1024;

/// What to run.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    /// Program (looked up in `PATH`).
    pub program: String,
    /// Arguments, passed as they are (no shell).
    pub args: Vec<String>,
    /// Added to the agent's environment.
    pub env: Vec<(String, String)>,
    /// Working directory; the agent's when absent.
    pub working_dir: Option<PathBuf>,
    /// Killed (with its whole process group) after this long.
    pub timeout: Duration,
    /// Bytes kept of stdout, and of stderr.
    pub max_output: usize,
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
    /// A signal it did not get from us ended it.
    Signaled(i32),
    /// It ran past its deadline; its process group was killed.
    TimedOut,
    /// It was cancelled; its process group was killed.
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
    /// The program's pid, which is also its process group id.
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

/// Kills the process group when dropped: if the agent stops awaiting a command (shutdown,
/// a panic elsewhere), nothing it started is left running unattended.
struct GroupGuard {
    pgid: Option<i32>,
}

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            kill_group(pgid);
        }
    }
}

impl Drop for GroupGuard {
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

/// Run `spec`; `cancel` resolving stops it like a timeout does.
pub async fn run(
    spec: &ExecSpec,
    cancel: impl Future<Output = ()>,
) -> Result<ExecOutcome, SpawnError> {
    let started = Instant::now();
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A group of its own, so that a timeout or cancel can kill every descendant at once.
        .process_group(0);
    if let Some(dir) = &spec.working_dir {
        command.current_dir(dir);
    }
    let mut child = command.spawn().map_err(|source| SpawnError {
        program: spec.program.clone(),
        source,
    })?;
    let pid = child.id();
    let mut guard = GroupGuard {
        pgid: pid.and_then(|p| i32::try_from(p).ok()),
    };
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
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
    let mut status: Option<std::process::ExitStatus> = None;
    let mut cancel_done = false;

    loop {
        if status.is_some() && stdout.is_none() && stderr.is_none() {
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
            waited = child.wait(), if status.is_none() => {
                match waited {
                    Ok(s) => status = Some(s),
                    Err(e) => {
                        tracing::warn!(error = %e, "waiting for a command failed");
                        status = Some(std::os::unix::process::ExitStatusExt::from_raw(0));
                    }
                }
                grace.as_mut().reset(tokio::time::Instant::now() + DRAIN_GRACE);
            }
            () = &mut deadline, if killed.is_none() && status.is_none() => {
                guard.kill();
                killed = Some(ExecEnd::TimedOut);
            }
            () = &mut cancel, if !cancel_done && killed.is_none() && status.is_none() => {
                cancel_done = true;
                guard.kill();
                killed = Some(ExecEnd::Cancelled);
            }
            () = &mut grace, if status.is_some() => break,
        }
    }
    // Our child was reaped: its pid (the group id) may be reused from now on, so the guard
    // must not fire later.
    guard.pgid = None;

    let end = match killed {
        Some(end) => end,
        None => match status {
            Some(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                (Some(code), _) => ExecEnd::Exited(code),
                (None, Some(sig)) => ExecEnd::Signaled(sig),
                (None, None) => ExecEnd::Exited(-1),
            },
            None => ExecEnd::Exited(-1),
        },
    };
    Ok(ExecOutcome {
        end,
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

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn sh(script: &str, timeout: Duration) -> ExecSpec {
        ExecSpec {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![],
            working_dir: None,
            timeout,
            max_output: 1024,
        }
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
}

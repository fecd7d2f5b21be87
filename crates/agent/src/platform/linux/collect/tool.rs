//! Running a query tool (`systemctl`, `rpm`) for the inventories, bounded in time and output.
//! Metrics never come through here: only the 5-minute inventories do, where there is no
//! frugal in-process alternative.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::read::CollectError;

/// Most output accepted from a tool; inventories are tens of kilobytes.
const MAX_OUTPUT: usize = 8 * 1024 * 1024;

/// Runs `program args` with stdin and stderr closed, and returns its stdout if it exits with
/// status 0 within `timeout`. On timeout the child is killed and reaped.
pub(crate) fn run(
    program: &'static str,
    args: &[&str],
    timeout: Duration,
) -> Result<Vec<u8>, CollectError> {
    let fail = |detail: String| CollectError::Tool { program, detail };
    let mut child = Command::new(program)
        .args(args)
        .env("SYSTEMD_PAGER", "")
        .env("SYSTEMD_COLORS", "0")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| fail(format!("cannot start: {e}")))?;
    let Some(mut stdout) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(fail("no stdout pipe".into()));
    };
    let deadline = Instant::now() + timeout;
    let mut output = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let outcome = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(fail(format!("no answer within {timeout:?}")));
        }
        let mut poll_fd = libc::pollfd {
            fd: stdout.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let wait_ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
        // SAFETY: poll_fd is a valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut poll_fd, 1, wait_ms) };
        if ready < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break Err(fail(format!("poll: {error}")));
        }
        if ready == 0 {
            continue;
        }
        match stdout.read(&mut chunk) {
            Ok(0) => break Ok(()),
            Ok(n) if output.len() + n > MAX_OUTPUT => {
                break Err(fail(format!("more than {MAX_OUTPUT} bytes of output")));
            }
            Ok(n) => output.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(fail(format!("reading output: {e}"))),
        }
    };
    if let Err(error) = outcome {
        let _ = child.kill();
        let _ = child.wait();
        return Err(error);
    }
    // stdout closed; the exit follows at once unless the tool daemonised a child holding the
    // pipe, which these tools do not do.
    let status = child
        .wait()
        .map_err(|e| fail(format!("waiting for exit: {e}")))?;
    if !status.success() {
        return Err(fail(format!("exited with {status}")));
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_of_a_successful_tool_is_returned() {
        let out = run("echo", &["hello"], Duration::from_secs(10)).expect("echo runs");
        assert_eq!(out, b"hello\n");
    }

    #[test]
    fn a_hanging_tool_is_killed_at_the_deadline() {
        let started = Instant::now();
        let err = run("sleep", &["30"], Duration::from_millis(200)).expect_err("sleep times out");
        assert!(err.to_string().contains("no answer"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn failing_and_missing_tools_are_errors() {
        assert!(run("false", &[], Duration::from_secs(10)).is_err());
        assert!(run("no-such-tool-infiniservice", &[], Duration::from_secs(10)).is_err());
    }
}

//! A client for the QEMU guest agent (`qemu-ga`) on its virtio-serial port.
//!
//! qemu-ga speaks one JSON object per line and answers requests in order. A connection may
//! start with stale bytes (a reply the previous client never read, a half-parsed request), so
//! every connection begins with `guest-sync-delimited`: the client sends 0xFF (qemu-ga drops
//! any partial request) and a random id, then discards everything until the reply, which
//! qemu-ga prefixes with 0xFF.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::lines::LineStream;
use crate::{Error, Result};

/// The 0xFF qemu-ga puts before its `guest-sync-delimited` reply.
const SYNC_MARKER: u8 = 0xFF;

/// How long one `guest-sync-delimited` attempt waits before it is sent again: the first may
/// land before qemu-ga opened its port.
const SYNC_RETRY: Duration = Duration::from_secs(1);

/// A connected, synchronised qemu-ga session.
pub struct QgaClient {
    lines: LineStream,
}

/// A finished `guest-exec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code, when the process exited normally.
    pub exit_code: Option<i32>,
    /// Signal number, when it was killed.
    pub signal: Option<i32>,
    /// Captured stdout (decoded from base64).
    pub stdout: Vec<u8>,
    /// Captured stderr.
    pub stderr: Vec<u8>,
    /// How many `guest-exec-status` calls it took.
    pub status_polls: u32,
}

impl ExecOutput {
    /// stdout as text (lossy).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

impl QgaClient {
    /// Connect to qemu-ga's host-side socket and synchronise; waits (until `timeout`) for the
    /// guest to boot and qemu-ga to open its port.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Self> {
        let deadline = Instant::now() + timeout;
        let lines = LineStream::connect(socket, deadline, "qemu-ga")?;
        let mut client = Self { lines };
        client.sync(deadline)?;
        Ok(client)
    }

    fn sync(&mut self, deadline: Instant) -> Result<()> {
        let started = Instant::now();
        loop {
            let id = u64::from(uuid::Uuid::new_v4().as_fields().0);
            let mut request = vec![SYNC_MARKER];
            request.extend_from_slice(
                format!(
                    "{}\n",
                    json!({"execute": "guest-sync-delimited", "arguments": {"id": id}})
                )
                .as_bytes(),
            );
            self.lines.send(&request)?;
            let attempt_deadline = deadline.min(Instant::now() + SYNC_RETRY);
            loop {
                match self.lines.read_line(attempt_deadline) {
                    Ok(line) => {
                        let synced = line
                            .strip_prefix(&[SYNC_MARKER])
                            .and_then(|reply| serde_json::from_slice::<Value>(reply).ok())
                            .is_some_and(|value| value["return"].as_u64() == Some(id));
                        if synced {
                            return Ok(());
                        }
                        // Stale replies and the parse error our 0xFF provokes: skip.
                    }
                    Err(Error::Timeout { .. }) if Instant::now() < deadline => break,
                    Err(Error::Timeout { .. }) => {
                        return Err(Error::Timeout {
                            what: "qemu-ga guest-sync-delimited".into(),
                            after: started.elapsed(),
                        });
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Send one command and return its `return` value.
    pub fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let request = match arguments {
            Some(arguments) => json!({"execute": command, "arguments": arguments}),
            None => json!({"execute": command}),
        };
        self.lines.send(format!("{request}\n").as_bytes())?;
        loop {
            let line = self.lines.read_line(deadline)?;
            if line.first() == Some(&SYNC_MARKER) {
                // A late reply to an earlier sync attempt.
                continue;
            }
            let reply: Value = serde_json::from_slice(&line).map_err(|e| {
                Error::protocol(
                    format!("qemu-ga {command}"),
                    format!("{e}: {}", String::from_utf8_lossy(&line)),
                )
            })?;
            if let Some(value) = reply.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = reply.get("error") {
                return Err(Error::Remote {
                    command: command.to_owned(),
                    class: error["class"].as_str().unwrap_or("?").to_owned(),
                    desc: error["desc"].as_str().unwrap_or("?").to_owned(),
                });
            }
            return Err(Error::protocol(
                format!("qemu-ga {command}"),
                format!("reply without return or error: {reply}"),
            ));
        }
    }

    /// `guest-ping`.
    pub fn ping(&mut self, timeout: Duration) -> Result<()> {
        self.execute("guest-ping", None, timeout).map(drop)
    }

    /// `guest-info`: version and supported commands.
    pub fn info(&mut self, timeout: Duration) -> Result<Value> {
        self.execute("guest-info", None, timeout)
    }

    /// `guest-exec` without waiting: the guest pid.
    pub fn exec_start(&mut self, path: &str, args: &[&str], capture_output: bool) -> Result<i64> {
        let reply = self.execute(
            "guest-exec",
            Some(json!({"path": path, "arg": args, "capture-output": capture_output})),
            Duration::from_secs(30),
        )?;
        reply["pid"]
            .as_i64()
            .ok_or_else(|| Error::protocol("qemu-ga guest-exec", format!("no pid in {reply}")))
    }

    /// `guest-exec-status` once: `None` while the process runs.
    pub fn exec_status(&mut self, pid: i64) -> Result<Option<ExecOutput>> {
        let status = self.execute(
            "guest-exec-status",
            Some(json!({ "pid": pid })),
            Duration::from_secs(30),
        )?;
        if status["exited"].as_bool() != Some(true) {
            return Ok(None);
        }
        let decode = |key: &str| -> Result<Vec<u8>> {
            match status[key].as_str() {
                Some(text) => base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|e| Error::protocol(format!("qemu-ga {key}"), e.to_string())),
                None => Ok(Vec::new()),
            }
        };
        let as_i32 = |key: &str| status[key].as_i64().and_then(|v| i32::try_from(v).ok());
        Ok(Some(ExecOutput {
            exit_code: as_i32("exitcode"),
            signal: as_i32("signal"),
            stdout: decode("out-data")?,
            stderr: decode("err-data")?,
            status_polls: 1,
        }))
    }

    /// `guest-exec` and poll `guest-exec-status` until it exits: qemu-ga has no other way to
    /// learn that a process ended. `poll_interval` zero polls back to back.
    pub fn run(
        &mut self,
        path: &str,
        args: &[&str],
        poll_interval: Duration,
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let started = Instant::now();
        let pid = self.exec_start(path, args, true)?;
        let mut polls = 0;
        loop {
            polls += 1;
            if let Some(mut output) = self.exec_status(pid)? {
                output.status_polls = polls;
                return Ok(output);
            }
            if started.elapsed() > timeout {
                return Err(Error::Timeout {
                    what: format!("qemu-ga guest-exec {path} (pid {pid})"),
                    after: started.elapsed(),
                });
            }
            if !poll_interval.is_zero() {
                std::thread::sleep(poll_interval);
            }
        }
    }

    /// Run `sh -c SCRIPT` in the guest and return its stdout; a non-zero exit is an error.
    pub fn shell(&mut self, script: &str, timeout: Duration) -> Result<String> {
        let output = self.run(
            "/bin/sh",
            &["-c", script],
            Duration::from_millis(20),
            timeout,
        )?;
        if output.exit_code != Some(0) {
            return Err(Error::protocol(
                format!("guest shell `{script}`"),
                format!(
                    "exit {:?} signal {:?}; stderr: {}",
                    output.exit_code,
                    output.signal,
                    String::from_utf8_lossy(&output.stderr)
                ),
            ));
        }
        Ok(output.stdout_text())
    }
}

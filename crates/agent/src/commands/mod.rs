//! Commands from the host: checked (validation, then policy) before anything runs, then either
//! answered at once or run as a task of their own with a deadline and a cancel signal.
//!
//! Every command gets exactly one `response`.

pub mod safe;
pub mod unsafe_cmd;

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use infinibay_protocol::message::{CommandResponse, ErrorCode, ResponseError};
use tokio::sync::oneshot;

use crate::config::Limits;
use crate::exec::{self, ExecEnd, ExecOutcome, ExecSpec, Invocation};

/// A command task's future.
pub type CommandFuture = Pin<Box<dyn Future<Output = CommandResponse> + Send + 'static>>;

/// What to do with a command.
pub enum Plan {
    /// The response is ready: refused, invalid, or answered from memory.
    Done(CommandResponse),
    /// Run this task; it resolves to the response.
    Run(CommandFuture),
    /// Send this response, then run the task (power off / reboot: the host must hear the
    /// answer before the guest goes down). The task's own result is only logged.
    RespondThenRun(CommandResponse, CommandFuture),
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Done(r) => f.debug_tuple("Done").field(r).finish(),
            Self::Run(_) => f.write_str("Run(..)"),
            Self::RespondThenRun(r, _) => f.debug_tuple("RespondThenRun").field(r).finish(),
        }
    }
}

/// What a safe action needs from the OS, as `platform::actions` describes it. The portable
/// code turns it into a [`Plan`]: the deadline, cancellation and the response are the same
/// on every OS.
pub enum Work {
    /// Refused before anything ran (`unsupported`, `forbidden`, `invalid`).
    Refuse(ErrorCode, String),
    /// The answer, known at once.
    Answer {
        /// The response's `stdout`: one line saying what was done.
        summary: String,
        /// The response's `data`.
        data: serde_json::Value,
    },
    /// Programs to run in order, stopping at the first failure.
    Programs(Programs),
    /// Native OS calls (the Service Control Manager, the registry), run on a blocking thread.
    /// The call gets the deadline, and must return by then; if it does not, or the host
    /// cancels, the command is answered `timeout` / `cancelled` without waiting for it.
    Native(NativeCall),
}

/// A native call: the deadline in, the summary and data (or an error) out.
pub type NativeCall = Box<
    dyn FnOnce(Instant) -> Result<(String, serde_json::Value), (ErrorCode, String)>
        + Send
        + 'static,
>;

/// Turns a successful run's stdout into the response's summary and data.
pub type ParseOutput = Box<dyn FnOnce(&str) -> (String, serde_json::Value) + Send + 'static>;

/// Programs a safe action runs, and how to read their result.
pub struct Programs {
    /// Run in order; the first that does not succeed ends the run.
    pub steps: Vec<Invocation>,
    /// Which exit codes of the last step count as success.
    pub succeeded: fn(i32) -> bool,
    /// Turns a successful run's stdout into the response's summary and data.
    pub parse: Option<ParseOutput>,
    /// The response's `data` when there is nothing to parse.
    pub data: Option<serde_json::Value>,
}

impl Programs {
    /// Steps whose success is exit code 0, nothing parsed.
    pub fn new(steps: Vec<Invocation>) -> Self {
        Self {
            steps,
            succeeded: |code| code == 0,
            parse: None,
            data: None,
        }
    }
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refuse(code, message) => {
                f.debug_tuple("Refuse").field(code).field(message).finish()
            }
            Self::Answer { summary, .. } => {
                f.debug_struct("Answer").field("summary", summary).finish()
            }
            Self::Programs(p) => f.debug_tuple("Programs").field(&p.steps).finish(),
            Self::Native(_) => f.write_str("Native(..)"),
        }
    }
}

/// Turns a cancel receiver into a future that resolves only on an actual cancel (a dropped
/// sender means "nobody will cancel", not "cancel").
pub async fn cancelled(receiver: oneshot::Receiver<()>) {
    if receiver.await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The timeout a command gets: its own, else the default, never above the maximum.
pub fn effective_timeout(requested: Option<u64>, limits: &Limits) -> Duration {
    let secs = requested
        .filter(|&s| s > 0)
        .unwrap_or(limits.default_timeout_secs)
        .min(limits.max_timeout_secs);
    Duration::from_secs(secs)
}

/// Milliseconds since `since`.
pub fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// A failure response that ran nothing.
pub fn refused(
    id: &str,
    code: ErrorCode,
    message: impl Into<String>,
    command_type: &str,
) -> CommandResponse {
    CommandResponse {
        command_type: Some(command_type.into()),
        ..CommandResponse::failure(id, code, message)
    }
}

/// Run several invocations in order (stopping at the first failure) and fold their results.
pub async fn run_steps(
    steps: Vec<ExecSpec>,
    cancel: oneshot::Receiver<()>,
) -> Result<ExecOutcome, exec::SpawnError> {
    let cancel = cancelled(cancel);
    tokio::pin!(cancel);
    let mut folded: Option<ExecOutcome> = None;
    for spec in &steps {
        // A cancel that already arrived must stop the next step before it is spawned, not
        // right after (a power-off or an install cannot be taken back).
        if is_ready(cancel.as_mut()) {
            let mut outcome = folded.take().unwrap_or_else(|| ExecOutcome {
                end: ExecEnd::Cancelled,
                stdout: exec::CappedOutput::default(),
                stderr: exec::CappedOutput::default(),
                elapsed: Duration::ZERO,
                pid: None,
            });
            outcome.end = ExecEnd::Cancelled;
            return Ok(outcome);
        }
        let outcome = exec::run(spec, &mut cancel).await?;
        let cap = spec.max_output;
        folded = Some(match folded.take() {
            None => outcome,
            Some(mut acc) => {
                append_capped(&mut acc.stdout, outcome.stdout, cap);
                append_capped(&mut acc.stderr, outcome.stderr, cap);
                acc.end = outcome.end;
                acc.elapsed += outcome.elapsed;
                acc
            }
        });
        if !matches!(folded.as_ref().map(|o| o.end), Some(ExecEnd::Exited(0))) {
            break;
        }
    }
    folded.ok_or_else(|| exec::SpawnError {
        program: String::new(),
        source: std::io::Error::other("no step to run"),
    })
}

/// Poll a future once, without waiting.
fn is_ready<F: Future<Output = ()>>(future: Pin<&mut F>) -> bool {
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    future.poll(&mut context).is_ready()
}

fn append_capped(acc: &mut exec::CappedOutput, next: exec::CappedOutput, cap: usize) {
    let room = cap.saturating_sub(acc.bytes.len());
    acc.truncated |= next.truncated || next.bytes.len() > room;
    acc.bytes
        .extend_from_slice(&next.bytes[..next.bytes.len().min(room)]);
    acc.total += next.total;
}

/// The response for a finished process. `success` is decided by `succeeded(exit_code)`.
pub fn exec_response(
    id: &str,
    command_type: &str,
    received: Instant,
    outcome: ExecOutcome,
    succeeded: impl Fn(i32) -> bool,
) -> CommandResponse {
    let (success, exit_code, error) = match outcome.end {
        ExecEnd::Exited(code) => (succeeded(code), Some(code), None),
        ExecEnd::Signaled(sig) => (
            false,
            None,
            Some(ResponseError {
                code: ErrorCode::Failed,
                message: format!("killed by signal {sig}"),
            }),
        ),
        ExecEnd::TimedOut => (
            false,
            None,
            Some(ResponseError {
                code: ErrorCode::Timeout,
                message: format!(
                    "ran past its deadline ({} ms); its process tree was killed",
                    outcome.elapsed.as_millis()
                ),
            }),
        ),
        ExecEnd::Cancelled => (
            false,
            None,
            Some(ResponseError {
                code: ErrorCode::Cancelled,
                message: "cancelled by the host; its process tree was killed".into(),
            }),
        ),
    };
    CommandResponse {
        id: id.to_owned(),
        success,
        exit_code,
        stdout: into_text(outcome.stdout.bytes),
        stderr: into_text(outcome.stderr.bytes),
        stdout_truncated: outcome.stdout.truncated,
        stderr_truncated: outcome.stderr.truncated,
        data: None,
        execution_time_ms: elapsed_ms(received),
        error,
        command_type: Some(command_type.into()),
    }
}

/// The response when the program could not be started.
pub fn spawn_failed(
    id: &str,
    command_type: &str,
    received: Instant,
    error: &exec::SpawnError,
) -> CommandResponse {
    CommandResponse {
        execution_time_ms: elapsed_ms(received),
        ..refused(id, ErrorCode::SpawnFailed, error.to_string(), command_type)
    }
}

/// Bytes as text without a copy when they are UTF-8 (the usual case; the buffer may be the
/// whole 1 MiB cap), lossily otherwise.
fn into_text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Bytes a response line needs besides its stdout and stderr (id, flags, error, data).
const RESPONSE_OVERHEAD: usize = 1024;

/// Encode `response` as one line of at most `max_line` bytes. When it is longer, stdout
/// (then stderr) is cut from its end and flagged truncated until it fits; if the structured
/// data alone is too big, it is dropped and the response says so. A host drops an over-long
/// line whole, so without this the command would go unanswered.
///
/// Memory matters here (a response may carry 2 × 1 MiB of output): the output is cut before
/// encoding, and the line is encoded once into a buffer sized for it.
pub fn encode_fitted(response: CommandResponse, max_line: usize) -> Vec<u8> {
    let mut message = infinibay_protocol::GuestMessage::Response(response);
    for _ in 0..4 {
        let infinibay_protocol::GuestMessage::Response(r) = &mut message else {
            break;
        };
        let data_len = r.data.as_ref().map_or(0, |_| RESPONSE_OVERHEAD);
        let estimate = r.stdout.len() + r.stderr.len() + r.id.len() + data_len + RESPONSE_OVERHEAD;
        if estimate > max_line {
            // Raw bytes never encode shorter, so cutting the estimate's excess is the least
            // that must go.
            cut_output(r, estimate - max_line);
        }
        let mut line = Vec::with_capacity(estimate.min(max_line) + 64);
        if serde_json::to_writer(&mut line, &message).is_err() {
            break;
        }
        line.push(b'\n');
        if line.len() <= max_line {
            return line;
        }
        let excess = line.len() - max_line;
        drop(line);
        let infinibay_protocol::GuestMessage::Response(r) = &mut message else {
            break;
        };
        if r.stdout.len() + r.stderr.len() >= excess {
            cut_output(r, excess);
        } else {
            r.stdout.clear();
            r.stderr.clear();
            r.data = None;
            r.success = false;
            r.error = Some(ResponseError {
                code: ErrorCode::Internal,
                message: format!("the result is larger than the {max_line}-byte line limit"),
            });
        }
    }
    infinibay_protocol::encode_line(&message).unwrap_or_default()
}

/// Remove `excess` bytes of output, from the end of stdout first, then stderr.
fn cut_output(r: &mut CommandResponse, mut excess: usize) {
    for (text, flag) in [
        (&mut r.stdout, &mut r.stdout_truncated),
        (&mut r.stderr, &mut r.stderr_truncated),
    ] {
        if excess == 0 || text.is_empty() {
            continue;
        }
        let mut cut = text.len().saturating_sub(excess);
        while cut > 0 && !text.is_char_boundary(cut) {
            cut -= 1;
        }
        excess -= (text.len() - cut).min(excess);
        text.truncate(cut);
        *flag = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_response_is_cut_to_fit_the_line_limit() {
        let r = CommandResponse {
            id: "x".into(),
            success: true,
            stdout: "a".repeat(1024 * 1024),
            stderr: "b".repeat(100_000),
            ..CommandResponse::default()
        };
        let line = encode_fitted(r, 1024 * 1024);
        assert!(line.len() <= 1024 * 1024, "{}", line.len());
        let back = infinibay_protocol::decode_guest_line(&line[..line.len() - 1]).expect("decodes");
        let infinibay_protocol::GuestMessage::Response(back) = &back[0] else {
            panic!("not a response");
        };
        assert!(back.stdout_truncated);
        assert!(back.stdout.len() > 900_000, "kept as much as fits");
        assert_eq!(back.stderr.len(), 100_000);
        assert!(back.success);

        let escaped = CommandResponse {
            id: "y".into(),
            stdout: "\u{1}".repeat(1024 * 1024),
            ..CommandResponse::default()
        };
        assert!(encode_fitted(escaped, 1024 * 1024).len() <= 1024 * 1024);
    }

    #[test]
    fn a_small_response_is_unchanged() {
        let r = CommandResponse {
            id: "x".into(),
            stdout: "hi".into(),
            ..CommandResponse::default()
        };
        let line = encode_fitted(r.clone(), 1024 * 1024);
        assert_eq!(
            line,
            infinibay_protocol::encode_line(&infinibay_protocol::GuestMessage::Response(r))
                .expect("encodes")
        );
    }

    #[test]
    fn timeouts_default_and_are_clamped() {
        let limits = Limits {
            default_timeout_secs: 60,
            max_timeout_secs: 600,
            ..Limits::default()
        };
        assert_eq!(effective_timeout(None, &limits), Duration::from_secs(60));
        assert_eq!(effective_timeout(Some(0), &limits), Duration::from_secs(60));
        assert_eq!(effective_timeout(Some(5), &limits), Duration::from_secs(5));
        assert_eq!(
            effective_timeout(Some(100_000), &limits),
            Duration::from_secs(600)
        );
    }

    #[test]
    fn a_cancel_that_arrived_first_spawns_nothing() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("ran");
        let spec = crate::platform::exec::touch_spec(&marker);
        let (tx, rx) = oneshot::channel();
        tx.send(()).expect("send cancel");
        let outcome = runtime
            .block_on(run_steps(vec![spec], rx))
            .expect("no spawn error");
        assert_eq!(outcome.end, ExecEnd::Cancelled);
        assert!(!marker.exists(), "the step ran despite the cancel");
    }

    #[test]
    fn folded_output_stays_under_the_cap() {
        let mut acc = exec::CappedOutput {
            bytes: b"abc".to_vec(),
            truncated: false,
            total: 3,
        };
        append_capped(
            &mut acc,
            exec::CappedOutput {
                bytes: b"defgh".to_vec(),
                truncated: false,
                total: 5,
            },
            6,
        );
        assert_eq!(acc.bytes, b"abcdef");
        assert!(acc.truncated);
        assert_eq!(acc.total, 8);
    }
}

//! From bytes to typed messages, for both directions.
//!
//! A v1 guest line that starts with `{"type":"<kind>"` is parsed once, straight into the struct
//! `<kind>` names (the fast path). Every other line, and every line the fast path rejects, takes
//! the full path: an envelope scan that reads only `type` (and, for the original agent's untyped
//! lines, `id`/`success`/`metrics`), then the typed parse. Errors come only from the full path,
//! so they are the same whichever way a line came in. Every failure is a [`DecodeError`] for
//! that line only; the stream goes on with the next line.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::IgnoredAny;
use thiserror::Error;

use crate::frame::{DEFAULT_MAX_LINE, Frame, LineDecoder};
use crate::legacy::{self, LegacyState};
use crate::message::{
    Cancel, CommandResponse, Configure, GuestError, GuestMessage, Hello, HostMessage, Ping, Pong,
    SafeAction, SafeCommand, UnsafeCommand, VmIdentification, Welcome,
};

/// Why one line could not be turned into a message. The stream is unaffected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The line exceeded the maximum length and was discarded.
    #[error("line longer than the limit; {discarded} bytes discarded")]
    LineTooLong {
        /// Bytes thrown away.
        discarded: usize,
    },
    /// A 0xFF arrived mid-line and the partial line was dropped.
    #[error("partial line of {dropped} bytes dropped at a resync marker")]
    PartialLineDropped {
        /// Bytes thrown away.
        dropped: usize,
    },
    /// Not UTF-8.
    #[error("line is not valid UTF-8 (valid up to byte {valid_up_to})")]
    InvalidUtf8 {
        /// Length of the valid prefix.
        valid_up_to: usize,
    },
    /// Not JSON, or not a JSON object, or nested too deeply, or a number out of range.
    #[error("line is not a valid JSON object: {message}")]
    InvalidJson {
        /// serde_json's explanation.
        message: String,
    },
    /// An object without `type` that is not one of the original agent's untyped messages.
    #[error("message has no `type`")]
    MissingType,
    /// A `type` this side does not know.
    #[error("unknown message type `{kind}`")]
    UnknownType {
        /// The type as sent (truncated to 64 bytes).
        kind: String,
    },
    /// A known type whose fields are wrong. `id` is set when the message carried one, so that
    /// a command can still be answered with `invalid`.
    #[error("invalid `{kind}` message: {message}")]
    InvalidMessage {
        /// The message type.
        kind: String,
        /// The request id, when it could be read.
        id: Option<String>,
        /// What is wrong.
        message: String,
    },
}

impl DecodeError {
    /// A short stable label, for counters and deduplicated logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::LineTooLong { .. } => "line_too_long",
            Self::PartialLineDropped { .. } => "partial_line_dropped",
            Self::InvalidUtf8 { .. } => "invalid_utf8",
            Self::InvalidJson { .. } => "invalid_json",
            Self::MissingType => "missing_type",
            Self::UnknownType { .. } => "unknown_type",
            Self::InvalidMessage { .. } => "invalid_message",
        }
    }
}

/// The fields read before the typed parse. Everything else is skipped without allocating.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    success: Option<IgnoredAny>,
    #[serde(default)]
    metrics: Option<IgnoredAny>,
}

fn check_utf8(line: &[u8]) -> Result<&str, DecodeError> {
    std::str::from_utf8(line).map_err(|e| DecodeError::InvalidUtf8 {
        valid_up_to: e.valid_up_to(),
    })
}

fn envelope(line: &str) -> Result<Envelope<'_>, DecodeError> {
    serde_json::from_str(line).map_err(|e| DecodeError::InvalidJson {
        message: e.to_string(),
    })
}

fn id_text(id: &Option<serde_json::Value>) -> Option<String> {
    match id {
        Some(serde_json::Value::String(s)) => Some(s.chars().take(128).collect()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

fn typed<'a, T: Deserialize<'a>>(
    line: &'a str,
    kind: &str,
    id: &Option<serde_json::Value>,
) -> Result<T, DecodeError> {
    serde_json::from_str(line).map_err(|e| DecodeError::InvalidMessage {
        kind: kind.to_owned(),
        id: id_text(id),
        message: e.to_string(),
    })
}

fn truncated_kind(kind: &str) -> String {
    kind.chars().take(64).collect()
}

/// The `type` of a line that starts exactly with `{"type":"<kind>"`, as every v1 agent writes
/// (serde's tagged enums put the tag first, without spaces). `None` for any other shape,
/// including a kind with escapes.
fn leading_kind(text: &str) -> Option<&str> {
    let rest = text.strip_prefix(r#"{"type":""#)?;
    let end = memchr::memchr2(b'"', b'\\', rest.as_bytes())?;
    (rest.as_bytes()[end] == b'"').then(|| &rest[..end])
}

/// The common case in one parse: a v1 message whose `type` comes first goes straight to the
/// typed parse of the struct it names, skipping the envelope scan. Anything else (another
/// shape, an unknown or legacy type, a line the typed parse rejects) returns `None` and takes
/// the full path, which then produces exactly the error (with its `id`) it always did; so
/// this only saves work on valid lines and never changes what an invalid one yields.
///
/// One difference by construction: a later duplicate `type` key is ignored here (the typed
/// structs skip unknown keys), where the envelope scan rejects the line as invalid JSON. The
/// message is still fully validated as the type its first key names.
fn guest_fast_path(text: &str) -> Option<GuestMessage> {
    fn parse<'a, T: Deserialize<'a>>(text: &'a str) -> Option<T> {
        serde_json::from_str(text).ok()
    }
    Some(match leading_kind(text)? {
        "system_metrics" => GuestMessage::SystemMetrics(parse(text)?),
        "process_snapshot" => GuestMessage::ProcessSnapshot(parse(text)?),
        "service_inventory" => GuestMessage::ServiceInventory(parse(text)?),
        "port_usage" => GuestMessage::PortUsage(parse(text)?),
        "application_usage" => GuestMessage::ApplicationUsage(parse(text)?),
        "pong" => GuestMessage::Pong(parse(text)?),
        "response" => GuestMessage::Response(parse(text)?),
        "vm_identification" => GuestMessage::VmIdentification(parse(text)?),
        "error" => GuestMessage::Error(parse(text)?),
        _ => return None,
    })
}

/// Decode one guest→host line. Stateless: the original agent's `metrics` messages are read as
/// if they were the first of their connection (see [`GuestStreamDecoder`] for the stateful form).
pub fn decode_guest_line(line: &[u8]) -> Result<Vec<GuestMessage>, DecodeError> {
    let mut state = LegacyState::default();
    let mut out = Vec::with_capacity(1);
    decode_guest_line_into(line, &mut state, &mut out)?;
    Ok(out)
}

fn decode_guest_line_into(
    line: &[u8],
    legacy_state: &mut LegacyState,
    out: &mut Vec<GuestMessage>,
) -> Result<(), DecodeError> {
    let text = check_utf8(line)?;
    if let Some(message) = guest_fast_path(text) {
        out.push(message);
        return Ok(());
    }
    let env = envelope(text)?;
    let Some(kind) = env.kind.as_deref() else {
        // The original agent's untyped messages.
        if env.id.is_some() && env.success.is_some() {
            out.push(GuestMessage::Response(typed(text, "response", &env.id)?));
            return Ok(());
        }
        if env.metrics.is_some() {
            // `{"timestamp":N,"metrics":{"status":"running"}}` from old prebuilt builds:
            // it proves only that the agent is alive.
            out.push(GuestMessage::Pong(Pong::default()));
            return Ok(());
        }
        return Err(DecodeError::MissingType);
    };
    let message = match kind {
        "vm_identification" => {
            GuestMessage::VmIdentification(typed::<VmIdentification>(text, kind, &env.id)?)
        }
        "system_metrics" => GuestMessage::SystemMetrics(typed(text, kind, &env.id)?),
        "process_snapshot" => GuestMessage::ProcessSnapshot(typed(text, kind, &env.id)?),
        "application_usage" => GuestMessage::ApplicationUsage(typed(text, kind, &env.id)?),
        "port_usage" => GuestMessage::PortUsage(typed(text, kind, &env.id)?),
        "service_inventory" => GuestMessage::ServiceInventory(typed(text, kind, &env.id)?),
        "response" => GuestMessage::Response(typed::<CommandResponse>(text, kind, &env.id)?),
        "error" => GuestMessage::Error(typed::<GuestError>(text, kind, &env.id)?),
        "pong" => GuestMessage::Pong(typed(text, kind, &env.id)?),
        // The original agent's typed messages.
        "metrics" => {
            let parsed = typed(text, kind, &env.id)?;
            legacy::metrics_into(parsed, legacy_state, out);
            return Ok(());
        }
        "connection_status" | "keep_alive" => GuestMessage::Pong(Pong {
            id: None,
            timestamp: typed::<legacy::Stamped>(text, kind, &env.id)?.timestamp,
        }),
        "error_report" => {
            GuestMessage::Error(typed::<legacy::ErrorReport>(text, kind, &env.id)?.into())
        }
        other => {
            return Err(DecodeError::UnknownType {
                kind: truncated_kind(other),
            });
        }
    };
    out.push(message);
    Ok(())
}

/// Decode one host→guest line.
pub fn decode_host_line(line: &[u8]) -> Result<HostMessage, DecodeError> {
    let text = check_utf8(line)?;
    let env = envelope(text)?;
    let Some(kind) = env.kind.as_deref() else {
        return Err(DecodeError::MissingType);
    };
    Ok(match kind {
        "hello" => HostMessage::Hello(typed::<Hello>(text, kind, &env.id)?),
        "welcome" => HostMessage::Welcome(typed::<Welcome>(text, kind, &env.id)?),
        "ping" => HostMessage::Ping(typed::<Ping>(text, kind, &env.id)?),
        "cancel" => HostMessage::Cancel(typed::<Cancel>(text, kind, &env.id)?),
        "configure" => HostMessage::Configure(typed::<Configure>(text, kind, &env.id)?),
        "UnsafeCommand" => {
            let cmd: UnsafeCommand = typed(text, kind, &env.id)?;
            HostMessage::UnsafeCommand(cmd)
        }
        "SafeCommand" => HostMessage::SafeCommand(decode_safe_command(text, &env.id)?),
        other => {
            return Err(DecodeError::UnknownType {
                kind: truncated_kind(other),
            });
        }
    })
}

/// `SafeCommand` is read in two steps so that an unknown action still yields a message (to be
/// answered `unknown_action`) and bad parameters yield an error that still carries the id.
fn decode_safe_command(
    text: &str,
    id: &Option<serde_json::Value>,
) -> Result<SafeCommand, DecodeError> {
    #[derive(Deserialize)]
    struct Raw {
        id: String,
        command_type: serde_json::Value,
        #[serde(default)]
        timeout: Option<u64>,
    }
    let raw: Raw = typed(text, "SafeCommand", id)?;
    let command_type =
        SafeAction::from_json(raw.command_type).map_err(|message| DecodeError::InvalidMessage {
            kind: "SafeCommand".into(),
            id: Some(raw.id.clone()),
            message,
        })?;
    Ok(SafeCommand {
        id: raw.id,
        command_type,
        timeout: raw.timeout,
    })
}

/// Serialize a message as one wire line, `\n` included.
///
/// serde_json escapes control characters inside strings and never emits 0xFF, so the result is
/// always exactly one line. It fails only for values JSON cannot express (maps with non-string
/// keys), which no message type of this crate contains.
pub fn encode_line<T: serde::Serialize>(message: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    Ok(line)
}

/// Counters kept by a stream decoder.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DecoderStats {
    /// Lines framed (good or bad).
    pub lines: u64,
    /// Messages produced.
    pub messages: u64,
    /// Lines or partial lines that produced an error.
    pub errors: u64,
}

/// Framing plus guest-message decoding for one connection.
#[derive(Debug)]
pub struct GuestStreamDecoder {
    lines: LineDecoder,
    legacy: LegacyState,
    scratch: Vec<GuestMessage>,
    stats: DecoderStats,
}

impl Default for GuestStreamDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LINE)
    }
}

impl GuestStreamDecoder {
    /// A decoder refusing lines longer than `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        Self {
            lines: LineDecoder::new(max_line),
            legacy: LegacyState::default(),
            scratch: Vec::new(),
            stats: DecoderStats::default(),
        }
    }

    /// Bytes held for an incomplete line.
    pub fn buffered(&self) -> usize {
        self.lines.buffered()
    }

    /// Counters so far.
    pub fn stats(&self) -> DecoderStats {
        self.stats
    }

    /// Forget partial input and per-connection state (after a reconnect).
    pub fn reset(&mut self) {
        self.lines.reset();
        self.legacy = LegacyState::default();
    }

    /// Feed a chunk; `on_item` gets each message or per-line error in order.
    pub fn decode<F>(&mut self, chunk: &[u8], mut on_item: F)
    where
        F: FnMut(Result<GuestMessage, DecodeError>),
    {
        let Self {
            lines,
            legacy,
            scratch,
            stats,
        } = self;
        lines.decode(chunk, |frame| {
            let result = match frame {
                Frame::Line(line) => {
                    stats.lines += 1;
                    decode_guest_line_into(line, legacy, scratch)
                }
                Frame::Oversize { discarded } => {
                    stats.lines += 1;
                    Err(DecodeError::LineTooLong { discarded })
                }
                Frame::Resynced { dropped } => Err(DecodeError::PartialLineDropped { dropped }),
            };
            match result {
                Ok(()) => {
                    for message in scratch.drain(..) {
                        stats.messages += 1;
                        on_item(Ok(message));
                    }
                }
                Err(e) => {
                    scratch.clear();
                    stats.errors += 1;
                    on_item(Err(e));
                }
            }
        });
    }
}

/// Framing plus host-message decoding, for the agent.
#[derive(Debug)]
pub struct HostStreamDecoder {
    lines: LineDecoder,
    stats: DecoderStats,
}

impl Default for HostStreamDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LINE)
    }
}

impl HostStreamDecoder {
    /// A decoder refusing lines longer than `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        Self {
            lines: LineDecoder::new(max_line),
            stats: DecoderStats::default(),
        }
    }

    /// Bytes held for an incomplete line.
    pub fn buffered(&self) -> usize {
        self.lines.buffered()
    }

    /// Counters so far.
    pub fn stats(&self) -> DecoderStats {
        self.stats
    }

    /// Forget partial input.
    pub fn reset(&mut self) {
        self.lines.reset();
    }

    /// Feed a chunk; `on_item` gets each message or per-line error in order.
    pub fn decode<F>(&mut self, chunk: &[u8], mut on_item: F)
    where
        F: FnMut(Result<HostMessage, DecodeError>),
    {
        let stats = &mut self.stats;
        self.lines.decode(chunk, |frame| {
            let result = match frame {
                Frame::Line(line) => {
                    stats.lines += 1;
                    decode_host_line(line)
                }
                Frame::Oversize { discarded } => {
                    stats.lines += 1;
                    Err(DecodeError::LineTooLong { discarded })
                }
                Frame::Resynced { dropped } => Err(DecodeError::PartialLineDropped { dropped }),
            };
            match &result {
                Ok(_) => stats.messages += 1,
                Err(_) => stats.errors += 1,
            }
            on_item(result);
        });
    }
}

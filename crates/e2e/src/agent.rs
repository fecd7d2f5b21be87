//! A minimal host side of protocol v1, for tests that talk to `infiniservice` directly
//! through its virtio-serial port (no `infinibay` involved).
//!
//! It uses the protocol crate's own encoder and stream decoder, so what it accepts is exactly
//! what the real host accepts. Messages that arrive while the client waits for something else
//! are kept (bounded) and offered to the next wait.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use infinibay_protocol::message::{
    CommandResponse, Hello, Ping, SafeAction, SafeCommand, UnsafeCommand, VmIdentification, Welcome,
};
use infinibay_protocol::{
    DecodeError, GuestMessage, GuestStreamDecoder, HostMessage, PROTOCOL_VERSION, RESYNC,
    encode_line,
};

use crate::lines::{connect_unix, remaining};
use crate::{Error, Result};

/// Messages kept for later waits; the agent sends metrics every second, so an unread backlog
/// would otherwise grow for as long as a test runs.
const MAX_BACKLOG: usize = 4096;

/// A connection to the agent's port, seen from the host side.
pub struct AgentClient {
    stream: UnixStream,
    decoder: GuestStreamDecoder,
    backlog: VecDeque<GuestMessage>,
    decode_errors: Vec<DecodeError>,
    next_id: u64,
}

impl AgentClient {
    /// Connect to the host side of the agent's port (`vm-<uuid>.sock`). QEMU accepts even when
    /// no agent runs: only [`AgentClient::hello`] proves the agent is there.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Self> {
        let stream = connect_unix(socket, Instant::now() + timeout, "agent port")?;
        Ok(Self {
            stream,
            decoder: GuestStreamDecoder::default(),
            backlog: VecDeque::new(),
            decode_errors: Vec::new(),
            next_id: 1,
        })
    }

    /// Lines the decoder refused so far (a correct agent produces none).
    pub fn decode_errors(&self) -> &[DecodeError] {
        &self.decode_errors
    }

    /// Forget the messages kept for later waits (after a `ping`, everything the agent sent
    /// before its `pong` has been read, so this leaves a clean slate).
    pub fn clear_backlog(&mut self) {
        self.backlog.clear();
    }

    /// A fresh request id.
    pub fn new_id(&mut self, prefix: &str) -> String {
        let id = format!("{prefix}-{}", self.next_id);
        self.next_id += 1;
        id
    }

    /// Write one message as a line.
    pub fn send(&mut self, message: &HostMessage) -> Result<()> {
        let line = encode_line(message)
            .map_err(|e| Error::protocol(format!("encoding {}", message.kind()), e.to_string()))?;
        self.stream
            .write_all(&line)
            .map_err(Error::io("writing to the agent port"))
    }

    /// Write raw bytes (for framing tests: split lines, several messages in one write).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream
            .write_all(bytes)
            .map_err(Error::io("writing to the agent port"))
    }

    /// The handshake the host does on every connect: 0xFF, `hello`, wait for
    /// `vm_identification`, answer `welcome`. Identifications queued before the hello (the
    /// agent also sends one at its own start) are dropped so that the answer is fresh.
    pub fn hello(&mut self, timeout: Duration) -> Result<VmIdentification> {
        self.backlog
            .retain(|m| !matches!(m, GuestMessage::VmIdentification(_)));
        let mut bytes = vec![RESYNC];
        bytes.extend(
            encode_line(&HostMessage::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                timestamp: None,
            }))
            .map_err(|e| Error::protocol("encoding hello", e.to_string()))?,
        );
        self.send_raw(&bytes)?;
        let identification =
            self.wait_for("vm_identification after hello", timeout, |m| match m {
                GuestMessage::VmIdentification(id) => Some(id.clone()),
                _ => None,
            })?;
        self.send(&HostMessage::Welcome(Welcome {
            protocol_version: identification.protocol_version.min(PROTOCOL_VERSION),
            timestamp: None,
        }))?;
        Ok(identification)
    }

    /// The next message, from the backlog first.
    pub fn recv(&mut self, timeout: Duration) -> Result<GuestMessage> {
        self.wait_for("any message", timeout, |m| Some(m.clone()))
    }

    /// Wait for the first message `pick` accepts; the others stay queued.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pick: impl FnMut(&GuestMessage) -> Option<T>,
    ) -> Result<T> {
        if let Some(position) = self.backlog.iter().position(|m| pick(m).is_some()) {
            if let Some(message) = self.backlog.remove(position) {
                if let Some(found) = pick(&message) {
                    return Ok(found);
                }
            }
        }
        let started = Instant::now();
        let deadline = started + timeout;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let left = remaining(
                deadline,
                started,
                &format!("waiting for {what} from the agent"),
            )?;
            self.stream
                .set_read_timeout(Some(left))
                .map_err(Error::io("setting a timeout on the agent port"))?;
            let n = match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(Error::Closed {
                        what: "agent port".into(),
                    });
                }
                Ok(n) => n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(Error::Io {
                        what: "reading from the agent port".into(),
                        source,
                    });
                }
            };
            let mut found = None;
            let backlog = &mut self.backlog;
            let errors = &mut self.decode_errors;
            self.decoder.decode(&chunk[..n], |item| match item {
                Ok(message) => {
                    if found.is_none() {
                        if let Some(value) = pick(&message) {
                            found = Some(value);
                            return;
                        }
                    }
                    if backlog.len() == MAX_BACKLOG {
                        backlog.pop_front();
                    }
                    backlog.push_back(message);
                }
                Err(e) => errors.push(e),
            });
            if let Some(value) = found {
                return Ok(value);
            }
        }
    }

    /// `ping` → `pong` with the same id; the round trip time.
    pub fn ping(&mut self, timeout: Duration) -> Result<Duration> {
        let id = self.new_id("ping");
        let started = Instant::now();
        self.send(&HostMessage::Ping(Ping {
            id: Some(id.clone()),
            timestamp: None,
        }))?;
        self.wait_for(&format!("pong {id}"), timeout, |m| match m {
            GuestMessage::Pong(p) if p.id.as_deref() == Some(id.as_str()) => Some(()),
            _ => None,
        })?;
        Ok(started.elapsed())
    }

    /// Send a command that carries `id` and wait for its one `response`.
    pub fn request(&mut self, command: &HostMessage, timeout: Duration) -> Result<CommandResponse> {
        let id = command
            .id()
            .ok_or_else(|| Error::protocol("request", format!("{} has no id", command.kind())))?
            .to_owned();
        self.send(command)?;
        self.wait_for(&format!("response {id}"), timeout, |m| match m {
            GuestMessage::Response(r) if r.id == id => Some(r.clone()),
            _ => None,
        })
    }

    /// A `SafeCommand`.
    pub fn safe(&mut self, action: SafeAction, timeout: Duration) -> Result<CommandResponse> {
        let id = self.new_id("safe");
        self.request(
            &HostMessage::SafeCommand(SafeCommand {
                id,
                command_type: action,
                timeout: None,
            }),
            timeout,
        )
    }

    /// An `UnsafeCommand` in argv form (no shell).
    pub fn run_argv(&mut self, argv: &[&str], timeout: Duration) -> Result<CommandResponse> {
        let id = self.new_id("unsafe");
        self.request(
            &HostMessage::UnsafeCommand(UnsafeCommand {
                id,
                argv: Some(argv.iter().map(|s| s.to_string()).collect()),
                timeout: Some(timeout.as_secs().max(1)),
                ..UnsafeCommand::default()
            }),
            timeout + Duration::from_secs(5),
        )
    }

    /// An `UnsafeCommand` as a shell string.
    pub fn run_shell(&mut self, script: &str, timeout: Duration) -> Result<CommandResponse> {
        let id = self.new_id("unsafe");
        self.request(
            &HostMessage::UnsafeCommand(UnsafeCommand {
                id,
                raw_command: Some(script.to_owned()),
                timeout: Some(timeout.as_secs().max(1)),
                ..UnsafeCommand::default()
            }),
            timeout + Duration::from_secs(5),
        )
    }
}

//! Lines waiting to be written to the host, and the backlog rule that bounds them.
//!
//! The rule, whether the host is away or just reading slowly:
//! - telemetry (`system_metrics`, `process_snapshot`, inventories): only the newest line of each
//!   kind is kept; a newer sample replaces the queued one. Old samples have no value and a
//!   queue of them would grow for as long as the host is away.
//! - `vm_identification`: the newest only.
//! - replies (`response`, `pong`, `error`): kept in order and never replaced, because each
//!   answers one request. They cannot grow without bound: each one answers a request the host
//!   sent, and at most `max_concurrent_commands` commands run at once. A hard cap
//!   ([`MAX_QUEUED_REPLY_BYTES`]) still protects the agent if a host floods pings and never reads.
//! - a line that was partly written is finished before anything else (see
//!   [`Outbox::connection_lost`] for what happens to it across a reconnect).
//!
//! Order of sending: the unfinished line, identification, replies, then telemetry.

use std::collections::VecDeque;

/// Bytes of replies kept while the host does not read. Far above what the concurrency limit
/// allows in normal use (4 commands × 2 MiB of output).
pub const MAX_QUEUED_REPLY_BYTES: usize = 32 * 1024 * 1024;

/// What a line is, for the backlog rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineClass {
    /// `vm_identification`.
    Identification,
    /// An answer to a request: kept, in order.
    Reply,
    /// A periodic sample: newest of each kind only.
    Telemetry(TelemetryKind),
}

/// The kinds of periodic samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TelemetryKind {
    /// `system_metrics`.
    SystemMetrics = 0,
    /// `process_snapshot`.
    ProcessSnapshot = 1,
    /// `port_usage`.
    PortUsage = 2,
    /// `application_usage`.
    ApplicationUsage = 3,
    /// `service_inventory`.
    ServiceInventory = 4,
}

const TELEMETRY_KINDS: usize = 5;

#[derive(Debug)]
struct InFlight {
    class: LineClass,
    bytes: Vec<u8>,
    written: usize,
}

/// The queue of outgoing lines.
#[derive(Debug, Default)]
pub struct Outbox {
    in_flight: Option<InFlight>,
    identification: Option<Vec<u8>>,
    replies: VecDeque<Vec<u8>>,
    reply_bytes: usize,
    telemetry: [Option<Vec<u8>>; TELEMETRY_KINDS],
    dropped_telemetry: u64,
    dropped_replies: u64,
}

impl Outbox {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queue one encoded line (with its `\n`).
    pub fn push(&mut self, class: LineClass, line: Vec<u8>) {
        match class {
            LineClass::Identification => self.identification = Some(line),
            LineClass::Reply => {
                self.reply_bytes += line.len();
                self.replies.push_back(line);
                while self.reply_bytes > MAX_QUEUED_REPLY_BYTES && self.replies.len() > 1 {
                    if let Some(old) = self.replies.pop_front() {
                        self.reply_bytes -= old.len();
                        self.dropped_replies += 1;
                        tracing::warn!(
                            dropped_replies = self.dropped_replies,
                            "reply backlog over its cap: dropped the oldest reply"
                        );
                    }
                }
            }
            LineClass::Telemetry(kind) => {
                if self.telemetry[kind as usize].replace(line).is_some() {
                    self.dropped_telemetry += 1;
                }
            }
        }
    }

    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.in_flight.is_none()
            && self.identification.is_none()
            && self.replies.is_empty()
            && self.telemetry.iter().all(Option::is_none)
    }

    /// Lines queued (the unfinished one included).
    pub fn len(&self) -> usize {
        usize::from(self.in_flight.is_some())
            + usize::from(self.identification.is_some())
            + self.replies.len()
            + self.telemetry.iter().flatten().count()
    }

    /// Samples replaced by a newer one before they could be sent.
    pub fn dropped_telemetry(&self) -> u64 {
        self.dropped_telemetry
    }

    /// The bytes to write next: the rest of the unfinished line, or the next line.
    pub fn next_chunk(&mut self) -> Option<&[u8]> {
        if self.in_flight.is_none() {
            self.in_flight = self.take_next();
        }
        self.in_flight.as_ref().map(|f| &f.bytes[f.written..])
    }

    /// `n` bytes of [`Self::next_chunk`] were written.
    pub fn advance(&mut self, n: usize) {
        if let Some(f) = &mut self.in_flight {
            f.written += n;
            if f.written >= f.bytes.len() {
                self.in_flight = None;
            }
        }
    }

    /// The connection to the host is gone.
    ///
    /// `stream_survives` is true for virtio-serial: QEMU keeps the guest's byte stream across
    /// host reconnects (bytes written in the gap reach the next host, nothing repeated), so a
    /// partly written line is finished where it stopped — restarting it would corrupt the
    /// stream. For a UNIX socket the stream dies with the client: the next client gets a new
    /// stream, so the whole line is offered again from its start (the old client saw only a
    /// partial line, which its decoder drops at EOF).
    pub fn connection_lost(&mut self, stream_survives: bool) {
        if stream_survives {
            return;
        }
        if let Some(f) = self.in_flight.take() {
            match f.class {
                LineClass::Reply => {
                    self.reply_bytes += f.bytes.len();
                    self.replies.push_front(f.bytes);
                }
                LineClass::Identification => {
                    if self.identification.is_none() {
                        self.identification = Some(f.bytes);
                    }
                }
                LineClass::Telemetry(kind) => {
                    let slot = &mut self.telemetry[kind as usize];
                    if slot.is_none() {
                        *slot = Some(f.bytes);
                    }
                }
            }
        }
    }

    fn take_next(&mut self) -> Option<InFlight> {
        let (class, bytes) = if let Some(line) = self.identification.take() {
            (LineClass::Identification, line)
        } else if let Some(line) = self.replies.pop_front() {
            self.reply_bytes -= line.len();
            (LineClass::Reply, line)
        } else {
            let index = self.telemetry.iter().position(Option::is_some)?;
            let line = self.telemetry[index].take()?;
            (LineClass::Telemetry(kind_at(index)), line)
        };
        Some(InFlight {
            class,
            bytes,
            written: 0,
        })
    }
}

fn kind_at(index: usize) -> TelemetryKind {
    match index {
        0 => TelemetryKind::SystemMetrics,
        1 => TelemetryKind::ProcessSnapshot,
        2 => TelemetryKind::PortUsage,
        3 => TelemetryKind::ApplicationUsage,
        _ => TelemetryKind::ServiceInventory,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(outbox: &mut Outbox) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        while let Some(chunk) = outbox.next_chunk() {
            let line = chunk.to_vec();
            let n = line.len();
            lines.push(line);
            outbox.advance(n);
        }
        lines
    }

    #[test]
    fn telemetry_keeps_only_the_newest_sample_of_each_kind() {
        let mut o = Outbox::new();
        for i in 0..1000 {
            o.push(
                LineClass::Telemetry(TelemetryKind::SystemMetrics),
                format!("m{i}\n").into_bytes(),
            );
            o.push(
                LineClass::Telemetry(TelemetryKind::ProcessSnapshot),
                format!("p{i}\n").into_bytes(),
            );
        }
        assert_eq!(o.len(), 2);
        assert_eq!(o.dropped_telemetry(), 1998);
        assert_eq!(drain(&mut o), vec![b"m999\n".to_vec(), b"p999\n".to_vec()]);
        assert!(o.is_empty());
    }

    #[test]
    fn replies_are_all_kept_in_order_and_go_before_telemetry() {
        let mut o = Outbox::new();
        o.push(
            LineClass::Telemetry(TelemetryKind::PortUsage),
            b"ports\n".to_vec(),
        );
        for i in 0..10 {
            o.push(LineClass::Reply, format!("r{i}\n").into_bytes());
        }
        o.push(LineClass::Identification, b"id-old\n".to_vec());
        o.push(LineClass::Identification, b"id\n".to_vec());
        let lines = drain(&mut o);
        assert_eq!(lines.len(), 12);
        assert_eq!(lines[0], b"id\n");
        for (i, line) in lines[1..11].iter().enumerate() {
            assert_eq!(line, format!("r{i}\n").as_bytes());
        }
        assert_eq!(lines[11], b"ports\n");
    }

    #[test]
    fn a_partial_write_is_continued_where_it_stopped() {
        let mut o = Outbox::new();
        o.push(LineClass::Reply, b"0123456789\n".to_vec());
        o.push(
            LineClass::Telemetry(TelemetryKind::SystemMetrics),
            b"m\n".to_vec(),
        );
        assert_eq!(o.next_chunk(), Some(&b"0123456789\n"[..]));
        o.advance(4);
        // A newer sample arriving meanwhile must not jump in front of the unfinished line.
        o.push(
            LineClass::Telemetry(TelemetryKind::SystemMetrics),
            b"m2\n".to_vec(),
        );
        assert_eq!(o.next_chunk(), Some(&b"456789\n"[..]));
        o.advance(7);
        assert_eq!(o.next_chunk(), Some(&b"m2\n"[..]));
    }

    #[test]
    fn virtio_reconnect_finishes_the_partial_line_and_unix_reconnect_resends_it_whole() {
        let mut virtio = Outbox::new();
        virtio.push(LineClass::Reply, b"abcdef\n".to_vec());
        let _ = virtio.next_chunk();
        virtio.advance(3);
        virtio.connection_lost(true);
        assert_eq!(virtio.next_chunk(), Some(&b"def\n"[..]));

        let mut unix = Outbox::new();
        unix.push(LineClass::Reply, b"abcdef\n".to_vec());
        unix.push(LineClass::Reply, b"second\n".to_vec());
        let _ = unix.next_chunk();
        unix.advance(3);
        unix.connection_lost(false);
        assert_eq!(
            drain(&mut unix),
            vec![b"abcdef\n".to_vec(), b"second\n".to_vec()]
        );
    }

    #[test]
    fn a_resent_sample_does_not_override_a_newer_one() {
        let mut o = Outbox::new();
        o.push(
            LineClass::Telemetry(TelemetryKind::SystemMetrics),
            b"old\n".to_vec(),
        );
        let _ = o.next_chunk();
        o.advance(1);
        o.push(
            LineClass::Telemetry(TelemetryKind::SystemMetrics),
            b"new\n".to_vec(),
        );
        o.connection_lost(false);
        assert_eq!(drain(&mut o), vec![b"new\n".to_vec()]);
    }

    #[test]
    fn reply_backlog_is_capped_by_bytes() {
        let mut o = Outbox::new();
        let big = vec![b'x'; 1024 * 1024];
        for _ in 0..40 {
            o.push(LineClass::Reply, big.clone());
        }
        assert!(o.len() <= MAX_QUEUED_REPLY_BYTES / big.len());
        assert!(o.reply_bytes <= MAX_QUEUED_REPLY_BYTES);
    }
}

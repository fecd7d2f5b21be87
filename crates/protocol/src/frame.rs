//! Line framing: newline-terminated lines, a hard maximum length, and 0xFF resync.
//!
//! The decoder is fed whatever chunks the transport produced (a virtio-serial read, a UNIX
//! socket read) and hands back complete lines. It is deliberately transport-agnostic (no tokio):
//! the guest agent and the host wrap it in their own read loops.
//!
//! Guarantees, relied upon by both sides and checked by property tests:
//! - never more than `max_line` bytes of an incomplete line are held;
//! - a line longer than `max_line` is dropped up to its newline and reported once as
//!   [`Frame::Oversize`], after which the stream goes on;
//! - a 0xFF byte drops whatever partial line is held (the sender's "start afresh" marker, as
//!   qemu-ga's `guest-sync-delimited`), so the next byte starts a new line.

/// Default hard maximum line length: 1 MiB.
pub const DEFAULT_MAX_LINE: usize = 1024 * 1024;

/// The resync byte. It never occurs in UTF-8 text, so it cannot be confused with JSON.
pub const RESYNC: u8 = 0xFF;

/// What the framing layer hands upwards.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete line, without its `\n` (and without a trailing `\r`, which some Windows
    /// writers add). Empty lines are skipped and never reported.
    Line(&'a [u8]),
    /// A line exceeded the limit and was discarded; `discarded` counts its bytes (newline
    /// excluded) so that the receiver can report how much was thrown away.
    Oversize {
        /// Bytes dropped for this line.
        discarded: usize,
    },
    /// A 0xFF arrived while a partial line was held; that partial line (`dropped` bytes)
    /// was thrown away.
    Resynced {
        /// Bytes of the partial line that were dropped.
        dropped: usize,
    },
}

/// Incremental line decoder with a hard memory bound.
#[derive(Debug)]
pub struct LineDecoder {
    max_line: usize,
    /// Bytes of the current, still incomplete line. Never longer than `max_line`.
    partial: Vec<u8>,
    /// `Some(n)` while we are throwing away an over-long line: `n` bytes dropped so far.
    discarding: Option<usize>,
}

impl Default for LineDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LINE)
    }
}

impl LineDecoder {
    /// A decoder that refuses lines longer than `max_line` bytes (at least 1).
    pub fn new(max_line: usize) -> Self {
        Self {
            max_line: max_line.max(1),
            partial: Vec::new(),
            discarding: None,
        }
    }

    /// The configured maximum line length.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Bytes currently held for an incomplete line (always `<= max_line`).
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Whether the decoder is in the middle of a line (held or being discarded).
    pub fn is_mid_line(&self) -> bool {
        !self.partial.is_empty() || self.discarding.is_some()
    }

    /// Forget any partial line, as after a reconnect.
    pub fn reset(&mut self) {
        self.partial.clear();
        self.discarding = None;
        self.shrink_if_large();
    }

    /// Feed one chunk; `on_frame` is called for every frame it completes, in order.
    ///
    /// Lines that lie wholly inside `chunk` are passed without copying; only the tail of an
    /// incomplete line is copied into the decoder.
    pub fn decode<F>(&mut self, mut chunk: &[u8], mut on_frame: F)
    where
        F: FnMut(Frame<'_>),
    {
        while !chunk.is_empty() {
            let Some(pos) = memchr::memchr2(b'\n', RESYNC, chunk) else {
                self.absorb_partial(chunk);
                return;
            };
            let (segment, delimiter) = (&chunk[..pos], chunk[pos]);
            chunk = &chunk[pos + 1..];

            if let Some(dropped) = self.discarding.take() {
                // Whether a newline or a resync ends it, the over-long line is over.
                on_frame(Frame::Oversize {
                    discarded: dropped + segment.len(),
                });
                continue;
            }

            if delimiter == RESYNC {
                let dropped = self.partial.len() + segment.len();
                self.partial.clear();
                // Report exactly what a byte-by-byte feed would: a partial line that had
                // already outgrown the limit is an over-long line, whatever ends it.
                if dropped > self.max_line {
                    on_frame(Frame::Oversize { discarded: dropped });
                } else if dropped > 0 {
                    on_frame(Frame::Resynced { dropped });
                }
                continue;
            }

            // delimiter is '\n': a line ends here.
            if self.partial.is_empty() {
                if segment.len() > self.max_line {
                    on_frame(Frame::Oversize {
                        discarded: segment.len(),
                    });
                } else {
                    emit_line(segment, &mut on_frame);
                }
            } else if self.partial.len() + segment.len() > self.max_line {
                let discarded = self.partial.len() + segment.len();
                self.partial.clear();
                on_frame(Frame::Oversize { discarded });
            } else {
                self.partial.extend_from_slice(segment);
                let line = std::mem::take(&mut self.partial);
                emit_line(&line, &mut on_frame);
                // Reuse the allocation for the next partial line.
                self.partial = line;
                self.partial.clear();
            }
        }
        self.shrink_if_large();
    }

    /// Keep (part of) a line that has not ended yet, or start discarding it.
    fn absorb_partial(&mut self, tail: &[u8]) {
        if let Some(dropped) = self.discarding.as_mut() {
            *dropped += tail.len();
            return;
        }
        if self.partial.len() + tail.len() > self.max_line {
            self.discarding = Some(self.partial.len() + tail.len());
            self.partial.clear();
            self.shrink_if_large();
        } else {
            self.partial.extend_from_slice(tail);
        }
    }

    /// A single huge line must not pin its buffer forever.
    fn shrink_if_large(&mut self) {
        const KEEP: usize = 64 * 1024;
        if self.partial.is_empty() && self.partial.capacity() > KEEP {
            self.partial = Vec::new();
        }
    }
}

fn emit_line<F: FnMut(Frame<'_>)>(line: &[u8], on_frame: &mut F) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if !line.iter().all(u8::is_ascii_whitespace) {
        on_frame(Frame::Line(line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum Owned {
        Line(Vec<u8>),
        Oversize(usize),
        Resynced(usize),
    }

    fn run(decoder: &mut LineDecoder, chunks: &[&[u8]]) -> Vec<Owned> {
        let mut out = Vec::new();
        for chunk in chunks {
            decoder.decode(chunk, |f| {
                out.push(match f {
                    Frame::Line(l) => Owned::Line(l.to_vec()),
                    Frame::Oversize { discarded } => Owned::Oversize(discarded),
                    Frame::Resynced { dropped } => Owned::Resynced(dropped),
                })
            });
        }
        out
    }

    #[test]
    fn two_lines_in_one_chunk_are_both_returned() {
        let mut d = LineDecoder::new(100);
        let out = run(&mut d, &[b"{\"a\":1}\n{\"b\":2}\n"]);
        assert_eq!(
            out,
            vec![
                Owned::Line(b"{\"a\":1}".to_vec()),
                Owned::Line(b"{\"b\":2}".to_vec())
            ]
        );
    }

    #[test]
    fn a_line_split_across_chunks_is_reassembled() {
        let mut d = LineDecoder::new(100);
        let out = run(&mut d, &[b"{\"type\"", b":\"ping\"", b"}\r\n"]);
        assert_eq!(out, vec![Owned::Line(b"{\"type\":\"ping\"}".to_vec())]);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn an_overlong_line_is_discarded_and_the_stream_goes_on() {
        let mut d = LineDecoder::new(8);
        let out = run(&mut d, &[b"0123456789", b"abcdef\nok\n"]);
        assert_eq!(out, vec![Owned::Oversize(16), Owned::Line(b"ok".to_vec())]);
        assert!(d.buffered() <= 8);
    }

    #[test]
    fn an_overlong_line_inside_one_chunk_is_discarded() {
        let mut d = LineDecoder::new(4);
        let out = run(&mut d, &[b"123456\nab\n"]);
        assert_eq!(out, vec![Owned::Oversize(6), Owned::Line(b"ab".to_vec())]);
    }

    #[test]
    fn resync_byte_drops_the_partial_line() {
        let mut d = LineDecoder::new(100);
        let out = run(&mut d, &[b"{\"half", &[RESYNC], b"{\"x\":1}\n"]);
        assert_eq!(
            out,
            vec![Owned::Resynced(6), Owned::Line(b"{\"x\":1}".to_vec())]
        );
    }

    #[test]
    fn resync_with_nothing_held_is_silent() {
        let mut d = LineDecoder::new(100);
        let out = run(&mut d, &[&[RESYNC, RESYNC], b"a\n"]);
        assert_eq!(out, vec![Owned::Line(b"a".to_vec())]);
    }

    #[test]
    fn blank_lines_are_skipped() {
        let mut d = LineDecoder::new(100);
        let out = run(&mut d, &[b"\n\r\n  \nx\n"]);
        assert_eq!(out, vec![Owned::Line(b"x".to_vec())]);
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_accepted() {
        let mut d = LineDecoder::new(4);
        let out = run(&mut d, &[b"ab", b"cd\n"]);
        assert_eq!(out, vec![Owned::Line(b"abcd".to_vec())]);
    }
}

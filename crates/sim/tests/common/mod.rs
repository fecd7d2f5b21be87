//! A minimal host side for the tests: connects to a simulated VM's socket like the host does.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use infinibay_protocol::{GuestMessage, HostMessage, RESYNC, decode_guest_line, encode_line};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// One line from the guest: its raw size and what it decodes to.
#[derive(Debug)]
pub struct Line {
    pub raw: Vec<u8>,
    pub messages: Vec<GuestMessage>,
    pub at: Instant,
}

pub struct HostSide {
    pub stream: UnixStream,
    buffer: Vec<u8>,
}

impl HostSide {
    pub async fn connect(path: &Path) -> Self {
        let stream = UnixStream::connect(path)
            .await
            .expect("the simulated VM's socket accepts connections");
        Self {
            stream,
            buffer: Vec::new(),
        }
    }

    /// 0xFF then `hello`, as the host does on every (re)connect.
    pub async fn hello(&mut self) {
        let hello = serde_json::json!({"type": "hello", "protocol_version": 1});
        let mut bytes = vec![RESYNC];
        bytes.extend_from_slice(&serde_json::to_vec(&hello).expect("hello serializes"));
        bytes.push(b'\n');
        self.stream
            .write_all(&bytes)
            .await
            .expect("hello is written");
    }

    pub async fn send(&mut self, message: &HostMessage) {
        let line = encode_line(message).expect("host message serializes");
        self.stream
            .write_all(&line)
            .await
            .expect("request is written");
    }

    pub async fn send_raw(&mut self, line: &str) {
        self.stream
            .write_all(line.as_bytes())
            .await
            .expect("request is written");
    }

    /// The next line, or `None` if nothing arrives within `wait` (or the stream ends).
    pub async fn next_line(&mut self, wait: Duration) -> Option<Line> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let raw: Vec<u8> = self.buffer.drain(..=end).collect();
                let body = &raw[..raw.len() - 1];
                let messages = decode_guest_line(body).unwrap_or_else(|e| {
                    panic!(
                        "guest line does not decode: {e}: {}",
                        String::from_utf8_lossy(body)
                    )
                });
                return Some(Line {
                    raw,
                    messages,
                    at: Instant::now(),
                });
            }
            let mut chunk = vec![0u8; 256 * 1024];
            let read = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await;
            match read {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The first line whose first message satisfies `want`, skipping others.
    pub async fn wait_for(
        &mut self,
        wait: Duration,
        mut want: impl FnMut(&GuestMessage) -> bool,
    ) -> Option<Line> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.next_line(left).await?;
            if line.messages.iter().any(&mut want) {
                return Some(line);
            }
        }
    }

    /// Every line until `wait` has passed.
    pub async fn collect_for(&mut self, wait: Duration) -> Vec<Line> {
        let deadline = Instant::now() + wait;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return lines;
            }
            match self.next_line(left).await {
                Some(line) => lines.push(line),
                None => return lines,
            }
        }
    }
}

pub fn response_of(line: &Line) -> Option<&infinibay_protocol::message::CommandResponse> {
    line.messages.iter().find_map(|m| match m {
        GuestMessage::Response(r) => Some(r),
        _ => None,
    })
}

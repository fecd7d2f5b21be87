//! A UNIX-socket connection read line by line against a deadline (qemu-ga and QMP).

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Longest line accepted; qemu-ga's `guest-exec-status` carries base64 output of up to
/// 16 MiB, so this is generous on purpose.
const MAX_LINE: usize = 64 * 1024 * 1024;

pub(crate) struct LineStream {
    stream: UnixStream,
    /// Bytes read past the last returned line.
    buffer: Vec<u8>,
    what: String,
}

/// Connect, retrying while QEMU has not created (or not started listening on) the socket.
pub(crate) fn connect_unix(path: &Path, deadline: Instant, what: &str) -> Result<UnixStream> {
    loop {
        match UnixStream::connect(path) {
            Ok(stream) => return Ok(stream),
            Err(e)
                if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused)
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(Error::Io {
                    what: format!("connecting to {what} at {}", path.display()),
                    source,
                });
            }
        }
    }
}

/// Time left until `deadline`, or a timeout error naming `what`.
pub(crate) fn remaining(deadline: Instant, started: Instant, what: &str) -> Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Error::Timeout {
            what: what.to_owned(),
            after: deadline.saturating_duration_since(started),
        });
    }
    Ok(left)
}

impl LineStream {
    pub(crate) fn connect(path: &Path, deadline: Instant, what: &str) -> Result<Self> {
        let stream = connect_unix(path, deadline, what)?;
        Ok(Self {
            stream,
            buffer: Vec::new(),
            what: what.to_owned(),
        })
    }

    pub(crate) fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream
            .write_all(bytes)
            .map_err(Error::io(format!("writing to {}", self.what)))
    }

    /// The next line without its `\n`.
    pub(crate) fn read_line(&mut self, deadline: Instant) -> Result<Vec<u8>> {
        let started = Instant::now();
        let mut chunk = [0u8; 64 * 1024];
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buffer.drain(..=end).collect();
                line.pop();
                return Ok(line);
            }
            if self.buffer.len() > MAX_LINE {
                return Err(Error::protocol(
                    &self.what,
                    format!("line longer than {MAX_LINE} bytes"),
                ));
            }
            let left = remaining(deadline, started, &format!("reading from {}", self.what))?;
            self.stream
                .set_read_timeout(Some(left))
                .map_err(Error::io(format!("setting a timeout on {}", self.what)))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(Error::Closed {
                        what: self.what.clone(),
                    });
                }
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(Error::Timeout {
                        what: format!("reading from {}", self.what),
                        after: started.elapsed(),
                    });
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(Error::Io {
                        what: format!("reading from {}", self.what),
                        source,
                    });
                }
            }
        }
    }
}

//! Reading small kernel files into reused buffers, and the collectors' error type.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Why a collector could not read or understand one source.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// What was read.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// A file was read but did not have the expected layout.
    #[error("{path}: unexpected format: {detail}")]
    Format {
        /// What was read.
        path: PathBuf,
        /// What was wrong.
        detail: &'static str,
    },
    /// An external tool (systemctl, rpm) could not be run or failed.
    #[error("`{program}` failed: {detail}")]
    Tool {
        /// The program.
        program: &'static str,
        /// What happened.
        detail: String,
    },
}

impl CollectError {
    pub(crate) fn read(path: &Path, source: io::Error) -> Self {
        Self::Read {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn format(path: &Path, detail: &'static str) -> Self {
        Self::Format {
            path: path.to_path_buf(),
            detail,
        }
    }

    /// True when the source simply does not exist (no swap file, no hwmon, no systemd): an
    /// absence, not a fault worth a warning.
    pub fn is_absent(&self) -> bool {
        matches!(self, Self::Read { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// Replaces `buf` with the whole content of `path`. The buffer keeps its capacity between
/// calls, so steady-state sampling does not allocate for file contents.
///
/// /proc and sysfs files are generated whole on the first read, so a read that does not
/// fill the buffer has reached the end: one `read(2)` per file instead of two.
pub(crate) fn read_into(path: &Path, buf: &mut Vec<u8>) -> Result<(), CollectError> {
    const MIN_CAPACITY: usize = 4096;
    let mut file = File::open(path).map_err(|e| CollectError::read(path, e))?;
    let size = buf.capacity().max(MIN_CAPACITY);
    buf.resize(size, 0);
    let first = loop {
        match file.read(buf) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                buf.clear();
                return Err(CollectError::read(path, e));
            }
        }
    };
    buf.truncate(first);
    if first == size {
        file.read_to_end(buf)
            .map_err(|e| CollectError::read(path, e))?;
    }
    Ok(())
}

/// A small file as trimmed text (`/proc/sys/kernel/hostname`, sysfs attributes).
pub(crate) fn read_trimmed(path: &Path) -> Result<String, CollectError> {
    let raw = std::fs::read(path).map_err(|e| CollectError::read(path, e))?;
    Ok(text(&raw).trim().to_string())
}

/// Kernel files are ASCII in practice; names (interfaces, mount points) may still carry
/// arbitrary bytes, which are replaced rather than failing the whole file.
pub(crate) fn text(bytes: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// Parses an unsigned decimal field; `None` on anything else.
pub(crate) fn parse_u64(field: &[u8]) -> Option<u64> {
    if field.is_empty() {
        return None;
    }
    let mut value: u64 = 0;
    for &b in field {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_larger_than_the_buffer_are_read_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("big");
        let content: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).expect("write");
        let mut buf = Vec::new();
        read_into(&path, &mut buf).expect("read");
        assert_eq!(buf, content);
        std::fs::write(&path, b"short").expect("write");
        read_into(&path, &mut buf).expect("read again");
        assert_eq!(buf, b"short");
        assert!(read_into(&dir.path().join("absent"), &mut buf).is_err_and(|e| e.is_absent()));
    }

    #[test]
    fn parse_u64_accepts_digits_only() {
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"-1"), None);
        assert_eq!(parse_u64(b"12a"), None);
    }
}

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

/// Reads a whole kernel file (seq_file) through a handle kept open: `pread` at offset 0
/// makes the kernel generate the file afresh, as `top` re-reads /proc/stat, and saves the
/// path walk, open and close of every sample. A handle that fails is dropped and the file
/// opened again once.
pub(crate) fn read_kept_open(
    files: &mut std::collections::HashMap<PathBuf, File>,
    path: &Path,
    buf: &mut Vec<u8>,
) -> Result<(), CollectError> {
    if let Some(file) = files.get(path) {
        if pread_all(file, buf).is_ok() {
            return Ok(());
        }
        files.remove(path);
    }
    let file = File::open(path).map_err(|e| CollectError::read(path, e))?;
    pread_all(&file, buf).map_err(|e| CollectError::read(path, e))?;
    files.insert(path.to_path_buf(), file);
    Ok(())
}

fn pread_all(file: &File, buf: &mut Vec<u8>) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    const MIN_CAPACITY: usize = 4096;
    buf.clear();
    loop {
        let filled = buf.len();
        if buf.capacity() - filled < MIN_CAPACITY / 2 {
            buf.reserve(buf.capacity().max(MIN_CAPACITY));
        }
        let room = buf.capacity();
        buf.resize(room, 0);
        match file.read_at(&mut buf[filled..], filled as u64) {
            Ok(0) => {
                buf.truncate(filled);
                return Ok(());
            }
            // A short read is the end: /proc's seq_files fill the buffer while they have
            // more (as `read_into` assumes), which saves a second call per file.
            Ok(n) if filled + n < room => {
                buf.truncate(filled + n);
                return Ok(());
            }
            Ok(n) => buf.truncate(filled + n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => buf.truncate(filled),
            Err(e) => {
                buf.clear();
                return Err(e);
            }
        }
    }
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

    #[test]
    fn a_kept_open_proc_file_is_generated_afresh_on_every_read() {
        let mut files = std::collections::HashMap::new();
        let mut buf = Vec::new();
        let uptime = Path::new("/proc/uptime");
        let seconds = |buf: &[u8]| -> f64 {
            text(buf)
                .split_whitespace()
                .next()
                .and_then(|s| s.parse().ok())
                .expect("uptime seconds")
        };
        read_kept_open(&mut files, uptime, &mut buf).expect("first read");
        let first = seconds(&buf);
        std::thread::sleep(std::time::Duration::from_millis(50));
        read_kept_open(&mut files, uptime, &mut buf).expect("second read");
        assert_eq!(files.len(), 1, "one handle, reused");
        assert!(seconds(&buf) > first, "{} then {first}", seconds(&buf));
    }

    #[test]
    fn a_kept_open_file_longer_than_the_buffer_is_read_whole() {
        let mut files = std::collections::HashMap::new();
        let mut buf = Vec::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big");
        let content: Vec<u8> = (0..20_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        std::fs::write(&path, &content).expect("write");
        read_kept_open(&mut files, &path, &mut buf).expect("read");
        assert_eq!(buf, content);
        read_kept_open(&mut files, &path, &mut buf).expect("read again");
        assert_eq!(buf, content);
    }
}

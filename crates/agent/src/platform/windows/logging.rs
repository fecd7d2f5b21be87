//! Where the service logs: a size-rotated file under ProgramData, and errors also to the
//! Windows Event Log (source = the service's name, registered at install).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;
use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::System::EventLog::{
    DeregisterEventSource, EVENTLOG_ERROR_TYPE, RegisterEventSourceW, ReportEventW,
};

use super::wide::to_wide;

/// The one event id of the agent's message table (`windows/messages.mc`): "%1".
pub const EVENT_ID_MESSAGE: u32 = 1;

/// A log file that is renamed to `.1` (older ones to `.2`, … up to `keep`) when it would
/// grow past `max_bytes`: the agent's disk use is bounded.
#[derive(Debug)]
pub struct RotatingFile {
    state: Mutex<FileState>,
}

#[derive(Debug)]
struct FileState {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max_bytes: u64,
    keep: u32,
}

impl RotatingFile {
    /// Open (append to) `path`, creating its directory.
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self {
            state: Mutex::new(FileState {
                path: path.to_owned(),
                file: Some(file),
                size,
                max_bytes,
                keep: keep.max(1),
            }),
        })
    }
}

impl FileState {
    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) {
        self.file = None;
        let _ = std::fs::remove_file(self.rotated(self.keep));
        for n in (1..self.keep).rev() {
            let _ = std::fs::rename(self.rotated(n), self.rotated(n + 1));
        }
        let _ = std::fs::rename(&self.path, self.rotated(1));
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .ok();
        self.size = 0;
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.size > 0 && self.size + bytes.len() as u64 > self.max_bytes {
            self.rotate();
        }
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("the log file could not be reopened"))?;
        file.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(bytes.len())
    }
}

/// One event's writer: tracing formats an event and writes it whole, so a file is rotated
/// between events, never inside one.
pub struct RotatingWriter<'a>(&'a RotatingFile);

impl Write for RotatingWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match self.0.state.lock() {
            Ok(mut state) => state.write(bytes),
            Err(poisoned) => poisoned.into_inner().write(bytes),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for RotatingFile {
    type Writer = RotatingWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        RotatingWriter(self)
    }
}

/// Sends ERROR events to the Event Log.
pub struct EventLog {
    source: HANDLE,
}

// SAFETY: an event source handle may be used from any thread (ReportEventW is thread-safe).
unsafe impl Send for EventLog {}
// SAFETY: as above.
unsafe impl Sync for EventLog {}

impl EventLog {
    /// Open the event source `name` (registered by the install; if it is not, Windows still
    /// logs, with a note that the description is missing).
    pub fn open(name: &str) -> Option<Self> {
        let wide = to_wide(name);
        // SAFETY: the local machine and a NUL-terminated source name.
        let source = unsafe { RegisterEventSourceW(std::ptr::null(), wide.as_ptr()) };
        (!source.is_null()).then_some(Self { source })
    }

    /// Report one error line.
    pub fn error(&self, text: &str) {
        let wide = to_wide(text);
        let strings = [wide.as_ptr()];
        // SAFETY: a valid source handle and one NUL-terminated string; no raw data.
        unsafe {
            ReportEventW(
                self.source,
                EVENTLOG_ERROR_TYPE,
                0,
                EVENT_ID_MESSAGE,
                std::ptr::null_mut(),
                1,
                0,
                strings.as_ptr(),
                std::ptr::null(),
            );
        }
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        // SAFETY: the handle came from RegisterEventSourceW and is closed once.
        unsafe {
            DeregisterEventSource(self.source);
        }
    }
}

/// Collects an event's message and fields as `message key=value …`.
struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let text = format!("{value:?}");
            self.0.insert_str(0, &text);
        } else {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, value);
        } else {
            self.0.push_str(&format!(" {}={value}", field.name()));
        }
    }
}

impl<S: Subscriber> Layer<S> for EventLog {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if *event.metadata().level() != Level::ERROR {
            return;
        }
        let mut line = Line(String::new());
        event.record(&mut line);
        self.error(&line.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_file_rotates_and_keeps_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.log");
        let log = RotatingFile::open(&path, 100, 2).expect("open");
        let line = [b'x'; 40];
        for _ in 0..20 {
            log.make_writer().write_all(&line).expect("write");
        }
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(size(&path) <= 100);
        assert!(size(&PathBuf::from(format!("{}.1", path.display()))) > 0);
        assert!(size(&PathBuf::from(format!("{}.2", path.display()))) > 0);
        assert!(!PathBuf::from(format!("{}.3", path.display())).exists());
    }
}

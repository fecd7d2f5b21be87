//! Per-test-binary shared state: one guest for all tests of a binary, and a lock that runs
//! them one at a time (they share the guest's two ports, and the machine has 2 cores).

use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::guest::{Guest, GuestOptions};
use crate::image::GuestImage;
use crate::{Error, Result};

/// A short scratch directory `/tmp/ib-<tag>XXXXXX` (short: sockets go in it) that records
/// its owner's pid, so that a later run can remove it if this process is killed before its
/// destructors run (see `Guest::boot`'s sweep).
pub fn scratch_dir(tag: &str) -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("ib-{tag}"))
        .tempdir_in(std::env::temp_dir())
        .map_err(Error::io("creating a scratch directory"))?;
    std::fs::write(dir.path().join("owner.pid"), std::process::id().to_string())
        .map_err(Error::io("writing owner.pid"))?;
    Ok(dir)
}

/// A helper process (simulator, client) that dies with the test: killed on drop, and by
/// `PR_SET_PDEATHSIG` if the test runner itself is killed.
pub struct TiedChild {
    child: Child,
}

impl TiedChild {
    /// Start `command` tied to this process.
    pub fn spawn(command: Command) -> Result<Self> {
        let child = crate::spawn::spawn_tied_to_process(command)
            .map_err(Error::io("starting a helper process"))?;
        Ok(Self { child })
    }

    /// The process.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for TiedChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        crate::spawn::forget(self.child.id());
    }
}

/// Take this first in every test of a binary that shares a guest. A failed test poisons
/// nothing: the next test still runs.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The binary's shared guest, booted on first use with `options` (later calls ignore their
/// argument). It lives until the process exits; the spawn guard then kills QEMU. A failed
/// boot is remembered, so the other tests fail fast with the same reason instead of booting
/// again.
pub fn shared_guest(options: impl FnOnce() -> GuestOptions) -> Result<&'static Guest, String> {
    static GUEST: OnceLock<Result<Guest, String>> = OnceLock::new();
    GUEST
        .get_or_init(|| {
            let started = std::time::Instant::now();
            let image =
                GuestImage::shared().map_err(|e| format!("building the guest image: {e}"))?;
            eprintln!("e2e: guest image ready after {:?}", started.elapsed());
            let guest = Guest::boot(image, options())
                .map_err(|e| format!("booting the shared guest: {e}"))?;
            eprintln!(
                "e2e: qemu pid {} started; logs in {}",
                guest.pid(),
                guest.run_dir().display()
            );
            Ok(guest)
        })
        .as_ref()
        .map_err(Clone::clone)
}

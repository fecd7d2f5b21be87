//! Per-test-binary shared state: one guest for all tests of a binary, and a lock that runs
//! them one at a time (they share the guest's two ports, and the machine has 2 cores).

use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::guest::{Guest, GuestOptions};
use crate::image::GuestImage;

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

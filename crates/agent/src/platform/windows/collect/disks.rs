//! Disk I/O per physical drive, from the disk driver's own counters
//! (`IOCTL_DISK_PERFORMANCE` on `\\.\PhysicalDriveN`, opened with no access rights: the
//! counters need none). The drive handles stay open between samples; new drives are looked
//! for every [`super::RESCAN_EVERY`] samples.

use std::collections::HashMap;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};

use infinibay_protocol::message::{DeviceIo, DiskIo};
use windows_sys::Win32::Foundation::INVALID_HANDLE_VALUE;
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, FILE_SHARE_READ, FILE_SHARE_WRITE, OPEN_EXISTING,
};
use windows_sys::Win32::System::IO::DeviceIoControl;
use windows_sys::Win32::System::Ioctl::{DISK_PERFORMANCE, IOCTL_DISK_PERFORMANCE};

use super::{RESCAN_EVERY, round1};
use crate::platform::windows::wide::to_wide;

/// Drive numbers tried when looking for drives.
const MAX_DRIVES: u32 = 32;

/// Counters of one drive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Bytes read since the driver started.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Reads completed.
    pub reads: u64,
    /// Writes completed.
    pub writes: u64,
}

/// The open drives and their previous counters.
#[derive(Debug, Default)]
pub struct Disks {
    drives: Vec<(String, OwnedHandle)>,
    previous: HashMap<String, Counters>,
    samples_until_rescan: u32,
}

impl Disks {
    /// Rates since the previous sample (`elapsed` seconds ago); the first sample gives the
    /// average since boot (`uptime` seconds).
    pub fn sample(&mut self, elapsed: Option<f64>, uptime: f64) -> DiskIo {
        if self.samples_until_rescan == 0 {
            self.rescan();
            self.samples_until_rescan = RESCAN_EVERY;
        }
        self.samples_until_rescan -= 1;
        let mut now = Vec::with_capacity(self.drives.len());
        self.drives.retain(|(name, handle)| match counters(handle) {
            Some(c) => {
                now.push((name.clone(), c));
                true
            }
            // The drive went away: drop its handle; a rescan finds it again if it returns.
            None => false,
        });
        let io = rates(&now, &self.previous, elapsed, uptime);
        self.previous = now.into_iter().collect();
        io
    }

    fn rescan(&mut self) {
        for number in 0..MAX_DRIVES {
            let name = format!("PhysicalDrive{number}");
            if self.drives.iter().any(|(n, _)| *n == name) {
                continue;
            }
            if let Some(handle) = open_drive(&name)
                && counters(&handle).is_some()
            {
                self.drives.push((name, handle));
            }
        }
        self.drives.sort_by(|a, b| a.0.cmp(&b.0));
    }
}

fn open_drive(name: &str) -> Option<OwnedHandle> {
    let path = to_wide(format!(r"\\.\{name}"));
    // SAFETY: NUL-terminated path; no access rights asked (the performance query needs
    // none), so this works without administrator rights too.
    let handle = unsafe {
        CreateFileW(
            path.as_ptr(),
            0,
            FILE_SHARE_READ | FILE_SHARE_WRITE,
            std::ptr::null(),
            OPEN_EXISTING,
            0,
            std::ptr::null_mut(),
        )
    };
    if handle == INVALID_HANDLE_VALUE {
        return None;
    }
    // SAFETY: a handle nobody else owns.
    Some(unsafe { OwnedHandle::from_raw_handle(handle) })
}

fn counters(handle: &OwnedHandle) -> Option<Counters> {
    let mut perf = DISK_PERFORMANCE::default();
    let mut returned = 0u32;
    // SAFETY: a valid handle and an output buffer of the size passed.
    let ok = unsafe {
        DeviceIoControl(
            handle.as_raw_handle(),
            IOCTL_DISK_PERFORMANCE,
            std::ptr::null(),
            0,
            (&mut perf as *mut DISK_PERFORMANCE).cast(),
            std::mem::size_of::<DISK_PERFORMANCE>() as u32,
            &mut returned,
            std::ptr::null_mut(),
        )
    };
    (ok != 0).then(|| Counters {
        read_bytes: perf.BytesRead.max(0) as u64,
        write_bytes: perf.BytesWritten.max(0) as u64,
        reads: u64::from(perf.ReadCount),
        writes: u64::from(perf.WriteCount),
    })
}

/// Per-second rates per drive and their sum. A counter that went backwards (the driver
/// restarted) counts as zero for that sample.
pub fn rates(
    now: &[(String, Counters)],
    previous: &HashMap<String, Counters>,
    elapsed: Option<f64>,
    uptime: f64,
) -> DiskIo {
    let mut io = DiskIo::default();
    for (name, c) in now {
        let (delta, seconds) = match (elapsed, previous.get(name)) {
            (Some(secs), Some(p)) => (
                Counters {
                    read_bytes: c.read_bytes.saturating_sub(p.read_bytes),
                    write_bytes: c.write_bytes.saturating_sub(p.write_bytes),
                    reads: c.reads.saturating_sub(p.reads),
                    writes: c.writes.saturating_sub(p.writes),
                },
                secs,
            ),
            // First sight of this drive: the average since boot.
            _ => (*c, uptime),
        };
        let per = |n: u64| {
            if seconds > 0.0 {
                round1(n as f64 / seconds)
            } else {
                0.0
            }
        };
        let device = DeviceIo {
            device: name.clone(),
            read_bytes_per_sec: per(delta.read_bytes),
            write_bytes_per_sec: per(delta.write_bytes),
            read_ops_per_sec: per(delta.reads),
            write_ops_per_sec: per(delta.writes),
        };
        io.read_bytes_per_sec += device.read_bytes_per_sec;
        io.write_bytes_per_sec += device.write_bytes_per_sec;
        io.read_ops_per_sec += device.read_ops_per_sec;
        io.write_ops_per_sec += device.write_ops_per_sec;
        io.devices.push(device);
    }
    io.read_bytes_per_sec = round1(io.read_bytes_per_sec);
    io.write_bytes_per_sec = round1(io.write_bytes_per_sec);
    io.read_ops_per_sec = round1(io.read_ops_per_sec);
    io.write_ops_per_sec = round1(io.write_ops_per_sec);
    io
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_deltas_over_elapsed_and_the_first_sample_is_since_boot() {
        let c = |rb, wb, r, w| Counters {
            read_bytes: rb,
            write_bytes: wb,
            reads: r,
            writes: w,
        };
        let before = HashMap::from([("PhysicalDrive0".to_string(), c(1000, 2000, 10, 20))]);
        let now = [
            ("PhysicalDrive0".to_string(), c(3000, 2000, 30, 20)),
            ("PhysicalDrive1".to_string(), c(500, 0, 5, 0)),
        ];
        let io = rates(&now, &before, Some(2.0), 100.0);
        assert_eq!(io.devices[0].read_bytes_per_sec, 1000.0);
        assert_eq!(io.devices[0].read_ops_per_sec, 10.0);
        assert_eq!(io.devices[0].write_bytes_per_sec, 0.0);
        // Not seen before: since boot.
        assert_eq!(io.devices[1].read_bytes_per_sec, 5.0);
        assert_eq!(io.read_bytes_per_sec, 1005.0);
        // A restarted counter is not a negative rate.
        let io = rates(
            &before.clone().into_iter().collect::<Vec<_>>(),
            &now.iter().cloned().collect(),
            Some(1.0),
            1.0,
        );
        assert_eq!(io.devices[0].read_bytes_per_sec, 0.0);
    }
}

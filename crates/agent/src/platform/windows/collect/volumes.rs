//! Usage per volume: every volume with a mount path (drive letter or folder) on a local fixed,
//! removable or optical disk. Network drives are left out, as on Linux: asking a dead server
//! for its free space blocks the caller.

use infinibay_protocol::message::DiskUsage;
use windows_sys::Win32::Foundation::{ERROR_MORE_DATA, INVALID_HANDLE_VALUE};
use windows_sys::Win32::Storage::FileSystem::{
    FindFirstVolumeW, FindNextVolumeW, FindVolumeClose, GetDiskFreeSpaceExW, GetDriveTypeW,
    GetLogicalDriveStringsW, GetVolumeInformationW, GetVolumePathNamesForVolumeNameW,
};
use windows_sys::Win32::System::WindowsProgramming::{DRIVE_CDROM, DRIVE_FIXED, DRIVE_REMOVABLE};

use crate::platform::windows::wide::{from_wide, split_multi, to_wide};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

fn gib(bytes: u64) -> f64 {
    (bytes as f64 / GIB * 1000.0).round() / 1000.0
}

/// One row per volume, at its first mount path, sorted by mount path.
pub fn usage() -> Vec<DiskUsage> {
    let mut rows: Vec<DiskUsage> = volumes()
        .into_iter()
        .filter_map(|(device, paths)| {
            let mount = paths.into_iter().next()?;
            row(&device, &mount)
        })
        .collect();
    rows.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
    rows
}

/// `(volume name, mount paths)`; when volumes cannot be listed (some Windows-compatible
/// systems), the drive letters stand in, each its own device.
fn volumes() -> Vec<(String, Vec<String>)> {
    let mut name = [0u16; 64];
    // SAFETY: `name` holds its length in u16s.
    let find = unsafe { FindFirstVolumeW(name.as_mut_ptr(), name.len() as u32) };
    if find == INVALID_HANDLE_VALUE {
        return drive_letters()
            .into_iter()
            .map(|d| (d.clone(), vec![d]))
            .collect();
    }
    let mut found = Vec::new();
    loop {
        let volume = from_wide(&name);
        let paths = mount_paths(&volume);
        if !paths.is_empty() {
            found.push((volume, paths));
        }
        // SAFETY: `find` is the open search; `name` holds its length.
        if unsafe { FindNextVolumeW(find, name.as_mut_ptr(), name.len() as u32) } == 0 {
            break;
        }
    }
    // SAFETY: closes the search opened above.
    unsafe { FindVolumeClose(find) };
    if found.is_empty() {
        return drive_letters()
            .into_iter()
            .map(|d| (d.clone(), vec![d]))
            .collect();
    }
    found
}

fn mount_paths(volume: &str) -> Vec<String> {
    let wide = to_wide(volume);
    let mut buffer = vec![0u16; 256];
    for _ in 0..3 {
        let mut needed = 0u32;
        // SAFETY: `buffer` holds its length in u16s; `needed` is an out-pointer.
        let ok = unsafe {
            GetVolumePathNamesForVolumeNameW(
                wide.as_ptr(),
                buffer.as_mut_ptr(),
                buffer.len() as u32,
                &mut needed,
            )
        };
        if ok != 0 {
            return split_multi(&buffer);
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(ERROR_MORE_DATA as i32) {
            break;
        }
        buffer.resize(needed as usize + 1, 0);
    }
    Vec::new()
}

fn drive_letters() -> Vec<String> {
    let mut buffer = [0u16; 512];
    // SAFETY: `buffer` holds its length in u16s.
    let n = unsafe { GetLogicalDriveStringsW(buffer.len() as u32, buffer.as_mut_ptr()) };
    if n == 0 || n as usize > buffer.len() {
        return Vec::new();
    }
    split_multi(&buffer[..n as usize])
}

fn row(device: &str, mount: &str) -> Option<DiskUsage> {
    let root = to_wide(mount);
    // SAFETY: `root` is NUL-terminated.
    let kind = unsafe { GetDriveTypeW(root.as_ptr()) };
    if ![DRIVE_FIXED, DRIVE_REMOVABLE, DRIVE_CDROM].contains(&kind) {
        return None;
    }
    let (mut available, mut total, mut free) = (0u64, 0u64, 0u64);
    // SAFETY: valid out-pointers; fails (no media) without blocking for local drives.
    if unsafe { GetDiskFreeSpaceExW(root.as_ptr(), &mut available, &mut total, &mut free) } == 0 {
        return None;
    }
    let mut fs_name = [0u16; 64];
    // SAFETY: only the file-system name buffer is asked for.
    let has_fs = unsafe {
        GetVolumeInformationW(
            root.as_ptr(),
            std::ptr::null_mut(),
            0,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            fs_name.as_mut_ptr(),
            fs_name.len() as u32,
        )
    } != 0;
    Some(DiskUsage {
        mount_point: mount.to_owned(),
        filesystem: has_fs
            .then(|| from_wide(&fs_name))
            .filter(|f| !f.is_empty()),
        device: Some(device.to_owned()),
        total_gb: gib(total),
        used_gb: gib(total.saturating_sub(free)),
        available_gb: gib(available),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_drive_is_listed_with_consistent_sizes() {
        let rows = usage();
        let system = rows
            .iter()
            .find(|r| r.mount_point.eq_ignore_ascii_case("C:\\"))
            .unwrap_or_else(|| panic!("no C:\\ in {rows:?}"));
        assert!(system.total_gb > 0.0);
        assert!(system.used_gb <= system.total_gb);
        assert!(system.available_gb <= system.total_gb);
        let mut sorted = rows.clone();
        sorted.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
        assert_eq!(rows, sorted);
    }
}

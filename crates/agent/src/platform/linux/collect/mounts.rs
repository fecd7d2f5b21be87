//! File-system usage: which mounts of `/proc/mounts` are reported, and their `statvfs`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use infinibay_protocol::message::DiskUsage;

/// One line of `/proc/mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    pub device: String,
    pub mount_point: String,
    pub fstype: String,
}

/// Parses `/proc/mounts`, undoing the kernel's octal escapes (`\040` for a space).
pub(crate) fn parse_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            Some(Mount {
                device: unescape(fields.next()?),
                mount_point: unescape(fields.next()?),
                fstype: fields.next()?.to_string(),
            })
        })
        .collect()
}

fn unescape(field: &str) -> String {
    if !field.contains('\\') {
        return field.to_string();
    }
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let Some(digits) = octal {
            let value = digits
                .iter()
                .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            out.push(value as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// File systems on local storage (or a hypervisor share) whose usage means something.
const STORAGE_FS: [&str; 16] = [
    "ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "jfs", "reiserfs", "vfat", "exfat",
    "ntfs", "ntfs3", "iso9660", "virtiofs", "9p",
];

/// Picks the mounts to report:
/// - storage file systems only ([`STORAGE_FS`]): pseudo file systems (proc, sysfs, tmpfs,
///   devtmpfs, cgroup, …) have no disk behind them, and network file systems (nfs, cifs) are
///   left out because `statvfs` on a dead server blocks the collector indefinitely;
/// - `overlay` and `squashfs` only as the root file system (a container's or a live
///   system's root); elsewhere they are container layers and snap images;
/// - a mount point mounted over keeps only its last (visible) mount;
/// - a device mounted at several places (bind mounts, btrfs subvolumes) is reported once,
///   at its first mount point.
///
/// The result is sorted by mount point.
pub(crate) fn select_reported(mounts: &[Mount]) -> Vec<Mount> {
    let wanted = |m: &Mount| {
        STORAGE_FS.contains(&m.fstype.as_str())
            || (matches!(m.fstype.as_str(), "overlay" | "squashfs") && m.mount_point == "/")
    };
    let mut visible: Vec<&Mount> = Vec::new();
    for (index, mount) in mounts.iter().enumerate() {
        let shadowed = mounts[index + 1..]
            .iter()
            .any(|later| later.mount_point == mount.mount_point);
        if !shadowed && wanted(mount) {
            visible.push(mount);
        }
    }
    let mut chosen: Vec<Mount> = Vec::new();
    for mount in visible {
        if !chosen.iter().any(|c| c.device == mount.device) {
            chosen.push(mount.clone());
        }
    }
    chosen.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
    chosen
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Usage of `mount` through `statvfs(3)` on `root` + its mount point; `None` when the mount
/// point is not a directory, cannot be queried (gone, or absent from a fixture tree) or
/// reports no blocks.
pub(crate) fn usage(root: &Path, mount: &Mount) -> Option<DiskUsage> {
    let path = root.join(mount.mount_point.trim_start_matches('/'));
    // Containers get single files bind-mounted from the host's disk (/etc/hosts,
    // /etc/resolv.conf); those are not file systems of the guest.
    if !std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
        return None;
    }
    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and stats is a valid out-pointer.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stats) } != 0 {
        return None;
    }
    let fragment = stats.f_frsize as f64;
    let blocks = stats.f_blocks as f64;
    if blocks == 0.0 {
        return None;
    }
    let gib = |count: f64| ((count * fragment / GIB) * 1000.0).round() / 1000.0;
    Some(DiskUsage {
        mount_point: mount.mount_point.clone(),
        filesystem: Some(mount.fstype.clone()),
        device: Some(mount.device.clone()),
        total_gb: gib(blocks),
        used_gb: gib(blocks - stats.f_bfree as f64),
        available_gb: gib(stats.f_bavail as f64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_escapes_are_undone() {
        let m = parse_mounts("/dev/sdb1 /mnt/my\\040disk ext4 rw 0 0\n");
        assert_eq!(m[0].mount_point, "/mnt/my disk");
    }

    #[test]
    fn pseudo_network_and_duplicate_mounts_are_left_out() {
        let text = "proc /proc proc rw 0 0\nsysfs /sys sysfs rw 0 0\n\
            tmpfs /run tmpfs rw 0 0\ndevtmpfs /dev devtmpfs rw 0 0\n\
            cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n/dev/vda1 / ext4 rw 0 0\n\
            /dev/vda15 /boot/efi vfat rw 0 0\n/dev/vdb /data xfs rw 0 0\n\
            /dev/vdb /srv/data-bind xfs rw 0 0\nnas:/export /mnt/nas nfs4 rw 0 0\n\
            overlay /var/lib/docker/overlay2/abc/merged overlay rw 0 0\n\
            /dev/loop3 /snap/core/123 squashfs ro 0 0\n\
            /dev/vdc /mnt/x ext4 rw 0 0\n/dev/vdd /mnt/x ext4 rw 0 0\n";
        let chosen = select_reported(&parse_mounts(text));
        let points: Vec<_> = chosen
            .iter()
            .map(|m| (m.mount_point.as_str(), m.device.as_str()))
            .collect();
        assert_eq!(
            points,
            [
                ("/", "/dev/vda1"),
                ("/boot/efi", "/dev/vda15"),
                ("/data", "/dev/vdb"),
                ("/mnt/x", "/dev/vdd"),
            ]
        );
    }

    #[test]
    fn container_overlay_root_is_reported() {
        let text = "overlay / overlay rw,lowerdir=/a:/b 0 0\nproc /proc proc rw 0 0\n\
            tmpfs /dev tmpfs rw 0 0\nshm /dev/shm tmpfs rw 0 0\n";
        let chosen = select_reported(&parse_mounts(text));
        assert_eq!(chosen.len(), 1);
        assert_eq!(chosen[0].fstype, "overlay");
    }

    #[test]
    fn statvfs_of_the_real_root_is_sane() {
        let root = Mount {
            device: "/dev/root".into(),
            mount_point: "/".into(),
            fstype: "ext4".into(),
        };
        let usage = usage(Path::new("/"), &root).expect("statvfs on / works");
        assert!(usage.total_gb > 0.0);
        assert!(usage.used_gb <= usage.total_gb);
        assert!(usage.available_gb <= usage.total_gb);
    }
}

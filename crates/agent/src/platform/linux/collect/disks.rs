//! Block-device throughput from `/proc/diskstats`.

use std::path::Path;

use infinibay_protocol::message::{DeviceIo, DiskIo};

/// diskstats counts sectors of 512 bytes whatever the device's real sector size is.
const SECTOR_BYTES: f64 = 512.0;

/// Cumulative counters of one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DiskCounters {
    pub name: String,
    pub reads: u64,
    pub sectors_read: u64,
    pub writes: u64,
    pub sectors_written: u64,
}

/// Every line of `/proc/diskstats` (partitions and loop devices included; filtering is
/// [`classify`]'s job).
pub(crate) fn parse_diskstats(text: &str) -> Vec<DiskCounters> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_ascii_whitespace();
            let _major = fields.next()?;
            let _minor = fields.next()?;
            let name = fields.next()?;
            let mut numbers = fields.map(|f| f.parse::<u64>().ok());
            let reads = numbers.next()??;
            let _reads_merged = numbers.next()??;
            let sectors_read = numbers.next()??;
            let _ms_reading = numbers.next()??;
            let writes = numbers.next()??;
            let _writes_merged = numbers.next()??;
            let sectors_written = numbers.next()??;
            Some(DiskCounters {
                name: name.to_string(),
                reads,
                sectors_read,
                writes,
                sectors_written,
            })
        })
        .collect()
}

/// How a diskstats entry is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DiskClass {
    /// Not reported: a partition, loop, ram or zram device.
    Skip,
    /// A whole physical (or virtual) disk: listed and summed.
    Physical,
    /// A whole device stacked on other disks (`dm-*`, `md*`): listed but not summed, because
    /// its I/O is already counted on the disks below it.
    Stacked,
}

/// Classifies a device by sysfs when the collector's `/sys` has `block/` (a whole disk has
/// `/sys/block/<name>`, a stacked one has entries in its `slaves/`), otherwise by name.
pub(crate) fn classify(name: &str, sys_block: Option<&Path>) -> DiskClass {
    if ["loop", "ram", "zram"].iter().any(|p| name.starts_with(p)) {
        return DiskClass::Skip;
    }
    if let Some(sys_block) = sys_block {
        // Names with '/' (cciss/c0d0) appear in sysfs with '!'.
        let dir = sys_block.join(name.replace('/', "!"));
        if !dir.is_dir() {
            return DiskClass::Skip;
        }
        let stacked = std::fs::read_dir(dir.join("slaves"))
            .map(|mut entries| entries.next().is_some())
            .unwrap_or(false);
        return if stacked {
            DiskClass::Stacked
        } else {
            DiskClass::Physical
        };
    }
    classify_by_name(name)
}

/// Name rules for a tree without sysfs: `sda1`, `vda2`, `xvda1`, `hda1` and `nvme0n1p1`,
/// `mmcblk0p1`, `md0p1`, `nbd0p1` are partitions; `dm-*` and `md*` are stacked.
pub(crate) fn classify_by_name(name: &str) -> DiskClass {
    let digits_at_end = name.len() - name.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let stem = &name[..name.len() - digits_at_end];
    let is_partition = if digits_at_end == 0 {
        false
    } else if let Some(base) = stem.strip_suffix('p') {
        // nvme0n1p1, mmcblk0p1, md0p1: the disk name itself ends in a digit.
        base.ends_with(|c: char| c.is_ascii_digit())
    } else {
        ["sd", "vd", "xvd", "hd"]
            .iter()
            .any(|p| stem.starts_with(p) && stem.len() > p.len())
            && stem.chars().all(|c| c.is_ascii_lowercase())
    };
    if is_partition {
        DiskClass::Skip
    } else if name.starts_with("dm-") || name.starts_with("md") {
        DiskClass::Stacked
    } else {
        DiskClass::Physical
    }
}

/// Per-second rates between two readings of the listed devices. `previous` holds the last
/// readings; `None` on the first sample, when the averages since boot are reported
/// (`elapsed` is then the uptime). A device missing from `previous` (hot-plugged, or the
/// previous read failed) is left out of this sample rather than reported with its counters
/// since boot divided by one interval.
pub(crate) fn rates(
    now: &[(DiskCounters, DiskClass)],
    previous: Option<&[DiskCounters]>,
    elapsed_secs: f64,
) -> DiskIo {
    let mut io = DiskIo::default();
    if elapsed_secs <= 0.0 {
        return io;
    }
    for (counters, class) in now {
        if *class == DiskClass::Skip {
            continue;
        }
        let since_boot = DiskCounters {
            name: String::new(),
            reads: 0,
            sectors_read: 0,
            writes: 0,
            sectors_written: 0,
        };
        let base = match previous {
            None => &since_boot,
            Some(previous) => match previous.iter().find(|p| p.name == counters.name) {
                Some(base) => base,
                None => continue,
            },
        };
        // A device re-created under the same name restarts its counters: report nothing for
        // this interval rather than a negative or huge rate.
        let delta = |now: u64, before: u64| now.checked_sub(before).map(|d| d as f64);
        let (Some(reads), Some(sectors_read), Some(writes), Some(sectors_written)) = (
            delta(counters.reads, base.reads),
            delta(counters.sectors_read, base.sectors_read),
            delta(counters.writes, base.writes),
            delta(counters.sectors_written, base.sectors_written),
        ) else {
            continue;
        };
        let device = DeviceIo {
            device: counters.name.clone(),
            read_bytes_per_sec: round1(sectors_read * SECTOR_BYTES / elapsed_secs),
            write_bytes_per_sec: round1(sectors_written * SECTOR_BYTES / elapsed_secs),
            read_ops_per_sec: round1(reads / elapsed_secs),
            write_ops_per_sec: round1(writes / elapsed_secs),
        };
        if *class == DiskClass::Physical {
            io.read_bytes_per_sec += device.read_bytes_per_sec;
            io.write_bytes_per_sec += device.write_bytes_per_sec;
            io.read_ops_per_sec += device.read_ops_per_sec;
            io.write_ops_per_sec += device.write_ops_per_sec;
        }
        io.devices.push(device);
    }
    io.devices.sort_by(|a, b| a.device.cmp(&b.device));
    io
}

pub(crate) use crate::platform::rates::round1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_classify_whole_disks_partitions_and_stacked_devices() {
        use DiskClass::*;
        for (name, class) in [
            ("vda", Physical),
            ("vda1", Skip),
            ("sda", Physical),
            ("sdaa3", Skip),
            ("xvda", Physical),
            ("xvda1", Skip),
            ("nvme0n1", Physical),
            ("nvme0n1p1", Skip),
            ("mmcblk0", Physical),
            ("mmcblk0p2", Skip),
            ("md0", Stacked),
            ("md127", Stacked),
            ("md0p1", Skip),
            ("dm-0", Stacked),
            ("loop0", Skip),
            ("ram0", Skip),
            ("zram0", Skip),
            ("sr0", Physical),
        ] {
            assert_eq!(classify(name, None), class, "{name}");
        }
    }

    #[test]
    fn rates_sum_physical_disks_only_and_list_stacked_ones() {
        let counters = |name: &str, k: u64| DiskCounters {
            name: name.into(),
            reads: 10 * k,
            sectors_read: 100 * k,
            writes: 20 * k,
            sectors_written: 200 * k,
        };
        let before = vec![counters("vda", 1), counters("dm-0", 1)];
        let now = vec![
            (counters("vda", 3), DiskClass::Physical),
            (counters("dm-0", 3), DiskClass::Stacked),
            (counters("vda1", 3), DiskClass::Skip),
        ];
        let io = rates(&now, Some(&before), 2.0);
        // vda: 200 sectors read in 2 s = 100 sectors/s = 51200 B/s.
        assert_eq!(io.read_bytes_per_sec, 51200.0);
        assert_eq!(io.write_bytes_per_sec, 102400.0);
        assert_eq!(io.read_ops_per_sec, 10.0);
        assert_eq!(io.write_ops_per_sec, 20.0);
        let names: Vec<_> = io.devices.iter().map(|d| d.device.as_str()).collect();
        assert_eq!(names, ["dm-0", "vda"]);
    }

    #[test]
    fn first_sample_is_since_boot_and_a_new_device_later_waits_a_sample() {
        let c = |name: &str| DiskCounters {
            name: name.into(),
            reads: 100,
            sectors_read: 1000,
            writes: 0,
            sectors_written: 0,
        };
        let first = rates(&[(c("vda"), DiskClass::Physical)], None, 100.0);
        assert_eq!(first.read_ops_per_sec, 1.0);
        let now = [
            (c("vda"), DiskClass::Physical),
            (c("vdb"), DiskClass::Physical),
        ];
        let later = rates(&now, Some(&[c("vda")]), 10.0);
        let names: Vec<_> = later.devices.iter().map(|d| d.device.as_str()).collect();
        assert_eq!(names, ["vda"]);
        assert_eq!(later.read_ops_per_sec, 0.0);
    }

    #[test]
    fn counters_going_backwards_give_no_rate_for_that_device() {
        let c = |reads| DiskCounters {
            name: "sdb".into(),
            reads,
            sectors_read: 0,
            writes: 0,
            sectors_written: 0,
        };
        let io = rates(&[(c(5), DiskClass::Physical)], Some(&[c(10)]), 1.0);
        assert!(io.devices.is_empty());
    }
}

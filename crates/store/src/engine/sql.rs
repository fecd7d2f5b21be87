//! SQL text both backends share: the column lists and upserts of the tables both write in
//! their own batch shape, and the roll-up statements (which differ only in the bucket
//! expression, [`Dialect::bucket_start`]).

use super::Dialect;
use crate::Resolution;

/// The columns of `vm_latest_sample`, in the order both backends bind them.
pub const LATEST_COLUMNS: &str = "vm_id, at, guest_time, cpu, mem_used_kb, mem_total_kb, \
     swap_used_kb, disk_used_percent, disk_read_bps, disk_write_bps, net_rx_bps, net_tx_bps, \
     load1, detail";

/// Replaces a VM's stored newest sample, unless the stored one is newer.
pub const LATEST_UPSERT: &str = "ON CONFLICT (vm_id) DO UPDATE SET at = excluded.at, \
     guest_time = excluded.guest_time, cpu = excluded.cpu, mem_used_kb = excluded.mem_used_kb, \
     mem_total_kb = excluded.mem_total_kb, swap_used_kb = excluded.swap_used_kb, \
     disk_used_percent = excluded.disk_used_percent, disk_read_bps = excluded.disk_read_bps, \
     disk_write_bps = excluded.disk_write_bps, net_rx_bps = excluded.net_rx_bps, \
     net_tx_bps = excluded.net_tx_bps, load1 = excluded.load1, detail = excluded.detail \
     WHERE excluded.at >= vm_latest_sample.at";

/// The columns of `metric_minute` and `metric_hour`.
pub const ROLLUP_COLUMNS: &str = "vm_key, bucket, samples, cpu_avg, cpu_min, cpu_max, \
     mem_used_kb_avg, mem_total_kb, disk_read_bps, disk_write_bps, net_rx_bps, net_tx_bps";

/// A recomputed bucket replaces the stored one (so re-running never double counts).
pub const ROLLUP_UPSERT: &str = "ON CONFLICT (vm_key, bucket) DO UPDATE SET \
     samples = excluded.samples, cpu_avg = excluded.cpu_avg, cpu_min = excluded.cpu_min, \
     cpu_max = excluded.cpu_max, mem_used_kb_avg = excluded.mem_used_kb_avg, \
     mem_total_kb = excluded.mem_total_kb, disk_read_bps = excluded.disk_read_bps, \
     disk_write_bps = excluded.disk_write_bps, net_rx_bps = excluded.net_rx_bps, \
     net_tx_bps = excluded.net_tx_bps";

/// A group of raw samples: cpu avg/min/max, mem used avg, mem total (max), disk read/write
/// and net rx/tx averages.
pub const AVERAGED_SAMPLES: &str = "AVG(cpu), MIN(cpu), MAX(cpu), \
     CAST(AVG(mem_used_kb) AS DOUBLE PRECISION), MAX(mem_total_kb), AVG(disk_read_bps), \
     AVG(disk_write_bps), AVG(net_rx_bps), AVG(net_tx_bps)";

/// The same of a group of rollup rows, merged with exact weights (avg = Σ(avg·n)/Σn).
pub const MERGED_BUCKETS: &str = "SUM(cpu_avg * samples) / SUM(samples), MIN(cpu_min), \
     MAX(cpu_max), SUM(mem_used_kb_avg * samples) / SUM(samples), MAX(mem_total_kb), \
     SUM(disk_read_bps * samples) / SUM(samples), SUM(disk_write_bps * samples) / SUM(samples), \
     SUM(net_rx_bps * samples) / SUM(samples), SUM(net_tx_bps * samples) / SUM(samples)";

/// Recomputes the tier's buckets of the source rows in `[$1, $2)` (raw samples for minutes,
/// minute rollups for hours), in one statement.
pub fn rollup<B: Dialect>(tier: Resolution) -> String {
    if tier == Resolution::Minute {
        let minute = B::bucket_start("at", "60000");
        format!(
            "INSERT INTO metric_minute ({ROLLUP_COLUMNS}) \
             SELECT vm_key, {minute}, COUNT(*), {AVERAGED_SAMPLES} \
             FROM metric_samples WHERE at >= $1 AND at < $2 GROUP BY vm_key, {minute} \
             {ROLLUP_UPSERT}"
        )
    } else {
        let hour = B::bucket_start("bucket", "3600000");
        format!(
            "INSERT INTO metric_hour ({ROLLUP_COLUMNS}) \
             SELECT vm_key, {hour}, CAST(SUM(samples) AS BIGINT), {MERGED_BUCKETS} \
             FROM metric_minute WHERE bucket >= $1 AND bucket < $2 GROUP BY vm_key, {hour} \
             {ROLLUP_UPSERT}"
        )
    }
}

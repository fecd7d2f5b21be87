//! CPU usage from `/proc/stat` jiffy counters.

/// Busy and total jiffies of one CPU line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

/// What `/proc/stat` says that the collectors use.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ProcStat {
    /// The aggregate `cpu` line.
    pub all: Option<CpuTimes>,
    /// `cpuN` lines as (N, times), in file order (ascending N; offline CPUs are absent).
    pub cores: Vec<(u32, CpuTimes)>,
    /// Boot time, Unix seconds.
    pub btime: Option<u64>,
}

/// Parses `/proc/stat`. `user` already contains `guest` and `nice` contains `guest_nice`, so
/// those two are not added again. Idle time is `idle + iowait`; everything else (steal
/// included, as psutil and top's bar count it) is busy.
pub(crate) fn parse_proc_stat(text: &str, out: &mut ProcStat) {
    out.all = None;
    out.cores.clear();
    out.btime = None;
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        let Some(key) = fields.next() else { continue };
        if let Some(index) = key.strip_prefix("cpu") {
            let Some(times) = parse_cpu_fields(fields) else {
                continue;
            };
            if index.is_empty() {
                out.all = Some(times);
            } else if let Ok(n) = index.parse::<u32>() {
                out.cores.push((n, times));
            }
        } else if key == "btime" {
            out.btime = fields.next().and_then(|v| v.parse().ok());
        }
    }
}

fn parse_cpu_fields<'a>(fields: impl Iterator<Item = &'a str>) -> Option<CpuTimes> {
    // user nice system idle iowait irq softirq steal guest guest_nice
    let mut values = [0u64; 8];
    let mut seen = 0;
    for (slot, field) in values.iter_mut().zip(fields) {
        *slot = field.parse().ok()?;
        seen += 1;
    }
    // Kernels older than 2.6.11 had fewer columns; four (user nice system idle) is the floor.
    if seen < 4 {
        return None;
    }
    let total: u64 = values.iter().sum();
    let idle = values[3] + values[4];
    Some(CpuTimes {
        busy: total.saturating_sub(idle),
        total,
    })
}

/// Busy percent between two readings; without a previous reading (or if the counters went
/// backwards, e.g. a CPU came back online) the percentage since boot.
pub(crate) fn usage_percent(previous: Option<CpuTimes>, now: CpuTimes) -> f64 {
    let (busy, total) = match previous {
        Some(prev) if now.total > prev.total && now.busy >= prev.busy => {
            (now.busy - prev.busy, now.total - prev.total)
        }
        Some(prev) if now.total == prev.total => return 0.0,
        _ => (now.busy, now.total),
    };
    if total == 0 {
        return 0.0;
    }
    round2((busy as f64 / total as f64 * 100.0).clamp(0.0, 100.0))
}

pub(crate) use crate::platform::rates::round2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_aggregate_cores_and_btime() {
        let text = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 60 0 20 400 20 0 0 0 0 0\n\
                    cpu1 40 0 30 400 30 0 0 0 0 0\nintr 1 2 3\nbtime 1763770000\n";
        let mut stat = ProcStat::default();
        parse_proc_stat(text, &mut stat);
        assert_eq!(
            stat.all,
            Some(CpuTimes {
                busy: 150,
                total: 1000
            })
        );
        assert_eq!(stat.cores.len(), 2);
        assert_eq!(stat.cores[1].0, 1);
        assert_eq!(stat.btime, Some(1_763_770_000));
    }

    #[test]
    fn usage_is_delta_ratio_and_since_boot_without_previous() {
        let first = CpuTimes {
            busy: 150,
            total: 1000,
        };
        assert_eq!(usage_percent(None, first), 15.0);
        let second = CpuTimes {
            busy: 200,
            total: 1100,
        };
        assert_eq!(usage_percent(Some(first), second), 50.0);
        assert_eq!(usage_percent(Some(second), second), 0.0);
    }

    #[test]
    fn short_and_garbage_cpu_lines_are_skipped() {
        let mut stat = ProcStat::default();
        parse_proc_stat("cpu 1 2\ncpu0 a b c d\ncpuX 1 1 1 1\n", &mut stat);
        assert_eq!(stat.all, None);
        assert!(stat.cores.is_empty());
    }
}

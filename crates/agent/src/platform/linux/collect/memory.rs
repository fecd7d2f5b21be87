//! Memory and swap from `/proc/meminfo` (kB).

use infinibay_protocol::message::MemoryMetrics;

/// Parses `/proc/meminfo`.
///
/// `used = MemTotal − MemAvailable`. Kernels before 3.14 have no `MemAvailable`; there
/// `MemFree + Buffers + Cached` stands in. Swap: `None` when the file has no `SwapTotal`
/// line at all, `Some(0)` when the guest simply has no swap configured, so the host can tell
/// "no swap" from "unknown".
pub(crate) fn parse_meminfo(text: &str) -> Option<MemoryMetrics> {
    let mut total = None;
    let mut available = None;
    let mut free = 0u64;
    let mut buffers = 0u64;
    let mut cached = 0u64;
    let mut swap_total = None;
    let mut swap_free = None;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let Some(value) = rest
            .split_ascii_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        else {
            continue;
        };
        match key {
            "MemTotal" => total = Some(value),
            "MemAvailable" => available = Some(value),
            "MemFree" => free = value,
            "Buffers" => buffers = value,
            "Cached" => cached = value,
            "SwapTotal" => swap_total = Some(value),
            "SwapFree" => swap_free = Some(value),
            _ => {}
        }
    }
    let total_kb = total?;
    let available_kb = available.unwrap_or(free + buffers + cached).min(total_kb);
    let swap_used_kb = swap_total.map(|t| t.saturating_sub(swap_free.unwrap_or(t)));
    Some(MemoryMetrics {
        total_kb,
        used_kb: total_kb - available_kb,
        available_kb,
        swap_total_kb: swap_total,
        swap_used_kb,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_is_total_minus_available_and_zero_swap_is_some_zero() {
        let m = parse_meminfo(
            "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    600 kB\n\
             SwapTotal:         0 kB\nSwapFree:          0 kB\n",
        )
        .expect("meminfo parses");
        assert_eq!((m.total_kb, m.used_kb, m.available_kb), (1000, 400, 600));
        assert_eq!((m.swap_total_kb, m.swap_used_kb), (Some(0), Some(0)));
    }

    #[test]
    fn missing_swap_lines_mean_unknown_and_old_kernels_fall_back_to_free_buffers_cached() {
        let m =
            parse_meminfo("MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n")
                .expect("meminfo parses");
        assert_eq!(m.available_kb, 400);
        assert_eq!(m.used_kb, 600);
        assert_eq!((m.swap_total_kb, m.swap_used_kb), (None, None));
    }

    #[test]
    fn no_memtotal_is_no_answer() {
        assert_eq!(parse_meminfo("MemFree: 1 kB\n"), None);
    }
}

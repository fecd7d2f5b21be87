//! Uptime (`/proc/uptime`) and load average (`/proc/loadavg`).

use infinibay_protocol::message::LoadAverage;

/// Seconds since boot with the kernel's 10 ms resolution. The collectors also use it as
/// their clock for rates: it is monotonic, counts suspended time like the counters do, and
/// lives under the collector's roots, so fixture trees carry their own time.
pub(crate) fn parse_uptime(text: &str) -> Option<f64> {
    let value: f64 = text.split_ascii_whitespace().next()?.parse().ok()?;
    value.is_finite().then_some(value)
}

/// The first three fields of `/proc/loadavg`.
pub(crate) fn parse_loadavg(text: &str) -> Option<LoadAverage> {
    let mut fields = text.split_ascii_whitespace().map(|f| f.parse::<f64>().ok());
    Some(LoadAverage {
        load1min: fields.next()??,
        load5min: fields.next()??,
        load15min: fields.next()??,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_uptime_and_loadavg() {
        assert_eq!(parse_uptime("12345.67 23456.78\n"), Some(12345.67));
        assert_eq!(parse_uptime("nan 1"), None);
        let load = parse_loadavg("0.52 0.31 0.20 1/234 5678\n").expect("loadavg parses");
        assert_eq!(
            (load.load1min, load.load5min, load.load15min),
            (0.52, 0.31, 0.20)
        );
        assert_eq!(parse_loadavg("0.5 x 1"), None);
    }
}

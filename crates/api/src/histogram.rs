//! Prometheus histograms of durations, and their bucket bounds: command latency, and the
//! real-time publication delay.

/// Buckets (seconds) of `infinibay_command_duration_seconds`.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A Prometheus histogram of durations (command latency; the real-time publication delay).
#[derive(Debug, Default, Clone)]
pub struct Histogram {
    /// Cumulative count per bucket of its bounds ([`LATENCY_BUCKETS`], [`PUBLISH_BUCKETS`]).
    pub buckets: [u64; 12],
    /// Observations.
    pub count: u64,
    /// Sum of observations, seconds.
    pub sum: f64,
}

impl Histogram {
    /// Count `seconds` (negative counts as 0) against `bounds`, one per bucket.
    pub fn observe_in(&mut self, bounds: &[f64; 12], seconds: f64) {
        let seconds = seconds.max(0.0);
        for (bucket, bound) in self.buckets.iter_mut().zip(bounds) {
            if seconds <= *bound {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// Bucket bounds (seconds) of the publication delay histograms: fine, because the goal is
/// tens of milliseconds end to end and the host's own part should be well under one.
pub const PUBLISH_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

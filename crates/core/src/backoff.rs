//! Reconnect delays: exponential with jitter, reset only by a connection that proved useful.
//!
//! The seeds' watcher reset its delay on every retry and so hit a dead socket every 4.5 s
//! forever. Here the delay doubles on every failed or useless attempt (a connection QEMU
//! accepted but on which no valid message arrived counts as useless) up to the maximum, and
//! only [`Backoff::reset`] — called after a valid message — brings it back to the start.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with "equal jitter": the wait is uniformly drawn from the upper half of
/// the current step, so that thousands of VMs whose QEMU restarted together do not reconnect in
/// lock-step, while the wait still never drops below half the step (it really grows).
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    step: Duration,
    attempts: u32,
}

impl Backoff {
    /// From `initial` doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Self {
            initial,
            max: max.max(initial),
            step: initial,
            attempts: 0,
        }
    }

    /// The wait before the next attempt; advances the step.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        self.attempts = self.attempts.saturating_add(1);
        let half = step / 2;
        let jitter = rand::rng().random_range(0..=half.as_micros().max(1) as u64);
        half + Duration::from_micros(jitter)
    }

    /// The step the next delay is drawn from (its upper bound).
    pub fn current_step(&self) -> Duration {
        self.step
    }

    /// Failed attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Back to the initial delay: the connection proved useful.
    pub fn reset(&mut self) {
        self.step = self.initial;
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_maximum_and_stay_there() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        let delays: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        // Each delay lies in [step/2, step] for step = 0.5 s × 2^n, capped at 60 s.
        for (n, d) in delays.iter().enumerate() {
            let step =
                (Duration::from_millis(500) * 2u32.pow(n as u32)).min(Duration::from_secs(60));
            assert!(
                *d >= step / 2 && *d <= step,
                "delay {n} = {d:?}, step {step:?}"
            );
        }
        assert!(delays[11] >= Duration::from_secs(30));
        assert_eq!(b.current_step(), Duration::from_secs(60));
    }

    #[test]
    fn reset_returns_to_the_initial_delay() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        for _ in 0..8 {
            b.next_delay();
        }
        assert_eq!(b.attempts(), 8);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(500));
        assert_eq!(b.attempts(), 1);
    }
}

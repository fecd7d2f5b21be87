//! Guessing passwords, slowed down: failed logins are counted per account and per client
//! address; after `login_free_failures` of them, each further failure closes that key for a
//! delay that doubles (from `login_delay_initial_secs` up to `login_delay_max_secs`). While a
//! key is closed, logins on it are answered `RATE_LIMITED` without touching the database or
//! argon2, and do not count as failures (a closed account does not stay closed longer because
//! someone keeps knocking). A success clears the account and the address.
//!
//! Keys: accounts only when the user exists (bounded by the user table), addresses
//! canonicalised (IPv6 per /64) and bounded by [`MAX_TRACKED_ADDRESSES`], forgotten after
//! [`FORGET_AFTER`] without failures. Failures are logged (`infinibay::auth`, warn),
//! deduplicated per address: the first in a minute in full, the rest counted into the next line.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::limits::ApiConfig;

const TARGET: &str = "infinibay::auth";
/// Client addresses remembered at most (about 100 bytes each).
pub const MAX_TRACKED_ADDRESSES: usize = 65_536;
/// A key without failures for this long is forgotten (its delays start over).
pub const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// One full log line per address per this period; the rest are counted into it.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// The schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThrottlePolicy {
    /// Failures before the first delay.
    pub free_failures: u32,
    /// The first delay.
    pub initial: Duration,
    /// The longest.
    pub max: Duration,
}

impl ThrottlePolicy {
    /// From the `[api]` section.
    pub fn from_config(config: &ApiConfig) -> Self {
        Self {
            free_failures: config.login_free_failures,
            initial: Duration::try_from_secs_f64(config.login_delay_initial_secs)
                .unwrap_or(Duration::from_secs(1)),
            max: Duration::try_from_secs_f64(config.login_delay_max_secs)
                .unwrap_or(Duration::from_secs(300)),
        }
    }

    /// The delay after the `failures`-th failure (none while they are free).
    pub fn delay_after(&self, failures: u32) -> Option<Duration> {
        let beyond = failures.checked_sub(self.free_failures)?.checked_sub(1)?;
        let factor = 2u32.saturating_pow(beyond.min(31));
        Some(self.initial.saturating_mul(factor).min(self.max))
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    closed_until: Option<Instant>,
    /// Failures since the last log line about this key.
    unreported: u32,
    last_logged: Option<Instant>,
}

impl Failures {
    fn new(now: Instant) -> Self {
        Self {
            count: 0,
            last: now,
            closed_until: None,
            unreported: 0,
            last_logged: None,
        }
    }

    fn closed_for(&self, now: Instant) -> Option<Duration> {
        self.closed_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }
}

/// Why a login was not even tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttled {
    /// How long until it may be tried again.
    pub retry_after: Duration,
    /// Which key is closed.
    pub reason: &'static str,
}

impl Throttled {
    /// The message clients see.
    pub fn message(&self) -> String {
        format!(
            "too many failed logins {}; try again in {} s",
            self.reason,
            self.retry_after.as_secs().max(1)
        )
    }
}

/// Failed logins per account and per address.
#[derive(Debug)]
pub struct LoginThrottle {
    policy: ThrottlePolicy,
    accounts: Mutex<HashMap<String, Failures>>,
    addresses: Mutex<HashMap<IpAddr, Failures>>,
}

impl LoginThrottle {
    /// With this schedule.
    pub fn new(policy: ThrottlePolicy) -> Self {
        Self {
            policy,
            accounts: Mutex::new(HashMap::new()),
            addresses: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a login for `username` from `address` may be tried now.
    pub fn check(&self, username: &str, address: Option<IpAddr>) -> Result<(), Throttled> {
        let now = Instant::now();
        if let Some(address) = address
            && let Some(wait) = lock(&self.addresses)
                .get(&address)
                .and_then(|f| f.closed_for(now))
        {
            return Err(Throttled {
                retry_after: wait,
                reason: "from your address",
            });
        }
        if let Some(wait) = lock(&self.accounts)
            .get(username)
            .and_then(|f| f.closed_for(now))
        {
            return Err(Throttled {
                retry_after: wait,
                reason: "for this account",
            });
        }
        Ok(())
    }

    /// A login failed (wrong password, or no such user when `known_user` is false: then only
    /// the address counts, so that made-up names cannot grow the account table).
    pub fn failed(&self, username: &str, known_user: bool, address: Option<IpAddr>) {
        let now = Instant::now();
        let mut account_count = None;
        if known_user {
            let mut accounts = lock(&self.accounts);
            let entry = accounts
                .entry(username.to_owned())
                .or_insert_with(|| Failures::new(now));
            let count = self.count(entry, now);
            account_count = Some(count);
            // Closing happens at most once per delay (failures while closed are not tried):
            // one line each time.
            if let Some(delay) = self.policy.delay_after(count) {
                tracing::warn!(
                    target: TARGET,
                    user = %printable(username),
                    failures = count,
                    "account closed to logins for {} s after repeated failures",
                    delay.as_secs().max(1)
                );
            }
        }
        let mut address_count = None;
        let mut log_line = None;
        if let Some(address) = address {
            let mut addresses = lock(&self.addresses);
            if !addresses.contains_key(&address) && addresses.len() >= MAX_TRACKED_ADDRESSES {
                evict(&mut addresses, now);
            }
            let entry = addresses
                .entry(address)
                .or_insert_with(|| Failures::new(now));
            address_count = Some(self.count(entry, now));
            entry.unreported += 1;
            if entry.last_logged.is_none_or(|t| now - t >= LOG_EVERY) {
                log_line = Some((entry.unreported, entry.closed_for(now)));
                entry.unreported = 0;
                entry.last_logged = Some(now);
            }
        } else {
            log_line = Some((1, None));
        }
        if let Some((failures_since_last_line, closed)) = log_line {
            let shown = printable(username);
            tracing::warn!(
                target: TARGET,
                address = %address.map_or_else(|| "unknown".to_owned(), |a| a.to_string()),
                user = %shown,
                known_user,
                account_failures = account_count.unwrap_or(0),
                address_failures = address_count.unwrap_or(0),
                "failed login ({failures_since_last_line} from this address since the last line about it{})",
                closed.map_or_else(String::new, |d| format!("; address closed for {} s", d.as_secs().max(1)))
            );
        }
    }

    /// A login succeeded: the account and the address start over.
    pub fn succeeded(&self, username: &str, address: Option<IpAddr>) {
        lock(&self.accounts).remove(username);
        if let Some(address) = address {
            lock(&self.addresses).remove(&address);
        }
    }

    /// Accounts and addresses tracked now.
    pub fn tracked(&self) -> (usize, usize) {
        (lock(&self.accounts).len(), lock(&self.addresses).len())
    }

    /// Count one failure on `entry` and close it when the schedule says so; returns the count.
    fn count(&self, entry: &mut Failures, now: Instant) -> u32 {
        if now - entry.last >= FORGET_AFTER {
            *entry = Failures {
                last_logged: entry.last_logged,
                unreported: entry.unreported,
                ..Failures::new(now)
            };
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        if let Some(delay) = self.policy.delay_after(entry.count) {
            entry.closed_until = Some(now + delay);
        }
        entry.count
    }
}

/// Make room among the tracked addresses: drop the ones forgotten by now, then (an attacker
/// with very many addresses) the sixteenth that failed least recently, open ones first — in
/// one pass, so that the next inserts do not each scan the table.
fn evict(addresses: &mut HashMap<IpAddr, Failures>, now: Instant) {
    addresses.retain(|_, f| now - f.last < FORGET_AFTER || f.closed_for(now).is_some());
    if addresses.len() < MAX_TRACKED_ADDRESSES {
        return;
    }
    let mut by_age: Vec<_> = addresses
        .iter()
        .map(|(a, f)| ((f.closed_for(now).is_some(), f.last), *a))
        .collect();
    let drop_count = (MAX_TRACKED_ADDRESSES / 16).max(1);
    by_age.select_nth_unstable(drop_count - 1);
    for (_, address) in &by_age[..drop_count] {
        addresses.remove(address);
    }
}

/// A user name as the log shows it: at most 64 characters, control characters escaped (it
/// is whatever the client sent).
fn printable(name: &str) -> String {
    let mut shown: String = name.chars().take(64).flat_map(char::escape_debug).collect();
    if name.chars().count() > 64 {
        shown.push('…');
    }
    shown
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ThrottlePolicy {
        ThrottlePolicy {
            free_failures: 3,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(8),
        }
    }

    #[test]
    fn delays_start_after_the_free_failures_and_double_up_to_the_maximum() {
        let p = policy();
        let delays: Vec<_> = (1..=9)
            .map(|n| p.delay_after(n).map(|d| d.as_secs()))
            .collect();
        assert_eq!(
            delays,
            vec![
                None,
                None,
                None,
                Some(1),
                Some(2),
                Some(4),
                Some(8),
                Some(8),
                Some(8)
            ]
        );
    }

    #[test]
    fn an_account_and_an_address_close_separately_and_a_success_reopens_them() {
        let throttle = LoginThrottle::new(policy());
        let attacker: IpAddr = "192.0.2.1".parse().expect("ip");
        let elsewhere: IpAddr = "192.0.2.2".parse().expect("ip");
        for _ in 0..3 {
            throttle.failed("victim", true, Some(attacker));
        }
        assert_eq!(throttle.check("victim", Some(attacker)), Ok(()));
        throttle.failed("victim", true, Some(attacker));
        let closed = throttle
            .check("anyone", Some(attacker))
            .expect_err("address");
        assert_eq!(closed.reason, "from your address");
        let closed = throttle
            .check("victim", Some(elsewhere))
            .expect_err("account");
        assert_eq!(closed.reason, "for this account");
        assert_eq!(throttle.check("bystander", Some(elsewhere)), Ok(()));
        // Unknown names count for the address only.
        throttle.failed("no-such-user", false, Some(elsewhere));
        assert_eq!(throttle.tracked(), (1, 2));
        throttle.succeeded("victim", Some(attacker));
        assert_eq!(throttle.check("victim", Some(attacker)), Ok(()));
    }

    #[test]
    fn tracked_addresses_are_bounded() {
        let throttle = LoginThrottle::new(policy());
        for i in 0..(MAX_TRACKED_ADDRESSES as u32 + 100) {
            let address = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            throttle.failed("x", false, Some(address));
        }
        assert!(throttle.tracked().1 <= MAX_TRACKED_ADDRESSES);
    }

    #[test]
    fn names_in_the_log_are_cut_and_escaped() {
        assert_eq!(printable("a\u{1b}[31m"), "a\\u{1b}[31m");
        assert_eq!(printable(&"n".repeat(100)).chars().count(), 65);
    }
}

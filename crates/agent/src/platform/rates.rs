//! Arithmetic both platforms' collectors share: rounding, and an interface's rates from two
//! readings of its counters. No OS code here.

use std::net::IpAddr;

use infinibay_protocol::message::InterfaceStats;

/// One decimal: rates are estimates over a coarse clock anyway.
pub(crate) fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

/// Two decimals: enough for a percentage and keeps the JSON short.
pub(crate) fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// Cumulative counters of one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NetCounters {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
}

/// One interface's stats: totals, and rates over `elapsed_secs` when a previous reading of
/// the same interface exists (`None` otherwise, and when a counter went backwards: the
/// interface was re-created).
pub(crate) fn interface_stats(
    now: &NetCounters,
    previous: Option<&NetCounters>,
    elapsed_secs: f64,
    is_up: bool,
    ip_addresses: Vec<String>,
) -> InterfaceStats {
    let rate = |f: fn(&NetCounters) -> u64| -> Option<f64> {
        let prev = previous?;
        if elapsed_secs <= 0.0 {
            return None;
        }
        let delta = f(now).checked_sub(f(prev))?;
        Some(round1(delta as f64 / elapsed_secs))
    };
    InterfaceStats {
        interface: now.name.clone(),
        bytes_received: Some(now.rx_bytes),
        bytes_sent: Some(now.tx_bytes),
        packets_received: Some(now.rx_packets),
        packets_sent: Some(now.tx_packets),
        errors_in: Some(now.rx_errors),
        errors_out: Some(now.tx_errors),
        bytes_received_per_sec: rate(|c| c.rx_bytes),
        bytes_sent_per_sec: rate(|c| c.tx_bytes),
        packets_received_per_sec: rate(|c| c.rx_packets),
        packets_sent_per_sec: rate(|c| c.tx_packets),
        errors_per_sec: rate(|c| c.rx_errors + c.tx_errors),
        is_up,
        ip_addresses,
    }
}

/// Puts the lists in their reported order (IPv4 before IPv6, each sorted) and turns them into
/// strings.
pub(crate) fn address_strings(mut addresses: Vec<IpAddr>) -> Vec<String> {
    addresses.sort_by_key(|a| (a.is_ipv6(), *a));
    addresses.dedup();
    addresses.iter().map(IpAddr::to_string).collect()
}

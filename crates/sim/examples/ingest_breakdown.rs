//! Where the ingest CPU goes, in process (no socket): decode only, + sanitise, + publish.
//!
//! `cargo run --release -p infinibay-sim --example ingest_breakdown [MESSAGES]`

use std::sync::Arc;
use std::time::Instant;

use infinibay_protocol::message::SystemMetrics;
use infinibay_protocol::sanitize::{Limits, sanitize};
use infinibay_protocol::{DEFAULT_MAX_LINE, GuestMessage, GuestStreamDecoder};
use infinibay_sim::Profile;
use infinibay_sim::feed::{corpus, process_usage};

fn main() -> anyhow::Result<()> {
    let total: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(300_000);
    let bytes = corpus(Profile::Small, 2000, 1)?;
    let repeat = total.div_ceil(2000);
    let limits = Limits::default();
    let (bus, mut subscriber) = tokio::sync::broadcast::channel::<Arc<GuestMessage>>(1 << 16);
    for stage in ["decode", "decode+sanitize", "decode+sanitize+publish"] {
        let cpu_before = process_usage().0;
        let started = Instant::now();
        let mut decoder = GuestStreamDecoder::new(DEFAULT_MAX_LINE);
        let mut count = 0u64;
        for _ in 0..repeat {
            for chunk in bytes.chunks(64 * 1024) {
                decoder.decode(chunk, |item| {
                    if let Ok(mut message) = item {
                        count += 1;
                        if stage != "decode" {
                            sanitize(&mut message, &limits);
                        }
                        if stage == "decode+sanitize+publish" {
                            let _ = bus.send(Arc::new(message));
                        }
                    }
                });
                while subscriber.try_recv().is_ok() {}
            }
        }
        let cpu = process_usage().0 - cpu_before;
        println!(
            "{stage:>36}: {count} msgs, {:.0} msg/s per CPU second ({:.2} µs/msg, wall {:.2} s)",
            count as f64 / cpu,
            cpu * 1e6 / count as f64,
            started.elapsed().as_secs_f64()
        );
    }
    // The two passes `decode` makes per line, timed alone: the envelope scan (approximated by
    // skipping the whole object) and the typed parse.
    let lines: Vec<&[u8]> = bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    for stage in [
        "skip whole object (≈ envelope pass)",
        "typed SystemMetrics parse",
    ] {
        let cpu_before = process_usage().0;
        let mut count = 0u64;
        for _ in 0..repeat {
            for line in &lines {
                let ok = if stage.starts_with("skip") {
                    serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok()
                } else {
                    serde_json::from_slice::<SystemMetrics>(line).is_ok()
                };
                count += u64::from(ok);
            }
        }
        let cpu = process_usage().0 - cpu_before;
        println!(
            "{stage:>36}: {count} msgs, {:.0} msg/s per CPU second ({:.2} µs/msg)",
            count as f64 / cpu,
            cpu * 1e6 / count as f64
        );
    }
    Ok(())
}

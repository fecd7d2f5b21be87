//! CPU cost of each collector on this machine, measured with the thread's CPU clock
//! (`CLOCK_THREAD_CPUTIME_ID`: exact, where getrusage on a tick-accounting kernel samples).
//! Not a pass/fail test: run it explicitly, in release, and read the printed figures:
//!
//! ```text
//! cargo test -p infiniservice --release --test collect_cost -- --ignored --nocapture --test-threads=1
//! ```
//!
//! `COLLECT_COST_CALLS` changes the number of calls for the per-sample collectors (1000).
#![cfg(target_os = "linux")]

use std::time::Duration;

use infiniservice::platform::collect::{Collector, DEFAULT_TOP_PROCESSES, Roots};

fn thread_cpu() -> Duration {
    // SAFETY: an all-zero timespec is valid; clock_gettime only writes it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: ts is a valid out-pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn calls() -> u32 {
    std::env::var("COLLECT_COST_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// Runs `f` `n` times after one warm-up call and prints the CPU per call.
fn measure(label: &str, n: u32, mut f: impl FnMut()) -> Duration {
    f();
    let before = thread_cpu();
    for _ in 0..n {
        f();
    }
    let per_call = (thread_cpu() - before) / n;
    println!(
        "collect_cost {label}: VmHWM of the test process now {} kB",
        vm_hwm_kb()
    );
    println!(
        "collect_cost {label}: {:.1} µs CPU per call over {n} calls",
        per_call.as_secs_f64() * 1e6
    );
    per_call
}

/// Peak resident memory of the test process so far, kB (growth between prints shows what
/// a collector's transient buffers add; the harness itself accounts for most of the base).
fn vm_hwm_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn process_count() -> usize {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.parse::<u32>().is_ok())
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
#[ignore = "measurement: run explicitly in release"]
fn cpu_per_system_metrics_call() {
    let mut collector = Collector::new(Roots::default());
    let per_call = measure("system_metrics", calls(), || {
        std::hint::black_box(collector.system_metrics());
    });
    assert!(per_call > Duration::ZERO);
}

#[test]
#[ignore = "measurement: run explicitly in release"]
fn cpu_per_process_snapshot_call() {
    let mut collector = Collector::new(Roots::default());
    println!(
        "collect_cost processes on this machine: {}",
        process_count()
    );
    // Top 0 is the table scan alone (every /proc/<pid>/stat); the difference to top 50 is
    // the command line and owner of the 50 reported processes.
    measure("process_snapshot(0)", calls(), || {
        std::hint::black_box(collector.process_snapshot(0));
    });
    let per_call = measure("process_snapshot(50)", calls(), || {
        std::hint::black_box(collector.process_snapshot(DEFAULT_TOP_PROCESSES));
    });
    assert!(per_call > Duration::ZERO);
}

#[test]
#[ignore = "measurement: run explicitly in release"]
fn cpu_per_inventory_call() {
    let mut collector = Collector::new(Roots::default());
    let n = (calls() / 20).max(1);
    measure("port_usage", n, || {
        std::hint::black_box(collector.port_usage());
    });
    measure("applications", n, || {
        std::hint::black_box(collector.applications());
    });
    measure(
        "services (own thread only; systemctl children not counted)",
        n,
        || {
            std::hint::black_box(collector.services());
        },
    );
    measure("identification", n, || {
        std::hint::black_box(collector.identification());
    });
}

//! Sustained insert throughput of realistic metric samples into a store.
//!
//! `cargo run --release -p infinibay-store --example store_throughput -- \
//!      --url sqlite:///tmp/x.db --vms 10000 --batch 1000 --seconds 20 --writers 1`
//!
//! Every "second" of simulated time each VM sends one `system_metrics` sample (the ~1 KB
//! `small_metrics` body); batches hold `--batch` samples of different VMs, as the host's
//! writer task forms them. `--writers` tasks insert concurrently. Prints one summary line.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::Utc;
use infinibay_store::protocol::samples::{Jitter, small_metrics};
use infinibay_store::{MetricSample, Store};

struct Args {
    url: String,
    vms: usize,
    batch: usize,
    seconds: u64,
    writers: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        url: String::new(),
        vms: 10_000,
        batch: 1000,
        seconds: 20,
        writers: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => args.url = value,
            "--vms" => args.vms = value.parse()?,
            "--batch" => args.batch = value.parse()?,
            "--seconds" => args.seconds = value.parse()?,
            "--writers" => args.writers = value.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    if args.url.is_empty() {
        bail!("--url is required");
    }
    Ok(args)
}

/// One sample per VM, generated once; rounds reuse them with new times.
fn templates(vms: usize) -> Vec<MetricSample> {
    let now = Utc::now();
    (0..vms)
        .map(|v| {
            let mut jitter = Jitter::new(v as u64);
            let metrics = small_metrics(&mut jitter, 3600 + v as u64).metrics;
            MetricSample {
                vm_id: format!("{:08x}-0000-4000-8000-{:012x}", v, v),
                received_at: now,
                guest_time: Some(now),
                cpu_percent: metrics.cpu.usage_percent,
                mem_used_kb: metrics.memory.used_kb as i64,
                mem_total_kb: metrics.memory.total_kb as i64,
                swap_used_kb: metrics.memory.swap_used_kb.map(|v| v as i64),
                disk_used_percent: Some(40.0),
                disk_read_bps: metrics.disk.io_stats.read_bytes_per_sec,
                disk_write_bps: metrics.disk.io_stats.write_bytes_per_sec,
                net_rx_bps: 1000.0,
                net_tx_bps: 300.0,
                load1: metrics.system.load_average.load1min,
                detail: std::sync::Arc::new(metrics),
            }
        })
        .collect()
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let store: Arc<dyn Store> = infinibay_store::open(&args.url).await?;
    let templates = Arc::new(templates(args.vms));
    let detail_bytes = serde_json::to_string(&templates[0].detail)?.len();
    let inserted = Arc::new(AtomicU64::new(0));
    let next_batch = Arc::new(AtomicU64::new(0));
    let batches_per_round = args.vms.div_ceil(args.batch) as u64;
    let base = Utc::now() - chrono::Duration::hours(1);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for _ in 0..args.writers {
        let (store, templates, inserted, next_batch) = (
            store.clone(),
            templates.clone(),
            inserted.clone(),
            next_batch.clone(),
        );
        let batch_size = args.batch;
        tasks.push(tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            while Instant::now() < deadline {
                let n = next_batch.fetch_add(1, Ordering::Relaxed);
                let round = n / batches_per_round;
                let first = (n % batches_per_round) as usize * batch_size;
                let last = (first + batch_size).min(templates.len());
                let at = base + chrono::Duration::seconds(round as i64);
                let batch: Vec<MetricSample> = templates[first..last]
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let mut s = t.clone();
                        s.received_at = at + chrono::Duration::microseconds(i as i64);
                        s.cpu_percent = ((round as usize + i) % 100) as f64;
                        s
                    })
                    .collect();
                let t0 = Instant::now();
                store.insert_samples(&batch).await?;
                worst = worst.max(t0.elapsed());
                inserted.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            anyhow::Ok(worst)
        }));
    }
    let mut worst = Duration::ZERO;
    for task in tasks {
        worst = worst.max(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = inserted.load(Ordering::Relaxed);
    println!(
        "backend={} vms={} batch={} writers={} seconds={:.1} samples={} rate={:.0} worst_batch_ms={:.1} detail_bytes={}",
        store.backend(),
        args.vms,
        args.batch,
        args.writers,
        elapsed,
        total,
        total as f64 / elapsed,
        worst.as_secs_f64() * 1000.0,
        detail_bytes
    );
    Ok(())
}

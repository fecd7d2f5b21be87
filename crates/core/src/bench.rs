//! The benchmark entry point of the host's ingest (`infinibay bench-ingest`, hidden, for
//! `bench/host/run.sh`). Only in builds with the `bench` feature: it needs the simulator's
//! report format, and the simulator stays out of the production build.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::bus::{Bus, InProcessBus};
use crate::diag::DEDUP_PERIOD;
use crate::ingest::{Ingest, TokenBucket, ingest_read};
use crate::registry::VmEntry;
use crate::store_writer::StoreQueue;
use infinibay_control::event::{Filter, Received, Topic};

const TARGET: &str = "infinibay::ingest";

/// The host's own ingest, measured on one socket with storage stubbed, for
/// `bench/host/run.sh` (`infinibay bench-ingest --socket PATH`).
///
/// Connects to `socket` (a server that writes `system_metrics` lines and closes, like
/// `infinibay-sim feed`) and runs, per read, exactly what a connection task of `infinibay serve`
/// runs ([`crate::ingest::ingest_read`]): framing and decoding, the per-VM token bucket,
/// sanitising, the VM's status and counters, the sample handed to a [`StoreQueue`], and a
/// publication on an [`InProcessBus`] with one metrics subscriber. Only the store writer
/// is absent: the queue keeps each VM's newest samples, as it does while the writer is busy.
/// The token bucket's rate is set out of reach so that the measurement is of CPU, not of the
/// limit. CPU time is this process's (all threads), from the first byte to the end of stream.
pub async fn bench_socket(
    socket: &std::path::Path,
    config: &crate::config::CoreConfig,
) -> std::io::Result<infinibay_sim::feed::IngestReport> {
    use infinibay_sim::feed::{IngestReport, process_usage};
    use tokio::io::AsyncReadExt;

    let mut stream = tokio::net::UnixStream::connect(socket).await?;
    let vm = Arc::new(VmEntry::new(
        "00000000-0000-4000-8000-000000000001".to_owned(),
        socket.to_owned(),
    ));
    let queue = Arc::new(StoreQueue::new(config.store.clone()));
    let bus = Arc::new(InProcessBus::default());
    let mut subscription = bus.subscribe(Filter::topic(Topic::Metrics));
    let subscriber = tokio::spawn(async move {
        let (mut delivered, mut lagged) = (0u64, 0u64);
        while let Some(received) = subscription.recv().await {
            match received {
                Received::Event(_) => delivered += 1,
                Received::Lagged(n) => lagged += n,
            }
        }
        (delivered, lagged)
    });
    // The write loop's queue: welcomes and pings land here and are discarded.
    let (outbound, mut written) = mpsc::channel(config.connection.outbound_queue.max(1));
    let sink = tokio::spawn(async move { while written.recv().await.is_some() {} });
    let mut decoder = infinibay_protocol::GuestStreamDecoder::new(config.ingest.max_line_bytes);
    let bus_dyn: Arc<dyn Bus> = bus.clone();
    // No rules: the per-sample check is the empty rule set's, as on a host without alerts.
    let (notifier, _deliveries) = crate::alerts::webhook::channel(&config.alerts);
    let alerts = Arc::new(crate::alerts::AlertEngine::new(
        &config.alerts,
        Arc::new(crate::registry::Registry::default()),
        queue.clone(),
        bus_dyn.clone(),
        Arc::new(notifier),
    ));
    let mut ingest = Ingest::new(
        vm.clone(),
        queue.clone(),
        bus_dyn,
        outbound,
        alerts,
        Default::default(),
        DEDUP_PERIOD,
    );
    let mut bucket = TokenBucket::new(config.ingest.burst, 1e12);
    let mut buffer = vec![0u8; config.ingest.read_buffer_bytes.max(2048)];
    let mut report = IngestReport::default();
    let mut start: Option<(std::time::Instant, f64)> = None;
    loop {
        let n = stream.read(&mut buffer).await?;
        if n == 0 {
            break;
        }
        if start.is_none() {
            start = Some((std::time::Instant::now(), process_usage().0));
        }
        report.bytes += n as u64;
        ingest_read(&mut decoder, &mut ingest, &mut bucket, &vm, &buffer[..n]);
        // Let the subscriber run between reads, as the host's runtime does.
        tokio::task::yield_now().await;
    }
    let stats = vm.counters.snapshot();
    drop(ingest);
    drop(bus);
    let (started, cpu_before) = start.unwrap_or((std::time::Instant::now(), process_usage().0));
    let (cpu_after, max_rss_kb) = process_usage();
    let (delivered, lagged) = subscriber.await.unwrap_or((0, 0));
    let _ = sink.await;
    report.messages = stats.messages;
    report.bad_lines = stats.decode_errors;
    report.fixes = stats.sanitized_fixes;
    report.delivered = delivered;
    report.lagged = lagged;
    report.wall_secs = started.elapsed().as_secs_f64();
    report.cpu_secs = cpu_after - cpu_before;
    report.max_rss_kb = max_rss_kb;
    let queued = queue.stats();
    tracing::debug!(target: TARGET, queued = queued.samples_queued, "bench-ingest done");
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_bench_driver_ingests_and_publishes_every_line_it_is_fed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("feed.sock");
        let corpus = infinibay_sim::feed::corpus(infinibay_sim::Profile::Small, 50, 3)
            .expect("corpus encodes");
        let mut corrupt = corpus.clone();
        corrupt.extend_from_slice(b"{\"type\":\"system_metrics\",\"metrics\":{\"cpu\":\n");
        let feeder = tokio::spawn({
            let socket = socket.clone();
            async move { infinibay_sim::feed::serve_corpus(&socket, Arc::new(corrupt), 4).await }
        });
        for _ in 0..200 {
            if socket.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let report = bench_socket(&socket, &crate::config::CoreConfig::default())
            .await
            .expect("bench ran");
        feeder.await.expect("feeder joined").expect("feeder ran");
        assert_eq!(report.messages, 200);
        assert_eq!(report.bad_lines, 4);
        assert_eq!(report.delivered + report.lagged, 200);
    }
}

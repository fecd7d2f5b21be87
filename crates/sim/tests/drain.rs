//! The stand-in host of the benchmarks, against the simulator.

use std::time::Duration;

use infinibay_sim::drain::{DrainOptions, drain};
use infinibay_sim::{SimArgs, Simulator};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_reads_every_vm_and_measures_sample_gaps_without_the_flooder() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut args = SimArgs::new(21, dir.path());
    args.interval = Duration::from_millis(200);
    args.flood = 1;
    let sim = Simulator::start(&args).await.expect("simulator starts");
    let report = drain(DrainOptions {
        socket_dir: dir.path().to_owned(),
        expect: 21,
        settle: Duration::from_millis(500),
        duration: Duration::from_secs(2),
        interval: args.interval,
        exclude: vec![sim.vms()[0].id],
    })
    .await
    .expect("drain runs");
    eprintln!("{}", report.to_json());
    assert_eq!(report.vms, 21);
    // 20 periodic VMs × 2 s / 0.2 s ≈ 200 samples, plus the flooder's system_metrics.
    assert!(report.samples >= 150, "{} samples", report.samples);
    // The flooder really floods: far more messages than the periodic VMs send.
    assert!(
        report.messages > report.samples + 200,
        "{} messages",
        report.messages
    );
    // Gaps are counted for the 20 periodic VMs only and sit near the interval.
    assert!(
        (140..=220).contains(&report.gaps.0),
        "{} gaps",
        report.gaps.0
    );
    assert!(
        report.gaps.1 >= 150.0 && report.gaps.1 <= 260.0,
        "p50 gap {} ms",
        report.gaps.1
    );
    assert_eq!(report.bad_lines, 0);
    sim.shutdown().await;
}

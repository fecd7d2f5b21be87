//! Thousands of VMs appearing at once (simulator, real sockets, SQLite): every one is stored
//! and comes online, and `/healthz` keeps answering quickly while the writer registers them.

#[path = "../../core/tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use infinibay::store::VmStatus;
use infinibay_sim::{SimArgs, Simulator};

const VMS: usize = 3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_new_vms_at_once_are_all_stored_while_healthz_keeps_answering() {
    // Three descriptors per VM in this one process: simulator listener, its accepted end,
    // the host's end.
    infinibay::core::system::raise_nofile_limit().expect("raise the open-files limit");
    let env = TestEnv::new();
    let host = env.start(env.config()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let http =
        tokio::spawn(axum::serve(listener, infinibay::http::router(host.clone())).into_future());

    // The poller asks /healthz every 100 ms from before the VMs appear until they are stored.
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/healthz");
    let done = Arc::new(AtomicBool::new(false));
    let poller = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            let mut answers = 0u32;
            let mut unhealthy = 0u32;
            while !done.load(Ordering::Relaxed) {
                let started = Instant::now();
                let response =
                    tokio::time::timeout(Duration::from_secs(10), client.get(&url).send())
                        .await
                        .expect("/healthz answers within 10 s")
                        .expect("/healthz request");
                // 503 is an answer too (the probe found the store slow under this load); what
                // must never happen is no answer.
                if response.status() != 200 {
                    unhealthy += 1;
                }
                let _: serde_json::Value = response.json().await.expect("healthz JSON");
                worst = worst.max(started.elapsed());
                answers += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (worst, answers, unhealthy)
        })
    };

    let mut args = SimArgs::new(VMS, &env.sockets);
    // The simulator shares this debug-built process and its two runtime threads with the host:
    // a sample every 5 s keeps the test about the registration burst, not about CPU.
    args.interval = Duration::from_secs(5);
    args.stats_every = Duration::ZERO;
    let sim = Simulator::start(&args).await.expect("simulator");
    let ids: std::collections::BTreeSet<String> =
        sim.vms().iter().map(|v| v.id.to_string()).collect();
    assert_eq!(ids.len(), VMS);

    let store = host.store();
    let stored_started = Instant::now();
    wait_for(
        "every new VM stored and online",
        Duration::from_secs(120),
        || {
            let store = store.clone();
            let ids = ids.clone();
            async move {
                let Ok(vms) = store.list_vms().await else {
                    return false;
                };
                vms.len() == VMS
                    && vms
                        .iter()
                        .all(|v| v.status == VmStatus::Online && ids.contains(&v.id))
            }
        },
    )
    .await;
    let stored_after = stored_started.elapsed();
    done.store(true, Ordering::Relaxed);
    let (worst, answers, unhealthy) = poller.await.expect("poller");
    eprintln!(
        "{VMS} new VMs stored and online {:.1} s after the simulator started; /healthz answered \
         {answers} times ({unhealthy} of them 503), slowest {:.0} ms",
        stored_after.as_secs_f64(),
        worst.as_secs_f64() * 1000.0
    );
    // Lenient on a loaded 2-core machine (debug build, simulator in the same process); it
    // used to hang for good.
    assert!(
        worst < Duration::from_secs(5),
        "/healthz took {worst:?} at worst"
    );
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/healthz");
    wait_for(
        "/healthz reports the store healthy",
        Duration::from_secs(30),
        || {
            let request = client.get(&url).send();
            async move { request.await.is_ok_and(|r| r.status() == 200) }
        },
    )
    .await;
    let stats = host.stats();
    assert_eq!(stats.queue.write_failures, 0, "{:?}", stats.queue);
    assert_eq!(stats.queue.samples_failed, 0, "{:?}", stats.queue);

    drop(sim);
    host.shutdown().await;
    http.abort();
}

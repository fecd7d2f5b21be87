//! The host against the simulator (`infinibay-sim`): many v1 and legacy VMs plus a flooding
//! one, every VM's data under its own id, nothing lost for the well-behaved ones.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use infinibay_core::store::VmStatus;
use infinibay_sim::{Profile, SimArgs, Simulator};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_simulated_vms_v1_legacy_and_a_flood_are_all_ingested_under_their_own_ids() {
    let env = TestEnv::new();
    let mut v1 = SimArgs::new(100, &env.sockets);
    v1.interval = Duration::from_millis(500);
    v1.flood = 1;
    v1.stats_every = Duration::ZERO;
    let mut legacy = SimArgs::new(20, &env.sockets);
    legacy.profile = Profile::Legacy;
    legacy.interval = Duration::from_millis(500);
    legacy.seed = 2;
    legacy.stats_every = Duration::ZERO;
    let sim_v1 = Simulator::start(&v1).await.expect("simulator v1");
    let sim_legacy = Simulator::start(&legacy).await.expect("simulator legacy");
    let ids: HashSet<String> = sim_v1
        .vms()
        .iter()
        .chain(sim_legacy.vms())
        .map(|v| v.id.to_string())
        .collect();
    assert_eq!(ids.len(), 120);

    let host = env.start(env.config()).await;
    let h = host.clone();
    wait_for("120 VMs online", Duration::from_secs(30), || {
        let online = h.stats().online;
        async move { online == 120 }
    })
    .await;
    let store = host.store();
    // Every VM gets samples stored, the flooding one included (rate-limited).
    for id in &ids {
        wait_samples(&store, id, 2).await;
    }
    let stored: HashSet<String> = store
        .list_vms()
        .await
        .expect("vms")
        .into_iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(
        stored, ids,
        "exactly the simulated VMs, nothing under other ids"
    );
    let stats = host.stats();
    assert_eq!(stats.queue.samples_failed, 0);
    let flood = sim_v1.vms()[0].id.to_string();
    let f = host.vm(&flood).expect("flood vm");
    assert!(
        f.stats.read_pauses >= 1,
        "the flood was paused: {:?}",
        f.stats
    );
    assert_eq!(f.status, VmStatus::Online);
    host.shutdown().await;
    sim_v1.shutdown().await;
    sim_legacy.shutdown().await;
}

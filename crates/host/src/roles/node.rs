//! `infinibay node --nats URL --database postgres://…`: discovery, connections, ingest and
//! storage for the VMs of this hypervisor; their events on NATS, their commands by
//! request/reply, heartbeats; `/healthz` and `/metrics` of its own on the listen address.
//!
//! Storage never waits for NATS: while NATS is away the node keeps storing and keeps a bounded
//! number of live events (`cluster.event_buffer`); while PostgreSQL refuses writes it keeps a
//! bounded backlog (`store.backlog_samples_max`) and live data still flows over NATS. Both
//! show on `/healthz` (503, `"status": "degraded"` with the reasons) and `/metrics`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use infinibay_cluster::{NatsBus, NatsLink, NodeServer};
use infinibay_core::Core;

use super::{RoleError, cancel_on, require_postgres, serve_http};
use crate::config::Config;
use crate::serve::{open_store, raise_open_files_limit};

/// How long start-up waits for the first NATS connection before starting anyway (the node
/// stores without NATS; its name is then not checked).
const FIRST_CONNECT: Duration = Duration::from_secs(3);

/// Run the node until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RoleError> {
    require_postgres(&config, "node")?;
    let node_id = config.cluster.node_id_or_hostname();
    let store = open_store(&config).await?;
    raise_open_files_limit();
    let link = NatsLink::connect(
        &config.cluster.nats_url,
        &format!("infinibay-node {node_id}"),
    )
    .await?;
    let _ = tokio::time::timeout(FIRST_CONNECT, link.up()).await;
    NodeServer::check_name_free(&link, &node_id).await?;

    // Stopped in this order: the core (its last statuses go to the outbox), then the node's
    // NATS side (heartbeats, request subscriptions), then the bus (what waits goes out).
    let core_stop = CancellationToken::new();
    let server_stop = CancellationToken::new();
    let bus_stop = CancellationToken::new();
    let bus = NatsBus::start(
        link.clone(),
        &node_id,
        config.cluster.event_buffer,
        bus_stop.clone(),
    );
    let core = Core::start_with_bus(
        config.core.clone(),
        store,
        Arc::new(bus.clone()),
        core_stop.clone(),
    );
    let server = match NodeServer::start(
        core.clone(),
        bus.clone(),
        &node_id,
        config.cluster.heartbeat_interval(),
        server_stop.clone(),
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            core.shutdown().await;
            return Err(e.into());
        }
    };
    cancel_on(shutdown, core_stop.clone());
    let state = NodeState {
        core: core.clone(),
        server: server.clone(),
        bus: bus.clone(),
        link,
    };
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state);
    // Only /healthz and /metrics: both on the node's one (private) listener.
    let served = serve_http(listener, None, app, &config.api, core_stop.clone()).await;
    core_stop.cancel();
    core.stopped().await;
    server_stop.cancel();
    server.stopped().await;
    bus_stop.cancel();
    bus.stopped().await;
    tracing::info!(target: "infinibay::host", node = %node_id, "node stopped");
    served.map_err(RoleError::from)
}

#[derive(Clone)]
struct NodeState {
    core: Core,
    server: NodeServer,
    bus: NatsBus,
    link: NatsLink,
}

/// 200 when the store answers, accepts writes and NATS is connected; 503 with the reasons
/// otherwise. From memory only.
async fn healthz(State(s): State<NodeState>) -> (StatusCode, axum::Json<serde_json::Value>) {
    let stats = s.core.stats();
    let probe = s.core.store_health();
    let nats = s.link.stats();
    let bus = s.bus.stats();
    let mut problems = Vec::new();
    if !probe.ok {
        problems.push(format!(
            "the store does not answer: {}",
            probe.error.as_deref().unwrap_or("no answer")
        ));
    }
    if stats.queue.store_failing {
        problems.push(format!(
            "the store refuses writes: {} samples kept in the backlog (at most {}), {} lost",
            stats.queue.backlog_samples,
            s.core.config().store.backlog_samples_max,
            stats.queue.samples_failed
        ));
    }
    if !nats.connected {
        problems.push(format!(
            "NATS unreachable for {:.0} s: storing goes on; {} live events buffered, {} dropped; commands and live data do not reach the APIs",
            nats.for_secs, bus.buffered, bus.dropped
        ));
    }
    let code = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        axum::Json(json!({
            "status": if problems.is_empty() { "ok" } else { "degraded" },
            "role": "node",
            "node": s.server.node(),
            "incarnation": s.server.incarnation(),
            "problems": problems,
            "store": s.core.store().backend(),
            "store_probe": probe,
            "vms": stats.vms,
            "online": stats.online,
            "queue": stats.queue,
            "nats": nats,
            "bus": bus,
        })),
    )
}

async fn metrics(State(s): State<NodeState>) -> Response {
    let mut out = String::with_capacity(4096);
    infinibay_api::rest::render_core_metrics(&s.core, &mut out).await;
    infinibay_cluster::metrics::write_link(&mut out, &s.link.stats());
    infinibay_cluster::metrics::write_bus(&mut out, &s.bus.stats());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

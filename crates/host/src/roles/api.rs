//! `infinibay api --nats URL --database postgres://…`: GraphQL, Socket.IO, REST and the
//! dashboard for the whole fleet. It opens no guest socket: it reaches the nodes through
//! [`NatsControl`] and reads history from PostgreSQL. Any number of replicas can run behind a
//! plain load balancer (Socket.IO's polling transport needs sticky sessions,
//! `docs/scale-out.md`).
//!
//! Every replica must sign tokens with the same secret: a replica whose secret differs from the
//! running ones' refuses to start, since a token issued by one would be refused by the other
//! (seed 004's lesson: what a request needs must not live in one process only).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use futures_util::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use infinibay_api::auth::SECRET_FILE;
use infinibay_cluster::rpc::{self, RpcError};
use infinibay_cluster::{Directory, NatsBus, NatsControl, NatsLink};
use infinibay_core::health::{StoreHealth, probe_store};
use infinibay_store::Store;

use super::{RoleError, cancel_on, require_postgres, serve_http};
use crate::config::Config;
use crate::serve::Prepared;

/// How long start-up waits for the first NATS connection before serving anyway (history from
/// PostgreSQL works; live data and commands come once NATS does).
const FIRST_CONNECT: Duration = Duration::from_secs(3);
/// Where replicas compare their secrets.
const SECRET_SUBJECT: &str = "infinibay.rpc.api.secret";
/// The replicas' queue group on it: one of them answers.
const API_GROUP: &str = "infinibay-api";

/// Run an API replica until `shutdown` completes. `prepared` comes from
/// [`crate::serve::prepare`] (secret, first admin, the open store).
pub async fn run(
    config: Config,
    prepared: Prepared,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RoleError> {
    require_postgres(&config, "api")?;
    // `/metrics` on its own listener, as under `serve` (`api.metrics_listen`).
    let metrics = crate::serve::bind_metrics(config.api.metrics_listen).await?;
    let name = listener
        .local_addr()
        .map(|a| format!("infinibay-api {a}"))
        .unwrap_or_else(|_| "infinibay-api".to_owned());
    let link = NatsLink::connect(&config.cluster.nats_url, &name).await?;
    let _ = tokio::time::timeout(FIRST_CONNECT, link.up()).await;
    let fingerprint = fingerprint(&prepared.settings.secret);
    check_secret(&link, &fingerprint).await?;

    let stop = CancellationToken::new();
    cancel_on(shutdown, stop.clone());
    let secrets = link
        .client()
        .queue_subscribe(SECRET_SUBJECT, API_GROUP.to_owned())
        .await
        .map_err(|e| RoleError::Subscribe(e.to_string()))?;
    tokio::spawn(answer_secret(
        link.clone(),
        secrets,
        fingerprint,
        stop.clone(),
    ));

    // The API never publishes events: its bus only subscribes.
    let bus = NatsBus::start(link.clone(), "api", 1, stop.clone());
    let directory = Directory::start(
        link.clone(),
        config.cluster.liveness_window(),
        config.cluster.request_timeout(),
        stop.clone(),
    )
    .await
    .map_err(|e| RoleError::Subscribe(e.to_string()))?;
    let default_wait = Duration::try_from_secs_f64(config.core.commands.default_timeout_secs)
        .unwrap_or(Duration::from_secs(30));
    let control = NatsControl::new(bus, directory.clone(), default_wait);

    let store = prepared.store;
    let store_health = Arc::new(StoreHealth::default());
    tokio::spawn(probe_store(
        store.clone(),
        store_health.clone(),
        stop.clone(),
    ));

    let mut settings = prepared.settings;
    let (metrics_link, metrics_dir) = (link.clone(), directory.clone());
    settings.extra_metrics = Some(Arc::new(move |out: &mut String| {
        infinibay_cluster::metrics::write_link(out, &metrics_link.stats());
        infinibay_cluster::metrics::write_nodes(out, &metrics_dir.nodes());
    }));
    let api = infinibay_api::router(Arc::new(control), store.clone(), settings, stop.clone());
    let health = ApiHealth {
        link,
        directory,
        store,
        store_health,
    };
    let app = Router::new()
        .route("/healthz", get(healthz))
        .with_state(health)
        // `mount` keeps the API router's fallback (Socket.IO answers there).
        .merge(infinibay_dashboard::mount(api));
    let served = serve_http(listener, Some(metrics), app, &config.api, stop.clone()).await;
    stop.cancel();
    tracing::info!(target: "infinibay::host", "API replica stopped");
    served.map_err(RoleError::from)
}

/// The first 16 hex digits of the secret's SHA-256: enough to tell two secrets apart, nothing
/// to learn the secret from.
fn fingerprint(secret: &[u8]) -> String {
    let digest = Sha256::digest(secret);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Ask a running replica for its fingerprint; refuse a different one.
async fn check_secret(link: &NatsLink, ours: &str) -> Result<(), RoleError> {
    if !link.is_up() {
        tracing::warn!(target: "infinibay::host",
            "NATS is not reachable yet: the JWT secret is not compared with the other replicas'");
        return Ok(());
    }
    match rpc::request(
        link,
        SECRET_SUBJECT.to_owned(),
        bytes::Bytes::new(),
        Duration::from_secs(2),
    )
    .await
    {
        Ok(theirs) => {
            let theirs = String::from_utf8_lossy(&theirs).into_owned();
            if theirs == ours {
                Ok(())
            } else {
                Err(RoleError::SecretMismatch {
                    ours: ours.to_owned(),
                    theirs,
                    file: SECRET_FILE,
                })
            }
        }
        Err(RpcError::NoResponders) => Ok(()),
        Err(e) => {
            tracing::warn!(target: "infinibay::host", "cannot compare the JWT secret with the other replicas': {e}");
            Ok(())
        }
    }
}

async fn answer_secret(
    link: NatsLink,
    mut requests: async_nats::Subscriber,
    fingerprint: String,
    stop: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => break,
            m = requests.next() => match m { Some(m) => m, None => break },
        };
        if let Some(reply) = message.reply {
            let _ = rpc::respond(link.client(), reply, fingerprint.clone().into()).await;
        }
    }
}

#[derive(Clone)]
struct ApiHealth {
    link: NatsLink,
    directory: Directory,
    store: Arc<dyn Store>,
    store_health: Arc<StoreHealth>,
}

/// 200 when the store answers and NATS is connected; 503 with the reasons otherwise (a load
/// balancer then sends users to a replica that has live data). From memory only.
async fn healthz(State(h): State<ApiHealth>) -> (StatusCode, axum::Json<serde_json::Value>) {
    let probe = h.store_health.snapshot();
    let nats = h.link.stats();
    let nodes = h.directory.nodes();
    let mut problems = Vec::new();
    if !probe.ok {
        problems.push(format!(
            "the store does not answer: {}",
            probe.error.as_deref().unwrap_or("no answer")
        ));
    }
    if !nats.connected {
        problems.push(format!(
            "NATS unreachable for {:.0} s: no live data and no commands until it is back (history still served)",
            nats.for_secs
        ));
    }
    let code = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let (vms, online) = nodes
        .iter()
        .filter(|n| n.alive)
        .fold((0, 0), |(v, o), n| (v + n.vms, o + n.online));
    (
        code,
        axum::Json(json!({
            "status": if problems.is_empty() { "ok" } else { "degraded" },
            "role": "api",
            "problems": problems,
            "store": h.store.backend(),
            "store_probe": probe,
            "nats": nats,
            "nodes": nodes,
            "vms": vms,
            "online": online,
        })),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_tell_secrets_apart_and_hide_them() {
        let a = fingerprint(b"secret one, long enough to be a real secret....");
        let b = fingerprint(b"secret two, long enough to be a real secret....");
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert_eq!(
            a,
            fingerprint(b"secret one, long enough to be a real secret....")
        );
    }
}

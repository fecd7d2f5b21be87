//! The host split for scale-out (`docs/scale-out.md`): [`node`] runs the guest-facing core of
//! one hypervisor and carries its side of [`infinibay_control::VmControl`] over NATS; [`api`]
//! serves the user-facing API for the whole fleet from NATS and PostgreSQL. `infinibay serve`
//! stays both in one process, on SQLite or PostgreSQL, with the in-process bus.

pub mod api;
pub mod node;

use std::future::Future;

use axum::Router;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use infinibay_api::limits::ApiConfig;

use crate::config::Config;
use crate::serve::{StartError, mask_password};

/// Why a role could not start.
#[derive(Debug, Error)]
pub enum RoleError {
    /// The common start-up checks (listen address, database, HTTP).
    #[error(transparent)]
    Start(#[from] StartError),
    /// The roles share state through PostgreSQL.
    #[error(
        "`infinibay {role}` shares its state with the other processes through PostgreSQL, and {url} is not a PostgreSQL URL: give --database postgres://… (use `infinibay serve` for one process on SQLite)"
    )]
    NotPostgres {
        /// `node` or `api`.
        role: &'static str,
        /// The configured database, password masked.
        url: String,
    },
    /// The NATS URL is unusable.
    #[error(transparent)]
    Link(#[from] infinibay_cluster::link::LinkError),
    /// The node's NATS side.
    #[error(transparent)]
    Node(#[from] infinibay_cluster::node::NodeError),
    /// A subscription was refused.
    #[error("NATS refused a subscription: {0}")]
    Subscribe(String),
    /// The API's preparation (secret, first admin).
    #[error(transparent)]
    Setup(#[from] crate::serve::SetupError),
    /// This replica's JWT secret differs from the running replicas'.
    #[error(
        "this API replica's JWT secret (fingerprint {ours}) differs from the running replicas' ({theirs}): a token issued by one would be refused by the other. Give every replica the same secret file ({file} in the data directory)"
    )]
    SecretMismatch {
        /// Ours.
        ours: String,
        /// Theirs.
        theirs: String,
        /// The file name.
        file: &'static str,
    },
}

fn require_postgres(config: &Config, role: &'static str) -> Result<(), RoleError> {
    let url = config.database_url();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(())
    } else {
        Err(RoleError::NotPostgres {
            role,
            url: mask_password(&url),
        })
    }
}

/// Serve `app` on `http` (and `/metrics` of the same app on `metrics`, when given) until `stop`
/// is cancelled, through the same accept loop as `serve`.
async fn serve_http(
    http: TcpListener,
    metrics: Option<TcpListener>,
    app: Router,
    api: &ApiConfig,
    stop: CancellationToken,
) -> Result<(), StartError> {
    if let Ok(addr) = http.local_addr() {
        tracing::info!(target: "infinibay::http", "listening on http://{addr}");
    }
    if let Some(addr) = metrics.as_ref().and_then(|m| m.local_addr().ok()) {
        tracing::info!(target: "infinibay::http", "metrics on http://{addr}/metrics");
    }
    crate::serve::serve_listeners(http, metrics, app, api, None, stop).await;
    Ok(())
}

/// Cancel `token` when `shutdown` completes.
fn cancel_on(shutdown: impl Future<Output = ()> + Send + 'static, token: CancellationToken) {
    tokio::spawn(async move {
        shutdown.await;
        token.cancel();
    });
}

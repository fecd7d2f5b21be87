//! infinibay's user-facing API, on the host's one HTTP listener: GraphQL at `/graphql`,
//! Socket.IO at `/socket.io/`, REST (`/metrics`, `/infiniservice/…`). The contract is
//! `docs/api.md`. The console joins it later.
//!
//! [`auth`] says who a request is, [`authz`] what they may do (the one rule set every
//! surface asks), [`users`] keeps the accounts, and [`graphql`], [`realtime`], [`rest`] are the
//! surfaces. [`client`] is the CLI's side of it.
//!
//! It reaches the core only through [`infinibay_control::VmControl`] (it does not depend on
//! the core crate at all), and reads history, VM records and users from the store; the only
//! things it writes there are accounts and VM ownership.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub use infinibay_control as control;

pub mod auth;
pub mod authz;
pub mod client;
pub mod connections;
pub mod error;
pub mod graphql;
pub mod histogram;
pub mod limits;
pub mod login_throttle;
pub mod password_work;
pub mod realtime;
pub mod rest;
pub mod sessions;
mod state;
pub mod users;
pub mod work_limiter;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio_util::sync::CancellationToken;

use infinibay_control::VmControl;
use infinibay_store::Store;

pub use error::{ApiError, ApiResult};
pub use state::{Api, ApiSettings, ExtraMetrics};

use realtime::Realtime;

/// Every API route, ready to be merged into the host's router. Spawns the real-time fan-out
/// and revocation sweep; they stop when `stop` is cancelled.
pub fn router(
    control: Arc<dyn VmControl>,
    store: Arc<dyn Store>,
    settings: ApiSettings,
    stop: CancellationToken,
) -> Router {
    let api = Api::new(control, store, settings);
    let (realtime, io_layer) = Realtime::start(api.clone(), stop);
    // GraphQL reads its body under the same cap itself (limits::read_body); this covers axum's
    // own extractors on any route.
    let body_limit = axum::extract::DefaultBodyLimit::max(api.limits().max_body_bytes);
    Router::new()
        .merge(graphql::routes(api.clone(), realtime.clone()))
        .merge(rest::routes(api, realtime))
        .layer(io_layer)
        .layer(body_limit)
}

/// Defaults for [`ApiSettings`], with the data directory and the JWT secret (and the `[api]`
/// section's defaults: set `limits` to the configured one).
pub fn settings_for(data_dir: PathBuf, secret: Vec<u8>) -> ApiSettings {
    ApiSettings {
        data_dir,
        secret,
        token_ttl: auth::DEFAULT_TOKEN_TTL,
        revocation_sweep: Duration::from_secs(5),
        extra_metrics: None,
        limits: limits::ApiConfig::default(),
        graphiql_page: None,
    }
}

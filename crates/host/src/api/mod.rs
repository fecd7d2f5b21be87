//! The API on the host's one HTTP listener: GraphQL at `/graphql`, Socket.IO at
//! `/socket.io/`, REST (`/metrics`, `/infiniservice/…`). The contract is `docs/api.md`.
//!
//! [`auth`] says who a request is, [`authz`] what they may do (the one rule set every
//! surface asks), and [`graphql`], [`realtime`], [`rest`] are the surfaces. [`client`] is the
//! CLI's side of it.

pub mod auth;
pub mod authz;
pub mod client;
pub mod error;
pub mod graphql;
pub mod histogram;
pub mod realtime;
pub mod rest;
pub mod sessions;
mod state;

use std::path::PathBuf;
use std::time::Duration;

use axum::Router;

pub use error::{ApiError, ApiResult};
pub use state::{Api, ApiSettings, Prepared, SetupError, prepare, prepare_with_admin_password};

use crate::host::Host;
use realtime::Realtime;

/// Every API route, ready to be merged into the host's router (`serve::run`'s `extra`).
/// Spawns the real-time fan-out; it stops with the host.
pub fn router(host: Host, settings: ApiSettings) -> Router {
    let api = Api::new(host, settings);
    let (realtime, io_layer) = Realtime::start(api.clone());
    Router::new()
        .merge(graphql::routes(api.clone(), realtime.clone()))
        .merge(rest::routes(api, realtime))
        .layer(io_layer)
}

/// Defaults for [`ApiSettings`] from the host configuration.
pub fn settings_for(data_dir: PathBuf, secret: Vec<u8>) -> ApiSettings {
    ApiSettings {
        data_dir,
        secret,
        token_ttl: auth::DEFAULT_TOKEN_TTL,
        revocation_sweep: Duration::from_secs(5),
        event_limit_per_minute: 100,
    }
}

//! infinibay's user-facing API, on the host's one HTTP listener: GraphQL at `/graphql`,
//! Socket.IO at `/socket.io/`, REST (`/metrics`, `/infiniservice/…`). The contract is
//! `docs/api.md`; the web console's `/console/{vm_id}` (`docs/console.md`) beside them.
//!
//! [`auth`] says who a request is, [`authz`] what they may do (the one rule set every
//! surface asks), [`users`] keeps the accounts, and [`graphql`], [`realtime`], [`rest`] are the
//! surfaces. [`client`] is the CLI's side of it.
//!
//! It reaches the core only through [`infinibay_control::VmControl`] (it does not depend on
//! the core crate at all), and reads history, VM records and users from the store; the only
//! things it writes there are accounts, VM ownership and console tickets.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub use infinibay_control as control;

pub mod auth;
pub mod authz;
pub mod client;
pub mod connections;
pub mod console;
pub mod error;
pub mod graphql;
pub mod histogram;
pub mod limits;
pub mod login_throttle;
pub mod password_work;
pub mod realtime;
pub mod refusals;
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

/// Every API route, ready to be merged into the host's router, and the console service (the
/// host ends its sessions before it stops: upgraded connections outlive axum's graceful
/// shutdown). Spawns the real-time fan-out and revocation sweep; they stop when `stop` is
/// cancelled. Serve it so that requests carry `ConnectInfo<SocketAddr>` (the host's listener
/// does; with `axum::serve`, `into_make_service_with_connect_info`), so that console refusals
/// log the remote address.
pub fn routes(
    control: Arc<dyn VmControl>,
    store: Arc<dyn Store>,
    settings: ApiSettings,
    stop: CancellationToken,
) -> Routes {
    let cors = cors_layer(&settings.cors_origins);
    let api = Api::new(control, store, settings);
    let console = api.console().console().clone();
    let (realtime, io_layer) = Realtime::start(api.clone(), stop);
    // GraphQL reads its body under the same cap itself (limits::read_body); this covers axum's
    // own extractors on any route.
    let body_limit = axum::extract::DefaultBodyLimit::max(api.limits().max_body_bytes);
    let router = Router::new()
        .merge(graphql::routes(api.clone(), realtime.clone()))
        .merge(rest::routes(api.clone(), realtime))
        .merge(console.router())
        .layer(io_layer)
        .layer(body_limit)
        .layer(axum::middleware::from_fn_with_state(
            api,
            refusals::log_refused_upgrades,
        ));
    let router = match cors {
        // Outside the Socket.IO layer, so that its polling transport gets the headers too.
        Some(cors) => router.layer(cors),
        None => router,
    };
    Routes { router, console }
}

/// [`routes`] without the console handle.
pub fn router(
    control: Arc<dyn VmControl>,
    store: Arc<dyn Store>,
    settings: ApiSettings,
    stop: CancellationToken,
) -> Router {
    routes(control, store, settings, stop).router
}

/// What [`routes`] gives the host.
pub struct Routes {
    /// Every API route.
    pub router: Router,
    /// The console service: `shutdown()` then `closed().await` on the way out.
    pub console: Arc<infinibay_console::Console>,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes").finish_non_exhaustive()
    }
}

/// Why a CORS origin was refused.
#[derive(Debug, thiserror::Error)]
#[error("CORS origin `{0}` is not an origin (expected http(s)://host[:port], nothing after it)")]
pub struct BadOrigin(pub String);

/// Check one configured CORS origin: `http` or `https`, a host, an optional port, no path.
pub fn check_origin(origin: &str) -> Result<(), BadOrigin> {
    let bad = || BadOrigin(origin.to_owned());
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(bad)?;
    let valid = !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if valid && axum::http::HeaderValue::from_str(origin).is_ok() {
        Ok(())
    } else {
        Err(bad())
    }
}

/// The CORS layer for `origins` (credentials allowed, so never `*`); `None` when empty.
fn cors_layer(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::{HeaderValue, Method, header};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let list: Vec<HeaderValue> = origins
        .iter()
        .filter(|o| check_origin(o).is_ok())
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if list.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(list))
            .allow_credentials(true)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .max_age(Duration::from_secs(600)),
    )
}

/// Defaults for [`ApiSettings`], with the data directory and the JWT secret (and the `[api]`
/// section's defaults: set `limits` to the configured one).
pub fn settings_for(data_dir: PathBuf, secret: Vec<u8>) -> ApiSettings {
    ApiSettings {
        data_dir,
        secret,
        token_ttl: auth::DEFAULT_TOKEN_TTL,
        revocation_sweep: Duration::from_secs(5),
        vnc: Arc::new(console::NoVnc),
        console: infinibay_console::ConsoleConfig::default(),
        extra_metrics: None,
        limits: limits::ApiConfig::default(),
        graphiql_page: None,
        cors_origins: Vec::new(),
    }
}

//! REST: `/metrics` (Prometheus text, only on the metrics listener: `api.metrics_listen`,
//! optionally behind `api.metrics_token`) and the agent downloads `/infiniservice/{platform}/…`
//! and `/infiniservice/windows/msi` behind a bearer token or a per-VM install token (revoked
//! with its issuer's access).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::auth::bearer;
use super::error::ApiError;
use super::histogram::{Histogram, LATENCY_BUCKETS, PUBLISH_BUCKETS};
use super::realtime::Realtime;
use super::state::Api;

/// Who may use a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteAuth {
    /// Only on the metrics listener ([`metrics_only`]), with `api.metrics_token` when one is
    /// set; `404` on the main listener.
    MetricsListener,
    /// A valid user token (or a per-VM install token).
    Authenticated,
}

/// Every route [`routes`] serves (the authorization matrix test enumerates this list).
pub const ROUTES: &[(&str, RouteAuth)] = &[
    ("/metrics", RouteAuth::MetricsListener),
    ("/infiniservice/{platform}/binary", RouteAuth::Authenticated),
    ("/infiniservice/{platform}/script", RouteAuth::Authenticated),
    ("/infiniservice/windows/msi", RouteAuth::Authenticated),
];

/// The routes.
pub fn routes(api: Api, realtime: Arc<Realtime>) -> Router {
    Router::new()
        .route(ROUTES[0].0, get(metrics))
        .route(ROUTES[1].0, get(download::<false>))
        .route(ROUTES[2].0, get(download::<true>))
        .route(ROUTES[3].0, get(download_msi))
        .with_state(RestState { api, realtime })
}

/// What the REST handlers need.
#[derive(Clone)]
struct RestState {
    api: Api,
    realtime: Arc<Realtime>,
}

/// Put in the requests of the metrics listener by [`metrics_only`]: `/metrics` answers only
/// there.
#[derive(Debug, Clone, Copy)]
pub struct MetricsListener;

/// The router of the metrics listener: `app` (the whole API, so that `/metrics` sees the same
/// state) with every path but `/metrics` answered `404`.
pub fn metrics_only(app: Router) -> Router {
    app.layer(axum::middleware::from_fn(
        |mut request: axum::extract::Request, next: axum::middleware::Next| async move {
            if request.uri().path() != ROUTES[0].0 {
                return StatusCode::NOT_FOUND.into_response();
            }
            request.extensions_mut().insert(MetricsListener);
            next.run(request).await
        },
    ))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self.code {
            "UNAUTHENTICATED" => StatusCode::UNAUTHORIZED,
            "RATE_LIMITED" => StatusCode::TOO_MANY_REQUESTS,
            "FORBIDDEN" => StatusCode::FORBIDDEN,
            "NOT_FOUND" => StatusCode::NOT_FOUND,
            "INVALID" => StatusCode::BAD_REQUEST,
            "VM_OFFLINE" | "VM_UNREACHABLE" | "INTERNAL" => StatusCode::SERVICE_UNAVAILABLE,
            "TIMEOUT" => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        (
            status,
            axum::Json(serde_json::json!({"error": self.message, "code": self.code})),
        )
            .into_response()
    }
}

fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Name, help, value of a per-VM gauge.
type Gauge = (
    &'static str,
    &'static str,
    fn(&infinibay_store::MetricSample) -> f64,
);

/// Prometheus text exposition of the VMs' latest samples and the host's counters.
pub async fn render_metrics(api: &Api, realtime: &Realtime) -> String {
    let mut out = String::with_capacity(4096);
    render_core_metrics(api.control(), &mut out).await;
    let name = "infinibay_realtime_connections";
    let _ = writeln!(
        out,
        "# HELP {name} Connected Socket.IO clients\n# TYPE {name} gauge\n{name} {}",
        realtime.connections()
    );
    render_api_metrics(api, realtime, &mut out);
    if let Some(extra) = &api.settings().extra_metrics {
        extra(&mut out);
    }
    out
}

/// The core's part of `/metrics`: each VM's newest sample and agent status, and the core's
/// counters. An `infinibay node` serves it for its own VMs.
pub async fn render_core_metrics(control: &dyn infinibay_control::VmControl, out: &mut String) {
    // The core's newest sample of each VM, ordered by VM: whether or not anyone listens on
    // Socket.IO.
    let samples = control.latest_samples().await;
    let vms = control.vms().await;
    let gauges: [Gauge; 8] = [
        (
            "infinibay_vm_cpu_percent",
            "CPU use of the VM, percent",
            |s| s.cpu_percent,
        ),
        (
            "infinibay_vm_memory_used_bytes",
            "Memory used in the VM",
            |s| s.mem_used_kb as f64 * 1024.0,
        ),
        ("infinibay_vm_memory_total_bytes", "Memory of the VM", |s| {
            s.mem_total_kb as f64 * 1024.0
        }),
        (
            "infinibay_vm_disk_used_ratio",
            "Fullest file system of the VM, 0-1",
            |s| s.disk_used_percent.unwrap_or(0.0) / 100.0,
        ),
        (
            "infinibay_vm_disk_read_bytes_per_second",
            "Block reads",
            |s| s.disk_read_bps,
        ),
        (
            "infinibay_vm_disk_write_bytes_per_second",
            "Block writes",
            |s| s.disk_write_bps,
        ),
        (
            "infinibay_vm_network_receive_bytes_per_second",
            "Network receive",
            |s| s.net_rx_bps,
        ),
        (
            "infinibay_vm_network_transmit_bytes_per_second",
            "Network transmit",
            |s| s.net_tx_bps,
        ),
    ];
    for (name, help, get) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for s in &samples {
            let _ = writeln!(out, "{name}{{vm=\"{}\"}} {}", label(&s.vm_id), get(s));
        }
    }
    let _ = writeln!(
        out,
        "# HELP infinibay_vm_up 1 when the VM's agent is online\n# TYPE infinibay_vm_up gauge"
    );
    for vm in &vms {
        let up = u8::from(vm.status == infinibay_store::VmStatus::Online);
        let _ = writeln!(out, "infinibay_vm_up{{vm=\"{}\"}} {up}", label(&vm.id));
    }
    // Host counters, read from the stats structure by name so that new counters do not break
    // this page.
    let stats = serde_json::to_value(control.stats().await).unwrap_or_default();
    let number = |path: &[&str]| {
        let mut v = &stats;
        for p in path {
            v = v.get(*p)?;
        }
        v.as_f64()
    };
    // From the totals, not from the VM list: the list's counters may be a minute old when the
    // core runs elsewhere (`infinibay api`); the totals are the nodes' last heartbeats.
    let connections = number(&["totals", "connected"]).unwrap_or(0.0);
    let messages = number(&["totals", "messages"]).unwrap_or(0.0);
    let decode_errors = number(&["totals", "decode_errors"]).unwrap_or(0.0);
    let counters: [(&str, &str, &str, Option<f64>); 8] = [
        (
            "infinibay_connections",
            "gauge",
            "Open VM socket connections",
            Some(connections),
        ),
        ("infinibay_vms", "gauge", "VMs known", number(&["vms"])),
        (
            "infinibay_vms_online",
            "gauge",
            "VMs online",
            number(&["online"]),
        ),
        (
            "infinibay_messages_total",
            "counter",
            "Valid guest messages",
            Some(messages),
        ),
        (
            "infinibay_decode_errors_total",
            "counter",
            "Guest lines that did not decode",
            Some(decode_errors),
        ),
        (
            "infinibay_dropped_samples_total",
            "counter",
            "Samples dropped or coalesced by the storage queue",
            number(&["queue", "samples_coalesced"])
                .map(|c| c + number(&["queue", "samples_failed"]).unwrap_or(0.0)),
        ),
        (
            "infinibay_store_backlog_samples",
            "gauge",
            "Samples kept for a later write because the database refused them",
            number(&["queue", "backlog_samples"]),
        ),
        (
            "infinibay_store_failing",
            "gauge",
            "1 while the database refuses writes",
            stats
                .get("queue")
                .and_then(|q| q.get("store_failing"))
                .and_then(|f| f.as_bool())
                .map(|f| f64::from(u8::from(f))),
        ),
    ];
    for (name, kind, help, value) in counters {
        if let Some(value) = value {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
    }
}

/// The API's own part of `/metrics`: command latencies and real-time publication delays.
fn render_api_metrics(api: &Api, realtime: &Realtime, out: &mut String) {
    let name = "infinibay_command_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Commands sent through the API, send to response\n# TYPE {name} histogram"
    );
    for (outcome, h) in api.command_latency() {
        write_histogram(out, name, ("outcome", outcome), &LATENCY_BUCKETS, &h);
    }
    let name = "infinibay_realtime_publish_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} metricsUpdate: from the sample's receipt by the host (from=\"receipt\") or the guest's timestamp (from=\"guest\"; same clock only with the simulator) until the real-time fan-out handles it (queued on every subscribed socket, if any)\n# TYPE {name} histogram"
    );
    let delays = realtime.publish_delays();
    for (from, h) in [
        ("receipt", &delays.from_receipt),
        ("guest", &delays.from_guest),
    ] {
        write_histogram(out, name, ("from", from), &PUBLISH_BUCKETS, h);
    }
}

/// The `_bucket`, `_sum` and `_count` lines of one labelled Prometheus histogram.
fn write_histogram(
    out: &mut String,
    name: &str,
    (label, value): (&str, &str),
    bounds: &[f64; 12],
    h: &Histogram,
) {
    for (bound, count) in bounds.iter().zip(h.buckets.iter()) {
        let _ = writeln!(
            out,
            "{name}_bucket{{{label}=\"{value}\",le=\"{bound}\"}} {count}"
        );
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{{label}=\"{value}\",le=\"+Inf\"}} {}",
        h.count
    );
    let _ = writeln!(out, "{name}_sum{{{label}=\"{value}\"}} {}", h.sum);
    let _ = writeln!(out, "{name}_count{{{label}=\"{value}\"}} {}", h.count);
}

/// The limits' counters: database pool and turns, connections not yet authenticated, logins.
fn render_limits(api: &Api, tracker: Option<&crate::connections::ConnectionTracker>) -> String {
    let mut out = String::with_capacity(2048);
    let mut gauge = |name: &str, kind: &str, help: &str, labelled: &[(&str, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in labelled {
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {value}");
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        }
    };
    if let Some(pool) = api.store().pool_stats() {
        gauge(
            "infinibay_db_pool_connections",
            "gauge",
            "Reader pool connections: max, open, busy (busy = max: the next query waits)",
            &[
                ("state=\"max\"", f64::from(pool.max)),
                ("state=\"open\"", f64::from(pool.open)),
                ("state=\"busy\"", f64::from(pool.busy())),
            ],
        );
    }
    let work = api.work().stats();
    gauge(
        "infinibay_api_db_turns",
        "gauge",
        "API requests holding (running) or waiting for (waiting) their user's database turn",
        &[
            ("state=\"running\"", work.running as f64),
            ("state=\"waiting\"", work.waiting as f64),
        ],
    );
    let (hashing, hash_waiting) = crate::password_work::in_progress();
    gauge(
        "infinibay_api_password_hashes",
        "gauge",
        "argon2 hashes running, and password checks waiting for one",
        &[
            ("state=\"running\"", hashing as f64),
            ("state=\"waiting\"", hash_waiting as f64),
        ],
    );
    let (accounts, addresses) = api.throttle().tracked();
    gauge(
        "infinibay_api_login_failures_tracked",
        "gauge",
        "Accounts and client addresses with recent failed logins",
        &[
            ("key=\"account\"", accounts as f64),
            ("key=\"address\"", addresses as f64),
        ],
    );
    gauge(
        "infinibay_graphql_ws_connections",
        "gauge",
        "Open graphql-ws connections",
        &[("", api.sessions().len() as f64)],
    );
    let mut refused = vec![("reason=\"db_queue_full\"", work.refused as f64)];
    if let Some(tracker) = tracker {
        gauge(
            "infinibay_http_unauthenticated_connections",
            "gauge",
            "Connections on which no request has authenticated yet",
            &[("", tracker.unauthenticated() as f64)],
        );
        refused.push((
            "reason=\"unauthenticated_connections\"",
            tracker.refused() as f64,
        ));
    }
    gauge(
        "infinibay_api_refused_total",
        "counter",
        "Requests and connections refused by a limit",
        &refused,
    );
    out
}

async fn metrics(
    State(state): State<RestState>,
    listener: Option<axum::Extension<MetricsListener>>,
    tracker: Option<axum::Extension<crate::connections::ConnectionTracker>>,
    headers: HeaderMap,
) -> Response {
    // Every VM's figures: never on the main listener, which users and guests' networks reach.
    if listener.is_none() {
        return StatusCode::NOT_FOUND.into_response();
    }
    if let Some(expected) = state.api.limits().metrics_token.as_deref() {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(bearer);
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), expected.as_bytes())) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "metrics token required\n",
            )
                .into_response();
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render_metrics(&state.api, &state.realtime).await
            + &render_limits(&state.api, tracker.as_ref().map(|t| &t.0)),
    )
        .into_response()
}

/// Whether two secrets are equal, in a time that does not depend on where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Debug, Serialize, Deserialize)]
struct InstallClaims {
    #[serde(rename = "installVm")]
    install_vm: String,
    /// The user who asked for it: the token lives only as long as their access.
    #[serde(rename = "issuedBy")]
    issued_by: i64,
    /// Issued at, milliseconds (compared with the issuer's last password change).
    #[serde(rename = "iatMs")]
    iat_ms: i64,
    iat: i64,
    exp: i64,
}

/// A 24-hour token that only downloads the agent (never an API token: no `userId`). It stops
/// working when `issuer` is deleted, changes password, or may no longer see the VM.
pub fn issue_install_token(
    api: &Api,
    vm_id: &str,
    issuer: &infinibay_store::UserRecord,
) -> Result<String, ApiError> {
    let now = Utc::now();
    let claims = InstallClaims {
        install_vm: vm_id.to_owned(),
        issued_by: issuer.id,
        iat_ms: now.timestamp_millis(),
        iat: now.timestamp(),
        exp: now.timestamp() + 24 * 3600,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&api.settings().secret),
    )
    .map_err(ApiError::internal)
}

/// Whether an install token holds: signature and expiry, and its issuer still exists, has not
/// changed password since, and may still see the VM (tokens from before issuers were recorded
/// do not decode and are refused).
async fn install_token_valid(api: &Api, token: &str) -> bool {
    let validation = Validation::new(Algorithm::HS256);
    let Ok(decoded) = jsonwebtoken::decode::<InstallClaims>(
        token,
        &DecodingKey::from_secret(&api.settings().secret),
        &validation,
    ) else {
        return false;
    };
    let claims = decoded.claims;
    let Ok(Some(issuer)) = api.store().users().get_user(claims.issued_by).await else {
        return false;
    };
    if claims.iat_ms < issuer.password_changed_at.timestamp_millis() {
        return false;
    }
    matches!(
        api.store().get_vm(&claims.install_vm).await,
        Ok(Some(vm)) if crate::authz::can_see_vm(&issuer, &vm)
    )
}

#[derive(Debug, Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn download_allowed(
    api: &Api,
    headers: &HeaderMap,
    query: &TokenQuery,
) -> Result<(), ApiError> {
    if let Some(t) = query.token.as_deref()
        && install_token_valid(api, t).await
    {
        return Ok(());
    }
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| bearer(v).to_owned());
    api.authenticate(header.as_deref()).await.map(|_| ())
}

fn check_platform(platform: &str) -> Result<(), ApiError> {
    let ok = !platform.is_empty()
        && platform.len() <= 32
        && platform
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!("invalid platform `{platform}`")))
    }
}

async fn stream_file(
    path: std::path::PathBuf,
    content_type: &str,
    name: &str,
) -> Result<Response, ApiError> {
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::not_found(format!(
                "{name} is not installed on this host"
            )));
        }
        Err(e) => return Err(ApiError::internal(format!("cannot open {name}: {e}"))),
    };
    let len = file.metadata().await.map(|m| m.len()).ok();
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    if let Ok(v) = content_type.parse() {
        headers.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = format!("attachment; filename=\"{name}\"").parse() {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Some(len) = len
        && let Ok(v) = len.to_string().parse()
    {
        headers.insert(header::CONTENT_LENGTH, v);
    }
    Ok(response)
}

/// `/infiniservice/{platform}/binary` (`SCRIPT = false`: the agent, from
/// `<data>/infiniservice/binaries/<platform>/`) and `…/script` (`SCRIPT = true`: its installer,
/// from `<data>/infiniservice/scripts/`), for a user token or a per-VM install token.
async fn download<const SCRIPT: bool>(
    State(RestState { api, .. }): State<RestState>,
    Path(platform): Path<String>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    connection: Option<axum::Extension<crate::connections::Connection>>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
) -> Result<Response, ApiError> {
    let peer = peer.map(|axum::Extension(axum::extract::ConnectInfo(addr))| {
        crate::limits::canonical(addr.ip())
    });
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let turn = api.turn(api.principal(token, peer)).await?;
    download_allowed(&api, &headers, &query).await?;
    drop(turn);
    if let Some(axum::Extension(connection)) = connection {
        connection.authenticated();
    }
    check_platform(&platform)?;
    let windows = platform.starts_with("windows");
    let files = api.settings().data_dir.join("infiniservice");
    let (path, name, content_type) = match (SCRIPT, windows) {
        (false, _) => {
            let name = if windows {
                "infiniservice.exe"
            } else {
                "infiniservice"
            };
            let path = files.join("binaries").join(&platform).join(name);
            (path, name, "application/octet-stream")
        }
        (true, true) => (
            files.join("scripts/install-windows.ps1"),
            "install-windows.ps1",
            "text/plain; charset=utf-8",
        ),
        (true, false) => (
            files.join("scripts/install-linux.sh"),
            "install-linux.sh",
            "text/plain; charset=utf-8",
        ),
    };
    stream_file(path, content_type, name).await
}

/// `/infiniservice/windows/msi`: the Windows agent's MSI (`deploy/publish-agents.sh --windows`
/// puts it beside `infiniservice.exe`), for the same tokens as the binary.
async fn download_msi(
    State(RestState { api, .. }): State<RestState>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    download_allowed(&api, &headers, &query).await?;
    let path = api
        .settings()
        .data_dir
        .join("infiniservice/binaries/windows/infiniservice.msi");
    stream_file(path, "application/x-msi", "infiniservice.msi").await
}

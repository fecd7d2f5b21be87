//! The HTTP side at this stage: `GET /healthz`. The API (REST, GraphQL, Socket.IO) merges its
//! routes into [`router`]'s result.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::json;

use crate::host::Host;

/// Routes served by the host itself.
pub fn router(host: Host) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .with_state(host)
}

/// 200 with VM counts when the database answers, 503 otherwise.
async fn healthz(State(host): State<Host>) -> (StatusCode, Json<serde_json::Value>) {
    let stats = host.stats();
    let store = host.store();
    match store.ping().await {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({
                "status": "ok",
                "store": store.backend(),
                "vms": stats.vms,
                "online": stats.online,
                "queue": stats.queue,
            })),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "unavailable",
                "store": store.backend(),
                "error": e.to_string(),
            })),
        ),
    }
}

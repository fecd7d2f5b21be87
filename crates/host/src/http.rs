//! The process's own route, `GET /healthz`, answered from the running core's memory. The API
//! (REST, GraphQL, Socket.IO) merges its routes beside it.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::json;

use infinibay_core::Core;

/// Routes served by the process itself.
pub fn router(host: Core) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .with_state(host)
}

/// 200 with VM counts when the store's last background probe answered, 503 otherwise. Answers
/// from memory only: it never waits for the database or the writer.
async fn healthz(State(host): State<Core>) -> (StatusCode, Json<serde_json::Value>) {
    let stats = host.stats();
    let probe = host.store_health();
    let code = if probe.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(json!({
            "status": if probe.ok { "ok" } else { "unavailable" },
            "store": host.store().backend(),
            "store_probe": probe,
            "error": probe.error,
            "vms": stats.vms,
            "online": stats.online,
            "queue": stats.queue,
            // The reader pool: `busy` = `max` means the next query waits (see /metrics for
            // the API's own queue of requests waiting for their user's database turn).
            "db_pool": host.store().pool_stats(),
        })),
    )
}

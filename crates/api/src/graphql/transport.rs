//! GraphQL over HTTP: queries and mutations by POST, graphql-ws on a WebSocket upgrade of
//! `/graphql` (and `/graphql/ws`), and GraphiQL on a plain GET when `api.graphiql` is on.
//!
//! A POST's body is read under `api.max_body_bytes` and `api.body_timeout_secs`
//! ([`crate::limits::read_body`]); its caller's database turn is taken before the token is
//! even checked against the user table ([`crate::work_limiter`]). WebSocket messages are
//! capped at `api.max_message_bytes`; the connection itself is [`super::ws`]'s.

use std::sync::Arc;

use async_graphql::http::WebSocketProtocols;
use async_graphql_axum::GraphQLResponse;
use axum::Router;
use axum::extract::{FromRequestParts, State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use super::context::Caller;
use super::guards::{Peer, TurnHeld, server_error};
use super::schema::{ApiSchema, schema};
use crate::auth::bearer;
use crate::connections::{Connection, mark_authenticated};
use crate::error::ApiError;
use crate::limits::{peer_of, read_body};
use crate::realtime::Realtime;
use crate::state::Api;

/// `/graphql` (POST; graphql-ws on a WebSocket upgrade; GraphiQL on a plain GET when enabled)
/// and `/graphql/ws` (graphql-ws only).
pub fn routes(api: Api, realtime: Arc<Realtime>) -> Router {
    let schema = schema(api.clone(), realtime);
    Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/graphql/ws", get(graphql_ws))
        .with_state((api, schema))
}

/// The dashboard's Content-Security-Policy (`crates/dashboard`, `CSP`), on GraphiQL's page
/// too: scripts only from this origin, none inline. (The hostile-user tests compare the two
/// headers.)
const GRAPHIQL_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                            img-src 'self' data:; connect-src 'self'; object-src 'none'; \
                            base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// GraphiQL, when `api.graphiql` is on; otherwise `404` (and introspection is off too, see
/// [`super::schema`]). The page (the web build's `graphiql.html`, [`ApiSettings`]) loads
/// GraphiQL from this server's `/assets/graphiql/` (built into the dashboard by
/// `scripts/build-web`), never from a CDN, under the dashboard's CSP.
///
/// [`ApiSettings`]: crate::ApiSettings
fn graphiql(api: &Api) -> Response {
    if !api.limits().graphiql {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "GraphiQL is off (api.graphiql = false); the schema is in docs/api.md\n",
        )
            .into_response();
    }
    let Some(page) = api.settings().graphiql_page else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "GraphiQL is on (api.graphiql = true) but this binary was built without the web \
             build: run scripts/build-web, then cargo build -p infinibay\n",
        )
            .into_response();
    };
    let mut response = Html(page).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(GRAPHIQL_CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// GraphQL clients (Apollo, urql, graphql-ws) expect subscriptions on the same URL as queries:
/// a WebSocket upgrade on `GET /graphql` is graphql-ws, any other GET is GraphiQL.
async fn graphql_get(state: State<(Api, ApiSchema)>, request: axum::extract::Request) -> Response {
    let wants_websocket = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !wants_websocket {
        return graphiql(&state.0.0);
    }
    let (mut parts, _body) = request.into_parts();
    match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade_ws(state, parts, upgrade).await,
        Err(rejection) => rejection.into_response(),
    }
}

async fn graphql_ws(state: State<(Api, ApiSchema)>, request: axum::extract::Request) -> Response {
    let (mut parts, _body) = request.into_parts();
    match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade_ws(state, parts, upgrade).await,
        Err(rejection) => rejection.into_response(),
    }
}

pub(super) fn header_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| bearer(v).to_owned())
        .filter(|t| !t.is_empty())
}

/// A JSON error answer shaped like a GraphQL response (what GraphQL clients can show).
fn refusal(status: StatusCode, e: ApiError) -> Response {
    let response = async_graphql::Response::from_errors(vec![server_error(e)]);
    (status, axum::Json(response)).into_response()
}

async fn graphql_post(
    State((api, schema)): State<(Api, ApiSchema)>,
    request: axum::extract::Request,
) -> Response {
    let peer = peer_of(&request);
    let (parts, body) = request.into_parts();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    // JSON only: async-graphql's multipart uploads would spool files to disk for a schema
    // that takes none.
    if !content_type
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("application/")
    {
        return refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::invalid("send GraphQL requests as application/json"),
        );
    }
    let limits = api.limits();
    let bytes = match read_body(body, limits.max_body_bytes, limits.body_timeout()).await {
        Ok(bytes) => bytes,
        Err(e) => return e.into_response(),
    };
    let request: async_graphql::Request = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return refusal(
                StatusCode::BAD_REQUEST,
                ApiError::invalid(format!(
                    "not a GraphQL request (one JSON object with `query`): {e}"
                )),
            );
        }
    };
    drop(bytes);
    let token = header_token(&parts.headers);
    // The caller's turn before the user table is asked whether the token still holds.
    let turn = match api.turn(api.principal(token.as_deref(), peer)).await {
        Ok(turn) => turn,
        Err(e) => return refusal(StatusCode::TOO_MANY_REQUESTS, e),
    };
    let caller = Caller(api.authenticate(token.as_deref()).await);
    if caller.0.is_ok() {
        mark_authenticated(&parts.extensions);
    }
    let response = schema
        .execute(request.data(caller).data(Peer(peer)).data(TurnHeld))
        .await;
    drop(turn);
    GraphQLResponse::from(response).into_response()
}

async fn upgrade_ws(
    State((api, schema)): State<(Api, ApiSchema)>,
    parts: axum::http::request::Parts,
    upgrade: WebSocketUpgrade,
) -> Response {
    // What async-graphql-axum's `GraphQLProtocol` extracts (its field is private).
    let protocol = parts
        .headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|list| {
            list.split(',')
                .find_map(|p| p.trim().parse::<WebSocketProtocols>().ok())
        });
    let Some(protocol) = protocol else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let opening = super::ws::Opening {
        header_token: header_token(&parts.headers),
        peer: crate::limits::peer_in(&parts.extensions),
        connection: parts.extensions.get::<Connection>().cloned(),
        protocol,
    };
    let limit = api.limits().max_message_bytes;
    upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        .protocols(async_graphql::http::ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| super::ws::serve(api, schema, opening, socket))
}

//! GraphQL over HTTP: GraphiQL on a plain GET, queries and mutations by POST, and graphql-ws
//! on a WebSocket upgrade of `/graphql` (and `/graphql/ws`), whose connections close when their
//! user's access is revoked.

use std::sync::Arc;

use async_graphql::Data;
use async_graphql::http::{GraphiQLSource, WebSocketProtocols};
use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::Router;
use axum::extract::{FromRequestParts, State, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use super::context::Caller;
use super::schema::{ApiSchema, schema};
use crate::auth::bearer;
use crate::realtime::Realtime;
use crate::sessions::{Bearer, REVOKED_CLOSE_CODE, REVOKED_CLOSE_REASON};
use crate::state::Api;

/// `/graphql` (GraphiQL on a plain GET, graphql-ws on a WebSocket upgrade, POST) and
/// `/graphql/ws` (graphql-ws only).
pub fn routes(api: Api, realtime: Arc<Realtime>) -> Router {
    let schema = schema(api.clone(), realtime);
    Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/graphql/ws", get(graphql_ws))
        .with_state((api, schema))
}

async fn graphiql() -> impl IntoResponse {
    Html(
        GraphiQLSource::build()
            .endpoint("/graphql")
            .subscription_endpoint("/graphql")
            .finish(),
    )
}

/// GraphQL clients (Apollo, urql, graphql-ws) expect subscriptions on the same URL as queries:
/// a WebSocket upgrade on `GET /graphql` is graphql-ws, any other GET is GraphiQL.
async fn graphql_get(state: State<(Api, ApiSchema)>, request: axum::extract::Request) -> Response {
    let wants_websocket = request
        .headers()
        .get(axum::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !wants_websocket {
        return graphiql().await.into_response();
    }
    let (mut parts, _body) = request.into_parts();
    let headers = parts.headers.clone();
    match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => graphql_ws(state, headers, upgrade).await,
        Err(rejection) => rejection.into_response(),
    }
}

fn header_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| bearer(v).to_owned())
        .filter(|t| !t.is_empty())
}

async fn caller_for(api: &Api, token: Option<String>) -> Caller {
    Caller(api.authenticate(token.as_deref()).await)
}

async fn graphql_post(
    State((api, schema)): State<(Api, ApiSchema)>,
    headers: HeaderMap,
    request: GraphQLRequest,
) -> GraphQLResponse {
    let caller = caller_for(&api, header_token(&headers)).await;
    schema
        .execute(request.into_inner().data(caller))
        .await
        .into()
}

async fn graphql_ws(
    State((api, schema)): State<(Api, ApiSchema)>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    // What async-graphql-axum's `GraphQLProtocol` extracts (its field is private).
    let protocol = headers
        .get(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|list| {
            list.split(',')
                .find_map(|p| p.trim().parse::<WebSocketProtocols>().ok())
        });
    let Some(protocol) = protocol else {
        return axum::http::StatusCode::BAD_REQUEST.into_response();
    };
    let header = header_token(&headers);
    upgrade
        .protocols(async_graphql::http::ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| serve_ws(api, schema, protocol, header, socket))
}

/// Unregisters a graphql-ws connection however its task ends.
struct OpenSession {
    api: Api,
    id: u64,
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.api.sessions().close(self.id);
    }
}

/// async-graphql-axum's `GraphQLWebSocket::serve`, plus a way out: when the connection's
/// user is deleted or changes password, every subscription on it ends and the socket is
/// closed with [`REVOKED_CLOSE_CODE`].
async fn serve_ws(
    api: Api,
    schema: ApiSchema,
    protocol: WebSocketProtocols,
    header: Option<String>,
    socket: axum::extract::ws::WebSocket,
) {
    use axum::extract::ws::{CloseFrame, Message};
    use futures_util::{SinkExt, StreamExt};

    let (id, revoked) = api.sessions().open();
    let _open = OpenSession {
        api: api.clone(),
        id,
    };
    let (mut sink, stream) = socket.split();
    let input = stream
        .take_while(|m| std::future::ready(m.is_ok()))
        .filter_map(|m| {
            std::future::ready(match m {
                Ok(m @ (Message::Text(_) | Message::Binary(_))) => Some(m.into_data()),
                _ => None,
            })
        });
    let for_init = api.clone();
    let connection = async_graphql::http::WebSocket::new(schema, input, protocol)
        .on_connection_init(move |payload| async move {
            let token = payload_token(&payload).or(header);
            let caller = caller_for(&for_init, token.clone()).await;
            if let (Ok(user), Some(token)) = (&caller.0, token)
                && let Ok(claims) = for_init.auth().decode(&token)
            {
                for_init.sessions().authenticated(
                    id,
                    Bearer {
                        user_id: user.id,
                        issued_ms: claims.iat_ms.unwrap_or(claims.iat.saturating_mul(1000)),
                        expires: claims.exp,
                    },
                );
            }
            let mut data = Data::default();
            data.insert(caller);
            Ok(data)
        });
    futures_util::pin_mut!(connection);
    loop {
        let outgoing = tokio::select! {
            next = connection.next() => match next {
                Some(async_graphql::http::WsMessage::Text(text)) => Message::Text(text.into()),
                Some(async_graphql::http::WsMessage::Close(code, reason)) => {
                    Message::Close(Some(CloseFrame { code, reason: reason.into() }))
                }
                None => break,
            },
            () = revoked.cancelled() => {
                let close = Message::Close(Some(CloseFrame {
                    code: REVOKED_CLOSE_CODE,
                    reason: REVOKED_CLOSE_REASON.into(),
                }));
                let _ = sink.send(close).await;
                break;
            }
        };
        if sink.send(outgoing).await.is_err() {
            break;
        }
    }
}

/// `{"Authorization": "Bearer …"}`, `{"authorization": …}` or `{"token": "…"}`.
fn payload_token(payload: &serde_json::Value) -> Option<String> {
    ["Authorization", "authorization", "token"]
        .iter()
        .find_map(|k| payload.get(*k).and_then(|v| v.as_str()))
        .map(|v| bearer(v).to_owned())
        .filter(|t| !t.is_empty())
}

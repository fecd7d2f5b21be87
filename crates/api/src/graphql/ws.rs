//! One graphql-ws connection: async-graphql speaks the protocol, and this loop stands between
//! it and the socket to bound what one client can make it do.
//!
//! - **Handshake**: `connection_init` must bring a valid token within
//!   `api.handshake_timeout_secs`, else the connection is closed (`4408` without an init,
//!   `4401` with an init that did not authenticate). The token is checked here, in the
//!   user's database turn, and handed to async-graphql's init.
//! - **Connections per user**: beyond `api.ws_connections_per_user` the init is answered by
//!   closing with `4429`.
//! - **Operations per connection**: at most `api.ws_operations_per_connection` running;
//!   one more is answered with an `error` message for its id (code `RATE_LIMITED`), a
//!   duplicate id closes with `4409` (graphql-ws' rule).
//! - **Messages per second**: `api.ws_messages_per_sec` (twice that at once); a faster client
//!   is read more slowly (its messages wait in its socket, not in the host).
//! - **Revocation**: deleting the user or changing their password closes with `4403`
//!   ([`crate::sessions`]).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_graphql::Data;
use async_graphql::http::{WebSocketProtocols, WsMessage};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::context::Caller;
use super::guards::Peer;
use super::schema::ApiSchema;
use crate::auth::{AuthError, bearer};
use crate::connections::Connection;
use crate::error::ApiError;
use crate::sessions::{Bearer, REVOKED_CLOSE_CODE, REVOKED_CLOSE_REASON};
use crate::state::Api;

/// Close codes of graphql-ws (the protocol's own numbers where it has one).
pub mod close {
    /// No valid `connection_init` in time (graphql-ws: "Connection initialisation timeout").
    pub const INIT_TIMEOUT: u16 = 4408;
    /// `connection_init` did not authenticate and the handshake time ran out.
    pub const UNAUTHORIZED: u16 = 4401;
    /// An operation id already running (graphql-ws: "Subscriber for <id> already exists").
    pub const DUPLICATE_ID: u16 = 4409;
    /// Too many connections of this user, or their requests already fill their queue.
    pub const TOO_MANY: u16 = 4429;
}

/// What the upgrade request said about the connection.
pub(super) struct Opening {
    pub header_token: Option<String>,
    pub peer: Option<IpAddr>,
    pub connection: Option<Connection>,
    pub protocol: WebSocketProtocols,
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

/// What this loop reads of a client message.
#[derive(Deserialize)]
struct ClientHead {
    #[serde(rename = "type")]
    kind: String,
    id: Option<String>,
    payload: Option<Value>,
}

/// Messages a connection may send per second, and at once.
struct Pace {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Pace {
    fn new(per_sec: f64) -> Self {
        let burst = (per_sec * 2.0).max(1.0);
        Self {
            per_sec,
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        self.tokens = (self.tokens + (now - self.at).as_secs_f64() * self.per_sec).min(self.burst);
        self.at = now;
    }

    /// When the next message may be read (now when there is a token).
    fn next_at(&mut self) -> Instant {
        self.refill();
        if self.tokens >= 1.0 {
            self.at
        } else {
            self.at + Duration::from_secs_f64((1.0 - self.tokens) / self.per_sec)
        }
    }
}

enum Step {
    Forward(Vec<u8>),
    Reply(String),
    Close(u16, String),
}

struct WsState {
    api: Api,
    opening: Opening,
    session: u64,
    /// Set by this loop at `connection_init`, taken by async-graphql's init callback.
    caller: Arc<Mutex<Option<Caller>>>,
    initialised: bool,
    authenticated: bool,
    running: HashSet<String>,
}

/// Serve one graphql-ws connection until either side ends it.
pub(super) async fn serve(api: Api, schema: ApiSchema, opening: Opening, socket: WebSocket) {
    let (session, revoked) = api.sessions().open();
    let _open = OpenSession {
        api: api.clone(),
        id: session,
    };
    let limits = api.limits().clone();
    let (mut sink, mut stream) = socket.split();
    // async-graphql reads what this loop forwards; a small queue, read only while it has room.
    let (forward, input) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    let caller = Arc::new(Mutex::new(None::<Caller>));
    let for_init = caller.clone();
    let peer = opening.peer;
    let protocol = opening.protocol;
    let graphql = async_graphql::http::WebSocket::new(schema, receiver_stream(input), protocol)
        .on_connection_init(move |_payload| async move {
            let caller = for_init
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .unwrap_or(Caller(Err(AuthError::Missing.into())));
            let mut data = Data::default();
            data.insert(caller);
            data.insert(Peer(peer));
            Ok(data)
        });
    futures_util::pin_mut!(graphql);
    let mut state = WsState {
        api,
        opening,
        session,
        caller,
        initialised: false,
        authenticated: false,
        running: HashSet::new(),
    };
    let mut pace = Pace::new(limits.ws_messages_per_sec);
    let handshake_deadline = Instant::now() + limits.handshake_timeout();
    loop {
        let may_read = forward.capacity() > 0;
        let read_at = pace.next_at();
        let outgoing = tokio::select! {
            incoming = stream.next(), if may_read && read_at <= Instant::now() => {
                let bytes = match incoming {
                    Some(Ok(Message::Text(t))) => Vec::from(t.as_bytes()),
                    Some(Ok(Message::Binary(b))) => b.to_vec(),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                pace.tokens -= 1.0;
                match state.incoming(&bytes, limits.ws_connections_per_user, limits.ws_operations_per_connection).await {
                    Step::Forward(b) => {
                        // Room was checked before reading; only this loop sends.
                        if forward.try_send(b).is_err() {
                            break;
                        }
                        continue;
                    }
                    Step::Reply(text) => Message::Text(text.into()),
                    Step::Close(code, reason) => close_frame(code, reason),
                }
            }
            () = tokio::time::sleep_until(read_at), if may_read && read_at > Instant::now() => continue,
            next = graphql.next() => match next {
                Some(WsMessage::Text(text)) => {
                    state.outgoing(&text);
                    Message::Text(text.into())
                }
                Some(WsMessage::Close(code, reason)) => close_frame(code, reason),
                None => break,
            },
            () = revoked.cancelled() => close_frame(REVOKED_CLOSE_CODE, REVOKED_CLOSE_REASON.to_owned()),
            () = tokio::time::sleep_until(handshake_deadline), if !state.authenticated => {
                if state.initialised {
                    close_frame(close::UNAUTHORIZED, "Unauthorized".to_owned())
                } else {
                    close_frame(close::INIT_TIMEOUT, "Connection initialisation timeout".to_owned())
                }
            }
        };
        let closing = matches!(outgoing, Message::Close(_));
        if sink.send(outgoing).await.is_err() || closing {
            break;
        }
    }
}

fn close_frame(code: u16, reason: String) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// A receiver as the stream async-graphql reads.
fn receiver_stream(
    input: tokio::sync::mpsc::Receiver<Vec<u8>>,
) -> impl futures_util::Stream<Item = Vec<u8>> + Send + Unpin + 'static {
    Box::pin(futures_util::stream::unfold(
        input,
        |mut input| async move { input.recv().await.map(|message| (message, input)) },
    ))
}

impl WsState {
    /// What to do with one client message.
    async fn incoming(&mut self, bytes: &[u8], per_user: usize, per_connection: usize) -> Step {
        let Ok(head) = serde_json::from_slice::<ClientHead>(bytes) else {
            // async-graphql closes the connection on what it cannot read.
            return Step::Forward(bytes.to_vec());
        };
        match head.kind.as_str() {
            "connection_init" if !self.initialised => {
                self.initialised = true;
                match self.authenticate(head.payload.as_ref(), per_user).await {
                    Ok(()) => Step::Forward(bytes.to_vec()),
                    Err(step) => step,
                }
            }
            "subscribe" | "start" => {
                let Some(id) = head.id else {
                    return Step::Forward(bytes.to_vec());
                };
                if self.running.contains(&id) {
                    return Step::Close(
                        close::DUPLICATE_ID,
                        format!("Subscriber for {} already exists", printable(&id)),
                    );
                }
                if self.running.len() >= per_connection {
                    return Step::Reply(self.operation_error(
                        &id,
                        ApiError::rate_limited(format!(
                            "at most {per_connection} operations at once on one connection"
                        )),
                    ));
                }
                self.running.insert(id);
                Step::Forward(bytes.to_vec())
            }
            "complete" | "stop" => {
                if let Some(id) = &head.id {
                    self.running.remove(id);
                }
                Step::Forward(bytes.to_vec())
            }
            _ => Step::Forward(bytes.to_vec()),
        }
    }

    /// Check `connection_init`'s token in the user's turn; register the connection as theirs.
    async fn authenticate(&mut self, payload: Option<&Value>, per_user: usize) -> Result<(), Step> {
        let token = payload
            .and_then(payload_token)
            .or_else(|| self.opening.header_token.clone());
        let principal = self.api.principal(token.as_deref(), self.opening.peer);
        let turn = self
            .api
            .turn(principal)
            .await
            .map_err(|e| Step::Close(close::TOO_MANY, e.message))?;
        let caller = Caller(self.api.authenticate(token.as_deref()).await);
        drop(turn);
        if let (Ok(user), Some(token)) = (&caller.0, &token)
            && let Ok(claims) = self.api.auth().decode(token)
        {
            if self.api.sessions().of_user(user.id) >= per_user {
                return Err(Step::Close(
                    close::TOO_MANY,
                    format!("at most {per_user} graphql-ws connections per user"),
                ));
            }
            self.api.sessions().authenticated(
                self.session,
                Bearer {
                    user_id: user.id,
                    issued_ms: claims.iat_ms.unwrap_or(claims.iat.saturating_mul(1000)),
                    expires: claims.exp,
                },
            );
            if let Some(connection) = &self.opening.connection {
                connection.authenticated();
            }
            self.authenticated = true;
        }
        *self.caller.lock().unwrap_or_else(|p| p.into_inner()) = Some(caller);
        Ok(())
    }

    /// An operation the server ended (`complete`) no longer counts.
    fn outgoing(&mut self, text: &str) {
        if !text.starts_with("{\"type\":\"complete\"") {
            return;
        }
        #[derive(Deserialize)]
        struct Complete {
            id: String,
        }
        if let Ok(done) = serde_json::from_str::<Complete>(text) {
            self.running.remove(&done.id);
        }
    }

    /// An `error` message for operation `id`, in the connection's protocol.
    fn operation_error(&self, id: &str, e: ApiError) -> String {
        let error = json!({"message": e.message, "extensions": {"code": e.code}});
        let payload = match self.opening.protocol {
            WebSocketProtocols::GraphQLWS => json!([error]),
            WebSocketProtocols::SubscriptionsTransportWS => error,
        };
        json!({"type": "error", "id": id, "payload": payload}).to_string()
    }
}

/// An id as a close reason shows it (a close reason has at most 123 bytes).
fn printable(id: &str) -> String {
    id.chars().take(40).flat_map(char::escape_debug).collect()
}

/// `{"Authorization": "Bearer …"}`, `{"authorization": …}` or `{"token": "…"}`.
fn payload_token(payload: &Value) -> Option<String> {
    ["Authorization", "authorization", "token"]
        .iter()
        .find_map(|k| payload.get(*k).and_then(|v| v.as_str()))
        .map(|v| bearer(v).to_owned())
        .filter(|t| !t.is_empty())
}

//! A minimal Engine.IO v4 / Socket.IO v5 client over WebSocket for the host's tests: connect
//! with a token, events with acknowledgements, pings. (The official client runs in
//! `tests/node/`; this one can be driven packet by packet.)
#![allow(dead_code)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A minimal Engine.IO v4 / Socket.IO v5 client over WebSocket, enough for connect, events
/// with acknowledgements and pings.
pub struct SioClient {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_ack: u32,
}

pub enum SioConnect {
    Connected(Box<SioClient>, Value),
    Refused(String),
}

impl SioClient {
    pub async fn connect(addr: std::net::SocketAddr, token: Option<&str>) -> SioConnect {
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        let (mut ws, _) =
            tokio_tungstenite::connect_async(url.into_client_request().expect("request"))
                .await
                .expect("socket.io websocket");
        let open = Self::read(&mut ws).await;
        assert!(open.starts_with('0'), "engine.io open packet, got {open}");
        let auth = match token {
            Some(t) => format!("40{}", json!({"token": t})),
            None => "40".to_owned(),
        };
        ws.send(Message::text(auth)).await.expect("connect packet");
        let mut client = SioClient { ws, next_ack: 1 };
        loop {
            let packet = client.recv().await;
            // `recv` strips the engine.io `4`: `4{…}` is CONNECT_ERROR, `2[…]` an EVENT.
            if let Some(rest) = packet.strip_prefix('4') {
                let v: Value = serde_json::from_str(rest).unwrap_or(Value::Null);
                return SioConnect::Refused(
                    v.get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                );
            }
            if let Some(rest) = packet.strip_prefix('2') {
                let v: Value = serde_json::from_str(rest).unwrap_or(Value::Null);
                if v.get(0) == Some(&json!("connected")) {
                    return SioConnect::Connected(
                        Box::new(client),
                        v.get(1).cloned().unwrap_or(Value::Null),
                    );
                }
            }
        }
    }

    async fn read(
        ws: &mut tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ) -> String {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("socket.io answer within 10 s")
                .expect("socket.io stream open")
                .expect("socket.io frame");
            if let Ok(t) = msg.to_text()
                && !t.is_empty()
            {
                return t.to_owned();
            }
        }
    }

    /// The next Socket.IO packet, answering engine.io pings.
    pub async fn recv(&mut self) -> String {
        loop {
            let text = Self::read(&mut self.ws).await;
            if text == "2" {
                self.ws.send(Message::text("3")).await.expect("pong");
                continue;
            }
            if let Some(packet) = text.strip_prefix('4') {
                return packet.to_owned();
            }
        }
    }

    /// Emit `event` with `arg` and wait for its acknowledgement.
    pub async fn emit_ack(&mut self, event: &str, arg: Value) -> Value {
        let id = self.next_ack;
        self.next_ack += 1;
        self.ws
            .send(Message::text(format!("42{id}{}", json!([event, arg]))))
            .await
            .expect("emit");
        let prefix = format!("3{id}");
        loop {
            let packet = self.recv().await;
            if let Some(rest) = packet.strip_prefix(&prefix) {
                let v: Value = serde_json::from_str(rest).expect("ack JSON");
                return v.get(0).cloned().unwrap_or(Value::Null);
            }
        }
    }
}

impl SioClient {
    /// Emit `event` with `arg` asking for an acknowledgement, without waiting for it; the ack
    /// id, for [`SioClient::next_ack`].
    pub async fn emit_only(&mut self, event: &str, arg: Value) -> Result<u32, String> {
        let id = self.next_ack;
        self.next_ack += 1;
        self.ws
            .send(Message::text(format!("42{id}{}", json!([event, arg]))))
            .await
            .map_err(|e| e.to_string())?;
        Ok(id)
    }

    /// The next acknowledgement `(id, first argument)` within `within`, answering pings; `None`
    /// when none came or the connection ended.
    pub async fn next_ack(&mut self, within: Duration) -> Option<(u32, Value)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??
                .ok()?;
            let Ok(text) = msg.to_text() else { continue };
            if text == "2" {
                self.ws.send(Message::text("3")).await.ok()?;
                continue;
            }
            let Some(rest) = text.strip_prefix("43") else {
                continue;
            };
            let split = rest.find('[')?;
            let id = rest[..split].parse().ok()?;
            let v: Value = serde_json::from_str(&rest[split..]).ok()?;
            return Some((id, v.get(0).cloned().unwrap_or(Value::Null)));
        }
    }
}

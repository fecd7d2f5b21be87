//! Request/reply with answers of any size. A NATS message is at most the server's
//! `max_payload` (1 MiB by default), and a command's answer may hold 1 MiB of stdout and as much
//! of stderr; so the answer comes back in parts, each marked with its index and the count, on
//! the requester's own inbox. A request nobody subscribes to gets the server's "no responders"
//! status at once, which [`request`] reports as [`RpcError::NoResponders`].

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use crate::link::NatsLink;

const PART: &str = "Ib-Part";
const PARTS: &str = "Ib-Parts";
/// Room left in a message for the headers and the protocol line.
const HEADER_ROOM: usize = 1_024;

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// Nobody subscribes to the subject: no node serves it.
    #[error("no node answers for it")]
    NoResponders,
    /// Subscribed, but no (complete) answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// This process is not connected to NATS.
    #[error("NATS is unavailable from this process")]
    LinkDown,
    /// NATS refused the request.
    #[error("NATS: {0}")]
    Nats(String),
}

/// Send `payload` to `subject` and wait up to `timeout` for the whole answer.
pub async fn request(
    link: &NatsLink,
    subject: String,
    payload: Bytes,
    timeout: Duration,
) -> Result<Bytes, RpcError> {
    if !link.is_up() {
        return Err(RpcError::LinkDown);
    }
    let client = link.client();
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| RpcError::Nats(e.to_string()))?;
    client
        .publish_with_reply(subject, inbox, payload)
        .await
        .map_err(|e| RpcError::Nats(e.to_string()))?;
    let collect = async {
        let mut parts: Vec<Option<Bytes>> = Vec::new();
        let mut have = 0usize;
        while let Some(message) = replies.next().await {
            if message.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                return Err(RpcError::NoResponders);
            }
            let header = |name: &str| {
                message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .and_then(|v| v.as_str().parse::<usize>().ok())
            };
            let (index, count) = match (header(PART), header(PARTS)) {
                (Some(i), Some(n)) if i < n && n > 0 => (i, n),
                _ => (0, 1),
            };
            if parts.is_empty() {
                parts = vec![None; count];
            }
            if count != parts.len() {
                return Err(RpcError::Nats(
                    "answer parts disagree on their count".into(),
                ));
            }
            if parts[index].is_none() {
                parts[index] = Some(message.payload);
                have += 1;
            }
            if have == parts.len() {
                let mut whole =
                    BytesMut::with_capacity(parts.iter().flatten().map(Bytes::len).sum());
                for part in parts.into_iter().flatten() {
                    whole.extend_from_slice(&part);
                }
                return Ok(whole.freeze());
            }
        }
        Err(RpcError::LinkDown)
    };
    match tokio::time::timeout(timeout, collect).await {
        Ok(result) => result,
        Err(_) if !link.is_up() => Err(RpcError::LinkDown),
        Err(_) => Err(RpcError::Timeout(timeout)),
    }
}

/// Answer a request on `reply_to` with `payload`, in as many parts as the server's message
/// size asks.
pub async fn respond(
    client: &async_nats::Client,
    reply_to: async_nats::Subject,
    payload: Bytes,
) -> Result<(), async_nats::PublishError> {
    let room = client
        .server_info()
        .max_payload
        .saturating_sub(HEADER_ROOM)
        .max(HEADER_ROOM);
    let count = payload.len().div_ceil(room).max(1);
    for index in 0..count {
        let part = payload
            .slice((index * room).min(payload.len())..((index + 1) * room).min(payload.len()));
        let mut headers = HeaderMap::new();
        headers.insert(PART, index.to_string());
        headers.insert(PARTS, count.to_string());
        client
            .publish_with_headers(reply_to.clone(), headers, part)
            .await?;
    }
    Ok(())
}

//! The byte pump between an open WebSocket and a VNC server.
//!
//! Two loops run concurrently in the session's task, each owning one direction:
//!
//! - **viewer → VNC** reads one WebSocket message and writes it whole to the VNC socket before
//!   reading the next: a VNC server that stops reading stops the viewer (TCP backpressure),
//!   and at most one message (≤ `max_viewer_message`) is held.
//! - **VNC → viewer** reads at most `chunk` bytes and sends them as one binary message, waiting
//!   until the WebSocket accepted it before reading more: a slow viewer slows the VNC server,
//!   and at most one chunk is held. It also sends the keepalive pings and watches for the end
//!   requested from outside.
//!
//! Whichever loop ends first ends the session; then the caller sends the close frame on the
//! reunited socket and awaits the viewer's close reply (bounded), so that the browser sees our
//! code rather than a connection reset.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::close::CloseCode;
use crate::registry::Stop;

/// The relay's bounds and clocks (from [`crate::ConsoleConfig`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) chunk: usize,
    pub(crate) keepalive_interval: Duration,
    pub(crate) keepalive_timeout: Duration,
}

/// Bytes relayed so far, readable after the session ended.
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    pub(crate) to_viewer: AtomicU64,
    pub(crate) from_viewer: AtomicU64,
}

/// Relay until one side ends or `stop` is requested; returns why it ended, with the socket
/// to send the close frame on ([`close_with`]) unless the viewer closed or vanished.
pub(crate) async fn relay<R, W>(
    socket: WebSocket,
    mut from_vnc: R,
    mut to_vnc: W,
    stop: &Stop,
    limits: Limits,
    traffic: &Traffic,
) -> Ended
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = socket.split();
    let started = Instant::now();
    // Milliseconds after `started` when the viewer was last heard (any frame, pongs included).
    let heard_at = AtomicU64::new(0);
    // While the VNC server is not taking the viewer's bytes we do not read the viewer either,
    // so its pongs go unseen: silence then is not the viewer's fault.
    let writing_to_vnc = AtomicBool::new(false);
    let millis = |since: Instant| since.duration_since(started).as_millis() as u64;

    let viewer_to_vnc = async {
        loop {
            let message = match stream.next().await {
                Some(Ok(message)) => message,
                Some(Err(e)) => {
                    tracing::debug!(target: crate::LOG_TARGET, "viewer connection failed: {e}");
                    return CloseCode::ViewerGone;
                }
                None => return CloseCode::ViewerGone,
            };
            heard_at.store(millis(Instant::now()), Ordering::Relaxed);
            match message {
                Message::Binary(data) => {
                    writing_to_vnc.store(true, Ordering::Relaxed);
                    let written = to_vnc.write_all(&data).await;
                    writing_to_vnc.store(false, Ordering::Relaxed);
                    if let Err(e) = written {
                        tracing::debug!(target: crate::LOG_TARGET, "writing to the VNC server: {e}");
                        return CloseCode::ConsoleClosed;
                    }
                    traffic
                        .from_viewer
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                Message::Text(_) => return CloseCode::UnsupportedData,
                Message::Close(_) => return CloseCode::ViewerClosed,
                // tungstenite answers pings itself; a pong only proves the viewer is alive.
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
    };

    let vnc_to_viewer = async {
        let mut buf = BytesMut::new();
        let mut keepalive = tokio::time::interval_at(
            started + limits.keepalive_interval,
            limits.keepalive_interval,
        );
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Reclaims the previous chunk's allocation: the WebSocket copied it into its frame.
            buf.reserve(limits.chunk);
            let message = tokio::select! {
                biased;
                why = stop.requested() => return why,
                read = from_vnc.read_buf(&mut buf) => match read {
                    Ok(0) => return CloseCode::ConsoleClosed,
                    Ok(_) => Message::Binary(buf.split().freeze()),
                    Err(e) => {
                        tracing::debug!(target: crate::LOG_TARGET, "reading from the VNC server: {e}");
                        return CloseCode::ConsoleClosed;
                    }
                },
                now = keepalive.tick() => {
                    let silent = Duration::from_millis(
                        millis(now).saturating_sub(heard_at.load(Ordering::Relaxed)),
                    );
                    if silent > limits.keepalive_timeout && !writing_to_vnc.load(Ordering::Relaxed) {
                        return CloseCode::KeepaliveTimeout;
                    }
                    Message::Ping(Bytes::new())
                }
            };
            let len = match &message {
                Message::Binary(data) => data.len() as u64,
                _ => 0,
            };
            tokio::select! {
                biased;
                why = stop.requested() => return why,
                sent = sink.send(message) => if let Err(e) = sent {
                    tracing::debug!(target: crate::LOG_TARGET, "sending to the viewer: {e}");
                    return CloseCode::ViewerGone;
                },
                // A viewer that takes nothing for this long is gone, whatever TCP thinks.
                _ = tokio::time::sleep(limits.keepalive_timeout) => return CloseCode::KeepaliveTimeout,
            }
            traffic.to_viewer.fetch_add(len, Ordering::Relaxed);
        }
    };

    let end = tokio::select! {
        end = viewer_to_vnc => end,
        end = vnc_to_viewer => end,
    };
    match end {
        // The viewer closed (tungstenite answered its close frame) or vanished.
        CloseCode::ViewerClosed | CloseCode::ViewerGone => Ended { end, socket: None },
        // Both halves come from the same split above, so they always reunite.
        end => Ended {
            end,
            socket: sink.reunite(stream).ok(),
        },
    }
}

/// How a relay ended, and the socket when the close frame is still ours to send.
pub(crate) struct Ended {
    pub(crate) end: CloseCode,
    pub(crate) socket: Option<WebSocket>,
}

/// Send a close frame with `code` and wait (at most `timeout`) for the viewer's reply, so
/// the TCP connection ends after the viewer read our frame (an early reset could make the
/// browser report 1006 instead).
pub(crate) async fn close_with(socket: &mut WebSocket, code: CloseCode, timeout: Duration) {
    let frame = CloseFrame {
        code: code.code(),
        reason: code.reason().into(),
    };
    let _ = tokio::time::timeout(timeout, async {
        if socket.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        // Discard what the viewer still had in flight until its close reply (or EOF).
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

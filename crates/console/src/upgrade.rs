//! The WebSocket handshake of a console request (RFC 6455 §4.2, HTTP/1.1), done here rather
//! than by axum's `WebSocketUpgrade` so that the relay gets the upgraded connection itself:
//! it writes the VNC server's bytes as data frames straight from its read buffer (one
//! vectored write per frame, no copy into a WebSocket write buffer — most bytes of a console
//! go that way), while tungstenite parses what the viewer sends.

use axum::body::Body;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::{OnUpgrade, Upgraded};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// The subprotocol noVNC asks for (and websockify answers).
pub(crate) const SUBPROTOCOL: &str = "binary";

/// A request that is not a WebSocket upgrade: answered with `status` and `why`.
pub(crate) struct NotAnUpgrade {
    status: StatusCode,
    why: &'static str,
}

impl IntoResponse for NotAnUpgrade {
    fn into_response(self) -> Response {
        (self.status, self.why).into_response()
    }
}

/// A valid WebSocket upgrade request, not answered yet.
pub(crate) struct Handshake {
    accept: String,
    binary: bool,
    on_upgrade: OnUpgrade,
}

fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

impl Handshake {
    /// Check that `parts` is a WebSocket upgrade; the HTTP answer when it is not. Nothing has
    /// been decided about the ticket at this point (a plain GET does not consume it).
    pub(crate) fn accept(parts: &mut Parts) -> Result<Handshake, NotAnUpgrade> {
        let refuse = |status: StatusCode, why: &'static str| NotAnUpgrade { status, why };
        if parts.version != Version::HTTP_11 || parts.method != Method::GET {
            return Err(refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "a console is a WebSocket: GET over HTTP/1.1",
            ));
        }
        if !header_has_token(&parts.headers, header::CONNECTION, "upgrade")
            || !header_has_token(&parts.headers, header::UPGRADE, "websocket")
        {
            return Err(refuse(
                StatusCode::UPGRADE_REQUIRED,
                "a console is a WebSocket: send Connection: upgrade and Upgrade: websocket",
            ));
        }
        if parts
            .headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Version must be 13",
            ));
        }
        let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY) else {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Key is missing",
            ));
        };
        let accept = derive_accept_key(key.as_bytes());
        let binary = header_has_token(&parts.headers, header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL);
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return Err(refuse(
                StatusCode::UPGRADE_REQUIRED,
                "this connection cannot be upgraded",
            ));
        };
        Ok(Handshake {
            accept,
            binary,
            on_upgrade,
        })
    }

    /// Answer 101 and run `session` on the upgraded connection once hyper hands it over (a
    /// task of its own, as axum does). If the upgrade never completes, `session` is dropped.
    pub(crate) fn respond<F, Fut>(self, session: F) -> Response
    where
        F: FnOnce(Upgraded) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => session(upgraded).await,
                Err(e) => {
                    tracing::debug!(target: crate::LOG_TARGET, "WebSocket upgrade failed: {e}")
                }
            }
        });
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&self.accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if self.binary {
            headers.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(SUBPROTOCOL),
            );
        }
        response
    }
}

//! A minimal RFB 3.8 viewer (security type None, raw encoding) over a UNIX socket or a
//! WebSocket, for the QEMU tests and the benchmark (`examples/console-bench.rs` includes this
//! file). Not a product client: it speaks just enough to reach ServerInit and to ask for and
//! read framebuffer updates.
#![allow(dead_code)] // the tests and the bench use different parts

use std::io;

use bytes::{Buf, Bytes};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A byte stream to a VNC server: direct, or through a WebSocket proxy.
pub enum Link {
    /// Straight to the server's UNIX socket.
    Unix(UnixStream),
    /// Through a WebSocket (binary messages carry the RFB stream).
    Ws {
        ws: Box<WebSocketStream<MaybeTlsStream<TcpStream>>>,
        /// The unread rest of the last message.
        pending: Bytes,
        /// The close frame, once the server sent one.
        closed: Option<(u16, String)>,
    },
}

fn closed(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, what.to_owned())
}

impl Link {
    pub async fn unix(path: &std::path::Path) -> io::Result<Link> {
        Ok(Link::Unix(UnixStream::connect(path).await?))
    }

    /// Open `url` asking for the `binary` subprotocol, as noVNC does.
    pub async fn websocket(url: &str) -> io::Result<Link> {
        let mut request = url.into_client_request().map_err(io::Error::other)?;
        request
            .headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static("binary"));
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(io::Error::other)?;
        if let MaybeTlsStream::Plain(tcp) = ws.get_ref() {
            // A browser's WebSocket does not delay small writes either.
            tcp.set_nodelay(true)?;
        }
        Ok(Link::Ws {
            ws: Box::new(ws),
            pending: Bytes::new(),
            closed: None,
        })
    }

    /// The close frame the WebSocket server sent, if it did.
    pub fn close_frame(&self) -> Option<&(u16, String)> {
        match self {
            Link::Ws { closed, .. } => closed.as_ref(),
            Link::Unix(_) => None,
        }
    }

    /// Next chunk of the WebSocket's byte stream into `pending`.
    async fn refill(
        ws: &mut WebSocketStream<MaybeTlsStream<TcpStream>>,
        pending: &mut Bytes,
        closed_with: &mut Option<(u16, String)>,
    ) -> io::Result<()> {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(data))) => {
                    *pending = data;
                    return Ok(());
                }
                Some(Ok(Message::Close(frame))) => {
                    *closed_with = Some(
                        frame
                            .map(|f| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or((1005, String::new())),
                    );
                    return Err(closed("the proxy closed the WebSocket"));
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(io::Error::other(e)),
                None => return Err(closed("the WebSocket ended")),
            }
        }
    }

    pub async fn read_exact(&mut self, mut out: &mut [u8]) -> io::Result<()> {
        match self {
            Link::Unix(stream) => stream.read_exact(out).await.map(|_| ()),
            Link::Ws {
                ws,
                pending,
                closed,
            } => {
                while !out.is_empty() {
                    if pending.is_empty() {
                        Self::refill(ws, pending, closed).await?;
                    }
                    let n = out.len().min(pending.len());
                    out[..n].copy_from_slice(&pending[..n]);
                    pending.advance(n);
                    out = &mut out[n..];
                }
                Ok(())
            }
        }
    }

    /// Read and drop `n` bytes (pixel data the benchmark only counts).
    pub async fn discard(&mut self, mut n: usize) -> io::Result<()> {
        match self {
            Link::Unix(stream) => {
                let mut scratch = vec![0u8; n.min(256 * 1024)];
                while n > 0 {
                    let take = n.min(scratch.len());
                    stream.read_exact(&mut scratch[..take]).await?;
                    n -= take;
                }
                Ok(())
            }
            Link::Ws {
                ws,
                pending,
                closed,
            } => {
                while n > 0 {
                    if pending.is_empty() {
                        Self::refill(ws, pending, closed).await?;
                    }
                    let take = n.min(pending.len());
                    pending.advance(take);
                    n -= take;
                }
                Ok(())
            }
        }
    }

    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Link::Unix(stream) => stream.write_all(data).await,
            Link::Ws { ws, .. } => ws
                .send(Message::Binary(Bytes::copy_from_slice(data)))
                .await
                .map_err(io::Error::other),
        }
    }
}

/// A viewer after ServerInit.
pub struct Rfb {
    pub link: Link,
    pub width: u16,
    pub height: u16,
    pub bytes_per_pixel: usize,
    pub name: String,
}

impl Rfb {
    /// ProtocolVersion, security type None, ClientInit (shared), ServerInit.
    pub async fn handshake(mut link: Link) -> io::Result<Rfb> {
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        let mut version = [0u8; 12];
        link.read_exact(&mut version).await?;
        if !version.starts_with(b"RFB 003.") {
            return Err(bad(format!(
                "not RFB: {:?}",
                String::from_utf8_lossy(&version)
            )));
        }
        link.write_all(b"RFB 003.008\n").await?;
        let mut count = [0u8; 1];
        link.read_exact(&mut count).await?;
        let mut types = vec![0u8; count[0] as usize];
        link.read_exact(&mut types).await?;
        if !types.contains(&1) {
            return Err(bad(format!("no security type None among {types:?}")));
        }
        link.write_all(&[1]).await?;
        let mut result = [0u8; 4];
        link.read_exact(&mut result).await?;
        if result != [0, 0, 0, 0] {
            return Err(bad(format!("security result {result:?}")));
        }
        link.write_all(&[1]).await?; // shared: leave other viewers connected
        let mut init = [0u8; 24];
        link.read_exact(&mut init).await?;
        let width = u16::from_be_bytes([init[0], init[1]]);
        let height = u16::from_be_bytes([init[2], init[3]]);
        let bits_per_pixel = init[4];
        let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]) as usize;
        if name_len > 4096 {
            return Err(bad(format!("desktop name of {name_len} bytes")));
        }
        let mut name = vec![0u8; name_len];
        link.read_exact(&mut name).await?;
        Ok(Rfb {
            link,
            width,
            height,
            bytes_per_pixel: usize::from(bits_per_pixel / 8),
            name: String::from_utf8_lossy(&name).into_owned(),
        })
    }

    /// SetEncodings: raw only.
    pub async fn use_raw_encoding(&mut self) -> io::Result<()> {
        self.link.write_all(&[2, 0, 0, 1, 0, 0, 0, 0]).await
    }

    /// FramebufferUpdateRequest.
    pub async fn request(
        &mut self,
        incremental: bool,
        x: u16,
        y: u16,
        w: u16,
        h: u16,
    ) -> io::Result<()> {
        let mut message = vec![3, u8::from(incremental)];
        for v in [x, y, w, h] {
            message.extend_from_slice(&v.to_be_bytes());
        }
        self.link.write_all(&message).await
    }

    /// Read server messages until one FramebufferUpdate was read whole; its pixel bytes.
    /// With `keep`, the pixels of a rectangle covering the whole screen are returned too.
    pub async fn read_update(&mut self, keep: bool) -> io::Result<(u64, Option<Vec<u8>>)> {
        let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        loop {
            let mut kind = [0u8; 1];
            self.link.read_exact(&mut kind).await?;
            match kind[0] {
                0 => {
                    let mut head = [0u8; 3];
                    self.link.read_exact(&mut head).await?;
                    let rects = u16::from_be_bytes([head[1], head[2]]);
                    let mut total = 0u64;
                    let mut kept = None;
                    for _ in 0..rects {
                        let mut rect = [0u8; 12];
                        self.link.read_exact(&mut rect).await?;
                        let w = u16::from_be_bytes([rect[4], rect[5]]) as usize;
                        let h = u16::from_be_bytes([rect[6], rect[7]]) as usize;
                        let encoding = i32::from_be_bytes([rect[8], rect[9], rect[10], rect[11]]);
                        match encoding {
                            0 => {
                                let n = w * h * self.bytes_per_pixel;
                                let whole =
                                    w == usize::from(self.width) && h == usize::from(self.height);
                                if keep && whole {
                                    let mut pixels = vec![0u8; n];
                                    self.link.read_exact(&mut pixels).await?;
                                    kept = Some(pixels);
                                } else {
                                    self.link.discard(n).await?;
                                }
                                total += n as u64;
                            }
                            -223 => {} // DesktopSize: no data
                            other => return Err(bad(format!("encoding {other} not asked for"))),
                        }
                    }
                    return Ok((total, kept));
                }
                1 => {
                    let mut head = [0u8; 5];
                    self.link.read_exact(&mut head).await?;
                    let colours = u16::from_be_bytes([head[3], head[4]]) as usize;
                    self.link.discard(colours * 6).await?;
                }
                2 => {} // Bell
                3 => {
                    let mut head = [0u8; 7];
                    self.link.read_exact(&mut head).await?;
                    let len = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
                    self.link.discard(len).await?;
                }
                other => return Err(bad(format!("server message type {other}"))),
            }
        }
    }
}

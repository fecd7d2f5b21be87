//! The byte pump between an upgraded viewer connection and a VNC server.
//!
//! The two directions are not symmetric, and neither is the code:
//!
//! - **VNC → viewer** carries nearly every byte (framebuffer updates). It reads at most
//!   `chunk` bytes from the VNC server into one reused buffer (16 KiB while the console is
//!   quiet, doubling while reads fill it) and writes them as one binary frame: a 2–10 byte header and the buffer in one vectored write, so the payload is copied
//!   once by the kernel on the way in and once on the way out, never in between. It reads the
//!   next chunk only when the frame is written: a slow viewer slows the VNC server, and one
//!   chunk is all it holds. It also writes the keepalive pings, the control frames tungstenite
//!   queues (pongs, close replies) between data frames, and watches for an end requested from
//!   outside.
//! - **viewer → VNC** is parsed by tungstenite (masking, fragmentation, control frames, size
//!   limits); each binary message is written whole to the VNC server before the next is read,
//!   so a VNC server that stops reading stops the viewer, and one message is all it holds.
//!   tungstenite's own writes (its automatic replies) go to a small [`ControlQueue`] that the
//!   other direction drains, so that no two writers ever interleave inside a frame.
//!
//! Whichever direction ends first ends the session; then the close frame goes out and the
//! viewer's close reply is awaited (bounded), so that the browser sees our code rather than a
//! reset.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::close::CloseCode;
use crate::registry::Stop;

/// The relay's bounds and clocks (from [`crate::ConsoleConfig`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) chunk: usize,
    pub(crate) keepalive_interval: Duration,
    pub(crate) keepalive_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) max_viewer_message: usize,
    pub(crate) viewer_read_buffer: usize,
}

/// Bytes relayed so far, readable after the session ended.
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    pub(crate) to_viewer: AtomicU64,
    pub(crate) from_viewer: AtomicU64,
}

/// The VNC → viewer buffer of a quiet console (see the loop for how it grows).
const MIN_CHUNK: usize = 16 * 1024;

/// tungstenite's automatic replies may wait here this long (a pong or a close frame is at
/// most 127 bytes; tungstenite keeps one pending reply of each kind).
const CONTROL_QUEUE_LIMIT: usize = 4096;

/// Control frames tungstenite wrote, waiting for the writer of the VNC → viewer direction.
#[derive(Default)]
struct ControlQueue {
    state: Mutex<ControlState>,
}

#[derive(Default)]
struct ControlState {
    bytes: Vec<u8>,
    /// The writer waiting for bytes.
    waiting: Option<Waker>,
}

impl ControlQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take everything queued.
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut self.lock().bytes)
    }

    /// Completes when bytes are queued.
    fn ready(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(|cx| {
            let mut state = self.lock();
            if state.bytes.is_empty() {
                state.waiting = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
    }
}

/// What tungstenite sees as its connection: it reads the viewer, and writes into the queue.
struct Inbound<R> {
    read: R,
    control: Arc<ControlQueue>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Inbound<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl<R> AsyncWrite for Inbound<R> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut state = self.control.lock();
        if state.bytes.len() + data.len() > CONTROL_QUEUE_LIMIT {
            // Only a viewer that makes us answer faster than we can write gets here.
            return Poll::Ready(Err(io::Error::other("control frame queue full")));
        }
        state.bytes.extend_from_slice(data);
        if let Some(waker) = state.waiting.take() {
            waker.wake();
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Header of an unmasked server frame (FIN set) with `opcode` and `len` payload bytes.
fn frame_header(opcode: u8, len: usize) -> ([u8; 10], usize) {
    let mut header = [0u8; 10];
    header[0] = 0x80 | opcode;
    if len < 126 {
        header[1] = len as u8;
        (header, 2)
    } else if len <= usize::from(u16::MAX) {
        header[1] = 126;
        header[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        (header, 4)
    } else {
        header[1] = 127;
        header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (header, 10)
    }
}

const OPCODE_BINARY: u8 = 0x2;
const OPCODE_CLOSE: u8 = 0x8;
const OPCODE_PING: u8 = 0x9;

/// Write one frame: header and payload in vectored writes, however the socket splits them.
async fn write_frame<W: AsyncWrite + Unpin>(
    out: &mut W,
    opcode: u8,
    payload: &[u8],
) -> io::Result<()> {
    let (header, header_len) = frame_header(opcode, payload.len());
    let (mut head, mut body) = (&header[..header_len], payload);
    while !head.is_empty() || !body.is_empty() {
        let written = out
            .write_vectored(&[IoSlice::new(head), IoSlice::new(body)])
            .await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_head = written.min(head.len());
        head = &head[from_head..];
        body = &body[written - from_head..];
    }
    Ok(())
}

/// Relay until one side ends or `stop` is requested; tells `ended` why (before the closing
/// handshake, which may take up to `close_timeout`), closes the viewer's connection with the
/// reason and returns it.
#[allow(clippy::too_many_arguments)] // the two connections' four halves, and the session's state
pub(crate) async fn relay<VR, VW, R, W>(
    viewer_in: VR,
    mut viewer_out: VW,
    mut from_vnc: R,
    mut to_vnc: W,
    stop: &Stop,
    limits: Limits,
    traffic: &Traffic,
    ended: impl FnOnce(CloseCode),
) -> CloseCode
where
    VR: AsyncRead + Unpin,
    VW: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let control = Arc::new(ControlQueue::default());
    let config = WebSocketConfig::default()
        .read_buffer_size(limits.viewer_read_buffer)
        .max_message_size(Some(limits.max_viewer_message))
        .max_frame_size(Some(limits.max_viewer_message))
        // Replies go to the queue at once, not when a later write happens to flush them.
        .write_buffer_size(0);
    let mut incoming = WebSocketStream::from_raw_socket(
        Inbound {
            read: viewer_in,
            control: control.clone(),
        },
        Role::Server,
        Some(config),
    )
    .await;

    let started = Instant::now();
    // Milliseconds after `started` when the viewer was last heard (any frame, pongs included).
    let heard_at = AtomicU64::new(0);
    // While the VNC server is not taking the viewer's bytes we do not read the viewer either,
    // so its pongs go unseen: silence then is not the viewer's fault.
    let writing_to_vnc = AtomicBool::new(false);
    // Set while a frame is partly written: no other frame may follow on this connection.
    let mid_frame = AtomicBool::new(false);
    let millis = |since: Instant| since.duration_since(started).as_millis() as u64;

    let viewer_to_vnc = async {
        loop {
            let message = match incoming.next().await {
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
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    };

    let vnc_to_viewer = async {
        // Starts small and doubles while reads fill it (a framebuffer update streaming in), up
        // to `chunk`: fewer, larger reads and frames under load, little memory for an idle
        // console. Shrinks back at a keepalive tick when nothing large came since the last.
        let mut buf = vec![0u8; MIN_CHUNK.min(limits.chunk)];
        let mut filled_since_tick = false;
        let mut grow = false;
        let mut keepalive = tokio::time::interval_at(
            started + limits.keepalive_interval,
            limits.keepalive_interval,
        );
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // What to write next: a data frame of `n` bytes of `buf`, or queued control frames.
        enum Next {
            Data(usize),
            Control(Vec<u8>),
            Ping,
        }
        loop {
            let next = tokio::select! {
                biased;
                why = stop.requested() => return why,
                () = control.ready() => Next::Control(control.take()),
                read = from_vnc.read(&mut buf) => match read {
                    Ok(0) => return CloseCode::ConsoleClosed,
                    Ok(n) => {
                        if n == buf.len() {
                            filled_since_tick = true;
                            if buf.len() < limits.chunk {
                                // Grown after this frame is written (the data is in `buf`).
                                grow = true;
                            }
                        }
                        Next::Data(n)
                    }
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
                    if !std::mem::take(&mut filled_since_tick) && buf.len() > MIN_CHUNK {
                        buf = vec![0u8; MIN_CHUNK];
                    }
                    Next::Ping
                }
            };
            mid_frame.store(true, Ordering::Relaxed);
            let write = async {
                match &next {
                    Next::Data(n) => write_frame(&mut viewer_out, OPCODE_BINARY, &buf[..*n]).await,
                    Next::Control(bytes) => viewer_out.write_all(bytes).await,
                    Next::Ping => write_frame(&mut viewer_out, OPCODE_PING, &[]).await,
                }
            };
            // A frame is finished before anything else happens (an end requested meanwhile
            // waits for it); only a viewer that takes nothing for this long cuts it short.
            match tokio::time::timeout(limits.keepalive_timeout, write).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(target: crate::LOG_TARGET, "writing to the viewer: {e}");
                    return CloseCode::ViewerGone;
                }
                Err(_) => return CloseCode::KeepaliveTimeout,
            }
            mid_frame.store(false, Ordering::Relaxed);
            if let Next::Data(n) = next {
                traffic.to_viewer.fetch_add(n as u64, Ordering::Relaxed);
            }
            if std::mem::take(&mut grow) {
                let doubled = (buf.len() * 2).min(limits.chunk);
                buf.resize(doubled, 0);
            }
        }
    };

    let end = tokio::select! {
        end = viewer_to_vnc => end,
        end = vnc_to_viewer => end,
    };
    ended(end);
    if end != CloseCode::ViewerGone && !mid_frame.load(Ordering::Relaxed) {
        let _ = tokio::time::timeout(limits.close_timeout, async {
            if end == CloseCode::ViewerClosed {
                // tungstenite writes its reply to the viewer's close frame on the next flush.
                let _ = incoming.flush().await;
            }
            // Control frames still queued (that reply, a late pong) go out first.
            let queued = control.take();
            if viewer_out.write_all(&queued).await.is_err() {
                return;
            }
            if end != CloseCode::ViewerClosed && end.is_sendable() {
                close_handshake(&mut viewer_out, &mut incoming, end).await;
            }
        })
        .await;
    }
    let _ = viewer_out.shutdown().await;
    end
}

/// Refuse an upgraded connection: a close frame with `code`, the viewer's reply awaited
/// (bounded), then the end.
pub(crate) async fn refuse<V: AsyncRead + AsyncWrite + Unpin>(
    viewer: V,
    code: CloseCode,
    timeout: Duration,
) {
    let (viewer_in, mut viewer_out) = tokio::io::split(viewer);
    let mut incoming = WebSocketStream::from_raw_socket(
        Inbound {
            read: viewer_in,
            control: Arc::new(ControlQueue::default()),
        },
        Role::Server,
        Some(WebSocketConfig::default().read_buffer_size(4096)),
    )
    .await;
    let _ = tokio::time::timeout(
        timeout,
        close_handshake(&mut viewer_out, &mut incoming, code),
    )
    .await;
    let _ = viewer_out.shutdown().await;
}

/// Our close frame with `code` and its reason, then what the viewer still had in flight is
/// discarded until its close reply (or the end of the connection).
async fn close_handshake<W, S>(out: &mut W, incoming: &mut S, code: CloseCode)
where
    W: AsyncWrite + Unpin,
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut payload = code.code().to_be_bytes().to_vec();
    payload.extend_from_slice(code.reason().as_bytes());
    if write_frame(out, OPCODE_CLOSE, &payload).await.is_err() {
        return;
    }
    while let Some(Ok(message)) = incoming.next().await {
        if matches!(message, Message::Close(_)) {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_headers_use_the_shortest_length_encoding() {
        assert_eq!(frame_header(OPCODE_BINARY, 0).0[..2], [0x82, 0]);
        assert_eq!(frame_header(OPCODE_BINARY, 125).0[..2], [0x82, 125]);
        assert_eq!(frame_header(OPCODE_BINARY, 126).0[..4], [0x82, 126, 0, 126]);
        assert_eq!(frame_header(OPCODE_BINARY, 65_535).1, 4);
        let (header, len) = frame_header(OPCODE_BINARY, 65_536);
        assert_eq!(header[..len], [0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(frame_header(OPCODE_PING, 0).0[..2], [0x89, 0]);
    }

    /// A writer that takes at most 3 bytes per call: header and payload must still arrive
    /// whole and in order.
    struct Trickle(Vec<u8>);

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = data.len().min(3);
            self.0.extend_from_slice(&data[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_frame_survives_short_writes() {
        let payload: Vec<u8> = (0..300u16).map(|i| i as u8).collect();
        let mut out = Trickle(Vec::new());
        write_frame(&mut out, OPCODE_BINARY, &payload)
            .await
            .expect("write");
        assert_eq!(out.0[..4], [0x82, 126, 1, 44]);
        assert_eq!(out.0[4..], payload[..]);
    }
}

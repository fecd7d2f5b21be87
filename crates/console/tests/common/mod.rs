//! A real console server on loopback (axum, with the listener's `ConnectInfo`), real UNIX
//! sockets as VNC endpoints, and a real WebSocket client (tokio-tungstenite).
#![allow(dead_code)] // each test binary uses a part of it

pub mod rfb;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use infinibay_console::{
    AuditRecord, AuditSink, Console, ConsoleConfig, ConsoleGate, GateRefusal, IssuedTicket,
    MemoryTicketStore, Ticket, TicketStore, VncEndpoint,
};
use tokio::net::{TcpStream, UnixListener};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Viewer = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the test says about a VM: its console's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmConsole {
    /// The gate names `vnc-<vm>.sock` in the harness's directory.
    Socket,
    /// The gate says the VM has no console.
    None,
    /// The gate says the VM is not running.
    Stopped,
    /// The gate names a TCP address (libvirt's VNC on a port).
    Tcp(SocketAddr),
}

/// The host's rules in miniature: which user may open which VM, and each VM's state.
#[derive(Default)]
pub struct Rules {
    allowed: Mutex<HashSet<(i64, String)>>,
    vms: Mutex<HashMap<String, VmConsole>>,
}

pub struct TestGate {
    pub rules: Rules,
    pub dir: PathBuf,
}

#[async_trait]
impl ConsoleGate for TestGate {
    async fn admit(&self, user_id: i64, vm_id: &str) -> Result<VncEndpoint, GateRefusal> {
        let allowed = self
            .rules
            .allowed
            .lock()
            .unwrap()
            .contains(&(user_id, vm_id.to_owned()));
        if !allowed {
            return Err(GateRefusal::NotAllowed);
        }
        let state = self.rules.vms.lock().unwrap().get(vm_id).copied();
        match state {
            None | Some(VmConsole::None) => Err(GateRefusal::NoConsole),
            Some(VmConsole::Stopped) => Err(GateRefusal::NotRunning),
            Some(VmConsole::Tcp(addr)) => Ok(VncEndpoint::Tcp(addr)),
            Some(VmConsole::Socket) => Ok(VncEndpoint::Unix(vnc_path(&self.dir, vm_id))),
        }
    }
}

/// Audit records as they arrive.
#[derive(Default)]
pub struct RecordingAudit {
    records: Mutex<Vec<AuditRecord>>,
    arrived: Notify,
}

#[async_trait]
impl AuditSink for RecordingAudit {
    async fn record(&self, record: AuditRecord) {
        self.records.lock().unwrap().push(record);
        self.arrived.notify_waiters();
    }
}

impl RecordingAudit {
    /// Wait (up to 10 s) for a record about `vm_id` matching `pick`.
    pub async fn wait_for(&self, vm_id: &str, pick: impl Fn(&AuditRecord) -> bool) -> AuditRecord {
        let found = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let arrived = self.arrived.notified();
                if let Some(r) = self
                    .records
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|r| r.vm_id == vm_id && pick(r))
                {
                    return r.clone();
                }
                arrived.await;
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "no matching audit record for {vm_id}; have {:#?}",
                self.records.lock().unwrap()
            )
        })
    }

    pub fn of_vm(&self, vm_id: &str) -> Vec<AuditRecord> {
        self.records
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.vm_id == vm_id)
            .cloned()
            .collect()
    }
}

pub struct Harness {
    pub console: Arc<Console>,
    pub tickets: Arc<MemoryTicketStore>,
    pub audit: Arc<RecordingAudit>,
    pub gate: Arc<TestGate>,
    pub addr: SocketAddr,
    /// Where the gate looks for `vnc-<vm>.sock`.
    pub dir: PathBuf,
    _own_dir: Option<tempfile::TempDir>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::with_config(ConsoleConfig::default()).await
    }

    pub async fn with_config(config: ConsoleConfig) -> Harness {
        // Short: AF_UNIX paths must stay under 108 bytes.
        let own = tempfile::Builder::new()
            .prefix("ibc-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let mut harness = Harness::in_dir(config, own.path().to_path_buf()).await;
        harness._own_dir = Some(own);
        harness
    }

    /// A console whose gate finds VNC sockets in `dir` (e.g. a QEMU guest's socket directory).
    pub async fn in_dir(config: ConsoleConfig, dir: PathBuf) -> Harness {
        log_capture();
        let tickets = Arc::new(MemoryTicketStore::new(1024));
        let audit = Arc::new(RecordingAudit::default());
        let gate = Arc::new(TestGate {
            rules: Rules::default(),
            dir: dir.clone(),
        });
        let console = Console::new(tickets.clone(), gate.clone(), audit.clone(), config);
        let app: axum::Router = console.router();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let server = tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .expect("serve");
        });
        Harness {
            console,
            tickets,
            audit,
            gate,
            addr,
            dir,
            _own_dir: None,
            server,
        }
    }

    /// A VM with a console that `user_id` may open; its VNC socket is bound (not accepted).
    pub fn vm_with_console(&self, user_id: i64) -> (String, UnixListener) {
        let vm = uuid();
        self.allow(user_id, &vm);
        self.set_vm(&vm, VmConsole::Socket);
        let listener = UnixListener::bind(self.vnc_path(&vm)).expect("bind VNC socket");
        (vm, listener)
    }

    pub fn allow(&self, user_id: i64, vm_id: &str) {
        self.gate
            .rules
            .allowed
            .lock()
            .unwrap()
            .insert((user_id, vm_id.to_owned()));
    }

    pub fn set_vm(&self, vm_id: &str, state: VmConsole) {
        self.gate
            .rules
            .vms
            .lock()
            .unwrap()
            .insert(vm_id.to_owned(), state);
    }

    pub fn vnc_path(&self, vm_id: &str) -> PathBuf {
        vnc_path(&self.dir, vm_id)
    }

    pub async fn ticket(&self, user_id: i64, vm_id: &str) -> IssuedTicket {
        self.console
            .issue_ticket(user_id, vm_id)
            .await
            .expect("mint a ticket")
    }

    /// A ticket for `user_id` and `vm_id` that expired a second ago (put straight into the
    /// store: minting through the console always gives 30 s).
    pub async fn expired_ticket(&self, user_id: i64, vm_id: &str) -> Ticket {
        let ticket = Ticket::generate().expect("randomness");
        self.tickets
            .mint(
                &ticket.hash(),
                user_id,
                vm_id,
                chrono::Utc::now() - chrono::Duration::seconds(1),
            )
            .await
            .expect("mint");
        ticket
    }

    /// Open `path` (as `IssuedTicket::path`) as a viewer asking for the `binary` subprotocol.
    pub async fn connect(&self, path: &str) -> (Viewer, Option<String>) {
        let mut request = format!("ws://{}{}", self.addr, path)
            .into_client_request()
            .expect("request");
        request
            .headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static("binary"));
        let (viewer, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("WebSocket handshake");
        let protocol = response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        (viewer, protocol)
    }

    /// Open a console and wait until the VNC side accepted the relay's connection.
    pub async fn open(
        &self,
        user_id: i64,
        vm_id: &str,
        vnc: &UnixListener,
    ) -> (Viewer, tokio::net::UnixStream) {
        let ticket = self.ticket(user_id, vm_id).await;
        let (viewer, _) = self.connect(&ticket.path).await;
        let (guest, _) = tokio::time::timeout(Duration::from_secs(10), vnc.accept())
            .await
            .expect("relay connects to the VNC socket")
            .expect("accept");
        (viewer, guest)
    }
}

/// Read the viewer until the server's close frame: its code and reason. Binary and ping
/// messages before it are skipped.
pub async fn close_of(viewer: &mut Viewer) -> (u16, String) {
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(message) = viewer.next().await {
            match message {
                Ok(Message::Close(Some(frame))) => {
                    return (u16::from(frame.code), frame.reason.to_string());
                }
                Ok(Message::Close(None)) => return (1005, String::new()),
                Ok(_) => continue,
                Err(e) => panic!("viewer connection failed before a close frame: {e}"),
            }
        }
        panic!("viewer connection ended without a close frame")
    })
    .await;
    found.expect("a close frame within 10 s")
}

/// Send one binary message from the viewer.
pub async fn send(viewer: &mut Viewer, bytes: &[u8]) {
    viewer
        .send(Message::Binary(bytes.to_vec().into()))
        .await
        .expect("viewer sends");
}

/// The next binary payload the viewer receives (pings skipped).
pub async fn next_binary(viewer: &mut Viewer) -> Vec<u8> {
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match viewer.next().await {
                Some(Ok(Message::Binary(data))) => return data.to_vec(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected binary data, got {other:?}"),
            }
        }
    })
    .await;
    got.expect("binary data within 10 s")
}

pub fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

// ---- log capture -------------------------------------------------------------------------

#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_buffer() -> &'static LogBuffer {
    static BUFFER: OnceLock<LogBuffer> = OnceLock::new();
    BUFFER.get_or_init(LogBuffer::default)
}

/// Everything this test binary logs goes to one buffer (and nowhere else).
pub fn log_capture() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let buffer = log_buffer().clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || buffer.clone())
            .init();
    });
}

/// Log lines mentioning `needle`.
pub fn log_lines_with(needle: &str) -> Vec<String> {
    let bytes = log_buffer().0.lock().unwrap().clone();
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// Wait (up to 10 s) for a log line containing every one of `needles`.
pub async fn wait_for_log(needles: &[&str]) -> String {
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(line) = log_lines_with(needles[0])
                .into_iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no log line with {needles:?}"))
}

/// Where the test gate puts a VM's VNC socket: `<dir>/vnc-<vm>.sock`, as the host does.
pub fn vnc_path(dir: &std::path::Path, vm_id: &str) -> PathBuf {
    dir.join(format!("vnc-{vm_id}.sock"))
}

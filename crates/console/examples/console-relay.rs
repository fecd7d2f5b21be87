//! The console relay on its own, **for the benchmark only** (`bench/console/run.sh`): the
//! same `Console` the host mounts, without the host. Tickets live in this process's memory and
//! anyone who can reach the listener may mint one (`POST /bench/ticket/{vm}` answers the path
//! to open; each ticket for a new user id), so never expose it.
//!
//!     console-relay [--listen 127.0.0.1:0] --vnc NAME=PATH [--vnc NAME=PATH …] [--chunk BYTES]
//!
//! Prints `listening=ADDR` once it accepts connections; stops on SIGINT/SIGTERM or when stdin
//! closes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use anyhow::{Context, bail};
use async_trait::async_trait;
use axum::extract::{Path, State};
use axum::routing::post;
use axum::serve::ListenerExt;
use clap::Parser;
use infinibay_console::{
    Console, ConsoleConfig, ConsoleGate, GateRefusal, LogAudit, MemoryTicketStore, VncEndpoint,
};

// The host's allocator, so that memory per console is what `infinibay` would show.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// A VM name and its VNC server's UNIX socket, as NAME=PATH (repeatable).
    #[arg(long = "vnc", required = true)]
    vnc: Vec<String>,
    /// Bytes read from the VNC server per WebSocket message (default: the library's).
    #[arg(long)]
    chunk: Option<usize>,
}

/// Everyone may open every named VM: the bench measures the relay, not the rules.
struct OpenGate(HashMap<String, PathBuf>);

#[async_trait]
impl ConsoleGate for OpenGate {
    async fn admit(&self, _user_id: i64, vm_id: &str) -> Result<VncEndpoint, GateRefusal> {
        self.0
            .get(vm_id)
            .cloned()
            .map(VncEndpoint::Unix)
            .ok_or(GateRefusal::NoConsole)
    }
}

/// Each ticket for a user of its own: the bench holds many consoles of one VM at once, and a
/// user may have one.
static NEXT_USER: AtomicI64 = AtomicI64::new(1);

async fn mint(
    State(console): State<Arc<Console>>,
    Path(vm): Path<String>,
) -> Result<String, String> {
    console
        .issue_ticket(NEXT_USER.fetch_add(1, Ordering::Relaxed), &vm)
        .await
        .map(|issued| issued.path)
        .map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut vms = HashMap::new();
    for spec in &args.vnc {
        let Some((name, path)) = spec.split_once('=') else {
            bail!("--vnc takes NAME=PATH, got {spec}");
        };
        vms.insert(name.to_owned(), PathBuf::from(path));
    }
    let mut config = ConsoleConfig::default();
    if let Some(chunk) = args.chunk {
        config.chunk_size = chunk;
    }
    let console = Console::new(
        Arc::new(MemoryTicketStore::new(100_000)),
        Arc::new(OpenGate(vms)),
        Arc::new(LogAudit),
        config,
    );
    let app = console.router().merge(
        axum::Router::new()
            .route("/bench/ticket/{vm}", post(mint))
            .with_state(console.clone()),
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("listening={}", listener.local_addr()?);
    // As `infinibay serve` does: small frames must not wait for Nagle.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    // stdin is read by a plain thread: tokio's stdin is a blocking task that would keep the
    // runtime from shutting down while nobody writes to it.
    let (stdin_closed, stdin_closed_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        while matches!(std::io::Read::read(&mut std::io::stdin(), &mut sink), Ok(n) if n > 0) {}
        let _ = stdin_closed.send(());
    });
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = stdin_closed_rx => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop)
    .await?;
    console.shutdown();
    console.closed().await;
    Ok(())
}

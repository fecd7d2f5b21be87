//! The benchmark's VNC viewer (`bench/console/run.sh`): the same client for every path to
//! the same VNC server — straight to its UNIX socket, through websockify, through our relay —
//! so that the differences are the proxies'. Prints one JSON object per run on stdout.
//!
//!     console-bench throughput TARGET --seconds S   full-screen raw updates, back to back
//!     console-bench latency TARGET --count N        1x1 update round trips
//!     console-bench hold TARGET --count N           N open consoles until stdin closes
//!
//! TARGET: `unix:PATH` (direct), `ws:URL` (a WebSocket proxy such as websockify),
//! `relay:HOST:PORT/VM` (our relay: a fresh ticket from its bench endpoint per connection), or
//! `serve:HOST:PORT/VM` (the real `infinibay serve`: a fresh ticket from GraphQL
//! `vmConsoleTicket` per connection, with the token in `CONSOLE_BENCH_TOKEN`; `takeover=1`, so
//! that a console the previous run just closed never refuses the next with 4423).

#[path = "../tests/common/rfb.rs"]
mod rfb;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use rfb::{Link, Rfb};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Non-incremental full-screen FramebufferUpdateRequests in a loop (raw encoding): one
    /// request, read the whole update, next request.
    Throughput {
        target: String,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Not counted: lets caches, TCP windows and the proxy settle.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
    },
    /// Round trips of a 1x1 non-incremental FramebufferUpdateRequest and its update.
    Latency {
        target: String,
        #[arg(long, default_value_t = 2000)]
        count: usize,
    },
    /// Open `count` consoles (each to ServerInit), print `ready`, hold them until stdin closes.
    Hold {
        target: String,
        #[arg(long, default_value_t = 50)]
        count: usize,
    },
}

/// Connect to TARGET and complete the RFB handshake (raw encoding).
async fn open(target: &str) -> anyhow::Result<Rfb> {
    let link = if let Some(path) = target.strip_prefix("unix:") {
        Link::unix(path.as_ref()).await?
    } else if let Some(url) = target.strip_prefix("ws:") {
        Link::websocket(url).await?
    } else if let Some(rest) = target.strip_prefix("relay:") {
        let (host, vm) = rest.split_once('/').context("relay:HOST:PORT/VM")?;
        let path = mint(host, vm).await?;
        Link::websocket(&format!("ws://{host}{path}")).await?
    } else if let Some(rest) = target.strip_prefix("serve:") {
        let (host, vm) = rest.split_once('/').context("serve:HOST:PORT/VM")?;
        let path = mint_on_serve(host, vm).await?;
        Link::websocket(&format!("ws://{host}{path}&takeover=1")).await?
    } else {
        bail!("unknown target {target}");
    };
    let mut rfb = Rfb::handshake(link).await.context("RFB handshake")?;
    rfb.use_raw_encoding().await?;
    Ok(rfb)
}

/// `POST /bench/ticket/{vm}` on the relay example: the path with a fresh ticket.
async fn mint(host: &str, vm: &str) -> anyhow::Result<String> {
    let mut tcp = tokio::net::TcpStream::connect(host).await?;
    tcp.write_all(
        format!(
            "POST /bench/ticket/{vm} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut tcp, &mut answer).await?;
    let (head, body) = answer.split_once("\r\n\r\n").context("HTTP answer")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("minting a ticket: {head}");
    }
    Ok(body.trim().to_owned())
}

/// GraphQL `vmConsoleTicket` on `infinibay serve`: the path with a fresh ticket.
async fn mint_on_serve(host: &str, vm: &str) -> anyhow::Result<String> {
    let token = std::env::var("CONSOLE_BENCH_TOKEN").context("CONSOLE_BENCH_TOKEN")?;
    let body = serde_json::json!({
        "query": "mutation($id: ID!) { vmConsoleTicket(vmId: $id) { path } }",
        "variables": { "id": vm },
    })
    .to_string();
    let mut tcp = tokio::net::TcpStream::connect(host).await?;
    tcp.write_all(
        format!(
            // HTTP/1.0: the answer comes whole, never chunked.
            "POST /graphql HTTP/1.0\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await?;
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut tcp, &mut answer).await?;
    let (head, body) = answer.split_once("\r\n\r\n").context("HTTP answer")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("minting a ticket: {head}");
    }
    let reply: serde_json::Value =
        serde_json::from_str(body.trim()).with_context(|| format!("GraphQL answer {body}"))?;
    reply
        .pointer("/data/vmConsoleTicket/path")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("vmConsoleTicket: {reply}"))
}

async fn full_frame(rfb: &mut Rfb) -> anyhow::Result<u64> {
    let (w, h) = (rfb.width, rfb.height);
    rfb.request(false, 0, 0, w, h).await?;
    Ok(rfb.read_update(false).await?.0)
}

async fn throughput(target: &str, seconds: f64, warmup: f64) -> anyhow::Result<()> {
    let mut rfb = open(target).await?;
    let warm_until = Instant::now() + Duration::from_secs_f64(warmup);
    let mut warmup_bytes = 0u64;
    while Instant::now() < warm_until {
        warmup_bytes += full_frame(&mut rfb).await?;
    }
    let started = Instant::now();
    let (mut frames, mut bytes) = (0u64, 0u64);
    while started.elapsed().as_secs_f64() < seconds {
        bytes += full_frame(&mut rfb).await?;
        frames += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{{\"mode\":\"throughput\",\"width\":{},\"height\":{},\"frames\":{frames},\"bytes\":{bytes},\"bytes_with_warmup\":{},\"seconds\":{elapsed:.3},\"frames_per_s\":{:.2},\"mb_per_s\":{:.2}}}",
        rfb.width,
        rfb.height,
        bytes + warmup_bytes,
        frames as f64 / elapsed,
        bytes as f64 / elapsed / 1e6
    );
    Ok(())
}

async fn latency(target: &str, count: usize) -> anyhow::Result<()> {
    let mut rfb = open(target).await?;
    let mut rtts = Vec::with_capacity(count);
    for i in 0..count + count / 10 {
        let t = Instant::now();
        rfb.request(false, 0, 0, 1, 1).await?;
        rfb.read_update(false).await?;
        // The first tenth warms up and is not counted.
        if i >= count / 10 {
            rtts.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    rtts.sort_by(f64::total_cmp);
    let at = |q: f64| rtts[((rtts.len() - 1) as f64 * q).round() as usize];
    println!(
        "{{\"mode\":\"latency\",\"count\":{},\"p50_us\":{:.1},\"p90_us\":{:.1},\"p99_us\":{:.1},\"mean_us\":{:.1}}}",
        rtts.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        rtts.iter().sum::<f64>() / rtts.len() as f64
    );
    Ok(())
}

async fn hold(target: &str, count: usize) -> anyhow::Result<()> {
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let mut rfb = open(target).await.with_context(|| format!("console {i}"))?;
        // One full frame each, so every proxy has carried real traffic on every console.
        full_frame(&mut rfb).await?;
        held.push(rfb);
    }
    println!("{{\"mode\":\"hold\",\"open\":{}}}", held.len());
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(_)) = lines.next_line().await {}
    drop(held);
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Args::parse().mode {
        Mode::Throughput {
            target,
            seconds,
            warmup,
        } => throughput(&target, seconds, warmup).await,
        Mode::Latency { target, count } => latency(&target, count).await,
        Mode::Hold { target, count } => hold(&target, count).await,
    }
}

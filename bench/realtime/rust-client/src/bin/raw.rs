//! The third client kind of `bench/realtime/run.sh`: a minimal Socket.IO v5 / Engine.IO v4
//! client written for this benchmark (tokio-tungstenite; WebSocket transport only; connect with
//! `auth`, events, acknowledgements, ping/pong — nothing else). It exists to show what the
//! server delivers when the receiving side costs next to nothing: per `metricsUpdate` it finds
//! `guestTimestamp` in the frame's text without building a JSON tree. Same environment and
//! JSON output as `clients.mjs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn num(name: &str, default: u64) -> u64 {
    env(name, &default.to_string()).parse().unwrap_or(default)
}

#[derive(Default)]
struct Counters {
    measuring: AtomicBool,
    received: AtomicU64,
    refused: AtomicU64,
    disconnects: AtomicU64,
}

const EVENT_PREFIX: &str = "42[\"metricsUpdate\",";
const STAMP_KEY: &str = "\"guestTimestamp\":\"";

/// The guest's timestamp in an event frame (µs since the epoch, which also names the sample)
/// and the milliseconds (fractional) from it until `now`.
fn latency_ms(frame: &str, now: chrono::DateTime<chrono::Utc>) -> Option<(i64, f64)> {
    let at = frame.find(STAMP_KEY)? + STAMP_KEY.len();
    let end = at + frame[at..].find('"')?;
    let sent = chrono::DateTime::parse_from_rfc3339(&frame[at..end]).ok()?;
    let sent = sent.with_timezone(&chrono::Utc);
    Some((
        sent.timestamp_micros(),
        (now - sent).num_microseconds()? as f64 / 1000.0,
    ))
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Next text frame, answering Engine.IO pings on the way.
async fn next_text(ws: &mut Ws) -> Result<String, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.as_str() == "2" => {
                ws.send(Message::text("3"))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(Message::Close(_))) | None => return Err("closed".into()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
        }
    }
}

/// Connect, authenticate, subscribe; returns the socket ready to receive and how many
/// subscribes were refused.
async fn open(url: &str, token: &str, vms: &[String]) -> Result<(Ws, u64), String> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| e.to_string())?;
    let open = next_text(&mut ws).await?;
    if !open.starts_with('0') {
        return Err(format!("expected an Engine.IO open packet, got {open}"));
    }
    ws.send(Message::text(format!("40{}", json!({ "token": token }))))
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let t = next_text(&mut ws).await?;
        if t.starts_with("44") {
            return Err(format!("connect refused: {t}"));
        }
        if t.starts_with("42[\"connected\"") {
            break;
        }
    }
    let mut refused = 0;
    for (n, vm) in vms.iter().enumerate() {
        ws.send(Message::text(format!(
            "42{n}{}",
            json!(["subscribe:vm", vm])
        )))
        .await
        .map_err(|e| e.to_string())?;
        let ack = format!("43{n}");
        loop {
            let t = next_text(&mut ws).await?;
            if let Some(body) = t.strip_prefix(&ack) {
                let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
                if v.pointer("/0/ok") != Some(&json!(true)) {
                    refused += 1;
                }
                break;
            }
        }
    }
    Ok((ws, refused))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = env("SERVER", "http://127.0.0.1:18180");
    let url = format!(
        "{}/socket.io/?EIO=4&transport=websocket",
        server.replacen("http", "ws", 1)
    );
    let tokens: Vec<String> = env("TOKENS", "").split(',').map(str::to_owned).collect();
    let vms: Vec<String> = env("VMS", "").split(',').map(str::to_owned).collect();
    let clients = num("CLIENTS", 1000) as usize;
    let subs = num("SUBS", 1) as usize;
    let offset = num("OFFSET", 0) as usize;
    let warmup = Duration::from_secs(num("WARMUP_S", 3));
    let measure = Duration::from_secs(num("MEASURE_S", 20));

    let counters = Arc::new(Counters::default());
    let (lat_tx, mut lat_rx) = mpsc::unbounded_channel::<(i64, f64)>();
    let started = Instant::now();
    let mut ready = Vec::with_capacity(clients);
    for batch in (0..clients).collect::<Vec<_>>().chunks(50) {
        let mut pending = Vec::new();
        for &i in batch {
            let token = tokens[(i + offset) % tokens.len()].clone();
            let mine: Vec<String> = (0..subs)
                .map(|k| vms[(i * subs + k + offset) % vms.len()].clone())
                .collect();
            let url = url.clone();
            pending.push(tokio::spawn(async move { open(&url, &token, &mine).await }));
        }
        for p in pending {
            ready.push(p.await?.map_err(|e| format!("client: {e}"))?);
        }
    }
    let connect_ms = started.elapsed().as_millis() as u64;
    let mut tasks = Vec::with_capacity(clients);
    for (mut ws, refused) in ready {
        counters.refused.fetch_add(refused, Ordering::Relaxed);
        let counters = counters.clone();
        let lat_tx = lat_tx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let frame = match ws.next().await {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        counters.disconnects.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Some(Ok(_)) => continue,
                };
                let now = chrono::Utc::now();
                let text = frame.as_str();
                if text == "2" {
                    let _ = ws.send(Message::text("3")).await;
                } else if text.starts_with(EVENT_PREFIX)
                    && counters.measuring.load(Ordering::Relaxed)
                {
                    counters.received.fetch_add(1, Ordering::Relaxed);
                    if let Some(l) = latency_ms(text, now) {
                        let _ = lat_tx.send(l);
                    }
                }
            }
        }));
    }
    drop(lat_tx);
    tokio::time::sleep(warmup).await;
    counters.measuring.store(true, Ordering::Relaxed);
    if let Ok(out) = std::env::var("OUT") {
        std::fs::write(format!("{out}.measuring"), b"")?;
    }
    let t0 = Instant::now();
    tokio::time::sleep(measure).await;
    counters.measuring.store(false, Ordering::Relaxed);
    let seconds = t0.elapsed().as_secs_f64();
    let disconnects = counters.disconnects.load(Ordering::Relaxed);
    for t in &tasks {
        t.abort();
    }
    let mut lat = Vec::new();
    // The first delivery of each sample: the host's whole path plus one frame, without the
    // queueing of the other deliveries of the same burst.
    let mut first: std::collections::HashMap<i64, f64> = std::collections::HashMap::new();
    while let Ok((sample, l)) = lat_rx.try_recv() {
        lat.push(l);
        let f = first.entry(sample).or_insert(l);
        *f = f.min(l);
    }
    let mut first: Vec<f64> = first.into_values().collect();
    first.sort_by(f64::total_cmp);
    let fq = |p: f64| {
        first
            .get(((p * first.len() as f64) as usize).min(first.len().saturating_sub(1)))
            .copied()
    };
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| {
        lat.get(((p * lat.len() as f64) as usize).min(lat.len().saturating_sub(1)))
            .copied()
    };
    let received = counters.received.load(Ordering::Relaxed);
    let result = json!({
        "client": "minimal EIO4/SIO5 (tokio-tungstenite)",
        "clients": clients, "subsPerClient": subs, "vms": vms.len(), "connectMs": connect_ms,
        "refused": counters.refused.load(Ordering::Relaxed), "disconnects": disconnects,
        "received": received, "seconds": seconds, "perSecond": received as f64 / seconds,
        "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": lat.last(),
        "firstP50": fq(0.5), "firstP99": fq(0.99), "firstMax": first.last(),
    });
    if let Ok(out) = std::env::var("OUT") {
        let mut full = result.clone();
        full["latencies"] = json!(lat);
        std::fs::write(out, full.to_string())?;
    }
    println!("{result}");
    Ok(())
}

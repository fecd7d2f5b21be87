//! What a hostile user (not a guest) tried against the host, each attack against a real
//! `infinibay serve` (issue 14). Every test asserts the refusal, that another user's GraphQL
//! latency stays within 5× its idle value during the attack, and that the host's memory stays
//! bounded (see `hostile_common`). `bench/security/run.sh` runs the same tests in report mode
//! against this build and the one before the fixes and writes `bench/results/security.md`.

mod hostile_common;
mod sio_client;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use hostile_common::{
    ATTACKER_IP, BYSTANDER_IP, Finding, Generation, Host, HostOptions, ONE_AT_A_TIME, PASSWORD,
    Watch, client_from, error_code,
};
use sio_client::{SioClient, SioConnect};

/// Bystander requests measured at rest before each attack.
const IDLE_SAMPLES: usize = 300;
/// An attack that is over quickly is repeated for at least this long, so that the bystander's
/// latency during it rests on a few hundred requests.
const ATTACK_MIN: Duration = Duration::from_secs(4);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A TCP connection to the host from `ip`.
async fn tcp_from(ip: &str, host: &Host) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{ip}:0").parse().expect("addr"))?;
    socket.connect(host.addr).await
}

/// A graphql-transport-ws connection, `connection_init` sent with `token`, after its
/// `connection_ack` (or `None`: refused or closed).
async fn graphql_ws_init(host: &Host, token: &str) -> Option<Ws> {
    let mut request = format!("ws://{}/graphql", host.addr)
        .into_client_request()
        .ok()?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().ok()?,
    );
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), false)
        .await
        .ok()?;
    ws.send(Message::text(
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {token}")}})
            .to_string(),
    ))
    .await
    .ok()?;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .ok()??
            .ok()?;
        if let Message::Close(_) = msg {
            return None;
        }
        let v: Value = serde_json::from_str(msg.to_text().unwrap_or("")).unwrap_or(Value::Null);
        if v["type"] == json!("connection_ack") {
            return Some(ws);
        }
    }
}

/// Read a WebSocket until it closes or `within` passes: the close code (1006 when it ended
/// without a close frame), or `None` while still open.
async fn closed_within<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    within: Duration,
) -> Option<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return None,
            Ok(None) | Ok(Some(Err(_))) => return Some(1006),
            Ok(Some(Ok(Message::Close(frame)))) => {
                return Some(frame.map(|f| u16::from(f.code)).unwrap_or(1005));
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

// ---------------------------------------------------------------------------------------------
// 1. Unbounded request bodies, before authentication.

/// Send a POST /graphql whose headers declare a 400 MB body, and no body: the status line of
/// the answer, if one comes within `within`.
async fn answer_to_declared_length(host: &Host, within: Duration) -> Option<String> {
    let mut tcp = tcp_from(ATTACKER_IP, host).await.ok()?;
    let head = "POST /graphql HTTP/1.1\r\nHost: infinibay\r\nContent-Type: application/json\r\n\
                Content-Length: 400000000\r\n\r\n";
    tcp.write_all(head.as_bytes()).await.ok()?;
    let mut answer = vec![0u8; 512];
    let n = tokio::time::timeout(within, tcp.read(&mut answer))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&answer[..n]).to_string();
    text.lines().next().map(str::to_owned)
}

/// Stream `total` bytes of chunked body to POST /graphql without a token: the status (0 when
/// the connection was cut) and how many bytes the client got to hand over.
async fn chunked_upload(host: &Host, total: u64) -> (u16, u64) {
    static CHUNK: [u8; 1 << 20] = [b' '; 1 << 20];
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    let chunks = futures_util::stream::iter(0..total / CHUNK.len() as u64).map(move |_| {
        counter.fetch_add(CHUNK.len() as u64, Ordering::Relaxed);
        Ok::<_, std::io::Error>(Bytes::from_static(&CHUNK))
    });
    let status = client_from(ATTACKER_IP)
        .post(format!("{}/graphql", host.url))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    (status, sent.load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_400_mb_body_without_a_token_is_refused_before_it_is_read() {
    let _one = ONE_AT_A_TIME.lock().await;
    let host = Host::start(HostOptions::default()).await;
    let mut finding = Finding::new(
        "1. unbounded bodies: 400 MB POST /graphql without a token, 5 MB WebSocket messages",
        &host,
    );
    let watch = Watch::after_idle(&host, IDLE_SAMPLES).await;

    // A declared length over the cap: refused on the headers alone.
    let started = Instant::now();
    let answer = answer_to_declared_length(&host, Duration::from_secs(5)).await;
    finding.check(
        answer.as_deref().is_some_and(|l| l.contains(" 413 ")),
        format!(
            "Content-Length 400 MB without a body: {} after {} ms",
            answer
                .as_deref()
                .unwrap_or("no answer (waiting for the body)"),
            started.elapsed().as_millis()
        ),
    );

    // A chunked body: cut at the cap. Again and again, for at least ATTACK_MIN.
    let started = Instant::now();
    let mut rounds = 0;
    let mut worst = (0u16, 0u64, Duration::ZERO);
    while rounds == 0 || started.elapsed() < ATTACK_MIN {
        let round = Instant::now();
        let (status, sent) = chunked_upload(&host, 400 * 1024 * 1024).await;
        if rounds == 0 || sent > worst.1 || status == 200 {
            worst = (status, sent, round.elapsed());
        }
        rounds += 1;
    }
    let (status, sent, took) = worst;
    finding.check(
        status != 200 && sent < 64 * 1024 * 1024,
        format!(
            "chunked 400 MB, {rounds} times: at worst answered {status} after {:.1} MiB were handed over, {} ms",
            mib(sent),
            took.as_millis()
        ),
    );

    // A 5 MB graphql-ws message: the connection is closed, the message never runs.
    let padding = "x".repeat(5 * 1024 * 1024);
    let outcome = match graphql_ws_init(&host, &host.attacker.token).await {
        None => "no connection".to_owned(),
        Some(mut ws) => {
            let big = json!({"id": "big", "type": "subscribe", "payload": {"query": "{ vms { id } }", "variables": {"pad": padding}}});
            let _ = ws.send(Message::text(big.to_string())).await;
            let mut answered = false;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            let mut closed = None;
            while let Ok(next) = tokio::time::timeout_at(deadline, ws.next()).await {
                match next {
                    Some(Ok(Message::Text(t))) if t.as_str().contains("\"next\"") => {
                        answered = true;
                    }
                    Some(Ok(Message::Close(f))) => {
                        closed = Some(f.map(|f| u16::from(f.code)).unwrap_or(1005));
                        break;
                    }
                    Some(Ok(_)) => {}
                    None | Some(Err(_)) => {
                        closed = Some(1006);
                        break;
                    }
                }
            }
            finding.check(
                !answered && closed.is_some(),
                format!(
                    "5 MB graphql-ws message: {}",
                    if answered {
                        "executed".to_owned()
                    } else {
                        format!("connection closed ({closed:?})")
                    }
                ),
            );
            String::new()
        }
    };
    if !outcome.is_empty() {
        finding.check(false, format!("5 MB graphql-ws message: {outcome}"));
    }

    // A 5 MB Socket.IO message over its WebSocket, before any authentication.
    let sio_closed = socket_io_big_message(&host, 5 * 1024 * 1024).await;
    finding.check(
        sio_closed,
        format!(
            "5 MB Socket.IO WebSocket message before CONNECT: {}",
            if sio_closed {
                "connection closed"
            } else {
                "accepted"
            }
        ),
    );

    finding.measured(watch.finish().await);
    finding.conclude();
    host.stop().await;
}

/// Open a Socket.IO WebSocket without connecting a namespace and send one `size`-byte
/// message: whether the server closed the connection (rather than taking it in).
async fn socket_io_big_message(host: &Host, size: usize) -> bool {
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", host.addr);
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async_with_config(
        url.into_client_request().expect("request"),
        Some(config),
        false,
    )
    .await
    else {
        return false;
    };
    // The engine.io open packet.
    let _ = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    let message = format!("42{}", json!(["x", "y".repeat(size)]));
    if ws.send(Message::text(message)).await.is_err() {
        return true;
    }
    // A ping from us: an open connection answers with a pong (engine.io "3").
    let _ = ws.send(Message::text("2")).await;
    closed_within(&mut ws, Duration::from_secs(5))
        .await
        .is_some()
}

// ---------------------------------------------------------------------------------------------
// 2. Guessing passwords.

const LOGIN: &str =
    "mutation($u: String!, $p: String!) { login(username: $u, password: $p) { token } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn six_hundred_wrong_passwords_are_throttled_logged_once_and_others_still_log_in() {
    let _one = ONE_AT_A_TIME.lock().await;
    let host = Host::start(HostOptions::default()).await;
    let mut finding = Finding::new(
        "2a. 600 wrong passwords in a row against one account",
        &host,
    );
    let watch = Watch::after_idle(&host, IDLE_SAMPLES).await;
    let log_before = host.log_text().len();

    let attacker = client_from(ATTACKER_IP);
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    let mut legitimate_ok = 0;
    let started = Instant::now();
    let mut guesses = 0;
    while guesses < 600 || started.elapsed() < ATTACK_MIN {
        let i = guesses;
        guesses += 1;
        let (_, r) = host
            .gql(
                &attacker,
                None,
                LOGIN,
                json!({"u": "victor", "p": format!("guess-{i}")}),
            )
            .await;
        let outcome = match error_code(&r) {
            Some(code) => code.to_owned(),
            None if r["data"]["login"]["token"].is_string() => "TOKEN".to_owned(),
            None => "OTHER".to_owned(),
        };
        *outcomes.entry(outcome).or_default() += 1;
        // Meanwhile the bystander logs in to their own account, from their own address.
        if i % 100 == 50 && i < 600 {
            let (_, r) = host
                .gql(
                    &client_from(BYSTANDER_IP),
                    None,
                    LOGIN,
                    json!({"u": "alice", "p": PASSWORD}),
                )
                .await;
            if r["data"]["login"]["token"].is_string() {
                legitimate_ok += 1;
            }
        }
    }
    let took = started.elapsed();
    let limited = outcomes.get("RATE_LIMITED").copied().unwrap_or(0);
    let tried = guesses - limited;
    finding.check(
        tried <= 20,
        format!(
            "{guesses} guesses in {} ms, {tried} of them checked: {outcomes:?}",
            took.as_millis()
        ),
    );
    finding.check(
        legitimate_ok == 6,
        format!("another user logged in {legitimate_ok} of 6 times during the attack"),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = host.log_text();
    let new_log = &log[log_before.min(log.len())..];
    let failed_lines = new_log.matches("failed login").count();
    finding.check(
        (1..=20).contains(&failed_lines),
        format!("{failed_lines} `failed login` log lines for {guesses} guesses (deduplicated)"),
    );

    finding.measured(watch.finish().await);
    finding.conclude();
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_with_1000_aliased_logins_is_refused_before_any_password_check() {
    let _one = ONE_AT_A_TIME.lock().await;
    let host = Host::start(HostOptions::default()).await;
    let mut finding = Finding::new("2b. one request with 1,000 aliased login mutations", &host);
    let watch = Watch::after_idle(&host, IDLE_SAMPLES).await;

    let fields: String = (0..1000)
        .map(|i| format!("l{i}: login(username: \"victor\", password: \"guess-{i}\") {{ token }} "))
        .collect();
    let attacker = client_from(ATTACKER_IP);
    let document = format!("mutation {{ {fields} }}");
    let started = Instant::now();
    let (status, r) = host.gql(&attacker, None, &document, json!({})).await;
    let took = started.elapsed();
    // And again, for at least ATTACK_MIN.
    let mut rounds = 1;
    while started.elapsed() < ATTACK_MIN {
        let _ = host.gql(&attacker, None, &document, json!({})).await;
        rounds += 1;
    }
    let answered = r["data"].as_object().map(|d| d.len()).unwrap_or(0);
    finding.check(
        error_code(&r) == Some("INVALID") && answered == 0,
        format!(
            "answered {status} in {} ms (sent {rounds} times): {} ({answered} logins ran)",
            took.as_millis(),
            r["errors"][0]["message"].as_str().unwrap_or("no error")
        ),
    );

    finding.measured(watch.finish().await);
    finding.conclude();
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_wrong_logins_do_not_grow_memory_with_argon2() {
    let _one = ONE_AT_A_TIME.lock().await;
    let host = Host::start(HostOptions::default()).await;
    let mut finding = Finding::new(
        "2c. 100 concurrent wrong logins from 100 addresses (argon2 memory)",
        &host,
    );
    let watch = Watch::after_idle(&host, IDLE_SAMPLES).await;

    // From 100 addresses and for made-up names, so that no throttle stops them: only the
    // argon2 gate stands between them and 100 hashes of 19 MiB at once.
    let started = Instant::now();
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    let mut bursts = 0;
    while bursts == 0 || started.elapsed() < ATTACK_MIN {
        bursts += 1;
        let mut attempts = tokio::task::JoinSet::new();
        for i in 0..100u32 {
            let url = host.url.clone();
            attempts.spawn(async move {
                let client = client_from(&format!("127.0.1.{}", i + 1));
                let (_, r) = hostile_common::gql_with(
                    &client,
                    &url,
                    None,
                    LOGIN,
                    json!({"u": format!("nobody-{i}"), "p": "wrong-password"}),
                )
                .await;
                error_code(&r).unwrap_or("NO_ERROR").to_owned()
            });
        }
        while let Some(done) = attempts.join_next().await {
            *outcomes
                .entry(done.unwrap_or_else(|_| "PANIC".into()))
                .or_default() += 1;
        }
    }
    let took = started.elapsed();
    // Every attempt is refused (wrong, or turned away while the gate is full).
    let refused = outcomes.get("UNAUTHENTICATED").copied().unwrap_or(0)
        + outcomes.get("RATE_LIMITED").copied().unwrap_or(0);
    finding.check(
        refused == 100 * bursts,
        format!(
            "{bursts} bursts of 100 concurrent logins in {} ms: {outcomes:?}",
            took.as_millis()
        ),
    );
    // The legitimate user still logs in right after.
    let (_, r) = host
        .gql(
            &client_from(BYSTANDER_IP),
            None,
            LOGIN,
            json!({"u": "alice", "p": PASSWORD}),
        )
        .await;
    finding.check(
        r["data"]["login"]["token"].is_string(),
        "another user logs in right after",
    );
    let measured = watch.finish().await;
    finding.check(
        measured.growth_kb() < 80 * 1024,
        format!(
            "memory grew by {:.0} MiB (100 hashes at once would be ~1.9 GB)",
            measured.growth_kb() as f64 / 1024.0
        ),
    );
    finding.measured(measured);
    finding.conclude();
    host.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. graphql-ws: 20,000 subscribes on one connection, and connections per user.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_thousand_subscribes_on_one_connection_do_not_stall_other_users() {
    let _one = ONE_AT_A_TIME.lock().await;
    let host = Host::start(HostOptions::default()).await;
    let mut finding = Finding::new(
        "3. 20,000 graphql-ws subscribes on one connection; 17 connections of one user",
        &host,
    );
    let watch = Watch::after_idle(&host, IDLE_SAMPLES).await;

    let Some(ws) = graphql_ws_init(&host, &host.attacker.token).await else {
        panic!("the attacker's graphql-ws connection was not acknowledged");
    };
    let (mut sink, mut stream) = ws.split();
    let vm = host.attacker_vm().to_owned();
    let writer = tokio::spawn(async move {
        for i in 0..20_000 {
            let subscribe = json!({"id": format!("s{i}"), "type": "subscribe", "payload": {
                "query": "subscription($id: ID!) { vmMetrics(vmId: $id) { cpuPercent } }",
                "variables": {"id": vm}}});
            if sink
                .send(Message::text(subscribe.to_string()))
                .await
                .is_err()
            {
                return i;
            }
        }
        20_000
    });
    // Count what comes back for 8 s: data of running subscriptions, refusals.
    let mut running = std::collections::HashSet::new();
    let mut refused = 0usize;
    let mut closed = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while let Ok(next) = tokio::time::timeout_at(deadline, stream.next()).await {
        match next {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                let rate_limited = v["payload"].to_string().contains("RATE_LIMITED");
                match v["type"].as_str() {
                    // Data: a subscription that runs.
                    Some("next") if v["payload"].get("errors").is_none() => {
                        running.insert(v["id"].as_str().unwrap_or("").to_owned());
                    }
                    // Refused before it ran (too many on the connection) or while waiting
                    // for the user's database turn (too many of theirs waiting).
                    Some("error" | "next") if rate_limited => refused += 1,
                    _ => {}
                }
            }
            Some(Ok(Message::Close(f))) => {
                closed = f.map(|f| u16::from(f.code));
                break;
            }
            Some(Ok(_)) => {}
            None | Some(Err(_)) => break,
        }
    }
    writer.abort();
    let limit = 100;
    finding.check(
        running.len() <= limit && refused > 0,
        format!(
            "in 8 s: {} subscriptions delivered data, {refused} refused RATE_LIMITED, closed: {closed:?}",
            running.len()
        ),
    );
    // One user's connections are bounded.
    let mut open = Vec::new();
    let mut refused_at = None;
    for i in 0..17 {
        match graphql_ws_init(&host, &host.attacker.token).await {
            Some(ws) => open.push(ws),
            None => {
                refused_at = Some(i + 1);
                break;
            }
        }
    }
    finding.check(
        refused_at.is_some(),
        format!(
            "further connections of the same user: {}",
            refused_at.map_or("all 17 accepted".to_owned(), |n| format!(
                "connection {n} refused (one was open already)"
            ))
        ),
    );
    drop(open);
    let measured = watch.finish().await;
    // The pool's state is visible.
    let metrics = reqwest::get(&host.metrics_url)
        .await
        .ok()
        .filter(|r| r.status().is_success());
    let shown = match metrics {
        Some(r) => r.text().await.unwrap_or_default(),
        None => String::new(),
    };
    finding.check(
        shown.contains("infinibay_db_pool_connections") && shown.contains("infinibay_api_db_turns"),
        "/metrics shows the database pool and the requests waiting for it",
    );
    finding.measured(measured);
    finding.conclude();
    host.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Socket.IO event names.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn made_up_socket_io_event_names_are_limited_together_and_do_not_grow_memory() {
    let _one = ONE_AT_A_TIME.lock().await;
    let host = Host::start(HostOptions::default()).await;
    let mut finding = Finding::new(
        "4. Socket.IO: 1,000 made-up event names, 2,000 names of 50 KB",
        &host,
    );
    let watch = Watch::after_idle(&host, IDLE_SAMPLES).await;

    let SioConnect::Connected(mut client, _) =
        SioClient::connect(host.addr, Some(&host.attacker.token)).await
    else {
        panic!("the attacker's socket connects");
    };
    // 1,000 different short names, then 2,000 names of 50 KB, in batches of 100 (the
    // answers are read between batches: the server queues at most 1,024 packets per socket).
    let long_name = |i: usize| format!("{i:05}{}", "n".repeat(50 * 1024));
    let names = (0..1000)
        .map(|i| format!("made-up-{i}"))
        .chain((0..2000).map(long_name))
        .collect::<Vec<_>>();
    let mut acks = std::collections::BTreeMap::<String, usize>::new();
    let mut echoed_long = 0;
    let mut sent = 0;
    let mut received = 0;
    for batch in names.chunks(100) {
        for name in batch {
            if client.emit_only(name, json!(1)).await.is_ok() {
                sent += 1;
            }
        }
        while received < sent {
            let Some((_, ack)) = client.next_ack(Duration::from_secs(20)).await else {
                break;
            };
            received += 1;
            let error = ack["error"].as_str().unwrap_or("");
            if error.len() > 1024 {
                echoed_long += 1;
            }
            let kind = if error == "rate limited" {
                "rate limited"
            } else if error.starts_with("unknown event") {
                "unknown event"
            } else if error.contains("longer than") {
                "name too long"
            } else {
                "other"
            };
            *acks.entry(kind.to_owned()).or_default() += 1;
        }
        if received < sent {
            break;
        }
    }
    let limited = acks.get("rate limited").copied().unwrap_or(0);
    finding.check(
        limited >= 2800 && echoed_long == 0,
        format!(
            "{received} of {sent} answered: {acks:?}; {echoed_long} answers echoed a 50 KB name"
        ),
    );
    // The socket is still usable for what it may do.
    let ack = client
        .emit_ack("subscribe:vm", json!(host.attacker_vm()))
        .await;
    finding.check(
        ack["ok"] == json!(true),
        format!("the known event still has its own budget: {ack}"),
    );
    finding.measured(watch.finish().await);
    finding.conclude();
    host.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 5. The database, readable by other local users.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_local_user_cannot_read_the_database_or_its_wal_whatever_the_umask() {
    let _one = ONE_AT_A_TIME.lock().await;
    let host = Host::start(HostOptions {
        umask: Some(0o022),
        ..HostOptions::default()
    })
    .await;
    let mut finding = Finding::new(
        "5. the data directory and the SQLite files (umask 022)",
        &host,
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    };
    finding.check(
        mode(&host.data_dir) & 0o077 == 0,
        format!("data dir {:04o}", mode(&host.data_dir)),
    );
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&host.data_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = entry.path();
        if path.is_file() {
            files.push(format!(
                "{} {:04o}",
                entry.file_name().to_string_lossy(),
                mode(&path)
            ));
            finding.check(
                mode(&path) & 0o077 == 0,
                format!(
                    "{} {:04o}",
                    entry.file_name().to_string_lossy(),
                    mode(&path)
                ),
            );
        }
    }
    let wal = host.data_dir.join("infinibay.db-wal");
    finding.check(wal.exists(), format!("files: {}", files.join(", ")));
    // As another user, for real (needs root to switch users; the CI runs tests as root).
    // SAFETY: geteuid has no failure mode.
    if unsafe { libc::geteuid() } == 0 {
        let read = std::process::Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "cat"])
            .arg(host.data_dir.join("infinibay.db"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        finding.check(
            read.is_ok_and(|s| !s.success()),
            "`nobody` cannot read infinibay.db",
        );
        // And `doctor` says so when the modes are loosened behind the host's back.
        std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o644)).ok();
        let mut doctor = std::process::Command::new(hostile_common::binary());
        doctor
            .args(["doctor", "--data-dir"])
            .arg(&host.data_dir)
            .arg("--socket-dir")
            .arg(&host.socket_dir);
        // Its configuration refuses unknown INFINIBAY_* variables (the report mode's included).
        for (key, _) in std::env::vars() {
            if key.starts_with("INFINIBAY_") {
                doctor.env_remove(key);
            }
        }
        let doctor = doctor.output();
        let said = doctor
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        let flagged = said.contains("PROBLEM") && said.contains("infinibay.db-wal is 0644");
        finding.check(
            flagged,
            if flagged {
                "doctor flags a WAL loosened to 0644".to_owned()
            } else {
                format!("doctor flags a WAL loosened to 0644; it said:\n{said}")
            },
        );
    } else {
        eprintln!("not root: cannot read the files as another user; modes checked only");
    }
    finding.conclude();
    host.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 6. Connections that never authenticate.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_sent_requests_and_silent_websockets_are_disconnected_and_bounded() {
    let _one = ONE_AT_A_TIME.lock().await;
    let host = Host::start(HostOptions {
        api: vec![
            ("header_timeout_secs", "3".into()),
            ("handshake_timeout_secs", "3".into()),
        ],
        ..HostOptions::default()
    })
    .await;
    let mut finding = Finding::new(
        "6. 300 half-sent requests and silent WebSockets from 5 addresses, 100 more from one",
        &host,
    );
    let watch = Watch::after_idle(&host, IDLE_SAMPLES).await;

    // 5 addresses × 60: 20 half-sent requests, 20 graphql-ws without connection_init, 20
    // graphql-ws whose init carries no valid token.
    let mut half_sent = Vec::new();
    let mut silent = Vec::new();
    for a in 0..5 {
        let ip = format!("127.0.2.{}", a + 1);
        for _ in 0..20 {
            if let Ok(mut tcp) = tcp_from(&ip, &host).await {
                let _ = tcp
                    .write_all(b"POST /graphql HTTP/1.1\r\nHost: infinibay\r\nContent-Le")
                    .await;
                half_sent.push(tcp);
            }
        }
        for i in 0..40 {
            let Ok(tcp) = tcp_from(&ip, &host).await else {
                continue;
            };
            let mut request = format!("ws://{}/graphql", host.addr)
                .into_client_request()
                .expect("request");
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                "graphql-transport-ws".parse().expect("header"),
            );
            if let Ok((mut ws, _)) = tokio_tungstenite::client_async(request, tcp).await {
                if i % 2 == 1 {
                    let _ = ws
                        .send(Message::text(
                            json!({"type": "connection_init", "payload": {}}).to_string(),
                        ))
                        .await;
                }
                silent.push(ws);
            }
        }
    }
    let opened = (half_sent.len(), silent.len());
    // One more address with 100 at once: beyond the per-address bound they are closed at once.
    let mut flood = Vec::new();
    for _ in 0..100 {
        if let Ok(tcp) = tcp_from("127.0.3.1", &host).await {
            flood.push(tcp);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut flood_closed = 0;
    for tcp in &mut flood {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(20), tcp.read(&mut byte)).await
        {
            flood_closed += 1;
        }
    }
    finding.check(
        flood_closed >= 30,
        format!("100 connections from one address: {flood_closed} closed at once"),
    );
    drop(flood);

    // Wait past the timeouts (3 s here; 10 s by default), then count what is still open.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut still_open_http = 0;
    for tcp in &mut half_sent {
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(50), tcp.read(&mut buf)).await {
            Err(_) => still_open_http += 1,
            Ok(Ok(0)) | Ok(Err(_)) => {}
            // An answer (408) followed by a close is fine too; only silence is open.
            Ok(Ok(_)) => {}
        }
    }
    let mut still_open_ws = 0;
    let mut codes = std::collections::BTreeMap::<u16, usize>::new();
    for ws in &mut silent {
        match closed_within(ws, Duration::from_millis(50)).await {
            None => still_open_ws += 1,
            Some(code) => *codes.entry(code).or_default() += 1,
        }
    }
    finding.check(
        still_open_http == 0 && still_open_ws == 0,
        format!(
            "after 6 s: {still_open_http} of {} half-sent requests and {still_open_ws} of {} silent graphql-ws connections still open (close codes {codes:?})",
            opened.0, opened.1
        ),
    );
    finding.measured(watch.finish().await);
    finding.conclude();
    host.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 7. GraphiQL and introspection.

const INTROSPECTION: &str = "{ __schema { queryType { name } } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graphiql_and_introspection_are_off_unless_switched_on_and_then_under_the_csp() {
    let _one = ONE_AT_A_TIME.lock().await;
    let host = Host::start(HostOptions::default()).await;
    let mut finding = Finding::new("7. GraphiQL from a CDN, introspection", &host);
    let page = reqwest::get(format!("{}/graphql", host.url)).await;
    let (status, body) = match page {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
        Err(_) => (0, String::new()),
    };
    let from_cdn = body.contains("unpkg.com") || body.contains("cdn.jsdelivr");
    finding.check(
        status == 404 && !from_cdn,
        format!(
            "GET /graphql (default): {status}{}",
            if from_cdn {
                ", GraphiQL from a CDN"
            } else {
                ""
            }
        ),
    );
    let (_, r) = host
        .gql(
            &reqwest::Client::new(),
            Some(&host.bystander.token),
            INTROSPECTION,
            json!({}),
        )
        .await;
    finding.check(
        r["data"]["__schema"].is_null(),
        format!(
            "introspection (default): {}",
            if r["data"]["__schema"].is_null() {
                "refused"
            } else {
                "answered"
            }
        ),
    );
    host.stop().await;

    if Generation::from_env() == Generation::Current {
        let host = Host::start(HostOptions {
            api: vec![("graphiql", "true".into())],
            ..HostOptions::default()
        })
        .await;
        let page = reqwest::get(format!("{}/graphql", host.url))
            .await
            .expect("GET /graphql");
        let csp = page
            .headers()
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let status = page.status().as_u16();
        let body = page.text().await.unwrap_or_default();
        let dashboard_csp = reqwest::get(format!("{}/", host.url))
            .await
            .ok()
            .and_then(|r| {
                r.headers()
                    .get("content-security-policy")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            });
        finding.check(
            status == 200
                && csp.contains("script-src 'self'")
                && body.contains("/assets/graphiql/graphiql-")
                && !body.contains("https://")
                && dashboard_csp.as_deref().is_none_or(|d| d == csp),
            format!("GET /graphql with api.graphiql = true: {status}, CSP `{csp}`, the bundle from /assets/graphiql/, no script from elsewhere"),
        );
        let (_, r) = host
            .gql(
                &reqwest::Client::new(),
                Some(&host.bystander.token),
                INTROSPECTION,
                json!({}),
            )
            .await;
        finding.check(
            r["data"]["__schema"]["queryType"]["name"].is_string(),
            "introspection with api.graphiql = true: answered",
        );
        host.stop().await;
    }
    finding.conclude();
}

// ---------------------------------------------------------------------------------------------
// 8. Refused commands in the audit trail.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_unsafe_command_is_in_the_command_log_with_its_reason() {
    let _one = ONE_AT_A_TIME.lock().await;
    let host = Host::start(HostOptions::default()).await;
    let mut finding = Finding::new("8. a USER's refused UNSAFE command in commandLogs", &host);
    let client = reqwest::Client::new();
    let (_, r) = host
        .gql(
            &client,
            Some(&host.attacker.token),
            "mutation($id: ID!) { executeVmCommand(vmId: $id, command: {type: UNSAFE, rawCommand: \"cat /etc/shadow\"}) { success } }",
            json!({"id": host.attacker_vm()}),
        )
        .await;
    finding.check(
        error_code(&r) == Some("FORBIDDEN"),
        format!("the command: {}", error_code(&r).unwrap_or("not refused")),
    );
    let mut found = Value::Null;
    for _ in 0..50 {
        let (_, logs) = host
            .gql(
                &client,
                Some(&host.admin.token),
                "query($id: ID!) { commandLogs(vmId: $id) { kind success response user { username } } }",
                json!({"id": host.attacker_vm()}),
            )
            .await;
        if let Some(entry) = logs["data"]["commandLogs"]
            .as_array()
            .and_then(|l| l.iter().find(|e| e["user"]["username"] == json!("mallory")))
        {
            found = entry.clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    finding.check(
        found["response"]["code"] == json!("forbidden"),
        format!("in commandLogs: {found}"),
    );
    finding.conclude();
    host.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 9. Smaller gaps.

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stolen_token_cannot_change_the_password_without_the_current_one() {
    let _one = ONE_AT_A_TIME.lock().await;
    let host = Host::start(HostOptions::default()).await;
    let mut finding = Finding::new(
        "9a. changing one's own password without the current one",
        &host,
    );
    let (_, r) = host
        .gql(
            &client_from(ATTACKER_IP),
            Some(&host.victim.token),
            "mutation($id: ID!) { setUserPassword(id: $id, password: \"taken-over-account\") }",
            json!({"id": host.victim.id}),
        )
        .await;
    finding.check(
        r["data"]["setUserPassword"] != json!(true),
        format!(
            "setUserPassword without currentPassword: {}",
            error_code(&r).unwrap_or("changed")
        ),
    );
    finding.conclude();
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_are_not_served_on_the_main_listener() {
    let _one = ONE_AT_A_TIME.lock().await;
    let host = Host::start(HostOptions::default()).await;
    let mut finding = Finding::new("9b. every VM's metrics on the main listener", &host);
    let main = reqwest::get(format!("{}/metrics", host.url)).await;
    let main_status = main.map(|r| r.status().as_u16()).unwrap_or(0);
    finding.check(
        main_status == 404,
        format!("GET /metrics on the main listener: {main_status}"),
    );
    if host.generation == Generation::Current {
        let own = reqwest::get(&host.metrics_url).await;
        let text = match own {
            Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
            _ => String::new(),
        };
        finding.check(
            text.contains("infinibay_vm_up"),
            "GET /metrics on the metrics listener (127.0.0.1): 200",
        );
    }
    finding.conclude();
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_install_token_dies_with_its_issuers_password_change_and_deletion() {
    let _one = ONE_AT_A_TIME.lock().await;
    let host = Host::start(HostOptions::default()).await;
    let mut finding = Finding::new(
        "9c. install tokens after their issuer's password change and deletion",
        &host,
    );
    let binaries = host.data_dir.join("infiniservice/binaries/linux");
    std::fs::create_dir_all(&binaries).expect("dir");
    std::fs::write(binaries.join("infiniservice"), b"\x7fELF agent").expect("binary");
    let client = reqwest::Client::new();
    let install_token = |token: String| {
        let client = client.clone();
        let host_url = host.url.clone();
        let vm = host.attacker_vm().to_owned();
        async move {
            let (_, r) = hostile_common::gql_with(
                &client,
                &host_url,
                Some(&token),
                "query($id: ID!) { vmInstallToken(vmId: $id) }",
                json!({"id": vm}),
            )
            .await;
            r["data"]["vmInstallToken"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        }
    };
    let download = |install: String| {
        let url = format!("{}/infiniservice/linux/binary?token={install}", host.url);
        async move {
            reqwest::get(url)
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    let before_change = install_token(host.attacker.token.clone()).await;
    let works = download(before_change.clone()).await;
    let (_, r) = host
        .gql(
            &client,
            Some(&host.admin.token),
            "mutation($id: ID!) { setUserPassword(id: $id, password: \"another-password\") }",
            json!({"id": host.attacker.id}),
        )
        .await;
    assert_eq!(r["data"]["setUserPassword"], json!(true), "{r}");
    let after_change = download(before_change).await;
    finding.check(
        works == 200 && after_change == 401,
        format!("download: {works} before, {after_change} after the issuer's password change"),
    );
    let fresh = host.login_as(&client, "mallory", "another-password").await;
    let second = install_token(fresh).await;
    let (_, r) = host
        .gql(
            &client,
            Some(&host.admin.token),
            "mutation($id: ID!) { deleteUser(id: $id) }",
            json!({"id": host.attacker.id}),
        )
        .await;
    assert_eq!(r["data"]["deleteUser"], json!(true), "{r}");
    let after_delete = download(second).await;
    finding.check(
        after_delete == 401,
        format!("download after the issuer's deletion: {after_delete}"),
    );
    finding.conclude();
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_never_reach_the_log_even_at_rust_log_trace() {
    let _one = ONE_AT_A_TIME.lock().await;
    let host = Host::start(HostOptions {
        rust_log: Some("trace"),
        ..HostOptions::default()
    })
    .await;
    let mut finding = Finding::new("9d. JWTs in the log at RUST_LOG=trace", &host);
    let token = host.bystander.token.clone();
    // Socket.IO with the token in its CONNECT packet, graphql-ws with it in connection_init.
    if let SioConnect::Connected(mut client, _) = SioClient::connect(host.addr, Some(&token)).await
    {
        let _ = client
            .emit_ack("subscribe:vm", json!(host.bystander_vm()))
            .await;
    }
    if let Some(mut ws) = graphql_ws_init(&host, &token).await {
        let _ = ws.close(None).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = host.log_text();
    // The signature part is what makes a token usable.
    let signature = token.rsplit('.').next().unwrap_or(&token);
    finding.check(
        log.len() > 10_000 && !log.contains(signature),
        format!(
            "{} KB of trace log, the token {}",
            log.len() / 1024,
            if log.contains(signature) {
                "appears in it"
            } else {
                "never appears"
            }
        ),
    );
    finding.conclude();
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn vm_exec_prints_a_guests_c1_control_characters_escaped() {
    use hostile_common::core_common::{AgentOpts, FakeVm, agent};
    let _one = ONE_AT_A_TIME.lock().await;
    let host = Host::start(HostOptions::default()).await;
    let mut finding = Finding::new(
        "9e. `infinibay vm exec` showing a guest's C1 control characters",
        &host,
    );
    // A guest whose SystemInfo answer carries CSI in both forms (ESC [ and the C1 U+009B).
    let hostile = AgentOpts {
        system_info: Some(json!({"hostname": "x\u{1b}[2Jy\u{9b}2Jz\u{85}"})),
        ..AgentOpts::default()
    };
    let guest = FakeVm::spawn(&host.socket_dir, None, agent(hostile));
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let (_, r) = host
            .gql(
                &client,
                Some(&host.admin.token),
                "query($id: ID!) { vm(id: $id) { status } }",
                json!({"id": guest.id}),
            )
            .await;
        if r["data"]["vm"]["status"] == json!("ONLINE") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the fake guest did not come online: {r}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut raw_c1 = Vec::new();
    for json_flag in [false, true] {
        let mut command = tokio::process::Command::new(hostile_common::binary());
        command.arg("vm");
        if json_flag {
            command.arg("--json");
        }
        let output = command
            .args(["exec", &guest.id, "--action", "SystemInfo"])
            .env("INFINIBAY_SERVER", &host.url)
            .env("INFINIBAY_TOKEN", &host.admin.token)
            .env("HOME", host.dir())
            .output()
            .await
            .expect("run infinibay vm exec");
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let raw = stdout.contains(['\u{9b}', '\u{85}', '\u{1b}']);
        raw_c1.push(format!(
            "{}: {}",
            if json_flag { "--json" } else { "text" },
            if raw {
                "raw control characters".to_owned()
            } else if stdout.contains("hostname") {
                "escaped".to_owned()
            } else {
                format!(
                    "no output ({})",
                    String::from_utf8_lossy(&output.stderr).trim()
                )
            }
        ));
        finding.check(
            !raw && stdout.contains("hostname"),
            raw_c1.last().cloned().unwrap_or_default(),
        );
    }
    finding.conclude();
    guest.remove().await;
    host.stop().await;
}

//! The web console through the host's API (`docs/console.md`): `vmConsoleTicket` on the real
//! server (`serve::run` with the API router), the `/console/{vm}` WebSocket relaying to a VNC
//! server on a real UNIX socket in the core's socket directory, the session in the command
//! log, and revocation ending open consoles. The QEMU guest's VNC behind `infinibay serve`
//! is `crates/console/tests/qemu.rs`.

mod api_common;

use std::path::Path;
use std::time::{Duration, Instant};

use api_common::{Server, error_code};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const MINT: &str = "mutation($id: ID!) { vmConsoleTicket(vmId: $id) { ticket expiresAt path } }";
const GREETING: &[u8] = b"RFB 003.008\n";

type Viewer =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A VNC server stand-in on `<socket dir>/vnc-<vm>.sock`: greets each connection with the
/// RFB version, then echoes what the viewer sends.
fn vnc_server(socket_dir: &Path, vm: &str) -> tokio::task::JoinHandle<()> {
    let listener =
        UnixListener::bind(socket_dir.join(format!("vnc-{vm}.sock"))).expect("bind VNC socket");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                if conn.write_all(GREETING).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 1024];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 || conn.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    })
}

async fn mint(server: &Server, token: &str, vm: &str) -> Value {
    server.gql(Some(token), MINT, json!({"id": vm})).await
}

async fn open(server: &Server, path: &str) -> Viewer {
    let mut request = format!("ws://{}{path}", server.addr)
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("binary"));
    let (ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("WebSocket handshake");
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.as_bytes()),
        Some(&b"binary"[..])
    );
    ws
}

/// The next binary message, skipping pings.
async fn next_bytes(ws: &mut Viewer) -> Vec<u8> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => return b.to_vec(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            other => panic!("expected bytes, got {other:?}"),
        }
    }
}

/// The close code the server ends the session with.
async fn closed_with(ws: &mut Viewer, within: Duration) -> u16 {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => return u16::from(frame.code),
            Ok(Some(Ok(Message::Close(None)))) => return u16::from(CloseCode::Status),
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

async fn open_console(server: &Server, token: &str, vm: &str) -> Viewer {
    let r = mint(server, token, vm).await;
    let path = r
        .pointer("/data/vmConsoleTicket/path")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("vmConsoleTicket: {r}"))
        .to_owned();
    let mut ws = open(server, &path).await;
    assert_eq!(next_bytes(&mut ws).await, GREETING);
    ws
}

async fn console_logs(server: &Server, token: &str, vm: &str) -> Vec<Value> {
    let r = server
        .gql(
            Some(token),
            "query($id: ID!) { commandLogs(vmId: $id) { kind success durationMs command response user { username } } }",
            json!({"id": vm}),
        )
        .await;
    r.pointer("/data/commandLogs")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("commandLogs: {r}"))
        .iter()
        .filter(|l| l["kind"] == "console")
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_ticket_opens_the_vms_vnc_socket_once_and_the_session_lands_in_the_command_log() {
    let server = Server::start(1, Duration::from_millis(500)).await;
    let vm = server.vm_id.clone();
    let _vnc = vnc_server(&server.socket_dir, &vm);
    let owner = server.login(&server.owner).await;

    let r = mint(&server, &owner, &vm).await;
    let ticket = &r["data"]["vmConsoleTicket"];
    assert_eq!(ticket["ticket"].as_str().map(str::len), Some(43), "{r}");
    let path = ticket["path"].as_str().expect("path");
    assert_eq!(
        path,
        format!(
            "/console/{vm}?ticket={}",
            ticket["ticket"].as_str().expect("ticket")
        )
    );
    let expires: chrono::DateTime<chrono::Utc> = ticket["expiresAt"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("expiresAt");
    let ttl = expires - chrono::Utc::now();
    assert!(
        ttl > chrono::Duration::seconds(20) && ttl <= chrono::Duration::seconds(30),
        "{ttl}"
    );

    let mut ws = open(&server, path).await;
    assert_eq!(next_bytes(&mut ws).await, GREETING);
    ws.send(Message::Binary(b"key".to_vec().into()))
        .await
        .expect("send");
    assert_eq!(next_bytes(&mut ws).await, b"key");
    let mut again = open(&server, path).await;
    assert_eq!(closed_with(&mut again, Duration::from_secs(5)).await, 4410);
    ws.close(None).await.expect("close");
    drop(ws);

    // One refused attempt and one session, both with their user, in the command log.
    let admin = server.login(&server.admin).await;
    let started = Instant::now();
    let logs = loop {
        let logs = console_logs(&server, &admin, &vm).await;
        if logs.len() >= 2 {
            break logs;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{logs:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let session = logs
        .iter()
        .find(|l| l["success"] == true)
        .unwrap_or_else(|| panic!("{logs:?}"));
    assert_eq!(session["user"]["username"], "owner");
    assert_eq!(session["response"]["code"], 1000, "{session}");
    assert_eq!(session["response"]["bytes_from_viewer"], 3, "{session}");
    assert_eq!(
        session["response"]["bytes_to_viewer"],
        GREETING.len() + 3,
        "{session}"
    );
    assert!(
        session["command"]["console"]["remote"]
            .as_str()
            .is_some_and(|r| r.starts_with("127.0.0.1:")),
        "the remote address comes from the listener: {session}"
    );
    let refused = logs
        .iter()
        .find(|l| l["success"] == false)
        .unwrap_or_else(|| panic!("{logs:?}"));
    assert_eq!(refused["response"]["code"], 4410, "{refused}");
    assert_eq!(refused["user"]["username"], "owner");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minting_is_bounded_per_user_and_bad_input_gets_stable_codes() {
    let server = Server::start(1, Duration::from_millis(500)).await;
    let vm = server.vm_id.clone();
    let owner = server.login(&server.owner).await;
    let other = server.login(&server.other).await;

    assert_eq!(
        error_code(&mint(&server, &other, &vm).await).as_deref(),
        Some("FORBIDDEN")
    );
    for missing in ["no-such-vm", "", "../../etc/passwd"] {
        assert_eq!(
            error_code(&mint(&server, &owner, missing).await).as_deref(),
            Some("NOT_FOUND"),
            "{missing:?}"
        );
    }
    let r = server.gql(None, MINT, json!({"id": vm})).await;
    assert_eq!(error_code(&r).as_deref(), Some("UNAUTHENTICATED"));

    let limit = infinibay::api::console::TICKETS_PER_MINUTE;
    for n in 0..limit {
        let r = mint(&server, &owner, &vm).await;
        assert!(r.get("errors").is_none(), "ticket {n}: {r}");
    }
    let r = mint(&server, &owner, &vm).await;
    assert_eq!(error_code(&r).as_deref(), Some("RATE_LIMITED"), "{r}");
    // Another user's bound is their own.
    let admin = server.login(&server.admin).await;
    assert!(mint(&server, &admin, &vm).await.get("errors").is_none());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_vm_deleting_the_user_or_the_vm_ends_open_consoles() {
    let server = Server::start(1, Duration::from_millis(500)).await;
    let vm = server.vm_id.clone();
    let _vnc = vnc_server(&server.socket_dir, &vm);
    let admin = server.login(&server.admin).await;
    let owner = server.login(&server.owner).await;

    // The VM is given to someone else: the owner's console ends with 4002, the admin's stays.
    let mut owners = open_console(&server, &owner, &vm).await;
    let mut admins = open_console(&server, &admin, &vm).await;
    let r = server
        .gql(
            Some(&admin),
            "mutation($id: ID!, $u: ID) { setVmOwner(vmId: $id, userId: $u) { id } }",
            json!({"id": vm, "u": server.victim.record.id.to_string()}),
        )
        .await;
    assert!(r.get("errors").is_none(), "{r}");
    assert_eq!(closed_with(&mut owners, Duration::from_secs(5)).await, 4002);
    admins
        .send(Message::Binary(b"still".to_vec().into()))
        .await
        .expect("send");
    assert_eq!(next_bytes(&mut admins).await, b"still");

    // The new owner is deleted: their console ends with 4002.
    let victim = server.login(&server.victim).await;
    let mut victims = open_console(&server, &victim, &vm).await;
    let r = server
        .gql(
            Some(&admin),
            "mutation($id: ID!) { deleteUser(id: $id) }",
            json!({"id": server.victim.record.id.to_string()}),
        )
        .await;
    assert!(r.get("errors").is_none(), "{r}");
    assert_eq!(
        closed_with(&mut victims, Duration::from_secs(5)).await,
        4002
    );

    // The VM is deleted: every console of it ends with 4000.
    let r = server
        .gql(
            Some(&admin),
            "mutation($id: ID!) { deleteVm(vmId: $id) }",
            json!({"id": vm}),
        )
        .await;
    assert!(r.get("errors").is_none(), "{r}");
    assert_eq!(closed_with(&mut admins, Duration::from_secs(5)).await, 4000);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_changed_elsewhere_ends_the_users_console_at_the_next_sweep() {
    let server = Server::start(1, Duration::from_millis(500)).await;
    let vm = server.vm_id.clone();
    let _vnc = vnc_server(&server.socket_dir, &vm);
    let owner = server.login(&server.owner).await;
    let mut ws = open_console(&server, &owner, &vm).await;
    // Straight in the store, as `infinibay user passwd` beside the server does.
    tokio::time::sleep(Duration::from_millis(5)).await;
    server
        .store
        .users()
        .set_password(
            server.owner.record.id,
            "$argon2id$changed",
            chrono::Utc::now(),
        )
        .await
        .expect("set password");
    assert_eq!(closed_with(&mut ws, Duration::from_secs(5)).await, 4002);
    server.stop().await;
}

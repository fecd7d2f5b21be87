//! The official `socket.io-client` (npm, run by node) against a real server with a simulated
//! VM: `tests/node/realtime.mjs` logs in over GraphQL, subscribes, must receive
//! `metricsUpdate` within 2 s, sees another user refused and a deleted user disconnected.
//! `tests/node/seed_events.mjs` asserts every Socket.IO event the seeds name, with a fake
//! guest this test brings and removes when the script asks (`vm:online`, `vm:error`,
//! `vm:offline`).
//! Needs `npm ci --prefix tests/node` first.

mod api_common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use api_common::Server;
use api_common::core_common::{FakeVm, GuestFn, line};
use infinibay::protocol::message::{GuestError, GuestMessage};
use infinibay::protocol::samples::{Jitter, identification, small_metrics};

fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_client_receives_metrics_and_is_refused_and_disconnected_as_the_rules_say() {
    let dir = node_dir();
    assert!(
        dir.join("node_modules/socket.io-client").is_dir(),
        "socket.io-client is not installed: run `npm ci --prefix tests/node`"
    );
    let server = Server::start(1, Duration::from_millis(250)).await;
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("node")
            .arg(dir.join("realtime.mjs"))
            .env("SERVER", &server.url)
            .env("VM_ID", &server.vm_id)
            .env("OWNER_USER", &server.owner.record.username)
            .env("OWNER_PASS", &server.owner.password)
            .env("OTHER_USER", &server.other.record.username)
            .env("OTHER_PASS", &server.other.password)
            .env("ADMIN_USER", &server.admin.record.username)
            .env("ADMIN_PASS", &server.admin.password)
            .env("VICTIM_USER", &server.victim.record.username)
            .env("VICTIM_PASS", &server.victim.password)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("node finished within 60 s")
    .expect("node runs (is it installed?)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("node: {stdout}");
    assert!(
        output.status.success(),
        "node test failed: {stdout}\n{stderr}"
    );
    let result: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("JSON result line");
    assert_eq!(result["ok"], serde_json::json!(true), "{result}");
    server.stop().await;
}

/// Identification, one error, then a sample every 200 ms.
fn erring_guest() -> GuestFn {
    Arc::new(|stream| {
        Box::pin(async move {
            let (mut rd, mut wr) = stream.into_split();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(rd.read(&mut buf).await, Ok(n) if n > 0) {}
            });
            let mut bytes = line(&GuestMessage::VmIdentification(identification("events")));
            let mut jitter = Jitter::new(7);
            bytes.extend(line(&GuestMessage::SystemMetrics(small_metrics(
                &mut jitter,
                0,
            ))));
            bytes.extend(line(&GuestMessage::Error(GuestError {
                code: Some("collector_failed".into()),
                error: "reading /proc/diskstats failed".into(),
                ..GuestError::default()
            })));
            if wr.write_all(&bytes).await.is_err() {
                return;
            }
            for seq in 1u64.. {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let sample = line(&GuestMessage::SystemMetrics(small_metrics(
                    &mut jitter,
                    seq,
                )));
                if wr.write_all(&sample).await.is_err() {
                    return;
                }
            }
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_client_receives_every_event_the_seeds_name() {
    let dir = node_dir();
    assert!(
        dir.join("node_modules/socket.io-client").is_dir(),
        "socket.io-client is not installed: run `npm ci --prefix tests/node`"
    );
    let server = Server::start(1, Duration::from_millis(250)).await;
    let guest_id = uuid::Uuid::new_v4().to_string();
    let mut child = tokio::process::Command::new("node")
        .arg(dir.join("seed_events.mjs"))
        .env("SERVER", &server.url)
        .env("VM_ID", &server.vm_id)
        .env("GUEST_VM_ID", &guest_id)
        .env("OWNER_USER", &server.owner.record.username)
        .env("OWNER_PASS", &server.owner.password)
        .env("ADMIN_USER", &server.admin.record.username)
        .env("ADMIN_PASS", &server.admin.password)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (is it installed?)");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut guest = None;
    let mut last = String::new();
    let driven = tokio::time::timeout(Duration::from_secs(90), async {
        while let Ok(Some(text)) = lines.next_line().await {
            eprintln!("node: {text}");
            match text.as_str() {
                "WANT guest-online" => {
                    guest = Some(FakeVm::spawn(
                        &server.socket_dir,
                        Some(&guest_id),
                        erring_guest(),
                    ));
                }
                "WANT guest-offline" => {
                    if let Some(g) = guest.take() {
                        g.remove().await;
                    }
                }
                _ => last = text,
            }
        }
    })
    .await;
    assert!(driven.is_ok(), "node did not finish within 90 s");
    let status = child.wait().await.expect("node exit status");
    assert!(status.success(), "node test failed: {last}");
    let result: serde_json::Value = serde_json::from_str(&last).expect("JSON result line");
    assert_eq!(result["ok"], serde_json::json!(true), "{result}");
    if let Some(g) = guest.take() {
        g.remove().await;
    }
    server.stop().await;
}

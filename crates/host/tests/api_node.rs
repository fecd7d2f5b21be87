//! The official `socket.io-client` (npm, run by node) against a real server with a simulated
//! VM: `tests/node/realtime.mjs` logs in over GraphQL, subscribes, must receive
//! `metricsUpdate` within 2 s, sees another user refused and a deleted user disconnected.
//! Needs `npm ci --prefix tests/node` first.

mod api_common;

use std::path::PathBuf;
use std::time::Duration;

use api_common::Server;

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

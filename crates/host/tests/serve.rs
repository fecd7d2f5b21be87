//! `infinibay serve` as a process part: `/healthz` on the listen address, and a clean stop on
//! the shutdown signal. The core itself is tested in `crates/core/tests`.

#[path = "../../core/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use common::*;

/// The process's configuration around the core's test settings: the test's database, and a
/// data directory inside its temporary directory (never the source tree's `./data`).
fn host_config(env: &TestEnv) -> infinibay::Config {
    infinibay::Config {
        process: infinibay::config::ProcessConfig {
            database: Some(env.db_url.clone()),
            data_dir: env.dir.path().join("data"),
            ..Default::default()
        },
        core: env.config(),
        // Any free port: tests run side by side, and a host may run on this machine.
        api: infinibay::api::limits::ApiConfig {
            metrics_listen: "127.0.0.1:0".parse().expect("address"),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_healthz_answers_on_the_listen_address() {
    let env = TestEnv::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let config = host_config(&env);
    let server = tokio::spawn(infinibay::serve::run(
        config,
        listener,
        async move {
            let _ = stop_rx.await;
        },
        |_| axum::Router::new(),
    ));
    let mut stream = None;
    for _ in 0..100 {
        if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
            stream = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut stream = stream.expect("connect to host");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"status\":\"ok\""), "{response}");
    assert!(response.contains("\"store\":\"sqlite\""), "{response}");
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("host stops on the shutdown signal")
        .expect("join")
        .expect("clean exit");
}

//! The host against the real guest agent (`infiniservice --listen-unix`), which plays QEMU's
//! `server=on` socket itself: handshake, metrics and inventories stored, commands, cancel,
//! the agent restarting under a running host.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};
use std::time::Duration;

use common::*;
use infinibay_core::Command;
use infinibay_core::protocol::message::{ErrorCode, SafeAction};
use infinibay_core::store::{InventoryKind, VmStatus};

/// `target/debug/infiniservice`, built on demand.
fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/real_agent-HASH → target/debug
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_owned();
    let bin = dir.join("infiniservice");
    if !bin.exists() {
        let status = Process::new(env!("CARGO"))
            .args(["build", "-p", "infiniservice", "--bin", "infiniservice"])
            .status()
            .expect("run cargo build for the agent");
        assert!(status.success(), "building infiniservice failed");
    }
    assert!(bin.exists(), "{} missing", bin.display());
    bin
}

struct Agent {
    child: Child,
}

impl Agent {
    fn start(dir: &Path, socket: &Path) -> Self {
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            "collection_interval = 1\n[policy]\nallow_unsafe = true\n[limits]\ninventory_interval = 1\n",
        )
        .expect("write agent config");
        let child = Process::new(agent_binary())
            .arg("--listen-unix")
            .arg(socket)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start infiniservice");
        Self { child }
    }

    fn stop(mut self) {
        // SIGTERM first, as systemd would.
        // SAFETY: the pid is our own child's.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_agent_is_ingested_and_answers_commands() {
    let env = TestEnv::new();
    let id = uuid::Uuid::new_v4().to_string();
    let socket = env.sockets.join(format!("vm-{id}.sock"));
    let agent = Agent::start(env.dir.path(), &socket);
    let host = env.start(env.config()).await;
    wait_online(&host, &id).await;
    let snapshot = host.vm(&id).expect("vm");
    let ident = snapshot.agent.expect("the agent identified itself");
    assert_eq!(ident.os, "linux");
    assert!(!ident.agent_version.is_empty());

    let store = host.store();
    wait_samples(&store, &id, 2).await;
    let sample = store
        .latest_sample(&id)
        .await
        .expect("query")
        .expect("sample");
    assert!(sample.mem_total_kb > 0, "real memory figures: {sample:?}");
    let s = store.clone();
    let i2 = id.clone();
    wait_for("process inventory stored", Duration::from_secs(10), || {
        let s = s.clone();
        let id = i2.clone();
        async move {
            s.inventory(&id, InventoryKind::Processes)
                .await
                .ok()
                .flatten()
                .is_some()
        }
    })
    .await;

    let echo = host
        .send_command(
            &id,
            Command::shell("echo infinibay"),
            Some(Duration::from_secs(10)),
        )
        .await
        .expect("unsafe command answered");
    assert!(echo.success, "{echo:?}");
    assert_eq!(echo.stdout.trim(), "infinibay");
    let info = host
        .send_command(&id, SafeAction::SystemInfo, Some(Duration::from_secs(10)))
        .await
        .expect("safe command answered");
    assert!(info.success, "{info:?}");

    let long = host
        .start_command(&id, Command::shell("sleep 30"), None)
        .expect("sent");
    let long_id = long.id().to_owned();
    let waiter = tokio::spawn(long.wait(Some(Duration::from_secs(20))));
    tokio::time::sleep(Duration::from_millis(300)).await;
    host.cancel_command(&id, &long_id).expect("cancel sent");
    let cancelled = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("answered promptly")
        .expect("join")
        .expect("a response");
    assert_eq!(
        cancelled.error.map(|e| e.code),
        Some(ErrorCode::Cancelled),
        "cancel reached the real agent"
    );

    // The agent restarts (a new socket file appears for the same VM): the host follows.
    agent.stop();
    let h = host.clone();
    let i3 = id.clone();
    wait_for(
        "offline when the agent's socket goes",
        Duration::from_secs(10),
        || {
            let off = h.vm(&i3).is_some_and(|v| v.status == VmStatus::Offline);
            async move { off }
        },
    )
    .await;
    let before = stored_cpus(&store, &id).await.len();
    let _again = Agent::start(env.dir.path(), &socket);
    wait_online(&host, &id).await;
    wait_samples(&store, &id, before + 2).await;
    assert_eq!(store.list_vms().await.expect("vms").len(), 1);
    host.shutdown().await;
}

//! A real agent binary listening on a real UNIX socket, and a host that talks to it the way
//! infinibay does (0xFF + hello, JSON lines), decoding with the protocol crate.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use infinibay_protocol::message::CommandResponse;
use infinibay_protocol::{GuestMessage, GuestStreamDecoder};

/// Policy every test config starts from: power and package changes are never allowed to run
/// on the machine running the tests.
pub const SAFE_DENY: &str = r#"denied_safe_actions = ["Shutdown", "Reboot", "PackageInstall", "PackageRemove", "PackageUpdate"]"#;

pub struct Agent {
    child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
}

impl Agent {
    /// Start the agent with `extra` appended to a config that denies the dangerous actions.
    /// `allow_unsafe` goes into `[policy]`.
    pub fn start(allow_unsafe: bool, extra: &str) -> Self {
        let config = format!(
            "collection_interval = 3600\n{extra}\n[policy]\nallow_unsafe = {allow_unsafe}\n{SAFE_DENY}\n"
        );
        Self::start_with_config(&config)
    }

    pub fn start_with_config(config: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("isvc")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).expect("write config");
        let socket = dir.path().join("a.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_infiniservice"))
            .arg("--listen-unix")
            .arg(&socket)
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .env("INFINIBAY_VM_ID", "test-vm")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("agent.log")).expect("log file"),
            ))
            .spawn()
            .expect("spawn agent");
        let started = Instant::now();
        while !socket.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "agent did not bind its socket"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { child, dir, socket }
    }

    pub fn connect(&self) -> Host {
        let stream = UnixStream::connect(&self.socket).expect("connect to agent");
        Host {
            stream,
            decoder: GuestStreamDecoder::default(),
            queue: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SIGTERM first: the agent kills the process groups of commands still running.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Host {
    pub stream: UnixStream,
    decoder: GuestStreamDecoder,
    queue: Vec<GuestMessage>,
}

impl Host {
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to agent");
    }

    pub fn send_json(&mut self, value: serde_json::Value) {
        let mut line = serde_json::to_vec(&value).expect("encode");
        line.push(b'\n');
        self.send(&line);
    }

    /// What infinibay does on every connect.
    pub fn hello(&mut self) {
        self.send(b"\xff{\"type\":\"hello\",\"protocol_version\":1}\n");
    }

    /// The next message, or None when `timeout` passes first.
    pub fn next(&mut self, timeout: Duration) -> Option<GuestMessage> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.queue.is_empty() {
                return Some(self.queue.remove(0));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("timeout");
            let mut buf = [0u8; 65536];
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => {
                    let queue = &mut self.queue;
                    self.decoder.decode(&buf[..n], |item| match item {
                        Ok(m) => queue.push(m),
                        Err(e) => panic!("agent sent a bad line: {e}"),
                    });
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return None;
                }
                Err(e) => panic!("read from agent: {e}"),
            }
        }
    }

    /// Wait for the first message matching `pred`; the others stay queued for later waits.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&GuestMessage) -> bool,
    ) -> GuestMessage {
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        let found = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Some(m) if pred(&m) => break Some(m),
                Some(m) => skipped.push(m),
                None => break None,
            }
        };
        skipped.append(&mut self.queue);
        self.queue = skipped;
        found.unwrap_or_else(|| panic!("no {what} within {timeout:?}"))
    }

    /// The response to command `id`.
    pub fn response(&mut self, id: &str, timeout: Duration) -> CommandResponse {
        match self.wait_for(
            timeout,
            &format!("response {id}"),
            |m| matches!(m, GuestMessage::Response(r) if r.id == id),
        ) {
            GuestMessage::Response(r) => r,
            _ => unreachable!(),
        }
    }

    /// Everything that arrives within `window`.
    pub fn collect(&mut self, window: Duration) -> Vec<GuestMessage> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        while let Some(m) = self.next(deadline.saturating_duration_since(Instant::now())) {
            out.push(m);
        }
        out
    }
}

/// Live (non-zombie) processes in process group `pgid`.
pub fn live_group_members(pgid: u32) -> Vec<u32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After the name: state, ppid, pgrp.
        if fields.len() > 2 && fields[2] == pgid.to_string() && fields[0] != "Z" {
            members.push(pid);
        }
    }
    members
}

/// Wait until group `pgid` has no live member (or give up after `timeout`).
pub fn wait_group_gone(pgid: u32, timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = live_group_members(pgid);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn error_code(r: &CommandResponse) -> Option<&'static str> {
    r.error.as_ref().map(|e| e.code.as_str())
}

//! `infinibay demo` as a user runs it: it publishes the agent it runs and the installers, the
//! download routes serve them to a VM's install token, and the Linux installer, as downloaded
//! (no unit file beside it, the binary without its execute bit), installs into a scratch root
//! without systemctl.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

/// `target/<profile>/infiniservice`, beside `infinibay` (`./scripts/test` builds every binary
/// first; built here when missing).
fn agent_binary() -> PathBuf {
    let host = Path::new(env!("CARGO_BIN_EXE_infinibay"));
    let agent = host.with_file_name("infiniservice");
    if !agent.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", "infiniservice", "--bin", "infiniservice"])
            .status()
            .expect("run cargo build for the agent");
        assert!(status.success(), "building infiniservice failed");
    }
    assert!(agent.exists(), "{} missing", agent.display());
    agent
}

fn source_file(relative: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Ends the demo on drop, should the test fail half-way (`kill_on_drop` is SIGKILL, which
/// would leave its agents behind; SIGTERM lets it stop them).
struct Demo(tokio::process::Child);

impl Demo {
    fn terminate(&self) {
        if let Some(pid) = self.0.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
            // SAFETY: kill has no memory effects; the pid is our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.terminate();
    }
}

async fn graphql(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    query: &str,
    variables: Value,
) -> Value {
    let mut request = http
        .post(format!("{url}/graphql"))
        .json(&json!({"query": query, "variables": variables}));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request
        .send()
        .await
        .expect("POST /graphql")
        .json()
        .await
        .expect("GraphQL answers JSON")
}

async fn download(http: &reqwest::Client, url: &str) -> Vec<u8> {
    let response = http.get(url).send().await.expect("GET");
    assert_eq!(response.status().as_u16(), 200, "GET {url}");
    response.bytes().await.expect("body").to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_publishes_its_agent_and_the_downloaded_linux_installer_installs_alone() {
    let agent = agent_binary();
    // Short paths: the demo's sockets live under the data directory (AF_UNIX's 108 bytes).
    let scratch = tempfile::Builder::new()
        .prefix("ib-demo-")
        .tempdir_in("/tmp")
        .expect("scratch dir");
    let data_dir = scratch.path().join("data");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_infinibay"))
        .args(["demo", "--vms", "1", "--interval", "1"])
        .args(["--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--agent")
        .arg(&agent)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start infinibay demo");
    let stdout = child.stdout.take().expect("stdout");
    let demo = Demo(child);

    // The banner: where it listens and the admin's password.
    let mut lines = BufReader::new(stdout).lines();
    let (mut url, mut password) = (None::<String>, None::<String>);
    tokio::time::timeout(Duration::from_secs(120), async {
        while url.is_none() || password.is_none() {
            let line = lines
                .next_line()
                .await
                .expect("demo stdout")
                .expect("the demo ended before printing its banner");
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("dashboard") {
                url = Some(rest.trim().trim_end_matches('/').to_owned());
            } else if let Some(rest) = line.strip_prefix("password") {
                password = Some(rest.trim().to_owned());
            }
        }
    })
    .await
    .expect("the demo's banner within 120 s");
    // Keep reading, so that the demo never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let (url, password) = (url.expect("url"), password.expect("password"));

    let http = reqwest::Client::new();
    let r = graphql(
        &http,
        &url,
        None,
        "mutation($u:String!,$p:String!){ login(username:$u, password:$p){ token } }",
        json!({"u": "admin", "p": password}),
    )
    .await;
    let admin = r
        .pointer("/data/login/token")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("admin login: {r}"))
        .to_owned();
    let mut vm_id = None;
    for _ in 0..300 {
        let r = graphql(&http, &url, Some(&admin), "{ vms { id } }", json!({})).await;
        vm_id = r
            .pointer("/data/vms/0/id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if vm_id.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let vm_id = vm_id.expect("the demo's VM within 60 s");
    let r = graphql(
        &http,
        &url,
        Some(&admin),
        "query($id: ID!) { vmInstallToken(vmId: $id) }",
        json!({"id": vm_id}),
    )
    .await;
    let token = r
        .pointer("/data/vmInstallToken")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("install token: {r}"))
        .to_owned();

    // What a VM downloads with its install token: the agent the demo runs, and the installers
    // of this source tree.
    let script = download(
        &http,
        &format!("{url}/infiniservice/linux/script?token={token}"),
    )
    .await;
    let binary = download(
        &http,
        &format!("{url}/infiniservice/linux/binary?token={token}"),
    )
    .await;
    let windows_script = download(
        &http,
        &format!("{url}/infiniservice/windows/script?token={token}"),
    )
    .await;
    assert_eq!(script, source_file("deploy/install-linux.sh"));
    assert_eq!(windows_script, source_file("deploy/install-windows.ps1"));
    assert!(
        binary == std::fs::read(&agent).expect("agent bytes"),
        "the downloaded agent is not the one the demo runs"
    );
    demo.terminate();

    // Saved as curl saves them: side by side, nothing else there, the binary not executable.
    let downloads = scratch.path().join("dl");
    std::fs::create_dir(&downloads).expect("downloads dir");
    std::fs::write(downloads.join("install-linux.sh"), &script).expect("save script");
    std::fs::write(downloads.join("infiniservice"), &binary).expect("save binary");
    std::fs::set_permissions(
        downloads.join("infiniservice"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    // A systemctl that leaves a mark: with DESTDIR the installer must never run it.
    let trap = scratch.path().join("trap");
    std::fs::create_dir(&trap).expect("trap dir");
    let marker = scratch.path().join("systemctl-ran");
    std::fs::write(
        trap.join("systemctl"),
        format!("#!/bin/sh\necho \"$@\" >> '{}'\nexit 1\n", marker.display()),
    )
    .expect("write trap");
    std::fs::set_permissions(
        trap.join("systemctl"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod trap");
    let root = scratch.path().join("root");
    let path = format!(
        "{}:{}",
        trap.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let install = std::process::Command::new("bash")
        .arg(downloads.join("install-linux.sh"))
        .args(["normal", &vm_id])
        // Elsewhere than the downloads: the script finds the binary beside itself.
        .current_dir(scratch.path())
        .env("DESTDIR", &root)
        .env("PATH", path)
        // The test's agent is a debug build; the one that ships is `--profile agent`.
        .env("INFINISERVICE_ALLOW_ANY_BUILD", "1")
        .env_remove("INFINISERVICE_BINARY")
        .env_remove("INFINISERVICE_UNIT")
        .output()
        .expect("run install-linux.sh");
    let log = String::from_utf8_lossy(&install.stderr);
    assert!(install.status.success(), "install-linux.sh failed:\n{log}");
    assert!(
        log.contains("is not the size-optimised agent build (infiniservice "),
        "the build check did not run the downloaded binary:\n{log}"
    );

    let installed = root.join("opt/infiniservice/infiniservice");
    assert!(std::fs::read(&installed).expect("installed agent") == binary);
    let mode = std::fs::metadata(&installed)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(
        std::fs::read_link(root.join("usr/local/bin/infiniservice")).expect("link"),
        Path::new("/opt/infiniservice/infiniservice")
    );
    assert_eq!(
        String::from_utf8_lossy(
            &std::fs::read(root.join("etc/systemd/system/infiniservice.service"))
                .expect("installed unit")
        ),
        String::from_utf8_lossy(&source_file("deploy/infiniservice.service")),
        "the unit embedded in deploy/install-linux.sh differs from deploy/infiniservice.service"
    );
    let config = root.join("etc/infiniservice/config.toml");
    let text = std::fs::read_to_string(&config).expect("installed config");
    assert!(text.contains(&format!("vm_id = \"{vm_id}\"")), "{text}");
    assert!(
        std::fs::read_to_string(root.join("var/log/infiniservice_install.log"))
            .expect("install log")
            .contains(" done"),
        "the install log has no end"
    );
    assert!(
        !marker.exists(),
        "systemctl ran: {:?}",
        std::fs::read_to_string(&marker)
    );
    // The installed agent reads the installed config.
    let diagnosis = std::process::Command::new(&installed)
        .arg("--config")
        .arg(&config)
        .arg("--diagnose")
        .output()
        .expect("run the installed agent");
    let report = String::from_utf8_lossy(&diagnosis.stdout);
    assert!(
        report.contains("allow_unsafe = false"),
        "{report}\n{}",
        String::from_utf8_lossy(&diagnosis.stderr)
    );

    // The demo stops cleanly on SIGTERM (it was sent above).
    let mut demo = demo;
    let status = tokio::time::timeout(Duration::from_secs(30), demo.0.wait())
        .await
        .expect("the demo stops within 30 s of SIGTERM")
        .expect("wait");
    assert!(status.success(), "demo exit: {status}");
}

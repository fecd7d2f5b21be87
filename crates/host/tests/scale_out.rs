//! Scale-out with real processes on loopback: a nats-server of this test's own (it is killed and
//! restarted), a fresh PostgreSQL database, two `infinibay node` and two `infinibay api`
//! processes, a simulator per node, and the official socket.io-client (`tests/node/scale.mjs`).
//!
//! The cluster is expensive to start, so one test walks through the cases in order,
//! each a function named for what it proves; the node A and API A kills come last in their
//! turn so that the earlier cases have the whole fleet. A second test stops a PostgreSQL of
//! its own under a node.
//!
//! Needs `INFINIBAY_TEST_PG_URL` (`scripts/lib/postgres.sh`), `nats-server` (on PATH, or
//! `INFINIBAY_TEST_NATS_SERVER`) and `npm ci --prefix tests/node`.
//! The console-ticket case waits for the console's integration into the API (issue 17).

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Connection;
use tokio::io::{AsyncBufReadExt, BufReader};

use infinibay_sim::{SimArgs, Simulator};

const ADMIN_PASS: &str = "scale-out-admin-password";
const USER_PASS: &str = "scale-out-user-password";
/// The fleet's liveness settings for this test: a heartbeat every 0.5 s, a node silent for 3 s
/// is dead.
const HEARTBEAT_SECS: &str = "0.5";
const LIVENESS_SECS: f64 = 3.0;
/// Samples every 200 ms: a stored gap of a second means lost samples.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(200);

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A child process killed when dropped.
struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// This test's own nats-server, on a fixed port so that a restart comes back at the same URL.
struct Nats {
    port: u16,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl Nats {
    fn start(dir: &Path) -> Self {
        let mut nats = Self {
            port: free_port(),
            dir: dir.to_owned(),
            proc: None,
        };
        nats.restart();
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let bin =
            std::env::var("INFINIBAY_TEST_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
        let log = std::fs::File::create(self.dir.join("nats.log")).expect("nats log");
        let child = Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin} (apt-get install nats-server): {e}"));
        self.proc = Some(Proc {
            name: "nats-server".into(),
            child,
        });
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "nats-server did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }
}

/// A fresh database on the test server.
async fn fresh_database() -> String {
    let admin = std::env::var("INFINIBAY_TEST_PG_URL").expect(
        "INFINIBAY_TEST_PG_URL must name a PostgreSQL server \
         (source scripts/lib/postgres.sh; pg_throwaway_start)",
    );
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("connect to {admin}: {e}"));
    let name = format!("scale_out_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("CREATE DATABASE");
    let _ = conn.close().await;
    let (base, _) = admin.rsplit_once('/').expect("the URL names a database");
    format!("{base}/{name}")
}

struct Role {
    proc: Proc,
    url: String,
    /// Where its `/metrics` answers: an API's own metrics listener, a node's one listener.
    metrics_url: String,
}

fn spawn_role(
    role: &str,
    name: &str,
    nats: &str,
    database: &str,
    dir: &Path,
    extra: &[&str],
) -> Role {
    let port = free_port();
    let metrics_port = free_port();
    let data_dir = dir.join(format!("data-{name}"));
    std::fs::create_dir_all(&data_dir).expect("data dir");
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_infinibay"))
        .arg(role)
        .args(["--nats", nats, "--database", database])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(&data_dir)
        .args(extra)
        .env("INFINIBAY_ADMIN_PASSWORD", ADMIN_PASS)
        .env("INFINIBAY_CLUSTER__HEARTBEAT_INTERVAL_SECS", HEARTBEAT_SECS)
        .env(
            "INFINIBAY_CLUSTER__LIVENESS_WINDOW_SECS",
            LIVENESS_SECS.to_string(),
        )
        .env("INFINIBAY_DISCOVERY__RESCAN_INTERVAL_SECS", "1")
        // Socket discovery only: the simulator's VMs have no domain, and whether a libvirtd
        // happens to run on this machine must not change the answers checked here.
        .env("INFINIBAY_LIBVIRT", "none")
        .env(
            "INFINIBAY_API__METRICS_LISTEN",
            format!("127.0.0.1:{metrics_port}"),
        )
        .env("RUST_LOG", "info")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start infinibay");
    Role {
        proc: Proc {
            name: name.to_owned(),
            child,
        },
        url: format!("http://127.0.0.1:{port}"),
        metrics_url: if role == "api" {
            format!("http://127.0.0.1:{metrics_port}")
        } else {
            format!("http://127.0.0.1:{port}")
        },
    }
}

async fn healthz(url: &str) -> Option<(u16, Value)> {
    let res = reqwest::get(format!("{url}/healthz")).await.ok()?;
    let code = res.status().as_u16();
    Some((code, res.json().await.ok()?))
}

async fn metrics(url: &str) -> String {
    reqwest::get(format!("{url}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// Poll `check` every 100 ms until it answers `Some`, at most `limit`.
async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn gql(server: &str, token: Option<&str>, query: &str, variables: Value) -> Value {
    let mut req = reqwest::Client::new()
        .post(format!("{server}/graphql"))
        .json(&json!({"query": query, "variables": variables}));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send()
        .await
        .expect("POST /graphql")
        .json()
        .await
        .expect("GraphQL answers JSON")
}

async fn login(server: &str, user: &str, pass: &str) -> String {
    let r = gql(
        server,
        None,
        "mutation($u:String!,$p:String!){login(username:$u,password:$p){token}}",
        json!({"u": user, "p": pass}),
    )
    .await;
    r.pointer("/data/login/token")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("login {user} on {server}: {r}"))
        .to_owned()
}

async fn vm_status(server: &str, token: &str, vm: &str) -> Option<String> {
    let r = gql(
        server,
        Some(token),
        "query($id:ID!){vm(id:$id){status}}",
        json!({"id": vm}),
    )
    .await;
    r.pointer("/data/vm/status")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

async fn execute_system_info(server: &str, token: &str, vm: &str) -> Value {
    gql(
        server,
        Some(token),
        "mutation($id:ID!){executeVmCommand(vmId:$id, command:{type:SAFE, action:\"SystemInfo\"}){success data error{code message}}}",
        json!({"id": vm}),
    )
    .await
}

struct Fleet {
    dir: tempfile::TempDir,
    nats: Nats,
    database: String,
    sims: Vec<Simulator>,
    nodes: Vec<Role>,
    apis: Vec<Role>,
    vm_a: String,
    vm_b: String,
    admin: String,
}

impl Fleet {
    async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ibscale")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let nats = Nats::start(dir.path());
        let database = fresh_database().await;
        let seed = rand::random::<u64>();
        let mut sims = Vec::new();
        let mut nodes = Vec::new();
        for (i, name) in ["a", "b"].iter().enumerate() {
            let sockets = dir.path().join(format!("sockets-{name}"));
            std::fs::create_dir_all(&sockets).expect("socket dir");
            let mut args = SimArgs::new(1, &sockets);
            args.interval = SAMPLE_INTERVAL;
            args.stats_every = Duration::ZERO;
            args.seed = seed;
            args.first_index = i as u64;
            sims.push(Simulator::start(&args).await.expect("simulator"));
            let socket_dir = sockets.to_string_lossy().into_owned();
            nodes.push(spawn_role(
                "node",
                &format!("node-{name}"),
                &nats.url(),
                &database,
                dir.path(),
                &[
                    "--node-id",
                    &format!("node-{name}"),
                    "--socket-dir",
                    &socket_dir,
                ],
            ));
        }
        let vm_a = sims[0].vms()[0].id.to_string();
        let vm_b = sims[1].vms()[0].id.to_string();

        // API A creates the secret and the first admin; B gets the same secret file, as every
        // replica must (a replica with another secret refuses to start).
        let api_a = spawn_role("api", "api-a", &nats.url(), &database, dir.path(), &[]);
        let mut apis = vec![api_a];
        wait_for("API A healthy", Duration::from_secs(30), || async {
            healthz(&apis[0].url).await.filter(|(code, _)| *code == 200)
        })
        .await;
        std::fs::create_dir_all(dir.path().join("data-api-b")).expect("data dir");
        std::fs::copy(
            dir.path().join("data-api-a/jwt-secret"),
            dir.path().join("data-api-b/jwt-secret"),
        )
        .expect("share the secret file");
        apis.push(spawn_role(
            "api",
            "api-b",
            &nats.url(),
            &database,
            dir.path(),
            &[],
        ));
        for role in nodes.iter().chain(apis.iter()) {
            wait_for(
                &format!("{} healthy", role.proc.name),
                Duration::from_secs(30),
                || async { healthz(&role.url).await.filter(|(code, _)| *code == 200) },
            )
            .await;
        }
        let admin = login(&apis[0].url, "admin", ADMIN_PASS).await;
        let fleet = Self {
            dir,
            nats,
            database,
            sims,
            nodes,
            apis,
            vm_a,
            vm_b,
            admin,
        };
        for vm in [&fleet.vm_a, &fleet.vm_b] {
            for api in &fleet.apis {
                wait_for(
                    &format!("VM {vm} ONLINE on {}", api.url),
                    Duration::from_secs(30),
                    || async {
                        (vm_status(&api.url, &fleet.admin, vm).await.as_deref() == Some("ONLINE"))
                            .then_some(())
                    },
                )
                .await;
            }
        }
        fleet
    }

    fn api(&self, i: usize) -> &str {
        &self.apis[i].url
    }
}

impl Drop for Fleet {
    /// On failure, the processes' logs say why (they are killed on drop).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for name in ["node-a", "node-b", "api-a", "api-b"] {
            let log = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- {name} (last lines)");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/node")
}

/// Start `tests/node/scale.mjs` in `mode`.
fn socket_io_client(fleet: &Fleet, mode: &str, vm: &str) -> tokio::process::Child {
    tokio::process::Command::new("node")
        .arg(node_dir().join("scale.mjs"))
        .env("MODE", mode)
        .env("SERVER_A", fleet.api(0))
        .env("SERVER_B", fleet.api(1))
        .env("VM_ID", vm)
        .env("USER", "viewer")
        .env("PASS", USER_PASS)
        .env("ADMIN_USER", "admin")
        .env("ADMIN_PASS", ADMIN_PASS)
        .env("VICTIM_USER", "victim")
        .env("VICTIM_PASS", USER_PASS)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (is it installed?)")
}

async fn last_json_line(child: tokio::process::Child) -> Value {
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the socket.io client finished within 60 s")
        .expect("node output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("socket.io client: {stdout}");
    let result: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("JSON result line");
    assert!(
        output.status.success() && result["ok"] == json!(true),
        "{result}"
    );
    result
}

async fn create_users(fleet: &Fleet) {
    for name in ["viewer", "victim"] {
        let r = gql(
            fleet.api(1),
            Some(&fleet.admin),
            "mutation($u:String!,$p:String!){createUser(input:{username:$u,password:$p}){id}}",
            json!({"u": name, "p": USER_PASS}),
        )
        .await;
        let id = r
            .pointer("/data/createUser/id")
            .cloned()
            .unwrap_or_else(|| panic!("createUser {name}: {r}"));
        if name == "viewer" {
            for vm in [&fleet.vm_a, &fleet.vm_b] {
                let r = gql(
                    fleet.api(0),
                    Some(&fleet.admin),
                    "mutation($vm:ID!,$u:ID){setVmOwner(vmId:$vm,userId:$u){id}}",
                    json!({"vm": vm, "u": id}),
                )
                .await;
                assert!(r.get("errors").is_none(), "setVmOwner: {r}");
            }
        }
    }
}

async fn a_command_sent_through_api_b_reaches_a_vm_on_node_a(fleet: &Fleet) {
    let r = execute_system_info(fleet.api(1), &fleet.admin, &fleet.vm_a).await;
    assert_eq!(
        r.pointer("/data/executeVmCommand/success"),
        Some(&json!(true)),
        "{r}"
    );
    assert!(
        r.pointer("/data/executeVmCommand/data")
            .is_some_and(|d| !d.is_null()),
        "SystemInfo carries data: {r}"
    );
    // The command log, written by node A (through its batched store writer), is read
    // through API B.
    wait_for(
        "the command in the log, read through API B",
        Duration::from_secs(10),
        || async {
            let logs = gql(
                fleet.api(1),
                Some(&fleet.admin),
                "query($id:ID!){commandLogs(vmId:$id){kind success}}",
                json!({"id": fleet.vm_a}),
            )
            .await;
            (logs.pointer("/data/commandLogs/0/success") == Some(&json!(true))).then_some(())
        },
    )
    .await;
}

async fn suspend(server: &str, token: &str, vm: &str) -> Value {
    gql(
        server,
        Some(token),
        "mutation($id:ID!){suspend(vmId:$id){action via}}",
        json!({"id": vm}),
    )
    .await
}

fn error_code(r: &Value) -> Option<&str> {
    r.pointer("/errors/0/extensions/code")
        .and_then(Value::as_str)
}

/// A power action through API B is answered by node A's core (libvirt off there: refused
/// with its code, not hung), and the fleet's hypervisor is what the nodes say.
async fn a_power_action_through_api_b_is_answered_by_node_a(fleet: &Fleet) {
    let r = suspend(fleet.api(1), &fleet.admin, &fleet.vm_a).await;
    assert_eq!(error_code(&r), Some("LIBVIRT_UNAVAILABLE"), "{r}");
    let message = r
        .pointer("/errors/0/message")
        .and_then(Value::as_str)
        .unwrap_or_default();
    assert!(
        !message.contains("no node serves"),
        "the node's own answer, not the API's: {r}"
    );
    let r = gql(
        fleet.api(1),
        Some(&fleet.admin),
        "{hypervisor{state}}",
        json!({}),
    )
    .await;
    assert_eq!(
        r.pointer("/data/hypervisor/state").and_then(Value::as_str),
        Some("disabled"),
        "{r}"
    );
}

async fn a_socket_io_client_on_api_b_receives_metrics_of_node_a_and_revocation_holds_across_replicas(
    fleet: &Fleet,
) {
    let result = last_json_line(socket_io_client(fleet, "live", &fleet.vm_a)).await;
    assert!(result["metricsUpdateOnBAfterMs"].is_number(), "{result}");
}

async fn node_a_killed_its_vms_go_offline_within_the_liveness_window(fleet: &mut Fleet) {
    let killed_at = Instant::now();
    fleet.nodes[0].proc.kill();
    let token = fleet.admin.clone();
    let (api, vm) = (fleet.api(1).to_owned(), fleet.vm_a.clone());
    wait_for(
        "node A's VM OFFLINE on API B",
        Duration::from_secs(30),
        || async {
            (vm_status(&api, &token, &vm).await.as_deref() == Some("OFFLINE")).then_some(())
        },
    )
    .await;
    let took = killed_at.elapsed();
    eprintln!("node A killed: its VM offline after {took:?}");
    // The window plus the directory's check period and this poll's.
    assert!(
        took <= Duration::from_secs_f64(LIVENESS_SECS + 1.5),
        "offline after {took:?}, liveness window {LIVENESS_SECS} s"
    );
    // Nobody serves the VM now: a command is refused at once, not after its timeout.
    let asked = Instant::now();
    let r = execute_system_info(fleet.api(1), &fleet.admin, &fleet.vm_a).await;
    let code = r
        .pointer("/errors/0/extensions/code")
        .and_then(Value::as_str);
    assert_eq!(code, Some("VM_UNREACHABLE"), "{r}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "VM_UNREACHABLE after {:?} (the command's timeout is 30 s)",
        asked.elapsed()
    );
    // A power action too: no node serves the VM, its hypervisor is out of reach, at once.
    let asked = Instant::now();
    let r = suspend(fleet.api(1), &fleet.admin, &fleet.vm_a).await;
    assert_eq!(error_code(&r), Some("LIBVIRT_UNAVAILABLE"), "{r}");
    assert!(
        r.pointer("/errors/0/message")
            .and_then(Value::as_str)
            .is_some_and(|m| m.contains("no node serves")),
        "{r}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "answered after {:?}",
        asked.elapsed()
    );
    // Node B's VM is untouched.
    assert_eq!(
        vm_status(fleet.api(1), &fleet.admin, &fleet.vm_b)
            .await
            .as_deref(),
        Some("ONLINE")
    );
}

async fn stored_sample_times(database: &str, vm: &str) -> Vec<chrono::DateTime<chrono::Utc>> {
    let mut conn = sqlx::PgConnection::connect(database)
        .await
        .expect("connect to the fleet's database");
    let rows: Vec<(chrono::DateTime<chrono::Utc>,)> =
        sqlx::query_as("SELECT s.at FROM metric_samples s JOIN vms v ON v.key = s.vm_key WHERE v.id = $1 ORDER BY s.at")
            .bind(vm)
            .fetch_all(&mut conn)
            .await
            .expect("read samples");
    let _ = conn.close().await;
    rows.into_iter().map(|(at,)| at).collect()
}

/// The VM's stored samples from 2 s before the outage on: some after it, and no gap wider
/// than `widest_allowed` between two of them.
async fn assert_stored_without_gap(
    database: &str,
    vm: &str,
    (down_at, up_at): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>),
    widest_allowed: chrono::Duration,
    outage: &str,
) {
    let times = stored_sample_times(database, vm).await;
    let around: Vec<_> = times
        .iter()
        .filter(|t| **t >= down_at - chrono::Duration::seconds(2))
        .collect();
    assert!(
        around.last().is_some_and(|t| **t > up_at),
        "samples after {outage} are stored: {} since it began",
        around.len()
    );
    let widest = around
        .windows(2)
        .map(|w| *w[1] - *w[0])
        .max()
        .unwrap_or_default();
    assert!(
        widest < widest_allowed,
        "a gap of {widest} in the stored samples around {outage} ({down_at} – {up_at})"
    );
}

async fn nats_killed_and_restarted_everything_recovers_and_the_store_has_no_gap(fleet: &mut Fleet) {
    let node_b = fleet.nodes[1].url.clone();
    let (api_a, api_b) = (fleet.api(0).to_owned(), fleet.api(1).to_owned());
    let metrics_of = |url: &str| {
        fleet
            .nodes
            .iter()
            .chain(fleet.apis.iter())
            .find(|r| r.url == url)
            .map(|r| r.metrics_url.clone())
            .expect("a role of the fleet")
    };
    let metrics_urls = [metrics_of(&node_b), metrics_of(&api_b)];
    let down_at = chrono::Utc::now();
    fleet.nats.kill();

    // The outage shows on /healthz and /metrics of both kinds of process.
    for (url, metrics_url) in [&node_b, &api_b].into_iter().zip(&metrics_urls) {
        let (code, body) = wait_for(
            &format!("{url} /healthz says NATS is down"),
            Duration::from_secs(10),
            || async {
                healthz(url)
                    .await
                    .filter(|(code, b)| *code == 503 && b["nats"]["connected"] == json!(false))
            },
        )
        .await;
        assert_eq!(body["status"], json!("degraded"), "{code} {body}");
        let text = metrics(metrics_url).await;
        assert!(
            text.lines().any(|l| l == "infinibay_nats_connected 0"),
            "{metrics_url}/metrics: {text}"
        );
    }
    // History is still served while live data is not.
    let r = gql(&api_b, Some(&fleet.admin), "query{vms{id}}", json!({})).await;
    assert!(r.get("errors").is_none(), "{r}");

    tokio::time::sleep(Duration::from_secs(3)).await;
    fleet.nats.restart();
    let up_at = chrono::Utc::now();

    for url in [&node_b, &api_a, &api_b] {
        wait_for(
            &format!("{url} healthy again"),
            Duration::from_secs(30),
            || async { healthz(url).await.filter(|(code, _)| *code == 200) },
        )
        .await;
    }
    // Live data and commands flow again, through both replicas.
    for api in [&api_a, &api_b] {
        let r = wait_for(
            &format!("a command through {api} after the outage"),
            Duration::from_secs(15),
            || async {
                let r = execute_system_info(api, &fleet.admin, &fleet.vm_b).await;
                (r.pointer("/data/executeVmCommand/success") == Some(&json!(true))).then_some(r)
            },
        )
        .await;
        assert!(r.get("errors").is_none(), "{r}");
        assert_eq!(
            vm_status(api, &fleet.admin, &fleet.vm_b).await.as_deref(),
            Some("ONLINE")
        );
    }
    // Node B kept storing through the outage: no gap in the store.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_stored_without_gap(
        &fleet.database,
        &fleet.vm_b,
        (down_at, up_at),
        chrono::Duration::milliseconds(1_000),
        "the NATS outage",
    )
    .await;
}

async fn api_a_killed_its_clients_reconnect_to_b_and_subscribe_again(fleet: &mut Fleet) {
    let mut client = socket_io_client(fleet, "failover", &fleet.vm_b);
    let stdout = client.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line.clone());
            if line.contains("\"ready\":true") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(ready, Ok(true), "the client on API A got ready: {seen:?}");
    fleet.apis[0].proc.kill();
    let mut rest = Vec::new();
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await
    {
        rest.push(line);
    }
    let status = client.wait().await.expect("client ends");
    eprintln!("socket.io client: {rest:?}");
    let result: Value =
        serde_json::from_str(rest.last().map_or("", String::as_str)).expect("JSON result line");
    assert!(status.success() && result["ok"] == json!(true), "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_and_two_api_replicas_over_nats_and_postgres_serve_one_fleet_and_survive_faults()
{
    assert!(
        node_dir().join("node_modules/socket.io-client").is_dir(),
        "socket.io-client is not installed: run `npm ci --prefix tests/node`"
    );
    let mut fleet = Fleet::start().await;
    create_users(&fleet).await;
    a_command_sent_through_api_b_reaches_a_vm_on_node_a(&fleet).await;
    a_power_action_through_api_b_is_answered_by_node_a(&fleet).await;
    a_socket_io_client_on_api_b_receives_metrics_of_node_a_and_revocation_holds_across_replicas(
        &fleet,
    )
    .await;
    node_a_killed_its_vms_go_offline_within_the_liveness_window(&mut fleet).await;
    nats_killed_and_restarted_everything_recovers_and_the_store_has_no_gap(&mut fleet).await;
    api_a_killed_its_clients_reconnect_to_b_and_subscribe_again(&mut fleet).await;
    for sim in std::mem::take(&mut fleet.sims) {
        sim.shutdown().await;
    }
}

/// A PostgreSQL server of this test's own (it is stopped and started again), started with
/// `scripts/lib/postgres.sh`.
struct OwnPostgres {
    url: String,
    dir: PathBuf,
    pg_ctl: String,
    port: String,
    run_as: Vec<String>,
}

impl OwnPostgres {
    fn start() -> Self {
        let lib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/lib/postgres.sh");
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!(
                "set -e; export PG_THROWAWAY_OPTS='-c fsync=off'; source '{}'; pg_throwaway_start >/dev/null; \
                 echo \"$INFINIBAY_TEST_PG_URL|$PG_THROWAWAY_DIR|$PG_THROWAWAY_PG_CTL|${{PG_THROWAWAY_AS[*]}}\"",
                lib.display()
            ))
            .output()
            .expect("bash runs");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            out.status.success(),
            "a PostgreSQL of the test's own: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let parts: Vec<&str> = text.split('|').collect();
        let [url, dir, pg_ctl, run_as] = parts[..] else {
            panic!("unexpected output of pg_throwaway_start: {text}")
        };
        let port = url
            .rsplit_once(':')
            .and_then(|(_, rest)| rest.split_once('/'))
            .map(|(port, _)| port.to_owned())
            .expect("a port in the URL");
        Self {
            url: url.to_owned(),
            dir: PathBuf::from(dir),
            pg_ctl: pg_ctl.to_owned(),
            port,
            run_as: run_as.split_whitespace().map(str::to_owned).collect(),
        }
    }

    fn pg_ctl(&self, args: &[&str]) -> bool {
        let mut cmd = match self.run_as.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&self.pg_ctl);
                c
            }
            None => Command::new(&self.pg_ctl),
        };
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Stop at once, as a crash would.
    fn kill(&self) {
        assert!(
            self.pg_ctl(&["-m", "immediate", "-w", "stop"]),
            "PostgreSQL stops"
        );
    }

    fn restart(&self) {
        let options = format!(
            "-k {} -h 127.0.0.1 -p {} -c max_connections=200 -c fsync=off",
            self.dir.display(),
            self.port
        );
        let log = self.dir.join("server.log");
        let log = log.to_string_lossy();
        assert!(
            self.pg_ctl(&["-l", &log, "-w", "-t", "60", "-o", &options, "start"]),
            "PostgreSQL starts again"
        );
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.pg_ctl(&["-m", "immediate", "-w", "stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_down_a_node_keeps_a_bounded_backlog_says_so_and_live_data_still_flows() {
    use futures_util::StreamExt;

    let dir = tempfile::Builder::new()
        .prefix("ibscalepg")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let postgres = OwnPostgres::start();
    let nats = Nats::start(dir.path());
    let sockets = dir.path().join("sockets");
    std::fs::create_dir_all(&sockets).expect("socket dir");
    // 1 Hz, as guests send: the writer's per-VM queue (16 samples) must outlast one failed
    // write attempt (the pool's 5 s) for nothing to be coalesced away before the backlog.
    let mut args = SimArgs::new(1, &sockets);
    args.interval = Duration::from_secs(1);
    args.stats_every = Duration::ZERO;
    args.seed = rand::random::<u64>();
    let sim = Simulator::start(&args).await.expect("simulator");
    let vm = sim.vms()[0].id.to_string();
    let socket_dir = sockets.to_string_lossy().into_owned();
    let node = spawn_role(
        "node",
        "node-pg",
        &nats.url(),
        &postgres.url,
        dir.path(),
        &["--node-id", "node-pg", "--socket-dir", &socket_dir],
    );
    wait_for("the node healthy", Duration::from_secs(30), || async {
        healthz(&node.url).await.filter(|(code, _)| *code == 200)
    })
    .await;
    let client = async_nats::connect(nats.url())
        .await
        .expect("connect to NATS");
    let mut live = client
        .subscribe(format!("infinibay.vm.{vm}.metrics"))
        .await
        .expect("subscribe");
    wait_for("samples stored", Duration::from_secs(20), || async {
        (stored_sample_times(&postgres.url, &vm).await.len() > 2).then_some(())
    })
    .await;

    let down_at = chrono::Utc::now();
    postgres.kill();
    let (_, body) = wait_for(
        "/healthz says the store refuses writes and keeps a backlog",
        Duration::from_secs(15),
        || async {
            healthz(&node.url).await.filter(|(code, b)| {
                *code == 503
                    && b["queue"]["store_failing"] == json!(true)
                    && b["queue"]["backlog_samples"]
                        .as_u64()
                        .is_some_and(|n| n > 0)
            })
        },
    )
    .await;
    assert!(
        body["problems"].to_string().contains("backlog"),
        "the problem is named: {body}"
    );
    // Live data flows over NATS meanwhile.
    let mut arrived = 0;
    let listen = Instant::now();
    while arrived < 3 && listen.elapsed() < Duration::from_secs(6) {
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(1), live.next()).await {
            arrived += 1;
        }
    }
    assert_eq!(arrived, 3, "samples published while PostgreSQL is down");
    let text = metrics(&node.url).await;
    let backlog = text
        .lines()
        .find_map(|l| l.strip_prefix("infinibay_store_backlog_samples "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(backlog.is_some_and(|n| n > 0.0), "/metrics: {text}");

    postgres.restart();
    let up_at = chrono::Utc::now();
    wait_for(
        "the backlog written once PostgreSQL is back",
        Duration::from_secs(30),
        || async {
            healthz(&node.url)
                .await
                .filter(|(code, b)| *code == 200 && b["queue"]["backlog_samples"] == json!(0))
        },
    )
    .await;
    wait_for(
        "samples after the outage stored",
        Duration::from_secs(10),
        || async {
            stored_sample_times(&postgres.url, &vm)
                .await
                .last()
                .is_some_and(|t| *t > up_at)
                .then_some(())
        },
    )
    .await;
    // Every sample the guest wrote, before, during and after the outage, is in the store: the
    // guest stops, the node writes what it holds, and the counts match (one sample may have
    // been on its way when the guest stopped).
    let stats = sim.stats().clone();
    sim.shutdown().await;
    let sent = stats.samples.load(std::sync::atomic::Ordering::Relaxed);
    let stored = wait_for(
        "every sample the guest wrote stored",
        Duration::from_secs(15),
        || async {
            let n = stored_sample_times(&postgres.url, &vm).await.len() as u64;
            (n + 1 >= sent).then_some(n)
        },
    )
    .await;
    let (_, body) = healthz(&node.url).await.expect("/healthz");
    assert_eq!(
        (
            &body["queue"]["samples_coalesced"],
            &body["queue"]["samples_failed"]
        ),
        (&json!(0), &json!(0)),
        "the node dropped nothing ({stored} of {sent} stored): {body}"
    );
    eprintln!("PostgreSQL outage {down_at} – {up_at}: {stored} of {sent} samples stored");
    drop(node);
}

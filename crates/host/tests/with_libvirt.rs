//! The host with libvirt, end to end: a real server (GraphQL, Socket.IO, the CLI) whose core
//! watches a throwaway session libvirtd (`scripts/lib/libvirt.sh`) running the e2e tiny guest
//! under TCG. One guest, created through `createVm`, is shared by the tests that need a booted
//! guest (each brings it back to the state it needs); a short-lived second guest is deleted;
//! a bare domain defined with `virsh` is adopted and outlives a libvirtd restart.
//!
//! The server runs on its own runtime thread for the whole test binary (tests share it, one at
//! a time); the official socket.io-client (`tests/node/watch.mjs`) plays the browser.

// The libvirt crate's test support: the throwaway daemon, the scratch directory QEMU can use,
// the e2e guest's kernel and initramfs, domain clean-up at exit.
#[path = "../../libvirt/tests/support/mod.rs"]
mod libvirt_support;
// The core's test settings.
#[path = "../../core/tests/common/mod.rs"]
mod core_common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

use infinibay::api;
use infinibay::api::users::{self, CreateUser};
use infinibay::config::{Config, ProcessConfig};
use infinibay::store::{Role, Store};
use libvirt_support::{BOOT, daemon, is_socket, remember_domain, scratch, unique_name};

const PASSWORD: &str = "correct-horse-battery";
/// A libvirt event after the action that causes it, through the host to a client.
const EVENT: Duration = Duration::from_secs(30);
const GUEST_MEMORY_MIB: i32 = 256;

/// The server every test of this binary talks to.
struct Fixture {
    url: String,
    store: Arc<dyn Store>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let daemon = daemon();
        let scratch = scratch();
        // createVm boots only files of the image directory.
        for (from, name) in [
            (&scratch.kernel, "vmlinuz"),
            (&scratch.initrd, "initramfs.gz"),
        ] {
            let to = scratch.images.join(name);
            if !to.exists() {
                std::fs::copy(from, &to).expect("copy the guest into the image directory");
            }
        }
        let uri = daemon.uri.clone();
        let (ready, fixture) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("libvirt-test-server".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("server runtime");
                runtime.block_on(serve(uri, ready));
            })
            .expect("server thread");
        fixture.recv().expect("the server started")
    })
}

/// Runs the server until the process exits.
async fn serve(uri: String, ready: std::sync::mpsc::Sender<Fixture>) {
    let scratch = scratch();
    // Inside the scratch directory, which the exit hook removes.
    let dir = tempfile::Builder::new()
        .prefix("server")
        .tempdir_in(&scratch.root)
        .expect("tempdir")
        .keep();
    let data_dir = dir.join("data");
    std::fs::create_dir_all(&data_dir).expect("data dir");
    let db_url = format!("sqlite://{}", dir.join("host.db").display());
    let store = infinibay::store::open(&db_url).await.expect("open store");
    for (name, role) in [
        ("admin", Role::Admin),
        ("owner", Role::User),
        ("other", Role::User),
    ] {
        users::create_user(
            store.as_ref(),
            CreateUser {
                username: name.to_owned(),
                password: PASSWORD.to_owned(),
                role,
                department: None,
                permissions: vec![],
            },
        )
        .await
        .expect("create test user");
    }
    let secret = api::auth::load_or_create_secret(&data_dir).expect("secret");
    let settings = api::settings_for(data_dir.clone(), secret);
    let mut core = core_common::test_config(&scratch.sockets);
    core.libvirt = uri;
    core.image_dir = scratch.images.clone();
    let config = Config {
        process: ProcessConfig {
            database: Some(db_url),
            data_dir,
            ..ProcessConfig::default()
        },
        core,
        // /metrics on any free port: tests run side by side, and a host may run here.
        api: api::limits::ApiConfig {
            metrics_listen: "127.0.0.1:0".parse().expect("address"),
            ..Default::default()
        },
        cluster: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a free port");
    let addr = listener.local_addr().expect("addr");
    ready
        .send(Fixture {
            url: format!("http://{addr}"),
            store,
        })
        .expect("hand the fixture over");
    if let Err(e) = infinibay::serve::run(config, listener, std::future::pending(), move |core| {
        infinibay::serve::api_router(core, settings)
    })
    .await
    {
        eprintln!("the libvirt test server ended: {e}");
    }
}

/// One test at a time: they share the server, the guest and the daemon.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

async fn gql(token: Option<&str>, query: &str, variables: Value) -> Value {
    let mut request = reqwest::Client::new()
        .post(format!("{}/graphql", fixture().url))
        .json(&json!({"query": query, "variables": variables}));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("POST /graphql");
    assert!(
        !response.status().is_server_error(),
        "{}",
        response.status()
    );
    response.json().await.expect("GraphQL answers JSON")
}

async fn login(user: &str) -> String {
    let r = gql(
        None,
        "mutation($u:String!,$p:String!){ login(username:$u, password:$p){ token } }",
        json!({"u": user, "p": PASSWORD}),
    )
    .await;
    r.pointer("/data/login/token")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("login of {user}: {r}"))
        .to_owned()
}

fn error_code(response: &Value) -> Option<&str> {
    response
        .pointer("/errors/0/extensions/code")
        .and_then(Value::as_str)
}

/// A mutation that must succeed; its `data`.
async fn ok(token: &str, query: &str, variables: Value) -> Value {
    let r = gql(Some(token), query, variables).await;
    assert!(r.get("errors").is_none(), "{query}: {r}");
    r["data"].clone()
}

/// What the API says of a VM now (`null` when it does not exist).
async fn vm(token: &str, id: &str) -> Value {
    let r = gql(
        Some(token),
        "query($id: ID!) { vm(id: $id) { id name status powerState domainName owner { username } agent { hostname } } }",
        json!({"id": id}),
    )
    .await;
    assert!(r.get("errors").is_none(), "{r}");
    r["data"]["vm"].clone()
}

/// Polls the VM until `check` holds.
async fn vm_until(
    token: &str,
    id: &str,
    what: &str,
    within: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let now = vm(token, id).await;
        if check(&now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}; last {now}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn power(token: &str, action: &str, id: &str) -> Value {
    gql(
        Some(token),
        &format!("mutation($id: ID!) {{ {action}(vmId: $id) {{ action via powerState vm {{ powerState status }} }} }}"),
        json!({"id": id}),
    )
    .await
}

/// The official socket.io-client of one user, watching VM events.
struct Watcher {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<Value>,
    namespace: String,
    seen: Vec<Value>,
}

impl Watcher {
    async fn start(user: &str, rooms: &[&str]) -> Watcher {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/node");
        assert!(
            dir.join("node_modules/socket.io-client").is_dir(),
            "socket.io-client is not installed: run `npm ci --prefix tests/node`"
        );
        let mut child = tokio::process::Command::new("node")
            .arg(dir.join("watch.mjs"))
            .env("SERVER", &fixture().url)
            .env("USERNAME", user)
            .env("PASSWORD", PASSWORD)
            .env("VM_IDS", rooms.join(","))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs (is it installed?)");
        let stdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel(1024);
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let value = serde_json::from_str(&line).unwrap_or(json!({ "raw": line }));
                if tx.send(value).await.is_err() {
                    break;
                }
            }
        });
        let mut watcher = Watcher {
            child,
            stdin,
            lines,
            namespace: String::new(),
            seen: Vec::new(),
        };
        let ready = watcher
            .wait("the watcher ready", Duration::from_secs(20), |l| {
                l.get("ready").is_some()
            })
            .await;
        watcher.namespace = ready["namespace"].as_str().expect("namespace").to_owned();
        watcher
    }

    /// The first line `pick` accepts, among those not taken yet (earlier waits keep what they
    /// passed over: two waits may look for two events in either order).
    async fn wait(&mut self, what: &str, within: Duration, pick: impl Fn(&Value) -> bool) -> Value {
        if let Some(at) = self.seen.iter().position(&pick) {
            return self.seen.remove(at);
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    if line.get("error").is_some() || line.get("disconnected").is_some() {
                        panic!("watcher: {line}");
                    }
                    if pick(&line) {
                        return line;
                    }
                    self.seen.push(line);
                }
                Ok(None) => panic!(
                    "the watcher ended while waiting for {what}; seen {:#?}",
                    self.seen
                ),
                Err(_) => panic!("no {what} within {within:?}; seen {:#?}", self.seen),
            }
        }
    }

    /// `<namespace>:vms:<action>` about `id` whose data passes `check`.
    async fn lifecycle(&mut self, action: &str, id: &str, check: impl Fn(&Value) -> bool) -> Value {
        let event = format!("{}:vms:{action}", self.namespace);
        self.wait(&format!("{event} for {id}"), EVENT, |l| {
            l["event"] == json!(event)
                && l["payload"]["data"]["id"] == json!(id)
                && check(&l["payload"])
        })
        .await["payload"]
            .clone()
    }

    /// `<namespace>:vms:update` saying `id` is now `state`.
    async fn power_update(&mut self, id: &str, state: &str) -> Value {
        let payload = self
            .lifecycle("update", id, |p| p["data"]["powerState"] == json!(state))
            .await;
        assert_eq!(payload["status"], json!("success"), "{payload}");
        assert!(payload["error"].is_null(), "{payload}");
        assert!(payload["timestamp"].is_string(), "{payload}");
        payload
    }

    /// `vm:power` in the VM's room.
    async fn room_power(&mut self, id: &str, state: &str) -> Value {
        self.wait(&format!("vm:power {state} for {id}"), EVENT, |l| {
            l["event"] == json!("vm:power")
                && l["payload"]["vmId"] == json!(id)
                && l["payload"]["powerState"] == json!(state)
        })
        .await["payload"]
            .clone()
    }

    async fn stop(mut self) {
        drop(self.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// The guest the power tests share, created through the API by `owner`.
struct Guest {
    id: String,
    name: String,
    /// What `createVm` answered.
    created: Value,
    /// The `vms:create` the owner's socket received.
    announced: Value,
    /// From `createVm` to the agent online.
    to_online: Duration,
}

async fn shared_guest() -> &'static Guest {
    static GUEST: tokio::sync::OnceCell<Guest> = tokio::sync::OnceCell::const_new();
    GUEST
        .get_or_init(|| async {
            let owner = login("owner").await;
            let name = unique_name("api");
            remember_domain(&name);
            let mut watcher = Watcher::start("owner", &[]).await;
            let started = Instant::now();
            let created = ok(
                &owner,
                "mutation($input: CreateVmInput!) { createVm(input: $input) { id name status powerState domainName owner { username } } }",
                json!({"input": {
                    "name": name,
                    "memoryMib": GUEST_MEMORY_MIB,
                    "vcpus": 1,
                    "kernel": {
                        "kernel": "vmlinuz",
                        "initrd": "initramfs.gz",
                        "cmdline": format!("console=ttyS0 quiet panic=-1 no_timer_check ib.hostname={name}"),
                    },
                }}),
            )
            .await["createVm"]
                .clone();
            let id = created["id"].as_str().expect("id").to_owned();
            let announced = watcher.lifecycle("create", &id, |_| true).await;
            watcher.stop().await;
            vm_until(&owner, &id, "the created guest's agent online", BOOT, |v| {
                v["status"] == json!("ONLINE")
            })
            .await;
            Guest {
                id,
                name,
                created,
                announced,
                to_online: started.elapsed(),
            }
        })
        .await
}

/// The shared guest running with its agent online.
async fn running_guest(token: &str) -> &'static Guest {
    let guest = shared_guest().await;
    let now = vm(token, &guest.id).await;
    match now["powerState"].as_str() {
        Some("RUNNING") => {}
        Some("PAUSED") => assert!(
            power(token, "resume", &guest.id)
                .await
                .get("errors")
                .is_none()
        ),
        _ => {
            let r = power(token, "powerOn", &guest.id).await;
            assert!(r.get("errors").is_none(), "{r}");
        }
    }
    vm_until(
        token,
        &guest.id,
        "the shared guest running and online",
        BOOT,
        |v| v["powerState"] == json!("RUNNING") && v["status"] == json!("ONLINE"),
    )
    .await;
    guest
}

fn agent_socket(id: &str) -> PathBuf {
    scratch().sockets.join(format!("vm-{id}.sock"))
}

fn vnc_socket(id: &str) -> PathBuf {
    scratch().sockets.join(format!("vnc-{id}.sock"))
}

async fn eventually(what: &str, within: Duration, check: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The VM's command log entries of kind `lifecycle`, newest first.
async fn lifecycle_log(token: &str, id: &str) -> Vec<Value> {
    let data = ok(
        token,
        "query($id: ID!) { commandLogs(vmId: $id, limit: 100) { kind command response success user { username } } }",
        json!({"id": id}),
    )
    .await;
    data["commandLogs"]
        .as_array()
        .expect("list")
        .iter()
        .filter(|e| e["kind"] == json!("lifecycle"))
        .cloned()
        .collect()
}

/// Waits for the store writer to flush the command log, then finds `action`'s newest entry.
async fn logged(token: &str, id: &str, action: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(entry) = lifecycle_log(token, id)
            .await
            .into_iter()
            .find(|e| e["command"]["action"] == json!(action))
        {
            return entry;
        }
        assert!(
            Instant::now() < deadline,
            "no {action} in the command log of {id}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn cli(token: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_infinibay"))
        .args(args)
        .env("INFINIBAY_SERVER", &fixture().url)
        .env("INFINIBAY_TOKEN", token)
        .stdin(Stdio::null())
        .output()
        .expect("run the infinibay CLI")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_vm_through_the_api_boots_a_guest_whose_agent_comes_online_and_the_caller_owns_it() {
    let _serial = serial().await;
    let owner = login("owner").await;
    let guest = shared_guest().await;
    eprintln!("createVm → agent online in {:?}", guest.to_online);

    // The answer: a running VM, named as asked, owned by the caller.
    assert_eq!(
        guest.created["name"],
        json!(guest.name),
        "{}",
        guest.created
    );
    assert_eq!(guest.created["domainName"], json!(guest.name));
    assert_eq!(guest.created["powerState"], json!("RUNNING"));
    assert_eq!(guest.created["owner"]["username"], json!("owner"));
    // Announced to the owner's namespace once it had its owner.
    assert_eq!(guest.announced["status"], json!("success"));
    assert_eq!(guest.announced["data"]["name"], json!(guest.name));
    assert!(
        guest.announced["data"]["ownerId"].is_string(),
        "{}",
        guest.announced
    );

    // Our agent inside reached the host through the channel createVm put in the domain (an
    // earlier test may have shut the guest down: it is brought back first).
    running_guest(&owner).await;
    let now = vm(&owner, &guest.id).await;
    assert_eq!(now["status"], json!("ONLINE"));
    assert_eq!(now["agent"]["hostname"], json!(guest.name), "{now}");
    assert_eq!(
        now["name"],
        json!(guest.name),
        "a person's name is kept over the agent's host name"
    );
    let xml = daemon().virsh(&["dumpxml", &guest.name]);
    assert!(
        xml.contains(&*agent_socket(&guest.id).to_string_lossy()),
        "{xml}"
    );
    assert!(xml.contains("org.qemu.guest_agent.0"), "{xml}");
    assert!(
        xml.contains(&*vnc_socket(&guest.id).to_string_lossy()),
        "{xml}"
    );
    assert!(is_socket(&vnc_socket(&guest.id)));

    // Logged like a command, with its user; another user does not see the VM.
    let entry = logged(&owner, &guest.id, "createVm").await;
    assert_eq!(entry["success"], json!(true), "{entry}");
    assert_eq!(entry["user"]["username"], json!("owner"));
    assert_eq!(entry["command"]["request"]["name"], json!(guest.name));
    let other = login("other").await;
    let r = gql(
        Some(&other),
        "query($id: ID!) { vm(id: $id) { id } }",
        json!({"id": guest.id}),
    )
    .await;
    assert_eq!(error_code(&r), Some("FORBIDDEN"), "{r}");

    // The same name again is refused, and nothing is left behind.
    let r = gql(
        Some(&owner),
        "mutation($n: String!) { createVm(input: {name: $n, memoryMib: 64, kernel: {kernel: \"vmlinuz\", initrd: \"initramfs.gz\"}}) { id } }",
        json!({"n": guest.name}),
    )
    .await;
    assert_eq!(error_code(&r), Some("ALREADY_EXISTS"), "{r}");
    // Files outside the image directory cannot be booted.
    let r = gql(
        Some(&owner),
        "mutation { createVm(input: {name: \"escape\", memoryMib: 64, kernel: {kernel: \"/etc/passwd\", initrd: \"../../etc/shadow\"}}) { id } }",
        json!({}),
    )
    .await;
    assert_eq!(error_code(&r), Some("INVALID"), "{r}");
    // The CLI lists it with its power state.
    let out = cli(&owner, &["vm", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = text
        .lines()
        .find(|l| l.starts_with(&guest.id))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("RUNNING") && row.contains("ONLINE"), "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_through_the_api_turns_the_vm_shutoff_and_its_agent_offline_and_socket_io_clients_get_vms_update()
 {
    let _serial = serial().await;
    let owner = login("owner").await;
    let guest = running_guest(&owner).await;
    let mut watcher = Watcher::start("owner", &[&guest.id]).await;

    let r = power(&owner, "shutdown", &guest.id).await;
    assert!(r.get("errors").is_none(), "{r}");
    assert_eq!(
        r["data"]["shutdown"]["via"],
        json!("agent"),
        "an online agent shuts its guest down: {r}"
    );

    let update = watcher.power_update(&guest.id, "SHUTOFF").await;
    assert_eq!(
        update["data"]["power"]["previous"],
        json!("RUNNING"),
        "{update}"
    );
    // libvirt's SHUTDOWN event reads the state after the fact: when QEMU has exited by then,
    // it already says SHUTOFF and the STOPPED that follows changes nothing.
    assert!(
        matches!(
            update["data"]["power"]["kind"].as_str(),
            Some("stopped" | "shutdown")
        ),
        "{update}"
    );
    assert_eq!(update["data"]["name"], json!(guest.name));
    let room = watcher.room_power(&guest.id, "SHUTOFF").await;
    assert_eq!(room["previous"], json!("RUNNING"));
    watcher.stop().await;

    let now = vm_until(&owner, &guest.id, "SHUTOFF and OFFLINE", EVENT, |v| {
        v["powerState"] == json!("SHUTOFF") && v["status"] == json!("OFFLINE")
    })
    .await;
    assert_eq!(now["domainName"], json!(guest.name));
    // Logged with its user and path; the agent's Shutdown is in the log as a command too.
    let entry = logged(&owner, &guest.id, "shutdown").await;
    assert_eq!(entry["success"], json!(true), "{entry}");
    assert_eq!(entry["response"]["via"], json!("agent"));
    assert_eq!(entry["user"]["username"], json!("owner"));
    // A VM that is off cannot be shut down, suspended or rebooted: clear errors, at once.
    for action in ["shutdown", "suspend", "reboot", "powerOff"] {
        let started = Instant::now();
        let r = power(&owner, action, &guest.id).await;
        assert_eq!(error_code(&r), Some("NOT_RUNNING"), "{action}: {r}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{action} took {:?}",
            started.elapsed()
        );
    }
    let failed = logged(&owner, &guest.id, "powerOff").await;
    assert_eq!(failed["success"], json!(false));
    assert_eq!(failed["response"]["code"], json!("NOT_RUNNING"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_and_resume_through_the_cli_and_the_api_are_pushed_and_wrong_states_are_refused() {
    let _serial = serial().await;
    let owner = login("owner").await;
    let guest = running_guest(&owner).await;
    let mut watcher = Watcher::start("owner", &[]).await;

    let out = cli(&owner, &["vm", "suspend", &guest.id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("PAUSED"), "{text}");
    let update = watcher.power_update(&guest.id, "PAUSED").await;
    assert_eq!(update["data"]["power"]["kind"], json!("paused"), "{update}");
    assert_eq!(vm(&owner, &guest.id).await["powerState"], json!("PAUSED"));

    for (action, code) in [
        ("suspend", "INVALID_STATE"),
        ("shutdown", "INVALID_STATE"),
        ("reboot", "INVALID_STATE"),
        ("powerOn", "ALREADY_RUNNING"),
    ] {
        let r = power(&owner, action, &guest.id).await;
        assert_eq!(error_code(&r), Some(code), "{action} of a paused VM: {r}");
    }
    // The CLI says what went wrong and exits non-zero.
    let out = cli(&owner, &["vm", "start", &guest.id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ALREADY_RUNNING"));

    let r = power(&owner, "resume", &guest.id).await;
    assert_eq!(r["data"]["resume"]["powerState"], json!("RUNNING"), "{r}");
    watcher.power_update(&guest.id, "RUNNING").await;
    let r = power(&owner, "resume", &guest.id).await;
    assert_eq!(error_code(&r), Some("INVALID_STATE"), "{r}");
    watcher.stop().await;
    // Its agent answers again.
    let agent = ok(
        &owner,
        "mutation($id: ID!) { executeVmCommand(vmId: $id, command: {type: SAFE, action: \"OsInfo\"}) { success } }",
        json!({"id": guest.id}),
    )
    .await;
    assert_eq!(agent["executeVmCommand"]["success"], json!(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virsh_destroy_outside_infinibay_is_seen_and_pushed() {
    let _serial = serial().await;
    let owner = login("owner").await;
    let guest = running_guest(&owner).await;
    let mut owner_watch = Watcher::start("owner", &[&guest.id]).await;
    let mut admin_watch = Watcher::start("admin", &[]).await;

    daemon().virsh(&["destroy", &guest.name]);
    let update = owner_watch.power_update(&guest.id, "SHUTOFF").await;
    // libvirt reports the destroy as the host shutting the guest down, then as stopped
    // (destroyed); the first that finds QEMU gone carries the change.
    let power = &update["data"]["power"];
    assert_eq!(power["cause"], json!("lifecycle"), "{update}");
    assert_eq!(power["previous"], json!("RUNNING"), "{update}");
    assert!(
        ["host shut the guest down", "destroyed"].contains(&power["detail"].as_str().unwrap_or("")),
        "{update}"
    );
    owner_watch.room_power(&guest.id, "SHUTOFF").await;
    admin_watch.power_update(&guest.id, "SHUTOFF").await;
    owner_watch.stop().await;
    admin_watch.stop().await;
    vm_until(
        &owner,
        &guest.id,
        "SHUTOFF and OFFLINE after virsh destroy",
        EVENT,
        |v| v["powerState"] == json!("SHUTOFF") && v["status"] == json!("OFFLINE"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_vm_removes_the_domain_its_sockets_and_the_record() {
    let _serial = serial().await;
    let owner = login("owner").await;
    let name = unique_name("del");
    remember_domain(&name);
    let created = ok(
        &owner,
        "mutation($input: CreateVmInput!) { createVm(input: $input) { id powerState } }",
        json!({"input": {
            "name": name, "memoryMib": 128,
            "kernel": {"kernel": "vmlinuz", "initrd": "initramfs.gz", "cmdline": "console=ttyS0 quiet no_timer_check"},
        }}),
    )
    .await;
    let id = created["createVm"]["id"].as_str().expect("id").to_owned();
    assert_eq!(created["createVm"]["powerState"], json!("RUNNING"));
    eventually("QEMU bound both sockets", EVENT, || {
        is_socket(&agent_socket(&id)) && is_socket(&vnc_socket(&id))
    })
    .await;

    // Another user may not delete it.
    let other = login("other").await;
    let r = gql(
        Some(&other),
        "mutation($id: ID!) { deleteVm(vmId: $id) }",
        json!({"id": id}),
    )
    .await;
    assert_eq!(error_code(&r), Some("FORBIDDEN"), "{r}");

    let mut watcher = Watcher::start("owner", &[]).await;
    let out = cli(&owner, &["vm", "delete", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    watcher.lifecycle("delete", &id, |_| true).await;
    watcher.stop().await;

    let listed = daemon().virsh(&["list", "--all", "--uuid"]);
    assert!(!listed.contains(&id), "the domain is gone: {listed}");
    assert!(
        !agent_socket(&id).exists() && !vnc_socket(&id).exists(),
        "sockets removed"
    );
    assert!(vm(&owner, &id).await.is_null());
    assert!(fixture().store.get_vm(&id).await.expect("store").is_none());
    // Nothing brings it back: not its last events, not the next rescans.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(fixture().store.get_vm(&id).await.expect("store").is_none());
    let admin = login("admin").await;
    assert!(vm(&admin, &id).await.is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_cannot_power_adopt_or_delete_another_users_vm() {
    let _serial = serial().await;
    let owner = login("owner").await;
    let guest = running_guest(&owner).await;
    let other = login("other").await;
    for action in [
        "powerOn", "shutdown", "powerOff", "reboot", "suspend", "resume",
    ] {
        let r = power(&other, action, &guest.id).await;
        assert_eq!(error_code(&r), Some("FORBIDDEN"), "{action}: {r}");
    }
    for query in [
        "mutation($id: ID!) { attachAgentChannel(vmId: $id) { socket } }",
        "mutation($id: ID!) { deleteVm(vmId: $id) }",
    ] {
        let r = gql(Some(&other), query, json!({"id": guest.id})).await;
        assert_eq!(error_code(&r), Some("FORBIDDEN"), "{query}: {r}");
    }
    // Nothing happened to it, and the refusals are not the owner's actions.
    assert!(
        daemon()
            .virsh(&["domstate", &guest.name])
            .contains("running")
    );
    let entries = lifecycle_log(&owner, &guest.id).await;
    assert!(
        entries
            .iter()
            .all(|e| e["user"]["username"] != json!("other")),
        "{entries:#?}"
    );
}

/// A new domain defined with `virsh`, without an OS (nothing to boot: cheap under TCG) and
/// without our channel; destroyed and undefined when the test binary exits.
fn define_bare_domain(what: &str) -> (String, String) {
    let name = unique_name(what);
    let id = uuid::Uuid::new_v4().to_string();
    let xml = format!(
        "<domain type='qemu'><name>{name}</name><uuid>{id}</uuid>\
         <memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='q35'>hvm</type></os>\
         <devices><controller type='virtio-serial' index='0'/></devices></domain>"
    );
    let file = scratch().root.join(format!("{name}.xml"));
    std::fs::write(&file, xml).expect("write domain XML");
    remember_domain(&name);
    daemon().virsh(&["define", &file.to_string_lossy()]);
    (name, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_defined_outside_infinibay_becomes_a_vm_and_adopting_it_hot_plugs_the_agent_channel()
 {
    let _serial = serial().await;
    fixture();
    let admin = login("admin").await;
    let mut watcher = Watcher::start("admin", &[]).await;
    let (name, id) = define_bare_domain("adopt");
    let (name, id) = (name.as_str(), id.as_str());
    // A new domain is a new VM (unowned: only admins see it), named after the domain.
    let announced = watcher.lifecycle("create", id, |_| true).await;
    assert_eq!(announced["data"]["name"], json!(name), "{announced}");
    let now = vm_until(&admin, id, "the defined domain as a VM", EVENT, |v| {
        !v.is_null()
    })
    .await;
    assert_eq!(now["powerState"], json!("SHUTOFF"), "{now}");
    let owner = login("owner").await;
    let r = gql(
        Some(&owner),
        "query($id: ID!) { vm(id: $id) { id } }",
        json!({"id": id}),
    )
    .await;
    assert_eq!(error_code(&r), Some("FORBIDDEN"), "{r}");

    let r = power(&admin, "powerOn", id).await;
    assert!(r.get("errors").is_none(), "{r}");
    watcher.power_update(id, "RUNNING").await;
    watcher.stop().await;
    let attached = ok(
        &admin,
        "mutation($id: ID!) { attachAgentChannel(vmId: $id) { socket attachedLive attachedConfig } }",
        json!({"id": id}),
    )
    .await["attachAgentChannel"]
        .clone();
    assert_eq!(
        attached["socket"],
        json!(agent_socket(id).to_string_lossy())
    );
    assert_eq!(attached["attachedLive"], json!(true), "{attached}");
    assert_eq!(attached["attachedConfig"], json!(true), "{attached}");
    eventually("QEMU bound the hot-plugged channel", EVENT, || {
        is_socket(&agent_socket(id))
    })
    .await;
    let again = ok(
        &admin,
        "mutation($id: ID!) { attachAgentChannel(vmId: $id) { attachedLive attachedConfig } }",
        json!({"id": id}),
    )
    .await;
    assert_eq!(
        again["attachAgentChannel"],
        json!({"attachedLive": false, "attachedConfig": false})
    );
    // What `infinibay channel-xml` prints is what was plugged in.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_infinibay"))
        .args(["channel-xml", id, "--socket-dir"])
        .arg(&scratch().sockets)
        .output()
        .expect("channel-xml");
    let xml = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && xml.contains("org.infinibay.agent"),
        "{xml}"
    );
    assert!(xml.contains(&*agent_socket(id).to_string_lossy()), "{xml}");
    let logged_attach = logged(&admin, id, "attachAgentChannel").await;
    assert_eq!(logged_attach["user"]["username"], json!("admin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirtd_restarting_while_domains_run_is_followed_and_the_states_stay_right() {
    let _serial = serial().await;
    let owner = login("owner").await;
    let admin = login("admin").await;
    let guest = running_guest(&owner).await;
    let (bare, bare_id) = define_bare_domain("crash");
    let (bare, bare_id) = (bare.as_str(), bare_id.as_str());
    daemon().virsh(&["start", bare]);
    vm_until(&admin, bare_id, "the bare domain RUNNING", EVENT, |v| {
        v["powerState"] == json!("RUNNING")
    })
    .await;
    let mut watcher = Watcher::start("admin", &[]).await;

    daemon().stop();
    // The host notices, says so, and does not pretend to know the power states.
    watcher.power_update(&guest.id, "UNKNOWN").await;
    let health: Value = reqwest::get(format!("{}/healthz", fixture().url))
        .await
        .expect("healthz")
        .json()
        .await
        .expect("json");
    assert_eq!(
        health["libvirt"]["state"],
        json!("disconnected"),
        "{health}"
    );
    assert_eq!(
        health["status"],
        json!("ok"),
        "libvirt is optional: {health}"
    );
    let started = Instant::now();
    let r = power(&owner, "suspend", &guest.id).await;
    assert_eq!(error_code(&r), Some("LIBVIRT_UNAVAILABLE"), "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The guest's agent does not depend on libvirtd.
    assert_eq!(vm(&owner, &guest.id).await["status"], json!("ONLINE"));
    // While libvirtd is away, the bare domain's QEMU dies: no event can tell.
    let pid = daemon().qemu_pid(bare);
    // SAFETY: kill(2) of the QEMU this test's daemon runs for its own domain.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    eventually("the killed QEMU gone", EVENT, || {
        !Path::new(&format!("/proc/{pid}")).exists()
    })
    .await;

    daemon().start();
    // Reconnected (backoff ≤ 30 s) and resynced: the truth, not the last known state.
    let within = Duration::from_secs(90);
    watcher.power_update(&guest.id, "RUNNING").await;
    let crashed = watcher
        .wait("the bare domain CRASHED", within, |l| {
            l["payload"]["data"]["id"] == json!(bare_id)
                && l["payload"]["data"]["powerState"] == json!("CRASHED")
        })
        .await;
    assert_eq!(
        crashed["payload"]["data"]["power"]["cause"],
        json!("resync"),
        "{crashed}"
    );
    assert_eq!(vm(&owner, &guest.id).await["powerState"], json!("RUNNING"));
    // And events flow again.
    let r = power(&owner, "suspend", &guest.id).await;
    assert!(r.get("errors").is_none(), "{r}");
    watcher.power_update(&guest.id, "PAUSED").await;
    let r = power(&owner, "resume", &guest.id).await;
    assert!(r.get("errors").is_none(), "{r}");
    watcher.power_update(&guest.id, "RUNNING").await;
    watcher.stop().await;
}

#[test]
fn doctor_reports_whether_libvirt_answers_and_why_not() {
    let uri = &daemon().uri;
    let dir = tempfile::tempdir().expect("tempdir");
    let doctor = |libvirt: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_infinibay"))
            .arg("doctor")
            .arg("--socket-dir")
            .arg(dir.path())
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--image-dir")
            .arg(&scratch().images)
            .arg("--libvirt")
            .arg(libvirt)
            .output()
            .expect("doctor")
    };
    let out = doctor(uri);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("libvirt at {uri} reachable: libvirt ")),
        "{text}"
    );
    assert!(text.contains("domain types qemu"), "{text}");
    let missing = dir.path().join("no-libvirtd");
    let out = doctor(&format!(
        "qemu+unix:///session?socket={}",
        missing.display()
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("warning") && l.contains("libvirt is not reachable"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("No such file or directory"),
        "libvirt's own reason: {line}"
    );
    assert!(text.contains("`none` to run without libvirt"), "{text}");
    // Optional: an unreachable libvirt is a warning, not a problem that fails doctor.
    assert!(out.status.success(), "{text}");
    let out = doctor("none");
    assert!(String::from_utf8_lossy(&out.stdout).contains("libvirt turned off"));
}

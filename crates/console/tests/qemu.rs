//! The console through the real host, in front of a real VNC server: `infinibay serve` (two
//! of them, on one throwaway PostgreSQL) and QEMU's VNC server of the e2e guest
//! (`-vnc unix:<socket dir>/vnc-<uuid>.sock`, security type None). One guest for every test
//! here (booted under TCG by `infinibay-e2e`), one test at a time:
//!
//! - the RFB handshake through `/console/<vm>` reaches ServerInit with the guest's size;
//! - a replayed ticket → 4410 and a line in the server's log; an expired ticket → 4401; the
//!   ticket of a user who lost the VM → 4403;
//! - a ticket minted by one `infinibay serve` is redeemed by the other;
//! - the dashboard's Console tab in headless Chromium shows the guest's screen, and the screen
//!   changes after typing into the guest's console (`web/tests/console.mjs`).
//!
//! Needs `INFINIBAY_TEST_PG_URL` (`scripts/lib/postgres.sh`), and for the Chromium test the
//! built dashboard (`scripts/build-web`, before the `infinibay` binary is built).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::rfb::{Link, Rfb};
use infinibay_console::{Ticket, sql};
use infinibay_e2e::fixture::{TiedChild, scratch_dir, shared_guest};
use infinibay_e2e::image::workspace_root;
use infinibay_e2e::{Guest, GuestOptions, HostOptions, HostProcess, host_binary};
use serde_json::{Value, json};
use sqlx::Connection;

/// One test at a time (each has its own runtime; a tokio mutex works across them).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Boot under TCG on a loaded 2-core machine: generous on purpose.
const BOOT: Duration = Duration::from_secs(180);
const ADMIN_PASSWORD: &str = "console-e2e-admin-password";
const GQL: Duration = Duration::from_secs(30);

/// Two `infinibay serve` on one PostgreSQL database, and the guest.
struct World {
    guest: &'static Guest,
    vm: String,
    /// Serves the guest's socket directory (its agent and its VNC server).
    a: HostProcess,
    /// The same database, a socket directory of its own that holds only a link to the guest's
    /// VNC socket (two hosts must not both talk to one agent).
    b: HostProcess,
    admin: String,
    admin_id: i64,
    database: String,
    _dirs: Vec<tempfile::TempDir>,
}

fn socket_dir() -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| scratch_dir("vnc").unwrap_or_else(|e| panic!("{e}")))
        .path()
        .to_path_buf()
}

fn world() -> &'static World {
    static WORLD: OnceLock<Result<World, String>> = OnceLock::new();
    WORLD
        .get_or_init(start_world)
        .as_ref()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A database of its own on the throwaway PostgreSQL server.
fn fresh_database() -> Result<String, String> {
    let admin = std::env::var("INFINIBAY_TEST_PG_URL").map_err(|_| {
        "INFINIBAY_TEST_PG_URL must name a PostgreSQL server \
         (source scripts/lib/postgres.sh; pg_throwaway_start)"
            .to_owned()
    })?;
    let name = format!("console_e2e_{}", uuid::Uuid::new_v4().simple());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .map_err(|e| format!("connect to {admin}: {e}"))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .map_err(|e| format!("CREATE DATABASE: {e}"))?;
        let _ = conn.close().await;
        Ok::<_, String>(())
    })?;
    let (base, _) = admin
        .rsplit_once('/')
        .ok_or("INFINIBAY_TEST_PG_URL names no database")?;
    Ok(format!("{base}/{name}"))
}

fn serve(socket_dir: &Path, data_dir: &Path, database: &str) -> Result<HostProcess, String> {
    let mut options = HostOptions::new(socket_dir, data_dir);
    options.extra_args = vec!["--database".into(), database.into()];
    options
        .env
        .push(("INFINIBAY_ADMIN_PASSWORD".into(), ADMIN_PASSWORD.into()));
    let binary = host_binary().map_err(|e| e.to_string())?;
    HostProcess::start(&binary, options, Duration::from_secs(60))
        .map_err(|e| format!("starting infinibay serve: {e}"))
}

fn start_world() -> Result<World, String> {
    let database = fresh_database()?;
    let guest = shared_guest(|| GuestOptions {
        name: "console".into(),
        hostname: "e2e-console".into(),
        // The agent makes the host register the VM (a console ticket needs a known VM).
        agent: true,
        qga: false,
        network: false,
        vnc: true,
        socket_dir: Some(socket_dir()),
        ..GuestOptions::default()
    })?;
    let vm = guest.vm_id().to_string();
    let data_a = scratch_dir("da").map_err(|e| e.to_string())?;
    let a = serve(&socket_dir(), data_a.path(), &database)?;
    let sockets_b = scratch_dir("sb").map_err(|e| e.to_string())?;
    let vnc = guest.vnc_socket().ok_or("the guest has no VNC socket")?;
    std::os::unix::fs::symlink(vnc, sockets_b.path().join(format!("vnc-{vm}.sock")))
        .map_err(|e| format!("linking the VNC socket: {e}"))?;
    let data_b = scratch_dir("db").map_err(|e| e.to_string())?;
    let b = serve(sockets_b.path(), data_b.path(), &database)?;
    let admin = a
        .login("admin", ADMIN_PASSWORD)
        .map_err(|e| format!("admin login: {e}\n{}", a.log_tail(40)))?;
    let me = a
        .graphql(Some(&admin), "query { me { id } }", json!({}), GQL)
        .map_err(|e| e.to_string())?;
    let admin_id = me["data"]["me"]["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| format!("me: {me}"))?;
    let world = World {
        guest,
        vm,
        a,
        b,
        admin,
        admin_id,
        database,
        _dirs: vec![data_a, sockets_b, data_b],
    };
    world.wait_ready()?;
    Ok(world)
}

impl World {
    /// Until the host knows the VM and the guest's init runs (its VGA mode is final then).
    fn wait_ready(&self) -> Result<(), String> {
        let started = Instant::now();
        loop {
            let known = self
                .gql(
                    &self.admin,
                    "query($id: ID!) { vm(id: $id) { id } }",
                    json!({"id": self.vm}),
                )
                .pointer("/data/vm/id")
                .is_some_and(|id| !id.is_null());
            if known
                && self
                    .guest
                    .console_tail(200)
                    .contains("init: guest e2e-console up")
            {
                return Ok(());
            }
            if started.elapsed() > BOOT || !self.guest.is_running() {
                return Err(format!(
                    "the guest did not come up, or the host does not know it\n{}\n{}",
                    self.a.log_tail(40),
                    self.guest.diagnostics()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn gql(&self, token: &str, query: &str, variables: Value) -> Value {
        self.a
            .graphql(Some(token), query, variables, GQL)
            .unwrap_or_else(|e| panic!("GraphQL: {e}\n{}", self.a.log_tail(40)))
    }

    /// A ticket for the guest's console, minted on host A as `token`'s user.
    fn mint(&self, token: &str) -> String {
        let r = self.gql(
            token,
            "mutation($id: ID!) { vmConsoleTicket(vmId: $id) { path } }",
            json!({"id": self.vm}),
        );
        r.pointer("/data/vmConsoleTicket/path")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("vmConsoleTicket: {r}"))
            .to_owned()
    }

    fn context(&self) -> String {
        format!(
            "--- serve A ---\n{}\n--- serve B ---\n{}\n{}",
            self.a.log_tail(30),
            self.b.log_tail(30),
            self.guest.diagnostics()
        )
    }
}

fn ws_url(host: &HostProcess, path: &str) -> String {
    format!("ws://{}{}", host.listen_addr(), path)
}

/// The line of `host`'s log that has every one of `needles`, waiting a little for it.
fn log_line(host: &HostProcess, needles: &[&str]) -> String {
    let started = Instant::now();
    loop {
        if let Some(line) = host
            .log()
            .lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
        {
            return line.to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no log line with {needles:?}\n{}",
            host.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a refused console sends: the handshake completes, then a close frame.
async fn refusal(url: &str) -> (u16, String) {
    let mut link = Link::websocket(url)
        .await
        .expect("the handshake completes, to carry the close code");
    assert!(link.read_exact(&mut [0u8; 1]).await.is_err());
    link.close_frame().cloned().expect("a close frame")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_infinibay_serve_the_rfb_handshake_reaches_server_init_with_the_guests_size() {
    let _serial = SERIAL.lock().await;
    let w = tokio::task::block_in_place(world);
    let path = tokio::task::block_in_place(|| w.mint(&w.admin));

    let link = Link::websocket(&ws_url(&w.a, &path))
        .await
        .expect("WebSocket to /console");
    let mut viewer = Rfb::handshake(link)
        .await
        .unwrap_or_else(|e| panic!("RFB handshake through serve: {e}\n{}", w.context()));
    let screen = tokio::task::block_in_place(|| w.guest.screendump(Duration::from_secs(30)))
        .expect("QMP screendump");
    assert_eq!(
        (u32::from(viewer.width), u32::from(viewer.height)),
        (screen.width, screen.height),
        "ServerInit through the host gives the size QEMU's display has"
    );
    assert_eq!(viewer.name, "QEMU");

    // And pixels flow: one whole raw frame, w × h × bytes per pixel.
    viewer.use_raw_encoding().await.expect("SetEncodings");
    viewer
        .request(false, 0, 0, viewer.width, viewer.height)
        .await
        .expect("FramebufferUpdateRequest");
    let (bytes, pixels) = viewer.read_update(true).await.expect("FramebufferUpdate");
    let frame = usize::from(viewer.width) * usize::from(viewer.height) * viewer.bytes_per_pixel;
    assert_eq!(bytes, frame as u64);
    let pixels = pixels.expect("one rectangle covering the screen");
    assert!(
        pixels.iter().any(|b| *b != pixels[0]),
        "the guest's console text is on the screen, not a blank frame"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_ticket_twice_is_refused_the_second_time_with_4410_and_a_server_log_line() {
    let _serial = SERIAL.lock().await;
    let w = tokio::task::block_in_place(world);
    let path = tokio::task::block_in_place(|| w.mint(&w.admin));
    let first = Rfb::handshake(
        Link::websocket(&ws_url(&w.a, &path))
            .await
            .expect("connect"),
    )
    .await
    .expect("the first use opens the console");

    let (code, reason) = refusal(&ws_url(&w.a, &path)).await;
    assert_eq!((code, reason.as_str()), (4410, "ticket already used"));
    let user = format!("user={}", w.admin_id);
    let line = tokio::task::block_in_place(|| {
        log_line(
            &w.a,
            &[
                "console refused: ticket already used",
                "code=4410",
                &w.vm,
                &user,
            ],
        )
    });
    assert!(line.contains("remote=127.0.0.1:"), "{line}");
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_ticket_and_the_ticket_of_a_user_who_lost_the_vm_are_refused() {
    let _serial = SERIAL.lock().await;
    let w = tokio::task::block_in_place(world);

    // Expired: a ticket as the store holds it, past its expiry.
    let expired = Ticket::generate().expect("ticket");
    let mut db = sqlx::PgConnection::connect(&w.database)
        .await
        .expect("connect to the hosts' database");
    sqlx::query(sql::postgres::MINT)
        .bind(expired.hash().as_bytes().as_slice())
        .bind(w.admin_id)
        .bind(&w.vm)
        .bind(chrono::Utc::now() - chrono::Duration::seconds(1))
        .execute(&mut db)
        .await
        .expect("an expired ticket");
    let _ = db.close().await;
    let url = ws_url(
        &w.a,
        &format!("/console/{}?ticket={}", w.vm, expired.as_str()),
    );
    assert_eq!(refusal(&url).await.0, 4401);

    // Another user's: minted while the VM was theirs, presented after it was taken away.
    let (bob_id, bob_path) = tokio::task::block_in_place(|| {
        let name = format!("bob{}", uuid::Uuid::new_v4().simple());
        let created = w.gql(
            &w.admin,
            "mutation($u: String!) { createUser(input: {username: $u, password: \"bobs-long-password\"}) { id } }",
            json!({"u": name}),
        );
        let bob_id = created["data"]["createUser"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("createUser: {created}"))
            .to_owned();
        let give = "mutation($id: ID!, $u: ID) { setVmOwner(vmId: $id, userId: $u) { id } }";
        let r = w.gql(&w.admin, give, json!({"id": w.vm, "u": bob_id}));
        assert!(r.get("errors").is_none(), "{r}");
        let bob = w.a.login(&name, "bobs-long-password").expect("bob logs in");
        let path = w.mint(&bob);
        let r = w.gql(&w.admin, give, json!({"id": w.vm, "u": null}));
        assert!(r.get("errors").is_none(), "{r}");
        (bob_id, path)
    });
    let (code, reason) = refusal(&ws_url(&w.a, &bob_path)).await;
    assert_eq!((code, reason.as_str()), (4403, "not allowed"));
    let user = format!("user={bob_id}");
    tokio::task::block_in_place(|| {
        log_line(
            &w.a,
            &["console refused: not allowed", "code=4403", &w.vm, &user],
        )
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_minted_on_one_serve_is_redeemed_on_another_on_the_same_postgresql() {
    let _serial = SERIAL.lock().await;
    let w = tokio::task::block_in_place(world);
    let path = tokio::task::block_in_place(|| w.mint(&w.admin));

    let viewer = Rfb::handshake(
        Link::websocket(&ws_url(&w.b, &path))
            .await
            .expect("WebSocket to the other serve"),
    )
    .await
    .unwrap_or_else(|e| panic!("RFB through the other serve: {e}\n{}", w.context()));
    assert_eq!(viewer.name, "QEMU");
    // And it was consumed for both.
    assert_eq!(refusal(&ws_url(&w.a, &path)).await.0, 4410);
}

#[test]
fn the_console_tab_in_chromium_shows_the_guests_screen_and_it_changes_after_typing() {
    let serial = SERIAL.blocking_lock();
    let w = world();
    let root = workspace_root();
    assert!(
        root.join("web/node_modules/playwright-core").is_dir()
            && root.join("web/dist/index.html").is_file(),
        "the dashboard is not built: run scripts/build-web (then rebuild infinibay)"
    );
    let out = root.join("target/web-test-output/console");
    let mut command = Command::new("node");
    command
        .arg(root.join("web/tests/console.mjs"))
        .env("CONSOLE_TEST_URL", format!("http://{}", w.a.listen_addr()))
        .env("CONSOLE_TEST_USER", "admin")
        .env("CONSOLE_TEST_PASSWORD", ADMIN_PASSWORD)
        .env("CONSOLE_TEST_VM", &w.vm)
        .env("WEB_TEST_OUTPUT", &out)
        .current_dir(&root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut node = TiedChild::spawn(command).expect("starting node");
    let child = node.child();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for node") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the browser test did not finish in 180 s\n{}",
            w.context()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut output = String::new();
    use std::io::Read as _;
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut output);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut output);
    }
    eprintln!("{output}");
    assert!(
        status.success(),
        "web/tests/console.mjs failed (screenshots in {}):\n{output}\n{}",
        out.display(),
        w.context()
    );
    drop(serial);
}

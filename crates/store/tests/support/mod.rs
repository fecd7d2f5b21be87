//! Real databases for the tests: a SQLite file in a temp dir, and a database of its own on a
//! PostgreSQL server (`INFINIBAY_TEST_PG_URL`, else a throwaway server this process starts).
#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use infinibay_store::Store;
use sqlx::Connection;

/// A store and what keeps its database alive.
pub struct TestDb {
    pub store: Arc<dyn Store>,
    pub url: String,
    pub dir: Option<tempfile::TempDir>,
}

pub async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().expect("temp dir for SQLite");
    let url = format!("sqlite://{}/store.db", dir.path().display());
    let store = infinibay_store::open(&url)
        .await
        .expect("open SQLite store");
    TestDb {
        store,
        url,
        dir: Some(dir),
    }
}

pub async fn postgres() -> TestDb {
    let url = fresh_pg_database().await;
    let store = infinibay_store::open(&url)
        .await
        .expect("open PostgreSQL store");
    TestDb {
        store,
        url,
        dir: None,
    }
}

/// Creates a database with a random name and returns its URL.
pub async fn fresh_pg_database() -> String {
    let admin = pg_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("connect to PostgreSQL test server {admin}: {e}"));
    let name = format!("infinibay_test_{:016x}", rand::random::<u64>());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("CREATE DATABASE");
    let _ = conn.close().await;
    let (base, _) = admin
        .rsplit_once('/')
        .expect("INFINIBAY_TEST_PG_URL names a database");
    format!("{base}/{name}")
}

/// `INFINIBAY_TEST_PG_URL`, or a throwaway server started once per test binary.
pub fn pg_admin_url() -> String {
    if let Ok(url) = std::env::var("INFINIBAY_TEST_PG_URL") {
        if !url.is_empty() {
            return url;
        }
    }
    static SERVER: OnceLock<String> = OnceLock::new();
    SERVER
        .get_or_init(|| match start_throwaway_server() {
            Ok(url) => url,
            Err(why) => panic!(
                "PostgreSQL tests need a server and none could be had: {why}. \
                 Set INFINIBAY_TEST_PG_URL (see scripts/lib/postgres.sh) or install \
                 PostgreSQL (initdb, postgres)."
            ),
        })
        .clone()
}

/// The watchdog shell holding the server; dropping the process's end of its stdin (at exit)
/// stops the server and removes its directory.
static WATCHDOG: Mutex<Option<Child>> = Mutex::new(None);

fn find_bin(name: &str) -> Option<PathBuf> {
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

fn run_as_prefix() -> Result<Vec<String>, String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| format!("run `id -u`: {e}"))?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Ok(Vec::new());
    }
    // initdb refuses to run as root.
    let user = if Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        "postgres"
    } else {
        "nobody"
    };
    Ok(vec![
        "runuser".into(),
        "-u".into(),
        user.into(),
        "--".into(),
    ])
}

fn command(prefix: &[String], program: &Path) -> Command {
    if prefix.is_empty() {
        Command::new(program)
    } else {
        let mut cmd = Command::new(&prefix[0]);
        cmd.args(&prefix[1..]).arg(program);
        cmd
    }
}

fn start_throwaway_server() -> Result<String, String> {
    let initdb = find_bin("initdb").ok_or("initdb not found")?;
    let postgres = find_bin("postgres").ok_or("postgres not found")?;
    let prefix = run_as_prefix()?;
    let dir = tempfile::Builder::new()
        .prefix("infinibay-pg-test.")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?
        .keep();
    if let Some(user) = prefix.get(2) {
        let status = Command::new("chown")
            .arg(user)
            .arg(&dir)
            .status()
            .map_err(|e| format!("chown: {e}"))?;
        if !status.success() {
            return Err(format!("chown {user} {} failed", dir.display()));
        }
    }
    let data = dir.join("data");
    let out = command(&prefix, &initdb)
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
        .output()
        .map_err(|e| format!("run initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("free port: {e}"))?
        .port();
    let script = format!(
        "'{postgres}' -D '{data}' -k '{dir}' -h 127.0.0.1 -p {port} -c fsync=off \
         -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 \
         >'{dir}/server.log' 2>&1 & pid=$!; read _; kill -INT $pid; wait $pid; rm -rf '{dir}'",
        postgres = postgres.display(),
        data = data.display(),
        dir = dir.display(),
    );
    let mut sh = if prefix.is_empty() {
        Command::new("sh")
    } else {
        let mut c = Command::new(&prefix[0]);
        c.args(&prefix[1..]).arg("sh");
        c
    };
    let child = sh
        .arg("-c")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start postgres: {e}"))?;
    if let Ok(mut slot) = WATCHDOG.lock() {
        *slot = Some(child);
    }
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    // Its own thread and runtime: we may be called from inside a test's runtime.
    let probe_url = url.clone();
    let ready = std::thread::spawn(move || -> Result<(), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("runtime: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        runtime.block_on(async {
            loop {
                match sqlx::PgConnection::connect(&probe_url).await {
                    Ok(conn) => {
                        let _ = conn.close().await;
                        return Ok(());
                    }
                    Err(e) if Instant::now() > deadline => {
                        return Err(format!(
                            "server did not accept connections within 60 s: {e}"
                        ));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })
    })
    .join()
    .map_err(|_| "readiness probe panicked".to_owned())?;
    if let Err(why) = ready {
        let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
        return Err(format!("{why}; server log: {log}"));
    }
    Ok(url)
}

/// Stops the throwaway server now (tests normally rely on process exit closing the pipe).
pub fn stop_throwaway_server() {
    if let Ok(mut slot) = WATCHDOG.lock() {
        if let Some(mut child) = slot.take() {
            if let Some(mut stdin) = child.stdin.take() {
                let _ = stdin.write_all(b"\n");
            }
            let _ = child.wait();
        }
    }
}

/// The single integer a query returns, asked straight of the database behind `url`.
pub async fn count(url: &str, sql: &str) -> i64 {
    if url.starts_with("sqlite") {
        let mut conn = sqlx::SqliteConnection::connect(url)
            .await
            .expect("connect to the SQLite test database");
        sqlx::query_scalar(sql)
            .fetch_one(&mut conn)
            .await
            .expect("count query")
    } else {
        let mut conn = sqlx::PgConnection::connect(url)
            .await
            .expect("connect to the PostgreSQL test database");
        sqlx::query_scalar(sql)
            .fetch_one(&mut conn)
            .await
            .expect("count query")
    }
}

/// One test per story function, on SQLite and on PostgreSQL: `$name(store)`, and after
/// `reopening:` the stories that also take the database URL to open it again.
// Not every test file that shares this module runs stories (`open.rs` does not).
#[allow(unused_macros)]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        $crate::support::both_backends!($($name),*; reopening:);
    };
    ($($name:ident),* $(,)?; reopening: $($reopen:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = crate::support::sqlite().await;
                    crate::story::$name(db.store.clone()).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $reopen() {
                    let crate::support::TestDb { store, url, dir } = crate::support::sqlite().await;
                    crate::story::$reopen(store, url).await;
                    drop(dir);
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = crate::support::postgres().await;
                    crate::story::$name(db.store.clone()).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $reopen() {
                    let crate::support::TestDb { store, url, dir } = crate::support::postgres().await;
                    crate::story::$reopen(store, url).await;
                    drop(dir);
                }
            )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use both_backends;

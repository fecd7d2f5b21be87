//! `infinibay serve`: the start-up checks with clear errors, then the core, the API and the
//! process's HTTP side (`/healthz`) until a shutdown signal.

use std::future::Future;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use infinibay_api::auth::{self, SecretError};
use infinibay_api::users::{self, FirstAdmin, UserError};
use infinibay_api::{ApiSettings, Routes, settings_for};
use infinibay_console::Console;
use infinibay_core::Core;
use infinibay_store::Store;

use infinibay_api::connections::ConnectionTracker;
use infinibay_api::limits::ApiConfig;

use crate::config::Config;
use crate::console::SocketDirVnc;
use crate::listener::{self, ServeOptions};

/// The listeners `serve` serves: the main one (API, dashboard, `/healthz`) and the metrics
/// one (`/metrics` only). A missing metrics listener is bound at `api.metrics_listen`.
#[derive(Debug)]
pub struct Listeners {
    /// The main listener (`listen`).
    pub http: TcpListener,
    /// The metrics listener (`api.metrics_listen`), when already bound.
    pub metrics: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(http: TcpListener) -> Self {
        Self {
            http,
            metrics: None,
        }
    }
}

/// Why the host could not start or stopped with an error.
#[derive(Debug, Error)]
pub enum StartError {
    /// The listen address is taken or not allowed.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Explanation with the fix.
        reason: String,
    },
    /// The data directory cannot be created or written.
    #[error(
        "data directory {path} is not usable: {source} (create it and make it writable for this user, or pass --data-dir)"
    )]
    DataDir {
        /// Directory.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The database cannot be opened.
    #[error("database {url} is unreachable: {source}")]
    Database {
        /// URL with any password masked.
        url: String,
        /// Store error.
        source: infinibay_store::StoreError,
    },
    /// Serving HTTP failed.
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
}

/// Bind the listen address, explaining the usual failures.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    bind_named(addr, "--listen / INFINIBAY_LISTEN").await
}

/// Bind the metrics listener (`api.metrics_listen`), explaining the usual failures.
pub async fn bind_metrics(addr: SocketAddr) -> Result<TcpListener, StartError> {
    bind_named(addr, "api.metrics_listen / INFINIBAY_API__METRICS_LISTEN").await
}

async fn bind_named(addr: SocketAddr, setting: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|e| {
        let reason = match e.kind() {
            ErrorKind::AddrInUse => format!("address already in use (another infinibay or another service runs there; stop it or choose another {setting})"),
            ErrorKind::PermissionDenied => format!("permission denied (ports below 1024 need privileges; choose another {setting})"),
            ErrorKind::AddrNotAvailable => format!("address not available on this machine (check {setting})"),
            _ => e.to_string(),
        };
        StartError::Listen { addr, reason }
    })
}

/// Create the data directory if needed, make it private and prove it writable: the directory
/// `0700`, every file directly in it `0600` (the SQLite database, its `-wal` and `-shm`, the
/// JWT secret), whatever the umask was when they were created. Subdirectories (the agent
/// downloads) are left as they are.
pub fn prepare_data_dir(dir: &Path) -> Result<(), StartError> {
    let err = |source| StartError::DataDir {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    make_private(dir).map_err(err)?;
    let probe = dir.join(format!(".infinibay-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"ok").map_err(err)?;
    std::fs::remove_file(&probe).map_err(err)?;
    Ok(())
}

/// `dir` `0700` and its files `0600`, where they were looser. A file that vanishes meanwhile
/// (SQLite's `-shm` at a close) is no error, nor one this user may not chmod.
pub fn make_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tighten = |path: &Path, meta: &std::fs::Metadata, mode: u32| -> std::io::Result<()> {
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    };
    tighten(dir, &std::fs::metadata(dir)?, 0o700)?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if meta.is_file() {
            match tighten(&entry.path(), &meta, 0o600) {
                // A file of another user (one only they may chmod) is out of others' reach
                // anyway once the directory is 0700; `doctor` still names it.
                Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::PermissionDenied) => {
                }
                other => other?,
            }
        }
    }
    Ok(())
}

/// An SQLite database outside the data directory (`--database sqlite:///elsewhere/x.db`)
/// and its `-wal`, `-shm`, `-journal`: `0600` where they were looser.
fn make_sqlite_private(url: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Some(rest) = url.strip_prefix("sqlite://") else {
        return Ok(());
    };
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || path.contains(":memory:") {
        return Ok(());
    }
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let file = PathBuf::from(format!("{path}{suffix}"));
        match std::fs::metadata(&file) {
            Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((auth, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// Open the configured database (migrations included).
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StartError> {
    if config.process.database.is_none() {
        prepare_data_dir(&config.process.data_dir)?;
    }
    let url = config.database_url();
    if let Err(e) = make_sqlite_private(&url) {
        tracing::warn!(target: "infinibay::host", "cannot make the database files private: {e}");
    }
    let store = infinibay_store::open_with_retention(&url, config.core.maintenance.retention())
        .await
        .map_err(|source| StartError::Database {
            url: mask_password(&url),
            source,
        })?;
    store.ping().await.map_err(|source| StartError::Database {
        url: mask_password(&url),
        source,
    })?;
    Ok(store)
}

/// What the host serves beside `/healthz`: the API's routes (and the dashboard), and the
/// console service when the API has one (its sessions are ended before the core stops, so that
/// their audit records still reach the command log).
pub struct Mounted {
    /// Routes merged beside `/healthz`.
    pub router: Router,
    /// The console service of those routes.
    pub console: Option<Arc<Console>>,
}

impl From<Router> for Mounted {
    fn from(router: Router) -> Self {
        Self {
            router,
            console: None,
        }
    }
}

impl From<Routes> for Mounted {
    fn from(routes: Routes) -> Self {
        Self {
            router: routes.router,
            console: Some(routes.console),
        }
    }
}

impl Mounted {
    /// The same, with the router changed (e.g. the dashboard mounted around it).
    pub fn map_router(self, f: impl FnOnce(Router) -> Router) -> Self {
        Self {
            router: f(self.router),
            console: self.console,
        }
    }
}

/// How long open consoles get to close (1001, their viewers' close replies, their audit
/// records) before the core stops: the console's own close timeout, and a little more.
const CONSOLE_CLOSE_GRACE: Duration = Duration::from_secs(6);

/// End every console session and wait (bounded) until they are closed and recorded.
async fn end_consoles(console: &Console) {
    let open = console.shutdown();
    if open > 0 {
        tracing::info!(target: "infinibay::host", "closing {open} console sessions");
    }
    if tokio::time::timeout(CONSOLE_CLOSE_GRACE, console.closed())
        .await
        .is_err()
    {
        tracing::warn!(target: "infinibay::host", "console sessions still closing after {CONSOLE_CLOSE_GRACE:?}");
    }
}

/// Serve `app` on the main listener and its `/metrics` on the metrics listener until `host`
/// is shut down, then end the consoles and wait for the host to stop. The listeners give every
/// request the peer's address (`ConnectInfo`), so that console refusals log where they came from.
pub async fn serve(
    host: Core,
    listeners: (TcpListener, TcpListener),
    app: Router,
    api: &ApiConfig,
    console: Option<Arc<Console>>,
) -> Result<(), StartError> {
    let token = host_shutdown(&host);
    let (http, metrics) = listeners;
    serve_listeners(http, Some(metrics), app, api, console, token).await;
    host.stopped().await;
    Ok(())
}

/// Serve `app` on `http`, and its `/metrics` alone on `metrics` when given, through the
/// hardened accept loop (`api`'s header timeout and unauthenticated-connection bound) until
/// `token` is cancelled; whatever ends the HTTP side ends `console`'s sessions (when given),
/// then cancels `token`. `serve` and the scale-out roles share it.
pub(crate) async fn serve_listeners(
    http: TcpListener,
    metrics: Option<TcpListener>,
    app: Router,
    api: &ApiConfig,
    console: Option<Arc<Console>>,
    token: CancellationToken,
) {
    let tracker = ConnectionTracker::new(
        api.unauthenticated_connections_per_address,
        api.unauthenticated_connections,
    );
    let metrics_task = metrics.map(|metrics| {
        tokio::spawn(listener::serve(
            metrics,
            infinibay_api::rest::metrics_only(app.clone()),
            ServeOptions {
                header_timeout: api.header_timeout(),
                tracker: tracker.clone(),
                admit: false,
            },
            token.clone(),
        ))
    });
    listener::serve(
        http,
        app,
        ServeOptions {
            header_timeout: api.header_timeout(),
            tracker,
            admit: true,
        },
        token.clone(),
    )
    .await;
    // Whatever ended the HTTP side ends the rest. Upgraded connections (consoles) are not
    // waited for by the graceful shutdown: they are ended here, if the shutdown signal has not
    // already ended them.
    if let Some(console) = &console {
        end_consoles(console).await;
    }
    token.cancel();
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
}

fn host_shutdown(host: &Core) -> CancellationToken {
    host.shutdown_token()
}

/// The whole `serve` command for an already bound listener: open the store, start the core,
/// serve `/healthz` (plus the routes `extra` adds, e.g. [`api_router`]) until `shutdown`
/// completes.
pub async fn run<R>(
    config: Config,
    listeners: impl Into<Listeners>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    extra: impl FnOnce(&Core) -> R,
) -> Result<(), StartError>
where
    R: Into<Mounted>,
{
    let store = open_store(&config).await?;
    run_with_store(config, store, listeners, shutdown, extra).await
}

/// [`run`] on a store the caller already opened ([`prepare`] opens it to create the first
/// admin).
pub async fn run_with_store<R>(
    config: Config,
    store: Arc<dyn Store>,
    listeners: impl Into<Listeners>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    extra: impl FnOnce(&Core) -> R,
) -> Result<(), StartError>
where
    R: Into<Mounted>,
{
    let Listeners { http, metrics } = listeners.into();
    let metrics = match metrics {
        Some(l) => l,
        None => bind_metrics(config.api.metrics_listen).await?,
    };
    raise_open_files_limit();
    let token = CancellationToken::new();
    let host = Core::start(config.core, store, token.clone());
    let mounted: Mounted = extra(&host).into();
    let console = mounted.console.clone();
    tokio::spawn(async move {
        shutdown.await;
        // Consoles first: their audit records go through the core's writer.
        if let Some(console) = &console {
            end_consoles(console).await;
        }
        token.cancel();
    });
    let app = crate::http::router(host.clone()).merge(mounted.router);
    if let Ok(addr) = http.local_addr() {
        tracing::info!(target: "infinibay::http", "listening on http://{addr}");
    }
    if let Ok(addr) = metrics.local_addr() {
        tracing::info!(target: "infinibay::http", "metrics on http://{addr}/metrics");
    }
    serve(host, (http, metrics), app, &config.api, mounted.console).await
}

/// One socket per VM (and one per console): raise the open-files limit to its hard maximum.
pub fn raise_open_files_limit() {
    match infinibay_core::system::raise_nofile_limit() {
        Ok((before, after)) if before != after => {
            tracing::info!(target: "infinibay::host", "open-files limit raised from {before} to {after}")
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(target: "infinibay::host", "cannot raise the open-files limit: {e}")
        }
    }
}

/// The API's routes on a running core: it reaches the core only through the
/// [`infinibay_control::VmControl`] interface, reads the same store, and its background tasks
/// stop with the core. The console finds VNC sockets in the core's socket directory.
pub fn api_router(core: &Core, mut settings: ApiSettings) -> Routes {
    settings.vnc = Arc::new(SocketDirVnc::new(core.config().socket_dir.clone()));
    infinibay_api::routes(
        Arc::new(core.clone()),
        core.store(),
        settings,
        core.shutdown_token(),
    )
}

/// Why the API could not be prepared.
#[derive(Debug, Error)]
pub enum SetupError {
    /// The secret file.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The database.
    #[error("cannot prepare users: {0}")]
    Users(#[from] UserError),
    /// Opening the store.
    #[error(transparent)]
    Start(#[from] StartError),
}

/// Before serving: the JWT secret (created on first start) and the first admin (created when
/// there is no user; its generated password is returned for printing once).
/// The first admin's password comes from `INFINIBAY_ADMIN_PASSWORD` when set.
pub async fn prepare(config: &Config) -> Result<Prepared, SetupError> {
    prepare_with_admin_password(config, std::env::var(users::ADMIN_PASSWORD_ENV).ok()).await
}

/// [`prepare`] with the first admin's password given by the caller (`infinibay demo` chooses
/// one and prints it); `None` generates one.
pub async fn prepare_with_admin_password(
    config: &Config,
    admin_password: Option<String>,
) -> Result<Prepared, SetupError> {
    let data_dir = &config.process.data_dir;
    prepare_data_dir(data_dir)?;
    let secret = auth::load_or_create_secret(data_dir)?;
    let store = open_store(config).await?;
    let first_admin = users::ensure_first_admin(store.as_ref(), admin_password).await?;
    let mut settings = settings_for(data_dir.clone(), secret);
    settings.limits = config.api.clone();
    settings.graphiql_page = infinibay_dashboard::graphiql_page();
    settings.cors_origins = config.process.cors_origins.clone();
    Ok(Prepared {
        settings,
        first_admin,
        store,
    })
}

/// What [`prepare`] made ready for serving.
pub struct Prepared {
    /// The API's settings.
    pub settings: ApiSettings,
    /// The first admin, when this start created it.
    pub first_admin: Option<FirstAdmin>,
    /// The open store, to hand to [`run_with_store`]: one store per process, because a second
    /// pool on the same SQLite file only adds a window in which the two disagree.
    pub store: Arc<dyn Store>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_in_messages() {
        assert_eq!(
            mask_password("postgres://u:secret@db:5432/x"),
            "postgres://u:***@db:5432/x"
        );
        assert_eq!(
            mask_password("sqlite://./data/x.db"),
            "sqlite://./data/x.db"
        );
    }

    #[tokio::test]
    async fn a_taken_port_is_a_clear_error() {
        let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = taken.local_addr().expect("addr");
        let err = bind(addr).await.expect_err("port is taken");
        assert!(err.to_string().contains("address already in use"), "{err}");
    }

    #[test]
    fn the_data_dir_and_its_files_become_private_whatever_they_were() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("mkdir");
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for name in ["infinibay.db", "infinibay.db-wal", "infinibay.db-shm"] {
            std::fs::write(data.join(name), b"x").expect("write");
            std::fs::set_permissions(data.join(name), std::fs::Permissions::from_mode(0o644))
                .expect("chmod");
        }
        std::fs::create_dir(data.join("infiniservice")).expect("subdir");
        prepare_data_dir(&data).expect("prepare");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        for name in ["infinibay.db", "infinibay.db-wal", "infinibay.db-shm"] {
            assert_eq!(mode(&data.join(name)), 0o600, "{name}");
        }
        assert_eq!(
            mode(&data.join("infiniservice")),
            0o755,
            "subdirectories are left alone"
        );
    }

    #[test]
    fn an_unwritable_data_dir_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        let err = prepare_data_dir(&file.join("sub")).expect_err("a file is not a directory");
        assert!(err.to_string().contains("data directory"), "{err}");
    }
}

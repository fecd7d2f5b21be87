//! A real server for the API tests: SQLite in a temp dir, the simulator providing a VM over a
//! real socket, `serve::run` with the API router on a free port, and four users.
#![allow(dead_code)]

// The core's test helpers (its settings for tests), shared rather than copied.
#[path = "../../../core/tests/common/mod.rs"]
pub mod core_common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::oneshot;

use infinibay::api;
use infinibay::api::users::{self, CreateUser};
use infinibay::config::{Config, ProcessConfig};
use infinibay::store::{Role, Store, UserRecord};
use infinibay_sim::{SimArgs, Simulator};

pub const PASSWORD: &str = "correct-horse-battery";

pub struct TestUser {
    pub record: UserRecord,
    pub password: String,
}

pub struct Server {
    pub url: String,
    pub addr: SocketAddr,
    /// `/metrics` lives on its own listener.
    pub metrics_url: String,
    pub data_dir: PathBuf,
    /// Where the VMs' sockets are (the simulator's, and any fake guest a test adds); the
    /// console looks for `vnc-<vm>.sock` there.
    pub socket_dir: PathBuf,
    pub vm_id: String,
    pub store: Arc<dyn Store>,
    pub secret: Vec<u8>,
    pub admin: TestUser,
    pub owner: TestUser,
    pub other: TestUser,
    pub victim: TestUser,
    pub sim: Option<Simulator>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

async fn user(store: &dyn Store, name: &str, role: Role, permissions: &[&str]) -> TestUser {
    let record = users::create_user(
        store,
        CreateUser {
            username: name.to_owned(),
            password: PASSWORD.to_owned(),
            role,
            department: Some("eng".into()),
            permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
        },
    )
    .await
    .expect("create test user");
    TestUser {
        record,
        password: PASSWORD.to_owned(),
    }
}

impl Server {
    /// Start everything with `vms` simulated VMs; the first is owned by `owner`.
    pub async fn start(vms: usize, interval: Duration) -> Self {
        Self::start_with(vms, interval, |_| {}).await
    }

    /// [`Server::start`] with the API's settings changed by `tweak` first.
    pub async fn start_with(
        vms: usize,
        interval: Duration,
        tweak: impl FnOnce(&mut api::ApiSettings),
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ibapi")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let sockets = dir.path().join("s");
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&sockets).expect("socket dir");
        std::fs::create_dir_all(&data_dir).expect("data dir");
        let db_url = format!("sqlite://{}", dir.path().join("host.db").display());

        let mut args = SimArgs::new(vms, &sockets);
        args.interval = interval;
        args.stats_every = Duration::ZERO;
        let sim = Simulator::start(&args).await.expect("simulator");
        let vm_id = sim.vms()[0].id.to_string();

        let store = infinibay::store::open(&db_url).await.expect("open store");
        let admin = user(store.as_ref(), "admin", Role::Admin, &[]).await;
        let owner = user(store.as_ref(), "owner", Role::User, &[]).await;
        let other = user(
            store.as_ref(),
            "other",
            Role::User,
            &[users::UNSAFE_COMMANDS],
        )
        .await;
        let victim = user(store.as_ref(), "victim", Role::User, &[]).await;
        store
            .upsert_vms(&[(vm_id.clone(), chrono::Utc::now())])
            .await
            .expect("register VM");
        store
            .set_vm_owner(&vm_id, Some(owner.record.id), Some("eng"))
            .await
            .expect("owner");

        let secret = api::auth::load_or_create_secret(&data_dir).expect("secret");
        let mut settings = api::settings_for(data_dir.clone(), secret.clone());
        settings.revocation_sweep = Duration::from_millis(500);
        tweak(&mut settings);

        let config = Config {
            process: ProcessConfig {
                database: Some(db_url.clone()),
                data_dir: data_dir.clone(),
                ..ProcessConfig::default()
            },
            core: core_common::test_config(&sockets),
            api: settings.limits.clone(),
            ..Config::default()
        };

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free port");
        let addr = listener.local_addr().expect("addr");
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a free port for /metrics");
        let metrics_addr = metrics.local_addr().expect("addr");
        let listeners = infinibay::serve::Listeners {
            http: listener,
            metrics: Some(metrics),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(e) = infinibay::serve::run(config, listeners, shutdown, move |core| {
                infinibay::serve::api_router(core, settings)
            })
            .await
            {
                eprintln!("server ended with an error: {e}");
            }
        });
        let server = Self {
            url: format!("http://{addr}"),
            addr,
            metrics_url: format!("http://{metrics_addr}/metrics"),
            data_dir,
            socket_dir: sockets,
            vm_id,
            store,
            secret,
            admin,
            owner,
            other,
            victim,
            sim: Some(sim),
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        };
        server.wait_online().await;
        server
    }

    pub async fn wait_online(&self) {
        let token = self.login(&self.admin).await;
        let started = Instant::now();
        loop {
            let r = self
                .gql(
                    Some(&token),
                    "query($id: ID!){ vm(id: $id) { status latestMetrics { cpuPercent } } }",
                    json!({"id": self.vm_id}),
                )
                .await;
            if r.pointer("/data/vm/status") == Some(&json!("ONLINE"))
                && r.pointer("/data/vm/latestMetrics/cpuPercent")
                    .is_some_and(|c| !c.is_null())
            {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the simulated VM did not come online with a sample: {r}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A VM the store knows (registered now, with this owner) that no simulated guest backs.
    pub async fn scratch_vm(&self, id: &str, owner: Option<i64>) {
        self.store
            .upsert_vms(&[(id.to_owned(), chrono::Utc::now())])
            .await
            .expect("scratch VM");
        self.store
            .set_vm_owner(id, owner, None)
            .await
            .expect("scratch VM owner");
    }

    pub async fn gql(&self, token: Option<&str>, query: &str, variables: Value) -> Value {
        let mut req = reqwest::Client::new()
            .post(format!("{}/graphql", self.url))
            .json(&json!({"query": query, "variables": variables}));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.expect("POST /graphql");
        assert!(
            !res.status().is_server_error(),
            "GraphQL must never answer 5xx: {}",
            res.status()
        );
        res.json().await.expect("GraphQL answers JSON")
    }

    pub async fn login(&self, user: &TestUser) -> String {
        let r = self
            .gql(
                None,
                "mutation($u:String!,$p:String!){ login(username:$u, password:$p){ token } }",
                json!({"u": user.record.username, "p": user.password}),
            )
            .await;
        r.pointer("/data/login/token")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("login of {} failed: {r}", user.record.username))
            .to_owned()
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        if let Some(sim) = self.sim.take() {
            sim.shutdown().await;
        }
    }
}

/// The `extensions.code` of the first error, if any.
pub fn error_code(response: &Value) -> Option<String> {
    response
        .pointer("/errors/0/extensions/code")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

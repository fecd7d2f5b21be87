//! What every API surface shares: the core's interface, the store, the authenticator, the VM owner cache, the command
//! latency histogram, the open graphql-ws sessions, and the limits (login throttle, database
//! turns per user).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use infinibay_control::VmControl;
use infinibay_store::{MetricSample, Store, UserRecord, VmRecord};

use infinibay_console::ConsoleConfig;

use super::auth::{self, AuthError, Authenticator};
use super::authz;
use super::console::{ConsoleService, VncLocator};
use super::error::ApiError;
use super::histogram::{Histogram, LATENCY_BUCKETS};
use super::limits::ApiConfig;
use super::login_throttle::{LoginThrottle, ThrottlePolicy};
use super::sessions::Sessions;
use super::work_limiter::{Principal, WorkLimiter, WorkPermit};

/// Start-up settings of the API.
#[derive(Clone)]
pub struct ApiSettings {
    /// The host's data directory (secret, agent binaries).
    pub data_dir: PathBuf,
    /// JWT signing secret.
    pub secret: Vec<u8>,
    /// Token lifetime.
    pub token_ttl: Duration,
    /// How often open real-time connections are checked against the user table (catches
    /// `infinibay user delete|passwd` run beside a running server).
    pub revocation_sweep: Duration,
    /// Where VMs' VNC servers are (the console's gate asks it).
    pub vnc: Arc<dyn VncLocator>,
    /// The console's bounds and clocks.
    pub console: ConsoleConfig,
    /// More `/metrics` lines from the process that serves the API (`infinibay api`: its NATS
    /// connection and the fleet's nodes).
    pub extra_metrics: Option<ExtraMetrics>,
    /// The `[api]` section: limits, GraphiQL, the metrics listener.
    pub limits: ApiConfig,
    /// GraphiQL's page from the dashboard's web build (`infinibay_dashboard::graphiql_page`),
    /// answered on `GET /graphql` when `api.graphiql` is on; `None`: the build is missing.
    pub graphiql_page: Option<&'static [u8]>,
    /// Origins (`https://host[:port]`) whose pages may call the API from a browser, with
    /// credentials (seed 003 serves its frontend from `FRONTEND_URL`). Empty: no CORS headers.
    pub cors_origins: Vec<String>,
}

/// Writes more Prometheus lines into `/metrics`.
pub type ExtraMetrics = Arc<dyn Fn(&mut String) + Send + Sync>;

impl std::fmt::Debug for ApiSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSettings")
            .field("data_dir", &self.data_dir)
            .field("token_ttl", &self.token_ttl)
            .field("console", &self.console)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    /// The core, reached only through its interface.
    pub control: Arc<dyn VmControl>,
    /// History, VM records and users (the API writes only accounts, ownership and console
    /// tickets).
    pub store: Arc<dyn Store>,
    pub auth: Authenticator,
    pub settings: ApiSettings,
    /// vm id → owner id, as stored; filled at start, kept current by this process's writes.
    pub owners: RwLock<HashMap<String, Option<i64>>>,
    /// Command durations by outcome (`ok`, `error`).
    pub latency: Mutex<HashMap<&'static str, Histogram>>,
    /// Open graphql-ws connections (revocation closes them).
    pub sessions: Sessions,
    /// The web console (tickets, the `/console/{vm_id}` route, its sessions).
    pub console: ConsoleService,
    /// Failed logins per account and address.
    pub throttle: LoginThrottle,
    /// Database turns per user.
    pub work: WorkLimiter,
    /// Refused WebSocket upgrades and Socket.IO connections, deduplicated.
    pub refusals: crate::refusals::RefusalLog,
}

/// The shared API state. Cheap to clone.
#[derive(Clone)]
pub struct Api {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").finish_non_exhaustive()
    }
}

impl Api {
    /// The state every surface shares: the core behind `control`, the store for history,
    /// VM records and users.
    pub fn new(control: Arc<dyn VmControl>, store: Arc<dyn Store>, settings: ApiSettings) -> Self {
        let auth = Authenticator::new(&settings.secret, settings.token_ttl, store.clone());
        let console = ConsoleService::new(
            control.clone(),
            store.clone(),
            settings.vnc.clone(),
            settings.console.clone(),
        );
        let limits = &settings.limits;
        crate::password_work::configure(
            limits.password_hash_concurrency,
            limits.password_hash_queue,
        );
        let throttle = LoginThrottle::new(ThrottlePolicy::from_config(limits));
        let work = WorkLimiter::new(limits.db_concurrency_per_user, limits.db_queue_per_user);
        Self {
            inner: Arc::new(Inner {
                control,
                store,
                auth,
                settings,
                owners: RwLock::new(HashMap::new()),
                latency: Mutex::new(HashMap::new()),
                sessions: Sessions::default(),
                console,
                throttle,
                work,
                refusals: crate::refusals::RefusalLog::default(),
            }),
        }
    }

    /// The core.
    pub fn control(&self) -> &dyn VmControl {
        self.inner.control.as_ref()
    }

    /// The live status of a VM the core does not know: `None` (the store's status stands) in
    /// one process, offline when VMs are served by nodes that can die without saying so
    /// ([`VmControl::unknown_vms_are_offline`]).
    pub fn status_of_unknown_vms(&self) -> Option<infinibay_store::VmStatus> {
        self.inner
            .control
            .unknown_vms_are_offline()
            .then_some(infinibay_store::VmStatus::Offline)
    }

    /// The log of refused connections.
    pub fn refusals(&self) -> &crate::refusals::RefusalLog {
        &self.inner.refusals
    }

    /// The store.
    pub fn store(&self) -> Arc<dyn Store> {
        self.inner.store.clone()
    }

    /// The authenticator.
    pub fn auth(&self) -> &Authenticator {
        &self.inner.auth
    }

    /// Settings.
    pub fn settings(&self) -> &ApiSettings {
        &self.inner.settings
    }

    /// The `[api]` section.
    pub fn limits(&self) -> &ApiConfig {
        &self.inner.settings.limits
    }

    /// Failed logins per account and address.
    pub fn throttle(&self) -> &LoginThrottle {
        &self.inner.throttle
    }

    /// Database turns per user.
    pub fn work(&self) -> &WorkLimiter {
        &self.inner.work
    }

    /// One of `principal`'s database turns (`RATE_LIMITED` when too many of its requests
    /// already wait).
    pub async fn turn(&self, principal: Principal) -> Result<WorkPermit, ApiError> {
        self.inner.work.acquire(principal).await
    }

    /// Whose turn a request with this bearer token (or none) from `peer` takes: the token's
    /// user when its signature holds (checked without the database), else the address.
    pub fn principal(&self, token: Option<&str>, peer: Option<std::net::IpAddr>) -> Principal {
        let user = token
            .and_then(|t| self.inner.auth.decode(auth::bearer(t)).ok())
            .and_then(|claims| claims.user_id.parse::<i64>().ok());
        match (user, peer) {
            (Some(id), _) => Principal::User(id),
            (None, Some(ip)) => Principal::Address(ip),
            (None, None) => Principal::Unknown,
        }
    }

    /// A login from `peer`, throttled ([`crate::login_throttle`]): a closed account or address
    /// is answered `RATE_LIMITED` before any database or argon2 work, a failure is counted and
    /// logged, a success clears the account and the address.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        peer: Option<std::net::IpAddr>,
    ) -> Result<(String, UserRecord), ApiError> {
        self.inner
            .throttle
            .check(username, peer)
            .map_err(|t| ApiError::rate_limited(t.message()))?;
        match self.inner.auth.check_password(username, password).await? {
            auth::PasswordCheck::Valid(user) => {
                self.inner.throttle.succeeded(username, peer);
                let token = self.inner.auth.issue(&user)?;
                Ok((token, user))
            }
            auth::PasswordCheck::Wrong { user_exists } => {
                self.inner.throttle.failed(username, user_exists, peer);
                Err(AuthError::BadCredentials.into())
            }
        }
    }

    /// Whether `password` is `user`'s current password, under the same throttle as a login
    /// (a stolen token must not become a way to guess it): `FORBIDDEN` when it is not,
    /// `RATE_LIMITED` while the account or address is closed.
    pub async fn confirm_password(
        &self,
        user: &UserRecord,
        password: &str,
        peer: Option<std::net::IpAddr>,
    ) -> Result<(), ApiError> {
        let name = &user.username;
        self.inner
            .throttle
            .check(name, peer)
            .map_err(|t| ApiError::rate_limited(t.message()))?;
        match self.inner.auth.check_password(name, password).await? {
            auth::PasswordCheck::Valid(found) if found.id == user.id => {
                self.inner.throttle.succeeded(name, peer);
                Ok(())
            }
            _ => {
                self.inner.throttle.failed(name, true, peer);
                Err(ApiError::new("FORBIDDEN", "the current password is wrong"))
            }
        }
    }

    /// The user behind a bearer token.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<UserRecord, ApiError> {
        match token {
            None => Err(AuthError::Missing.into()),
            Some(t) => Ok(self.inner.auth.authenticate(auth::bearer(t)).await?),
        }
    }

    /// A VM `user` may see: `NOT_FOUND` when it does not exist, `FORBIDDEN` when it is not
    /// theirs.
    pub async fn visible_vm(&self, user: &UserRecord, vm_id: &str) -> Result<VmRecord, ApiError> {
        let vm = self
            .store()
            .get_vm(vm_id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("VM {vm_id} not found")))?;
        authz::require_vm(user, &vm)?;
        Ok(vm)
    }

    /// The owner of a VM (cached; the store is asked on a miss).
    pub async fn owner_of(&self, vm_id: &str) -> Option<i64> {
        if let Some(owner) = read(&self.inner.owners).get(vm_id) {
            return *owner;
        }
        let owner = match self.store().get_vm(vm_id).await {
            Ok(Some(vm)) => vm.owner_id,
            _ => None,
        };
        write(&self.inner.owners).insert(vm_id.to_owned(), owner);
        owner
    }

    /// Whether `user` may see the VM now, by its cached owner (a live event's check; the
    /// owner may have changed since a subscription began).
    pub async fn may_see(&self, user: &UserRecord, vm_id: &str) -> bool {
        authz::can_see_vm_owned_by(user, self.owner_of(vm_id).await)
    }

    /// Remember an owner change made through the API.
    pub fn set_owner_cached(&self, vm_id: &str, owner: Option<i64>) {
        write(&self.inner.owners).insert(vm_id.to_owned(), owner);
    }

    /// Forget a deleted VM.
    pub fn forget_cached(&self, vm_id: &str) {
        write(&self.inner.owners).remove(vm_id);
    }

    /// The newest sample of a VM: the host's (since it started), else the newest the store
    /// persisted (a VM that has not sent one since a restart).
    pub async fn latest_sample(&self, vm_id: &str) -> Result<Option<Arc<MetricSample>>, ApiError> {
        if let Some(sample) = self.inner.control.latest_sample(vm_id).await {
            return Ok(Some(sample));
        }
        Ok(self.store().latest_sample(vm_id).await?.map(Arc::new))
    }

    /// Record how long a command took.
    pub fn observe_command(&self, ok: bool, elapsed: Duration) {
        let mut map = self.inner.latency.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(if ok { "ok" } else { "error" })
            .or_default()
            .observe_in(&LATENCY_BUCKETS, elapsed.as_secs_f64());
    }

    /// Command latency histograms by outcome.
    pub fn command_latency(&self) -> Vec<(&'static str, Histogram)> {
        let map = self.inner.latency.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = map.iter().map(|(k, v)| (*k, v.clone())).collect();
        out.sort_by_key(|(k, _)| *k);
        out
    }

    /// Open graphql-ws connections.
    pub fn sessions(&self) -> &Sessions {
        &self.inner.sessions
    }

    /// The web console.
    pub fn console(&self) -> &ConsoleService {
        &self.inner.console
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

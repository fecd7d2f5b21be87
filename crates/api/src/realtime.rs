//! Socket.IO at `/socket.io/` (socketioxide), for socket.io-client v4 as the seeds' frontend
//! uses it. Authentication on connect, rooms per user (`namespace`), `admin` and `vm:<id>`,
//! the fan-out of bus events to those rooms, per-user event limits, and the disconnection of
//! sockets whose user was deleted or changed password.
//!
//! No user ever receives a VM's data without [`super::authz`] allowing it: metrics go only to
//! `vm:<id>`, which a socket joins after the check and leaves when the owner changes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Data, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::layer::SocketIoLayer;
use tokio_util::sync::CancellationToken;

use infinibay_store::{UserRecord, VmRecord, VmStatus};

use super::auth::{AuthError, bearer};
use super::authz;
use super::histogram::{Histogram, PUBLISH_BUCKETS};
use super::state::Api;
use super::work_limiter::Principal;
use infinibay_control::event::{BusEvent, Filter, PowerEvent, Received};
use infinibay_control::lifecycle::PowerState;

const TARGET: &str = "infinibay::realtime";
/// Client events the server handles (the authorization matrix test enumerates this list).
pub const CLIENT_EVENTS: &[&str] = &["subscribe:vm", "unsubscribe:vm"];

/// Room every ADMIN socket joins.
pub const ADMIN_ROOM: &str = "admin";

/// The room of a VM's live data.
pub fn vm_room(vm_id: &str) -> String {
    format!("vm:{vm_id}")
}

/// The rate limiter's one key for every event the server does not handle: unknown events are
/// limited together, whatever names the client makes up.
const UNKNOWN_EVENTS: &str = "(unknown events)";

/// Longest event name answered with its name; a longer one is refused as such (the name is
/// the client's, and was echoed back and kept as a limiter key).
pub const MAX_EVENT_NAME: usize = 64;

/// A user and one of the event names the limiter counts.
type EventKey = (i64, &'static str);

/// Internal room of all sockets of one user (revocation).
fn uid_room(user_id: i64) -> String {
    format!("uid:{user_id}")
}

/// Who a socket is, kept in its extensions.
#[derive(Debug, Clone)]
struct SocketUser {
    user: UserRecord,
    /// When its token was issued (ms), compared with later password changes.
    issued_ms: i64,
    /// When its token expires (s).
    expires: i64,
}

/// How long `metricsUpdate` took to leave: from the host reading the sample (`from_receipt`)
/// and from the guest's own timestamp (`from_guest`, meaningful only when the guest's clock is
/// the host's, as with the simulator), to the broadcast being queued on every subscriber's
/// socket.
#[derive(Debug, Default, Clone)]
pub struct PublishDelays {
    /// Host receipt → queued on every socket.
    pub from_receipt: Histogram,
    /// Guest timestamp → queued on every socket.
    pub from_guest: Histogram,
}

/// The Socket.IO side of the API.
pub struct Realtime {
    /// The state every surface shares.
    api: Api,
    /// `metricsUpdate` publication delays.
    delays: Mutex<PublishDelays>,
    io: SocketIo,
    /// (user, event) → (window start, count); events are [`CLIENT_EVENTS`] and
    /// [`UNKNOWN_EVENTS`], so this holds at most three entries per user.
    limits: Mutex<HashMap<EventKey, (Instant, u32)>>,
    /// VMs already announced with `vms:create` (seeded from the store at start).
    seen: Mutex<HashSet<String>>,
    /// Users by id (namespaces of owners and admins for lifecycle events).
    users: RwLock<HashMap<i64, UserRecord>>,
}

impl std::fmt::Debug for Realtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Realtime").finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Ack {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Ack {
    fn ok() -> Self {
        Self {
            ok: true,
            error: None,
        }
    }
    fn err(e: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(e.into()),
        }
    }
}

impl Realtime {
    /// Register the namespace handlers and start the fan-out and the revocation sweep; both
    /// stop with the host. The layer serves `/socket.io/`. A polling request's payload and a
    /// WebSocket message or frame are capped at `api.max_message_bytes`, and a socket must `CONNECT` (authenticate) within
    /// `api.handshake_timeout_secs`.
    pub fn start(api: Api, stop: CancellationToken) -> (Arc<Self>, SocketIoLayer) {
        let limits = api.limits();
        let (layer, io) = SocketIo::builder()
            .ping_interval(Duration::from_secs(25))
            .ping_timeout(Duration::from_secs(20))
            .max_buffer_size(1024)
            .max_payload(limits.max_message_bytes as u64)
            // The WebSocket transport's own caps (tungstenite's defaults are 64 MiB messages,
            // 16 MiB frames), read before the socket has authenticated.
            .ws_max_message_size(limits.max_message_bytes)
            .ws_max_frame_size(limits.max_message_bytes)
            .connect_timeout(limits.handshake_timeout())
            .build_layer();
        let realtime = Arc::new(Self {
            api,
            io,
            delays: Mutex::new(PublishDelays::default()),
            limits: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashSet::new()),
            users: RwLock::new(HashMap::new()),
        });
        install(&realtime, stop);
        (realtime, layer)
    }

    /// The Socket.IO handle.
    pub fn io(&self) -> &SocketIo {
        &self.io
    }

    /// Connected sockets.
    pub fn connections(&self) -> usize {
        self.io.sockets().len()
    }

    /// `metricsUpdate` publication delays so far.
    pub fn publish_delays(&self) -> PublishDelays {
        self.delays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether `user` may send one more `event` now (100 per minute per event type by
    /// default, over all of the user's sockets; `event` is one of [`CLIENT_EVENTS`] or
    /// [`UNKNOWN_EVENTS`]).
    fn allow(&self, user_id: i64, event: &'static str, per_minute: u32) -> bool {
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let slot = limits.entry((user_id, event)).or_insert((now, 0));
        if now.duration_since(slot.0) >= Duration::from_secs(60) {
            *slot = (now, 0);
        }
        slot.1 += 1;
        slot.1 <= per_minute
    }

    /// Disconnect every socket and close every graphql-ws connection of a user (deleted,
    /// password changed).
    pub async fn revoke_user(&self, user_id: i64) {
        let sockets = self.io.to(uid_room(user_id)).sockets();
        let count = sockets.len();
        for s in sockets {
            let _ = s.disconnect();
        }
        if count > 0 {
            tracing::info!(target: TARGET, user = user_id, count, "sockets of a revoked user disconnected");
        }
        let closed = self.api.sessions().revoke_user(user_id);
        if closed > 0 {
            tracing::info!(target: TARGET, user = user_id, count = closed, "graphql-ws connections of a revoked user closed");
        }
        let consoles = self.api.console().console().end_user(user_id);
        if consoles > 0 {
            tracing::info!(target: TARGET, user = user_id, count = consoles, "console sessions of a revoked user ended");
        }
        self.reload_users().await;
    }

    async fn reload_users(&self) {
        match self.api.store().users().list_users().await {
            Ok(list) => {
                let map = list.into_iter().map(|u| (u.id, u)).collect();
                *self.users.write().unwrap_or_else(|p| p.into_inner()) = map;
            }
            Err(e) => tracing::warn!(target: TARGET, "cannot reload users: {e}"),
        }
    }

    fn namespace_of(&self, user_id: i64) -> Option<String> {
        self.users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&user_id)
            .map(|u| u.namespace.clone())
    }

    fn admin_namespaces(&self) -> Vec<String> {
        self.users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|u| authz::is_admin(u))
            .map(|u| u.namespace.clone())
            .collect()
    }

    /// `<namespace>:vms:<action>` to the owner's room and each admin's room.
    async fn lifecycle(&self, owner: Option<i64>, action: &str, vm: &Value) {
        self.announce(owner, "vms", action, vm).await;
    }

    /// `<namespace>:<resource>:<action>` (seed 003's shape) to each admin's room and to
    /// `also`'s room: the VM's owner, or the user an account event is about.
    async fn announce(&self, also: Option<i64>, resource: &str, action: &str, data: &Value) {
        let payload = json!({
            "status": "success",
            "error": Value::Null,
            "data": data,
            "timestamp": Utc::now().to_rfc3339(),
        });
        let mut namespaces = self.admin_namespaces();
        if let Some(ns) = also.and_then(|o| self.namespace_of(o))
            && !namespaces.contains(&ns)
        {
            namespaces.push(ns);
        }
        for ns in namespaces {
            let event = format!("{ns}:{resource}:{action}");
            if let Err(e) = self.io.to(ns).emit(&event, &payload).await {
                tracing::debug!(target: TARGET, "{resource} emit failed: {e}");
            }
        }
    }

    /// A VM is about to be created through the API: it is announced by [`Realtime::vm_created`]
    /// once it has its owner, not on the first event the core publishes about it.
    pub fn announce_later(&self, vm_id: &str) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(vm_id.to_owned());
    }

    /// The creation announced with [`Realtime::announce_later`] failed.
    pub fn announce_cancelled(&self, vm_id: &str) {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(vm_id);
    }

    /// A VM was created through the API: `vms:create` to its owner's and the admins'
    /// namespaces.
    pub async fn vm_created(&self, vm: &VmRecord) {
        let data = self.vm_data(vm).await;
        self.lifecycle(vm.owner_id, "create", &data).await;
    }

    /// A VM's JSON for lifecycle events, with what the core knows of it now (agent status,
    /// power state).
    async fn vm_data(&self, vm: &VmRecord) -> Value {
        let live = self.api.control().vm(&vm.id).await;
        let mut data = vm_json(vm);
        if let Some(live) = live {
            data["status"] = json!(live.status.as_str());
            data["powerState"] = json!(live.power_state.as_str());
            data["domainName"] = json!(live.domain_name);
        } else {
            data["powerState"] = json!(PowerState::Unknown.as_str());
        }
        data
    }

    /// A power state changed: `vm:power` to the VM's room, `<namespace>:vms:update` (the VM
    /// with its new state and what changed it) to its owner's and the admins' namespaces.
    async fn power_changed(&self, event: &PowerEvent) {
        let at = event.at.to_rfc3339();
        let room_payload = json!({
            "vmId": event.vm_id,
            "powerState": event.power_state.as_str(),
            "previous": event.previous.as_str(),
            "cause": event.cause.as_str(),
            "kind": event.kind,
            "detail": event.detail,
            "timestamp": at,
        });
        if let Err(e) = self
            .io
            .to(vm_room(&event.vm_id))
            .emit("vm:power", &room_payload)
            .await
        {
            tracing::debug!(target: TARGET, "vm:power emit failed: {e}");
        }
        let mut data = match self.api.store().get_vm(&event.vm_id).await {
            Ok(Some(vm)) => self.vm_data(&vm).await,
            _ => json!({ "id": event.vm_id }),
        };
        // The event's state, not whatever the core says by now: updates arrive in order.
        data["powerState"] = json!(event.power_state.as_str());
        data["power"] = json!({
            "previous": event.previous.as_str(),
            "cause": event.cause.as_str(),
            "kind": event.kind,
            "detail": event.detail,
            "at": at,
        });
        let owner = self.api.owner_of(&event.vm_id).await;
        self.lifecycle(owner, "update", &data).await;
    }

    /// A VM's record changed (renamed, its collection settings set): `vms:update` to its
    /// owner and the admins.
    pub async fn vm_updated(&self, vm: &VmRecord) {
        self.lifecycle(vm.owner_id, "update", &vm_json(vm)).await;
    }

    /// An account was created, changed or deleted (`create`, `update`, `delete`):
    /// `<namespace>:users:<action>` to the admins and to the user themself (a deleted user is
    /// no longer known here and their sockets are already closed: admins only). Never carries
    /// the password hash.
    pub async fn user_changed(&self, action: &str, user: &UserRecord) {
        // The users map is what `announce` reads namespaces from: a new account must be in it.
        self.reload_users().await;
        self.announce(Some(user.id), "users", action, &user_json(user))
            .await;
    }

    /// A department came into being (`create`): `<namespace>:departments:<action>` to the
    /// admins.
    pub async fn department_changed(&self, action: &str, name: &str) {
        self.announce(None, "departments", action, &json!({ "name": name }))
            .await;
    }

    /// A VM changed owner: sockets that may no longer see it leave its room; old and new
    /// owner and the admins are told.
    pub async fn owner_changed(&self, vm_id: &str, old_owner: Option<i64>, vm: &VmRecord) {
        let room = vm_room(vm_id);
        for s in self.io.to(room.clone()).sockets() {
            let allowed = s
                .extensions
                .get::<SocketUser>()
                .is_some_and(|su| authz::can_see_vm(&su.user, vm));
            if !allowed {
                s.leave(room.clone());
            }
        }
        // Consoles of users who may no longer see the VM end (4002).
        self.api
            .console()
            .revoke_stale(self.api.store().as_ref())
            .await;
        let data = self.vm_data(vm).await;
        if old_owner.is_some() && old_owner != vm.owner_id {
            self.lifecycle(old_owner, "delete", &data).await;
        }
        self.lifecycle(vm.owner_id, "update", &data).await;
    }

    /// A VM was deleted: its room is emptied and `vms:delete` announced.
    pub async fn vm_deleted(&self, vm: &VmRecord) {
        self.api.console().console().end_vm(&vm.id);
        let room = vm_room(&vm.id);
        for s in self.io.to(room.clone()).sockets() {
            s.leave(room.clone());
        }
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&vm.id);
        self.lifecycle(vm.owner_id, "delete", &vm_json(vm)).await;
    }
}

fn user_json(u: &UserRecord) -> Value {
    let role = match u.role {
        infinibay_store::Role::Admin => "ADMIN",
        infinibay_store::Role::User => "USER",
    };
    json!({
        "id": u.id.to_string(), "username": u.username, "role": role,
        "department": u.department, "permissions": u.permissions,
        "createdAt": u.created_at.to_rfc3339(),
    })
}

fn vm_json(vm: &VmRecord) -> Value {
    json!({
        "id": vm.id, "name": vm.name, "status": vm.status.as_str(),
        "ownerId": vm.owner_id.map(|o| o.to_string()), "department": vm.department,
        "lastSeen": vm.last_seen.map(|t| t.to_rfc3339()),
    })
}

fn install(rt: &Arc<Realtime>, stop: CancellationToken) {
    let for_auth = rt.clone();
    let for_connect = rt.clone();
    let middleware = move |s: SocketRef, TryData(auth): TryData<Value>| {
        let rt = for_auth.clone();
        async move {
            let outcome = authenticate_socket(&rt.api, &s, auth.ok()).await;
            if let Err(e) = &outcome {
                let parts = s.req_parts();
                rt.api.refusals().note(
                    "socket.io",
                    &e.to_string(),
                    super::refusals::remote_of(&parts.extensions),
                    parts.uri.path(),
                );
            }
            outcome
        }
    };
    let handler = move |s: SocketRef| {
        let rt = for_connect.clone();
        async move { on_connect(rt, s).await }
    };
    rt.io.ns("/", handler.with(middleware));

    let fan = rt.clone();
    let stop_fan = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = fan_out(fan) => {}
            _ = stop_fan.cancelled() => {}
        }
    });
    let sweeper = rt.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = sweep(sweeper) => {}
            _ = stop.cancelled() => {}
        }
    });
}

async fn authenticate_socket(
    api: &Api,
    s: &SocketRef,
    auth: Option<Value>,
) -> Result<(), AuthError> {
    let from_auth = auth
        .as_ref()
        .and_then(|a| a.get("token"))
        .and_then(|t| t.as_str())
        .map(|t| bearer(t).to_owned());
    let from_header = s
        .req_parts()
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| bearer(v).to_owned());
    let token = from_auth
        .or(from_header)
        .filter(|t| !t.is_empty())
        .ok_or(AuthError::Missing)?;
    let peer = crate::limits::peer_in(&s.req_parts().extensions);
    // The user table is read in the user's database turn (crate::work_limiter).
    let _turn = api
        .turn(api.principal(Some(&token), peer))
        .await
        .map_err(|e| AuthError::Unavailable(e.message))?;
    let user = api.auth().authenticate(&token).await?;
    let claims = api.auth().decode(&token)?;
    crate::connections::mark_authenticated(&s.req_parts().extensions);
    s.extensions.insert(SocketUser {
        user,
        issued_ms: claims.iat_ms.unwrap_or(claims.iat.saturating_mul(1000)),
        expires: claims.exp,
    });
    Ok(())
}

async fn on_connect(rt: Arc<Realtime>, s: SocketRef) {
    let Some(su) = s.extensions.get::<SocketUser>() else {
        let _ = s.disconnect();
        return;
    };
    let user = &su.user;
    s.join(user.namespace.clone());
    s.join(uid_room(user.id));
    if authz::is_admin(user) {
        s.join(ADMIN_ROOM);
    }
    let role = match user.role {
        infinibay_store::Role::Admin => "ADMIN",
        infinibay_store::Role::User => "USER",
    };
    let _ = s.emit(
        "connected",
        &json!({
            "message": "Connected to real-time updates",
            "namespace": user.namespace,
            "user": {"id": user.id.to_string(), "username": user.username, "role": role},
            "timestamp": Utc::now().to_rfc3339(),
        }),
    );
    let limit = rt.api.limits().event_limit_per_minute;
    let for_sub = rt.clone();
    s.on(
        CLIENT_EVENTS[0],
        move |s: SocketRef, Data(arg): Data<Value>, ack: AckSender| {
            let rt = for_sub.clone();
            async move {
                let reply = subscribe_vm(&rt, &s, &arg, limit).await;
                let _ = ack.send(&reply);
            }
        },
    );
    let for_unsub = rt.clone();
    s.on(
        CLIENT_EVENTS[1],
        move |s: SocketRef, Data(arg): Data<Value>, ack: AckSender| {
            let rt = for_unsub.clone();
            async move {
                let reply = match (s.extensions.get::<SocketUser>(), vm_id_arg(&arg)) {
                    (Some(su), _) if !rt.allow(su.user.id, "unsubscribe:vm", limit) => {
                        Ack::err("rate limited")
                    }
                    (_, Some(vm_id)) => {
                        s.leave(vm_room(&vm_id));
                        Ack::ok()
                    }
                    (_, None) => Ack::err("vmId required"),
                };
                let _ = ack.send(&reply);
            }
        },
    );
    let for_other = rt.clone();
    s.on_fallback(
        move |s: SocketRef,
              ack: AckSender,
              socketioxide::extract::Event(event): socketioxide::extract::Event| {
            let rt = for_other.clone();
            async move {
                let reply = match s.extensions.get::<SocketUser>() {
                    Some(su) if !rt.allow(su.user.id, UNKNOWN_EVENTS, limit) => {
                        Ack::err("rate limited")
                    }
                    _ if event.len() > MAX_EVENT_NAME => Ack::err(format!(
                        "event name longer than {MAX_EVENT_NAME} bytes refused"
                    )),
                    _ => Ack::err(format!("unknown event `{}`", event.escape_debug())),
                };
                let _ = ack.send(&reply);
            }
        },
    );
}

/// `"id"`, `{"vmId": "id"}` or `{"id": "id"}`.
fn vm_id_arg(arg: &Value) -> Option<String> {
    match arg {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o
            .get("vmId")
            .or_else(|| o.get("id"))
            .and_then(|v| v.as_str())
            .map(str::to_owned),
        _ => None,
    }
    .filter(|s| !s.is_empty() && s.len() <= 128)
}

async fn subscribe_vm(rt: &Realtime, s: &SocketRef, arg: &Value, limit: u32) -> Ack {
    let api = &rt.api;
    let Some(su) = s.extensions.get::<SocketUser>() else {
        return Ack::err("not authenticated");
    };
    if !rt.allow(su.user.id, "subscribe:vm", limit) {
        return Ack::err("rate limited");
    }
    let Some(vm_id) = vm_id_arg(arg) else {
        return Ack::err("vmId required");
    };
    let _turn = match api.turn(Principal::User(su.user.id)).await {
        Ok(turn) => turn,
        Err(e) => return Ack::err(e.message),
    };
    // The user may have changed since the socket connected: ask the store again.
    let user = match api.store().users().get_user(su.user.id).await {
        Ok(Some(u)) => u,
        Ok(None) => {
            let _ = s.clone().disconnect();
            return Ack::err("User not found");
        }
        Err(e) => return Ack::err(format!("unavailable: {e}")),
    };
    match api.visible_vm(&user, &vm_id).await {
        Ok(_) => {
            s.join(vm_room(&vm_id));
            Ack::ok()
        }
        Err(e) => Ack::err(e.message),
    }
}

/// Bus → rooms.
async fn fan_out(rt: Arc<Realtime>) {
    let api = &rt.api;
    if let Ok(vms) = api.store().list_vms().await {
        let mut seen = rt.seen.lock().unwrap_or_else(|p| p.into_inner());
        for vm in &vms {
            seen.insert(vm.id.clone());
        }
        drop(seen);
        for vm in vms {
            api.set_owner_cached(&vm.id, vm.owner_id);
        }
    }
    rt.reload_users().await;
    let mut sub = api.control().subscribe(Filter::all()).await;
    while let Some(received) = sub.recv().await {
        let event = match received {
            Received::Event(e) => e,
            Received::Lagged(n) => {
                tracing::warn!(target: TARGET, "real-time fan-out fell behind: {n} events dropped");
                continue;
            }
        };
        let vm_id = event.vm_id().to_owned();
        // Probed before inserting: every sample of a known VM (all but the first) would
        // otherwise hash and drop a copy of its id.
        let first_sight = {
            let mut seen = rt.seen.lock().unwrap_or_else(|p| p.into_inner());
            !seen.contains(&vm_id) && seen.insert(vm_id.clone())
        };
        if first_sight {
            let owner = api.owner_of(&vm_id).await;
            let data = match api.store().get_vm(&vm_id).await {
                Ok(Some(vm)) => rt.vm_data(&vm).await,
                _ => json!({"id": vm_id}),
            };
            rt.lifecycle(owner, "create", &data).await;
        }
        match event {
            BusEvent::Metrics(sample) => {
                // Timed for every sample, watched or not: the fan-out's lag behind ingest.
                let now = Utc::now();
                let seconds = |from: chrono::DateTime<Utc>| {
                    (now - from).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
                };
                {
                    let mut delays = rt.delays.lock().unwrap_or_else(|p| p.into_inner());
                    delays
                        .from_receipt
                        .observe_in(&PUBLISH_BUCKETS, seconds(sample.received_at));
                    if let Some(guest) = sample.guest_time {
                        delays
                            .from_guest
                            .observe_in(&PUBLISH_BUCKETS, seconds(guest));
                    }
                }
                // Most VMs have nobody watching: building and encoding a `metricsUpdate` for
                // them was a quarter of the host's CPU at 10,000 VMs. The room lookup is one
                // map probe of the local adapter.
                if rt.io.to(vm_room(&vm_id)).sockets().is_empty() {
                    continue;
                }
                let payload = json!({
                    "vmId": sample.vm_id,
                    "metrics": sample.detail,
                    "timestamp": sample.received_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    "guestTimestamp": sample.guest_time.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                });
                // socketioxide encodes the packet once and queues the same bytes on every
                // socket of the room; with the local adapter this future is already ready.
                if let Err(e) = rt
                    .io
                    .to(vm_room(&vm_id))
                    .emit("metricsUpdate", &payload)
                    .await
                {
                    tracing::debug!(target: TARGET, "metricsUpdate emit failed: {e}");
                }
            }
            BusEvent::Status(status) => {
                let payload = json!({
                    "vmId": status.vm_id,
                    "status": status.status.as_str(),
                    "timestamp": status.at.to_rfc3339(),
                });
                let mut rooms = vec![vm_room(&vm_id), ADMIN_ROOM.to_owned()];
                if let Some(ns) = api.owner_of(&vm_id).await.and_then(|o| rt.namespace_of(o)) {
                    rooms.push(ns);
                }
                let name = match status.status {
                    VmStatus::Online => "vm:online",
                    VmStatus::Offline => "vm:offline",
                };
                if let Err(e) = rt.io.to(rooms).emit(name, &payload).await {
                    tracing::debug!(target: TARGET, "status emit failed: {e}");
                }
            }
            BusEvent::Power(power) => rt.power_changed(&power).await,
            BusEvent::Error(error) => {
                let payload = json!({
                    "vmId": error.vm_id,
                    "code": error.code,
                    "error": error.message,
                    "details": error.details,
                    "timestamp": error.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                });
                let mut rooms = vec![vm_room(&vm_id), ADMIN_ROOM.to_owned()];
                if let Some(ns) = api.owner_of(&vm_id).await.and_then(|o| rt.namespace_of(o)) {
                    rooms.push(ns);
                }
                if let Err(e) = rt.io.to(rooms).emit("vm:error", &payload).await {
                    tracing::debug!(target: TARGET, "vm:error emit failed: {e}");
                }
            }
            BusEvent::CommandEnded(ended) => {
                let payload = json!({
                    "id": ended.id,
                    "vmId": ended.vm_id,
                    "user": ended.user_id.map(|u| u.to_string()),
                    "kind": ended.kind.as_str(),
                    "status": ended.status.as_str(),
                    "code": ended.code,
                    "durationMs": ended.duration_ms,
                    "timestamp": ended.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                });
                if let Err(e) = rt.io.to(vm_room(&vm_id)).emit("vm:command", &payload).await {
                    tracing::debug!(target: TARGET, "vm:command emit failed: {e}");
                }
            }
            BusEvent::Alert(alert) => {
                let payload = infinibay_control::alert::alert_json(&alert.alert);
                let mut rooms = vec![vm_room(&vm_id), ADMIN_ROOM.to_owned()];
                if let Some(ns) = api.owner_of(&vm_id).await.and_then(|o| rt.namespace_of(o)) {
                    rooms.push(ns);
                }
                let name = alert.transition.event_name();
                if let Err(e) = rt.io.to(rooms).emit(name, &payload).await {
                    tracing::debug!(target: TARGET, "{name} emit failed: {e}");
                }
            }
            BusEvent::Agent(_) | BusEvent::Inventory(_) => {}
        }
    }
}

/// Close sockets and graphql-ws connections whose user was deleted, changed password or whose
/// token expired, and end console sessions whose user was deleted, changed password or lost
/// the VM — also when that happened outside this process (`infinibay user delete|passwd`).
async fn sweep(rt: Arc<Realtime>) {
    let api = &rt.api;
    let every = api
        .settings()
        .revocation_sweep
        .max(Duration::from_millis(200));
    loop {
        tokio::time::sleep(every).await;
        rt.reload_users().await;
        let users = rt.users.read().unwrap_or_else(|p| p.into_inner()).clone();
        let now = Utc::now().timestamp();
        for s in rt.io.sockets() {
            let Some(su) = s.extensions.get::<SocketUser>() else {
                continue;
            };
            let valid = users
                .get(&su.user.id)
                .is_some_and(|u| su.issued_ms >= u.password_changed_at.timestamp_millis())
                && su.expires > now;
            if !valid {
                tracing::info!(target: TARGET, user = su.user.id, "socket of a revoked or expired token disconnected");
                let _ = s.disconnect();
            }
        }
        let closed = api.sessions().revoke_where(|b| {
            let valid = users
                .get(&b.user_id)
                .is_some_and(|u| b.issued_ms >= u.password_changed_at.timestamp_millis())
                && b.expires > now;
            !valid
        });
        if closed > 0 {
            tracing::info!(target: TARGET, count = closed, "graphql-ws connections of revoked or expired tokens closed");
        }
        api.console().revoke_stale(api.store().as_ref()).await;
        {
            let mut limits = rt.limits.lock().unwrap_or_else(|p| p.into_inner());
            limits.retain(|_, (start, _)| start.elapsed() < Duration::from_secs(60));
        }
    }
}

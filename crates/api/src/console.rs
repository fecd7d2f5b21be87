//! The web console in the API (issue 17, `docs/console.md`): the service of
//! `infinibay-console` wired to this API's store, rules and command log.
//!
//! - tickets live in the store ([`infinibay_store::Store::tickets`]), so any process on the
//!   same database redeems what another minted;
//! - [`Gate`] admits a redeemed ticket's user by the one rule set ([`authz::can_see_vm`]) on
//!   fresh records (a deleted user, or one who lost the VM, is refused 4403), and asks a
//!   [`VncLocator`] where the VM's VNC server is — the host's socket directory or libvirt, and
//!   later the node that owns the VM (issue 18);
//! - [`CommandLogAudit`] hands every attempt to the core, the command log's one writer;
//! - minting is bounded per user ([`TICKETS_PER_MINUTE`]), and [`revoke_stale`] ends sessions
//!   whose user was deleted, changed password or lost the VM (the revocation sweep).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use infinibay_console::{
    AuditRecord, AuditSink, Console, ConsoleConfig, ConsoleGate, GateRefusal, IssuedTicket,
    Redemption, TicketHash, TicketStore, TicketStoreError, VncEndpoint,
};
use infinibay_control::{ConsoleSession, VmControl};
use infinibay_store::{Store, VmRecord};

use crate::authz;
use crate::error::ApiError;

const TARGET: &str = "infinibay::console";

/// Tickets one user may mint per minute (a console open or reconnect mints one; the
/// dashboard's automatic retries mint at most three in seven seconds).
pub const TICKETS_PER_MINUTE: u32 = 30;

/// Where a VM's VNC server listens, as far as this process knows. Behind a trait so that the
/// host chooses (socket directory, libvirt's domain XML and power state) and a scaled-out API
/// can route to the node that owns the VM.
#[async_trait]
pub trait VncLocator: Send + Sync {
    /// The VNC endpoint of `vm`, or why it has none (`NoConsole`) or is not running
    /// (`NotRunning`). A socket that does not exist, or that nobody listens on, is reported
    /// by the relay itself (4404, 4409).
    async fn locate(&self, vm: &VmRecord) -> Result<VncEndpoint, GateRefusal>;
}

/// A host that knows of no VNC server: every console is refused with 4404.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoVnc;

#[async_trait]
impl VncLocator for NoVnc {
    async fn locate(&self, _vm: &VmRecord) -> Result<VncEndpoint, GateRefusal> {
        Err(GateRefusal::NoConsole)
    }
}

/// The store's tickets as the console service takes them (`Arc<dyn TicketStore>`).
struct StoreTickets(Arc<dyn Store>);

#[async_trait]
impl TicketStore for StoreTickets {
    async fn mint(
        &self,
        hash: &TicketHash,
        user_id: i64,
        vm_id: &str,
        expires_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), TicketStoreError> {
        self.0
            .tickets()
            .mint(hash, user_id, vm_id, expires_at)
            .await
    }

    async fn redeem(
        &self,
        hash: &TicketHash,
        vm_id: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Redemption, TicketStoreError> {
        self.0.tickets().redeem(hash, vm_id, now).await
    }

    async fn purge_expired(
        &self,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, TicketStoreError> {
        self.0.tickets().purge_expired(before).await
    }
}

/// Admission of a redeemed ticket: the user as stored now, the VM as stored now, the one
/// rule set, then the VNC endpoint.
pub struct Gate {
    store: Arc<dyn Store>,
    vnc: Arc<dyn VncLocator>,
}

#[async_trait]
impl ConsoleGate for Gate {
    async fn admit(&self, user_id: i64, vm_id: &str) -> Result<VncEndpoint, GateRefusal> {
        let unavailable = |e: infinibay_store::StoreError| GateRefusal::Unavailable(e.to_string());
        let user = self
            .store
            .users()
            .get_user(user_id)
            .await
            .map_err(unavailable)?
            .ok_or(GateRefusal::NotAllowed)?;
        let vm = self
            .store
            .get_vm(vm_id)
            .await
            .map_err(unavailable)?
            .ok_or(GateRefusal::NoConsole)?;
        if !authz::can_see_vm(&user, &vm) {
            return Err(GateRefusal::NotAllowed);
        }
        self.vnc.locate(&vm).await
    }
}

/// Console attempts to the command log, through the core (its one writer). Attempts on a URL
/// naming no stored VM have no log to go to: their refusal's log line is their trace.
pub struct CommandLogAudit {
    control: Arc<dyn VmControl>,
    store: Arc<dyn Store>,
}

#[async_trait]
impl AuditSink for CommandLogAudit {
    async fn record(&self, r: AuditRecord) {
        match self.store.get_vm(&r.vm_id).await {
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(target: TARGET, vm = %r.vm_id, "console session not logged: {e}");
                return;
            }
        }
        self.control
            .record_console_session(ConsoleSession {
                vm_id: r.vm_id,
                user_id: r.user_id,
                remote: r.remote.map(|a| a.to_string()),
                started_at: r.started_at,
                duration_ms: u64::try_from(r.duration.as_millis()).unwrap_or(u64::MAX),
                opened: r.opened,
                took_over: r.took_over,
                end_code: r.end.code(),
                end_reason: r.end.reason().to_owned(),
                bytes_to_viewer: r.bytes_to_viewer,
                bytes_from_viewer: r.bytes_from_viewer,
            })
            .await;
    }
}

/// The console service of this API, and the per-user bound on minting.
pub struct ConsoleService {
    console: Arc<Console>,
    minted: Mutex<HashMap<i64, (Instant, u32)>>,
}

impl std::fmt::Debug for ConsoleService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleService")
            .field("console", &self.console)
            .finish_non_exhaustive()
    }
}

impl ConsoleService {
    /// The console over the store's tickets, the gate of `vnc`, and the core's command log.
    pub fn new(
        control: Arc<dyn VmControl>,
        store: Arc<dyn Store>,
        vnc: Arc<dyn VncLocator>,
        config: ConsoleConfig,
    ) -> Self {
        let console = Console::new(
            Arc::new(StoreTickets(store.clone())),
            Arc::new(Gate {
                store: store.clone(),
                vnc,
            }),
            Arc::new(CommandLogAudit { control, store }),
            config,
        );
        Self {
            console,
            minted: Mutex::new(HashMap::new()),
        }
    }

    /// The service (router, ends from outside, shutdown).
    pub fn console(&self) -> &Arc<Console> {
        &self.console
    }

    /// Mint a ticket for `user_id` and `vm_id`; the caller checked that the user may see the
    /// VM. `RATE_LIMITED` past [`TICKETS_PER_MINUTE`] in a minute, `INTERNAL` when the store
    /// fails.
    pub async fn issue(&self, user_id: i64, vm_id: &str) -> Result<IssuedTicket, ApiError> {
        if !self.allow(user_id) {
            return Err(ApiError::new(
                "RATE_LIMITED",
                format!("at most {TICKETS_PER_MINUTE} console tickets a minute; try again shortly"),
            ));
        }
        self.console
            .issue_ticket(user_id, vm_id)
            .await
            .map_err(ApiError::internal)
    }

    fn allow(&self, user_id: i64) -> bool {
        let mut minted = self.minted.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        // Bounded: windows older than a minute are dropped on every mint.
        minted.retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(60));
        let slot = minted.entry(user_id).or_insert((now, 0));
        slot.1 += 1;
        slot.1 <= TICKETS_PER_MINUTE
    }

    /// End the consoles whose access is gone, by what the store says now: user deleted or
    /// password changed since the session began → all of the user's (4002); VM deleted → its
    /// consoles (4000); VM no longer visible to the user → that console (4002). Called by the
    /// revocation sweep, so that changes made by another process (`infinibay user delete`,
    /// another `infinibay serve`) also end sessions here.
    pub async fn revoke_stale(&self, store: &dyn Store) {
        let sessions = self.console.sessions();
        if sessions.is_empty() {
            return;
        }
        let mut users = HashMap::new();
        let mut vms = HashMap::new();
        for s in sessions {
            let user = match users.entry(s.user_id) {
                Entry::Occupied(known) => known.into_mut(),
                Entry::Vacant(slot) => match store.users().get_user(s.user_id).await {
                    Ok(user) => slot.insert(user),
                    // The store failed: decide nothing now, the next sweep asks again.
                    Err(_) => continue,
                },
            };
            let vm = match vms.entry(s.vm_id.clone()) {
                Entry::Occupied(known) => known.into_mut(),
                Entry::Vacant(slot) => match store.get_vm(&s.vm_id).await {
                    Ok(vm) => slot.insert(vm),
                    Err(_) => continue,
                },
            };
            let ended = match (&*user, &*vm) {
                (None, _) => self.console.end_user(s.user_id),
                (Some(u), _) if u.password_changed_at > s.started_at => {
                    self.console.end_user(s.user_id)
                }
                (_, None) => self.console.end_vm(&s.vm_id),
                (Some(u), Some(vm)) if !authz::can_see_vm(u, vm) => {
                    self.console.end_user_vm(s.user_id, &s.vm_id)
                }
                _ => 0,
            };
            if ended > 0 {
                tracing::info!(target: TARGET, user = s.user_id, vm = %s.vm_id, ended, "console sessions of revoked access ended");
            }
        }
    }
}

//! The mutation root: logging in, commands to guests, accounts, VM ownership, and the VMs'
//! lifecycle in the hypervisor (create, power actions, adopt, delete).

use std::time::Instant;

use async_graphql::{Context, ID, Object};
use chrono::Utc;

use super::context::{admin, api, caller, parse_user_id, realtime};
use super::guards::Peer;
use super::types::{
    AgentChannel, AuthPayload, CommandInput, CommandResponse, CommandType, ConsoleTicket,
    CreateUserInput, CreateVmInput, PowerActionResult, User, Vm, vm_object,
};
use crate::authz;
use crate::error::{ApiError, ApiResult};
use crate::state::Api;
use crate::users::{self, CreateUser};
use infinibay_control::{CommandError, PowerAction};
use infinibay_store::{UserRecord, VmRecord};

/// Mutations.
pub struct MutationRoot;

#[Object(name = "CoreMutations")]
impl MutationRoot {
    /// Exchange a user name and password for a token. One per request; failures are
    /// throttled per account and per client address (`RATE_LIMITED`).
    async fn login(
        &self,
        ctx: &Context<'_>,
        username: String,
        password: String,
    ) -> ApiResult<AuthPayload> {
        let api = api(ctx)?;
        let (token, user) = api.login(&username, &password, peer(ctx)).await?;
        Ok(AuthPayload {
            token,
            user: User::from(&user),
        })
    }

    /// Run a command on a VM (seed 001), waiting for its response. The host checks it, sends
    /// it and logs it (refused or not) with the caller.
    async fn execute_vm_command(
        &self,
        ctx: &Context<'_>,
        vm_id: ID,
        command: CommandInput,
    ) -> ApiResult<CommandResponse> {
        let user = caller(ctx)?;
        let api = api(ctx)?;
        let vm = api
            .store()
            .get_vm(&vm_id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("VM {} not found", vm_id.as_str())))?;
        if let Err(denied) = authz::require_command(&user, &vm, command.kind == CommandType::Unsafe)
        {
            // The core writes the command log; a refused attempt belongs in it too.
            api.control()
                .log_refused(&vm_id, command.into(), Some(user.id), &denied.to_string())
                .await;
            return Err(denied.into());
        }
        let started = Instant::now();
        let outcome = api
            .control()
            .execute(&vm_id, command.into(), Some(user.id))
            .await;
        // Sent commands only: a request the host found invalid never left.
        if !matches!(outcome, Err(CommandError::Invalid(_))) {
            api.observe_command(outcome.as_ref().is_ok_and(|r| r.success), started.elapsed());
        }
        Ok(outcome?.into())
    }

    /// Create a user (ADMIN).
    async fn create_user(&self, ctx: &Context<'_>, input: CreateUserInput) -> ApiResult<User> {
        let (_, api) = admin(ctx)?;
        let wanted = input
            .department
            .as_deref()
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(str::to_owned);
        let new_department = match &wanted {
            Some(d) => !api.store().users().list_departments().await?.contains(d),
            None => false,
        };
        let created = users::create_user(
            api.store().as_ref(),
            CreateUser {
                username: input.username,
                password: input.password,
                role: input.role.into(),
                department: input.department,
                permissions: input.permissions,
            },
        )
        .await?;
        let realtime = realtime(ctx)?;
        if new_department && let Some(d) = &created.department {
            realtime.department_changed("create", d).await;
        }
        realtime.user_changed("create", &created).await;
        Ok(User::from(&created))
    }

    /// Delete a user (ADMIN); their tokens stop working and their sockets are closed.
    async fn delete_user(&self, ctx: &Context<'_>, id: ID) -> ApiResult<bool> {
        let (user, api) = admin(ctx)?;
        let id = parse_user_id(&id)?;
        if id == user.id {
            return Err(ApiError::invalid("you cannot delete yourself"));
        }
        let deleted = api.store().users().get_user(id).await?;
        api.store().users().delete_user(id).await?;
        let realtime = realtime(ctx)?;
        realtime.revoke_user(id).await;
        if let Some(deleted) = deleted {
            realtime.user_changed("delete", &deleted).await;
        }
        Ok(true)
    }

    /// Set a password (ADMIN, or the user themself); older tokens stop working. Changing
    /// one's own password needs the current one (`currentPassword`), checked and throttled
    /// like a login: a stolen token must not be enough to take the account over.
    async fn set_user_password(
        &self,
        ctx: &Context<'_>,
        id: ID,
        password: String,
        current_password: Option<String>,
    ) -> ApiResult<bool> {
        let user = caller(ctx)?;
        let id = parse_user_id(&id)?;
        authz::require_self_or_admin(&user, id)?;
        let api = api(ctx)?;
        if id == user.id {
            let Some(current) = current_password else {
                return Err(ApiError::invalid(
                    "changing your own password needs `currentPassword`",
                ));
            };
            api.confirm_password(&user, &current, peer(ctx)).await?;
        }
        users::set_password(api.store().as_ref(), id, &password).await?;
        let realtime = realtime(ctx)?;
        realtime.revoke_user(id).await;
        if let Some(changed) = api.store().users().get_user(id).await? {
            realtime.user_changed("update", &changed).await;
        }
        Ok(true)
    }

    /// Grant a permission (ADMIN).
    async fn grant_permission(
        &self,
        ctx: &Context<'_>,
        id: ID,
        permission: String,
    ) -> ApiResult<User> {
        let (_, api) = admin(ctx)?;
        let id = parse_user_id(&id)?;
        users::check_permission(&permission)?;
        let store = api.store();
        store.users().grant_permission(id, &permission).await?;
        let updated = store
            .users()
            .get_user(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("user {id}")))?;
        realtime(ctx)?.user_changed("update", &updated).await;
        Ok(User::from(&updated))
    }

    /// Give a VM an owner and a department (ADMIN).
    async fn set_vm_owner(
        &self,
        ctx: &Context<'_>,
        vm_id: ID,
        user_id: Option<ID>,
        department: Option<String>,
    ) -> ApiResult<Vm> {
        let (_, api) = admin(ctx)?;
        let store = api.store();
        let before = store
            .get_vm(&vm_id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("VM {} not found", vm_id.as_str())))?;
        let owner = match &user_id {
            None => None,
            Some(id) => {
                let id = parse_user_id(id)?;
                store
                    .users()
                    .get_user(id)
                    .await?
                    .ok_or_else(|| ApiError::not_found(format!("user {id} not found")))?;
                Some(id)
            }
        };
        let department = department
            .map(|d| d.trim().to_owned())
            .filter(|d| !d.is_empty());
        let new_department = match &department {
            Some(d) => store.users().ensure_department(d, Utc::now()).await?,
            None => false,
        };
        store
            .set_vm_owner(&vm_id, owner, department.as_deref())
            .await?;
        api.set_owner_cached(&vm_id, owner);
        let after = store
            .get_vm(&vm_id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("VM {} not found", vm_id.as_str())))?;
        let realtime = realtime(ctx)?;
        if new_department && let Some(d) = &department {
            realtime.department_changed("create", d).await;
        }
        realtime
            .owner_changed(&vm_id, before.owner_id, &after)
            .await;
        Ok(vm_object(api, after).await)
    }

    /// Create a VM in libvirt (any user; the caller becomes its owner): a domain with the
    /// agent's channel, qemu-ga's channel and VNC on a socket, started unless `start: false`.
    /// Announced as `vms:create` to the caller's and the admins' namespaces.
    async fn create_vm(&self, ctx: &Context<'_>, input: CreateVmInput) -> ApiResult<Vm> {
        let user = caller(ctx)?;
        let api = api(ctx)?;
        let realtime = realtime(ctx)?;
        let id = uuid::Uuid::new_v4().to_string();
        let spec = input.into_spec(id.clone())?;
        // Announced below, once it has its owner, not when the core first publishes it.
        realtime.announce_later(&id);
        if let Err(e) = api.control().create_vm(spec, Some(user.id)).await {
            realtime.announce_cancelled(&id);
            return Err(e.into());
        }
        let store = api.store();
        if let Some(department) = &user.department {
            store
                .users()
                .ensure_department(department, Utc::now())
                .await?;
        }
        store
            .set_vm_owner(&id, Some(user.id), user.department.as_deref())
            .await?;
        api.set_owner_cached(&id, Some(user.id));
        let record = store
            .get_vm(&id)
            .await?
            .ok_or_else(|| ApiError::internal(format!("VM {id} vanished after its creation")))?;
        realtime.vm_created(&record).await;
        Ok(vm_object(api, record).await)
    }

    /// Start a VM that is shut off (owner or ADMIN).
    async fn power_on(&self, ctx: &Context<'_>, vm_id: ID) -> ApiResult<PowerActionResult> {
        power(ctx, &vm_id, PowerAction::PowerOn).await
    }

    /// Ask the guest to shut down: through our agent when it is online, else the ACPI power
    /// button (owner or ADMIN).
    async fn shutdown(&self, ctx: &Context<'_>, vm_id: ID) -> ApiResult<PowerActionResult> {
        power(ctx, &vm_id, PowerAction::Shutdown).await
    }

    /// Forced power off (owner or ADMIN).
    async fn power_off(&self, ctx: &Context<'_>, vm_id: ID) -> ApiResult<PowerActionResult> {
        power(ctx, &vm_id, PowerAction::PowerOff).await
    }

    /// ACPI reboot (owner or ADMIN).
    async fn reboot(&self, ctx: &Context<'_>, vm_id: ID) -> ApiResult<PowerActionResult> {
        power(ctx, &vm_id, PowerAction::Reboot).await
    }

    /// Pause the vCPUs (owner or ADMIN).
    async fn suspend(&self, ctx: &Context<'_>, vm_id: ID) -> ApiResult<PowerActionResult> {
        power(ctx, &vm_id, PowerAction::Suspend).await
    }

    /// Resume a paused VM (owner or ADMIN).
    async fn resume(&self, ctx: &Context<'_>, vm_id: ID) -> ApiResult<PowerActionResult> {
        power(ctx, &vm_id, PowerAction::Resume).await
    }

    /// Adopt an existing domain: hot-plug the agent's channel into it (owner or ADMIN).
    async fn attach_agent_channel(&self, ctx: &Context<'_>, vm_id: ID) -> ApiResult<AgentChannel> {
        let (user, api, _) = lifecycle_scope(ctx, &vm_id).await?;
        let done = api
            .control()
            .attach_agent_channel(&vm_id, Some(user.id))
            .await?;
        Ok(AgentChannel {
            socket: done.socket,
            attached_live: done.attached_live,
            attached_config: done.attached_config,
        })
    }

    /// Delete a VM (owner or ADMIN): its libvirt domain (destroyed if it runs, undefined), its
    /// sockets and overlay, its connection, its record and data.
    async fn delete_vm(&self, ctx: &Context<'_>, vm_id: ID) -> ApiResult<bool> {
        let (user, api, vm) = lifecycle_scope(ctx, &vm_id).await?;
        api.control().delete_vm(&vm_id, Some(user.id)).await?;
        api.forget_cached(&vm_id);
        realtime(ctx)?.vm_deleted(&vm).await;
        Ok(true)
    }

    /// A single-use ticket (30 s) to open a VM's console, for whoever may see the VM (owner
    /// or ADMIN). Whether the console then opens is decided at the WebSocket upgrade and
    /// answered with a close code (docs/console.md).
    async fn vm_console_ticket(&self, ctx: &Context<'_>, vm_id: ID) -> ApiResult<ConsoleTicket> {
        let user = caller(ctx)?;
        let api = api(ctx)?;
        api.visible_vm(&user, &vm_id).await?;
        let issued = api.console().issue(user.id, &vm_id).await?;
        Ok(ConsoleTicket {
            ticket: issued.ticket.as_str().to_owned(),
            expires_at: issued.expires_at,
            path: issued.path,
        })
    }
}

/// The caller, the API and the VM, after checking that the caller may act on its lifecycle.
async fn lifecycle_scope<'a>(
    ctx: &Context<'a>,
    vm_id: &str,
) -> ApiResult<(UserRecord, &'a Api, VmRecord)> {
    let user = caller(ctx)?;
    let api = api(ctx)?;
    let vm = api
        .store()
        .get_vm(vm_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("VM {vm_id} not found")))?;
    authz::require_lifecycle(&user, &vm)?;
    Ok((user, api, vm))
}

async fn power(
    ctx: &Context<'_>,
    vm_id: &str,
    action: PowerAction,
) -> ApiResult<PowerActionResult> {
    let (user, api, vm) = lifecycle_scope(ctx, vm_id).await?;
    let done = api.control().power(vm_id, action, Some(user.id)).await?;
    // The record may have changed meanwhile (its name, its agent): read it again.
    let record = api.store().get_vm(vm_id).await?.unwrap_or(vm);
    Ok(PowerActionResult {
        vm: vm_object(api, record).await,
        action: done.action.as_str().to_owned(),
        via: done.via.as_str().to_owned(),
        power_state: done.power_state.into(),
    })
}

/// The request's client address (see [`Peer`]).
fn peer(ctx: &Context<'_>) -> Option<std::net::IpAddr> {
    ctx.data_opt::<Peer>().and_then(|p| p.0)
}

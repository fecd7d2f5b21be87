//! The mutation root: logging in, commands to guests, accounts, VM ownership and deletion.

use std::time::Instant;

use async_graphql::{Context, ID, Object};
use chrono::Utc;

use super::context::{admin, api, caller, parse_user_id, realtime};
use super::guards::Peer;
use super::types::{
    AuthPayload, CommandInput, CommandResponse, CommandType, CreateUserInput, User, Vm, vm_object,
};
use crate::authz;
use crate::error::{ApiError, ApiResult};
use crate::users::{self, CreateUser};
use infinibay_control::CommandError;

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

    /// Delete a VM (ADMIN): close its connection, remove its record and data.
    async fn delete_vm(&self, ctx: &Context<'_>, vm_id: ID) -> ApiResult<bool> {
        let (_, api) = admin(ctx)?;
        let store = api.store();
        let vm = store
            .get_vm(&vm_id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("VM {} not found", vm_id.as_str())))?;
        // The core forgets it, closes its connection and deletes what is stored about it.
        api.control().delete_vm(&vm_id).await?;
        api.forget_cached(&vm_id);
        realtime(ctx)?.vm_deleted(&vm).await;
        Ok(true)
    }
}

/// The request's client address (see [`Peer`]).
fn peer(ctx: &Context<'_>) -> Option<std::net::IpAddr> {
    ctx.data_opt::<Peer>().and_then(|p| p.0)
}

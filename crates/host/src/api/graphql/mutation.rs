//! The mutation root: logging in, commands to guests, accounts, VM ownership and deletion.

use std::time::{Duration, Instant};

use async_graphql::{Context, ID, Object};
use chrono::Utc;

use infinibay_protocol::message::command::KNOWN_SAFE_ACTIONS;
use infinibay_protocol::message::{SafeAction, SafeCommand, UnsafeCommand};

use super::context::{api, caller, parse_user_id, realtime};
use super::types::{
    AuthPayload, CommandInput, CommandResponse, CommandType, CreateUserInput, User, Vm, vm_object,
};
use crate::api::authz;
use crate::api::error::{ApiError, ApiResult};
use crate::command::Command;
use crate::users::{self, CreateUser};

/// Mutations.
pub struct MutationRoot;

#[Object]
impl MutationRoot {
    /// Exchange a user name and password for a token.
    async fn login(
        &self,
        ctx: &Context<'_>,
        username: String,
        password: String,
    ) -> ApiResult<AuthPayload> {
        let api = api(ctx)?;
        match api.auth().login(&username, &password).await {
            Ok((token, user)) => Ok(AuthPayload {
                token,
                user: User::from(&user),
            }),
            Err(e) => Err(ApiError::from(e)),
        }
    }

    /// Run a command on a VM (seed 001), waiting for its response.
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
        authz::require_command(&user, &vm, command.kind == CommandType::Unsafe)?;
        let kind = match command.kind {
            CommandType::Safe => "safe",
            CommandType::Unsafe => "unsafe",
        };
        let requested = serde_json::json!({
            "type": kind, "action": command.action, "params": command.params.as_ref().map(|p| &p.0),
            "rawCommand": command.raw_command, "argv": command.argv,
        });
        let (cmd, wait) = match build_command(&command) {
            Ok(c) => c,
            Err(e) => {
                api.log_refused_command(&vm_id, &user, kind, requested, &e)
                    .await;
                return Err(e);
            }
        };
        let started = Instant::now();
        let pending = match api.host().start_command(&vm_id, cmd, Some(user.id)) {
            Ok(p) => p,
            Err(e) => {
                let e = ApiError::from(e);
                api.log_refused_command(&vm_id, &user, kind, requested, &e)
                    .await;
                api.observe_command(false, started.elapsed());
                return Err(e);
            }
        };
        let outcome = pending.wait(Some(wait)).await;
        api.observe_command(outcome.as_ref().is_ok_and(|r| r.success), started.elapsed());
        match outcome {
            Ok(response) => Ok(response.into()),
            Err(e) => Err(ApiError::from(e)),
        }
    }

    /// Create a user (ADMIN).
    async fn create_user(&self, ctx: &Context<'_>, input: CreateUserInput) -> ApiResult<User> {
        let user = caller(ctx)?;
        authz::require_admin(&user)?;
        let api = api(ctx)?;
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
        Ok(User::from(&created))
    }

    /// Delete a user (ADMIN); their tokens stop working and their sockets are closed.
    async fn delete_user(&self, ctx: &Context<'_>, id: ID) -> ApiResult<bool> {
        let user = caller(ctx)?;
        authz::require_admin(&user)?;
        let id = parse_user_id(&id)?;
        if id == user.id {
            return Err(ApiError::invalid("you cannot delete yourself"));
        }
        let api = api(ctx)?;
        api.store().users().delete_user(id).await?;
        realtime(ctx)?.revoke_user(id).await;
        Ok(true)
    }

    /// Set a password (ADMIN, or the user themself); older tokens stop working.
    async fn set_user_password(
        &self,
        ctx: &Context<'_>,
        id: ID,
        password: String,
    ) -> ApiResult<bool> {
        let user = caller(ctx)?;
        let id = parse_user_id(&id)?;
        authz::require_self_or_admin(&user, id)?;
        let api = api(ctx)?;
        users::set_password(api.store().as_ref(), id, &password).await?;
        realtime(ctx)?.revoke_user(id).await;
        Ok(true)
    }

    /// Grant a permission (ADMIN).
    async fn grant_permission(
        &self,
        ctx: &Context<'_>,
        id: ID,
        permission: String,
    ) -> ApiResult<User> {
        let user = caller(ctx)?;
        authz::require_admin(&user)?;
        let id = parse_user_id(&id)?;
        users::check_permission(&permission)?;
        let api = api(ctx)?;
        let store = api.store();
        store.users().grant_permission(id, &permission).await?;
        let updated = store
            .users()
            .get_user(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("user {id}")))?;
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
        let user = caller(ctx)?;
        authz::require_admin(&user)?;
        let api = api(ctx)?;
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
        if let Some(d) = &department {
            store.users().ensure_department(d, Utc::now()).await?;
        }
        store
            .set_vm_owner(&vm_id, owner, department.as_deref())
            .await?;
        api.set_owner_cached(&vm_id, owner);
        let after = store
            .get_vm(&vm_id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("VM {} not found", vm_id.as_str())))?;
        realtime(ctx)?
            .owner_changed(&vm_id, before.owner_id, &after)
            .await;
        Ok(vm_object(api, after))
    }

    /// Delete a VM (ADMIN): close its connection, remove its record and data.
    async fn delete_vm(&self, ctx: &Context<'_>, vm_id: ID) -> ApiResult<bool> {
        let user = caller(ctx)?;
        authz::require_admin(&user)?;
        let api = api(ctx)?;
        let store = api.store();
        let vm = store
            .get_vm(&vm_id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("VM {} not found", vm_id.as_str())))?;
        api.host().forget_vm(&vm_id);
        store.delete_vm(&vm_id).await?;
        // Samples already read or queued before the connection closed would register the VM
        // again: delete once more after the next directory scan has stopped the connection.
        let later = store.clone();
        let id = vm_id.to_string();
        let after =
            Duration::from_secs_f64(api.host().config().discovery.rescan_interval_secs.max(0.1))
                + Duration::from_secs(2);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = later.delete_vm(&id).await;
        });
        api.forget_cached(&vm_id);
        realtime(ctx)?.vm_deleted(&vm).await;
        Ok(true)
    }
}

/// Default host wait for a command.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// The host waits this much longer than the agent's own timeout, so the agent's `timeout`
/// answer arrives first.
const WAIT_MARGIN: Duration = Duration::from_secs(3);

fn build_command(input: &CommandInput) -> Result<(Command, Duration), ApiError> {
    let timeout = match input.timeout {
        None => None,
        Some(t) if (1..=86_400).contains(&t) => Some(t as u64),
        Some(t) => {
            return Err(ApiError::invalid(format!(
                "timeout {t} out of range (1–86400 seconds)"
            )));
        }
    };
    let wait = timeout
        .map(|t| Duration::from_secs(t) + WAIT_MARGIN)
        .unwrap_or(DEFAULT_WAIT);
    match input.kind {
        CommandType::Safe => {
            let action = input
                .action
                .as_deref()
                .ok_or_else(|| ApiError::invalid("SAFE commands need `action`"))?;
            let mut object = match input.params.as_ref().map(|p| &p.0) {
                None | Some(serde_json::Value::Null) => serde_json::Map::new(),
                Some(serde_json::Value::Object(map)) => map.clone(),
                Some(_) => return Err(ApiError::invalid("`params` must be an object")),
            };
            object.insert(
                "action".into(),
                serde_json::Value::String(action.to_owned()),
            );
            let parsed = SafeAction::from_json(serde_json::Value::Object(object))
                .map_err(ApiError::invalid)?;
            if let SafeAction::Unknown { action } = &parsed {
                return Err(ApiError::invalid(format!(
                    "unknown action `{action}` (known: {})",
                    KNOWN_SAFE_ACTIONS.join(", ")
                )));
            }
            parsed.validate().map_err(ApiError::invalid)?;
            Ok((
                Command::Safe(SafeCommand {
                    id: String::new(),
                    command_type: parsed,
                    timeout,
                }),
                wait,
            ))
        }
        CommandType::Unsafe => {
            let raw = input.raw_command.clone().filter(|c| !c.trim().is_empty());
            let argv = input.argv.clone().filter(|a| !a.is_empty());
            if raw.is_none() && argv.is_none() {
                return Err(ApiError::invalid(
                    "UNSAFE commands need `rawCommand` or `argv`",
                ));
            }
            if raw.is_some() && argv.is_some() {
                return Err(ApiError::invalid("give `rawCommand` or `argv`, not both"));
            }
            let env_vars = match input.env_vars.as_ref().map(|e| &e.0) {
                None | Some(serde_json::Value::Null) => None,
                Some(value) => Some(
                    serde_json::from_value(value.clone())
                        .map_err(|_| ApiError::invalid("`envVars` must map names to strings"))?,
                ),
            };
            Ok((
                Command::Unsafe(UnsafeCommand {
                    id: String::new(),
                    raw_command: raw,
                    argv,
                    shell: input.shell.clone(),
                    timeout,
                    working_dir: input.working_dir.clone(),
                    env_vars,
                }),
                wait,
            ))
        }
    }
}

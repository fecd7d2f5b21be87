//! `infinibay user …`: accounts, on the database configured as for `serve`.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use infinibay_store::{Role, Store};

use super::password::read_password;
use crate::config::ConfigArgs;
use infinibay_api::users::{self, CreateUser};

/// `infinibay user …`.
#[derive(Debug, Args)]
pub struct UserArgs {
    /// Configuration (database) as for `serve`.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// What to do.
    #[command(subcommand)]
    pub action: UserAction,
}

/// User management actions.
#[derive(Debug, Subcommand)]
pub enum UserAction {
    /// Create a user (password from --password-stdin, else INFINIBAY_NEW_PASSWORD, else
    /// generated and printed once).
    Add {
        /// Login name.
        username: String,
        /// `admin` or `user`.
        #[arg(long, default_value = "user")]
        role: String,
        /// Department.
        #[arg(long)]
        department: Option<String>,
        /// Permission to grant (repeatable), e.g. unsafe_commands.
        #[arg(long = "permission")]
        permissions: Vec<String>,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users.
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Set a user's password; their existing tokens stop working.
    Passwd {
        /// Login name.
        username: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Grant a permission.
    Grant {
        /// Login name.
        username: String,
        /// Permission (unsafe_commands).
        permission: String,
    },
    /// Delete a user; their tokens stop working and their sockets are closed.
    Delete {
        /// Login name.
        username: String,
    },
}

async fn open(config: &ConfigArgs) -> anyhow::Result<std::sync::Arc<dyn Store>> {
    let config = config.load().context("configuration")?;
    Ok(crate::serve::open_store(&config).await?)
}

async fn find(store: &dyn Store, username: &str) -> anyhow::Result<infinibay_store::UserRecord> {
    store
        .users()
        .user_by_name(username)
        .await?
        .with_context(|| format!("no user named `{username}`"))
}

/// Run `infinibay user …`.
pub async fn run(args: UserArgs) -> anyhow::Result<()> {
    let store = open(&args.config).await?;
    let store = store.as_ref();
    match args.action {
        UserAction::Add {
            username,
            role,
            department,
            permissions,
            password_stdin,
        } => {
            let role = Role::parse(&role.to_ascii_lowercase())
                .with_context(|| format!("unknown role `{role}` (admin or user)"))?;
            let given = read_password(password_stdin, "INFINIBAY_NEW_PASSWORD", "")?;
            let (password, generated) = match given {
                Some(p) => (p, false),
                None => (users::generate_password(), true),
            };
            let user = users::create_user(
                store,
                CreateUser {
                    username,
                    password: password.clone(),
                    role,
                    department,
                    permissions,
                },
            )
            .await?;
            println!(
                "created user {} (id {}, {})",
                user.username,
                user.id,
                user.role.as_str()
            );
            if generated {
                println!("password (shown once): {password}");
            }
        }
        UserAction::List { json } => {
            let list = store.users().list_users().await?;
            if json {
                let out: Vec<Value> = list
                    .iter()
                    .map(|u| {
                        json!({"id": u.id.to_string(), "username": u.username, "role": u.role.as_str(),
                               "department": u.department, "permissions": u.permissions,
                               "createdAt": u.created_at.to_rfc3339()})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!(
                    "{:<6} {:<24} {:<6} {:<16} PERMISSIONS",
                    "ID", "USERNAME", "ROLE", "DEPARTMENT"
                );
                for u in list {
                    println!(
                        "{:<6} {:<24} {:<6} {:<16} {}",
                        u.id,
                        u.username,
                        u.role.as_str(),
                        u.department.as_deref().unwrap_or("-"),
                        u.permissions.join(",")
                    );
                }
            }
        }
        UserAction::Passwd {
            username,
            password_stdin,
        } => {
            let user = find(store, &username).await?;
            let Some(password) =
                read_password(password_stdin, "INFINIBAY_NEW_PASSWORD", "New password: ")?
            else {
                bail!("no password given");
            };
            users::set_password(store, user.id, &password).await?;
            println!("password of {username} changed; their older tokens are refused from now on");
        }
        UserAction::Grant {
            username,
            permission,
        } => {
            users::check_permission(&permission)?;
            let user = find(store, &username).await?;
            store.users().grant_permission(user.id, &permission).await?;
            println!("granted {permission} to {username}");
        }
        UserAction::Delete { username } => {
            let user = find(store, &username).await?;
            store.users().delete_user(user.id).await?;
            println!("deleted user {username}; their VMs have no owner now");
        }
    }
    Ok(())
}

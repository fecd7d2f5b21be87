//! Users, departments and permissions: the storage side of the API's accounts.
//!
//! A separate trait so the ingest contract ([`crate::Store`]) stays about VMs; every store
//! exposes it through [`crate::Store::users`].

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Result;

/// What a user may do by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees and commands every VM, manages users.
    Admin,
    /// Sees and commands the VMs they own.
    User,
}

impl Role {
    /// Lower-case name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::User => "user",
        }
    }

    /// From the stored name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "admin" => Some(Self::Admin),
            "user" => Some(Self::User),
            _ => None,
        }
    }
}

/// A stored user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Integer id (VMs refer to it as `owner_id`).
    pub id: i64,
    /// Unique login name.
    pub username: String,
    /// argon2 PHC string.
    pub password_hash: String,
    /// Role.
    pub role: Role,
    /// Department name, if any.
    pub department: Option<String>,
    /// Extra permissions, sorted (e.g. `unsafe_commands`).
    pub permissions: Vec<String>,
    /// Persistent real-time room of the user.
    pub namespace: String,
    /// Tokens issued before this are refused.
    pub password_changed_at: DateTime<Utc>,
    /// Created.
    pub created_at: DateTime<Utc>,
}

/// A user to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    /// Unique login name.
    pub username: String,
    /// argon2 PHC string.
    pub password_hash: String,
    /// Role.
    pub role: Role,
    /// Department (created when missing).
    pub department: Option<String>,
    /// Permissions.
    pub permissions: Vec<String>,
    /// Persistent real-time room (unique).
    pub namespace: String,
}

/// Accounts storage; both backends implement it.
#[async_trait]
pub trait UserStore: Send + Sync {
    /// Create a user (`Conflict` when the name is taken); `now` is its creation and password
    /// time.
    async fn create_user(&self, user: &NewUser, now: DateTime<Utc>) -> Result<UserRecord>;
    /// One user by id.
    async fn get_user(&self, id: i64) -> Result<Option<UserRecord>>;
    /// One user by name.
    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>>;
    /// All users, by id.
    async fn list_users(&self) -> Result<Vec<UserRecord>>;
    /// Replace the password hash and move `password_changed_at` to `now` (`NotFound` when the
    /// user does not exist).
    async fn set_password(&self, id: i64, password_hash: &str, now: DateTime<Utc>) -> Result<()>;
    /// Add a permission (idempotent; `NotFound` when the user does not exist).
    async fn grant_permission(&self, id: i64, permission: &str) -> Result<()>;
    /// Remove a permission (idempotent).
    async fn revoke_permission(&self, id: i64, permission: &str) -> Result<()>;
    /// Delete a user; their VMs lose their owner (`NotFound` when the user does not exist).
    async fn delete_user(&self, id: i64) -> Result<()>;
    /// Create a department (idempotent); `true` when it did not exist before.
    async fn ensure_department(&self, name: &str, now: DateTime<Utc>) -> Result<bool>;
    /// All department names, sorted.
    async fn list_departments(&self) -> Result<Vec<String>>;
}

//! [`UserStore`] on SQLite: writes through the single writer, reads from the reader pool.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::SqliteStore;
use crate::common::{ctx, from_ms};
use crate::users::{NewUser, Role, UserRecord, UserStore};
use crate::{Result, StoreError};

const USER_COLUMNS: &str =
    "id, username, password_hash, role, department, namespace, password_changed_at, created_at";

fn user_from_row(row: &SqliteRow, permissions: Vec<String>) -> Result<UserRecord> {
    let role: String = row.try_get("role").map_err(ctx("user role"))?;
    Ok(UserRecord {
        id: row.try_get("id").map_err(ctx("user id"))?,
        username: row.try_get("username").map_err(ctx("username"))?,
        password_hash: row.try_get("password_hash").map_err(ctx("password hash"))?,
        role: Role::parse(&role)
            .ok_or_else(|| StoreError::Other(format!("unknown stored role `{role}`")))?,
        department: row.try_get("department").map_err(ctx("department"))?,
        permissions,
        namespace: row.try_get("namespace").map_err(ctx("namespace"))?,
        password_changed_at: from_ms(
            row.try_get("password_changed_at")
                .map_err(ctx("password_changed_at"))?,
        )?,
        created_at: from_ms(row.try_get("created_at").map_err(ctx("created_at"))?)?,
    })
}

impl SqliteStore {
    async fn permissions_of(&self, id: i64) -> Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT permission FROM user_permissions WHERE user_id = ?1 ORDER BY permission",
        )
        .bind(id)
        .fetch_all(&self.reader)
        .await
        .map_err(ctx("user permissions"))
    }

    async fn one_user(&self, row: Option<SqliteRow>) -> Result<Option<UserRecord>> {
        match row {
            None => Ok(None),
            Some(row) => {
                let id: i64 = row.try_get("id").map_err(ctx("user id"))?;
                let permissions = self.permissions_of(id).await?;
                user_from_row(&row, permissions).map(Some)
            }
        }
    }
}

#[async_trait]
impl UserStore for SqliteStore {
    async fn create_user(&self, user: &NewUser, now: DateTime<Utc>) -> Result<UserRecord> {
        // Both backends keep milliseconds: the returned record equals what a read gives.
        let now = from_ms(now.timestamp_millis())?;
        let mut tx = self.writer.begin().await.map_err(ctx("create_user"))?;
        if let Some(department) = &user.department {
            sqlx::query("INSERT OR IGNORE INTO departments (name, created_at) VALUES (?1, ?2)")
                .bind(department)
                .bind(now.timestamp_millis())
                .execute(&mut *tx)
                .await
                .map_err(ctx("create_user department"))?;
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO users (username, password_hash, role, department, namespace, \
             password_changed_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) RETURNING id",
        )
        .bind(&user.username)
        .bind(&user.password_hash)
        .bind(user.role.as_str())
        .bind(&user.department)
        .bind(&user.namespace)
        .bind(now.timestamp_millis())
        .fetch_one(&mut *tx)
        .await
        .map_err(ctx("create_user"))?;
        for permission in &user.permissions {
            sqlx::query(
                "INSERT OR IGNORE INTO user_permissions (user_id, permission) VALUES (?1, ?2)",
            )
            .bind(id)
            .bind(permission)
            .execute(&mut *tx)
            .await
            .map_err(ctx("create_user permission"))?;
        }
        tx.commit().await.map_err(ctx("create_user commit"))?;
        let mut permissions = user.permissions.clone();
        permissions.sort();
        permissions.dedup();
        Ok(UserRecord {
            id,
            username: user.username.clone(),
            password_hash: user.password_hash.clone(),
            role: user.role,
            department: user.department.clone(),
            permissions,
            namespace: user.namespace.clone(),
            password_changed_at: now,
            created_at: now,
        })
    }

    async fn get_user(&self, id: i64) -> Result<Option<UserRecord>> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"))
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(ctx("get_user"))?;
        self.one_user(row).await
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE username = ?1"
        ))
        .bind(username)
        .fetch_optional(&self.reader)
        .await
        .map_err(ctx("user_by_name"))?;
        self.one_user(row).await
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>> {
        let rows = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY id"))
            .fetch_all(&self.reader)
            .await
            .map_err(ctx("list_users"))?;
        let mut permissions: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        let pairs: Vec<(i64, String)> = sqlx::query_as(
            "SELECT user_id, permission FROM user_permissions ORDER BY user_id, permission",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(ctx("list_users permissions"))?;
        for (id, permission) in pairs {
            permissions.entry(id).or_default().push(permission);
        }
        rows.iter()
            .map(|row| {
                let id: i64 = row.try_get("id").map_err(ctx("user id"))?;
                user_from_row(row, permissions.remove(&id).unwrap_or_default())
            })
            .collect()
    }

    async fn set_password(&self, id: i64, password_hash: &str, now: DateTime<Utc>) -> Result<()> {
        let now = from_ms(now.timestamp_millis())?;
        let done = sqlx::query(
            "UPDATE users SET password_hash = ?2, password_changed_at = ?3 WHERE id = ?1",
        )
        .bind(id)
        .bind(password_hash)
        .bind(now.timestamp_millis())
        .execute(&self.writer)
        .await
        .map_err(ctx("set_password"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("user {id}")));
        }
        Ok(())
    }

    async fn grant_permission(&self, id: i64, permission: &str) -> Result<()> {
        let done = sqlx::query(
            "INSERT OR IGNORE INTO user_permissions (user_id, permission) \
             SELECT id, ?2 FROM users WHERE id = ?1",
        )
        .bind(id)
        .bind(permission)
        .execute(&self.writer)
        .await
        .map_err(ctx("grant_permission"))?;
        if done.rows_affected() == 0 && self.get_user(id).await?.is_none() {
            return Err(StoreError::NotFound(format!("user {id}")));
        }
        Ok(())
    }

    async fn revoke_permission(&self, id: i64, permission: &str) -> Result<()> {
        sqlx::query("DELETE FROM user_permissions WHERE user_id = ?1 AND permission = ?2")
            .bind(id)
            .bind(permission)
            .execute(&self.writer)
            .await
            .map_err(ctx("revoke_permission"))?;
        Ok(())
    }

    async fn delete_user(&self, id: i64) -> Result<()> {
        let mut tx = self.writer.begin().await.map_err(ctx("delete_user"))?;
        sqlx::query("UPDATE vms SET owner_id = NULL WHERE owner_id = ?1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(ctx("delete_user vms"))?;
        let done = sqlx::query("DELETE FROM users WHERE id = ?1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(ctx("delete_user"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("user {id}")));
        }
        tx.commit().await.map_err(ctx("delete_user commit"))
    }

    async fn ensure_department(&self, name: &str, now: DateTime<Utc>) -> Result<()> {
        sqlx::query("INSERT OR IGNORE INTO departments (name, created_at) VALUES (?1, ?2)")
            .bind(name)
            .bind(now.timestamp_millis())
            .execute(&self.writer)
            .await
            .map_err(ctx("ensure_department"))?;
        Ok(())
    }

    async fn list_departments(&self) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT name FROM departments ORDER BY name")
            .fetch_all(&self.reader)
            .await
            .map_err(ctx("list_departments"))
    }
}

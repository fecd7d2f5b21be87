//! [`UserStore`] for every [`Backend`]: writes go to the writer, reads to the reader pool
//! (the same pool on PostgreSQL). The SQL is the same on both; times are the backend's.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Database, Encode, Executor, IntoArguments, Type};

use super::rows::{self, USER_COLUMNS, UserRow};
use super::{Backend, Column, RowsAffected, TxKind};
use crate::common::{ctx, from_ms};
use crate::users::{NewUser, UserRecord, UserStore};
use crate::{Result, StoreError};

/// Both backends keep milliseconds: a record returned by a write equals what a read gives.
fn to_ms(time: DateTime<Utc>) -> Result<DateTime<Utc>> {
    from_ms(time.timestamp_millis())
}

/// Creates a department unless it exists.
const ADD_DEPARTMENT: &str =
    "INSERT INTO departments (name, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING";

#[async_trait]
impl<B: Backend> UserStore for B
where
    for<'c> &'c mut <B::Db as Database>::Connection: Executor<'c, Database = B::Db>,
    for<'q> <B::Db as Database>::Arguments<'q>: IntoArguments<'q, B::Db>,
    usize: ColumnIndex<<B::Db as Database>::Row>,
    for<'q> &'q str: Encode<'q, B::Db> + Type<B::Db>,
    for<'q> Option<&'q str>: Encode<'q, B::Db>,
    i64: Column<B::Db>,
    String: Column<B::Db>,
{
    async fn create_user(&self, user: &NewUser, now: DateTime<Utc>) -> Result<UserRecord> {
        let now = to_ms(now)?;
        let mut tx = self.begin(TxKind::Plain).await?;
        if let Some(department) = &user.department {
            sqlx::query(ADD_DEPARTMENT)
                .bind(department.as_str())
                .bind(B::to_db(now))
                .execute(&mut *tx)
                .await
                .map_err(ctx("create_user department"))?;
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO users (username, password_hash, role, department, namespace, \
             password_changed_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $6) RETURNING id",
        )
        .bind(user.username.as_str())
        .bind(user.password_hash.as_str())
        .bind(user.role.as_str())
        .bind(user.department.as_deref())
        .bind(user.namespace.as_str())
        .bind(B::to_db(now))
        .fetch_one(&mut *tx)
        .await
        .map_err(ctx("create_user"))?;
        for permission in &user.permissions {
            sqlx::query(
                "INSERT INTO user_permissions (user_id, permission) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(permission.as_str())
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
        let reader = &self.core().reader;
        let row: Option<UserRow<B::Time>> =
            sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
                .bind(id)
                .fetch_optional(reader)
                .await
                .map_err(ctx("get_user"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let permissions = sqlx::query_scalar(
            "SELECT permission FROM user_permissions WHERE user_id = $1 ORDER BY permission",
        )
        .bind(id)
        .fetch_all(reader)
        .await
        .map_err(ctx("user permissions"))?;
        rows::user::<B>(row, permissions).map(Some)
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>> {
        let id: Option<i64> = sqlx::query_scalar("SELECT id FROM users WHERE username = $1")
            .bind(username)
            .fetch_optional(&self.core().reader)
            .await
            .map_err(ctx("user_by_name"))?;
        match id {
            Some(id) => self.get_user(id).await,
            None => Ok(None),
        }
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>> {
        let reader = &self.core().reader;
        let users: Vec<UserRow<B::Time>> =
            sqlx::query_as(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY id"))
                .fetch_all(reader)
                .await
                .map_err(ctx("list_users"))?;
        let pairs: Vec<(i64, String)> = sqlx::query_as(
            "SELECT user_id, permission FROM user_permissions ORDER BY user_id, permission",
        )
        .fetch_all(reader)
        .await
        .map_err(ctx("list_users permissions"))?;
        let mut permissions: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        for (id, permission) in pairs {
            permissions.entry(id).or_default().push(permission);
        }
        users
            .into_iter()
            .map(|row| {
                let of_user = permissions.remove(&row.0).unwrap_or_default();
                rows::user::<B>(row, of_user)
            })
            .collect()
    }

    async fn set_password(&self, id: i64, password_hash: &str, now: DateTime<Utc>) -> Result<()> {
        let done = sqlx::query(
            "UPDATE users SET password_hash = $2, password_changed_at = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(password_hash)
        .bind(B::to_db(to_ms(now)?))
        .execute(&self.core().writer)
        .await
        .map_err(ctx("set_password"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("user {id}")));
        }
        Ok(())
    }

    async fn grant_permission(&self, id: i64, permission: &str) -> Result<()> {
        // The `WHERE` also keeps SQLite from reading `ON CONFLICT` as a join constraint.
        let done = sqlx::query(
            "INSERT INTO user_permissions (user_id, permission) \
             SELECT id, $2 FROM users WHERE id = $1 ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(permission)
        .execute(&self.core().writer)
        .await
        .map_err(ctx("grant_permission"))?;
        if done.rows_affected() == 0 && self.get_user(id).await?.is_none() {
            return Err(StoreError::NotFound(format!("user {id}")));
        }
        Ok(())
    }

    async fn revoke_permission(&self, id: i64, permission: &str) -> Result<()> {
        sqlx::query("DELETE FROM user_permissions WHERE user_id = $1 AND permission = $2")
            .bind(id)
            .bind(permission)
            .execute(&self.core().writer)
            .await
            .map_err(ctx("revoke_permission"))?;
        Ok(())
    }

    async fn delete_user(&self, id: i64) -> Result<()> {
        let mut tx = self.begin(TxKind::Plain).await?;
        sqlx::query("UPDATE vms SET owner_id = NULL WHERE owner_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(ctx("delete_user vms"))?;
        let done = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(ctx("delete_user"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("user {id}")));
        }
        tx.commit().await.map_err(ctx("delete_user commit"))
    }

    async fn ensure_department(&self, name: &str, now: DateTime<Utc>) -> Result<bool> {
        let created = sqlx::query(ADD_DEPARTMENT)
            .bind(name)
            .bind(B::to_db(now))
            .execute(&self.core().writer)
            .await
            .map_err(ctx("ensure_department"))?
            .rows_affected();
        Ok(created > 0)
    }

    async fn list_departments(&self) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT name FROM departments ORDER BY name")
            .fetch_all(&self.core().reader)
            .await
            .map_err(ctx("list_departments"))
    }
}

//! Accounts storage, written once and run against both backends (like `story.rs`).

mod support;

use std::sync::Arc;

use chrono::{Duration, DurationRound, Utc};
use infinibay_store::{NewUser, Role, Store, StoreError};

fn new_user(name: &str, role: Role, department: Option<&str>, permissions: &[&str]) -> NewUser {
    NewUser {
        username: name.to_owned(),
        password_hash: format!("$argon2id$fake-hash-of-{name}"),
        role,
        department: department.map(str::to_owned),
        permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
        namespace: format!("user_{name}_ns"),
    }
}

mod story {
    use super::*;

    pub async fn users_are_created_found_listed_and_unique(store: Arc<dyn Store>) {
        let users = store.users();
        let now = Utc::now();
        let alice = users
            .create_user(
                &new_user("alice", Role::User, Some("eng"), &["unsafe_commands"]),
                now,
            )
            .await
            .expect("create alice");
        assert_eq!(alice.role, Role::User);
        assert_eq!(alice.permissions, vec!["unsafe_commands".to_owned()]);
        assert_eq!(
            alice.created_at,
            now.duration_trunc(Duration::milliseconds(1))
                .expect("trunc")
        );
        let admin = users
            .create_user(&new_user("admin", Role::Admin, None, &[]), now)
            .await
            .expect("create admin");
        assert!(admin.id > alice.id, "ids grow");

        assert_eq!(
            users.get_user(alice.id).await.expect("get"),
            Some(alice.clone())
        );
        assert_eq!(
            users.user_by_name("alice").await.expect("by name"),
            Some(alice.clone())
        );
        assert_eq!(users.user_by_name("nobody").await.expect("by name"), None);
        let listed = users.list_users().await.expect("list");
        assert_eq!(listed, vec![alice.clone(), admin]);
        assert_eq!(
            users.list_departments().await.expect("departments"),
            vec!["eng".to_owned()],
            "a user's department is created with them"
        );

        let again = users
            .create_user(&new_user("alice", Role::Admin, None, &[]), now)
            .await;
        assert!(
            matches!(again, Err(StoreError::Conflict(_))),
            "a taken name is a conflict: {again:?}"
        );
    }

    pub async fn password_change_moves_the_cutoff_and_permissions_are_idempotent(
        store: Arc<dyn Store>,
    ) {
        let users = store.users();
        let t0 = Utc::now() - Duration::hours(1);
        let bob = users
            .create_user(&new_user("bob", Role::User, None, &[]), t0)
            .await
            .expect("create");
        let t1 = Utc::now();
        users
            .set_password(bob.id, "$argon2id$new", t1)
            .await
            .expect("set password");
        let bob2 = users.get_user(bob.id).await.expect("get").expect("exists");
        assert_eq!(bob2.password_hash, "$argon2id$new");
        assert_eq!(
            bob2.password_changed_at,
            t1.duration_trunc(Duration::milliseconds(1)).expect("trunc")
        );
        assert!(bob2.created_at < bob2.password_changed_at);

        users
            .grant_permission(bob.id, "unsafe_commands")
            .await
            .expect("grant");
        users
            .grant_permission(bob.id, "unsafe_commands")
            .await
            .expect("grant twice");
        assert_eq!(
            users
                .get_user(bob.id)
                .await
                .expect("get")
                .expect("exists")
                .permissions,
            vec!["unsafe_commands".to_owned()]
        );
        users
            .revoke_permission(bob.id, "unsafe_commands")
            .await
            .expect("revoke");
        assert!(
            users
                .get_user(bob.id)
                .await
                .expect("get")
                .expect("exists")
                .permissions
                .is_empty()
        );

        assert!(matches!(
            users.set_password(9_999, "x", t1).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            users.grant_permission(9_999, "unsafe_commands").await,
            Err(StoreError::NotFound(_))
        ));
    }

    pub async fn deleting_a_user_removes_them_and_frees_their_vms(store: Arc<dyn Store>) {
        let users = store.users();
        let now = Utc::now();
        let carol = users
            .create_user(
                &new_user("carol", Role::User, Some("ops"), &["unsafe_commands"]),
                now,
            )
            .await
            .expect("create");
        store.upsert_vms(&[("vm-c".into(), now)]).await.expect("vm");
        store
            .set_vm_owner("vm-c", Some(carol.id), Some("ops"))
            .await
            .expect("owner");
        users.delete_user(carol.id).await.expect("delete");
        assert_eq!(users.get_user(carol.id).await.expect("get"), None);
        let vm = store
            .get_vm("vm-c")
            .await
            .expect("get vm")
            .expect("vm kept");
        assert_eq!(vm.owner_id, None, "the VM lost its owner");
        assert_eq!(
            vm.department.as_deref(),
            Some("ops"),
            "and kept its department"
        );
        assert!(matches!(
            users.delete_user(carol.id).await,
            Err(StoreError::NotFound(_))
        ));
        assert!(!users.ensure_department("ops", now).await.expect("again"));
        assert!(users.ensure_department("dev", now).await.expect("new"));
        assert_eq!(
            users.list_departments().await.expect("list"),
            vec!["dev".to_owned(), "ops".to_owned()]
        );
    }
}

support::both_backends!(
    users_are_created_found_listed_and_unique,
    password_change_moves_the_cutoff_and_permissions_are_idempotent,
    deleting_a_user_removes_them_and_frees_their_vms,
);

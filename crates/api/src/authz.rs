//! The one authorization rule set. GraphQL, Socket.IO and REST all ask these functions; none
//! of them decides on its own.
//!
//! - ADMIN sees and commands every VM; a USER sees and commands only the VMs they own.
//! - `UnsafeCommand` needs the permission `unsafe_commands` (ADMIN has it implicitly).
//! - A VM's lifecycle (power actions, adopting it, deleting it) follows the rule of safe
//!   commands: ADMIN, or the VM's owner. Any user may create a VM; they become its owner.
//! - User management and VM ownership are ADMIN-only; a user may change their own password.

use infinibay_store::{Role, UserRecord, VmRecord};

use crate::users::UNSAFE_COMMANDS;

/// What a refusal is about (the API maps it to `FORBIDDEN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The VM belongs to someone else.
    #[error("you may not access this VM")]
    Vm,
    /// Raw commands need `unsafe_commands`.
    #[error("unsafe commands need the permission `unsafe_commands`")]
    UnsafeCommand,
    /// Only administrators may do this.
    #[error("administrators only")]
    AdminOnly,
}

/// Whether `user` is an administrator.
pub fn is_admin(user: &UserRecord) -> bool {
    user.role == Role::Admin
}

/// Whether `user` may see `vm` (and its data, events and commands).
pub fn can_see_vm(user: &UserRecord, vm: &VmRecord) -> bool {
    can_see_vm_owned_by(user, vm.owner_id)
}

/// [`can_see_vm`] when only the owner id is at hand (real-time fan-out).
pub fn can_see_vm_owned_by(user: &UserRecord, owner_id: Option<i64>) -> bool {
    is_admin(user) || owner_id == Some(user.id)
}

/// Refuse unless `user` may see `vm`.
pub fn require_vm(user: &UserRecord, vm: &VmRecord) -> Result<(), Denied> {
    if can_see_vm(user, vm) {
        Ok(())
    } else {
        Err(Denied::Vm)
    }
}

/// Refuse unless `user` may send a command of this kind to `vm`.
pub fn require_command(
    user: &UserRecord,
    vm: &VmRecord,
    unsafe_command: bool,
) -> Result<(), Denied> {
    require_vm(user, vm)?;
    if unsafe_command && !has_permission(user, UNSAFE_COMMANDS) {
        return Err(Denied::UnsafeCommand);
    }
    Ok(())
}

/// Refuse unless `user` may power, adopt or delete `vm`: the rule of safe commands.
pub fn require_lifecycle(user: &UserRecord, vm: &VmRecord) -> Result<(), Denied> {
    require_command(user, vm, false)
}

/// Whether `user` holds `permission` (ADMIN holds every one).
pub fn has_permission(user: &UserRecord, permission: &str) -> bool {
    is_admin(user) || user.permissions.iter().any(|p| p == permission)
}

/// Refuse unless `user` is an administrator.
pub fn require_admin(user: &UserRecord) -> Result<(), Denied> {
    if is_admin(user) {
        Ok(())
    } else {
        Err(Denied::AdminOnly)
    }
}

/// Refuse unless `user` may change the password of user `target`.
pub fn require_self_or_admin(user: &UserRecord, target: i64) -> Result<(), Denied> {
    if is_admin(user) || user.id == target {
        Ok(())
    } else {
        Err(Denied::AdminOnly)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use infinibay_store::VmStatus;

    fn user(id: i64, role: Role, permissions: &[&str]) -> UserRecord {
        UserRecord {
            id,
            username: format!("u{id}"),
            password_hash: String::new(),
            role,
            department: None,
            permissions: permissions.iter().map(|p| (*p).to_owned()).collect(),
            namespace: format!("user_{id}"),
            password_changed_at: Utc::now(),
            created_at: Utc::now(),
        }
    }

    fn vm(owner: Option<i64>) -> VmRecord {
        VmRecord {
            id: "vm".into(),
            name: "vm".into(),
            owner_id: owner,
            department: None,
            status: VmStatus::Online,
            last_seen: None,
            agent: None,
            created_at: Utc::now(),
        }
    }

    #[test]
    fn owners_and_admins_see_a_vm_others_do_not() {
        let admin = user(1, Role::Admin, &[]);
        let owner = user(2, Role::User, &[]);
        let other = user(3, Role::User, &[UNSAFE_COMMANDS]);
        assert!(can_see_vm(&admin, &vm(Some(2))));
        assert!(can_see_vm(&owner, &vm(Some(2))));
        assert!(!can_see_vm(&other, &vm(Some(2))));
        assert!(
            !can_see_vm(&owner, &vm(None)),
            "an unowned VM is admin-only"
        );
    }

    #[test]
    fn unsafe_commands_need_the_permission_admins_have_it() {
        let admin = user(1, Role::Admin, &[]);
        let owner = user(2, Role::User, &[]);
        let trusted = user(3, Role::User, &[UNSAFE_COMMANDS]);
        assert_eq!(require_command(&admin, &vm(Some(2)), true), Ok(()));
        assert_eq!(require_command(&owner, &vm(Some(2)), false), Ok(()));
        assert_eq!(
            require_command(&owner, &vm(Some(2)), true),
            Err(Denied::UnsafeCommand)
        );
        assert_eq!(require_command(&trusted, &vm(Some(3)), true), Ok(()));
        assert_eq!(
            require_command(&trusted, &vm(Some(2)), true),
            Err(Denied::Vm)
        );
        assert_eq!(require_lifecycle(&admin, &vm(Some(2))), Ok(()));
        assert_eq!(require_lifecycle(&owner, &vm(Some(2))), Ok(()));
        assert_eq!(require_lifecycle(&trusted, &vm(Some(2))), Err(Denied::Vm));
        assert_eq!(require_lifecycle(&owner, &vm(None)), Err(Denied::Vm));
        assert_eq!(require_admin(&owner), Err(Denied::AdminOnly));
        assert_eq!(require_self_or_admin(&owner, 2), Ok(()));
        assert_eq!(require_self_or_admin(&owner, 3), Err(Denied::AdminOnly));
    }
}

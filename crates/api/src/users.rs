//! Accounts: password hashing, user creation with its persistent real-time room, the first
//! admin. Used by the API (GraphQL mutations) and by `infinibay user …` on the database.

use chrono::Utc;
use thiserror::Error;

use infinibay_store::{NewUser, Role, Store, StoreError, UserRecord};

/// The one permission there is today: run `UnsafeCommand`s (ADMIN has it implicitly).
pub const UNSAFE_COMMANDS: &str = "unsafe_commands";
/// Every permission a user can be granted.
pub const KNOWN_PERMISSIONS: &[&str] = &[UNSAFE_COMMANDS];
/// Name of the admin created on first start.
pub const FIRST_ADMIN: &str = "admin";
/// Environment variable with the first admin's password.
pub const ADMIN_PASSWORD_ENV: &str = "INFINIBAY_ADMIN_PASSWORD";

/// Why an account operation failed.
#[derive(Debug, Error)]
pub enum UserError {
    /// Input refused (name, password, permission).
    #[error("{0}")]
    Invalid(String),
    /// The storage layer failed or refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Hashing failed (never expected; argon2 parameters are fixed).
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// argon2id hash (PHC string) of a password, with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, UserError> {
    use argon2::PasswordHasher;
    let salt_bytes: [u8; 16] = rand::random();
    let salt = argon2::password_hash::SaltString::encode_b64(&salt_bytes)
        .map_err(|e| UserError::Hash(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UserError::Hash(e.to_string()))
}

/// Whether `password` matches the stored hash (a malformed hash never matches).
pub fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::PasswordVerifier;
    match argon2::password_hash::PasswordHash::new(hash) {
        Ok(parsed) => argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A random password for generated accounts (20 characters, ~119 bits).
pub fn generate_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rng();
    (0..20)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn check_username(name: &str) -> Result<(), UserError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(UserError::Invalid(format!(
            "invalid username `{name}` (1–64 characters: letters, digits, _ - . @)"
        )))
    }
}

/// Refuse passwords too short to be worth hashing.
pub fn check_password(password: &str) -> Result<(), UserError> {
    if password.chars().count() < 8 {
        return Err(UserError::Invalid(
            "password too short (at least 8 characters)".into(),
        ));
    }
    if password.len() > 1024 {
        return Err(UserError::Invalid(
            "password too long (at most 1024 bytes)".into(),
        ));
    }
    Ok(())
}

/// Refuse permissions nobody checks (a typo would otherwise grant nothing silently).
pub fn check_permission(permission: &str) -> Result<(), UserError> {
    if KNOWN_PERMISSIONS.contains(&permission) {
        Ok(())
    } else {
        Err(UserError::Invalid(format!(
            "unknown permission `{permission}` (known: {})",
            KNOWN_PERMISSIONS.join(", ")
        )))
    }
}

/// `user_<first 8 of a random id>_<random>`: the persistent real-time room (seed 003 shape).
fn new_namespace() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let suffix: u32 = rand::random();
    format!("user_{}_{suffix:08x}", &id[..8])
}

/// What a new account gets.
#[derive(Debug, Clone)]
pub struct CreateUser {
    /// Login name.
    pub username: String,
    /// Plain password (hashed here).
    pub password: String,
    /// Role.
    pub role: Role,
    /// Department.
    pub department: Option<String>,
    /// Permissions.
    pub permissions: Vec<String>,
}

/// Validate, hash and store a new user.
pub async fn create_user(store: &dyn Store, input: CreateUser) -> Result<UserRecord, UserError> {
    check_username(&input.username)?;
    check_password(&input.password)?;
    for p in &input.permissions {
        check_permission(p)?;
    }
    let department = input
        .department
        .map(|d| d.trim().to_owned())
        .filter(|d| !d.is_empty());
    let password_hash = crate::password_work::hash(input.password).await?;
    let user = NewUser {
        username: input.username,
        password_hash,
        role: input.role,
        department,
        permissions: input.permissions,
        namespace: new_namespace(),
    };
    Ok(store.users().create_user(&user, Utc::now()).await?)
}

/// Set a new password; tokens issued before now stop working.
pub async fn set_password(store: &dyn Store, id: i64, password: &str) -> Result<(), UserError> {
    check_password(password)?;
    let hash = crate::password_work::hash(password.to_owned()).await?;
    Ok(store.users().set_password(id, &hash, Utc::now()).await?)
}

/// The first admin, when one had to be created.
#[derive(Debug, Clone)]
pub struct FirstAdmin {
    /// The stored user.
    pub user: UserRecord,
    /// The generated password (`None` when it came from the environment).
    pub generated_password: Option<String>,
}

/// On first start (no user at all): create `admin` with the password from
/// `INFINIBAY_ADMIN_PASSWORD`, else a generated one the caller prints once.
pub async fn ensure_first_admin(
    store: &dyn Store,
    env_password: Option<String>,
) -> Result<Option<FirstAdmin>, UserError> {
    if !store.users().list_users().await?.is_empty() {
        return Ok(None);
    }
    let (password, generated) = match env_password.filter(|p| !p.is_empty()) {
        Some(p) => (p, false),
        None => (generate_password(), true),
    };
    let created = create_user(
        store,
        CreateUser {
            username: FIRST_ADMIN.to_owned(),
            password: password.clone(),
            role: Role::Admin,
            department: None,
            permissions: vec![UNSAFE_COMMANDS.to_owned()],
        },
    )
    .await;
    match created {
        Ok(user) => Ok(Some(FirstAdmin {
            user,
            generated_password: generated.then_some(password),
        })),
        // Another process (a second host on the same PostgreSQL) won the race.
        Err(UserError::Store(StoreError::Conflict(_))) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The banner printed once when the first admin's password was generated.
pub fn first_admin_banner(admin: &FirstAdmin) -> Option<String> {
    admin.generated_password.as_ref().map(|password| {
        format!(
            "\n==================== infinibay: first start ====================\n\
             Created the administrator account.\n  username: {}\n  password: {password}\n\
             This password is shown ONCE and stored only as an argon2 hash.\n\
             Change it with `infinibay user passwd {}`.\n\
             ================================================================\n",
            admin.user.username, admin.user.username
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_only_its_password() {
        let hash = hash_password("correct horse").expect("hash");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("wrong horse", &hash));
        assert!(!verify_password("correct horse", "not a hash"));
        assert_ne!(
            hash,
            hash_password("correct horse").expect("hash"),
            "salted"
        );
    }

    #[test]
    fn names_passwords_and_permissions_are_checked() {
        assert!(check_username("alice.b@x").is_ok());
        assert!(check_username("").is_err());
        assert!(check_username("a b").is_err());
        assert!(check_password("short").is_err());
        assert!(check_permission(UNSAFE_COMMANDS).is_ok());
        assert!(check_permission("root").is_err());
        let ns = new_namespace();
        assert!(ns.starts_with("user_") && ns.len() == 5 + 8 + 1 + 8, "{ns}");
        assert_eq!(generate_password().len(), 20);
    }
}

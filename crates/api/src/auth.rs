//! Authentication: the JWT secret kept in the data dir, token issue and verification, and the
//! refusal of deleted users and of tokens older than the last password change.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use infinibay_store::{Store, UserRecord};

/// File name of the signing secret inside the data directory.
pub const SECRET_FILE: &str = "jwt-secret";
/// Default token lifetime.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);

/// JWT claims. `userId` as in seed 003; `iatMs` makes "issued before the password change"
/// exact to the millisecond (`iat` alone has whole seconds).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// Decimal user id.
    #[serde(rename = "userId")]
    pub user_id: String,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expires at, seconds since the epoch.
    pub exp: i64,
    /// Issued at, milliseconds since the epoch.
    #[serde(rename = "iatMs", default, skip_serializing_if = "Option::is_none")]
    pub iat_ms: Option<i64>,
}

/// Why a token or a login was refused. The messages are the ones clients see (seed 003).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    /// No token at all.
    #[error("Authentication token required")]
    Missing,
    /// Malformed, badly signed, expired, or issued before the last password change.
    #[error("Invalid or expired token")]
    Invalid,
    /// The user of the token no longer exists.
    #[error("User not found")]
    UserNotFound,
    /// Wrong user name or password (one message for both).
    #[error("invalid username or password")]
    BadCredentials,
    /// Too many password checks are running and waiting ([`crate::password_work`]).
    #[error("too many logins in progress; retry in a moment")]
    Busy,
    /// The database failed.
    #[error("authentication unavailable: {0}")]
    Unavailable(String),
}

/// Why the secret could not be prepared.
#[derive(Debug, Error)]
#[error("JWT secret {path}: {source}")]
pub struct SecretError {
    /// File.
    pub path: PathBuf,
    /// OS error.
    pub source: std::io::Error,
}

/// Read the signing secret from `<data_dir>/jwt-secret`, creating it (64 random bytes, mode
/// 0600) on first start.
pub fn load_or_create_secret(data_dir: &Path) -> Result<Vec<u8>, SecretError> {
    let path = data_dir.join(SECRET_FILE);
    let err = |source| SecretError {
        path: path.clone(),
        source,
    };
    match std::fs::read(&path) {
        Ok(bytes) if bytes.len() >= 32 => return Ok(bytes),
        Ok(_) => {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "shorter than 32 bytes (delete it to generate a new one; every token becomes invalid)",
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    std::fs::create_dir_all(data_dir).map_err(err)?;
    let secret: [u8; 64] = rand::random();
    use std::os::unix::fs::OpenOptionsExt;
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path);
    match created {
        Ok(mut file) => {
            file.write_all(&secret).map_err(err)?;
            file.sync_all().map_err(err)?;
            Ok(secret.to_vec())
        }
        // Two processes started together: use the winner's.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::read(&path).map_err(err)
        }
        Err(e) => Err(err(e)),
    }
}

/// What [`Authenticator::check_password`] found.
#[derive(Debug, Clone)]
pub enum PasswordCheck {
    /// The password is the user's.
    Valid(UserRecord),
    /// It is not (or there is no such user).
    Wrong {
        /// Whether the user exists (the login throttle counts accounts only then).
        user_exists: bool,
    },
}

/// Issues and checks tokens against the user table. Cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    encoding: Arc<EncodingKey>,
    decoding: Arc<DecodingKey>,
    ttl: Duration,
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// With this secret and token lifetime.
    pub fn new(secret: &[u8], ttl: Duration, store: Arc<dyn Store>) -> Self {
        Self {
            encoding: Arc::new(EncodingKey::from_secret(secret)),
            decoding: Arc::new(DecodingKey::from_secret(secret)),
            ttl,
            store,
        }
    }

    /// A signed token for `user`.
    pub fn issue(&self, user: &UserRecord) -> Result<String, AuthError> {
        let now = Utc::now();
        let ttl = chrono::Duration::from_std(self.ttl).unwrap_or(chrono::Duration::hours(12));
        self.issue_with(user, now, now + ttl)
    }

    /// A signed token for `user` with explicit times (tests mint expired tokens with it).
    pub fn issue_with(
        &self,
        user: &UserRecord,
        issued: chrono::DateTime<Utc>,
        expires: chrono::DateTime<Utc>,
    ) -> Result<String, AuthError> {
        let claims = Claims {
            user_id: user.id.to_string(),
            iat: issued.timestamp(),
            exp: expires.timestamp(),
            iat_ms: Some(issued.timestamp_millis()),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Unavailable(format!("cannot sign token: {e}")))
    }

    /// Check the password of `username` and issue a token.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
    ) -> Result<(String, UserRecord), AuthError> {
        match self.check_password(username, password).await? {
            PasswordCheck::Valid(user) => {
                let token = self.issue(&user)?;
                Ok((token, user))
            }
            PasswordCheck::Wrong { .. } => Err(AuthError::BadCredentials),
        }
    }

    /// Whether `password` is `username`'s, under the process's argon2 gate
    /// ([`crate::password_work`]; [`AuthError::Busy`] when it is full). An unknown user costs
    /// the same verification as a wrong password, so that timing does not reveal names.
    pub async fn check_password(
        &self,
        username: &str,
        password: &str,
    ) -> Result<PasswordCheck, AuthError> {
        let user = self
            .store
            .users()
            .user_by_name(username)
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))?;
        let hash = match &user {
            Some(u) => u.password_hash.clone(),
            None => dummy_hash().to_owned(),
        };
        let matches = crate::password_work::verify(password.to_owned(), hash)
            .await
            .map_err(|_| AuthError::Busy)?;
        Ok(match user {
            Some(user) if matches => PasswordCheck::Valid(user),
            user => PasswordCheck::Wrong {
                user_exists: user.is_some(),
            },
        })
    }

    /// Decode a token (signature, expiry) without looking at the database.
    pub fn decode(&self, token: &str) -> Result<Claims, AuthError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "iat"]);
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map(|d| d.claims)
            .map_err(|_| AuthError::Invalid)
    }

    /// The user a token speaks for, if it is still valid: signature, expiry, user exists,
    /// issued after the user's last password change.
    pub async fn authenticate(&self, token: &str) -> Result<UserRecord, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let claims = self.decode(token)?;
        let id: i64 = claims.user_id.parse().map_err(|_| AuthError::Invalid)?;
        let user = self
            .store
            .users()
            .get_user(id)
            .await
            .map_err(|e| AuthError::Unavailable(e.to_string()))?
            .ok_or(AuthError::UserNotFound)?;
        if !still_valid(&claims, &user) {
            return Err(AuthError::Invalid);
        }
        Ok(user)
    }

    /// The store the users live in.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}

/// Whether a token issued with `claims` survives the user's last password change.
pub fn still_valid(claims: &Claims, user: &UserRecord) -> bool {
    let issued_ms = claims.iat_ms.unwrap_or(claims.iat.saturating_mul(1000));
    issued_ms >= user.password_changed_at.timestamp_millis()
        && claims.exp > Utc::now().timestamp() - 5
}

/// A hash verified against when the user does not exist (same cost as a real check).
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| crate::users::hash_password("no such user").unwrap_or_default())
}

/// The token of an `Authorization: Bearer …` header value (or a bare token).
pub fn bearer(value: &str) -> &str {
    let value = value.trim();
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .unwrap_or(value)
        .trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_created_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let first = load_or_create_secret(dir.path()).expect("create");
        let again = load_or_create_secret(dir.path()).expect("read");
        assert_eq!(first, again);
        assert_eq!(first.len(), 64);
        let mode = std::fs::metadata(dir.path().join(SECRET_FILE))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn bearer_prefix_is_optional() {
        assert_eq!(bearer("Bearer abc"), "abc");
        assert_eq!(bearer(" abc "), "abc");
    }
}

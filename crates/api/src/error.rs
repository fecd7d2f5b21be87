//! The API's error: a stable code and a message. Every failure of a lower layer (store,
//! accounts, authentication, authorization, guest commands) becomes one here, each in exactly
//! one `From` impl, and leaves through GraphQL (`extensions.code`) or REST (status + JSON).

use infinibay_store::StoreError;

use super::auth::AuthError;
use super::authz;
use crate::users::UserError;

/// What API handlers return.
pub type ApiResult<T> = Result<T, ApiError>;

/// An API failure with its stable code (GraphQL `extensions.code`, REST status).
///
/// Deliberately not `Display`: async-graphql converts every `Display` type into an error
/// without a code, and this type must only become one through its own conversion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// `UNAUTHENTICATED`, `FORBIDDEN`, `NOT_FOUND`, `VM_OFFLINE`, `VM_UNREACHABLE`, `TIMEOUT`,
    /// `INVALID`, `RATE_LIMITED`, `INTERNAL`, and for VM lifecycle operations
    /// `LIBVIRT_UNAVAILABLE`, `NO_DOMAIN`, `ALREADY_RUNNING`, `NOT_RUNNING`, `INVALID_STATE`,
    /// `ALREADY_EXISTS`, `LIBVIRT_ERROR`.
    pub code: &'static str,
    /// For people.
    pub message: String,
}

impl ApiError {
    /// With this code and message.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    /// `NOT_FOUND`.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new("NOT_FOUND", what)
    }
    /// `INVALID`.
    pub fn invalid(what: impl Into<String>) -> Self {
        Self::new("INVALID", what)
    }
    /// `RATE_LIMITED`: the caller asked too much too fast; retrying later works.
    pub fn rate_limited(why: impl Into<String>) -> Self {
        Self::new("RATE_LIMITED", why)
    }
    /// `INTERNAL` (logged; the message says what failed, not the details).
    pub fn internal(what: impl std::fmt::Display) -> Self {
        tracing::warn!(target: "infinibay::api", "internal error: {what}");
        Self::new("INTERNAL", format!("internal error: {what}"))
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unavailable(m) => Self::internal(m),
            AuthError::Busy => Self::rate_limited(AuthError::Busy.to_string()),
            other => Self::new("UNAUTHENTICATED", other.to_string()),
        }
    }
}

impl From<authz::Denied> for ApiError {
    fn from(e: authz::Denied) -> Self {
        Self::new("FORBIDDEN", e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => Self::not_found(m),
            StoreError::Conflict(m) => Self::invalid(m),
            other => Self::internal(other),
        }
    }
}

impl From<UserError> for ApiError {
    fn from(e: UserError) -> Self {
        match e {
            UserError::Invalid(m) => Self::invalid(m),
            UserError::Store(s) => s.into(),
            UserError::Hash(m) => Self::internal(m),
        }
    }
}

impl From<infinibay_control::CommandError> for ApiError {
    fn from(e: infinibay_control::CommandError) -> Self {
        use infinibay_control::CommandError as C;
        let code = match &e {
            C::UnknownVm(_) => "NOT_FOUND",
            C::NotConnected(_) | C::AgentOffline(_) | C::Disconnected(..) | C::QueueFull(_) => {
                "VM_OFFLINE"
            }
            C::Timeout { .. } => "TIMEOUT",
            C::TooManyPending { .. } | C::NoSuchCommand(..) => "INTERNAL",
            C::Invalid(_) => "INVALID",
            C::Unreachable(..) => "VM_UNREACHABLE",
            C::Forbidden(_) => "FORBIDDEN",
        };
        Self::new(code, e.to_string())
    }
}

impl From<infinibay_control::ControlError> for ApiError {
    fn from(e: infinibay_control::ControlError) -> Self {
        use infinibay_control::ControlError as C;
        match e {
            C::Unreachable(..) => Self::new("VM_UNREACHABLE", e.to_string()),
            C::Invalid(m) => Self::invalid(m),
            C::NotFound(m) => Self::not_found(m),
            C::Storage(_) => Self::internal(e),
        }
    }
}

impl From<infinibay_control::LifecycleError> for ApiError {
    fn from(e: infinibay_control::LifecycleError) -> Self {
        match e {
            infinibay_control::LifecycleError::Storage(m) => Self::internal(m),
            other => Self::new(other.code(), other.to_string()),
        }
    }
}

//! What every resolver takes from the request's context: the API state, the real-time side,
//! and who is asking; and how an [`ApiError`] leaves as a GraphQL error.

use std::sync::Arc;

use async_graphql::{Context, ErrorExtensions, ID};

use infinibay_store::UserRecord;

use crate::auth::AuthError;
use crate::authz;
use crate::error::{ApiError, ApiResult};
use crate::realtime::Realtime;
use crate::state::Api;

/// Who is asking: the result of checking the request's token (checked once per request).
#[derive(Clone)]
pub struct Caller(pub ApiResult<UserRecord>);

/// The one way an [`ApiError`] becomes a GraphQL error: its code in `extensions.code`.
impl From<ApiError> for async_graphql::Error {
    fn from(e: ApiError) -> Self {
        let code = e.code;
        async_graphql::Error::new(e.message).extend_with(|_, ext| ext.set("code", code))
    }
}

/// What subscription streams yield (resolvers return [`ApiResult`]).
pub(crate) type GqlResult<T> = Result<T, async_graphql::Error>;

/// The API state.
pub(crate) fn api<'a>(ctx: &Context<'a>) -> ApiResult<&'a Api> {
    ctx.data::<Api>()
        .map_err(|_| ApiError::internal("API state missing"))
}

/// The real-time side.
pub(crate) fn realtime<'a>(ctx: &Context<'a>) -> ApiResult<&'a Arc<Realtime>> {
    ctx.data::<Arc<Realtime>>()
        .map_err(|_| ApiError::internal("real-time state missing"))
}

/// The authenticated caller, or why there is none.
pub(crate) fn caller(ctx: &Context<'_>) -> ApiResult<UserRecord> {
    match ctx.data_opt::<Caller>() {
        Some(Caller(Ok(user))) => Ok(user.clone()),
        Some(Caller(Err(e))) => Err(e.clone()),
        None => Err(ApiError::from(AuthError::Missing)),
    }
}

/// The API state for a resolver about one VM, after checking that the caller may see it
/// (`NOT_FOUND` when it does not exist, `FORBIDDEN` when it is not theirs).
pub(crate) async fn vm_scope<'a>(ctx: &Context<'a>, vm_id: &str) -> ApiResult<&'a Api> {
    let user = caller(ctx)?;
    let api = api(ctx)?;
    api.visible_vm(&user, vm_id).await?;
    Ok(api)
}

/// The caller and the API state, for what only an administrator may do.
pub(crate) fn admin<'a>(ctx: &Context<'a>) -> ApiResult<(UserRecord, &'a Api)> {
    let user = caller(ctx)?;
    authz::require_admin(&user)?;
    Ok((user, api(ctx)?))
}

/// A user id argument.
pub(crate) fn parse_user_id(id: &ID) -> ApiResult<i64> {
    id.parse::<i64>()
        .map_err(|_| ApiError::invalid(format!("`{}` is not a user id", id.as_str())))
}

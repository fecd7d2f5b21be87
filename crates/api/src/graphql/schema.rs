//! The schema: the three roots, with the API state attached, the per-operation guards
//! ([`super::guards`]), and introspection only when GraphiQL is on (`api.graphiql`).

use std::sync::Arc;

use async_graphql::Schema;

use super::guards::Guards;
use super::mutation::MutationRoot;
use super::query::QueryRoot;
use super::subscription::SubscriptionRoot;
use crate::realtime::Realtime;
use crate::state::Api;

/// The schema type.
pub type ApiSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// The schema with the API state attached.
pub fn schema(api: Api, realtime: Arc<Realtime>) -> ApiSchema {
    let introspection = api.limits().graphiql;
    let builder = Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .data(api)
        .data(realtime)
        .extension(Guards)
        .limit_depth(12)
        .limit_complexity(5_000)
        .limit_directives(16);
    let builder = if introspection {
        builder
    } else {
        builder.disable_introspection()
    };
    builder.finish()
}

/// The SDL of the schema (the authorization matrix enumerates its root fields).
pub fn sdl() -> String {
    Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .finish()
        .sdl()
}

//! The schema: the three roots, with the API state attached.

use std::sync::Arc;

use async_graphql::Schema;

use super::mutation::MutationRoot;
use super::query::QueryRoot;
use super::subscription::SubscriptionRoot;
use crate::realtime::Realtime;
use crate::state::Api;

/// The schema type.
pub type ApiSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// The schema with the API state attached.
pub fn schema(api: Api, realtime: Arc<Realtime>) -> ApiSchema {
    Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .data(api)
        .data(realtime)
        .limit_depth(12)
        .limit_complexity(5_000)
        .finish()
}

/// The SDL of the schema (the authorization matrix enumerates its root fields).
pub fn sdl() -> String {
    Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .finish()
        .sdl()
}

//! GraphQL at `/graphql` (async-graphql): GraphiQL on GET, queries and mutations by POST,
//! subscriptions over graphql-ws at `/graphql` (and `/graphql/ws`). Every resolver asks
//! [`crate::authz`]; errors carry `extensions.code`.
//!
//! By concern: [`types`] (objects, enums, inputs and their conversions), [`query`],
//! [`mutation`], [`subscription`] (the roots), [`vms`] (one VM's seed-shaped metrics, errors,
//! collection settings and name), [`alerts`] (rules and alerts), [`schema`] (the roots
//! assembled: each concern's queries and mutations merged), [`transport`] (HTTP), [`ws`] (one
//! graphql-ws connection and its limits), [`guards`] (limits of every operation: one login per
//! request, database turns), and [`context`] (what resolvers take from a request).

pub mod alerts;
pub mod context;
pub mod guards;
pub mod mutation;
pub mod query;
pub mod schema;
pub mod subscription;
pub mod transport;
pub mod types;
pub mod vms;
pub mod ws;

pub use context::Caller;
pub use schema::{ApiSchema, schema, sdl};
pub use transport::routes;

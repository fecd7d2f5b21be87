//! The schema: the three roots, with the API state attached, the per-operation guards
//! ([`super::guards`]), and introspection only when GraphiQL is on (`api.graphiql`).

use std::sync::Arc;

use async_graphql::{MergedObject, Schema};

use super::alerts::{AlertsMutation, AlertsQuery};
use super::guards::Guards;
use super::mutation::MutationRoot;
use super::query::QueryRoot;
use super::subscription::SubscriptionRoot;
use super::vms::{VmMutation, VmQuery};
use crate::realtime::Realtime;
use crate::state::Api;

/// Every query: the roots of each concern, merged (one `QueryRoot` in the schema).
#[derive(MergedObject)]
#[graphql(name = "QueryRoot")]
pub struct Queries(QueryRoot, VmQuery, AlertsQuery);

/// Every mutation, merged likewise.
#[derive(MergedObject)]
#[graphql(name = "MutationRoot")]
pub struct Mutations(MutationRoot, VmMutation, AlertsMutation);

fn roots() -> (Queries, Mutations, SubscriptionRoot) {
    (
        Queries(QueryRoot, VmQuery, AlertsQuery),
        Mutations(MutationRoot, VmMutation, AlertsMutation),
        SubscriptionRoot,
    )
}

/// The schema type.
pub type ApiSchema = Schema<Queries, Mutations, SubscriptionRoot>;

/// The schema with the API state attached.
pub fn schema(api: Api, realtime: Arc<Realtime>) -> ApiSchema {
    let introspection = api.limits().graphiql;
    let (query, mutation, subscription) = roots();
    let builder = Schema::build(query, mutation, subscription)
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
    let (query, mutation, subscription) = roots();
    Schema::build(query, mutation, subscription).finish().sdl()
}

#[cfg(test)]
mod tests {
    use super::sdl;

    #[test]
    fn each_concerns_fields_are_merged_into_the_one_query_and_mutation_root() {
        let sdl = sdl();
        for root in [
            "type QueryRoot",
            "type MutationRoot",
            "type SubscriptionRoot",
        ] {
            assert!(sdl.contains(root), "{root} missing");
        }
        for part in [
            "CoreQueries",
            "CoreMutations",
            "VmQuery",
            "AlertsQuery",
            "AlertsMutation",
        ] {
            assert!(!sdl.contains(part), "{part} leaks into the SDL");
        }
        for field in [
            "getVmMetrics(",
            "vmErrors(",
            "alerts(",
            "renameVm(",
            "createAlertRule(",
        ] {
            assert!(sdl.contains(field), "{field} missing from the SDL");
        }
    }
}

//! Limits applied to every GraphQL operation, whichever transport brought it (POST or
//! graphql-ws), as an async-graphql extension:
//!
//! - **one `login` per request**: a document whose mutation selects `login` more than once
//!   (aliases, fragments) is refused before anything runs — 1,000 aliased logins were 1,000
//!   argon2 checks in one request;
//! - **a database turn per operation** ([`crate::work_limiter`]): queries and mutations that
//!   arrive over graphql-ws take their user's turn here; a POST took it before authenticating
//!   (and says so with [`TurnHeld`]).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery,
};
use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationType, Selection, SelectionSet,
};
use async_graphql::{Response, ServerError, ServerResult, Variables};

use super::context::Caller;
use crate::error::ApiError;
use crate::state::Api;
use crate::work_limiter::Principal;

/// The request's client address (graphql-ws: the connection's), for the login throttle and
/// for the turns of callers without a valid token.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<IpAddr>);

/// Put in a request's data when its transport already holds the caller's database turn.
#[derive(Debug)]
pub struct TurnHeld;

/// The root field that may appear only once per request.
const LOGIN_FIELD: &str = "login";

/// The extension's factory, for [`async_graphql::SchemaBuilder::extension`].
pub struct Guards;

impl ExtensionFactory for Guards {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(GuardsExtension)
    }
}

struct GuardsExtension;

#[async_graphql::async_trait::async_trait]
impl Extension for GuardsExtension {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        if logins_in(&document) > 1 {
            return Err(server_error(ApiError::invalid(
                "one login per request (this one selects `login` more than once)",
            )));
        }
        Ok(document)
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        if ctx.data_opt::<TurnHeld>().is_some() {
            return next.run(ctx, operation_name).await;
        }
        let Some(api) = ctx.data_opt::<Api>() else {
            return next.run(ctx, operation_name).await;
        };
        let principal = match ctx.data_opt::<Caller>() {
            Some(Caller(Ok(user))) => Principal::User(user.id),
            _ => match ctx.data_opt::<Peer>() {
                Some(Peer(Some(ip))) => Principal::Address(*ip),
                _ => Principal::Unknown,
            },
        };
        match api.turn(principal).await {
            Ok(turn) => {
                let response = next.run(ctx, operation_name).await;
                drop(turn);
                response
            }
            Err(e) => Response::from_errors(vec![server_error(e)]),
        }
    }
}

/// An [`ApiError`] as a request-level GraphQL error (with `extensions.code`).
pub(crate) fn server_error(e: ApiError) -> ServerError {
    let error: async_graphql::Error = e.into();
    error.into_server_error(async_graphql::Pos::default())
}

/// How many times the mutations of `document` select `login` at their root, through aliases,
/// fragment spreads and inline fragments (the most of any one mutation operation).
pub fn logins_in(document: &ExecutableDocument) -> usize {
    let count = |selection_set: &SelectionSet| {
        let mut visited = HashSet::new();
        count_logins(document, selection_set, &mut visited)
    };
    match &document.operations {
        DocumentOperations::Single(op) => match op.node.ty {
            OperationType::Mutation => count(&op.node.selection_set.node),
            _ => 0,
        },
        DocumentOperations::Multiple(ops) => ops
            .values()
            .filter(|op| op.node.ty == OperationType::Mutation)
            .map(|op| count(&op.node.selection_set.node))
            .max()
            .unwrap_or(0),
    }
}

fn count_logins(
    document: &ExecutableDocument,
    selection_set: &SelectionSet,
    visited: &mut HashSet<String>,
) -> usize {
    selection_set
        .items
        .iter()
        .map(|item| match &item.node {
            Selection::Field(field) => usize::from(field.node.name.node.as_str() == LOGIN_FIELD),
            Selection::InlineFragment(fragment) => {
                count_logins(document, &fragment.node.selection_set.node, visited)
            }
            Selection::FragmentSpread(spread) => {
                let name = spread.node.fragment_name.node.as_str();
                // A fragment counts once per spread, but a cycle (refused later by
                // validation) must not loop here.
                if !visited.insert(name.to_owned()) {
                    return 0;
                }
                let n = document
                    .fragments
                    .get(&spread.node.fragment_name.node)
                    .map_or(0, |f| {
                        count_logins(document, &f.node.selection_set.node, visited)
                    });
                visited.remove(name);
                n
            }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logins(query: &str) -> usize {
        logins_in(&async_graphql::parser::parse_query(query).expect("parses"))
    }

    #[test]
    fn logins_are_counted_through_aliases_and_fragments() {
        assert_eq!(
            logins("mutation { login(username: \"a\", password: \"b\") { token } }"),
            1
        );
        assert_eq!(
            logins(
                "mutation { a: login(username: \"a\", password: \"b\") { token } b: login(username: \"a\", password: \"c\") { token } }"
            ),
            2
        );
        assert_eq!(
            logins(
                "mutation { ...L ...L } fragment L on MutationRoot { login(username: \"a\", password: \"b\") { token } }"
            ),
            2
        );
        assert_eq!(
            logins(
                "mutation { ... on MutationRoot { x: login(username: \"a\", password: \"b\") { token } } login(username: \"a\", password: \"b\") { token } }"
            ),
            2
        );
        assert_eq!(logins("query { login }"), 0, "queries have no login");
        assert_eq!(
            logins(
                "mutation A { login(username: \"a\", password: \"b\") { token } } mutation B { login(username: \"a\", password: \"b\") { token } }"
            ),
            1,
            "one per operation; only one operation runs"
        );
        assert_eq!(
            logins(
                "mutation { ...A } fragment A on MutationRoot { ...B } fragment B on MutationRoot { ...A }"
            ),
            0,
            "a cycle ends"
        );
    }
}

// GraphQL over fetch for the node clients (tests/node/*.mjs and the benchmark drivers copied
// beside them): the `data` of an answer, or an error naming every GraphQL error.
export function graphqlClient(server) {
  return async function gql(query, variables, token) {
    const res = await fetch(`${server}/graphql`, {
      method: "POST",
      headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
      body: JSON.stringify({ query, variables }),
    });
    const body = await res.json();
    if (body.errors) throw new Error(`GraphQL: ${JSON.stringify(body.errors)}`);
    return body.data;
  };
}

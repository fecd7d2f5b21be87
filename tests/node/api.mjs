// What the node tests share: the server's GraphQL over fetch, and logging in.

/** Environment variable `k`, which must be set. */
export const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`missing env ${k}`);
  return v;
};

/** POST a GraphQL request to `${SERVER}/graphql`; GraphQL errors throw. */
export async function gql(query, variables, token) {
  const res = await fetch(`${env("SERVER")}/graphql`, {
    method: "POST",
    headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify({ query, variables }),
  });
  const body = await res.json();
  if (body.errors) throw new Error(`GraphQL: ${JSON.stringify(body.errors)}`);
  return body.data;
}

/** `{token, user: {id, username, role}}`. */
export async function login(user, pass) {
  const d = await gql(
    "mutation($u:String!,$p:String!){login(username:$u,password:$p){token user{id username role}}}",
    { u: user, p: pass },
  );
  return d.login;
}

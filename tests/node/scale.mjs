// Scale-out with the official socket.io-client v4 against two `infinibay api` replicas
// (crates/host/tests/scale_out.rs runs it). Prints JSON lines; exits non-zero on the first
// failed expectation.
//
// MODE=live      A token minted on API A works on API B; a socket on B receives metricsUpdate of
//                VM_ID (a VM of another process, node A) — rooms fan out from NATS; a user
//                deleted through A has their socket on B disconnected and their token refused
//                there (revocation across replicas).
// MODE=failover  A socket on API A subscribed to VM_ID prints {"ready":true}; the test kills
//                API A; the client moves to API B (what a load balancer does for it), connects
//                with the same token, subscribes again and receives metricsUpdate.
//
// env: MODE, SERVER_A, SERVER_B, VM_ID, USER/PASS (may see VM_ID), ADMIN_USER/ADMIN_PASS,
//      VICTIM_USER/VICTIM_PASS (live)
import { io } from "socket.io-client";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`missing env ${k}`);
  return v;
};
const [A, B, VM_ID] = [env("SERVER_A"), env("SERVER_B"), env("VM_ID")];
const results = { mode: env("MODE") };

function expect(cond, what) {
  if (!cond) {
    results.failed = what;
    console.log(JSON.stringify(results));
    process.exit(1);
  }
}

async function gql(server, query, variables, token) {
  const res = await fetch(`${server}/graphql`, {
    method: "POST",
    headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify({ query, variables }),
  });
  const body = await res.json();
  if (body.errors) throw new Error(`GraphQL: ${JSON.stringify(body.errors)}`);
  return body.data;
}

async function login(server, user, pass) {
  const d = await gql(
    server,
    "mutation($u:String!,$p:String!){login(username:$u,password:$p){token user{id username role}}}",
    { u: user, p: pass },
  );
  return d.login;
}

function connect(server, token) {
  return new Promise((resolve, reject) => {
    const socket = io(server, { auth: { token }, transports: ["websocket"], reconnection: false });
    const timer = setTimeout(() => reject(new Error(`no \`connected\` from ${server} within 5 s`)), 5000);
    socket.on("connected", (info) => {
      clearTimeout(timer);
      resolve(socket);
    });
    socket.on("connect_error", (err) => {
      clearTimeout(timer);
      reject(new Error(`connect_error: ${err.message}`));
    });
  });
}

const within = (promise, ms) => Promise.race([promise, new Promise((r) => setTimeout(() => r(null), ms))]);

// Subscribe to VM_ID and wait for its next metricsUpdate (null after `ms`).
async function subscribeAndReceive(socket, ms) {
  const arrived = new Promise((resolve) => {
    socket.on("metricsUpdate", (m) => {
      if (m.vmId === VM_ID) resolve(m);
    });
  });
  const ack = await socket.timeout(5000).emitWithAck("subscribe:vm", VM_ID);
  expect(ack && ack.ok === true, `subscribe acknowledged ok (got ${JSON.stringify(ack)})`);
  const since = Date.now();
  const first = await within(arrived, ms);
  return first && { update: first, afterMs: Date.now() - since };
}

const user = await login(A, env("USER"), env("PASS"));

if (results.mode === "live") {
  const onB = await connect(B, user.token);
  const got = await subscribeAndReceive(onB, 5000);
  expect(got !== null, "a socket on API B receives metricsUpdate of node A's VM within 5 s");
  expect(typeof got.update.metrics.cpu.usage_percent === "number", "metrics in the seeds' shape");
  results.metricsUpdateOnBAfterMs = got.afterMs;

  const victim = await login(A, env("VICTIM_USER"), env("VICTIM_PASS"));
  const victimOnB = await connect(B, victim.token);
  const disconnected = new Promise((resolve) => victimOnB.on("disconnect", (reason) => resolve(reason)));
  const admin = await login(A, env("ADMIN_USER"), env("ADMIN_PASS"));
  const deletedAt = Date.now();
  await gql(A, "mutation($id:ID!){deleteUser(id:$id)}", { id: victim.user.id }, admin.token);
  // B learns it from PostgreSQL within its revocation sweep (5 s).
  const reason = await within(disconnected, 8000);
  expect(reason !== null, "the user deleted through API A is disconnected from API B within 8 s");
  results.victimDisconnectedOnBAfterMs = Date.now() - deletedAt;
  let refused = null;
  try {
    await connect(B, victim.token);
  } catch (e) {
    refused = e.message;
  }
  expect(refused && refused.includes("User not found"), `API B refuses the deleted user's token (got ${refused})`);
  onB.close();
} else if (results.mode === "failover") {
  const onA = await connect(A, user.token);
  const gone = new Promise((resolve) => onA.on("disconnect", (reason) => resolve(reason)));
  const first = await subscribeAndReceive(onA, 5000);
  expect(first !== null, "a socket on API A receives metricsUpdate");
  console.log(JSON.stringify({ ready: true }));
  const reason = await within(gone, 20000);
  expect(reason !== null, "the socket on API A is disconnected when API A dies");
  results.disconnectReason = reason;
  const movedAt = Date.now();
  const onB = await connect(B, user.token);
  const again = await subscribeAndReceive(onB, 5000);
  expect(again !== null, "after moving to API B the client receives metricsUpdate again within 5 s");
  results.resumedOnBAfterMs = Date.now() - movedAt;
  onB.close();
} else {
  expect(false, `unknown MODE ${results.mode}`);
}

results.ok = true;
console.log(JSON.stringify(results));
process.exit(0);

// The seeds' frontend path with the official socket.io-client v4: log in over GraphQL,
// connect with { auth: { token } }, subscribe to a VM, receive metricsUpdate; another user is
// refused; a deleted user's socket is disconnected. Prints one JSON line of results and exits
// non-zero on the first failed expectation.
//
// env: SERVER, VM_ID, OWNER_USER/OWNER_PASS, OTHER_USER/OTHER_PASS, ADMIN_USER/ADMIN_PASS,
//      VICTIM_USER/VICTIM_PASS
import { io } from "socket.io-client";
import { env, gql, login } from "./api.mjs";

const SERVER = env("SERVER");
const VM_ID = env("VM_ID");
const results = {};

function connect(token) {
  return new Promise((resolve, reject) => {
    const socket = io(SERVER, { auth: { token }, transports: ["websocket"], reconnection: false });
    const timer = setTimeout(() => reject(new Error("no `connected` within 5 s")), 5000);
    socket.on("connected", (info) => {
      clearTimeout(timer);
      resolve({ socket, info });
    });
    socket.on("connect_error", (err) => {
      clearTimeout(timer);
      reject(new Error(`connect_error: ${err.message}`));
    });
  });
}

function expect(cond, what) {
  if (!cond) {
    results.failed = what;
    console.log(JSON.stringify(results));
    process.exit(1);
  }
}

const owner = await login(env("OWNER_USER"), env("OWNER_PASS"));
const { socket: ownerSocket, info } = await connect(owner.token);
expect(info.namespace && info.namespace.startsWith("user_"), "connected carries the namespace");
expect(info.user.username === env("OWNER_USER"), "connected carries the user");

const metricsArrived = new Promise((resolve) => {
  ownerSocket.on("metricsUpdate", (m) => {
    if (m.vmId === VM_ID) resolve(m);
  });
});
const subscribedAt = Date.now();
const ack = await ownerSocket.timeout(5000).emitWithAck("subscribe:vm", VM_ID);
expect(ack && ack.ok === true, `owner subscribe acknowledged ok (got ${JSON.stringify(ack)})`);
const first = await Promise.race([
  metricsArrived,
  new Promise((r) => setTimeout(() => r(null), 2000)),
]);
expect(first !== null, "metricsUpdate within 2 s of subscribing");
results.metricsUpdateAfterMs = Date.now() - subscribedAt;
expect(typeof first.metrics.cpu.usage_percent === "number", "metrics in the seeds' shape (cpu.usage_percent)");
expect(typeof first.metrics.memory.total_kb === "number", "metrics in the seeds' shape (memory.total_kb)");

const other = await login(env("OTHER_USER"), env("OTHER_PASS"));
const { socket: otherSocket } = await connect(other.token);
let leaked = false;
otherSocket.on("metricsUpdate", () => {
  leaked = true;
});
const refused = await otherSocket.timeout(5000).emitWithAck("subscribe:vm", VM_ID);
expect(refused && refused.ok === false && typeof refused.error === "string", `another user's subscribe refused (got ${JSON.stringify(refused)})`);
results.otherRefusal = refused.error;

let badConnect = null;
try {
  await connect("not-a-token");
} catch (e) {
  badConnect = e.message;
}
expect(badConnect && badConnect.includes("Invalid or expired token"), `a bad token is a connect_error (got ${badConnect})`);
results.badTokenError = badConnect;

const victim = await login(env("VICTIM_USER"), env("VICTIM_PASS"));
const { socket: victimSocket } = await connect(victim.token);
const disconnected = new Promise((resolve) => victimSocket.on("disconnect", (reason) => resolve(reason)));
const admin = await login(env("ADMIN_USER"), env("ADMIN_PASS"));
const deletedAt = Date.now();
await gql("mutation($id:ID!){deleteUser(id:$id)}", { id: victim.user.id }, admin.token);
const reason = await Promise.race([disconnected, new Promise((r) => setTimeout(() => r(null), 3000))]);
expect(reason !== null, "the deleted user's socket is disconnected within 3 s");
results.victimDisconnectedAfterMs = Date.now() - deletedAt;
results.victimDisconnectReason = reason;

let reconnect = null;
try {
  await connect(victim.token);
} catch (e) {
  reconnect = e.message;
}
expect(reconnect && reconnect.includes("User not found"), `the deleted user's token is refused (got ${reconnect})`);

// Let a few more samples flow: the other user must still have received nothing.
await new Promise((r) => setTimeout(r, 1500));
expect(!leaked, "no metricsUpdate reached the user who may not see the VM");

results.ok = true;
console.log(JSON.stringify(results));
ownerSocket.close();
otherSocket.close();
process.exit(0);

// Every Socket.IO event the seeds name, received by the official socket.io-client v4 from a
// real server: vm:online, vm:error, vm:offline (a guest the Rust side adds and removes when
// this script prints `WANT guest-online` / `WANT guest-offline`), vm:command, alert:raised,
// alert:resolved, <namespace>:vms:create|update, <namespace>:users:create|update|delete and
// <namespace>:departments:create. Prints one JSON line of results last and exits non-zero on
// the first failed expectation.
//
// env: SERVER, VM_ID (the simulated VM, owned by OWNER), GUEST_VM_ID, OWNER_USER/OWNER_PASS,
//      ADMIN_USER/ADMIN_PASS
import { io } from "socket.io-client";
import { env, gql, login } from "./api.mjs";

const SERVER = env("SERVER");
const VM_ID = env("VM_ID");
const GUEST_VM_ID = env("GUEST_VM_ID");
const results = { seen: [] };

function fail(what) {
  results.failed = what;
  console.log(JSON.stringify(results));
  process.exit(1);
}

/** A connected socket that records every event it receives. */
function connect(token) {
  return new Promise((resolve, reject) => {
    const socket = io(SERVER, { auth: { token }, transports: ["websocket"], reconnection: false });
    const received = [];
    socket.onAny((event, payload) => received.push({ event, payload }));
    const timer = setTimeout(() => reject(new Error("no `connected` within 5 s")), 5000);
    socket.on("connected", (info) => {
      clearTimeout(timer);
      resolve({ socket, info, received });
    });
    socket.on("connect_error", (err) => {
      clearTimeout(timer);
      reject(new Error(`connect_error: ${err.message}`));
    });
  });
}

/** The first event `name` whose payload passes `test`, within `ms`. */
async function waitEvent(client, name, test, ms, what) {
  const started = Date.now();
  while (Date.now() - started < ms) {
    const hit = client.received.find((r) => r.event === name && test(r.payload ?? {}));
    if (hit) {
      results.seen.push(name.replace(/^user_[^:]+:/, "<ns>:"));
      return hit.payload;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  fail(`${what}: no ${name} within ${ms} ms (got ${JSON.stringify(client.received.map((r) => r.event))})`);
}

const admin = await login(env("ADMIN_USER"), env("ADMIN_PASS"));
const owner = await login(env("OWNER_USER"), env("OWNER_PASS"));
const adminClient = await connect(admin.token);
const ownerClient = await connect(owner.token);
const adminNs = adminClient.info.namespace;
const ownerNs = ownerClient.info.namespace;
const ack = await ownerClient.socket.timeout(5000).emitWithAck("subscribe:vm", VM_ID);
if (!ack?.ok) fail(`owner subscribe (got ${JSON.stringify(ack)})`);

// ---- a guest comes online, reports an error, goes away
console.log("WANT guest-online");
const created = await waitEvent(adminClient, `${adminNs}:vms:create`, (p) => p.data?.id === GUEST_VM_ID, 15000, "a new VM is announced");
if (created.status !== "success") fail(`vms:create in seed 003's shape (got ${JSON.stringify(created)})`);
const online = await waitEvent(adminClient, "vm:online", (p) => p.vmId === GUEST_VM_ID, 15000, "the guest comes online");
if (typeof online.timestamp !== "string") fail("vm:online carries a timestamp");
const guestError = await waitEvent(adminClient, "vm:error", (p) => p.vmId === GUEST_VM_ID, 15000, "the guest's error is pushed");
if (guestError.error !== "reading /proc/diskstats failed" || guestError.code !== "collector_failed") {
  fail(`vm:error carries the guest's message and code (got ${JSON.stringify(guestError)})`);
}
console.log("WANT guest-offline");
await waitEvent(adminClient, "vm:offline", (p) => p.vmId === GUEST_VM_ID, 20000, "the removed guest goes offline");

// ---- a command's end, to the VM's room
const ran = await gql(
  'mutation($id:ID!){executeVmCommand(vmId:$id, command:{type:SAFE, action:"SystemInfo"}){id success}}',
  { id: VM_ID },
  owner.token,
);
const command = await waitEvent(ownerClient, "vm:command", (p) => p.vmId === VM_ID && p.id === ran.executeVmCommand.id, 10000, "the command's end is pushed");
if (command.user !== owner.user.id || command.kind !== "safe" || typeof command.durationMs !== "number" || typeof command.status !== "string") {
  fail(`vm:command carries {id, vmId, user, kind, status, durationMs} (got ${JSON.stringify(command)})`);
}

// ---- an alert raised (CPU above a tiny threshold at once) and resolved (its rule deleted)
const rule = await gql(
  "mutation($id:ID){createAlertRule(input:{vmId:$id, kind:CPU, threshold:0.01, durationSeconds:0}){id}}",
  { id: VM_ID },
  admin.token,
);
const ruleId = rule.createAlertRule.id;
const raised = await waitEvent(ownerClient, "alert:raised", (p) => p.ruleId === ruleId, 10000, "the owner sees the alert raised");
if (raised.vmId !== VM_ID || raised.kind === undefined || raised.resolvedAt !== null) fail(`alert:raised shape (got ${JSON.stringify(raised)})`);
await waitEvent(adminClient, "alert:raised", (p) => p.ruleId === ruleId, 10000, "the admin sees the alert raised");
await gql("mutation($id:ID!){deleteAlertRule(id:$id)}", { id: ruleId }, admin.token);
const resolved = await waitEvent(ownerClient, "alert:resolved", (p) => p.ruleId === ruleId, 10000, "deleting the rule resolves its alert");
if (typeof resolved.resolvedAt !== "string") fail(`alert:resolved carries resolvedAt (got ${JSON.stringify(resolved)})`);

// ---- a rename is a vms:update to the owner
await gql('mutation($id:ID!){renameVm(vmId:$id, name:"build box"){id name}}', { id: VM_ID }, owner.token);
const renamed = await waitEvent(ownerClient, `${ownerNs}:vms:update`, (p) => p.data?.name === "build box", 10000, "the rename is announced");
if (renamed.data.id !== VM_ID) fail("vms:update names the VM");

// ---- accounts and departments, to the admins
const made = await gql(
  'mutation{createUser(input:{username:"evented", password:"long-enough-pw", department:"events-dept"}){id}}',
  {},
  admin.token,
);
const userId = made.createUser.id;
await waitEvent(adminClient, `${adminNs}:departments:create`, (p) => p.data?.name === "events-dept", 10000, "a new department is announced");
const userCreated = await waitEvent(adminClient, `${adminNs}:users:create`, (p) => p.data?.id === userId, 10000, "a new user is announced");
if ("passwordHash" in userCreated.data || "password_hash" in userCreated.data) fail("users:create leaks the password hash");
await gql('mutation($id:ID!){grantPermission(id:$id, permission:"unsafe_commands"){id}}', { id: userId }, admin.token);
await waitEvent(adminClient, `${adminNs}:users:update`, (p) => p.data?.id === userId && p.data.permissions?.includes("unsafe_commands"), 10000, "a granted permission is announced");
await gql("mutation($id:ID!){deleteUser(id:$id)}", { id: userId }, admin.token);
await waitEvent(adminClient, `${adminNs}:users:delete`, (p) => p.data?.id === userId, 10000, "a deleted user is announced");

// The owner, a USER, hears nothing of other accounts.
if (ownerClient.received.some((r) => /:users:/.test(r.event) && r.payload?.data?.id === userId)) {
  fail("a USER received another user's account event");
}

results.ok = true;
console.log(JSON.stringify(results));
adminClient.socket.close();
ownerClient.socket.close();
process.exit(0);

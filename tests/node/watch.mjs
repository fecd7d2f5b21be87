// A browser-like watcher with the official socket.io-client v4: logs in over GraphQL, connects
// with { auth: { token } }, joins the rooms of the VMs named in VM_IDS (subscribe:vm), prints
// `{"ready": true, "namespace": …}`, then one JSON line per VM event it receives —
// `<namespace>:vms:create|update|delete`, `vm:power`, `vm:online`, `vm:offline` — with the time
// it arrived (`receivedAtMs`, ms since the epoch, as a browser's Date.now()). It runs until its
// stdin closes (the test or benchmark that started it decides what it waited for).
//
// env: SERVER, USERNAME, PASSWORD, VM_IDS (comma-separated, optional)
import { io } from "socket.io-client";
import { graphqlClient } from "./graphql.mjs";

const env = (k, fallback) => {
  const v = process.env[k] ?? fallback;
  if (v === undefined) throw new Error(`missing env ${k}`);
  return v;
};
const SERVER = env("SERVER");

const gql = graphqlClient(SERVER);

const { login } = await gql(
  "mutation($u:String!,$p:String!){login(username:$u,password:$p){token}}",
  { u: env("USERNAME"), p: env("PASSWORD") },
);

const socket = io(SERVER, { auth: { token: login.token }, transports: ["websocket"], reconnection: false });
const out = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);

socket.on("connect_error", (err) => {
  out({ error: `connect_error: ${err.message}` });
  process.exit(1);
});
socket.on("disconnect", (reason) => {
  out({ disconnected: reason });
  process.exit(1);
});

const info = await new Promise((resolve) => socket.once("connected", resolve));
for (const vmId of env("VM_IDS", "").split(",").filter(Boolean)) {
  const ack = await socket.timeout(5000).emitWithAck("subscribe:vm", vmId);
  if (!ack?.ok) {
    out({ error: `subscribe:vm ${vmId} refused: ${JSON.stringify(ack)}` });
    process.exit(1);
  }
}

socket.onAny((event, payload) => {
  const vmEvent = event.startsWith(`${info.namespace}:vms:`) || event.startsWith("vm:");
  if (vmEvent) out({ event, payload, receivedAtMs: Date.now() });
});

out({ ready: true, namespace: info.namespace });
process.stdin.resume();
process.stdin.on("end", () => {
  socket.close();
  process.exit(0);
});

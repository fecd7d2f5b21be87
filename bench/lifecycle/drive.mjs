// The lifecycle benchmark's client (bench/lifecycle/run.sh starts the host and libvirtd first).
// It plays the browser with the official socket.io-client v4 and measures, over VMS guests
// created one after the other through GraphQL `createVm` (the e2e tiny guest under TCG):
//   1. createVm sent → the VM's agent online (`vm:online` in its room, or `status: ONLINE` read
//      back, whichever is seen first);
//   2. an outside change (`virsh suspend|resume|destroy`, written to one long-lived virsh shell,
//      so virsh's own start-up is not counted) → `<namespace>:vms:update` with the new power
//      state at this client;
//   3. host CPU per libvirt event: the host process's CPU time (/proc/<pid>/stat) over
//      CPU_EVENTS suspend/resume changes of one running guest, each awaited at this client,
//      minus the same process's idle rate over an equal window before.
// Every VM is deleted through `deleteVm` after its measurements. Prints one JSON document.
//
// env: SERVER, USERNAME, PASSWORD, LIBVIRT_URI, HOST_PID, VMS (20), MEMORY_MIB (128),
//      CPU_EVENTS (1000), ONLINE_TIMEOUT_S (300)
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { io } from "socket.io-client";
import { graphqlClient } from "./graphql.mjs";

const env = (k, fallback) => {
  const v = process.env[k] ?? fallback;
  if (v === undefined) throw new Error(`missing env ${k}`);
  return v;
};
const SERVER = env("SERVER");
const VMS = Number(env("VMS", "20"));
const MEMORY_MIB = Number(env("MEMORY_MIB", "128"));
const CPU_EVENTS = Number(env("CPU_EVENTS", "1000"));
const ONLINE_TIMEOUT_MS = Number(env("ONLINE_TIMEOUT_S", "300")) * 1000;
const EVENT_TIMEOUT_MS = 30000;
const HOST_PID = env("HOST_PID");
const CLK_TCK = 100; // Linux USER_HZ on x86_64
const log = (...a) => console.error("[lifecycle]", ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const gql = graphqlClient(SERVER);

/** The host process's CPU time in seconds (user + system). */
function hostCpuSeconds() {
  const stat = readFileSync(`/proc/${HOST_PID}/stat`, "utf8");
  // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

const { login } = await gql(
  "mutation($u:String!,$p:String!){login(username:$u,password:$p){token}}",
  { u: env("USERNAME"), p: env("PASSWORD") },
);
const token = login.token;
const socket = io(SERVER, { auth: { token }, transports: ["websocket"], reconnection: false });
socket.on("connect_error", (err) => {
  log(`connect_error: ${err.message}`);
  process.exit(1);
});
const hello = await new Promise((resolve) => socket.once("connected", resolve));
const ns = hello.namespace;

// Waiters for `<ns>:vms:update` with a given VM and power state, and for `vm:online`.
const updateWaiters = [];
const onlineWaiters = new Map();
socket.onAny((event, payload) => {
  const at = performance.now();
  if (event === `${ns}:vms:update`) {
    const data = payload?.data ?? {};
    for (let i = updateWaiters.length - 1; i >= 0; i--) {
      const w = updateWaiters[i];
      if (w.id === data.id && w.powerState === data.powerState) {
        updateWaiters.splice(i, 1);
        w.resolve(at);
      }
    }
  } else if (event === "vm:online") {
    onlineWaiters.get(payload?.vmId)?.(at);
  }
});
function nextUpdate(id, powerState) {
  return new Promise((resolve, reject) => {
    const w = { id, powerState, resolve };
    updateWaiters.push(w);
    setTimeout(() => {
      const i = updateWaiters.indexOf(w);
      if (i >= 0) {
        updateWaiters.splice(i, 1);
        reject(new Error(`no vms:update ${powerState} for ${id} within ${EVENT_TIMEOUT_MS} ms`));
      }
    }, EVENT_TIMEOUT_MS);
  });
}

// One virsh shell for every outside change.
const virsh = spawn("virsh", ["-q", "-c", env("LIBVIRT_URI")], { stdio: ["pipe", "ignore", "inherit"] });
virsh.on("exit", (code) => log(`virsh exited (${code})`));
/** Sends `command name` to virsh and resolves with when the update reached this client. */
async function outside(command, name, id, expected) {
  const arrived = nextUpdate(id, expected);
  const sent = performance.now();
  virsh.stdin.write(`${command} ${name}\n`);
  return (await arrived) - sent;
}

async function createAndWaitOnline(name) {
  const input = {
    name,
    memoryMib: MEMORY_MIB,
    vcpus: 1,
    kernel: { kernel: "vmlinuz", initrd: "initramfs.gz", cmdline: `console=ttyS0 quiet panic=-1 no_timer_check ib.hostname=${name}` },
    start: true,
  };
  const t0 = performance.now();
  const { createVm } = await gql("mutation($input: CreateVmInput!) { createVm(input: $input) { id powerState } }", { input }, token);
  const id = createVm.id;
  const created = performance.now() - t0;
  let online = null;
  onlineWaiters.set(id, (at) => { online ??= at; });
  await socket.timeout(5000).emitWithAck("subscribe:vm", id);
  const deadline = t0 + ONLINE_TIMEOUT_MS;
  while (online === null) {
    if (performance.now() > deadline) throw new Error(`${name} (${id}) not online within ${ONLINE_TIMEOUT_MS} ms`);
    const { vm } = await gql("query($id: ID!) { vm(id: $id) { status } }", { id }, token);
    if (vm?.status === "ONLINE") online ??= performance.now();
    else await sleep(200);
  }
  onlineWaiters.delete(id);
  return { id, created, toOnline: online - t0 };
}

async function remove(id) {
  await gql("mutation($id: ID!) { deleteVm(vmId: $id) }", { id }, token);
  socket.emit("unsubscribe:vm", id);
}

const run = Date.now().toString(36).slice(-5);
const result = { vms: [], outside: { suspend: [], resume: [], destroy: [] }, cpu: null };
for (let i = 0; i < VMS; i++) {
  const name = `lc-${run}-${i}`;
  const vm = await createAndWaitOnline(name);
  // Let the guest settle (its agent's first inventory) before the outside changes.
  await sleep(1000);
  const suspend = await outside("suspend", name, vm.id, "PAUSED");
  const resume = await outside("resume", name, vm.id, "RUNNING");
  const destroy = await outside("destroy", name, vm.id, "SHUTOFF");
  result.vms.push({ name, ...vm });
  result.outside.suspend.push(suspend);
  result.outside.resume.push(resume);
  result.outside.destroy.push(destroy);
  log(`${name}: createVm ${vm.created.toFixed(0)} ms, online after ${(vm.toOnline / 1000).toFixed(1)} s; virsh suspend ${suspend.toFixed(1)} / resume ${resume.toFixed(1)} / destroy ${destroy.toFixed(1)} ms`);
  if (i < VMS - 1) await remove(vm.id);
  else result.last = vm;
}

// Host CPU per libvirt event, on the last guest (running again).
{
  const { id, name } = { id: result.last.id, name: result.vms.at(-1).name };
  const back = nextUpdate(id, "RUNNING");
  virsh.stdin.write(`start ${name}\n`);
  await back;
  await sleep(5000);
  const idle0 = hostCpuSeconds();
  const w0 = performance.now();
  await sleep(20000);
  const idleRate = (hostCpuSeconds() - idle0) / ((performance.now() - w0) / 1000);
  const c0 = hostCpuSeconds();
  const t0 = performance.now();
  for (let k = 0; k < CPU_EVENTS; k++) {
    if (k % 2 === 0) await outside("suspend", name, id, "PAUSED");
    else await outside("resume", name, id, "RUNNING");
  }
  const seconds = (performance.now() - t0) / 1000;
  const cpu = hostCpuSeconds() - c0;
  const attributable = Math.max(0, cpu - idleRate * seconds);
  result.cpu = { events: CPU_EVENTS, seconds, cpuSeconds: cpu, idleCpuPerSecond: idleRate, perEventMs: (attributable / CPU_EVENTS) * 1000 };
  log(`CPU: ${CPU_EVENTS} events in ${seconds.toFixed(1)} s, host CPU ${cpu.toFixed(2)} s (idle ${idleRate.toFixed(4)} s/s) → ${result.cpu.perEventMs.toFixed(2)} ms per event`);
  await remove(id);
}

virsh.stdin.end();
socket.close();
process.stdout.write(`${JSON.stringify(result)}\n`);
process.exit(0);

// N socket.io-client v4 connections (one process), each subscribed to SUBS VMs; measures, per
// received metricsUpdate, now − the guest's write timestamp (same machine, same clock).
// env: SERVER, TOKENS (comma list; client i uses TOKENS[i % len]), VMS (comma list of ids),
//      CLIENTS, SUBS (VMs per client), WARMUP_S, MEASURE_S, OUT (JSON file; OUT.measuring is
//      created when the measuring window opens)
//
// The clients are measuring equipment: the hot path (one call per delivery) only reads a
// sub-millisecond clock, looks the guest's timestamp up in a small cache (all deliveries of a
// sample carry the same string) and stores a double; no logging, no allocation per delivery.
import { io } from "socket.io-client";
import { writeFileSync } from "node:fs";
import { performance } from "node:perf_hooks";

// Wall clock with sub-ms precision (ms since the epoch, fractional): the guest's timestamp is
// wall clock too (RFC 3339, ms), written by the simulator on the same machine.
const origin = performance.timeOrigin;
const nowMs = () => origin + performance.now();
const parsed = new Map();
function guestMs(stamp) {
  let t = parsed.get(stamp);
  if (t === undefined) {
    t = Date.parse(stamp);
    if (parsed.size > 4096) parsed.clear();
    parsed.set(stamp, t);
  }
  return t;
}

const SERVER = process.env.SERVER;
const TOKENS = process.env.TOKENS.split(",");
const VMS = process.env.VMS.split(",");
const CLIENTS = Number(process.env.CLIENTS ?? 1000);
const SUBS = Number(process.env.SUBS ?? 1);
const WARMUP_S = Number(process.env.WARMUP_S ?? 3);
const MEASURE_S = Number(process.env.MEASURE_S ?? 20);
const OFFSET = Number(process.env.OFFSET ?? 0);

let measuring = false;
let latencies = new Float64Array(1 << 16);
let count = 0;
// guest timestamp (one per sample) → its first delivery's latency in this process
const firstBySample = new Map();
let received = 0;
let refused = 0;
let disconnects = 0;

function connectOne(i) {
  return new Promise((resolve, reject) => {
    const s = io(SERVER, {
      auth: { token: TOKENS[(i + OFFSET) % TOKENS.length] },
      transports: ["websocket"],
      reconnection: false,
    });
    const t = setTimeout(() => reject(new Error(`client ${i}: no connected in 30 s`)), 30000);
    s.on("connect_error", (e) => { clearTimeout(t); reject(e); });
    s.on("disconnect", () => { disconnects++; });
    s.on("metricsUpdate", (m) => {
      if (!measuring) return;
      const now = nowMs();
      received++;
      const stamp = m.guestTimestamp;
      if (!stamp) return;
      if (count === latencies.length) {
        const bigger = new Float64Array(latencies.length * 2);
        bigger.set(latencies);
        latencies = bigger;
      }
      const l = now - guestMs(stamp);
      latencies[count++] = l;
      const f = firstBySample.get(stamp);
      if (f === undefined || l < f) firstBySample.set(stamp, l);
    });
    s.on("connected", async () => {
      clearTimeout(t);
      for (let k = 0; k < SUBS; k++) {
        const vm = VMS[(i * SUBS + k + OFFSET) % VMS.length];
        const ack = await s.timeout(30000).emitWithAck("subscribe:vm", vm);
        if (!ack.ok) refused++;
      }
      resolve(s);
    });
  });
}

const sockets = [];
const started = Date.now();
for (let i = 0; i < CLIENTS; i += 50) {
  const batch = [];
  for (let j = i; j < Math.min(CLIENTS, i + 50); j++) batch.push(connectOne(j));
  sockets.push(...(await Promise.all(batch)));
}
const connectMs = Date.now() - started;
await new Promise((r) => setTimeout(r, WARMUP_S * 1000));
measuring = true;
if (process.env.OUT) writeFileSync(process.env.OUT + ".measuring", "");
const t0 = Date.now();
await new Promise((r) => setTimeout(r, MEASURE_S * 1000));
measuring = false;
const seconds = (Date.now() - t0) / 1000;
const lat = Array.from(latencies.subarray(0, count)).sort((a, b) => a - b);
const q = (p) => (lat.length ? lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] : null);
const result = {
  client: "socket.io-client (node)",
  clients: CLIENTS, subsPerClient: SUBS, vms: VMS.length, connectMs, refused, disconnects,
  received, seconds, perSecond: received / seconds,
  p50: q(0.5), p90: q(0.9), p99: q(0.99), max: lat.length ? lat[lat.length - 1] : null,
  firstBySample: Object.fromEntries(firstBySample),
};
if (process.env.OUT) writeFileSync(process.env.OUT, JSON.stringify({ ...result, latencies: lat }));
console.log(JSON.stringify(result));
for (const s of sockets) s.close();
process.exit(0);

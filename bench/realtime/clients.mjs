// N socket.io-client v4 connections (one process), each subscribed to SUBS VMs; measures, per
// received metricsUpdate, now − the guest's write timestamp (same machine, same clock).
// env: SERVER, TOKENS (comma list; client i uses TOKENS[i % len]), VMS (comma list of ids),
//      CLIENTS, SUBS (VMs per client), WARMUP_S, MEASURE_S, OUT (JSON file)
import { io } from "socket.io-client";
import { writeFileSync } from "node:fs";

const SERVER = process.env.SERVER;
const TOKENS = process.env.TOKENS.split(",");
const VMS = process.env.VMS.split(",");
const CLIENTS = Number(process.env.CLIENTS ?? 1000);
const SUBS = Number(process.env.SUBS ?? 1);
const WARMUP_S = Number(process.env.WARMUP_S ?? 3);
const MEASURE_S = Number(process.env.MEASURE_S ?? 20);
const OFFSET = Number(process.env.OFFSET ?? 0);

let measuring = false;
const latencies = [];
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
      received++;
      if (m.guestTimestamp) latencies.push(Date.now() - Date.parse(m.guestTimestamp));
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
const t0 = Date.now();
await new Promise((r) => setTimeout(r, MEASURE_S * 1000));
measuring = false;
const seconds = (Date.now() - t0) / 1000;
latencies.sort((a, b) => a - b);
const q = (p) => (latencies.length ? latencies[Math.min(latencies.length - 1, Math.floor(p * latencies.length))] : null);
const result = {
  clients: CLIENTS, subsPerClient: SUBS, vms: VMS.length, connectMs, refused, disconnects,
  received, seconds, perSecond: received / seconds,
  p50: q(0.5), p90: q(0.9), p99: q(0.99), max: latencies.length ? latencies[latencies.length - 1] : null,
};
if (process.env.OUT) writeFileSync(process.env.OUT, JSON.stringify({ ...result, latencies }));
console.log(JSON.stringify(result));
for (const s of sockets) s.close();
process.exit(0);

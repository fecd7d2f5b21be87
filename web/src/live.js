// The Socket.IO connection of a session: one socket, reference-counted VM room subscriptions
// (the list and a VM page may want the same VM), and re-subscription after every reconnect.
import { io } from 'socket.io-client';

/** Messages the server's auth middleware uses for a token it refuses. */
const AUTH_ERRORS = ['Authentication token required', 'Invalid or expired token', 'User not found'];
/** How long a room nobody shows stays joined (the server allows 100 subscribe:vm a minute). */
const LEAVE_DELAY_MS = 30000;

export class Live {
  /**
   * @param {string} token JWT sent as handshake.auth.token
   * @param {{ onAuthError: (message: string) => void, onServerDisconnect: () => void }} hooks
   */
  constructor(token, { onAuthError, onServerDisconnect }) {
    this.handlers = new Map();
    this.refs = new Map();
    this.leaving = new Map();
    this.state = 'connecting';
    this.socket = io({ auth: { token }, transports: ['websocket', 'polling'] });
    this.socket.on('connect', () => {
      this.setState('live');
      // A new connection starts in no room: pending leaves are moot.
      for (const timer of this.leaving.values()) clearTimeout(timer);
      this.leaving.clear();
      for (const vmId of this.refs.keys()) this.emitSubscribe(vmId);
    });
    this.socket.on('disconnect', (reason) => {
      this.setState('reconnecting');
      // The server closes the sockets of revoked tokens (user deleted, password changed);
      // socket.io does not retry those by itself, so the session decides what happens next.
      if (reason === 'io server disconnect') onServerDisconnect();
    });
    this.socket.on('connect_error', (err) => {
      if (AUTH_ERRORS.includes(err.message)) onAuthError(err.message);
      else this.setState('reconnecting');
    });
    this.socket.on('connected', (hello) => {
      this.namespace = hello?.namespace;
    });
    for (const event of ['metricsUpdate', 'vm:online', 'vm:offline', 'vm:error', 'vm:command', 'alert:raised', 'alert:resolved']) {
      this.socket.on(event, (payload) => this.dispatch(event, payload));
    }
    // VM lifecycle events are named after the user's room: `<namespace>:vms:<action>`.
    this.socket.onAny((event, payload) => {
      if (typeof event === 'string' && /:vms:[a-z_]+$/.test(event)) this.dispatch('vms', payload);
    });
  }

  setState(state) {
    this.state = state;
    this.dispatch('state', state);
  }

  /**
   * Listen to 'metricsUpdate', 'vm:online', 'vm:offline', 'vm:error', 'vm:command',
   * 'alert:raised', 'alert:resolved', 'vms' (lifecycle) or 'state'.
   */
  on(event, fn) {
    if (!this.handlers.has(event)) this.handlers.set(event, new Set());
    this.handlers.get(event).add(fn);
    return () => this.handlers.get(event)?.delete(fn);
  }

  dispatch(event, payload) {
    for (const fn of this.handlers.get(event) ?? []) {
      try {
        fn(payload);
      } catch (e) {
        console.error(`handler of ${event} failed`, e);
      }
    }
  }

  /** Join the room `vm:<id>` (metricsUpdate); resolves with the server's ack. */
  subscribe(vmId) {
    const count = this.refs.get(vmId) ?? 0;
    this.refs.set(vmId, count + 1);
    if (count > 0) return Promise.resolve({ ok: true });
    if (this.leaving.has(vmId)) {
      // Still joined: going list → VM page → list must not spend the per-minute budget again.
      clearTimeout(this.leaving.get(vmId));
      this.leaving.delete(vmId);
      return Promise.resolve({ ok: true });
    }
    return this.socket.connected ? this.emitSubscribe(vmId) : Promise.resolve({ ok: true });
  }

  /** Leave the room once nobody wants it for LEAVE_DELAY_MS. */
  unsubscribe(vmId) {
    const count = this.refs.get(vmId) ?? 0;
    if (count > 1) {
      this.refs.set(vmId, count - 1);
      return;
    }
    this.refs.delete(vmId);
    if (count === 1 && !this.leaving.has(vmId)) {
      this.leaving.set(vmId, setTimeout(() => {
        this.leaving.delete(vmId);
        if (this.socket.connected) this.socket.emit('unsubscribe:vm', vmId, () => {});
      }, LEAVE_DELAY_MS));
    }
  }

  emitSubscribe(vmId) {
    return new Promise((resolve) => {
      this.socket.timeout(10000).emit('subscribe:vm', vmId, (err, ack) => {
        const answer = err ? { ok: false, error: 'no answer from the server' } : ack ?? { ok: false };
        if (!answer.ok) console.warn(`subscribe:vm ${vmId}: ${answer.error ?? 'refused'}`);
        resolve(answer);
      });
    });
  }

  /** Connect again after the server closed the socket (the session was still valid). */
  reconnect() {
    if (!this.socket.connected) this.socket.connect();
  }

  close() {
    for (const timer of this.leaving.values()) clearTimeout(timer);
    this.handlers.clear();
    this.socket.disconnect();
  }
}

/**
 * Sum a metricsUpdate body (the seeds' snake_case shape) into the numbers the UI shows.
 * `previous` (the last result for this VM) turns interface byte counters into rates when
 * the agent sent no per-second values.
 */
export function summarize(metrics, at, previous) {
  const m = metrics ?? {};
  const cpu = m.cpu ?? {};
  const memory = m.memory ?? {};
  const disks = m.disk?.usage_stats ?? [];
  const io = m.disk?.io_stats ?? {};
  const interfaces = (m.network?.stats ?? []).filter((i) => i.interface !== 'lo');
  const counters = {
    rx: sum(interfaces.map((i) => i.bytes_received)),
    tx: sum(interfaces.map((i) => i.bytes_sent)),
  };
  let netRxBps = sumOrNull(interfaces.map((i) => i.bytes_received_per_sec));
  let netTxBps = sumOrNull(interfaces.map((i) => i.bytes_sent_per_sec));
  if ((netRxBps === null || netTxBps === null) && previous && at > previous.at) {
    const seconds = at - previous.at;
    netRxBps ??= Math.max(0, (counters.rx - previous.counters.rx) / seconds);
    netTxBps ??= Math.max(0, (counters.tx - previous.counters.tx) / seconds);
  }
  return {
    at,
    cpuPercent: num(cpu.usage_percent),
    coresUsage: Array.isArray(cpu.cores_usage) ? cpu.cores_usage.map(num) : [],
    memUsedKb: num(memory.used_kb),
    memTotalKb: num(memory.total_kb),
    disks: disks.map((d) => ({ mountPoint: String(d.mount_point ?? ''), totalGb: num(d.total_gb), usedGb: num(d.used_gb) })),
    diskReadBps: num(io.read_bytes_per_sec),
    diskWriteBps: num(io.write_bytes_per_sec),
    netRxBps: netRxBps ?? 0,
    netTxBps: netTxBps ?? 0,
    counters,
    uptimeSeconds: num(m.system?.uptime),
    load1: num(m.system?.load_average?.load1min),
  };
}

function num(v) {
  const n = Number(v);
  return Number.isFinite(n) ? n : 0;
}

function sum(values) {
  return values.reduce((acc, v) => acc + num(v), 0);
}

function sumOrNull(values) {
  const present = values.filter((v) => v !== undefined && v !== null);
  return present.length ? sum(present) : null;
}

/** Seconds since the epoch of an RFC 3339 time, or of now when missing/invalid. */
export function epochSeconds(iso) {
  const t = Date.parse(iso);
  return (Number.isFinite(t) ? t : Date.now()) / 1000;
}

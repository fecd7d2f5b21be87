#!/usr/bin/env node
// The seeds' Node.js virtio socket watcher, hot path only, re-implemented faithfully for the
// ingest benchmark (bench/host/run.sh). Sources:
//   seed 001 (VirtioSocketWatcher):  socket.on('data') → data.toString().split('\n'),
//                                    processMessage → JSON.parse → validateMessage → route,
//                                    validateMetrics, handleMetrics → prisma create → emit.
//   seed 003 (VirtioSocketWatcherService extends EventEmitter): the buffered split
//                                    (buffer += data; split; keep the last partial line),
//                                    handleSystemMetrics → prisma.systemMetrics.create → emit.
// The database is stubbed (an async create that resolves at once), as the peer figure in
// shared/notes/peers.md was measured. Everything else is the seeds' logic, unoptimised.
//
// Usage: node node-watcher.js --socket PATH
// Connects like the watcher does (as a client of QEMU's server socket), reads until the peer
// closes, prints one JSON report on stdout.
'use strict';

const net = require('net');
const { EventEmitter } = require('events');

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

// The Prisma client, stubbed: the watcher still builds every row and awaits the promise.
const prisma = {
  systemMetrics: { create: async (args) => args },
  vmMetrics: { create: async (args) => args },
};

class VirtioSocketWatcherService extends EventEmitter {
  constructor() {
    super();
    this.prisma = prisma;
    this.connections = new Map();
    this.errors = 0;
    this.logger = { error: () => { this.errors += 1; }, info: () => {} };
  }

  connectToVm(vmId, path, onClose) {
    const socket = net.createConnection(path);
    this.connections.set(vmId, { socket, lastMessageTime: Date.now() });
    let buffer = '';
    socket.on('data', (data) => {
      if (this.onFirstByte) {
        this.onFirstByte();
        this.onFirstByte = null;
      }
      buffer += data.toString();
      // Process complete JSON messages
      const messages = buffer.split('\n');
      buffer = messages.pop() || '';
      for (const message of messages) {
        if (message.trim()) {
          this.processMessage(vmId, message);
        }
      }
    });
    socket.on('error', (error) => {
      this.logger.error(`Socket error for VM ${vmId}: ${error}`);
    });
    socket.on('close', () => {
      this.connections.delete(vmId);
      onClose();
    });
  }

  async processMessage(vmId, rawMessage) {
    try {
      const message = JSON.parse(rawMessage);
      // Validate message structure
      if (!this.validateMessage(message)) {
        throw new Error('Invalid message format');
      }
      // Route based on message type
      switch (message.type) {
        case 'system_metrics':
          await this.handleSystemMetrics(vmId, message);
          break;
        case 'metrics':
          await this.handleMetrics(vmId, message);
          break;
        default:
          break;
      }
    } catch (error) {
      this.logger.error(`Failed to process message: ${error}`);
    }
  }

  // seed 001, verbatim logic
  validateMessage(message) {
    // Check message structure
    if (!message.type || !message.timestamp) {
      return false;
    }
    // Validate timestamp (not too old or future)
    const timestamp = new Date(message.timestamp);
    const now = new Date();
    const diff = Math.abs(now.getTime() - timestamp.getTime());
    if (diff > 300000) { // 5 minutes
      return false;
    }
    // Validate message size
    const size = JSON.stringify(message).length;
    if (size > 1048576) { // 1MB
      return false;
    }
    return true;
  }

  // seed 001, verbatim logic
  validateMetrics(metrics) {
    // Validate required fields
    if (!metrics.cpu || !metrics.memory) {
      return false;
    }
    // Validate ranges
    if (metrics.cpu.usage_percent < 0 || metrics.cpu.usage_percent > 100) {
      return false;
    }
    // Validate memory values
    if (metrics.memory.used_kb > metrics.memory.total_kb) {
      return false;
    }
    return true;
  }

  // seed 003's handler (the v1 message shape), with seed 001's metrics validation
  async handleSystemMetrics(vmId, data) {
    const metrics = data.metrics;
    if (!this.validateMetrics(metrics)) {
      throw new Error('Invalid metrics');
    }
    // Store in database
    await this.prisma.systemMetrics.create({
      data: {
        machineId: vmId,
        cpuUsagePercent: metrics.cpu.usage_percent,
        cpuCoresUsage: metrics.cpu.cores_usage,
        totalMemoryKB: BigInt(metrics.memory.total_kb),
        usedMemoryKB: BigInt(metrics.memory.used_kb),
        availableMemoryKB: BigInt(metrics.memory.available_kb),
        diskUsageStats: metrics.disk.usage_stats,
        diskIOStats: metrics.disk.io_stats,
        networkStats: metrics.network.stats,
        uptime: BigInt(metrics.system.uptime),
        loadAverage: metrics.system.load_average,
      },
    });
    // Emit real-time update
    this.emit('metricsUpdated', { vmId, metrics });
  }

  // seed 001's handler (the original agent's `metrics` shape)
  async handleMetrics(vmId, message) {
    const metrics = message.data.system;
    await this.prisma.vmMetrics.create({
      data: {
        vmId,
        timestamp: new Date(message.timestamp),
        cpuUsage: metrics.cpu.usage_percent,
        memoryUsed: metrics.memory.used_kb,
        memoryTotal: metrics.memory.total_kb,
        diskUsage: JSON.stringify(metrics.disk),
        networkStats: JSON.stringify(metrics.network),
        processes: JSON.stringify(metrics.processes),
        raw: JSON.stringify(metrics),
      },
    });
    this.emit('metricsUpdated', { vmId, metrics });
  }
}

const socketPath = arg('--socket');
if (!socketPath) {
  console.error('usage: node node-watcher.js --socket PATH');
  process.exit(2);
}

const watcher = new VirtioSocketWatcherService();
let delivered = 0;
// The Socket.IO forwarder of seed 003, minus the network: one listener per event.
watcher.on('metricsUpdated', () => { delivered += 1; });

let startedAt = null;
let cpuAtStart = null;
watcher.onFirstByte = () => {
  startedAt = process.hrtime.bigint();
  cpuAtStart = process.cpuUsage();
};

watcher.connectToVm('00000000-0000-0000-0000-000000000000', socketPath, () => {
  // Let the awaited (stubbed) database promises of the last chunk settle.
  setImmediate(() => {
    const wallSecs = Number(process.hrtime.bigint() - (startedAt || process.hrtime.bigint())) / 1e9;
    const cpu = process.cpuUsage(cpuAtStart || undefined);
    const cpuSecs = (cpu.user + cpu.system) / 1e6;
    const report = {
      consumer: 'node-seed-watcher',
      node: process.version,
      messages: delivered,
      errors: watcher.errors,
      wall_secs: wallSecs,
      cpu_secs: cpuSecs,
      msg_per_sec: delivered / Math.max(wallSecs, 1e-9),
      msg_per_cpu_sec: delivered / Math.max(cpuSecs, 1e-9),
      max_rss_kb: process.resourceUsage().maxRSS,
    };
    process.stdout.write(JSON.stringify(report) + '\n');
  });
});

// Unit tests of the pure parts (node --test): formatting and metricsUpdate summaries.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as fmt from '../src/format.js';
import { epochSeconds, summarize } from '../src/live.js';
import { vmState } from '../src/power.js';

test('bytes use binary units with sensible precision', () => {
  assert.equal(fmt.bytes(0), '0 B');
  assert.equal(fmt.bytes(1536), '1.50 KiB');
  assert.equal(fmt.bytes(5 * 2 ** 30), '5.00 GiB');
  assert.equal(fmt.bytes(150 * 2 ** 20), '150 MiB');
  assert.equal(fmt.bytes(undefined), '—');
  assert.equal(fmt.kb(2048), '2.00 MiB');
  assert.equal(fmt.rate(1024), '1.00 KiB/s');
});

test('durations and relative times read naturally', () => {
  assert.equal(fmt.duration(42), '42s');
  assert.equal(fmt.duration(3 * 86400 + 4 * 3600), '3d 4h');
  assert.equal(fmt.millis(850), '850 ms');
  assert.equal(fmt.millis(2310), '2.31 s');
  const now = Date.parse('2026-01-01T00:01:00Z');
  assert.equal(fmt.ago('2026-01-01T00:00:48Z', now), '12 s ago');
  assert.equal(fmt.ago('2025-12-31T22:00:00Z', now), '2 h ago');
  assert.equal(fmt.ago(null, now), 'never');
});

const sample = (rx, tx, perSec) => ({
  cpu: { usage_percent: 12.5, cores_usage: [10, 15] },
  memory: { total_kb: 4096, used_kb: 1024, available_kb: 3072 },
  disk: { usage_stats: [{ mount_point: '/', total_gb: 10, used_gb: 4 }], io_stats: { read_bytes_per_sec: 100, write_bytes_per_sec: 50 } },
  network: {
    stats: [
      { interface: 'lo', bytes_received: 1e9, bytes_sent: 1e9 },
      { interface: 'eth0', bytes_received: rx, bytes_sent: tx, ...(perSec ? { bytes_received_per_sec: perSec, bytes_sent_per_sec: perSec / 2 } : {}) },
    ],
  },
  system: { uptime: 60, load_average: { load1min: 0.5 } },
});

test('summarize takes the agent rates when present, loopback excluded', () => {
  const m = summarize(sample(1000, 500, 800), 10);
  assert.equal(m.cpuPercent, 12.5);
  assert.deepEqual(m.coresUsage, [10, 15]);
  assert.equal(m.memUsedKb, 1024);
  assert.equal(m.netRxBps, 800);
  assert.equal(m.netTxBps, 400);
  assert.equal(m.diskReadBps, 100);
  assert.deepEqual(m.disks, [{ mountPoint: '/', totalGb: 10, usedGb: 4 }]);
});

test('summarize derives rates from byte counters between two samples', () => {
  const first = summarize(sample(1000, 500), 10);
  assert.equal(first.netRxBps, 0);
  const second = summarize(sample(3000, 1500), 12, first);
  assert.equal(second.netRxBps, 1000);
  assert.equal(second.netTxBps, 500);
  // A counter reset (agent restart) gives 0, never a negative rate.
  assert.equal(summarize(sample(10, 10), 14, second).netRxBps, 0);
});

test('summarize survives garbage from a guest', () => {
  const m = summarize({ cpu: { usage_percent: 'x', cores_usage: 'no' }, network: null }, 1);
  assert.equal(m.cpuPercent, 0);
  assert.deepEqual(m.coresUsage, []);
  assert.equal(m.netRxBps, 0);
  assert.ok(Number.isFinite(epochSeconds('not a date')));
});

test('console close codes read as sentences with the code, unknown ones keep the reason', async () => {
  const { closeText, consoleUrl, retryKind } = await import('../src/console.js');
  assert.equal(closeText(4410, 'ticket already used'), 'The console ticket was already used. (ticket already used, 4410)');
  assert.equal(closeText(4409, ''), 'The VM is not running. (4409)');
  assert.equal(closeText(4999, 'something new'), 'Console closed: something new (4999)');
  assert.equal(closeText(4999), 'Console closed (4999)');
  assert.equal(retryKind(4423), 'takeover');
  assert.equal(retryKind(4001), 'takeover');
  assert.equal(retryKind(1006), 'auto');
  assert.equal(retryKind(4403), null);
  assert.equal(retryKind(4999), 'reconnect');
  const path = '/console/8d2c6a4e-1f0b-4c7a-9e51-2b3c4d5e6f70?ticket=abc';
  assert.equal(consoleUrl({ protocol: 'http:', host: 'h:8080' }, path), `ws://h:8080${path}`);
  assert.equal(consoleUrl({ protocol: 'https:', host: 'h' }, path, true), `wss://h${path}&takeover=1`);
});

test('every refusal the server sends has its own text', async () => {
  const { CLOSE_CODES } = await import('../src/console.js');
  for (const code of [4401, 4410, 4421, 4403, 4404, 4409, 4423, 4503, 4000, 4001, 4002, 4003]) {
    assert.ok(CLOSE_CODES[code]?.text, `no text for ${code}`);
  }
  const texts = Object.values(CLOSE_CODES).map((c) => c.text);
  assert.equal(new Set(texts).size, texts.length, 'two codes share a text');
});

test('a VM that is shut off, paused or crashed shows that, not "agent offline"', () => {
  assert.equal(vmState({ powerState: 'SHUTOFF', status: 'OFFLINE' }).text, 'shut off');
  assert.equal(vmState({ powerState: 'PAUSED', status: 'OFFLINE' }).key, 'paused');
  assert.equal(vmState({ powerState: 'CRASHED', status: 'OFFLINE' }).key, 'crashed');
  // Running, or unknown to libvirt: the agent's status is the news.
  assert.equal(vmState({ powerState: 'RUNNING', status: 'OFFLINE' }).text, 'offline');
  assert.equal(vmState({ powerState: 'RUNNING', status: 'ONLINE' }).key, 'online');
  assert.equal(vmState({ powerState: 'UNKNOWN', status: 'ONLINE' }).key, 'online');
  assert.equal(vmState({ status: 'OFFLINE' }).key, 'offline');
});

// The VM list: GraphQL `vms` every REFRESH_MS, live rows from metricsUpdate of the rooms it
// subscribes to, vm:online / vm:offline / vm:power, and lifecycle events (`<namespace>:vms:*`:
// create and delete refetch, update changes the row in place).
import { Q, gql } from '../api.js';
import { h, replace } from '../dom.js';
import * as fmt from '../format.js';
import { epochSeconds, summarize } from '../live.js';
import { createTable, filterInput } from '../table.js';
import { stateBadge, vmState } from '../power.js';

const REFRESH_MS = 15000;
/** Rooms the list joins; the server allows 100 subscribe:vm per minute, keep well below. */
const MAX_LIVE_ROWS = 60;

export function vmListPage({ live }) {
  const byId = new Map();
  const previous = new Map();
  const subscribed = new Set();
  let statusFilter = 'all';
  const error = h('p', { class: 'error', role: 'alert', hidden: true });

  const table = createTable({
    name: 'vms',
    rowKey: (vm) => vm.id,
    initialSort: { key: 'name' },
    empty: 'No virtual machines yet. They appear here when their agent connects or libvirt reports them.',
    searchText: (vm) => [vm.name, vm.owner?.username, vm.department, vmState(vm).text, ...(vm.ipAddresses ?? [])].join(' '),
    rowProps: (vm) => ({ class: `status-${vmState(vm).key}` }),
    columns: [
      { key: 'name', label: 'Name', value: (vm) => vm.name, cell: (vm) => h('a', { href: `#/vm/${encodeURIComponent(vm.id)}`, class: 'vm-link' }, vm.name || vm.id) },
      { key: 'owner', label: 'Owner', value: (vm) => vm.owner?.username ?? '', cell: (vm) => vm.owner?.username ?? h('span', { class: 'muted' }, 'unassigned') },
      { key: 'status', label: 'State', value: (vm) => vmState(vm).text, cell: (vm) => stateBadge(vm) },
      { key: 'cpu', label: 'CPU', numeric: true, value: (vm) => vm.metrics?.cpuPercent ?? null, cell: (vm) => meter(vm.metrics?.cpuPercent, fmt.percent(vm.metrics?.cpuPercent)) },
      { key: 'mem', label: 'Memory', numeric: true, value: (vm) => memRatio(vm), cell: (vm) => meter(memRatio(vm) === null ? null : memRatio(vm) * 100, vm.metrics ? `${fmt.kb(vm.metrics.memUsedKb)} / ${fmt.kb(vm.metrics.memTotalKb)}` : '—') },
      { key: 'disk', label: 'Disk', numeric: true, value: (vm) => diskRatio(vm), cell: (vm) => meter(diskRatio(vm) === null ? null : diskRatio(vm) * 100, diskText(vm)) },
      { key: 'ip', label: 'IP addresses', value: (vm) => (vm.ipAddresses ?? []).join(', '), cell: (vm) => (vm.ipAddresses ?? []).length ? vm.ipAddresses.map((ip) => h('code', { class: 'ip' }, ip)) : '—' },
      { key: 'seen', label: 'Last seen', value: (vm) => vm.lastSeen ?? '', cell: (vm) => h('time', { datetime: vm.lastSeen ?? '', title: fmt.dateTime(vm.lastSeen) }, fmt.ago(vm.lastSeen)) },
    ],
  });

  const statusSelect = h('select', { 'aria-label': 'Status', onChange: (e) => { statusFilter = e.target.value; show(); } },
    h('option', { value: 'all' }, 'All states'),
    h('option', { value: 'online' }, 'Online'),
    h('option', { value: 'offline' }, 'Agent offline'),
    h('option', { value: 'shutoff' }, 'Shut off'),
    h('option', { value: 'paused' }, 'Paused'),
    h('option', { value: 'crashed' }, 'Crashed'));
  const summary = h('span', { class: 'muted summary' });

  let renderQueued = false;
  function show() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => {
      renderQueued = false;
      const all = [...byId.values()];
      const online = all.filter((vm) => vm.status === 'ONLINE').length;
      const off = all.filter((vm) => vmState(vm).key === 'shutoff').length;
      summary.textContent = `${all.length} VMs · ${online} online${off ? ` · ${off} shut off` : ''}`;
      table.setRows(statusFilter === 'all' ? all : all.filter((vm) => vmState(vm).key === statusFilter));
    });
  }

  async function load() {
    try {
      const { vms } = await gql(Q.vms);
      const seen = new Set();
      for (const vm of vms) {
        seen.add(vm.id);
        const known = byId.get(vm.id);
        const snapshot = vm.latestMetrics ? fromSnapshot(vm.latestMetrics) : null;
        // A live sample newer than the query's snapshot wins.
        const metrics = known?.metrics && snapshot && known.metrics.at > snapshot.at ? known.metrics : snapshot ?? known?.metrics ?? null;
        byId.set(vm.id, { ...vm, metrics });
      }
      for (const id of [...byId.keys()]) if (!seen.has(id)) byId.delete(id);
      syncSubscriptions();
      error.hidden = true;
      show();
    } catch (e) {
      error.textContent = `Cannot load the VM list: ${e.message}`;
      error.hidden = false;
    }
  }

  function syncSubscriptions() {
    const wanted = new Set([...byId.keys()].slice(0, MAX_LIVE_ROWS));
    for (const id of subscribed) if (!wanted.has(id)) { live.unsubscribe(id); subscribed.delete(id); }
    for (const id of wanted) if (!subscribed.has(id)) { live.subscribe(id); subscribed.add(id); }
  }

  const offs = [
    live.on('metricsUpdate', ({ vmId, metrics, timestamp } = {}) => {
      const vm = byId.get(vmId);
      if (!vm) return;
      const at = epochSeconds(timestamp);
      const m = summarize(metrics, at, previous.get(vmId));
      previous.set(vmId, m);
      vm.metrics = m;
      vm.lastSeen = timestamp ?? new Date().toISOString();
      vm.status = 'ONLINE';
      const ips = ipsOf(metrics);
      if (ips.length) vm.ipAddresses = ips;
      show();
    }),
    live.on('vm:online', (e) => setStatus(e, 'ONLINE')),
    live.on('vm:offline', (e) => setStatus(e, 'OFFLINE')),
    live.on('vm:power', (e) => setPower(e?.vmId, e?.powerState)),
    live.on('vms:create', () => loadSoon()),
    live.on('vms:delete', () => loadSoon()),
    live.on('vms:update', (e) => {
      const data = e?.data ?? {};
      const vm = byId.get(data.id);
      if (!vm) {
        loadSoon();
        return;
      }
      if (data.name) vm.name = data.name;
      if (data.status) vm.status = String(data.status).toUpperCase();
      setPower(data.id, data.powerState);
    }),
  ];

  function setPower(vmId, powerState) {
    const vm = byId.get(vmId);
    if (!vm || !powerState) return;
    vm.powerState = powerState;
    show();
  }

  // An event can name a VM before the store has written its record (the first sample is still
  // in the writer's batch): read the list again a little later, twice.
  let followUps = [];
  function loadSoon() {
    load();
    followUps.forEach(clearTimeout);
    followUps = [1000, 3000].map((ms) => setTimeout(load, ms));
  }

  function setStatus(event, status) {
    const vm = byId.get(event?.vmId);
    if (!vm) {
      loadSoon();
      return;
    }
    vm.status = event.status ?? status;
    if (event.timestamp) vm.lastSeen = event.timestamp;
    show();
  }

  load();
  const refresh = setInterval(load, REFRESH_MS);
  // "12 s ago" moves on even when nothing arrives.
  const tick = setInterval(show, 5000);

  const el = h('main', { class: 'page' },
    h('div', { class: 'page-head' }, h('h1', null, 'Virtual machines'), summary,
      h('a', { href: '#/create', class: 'button primary', dataset: { testid: 'new-vm' } }, 'New VM')),
    h('div', { class: 'toolbar' }, filterInput(table, 'Filter by name, owner, IP…'), statusSelect),
    error,
    h('div', { class: 'card' }, table.el));
  return {
    el,
    destroy() {
      clearInterval(refresh);
      clearInterval(tick);
      followUps.forEach(clearTimeout);
      offs.forEach((off) => off());
      for (const id of subscribed) live.unsubscribe(id);
    },
  };
}

export function badge(status) {
  const s = String(status ?? 'UNKNOWN');
  return h('span', { class: `badge badge-${s.toLowerCase()}` }, s.toLowerCase());
}

/** A small bar with its text; `pct` null draws no bar. */
export function meter(pct, text) {
  const bar = h('span', { class: 'meter' }, h('span', { class: 'fill' }));
  if (pct === null || pct === undefined) return h('span', { class: 'muted' }, text);
  const clamped = Math.max(0, Math.min(100, pct));
  bar.firstChild.style.width = `${clamped}%`;
  bar.classList.toggle('hot', clamped >= 90);
  bar.classList.toggle('warm', clamped >= 70 && clamped < 90);
  return h('span', { class: 'metered' }, bar, h('span', null, text));
}

function fromSnapshot(s) {
  return { ...s, at: epochSeconds(s.at) };
}

function memRatio(vm) {
  const m = vm.metrics;
  return m && m.memTotalKb > 0 ? m.memUsedKb / m.memTotalKb : null;
}

function diskTotals(vm) {
  const disks = vm.metrics?.disks ?? [];
  const total = disks.reduce((a, d) => a + d.totalGb, 0);
  const used = disks.reduce((a, d) => a + d.usedGb, 0);
  return { total, used };
}

function diskRatio(vm) {
  const { total, used } = diskTotals(vm);
  return total > 0 ? used / total : null;
}

function diskText(vm) {
  const { total, used } = diskTotals(vm);
  return total > 0 ? `${fmt.bytes(used * 2 ** 30)} / ${fmt.bytes(total * 2 ** 30)}` : '—';
}

/** Addresses from a live sample, loopback and link-local excluded (as the API does). */
function ipsOf(metrics) {
  const out = [];
  for (const i of metrics?.network?.stats ?? []) {
    for (const ip of i.ip_addresses ?? []) {
      const a = String(ip).split('/')[0];
      if (a.startsWith('127.') || a === '::1' || a.toLowerCase().startsWith('fe80') || a.startsWith('169.254.')) continue;
      out.push(a);
    }
  }
  return out;
}


// One VM: header facts, live charts (history from vmMetrics + metricsUpdate after subscribe:vm),
// processes, ports, applications, services (start/stop/restart), the command box and the
// console (pages/console.js).
import { ApiError, Q, gql, hasPermission } from '../api.js';
import { confirmButton, h, replace } from '../dom.js';
import * as fmt from '../format.js';
import { createChart, PALETTE } from '../charts.js';
import { epochSeconds, summarize } from '../live.js';
import { createTable, filterInput } from '../table.js';
import { badge } from './vms.js';
import { consoleTab } from './console.js';
import { healthTab } from './health.js';

const RANGES = [
  { key: '15m', label: '15 min', seconds: 15 * 60 },
  { key: '1h', label: '1 h', seconds: 3600 },
  { key: '6h', label: '6 h', seconds: 6 * 3600 },
  { key: '24h', label: '24 h', seconds: 86400 },
  { key: '7d', label: '7 d', seconds: 7 * 86400 },
  { key: '30d', label: '30 d', seconds: 30 * 86400 },
];
/** Points asked for per range; live samples closer together than range/MAX_POINTS are skipped. */
const MAX_POINTS = 900;
const PER_CORE_WINDOW = 5 * 60;
const INVENTORY_REFRESH_MS = 10000;

const TABS = [
  { key: 'charts', label: 'Charts' },
  { key: 'processes', label: 'Processes' },
  { key: 'ports', label: 'Ports' },
  { key: 'applications', label: 'Applications' },
  { key: 'services', label: 'Services' },
  { key: 'command', label: 'Command' },
  { key: 'console', label: 'Console' },
  { key: 'health', label: 'Alerts & settings' },
];

/** Safe actions with a parameter template (the original agent's shapes). */
const SAFE_ACTIONS = {
  SystemInfo: {},
  OsInfo: {},
  ProcessList: { limit: 50 },
  ProcessTop: { limit: 10, sort_by: 'cpu' },
  ProcessKill: { pid: 0 },
  ServiceList: {},
  ServiceControl: { service: 'ssh', operation: 'status' },
  PackageList: {},
  PackageSearch: { query: 'openssl' },
  PackageInstall: { package: '' },
  PackageRemove: { package: '' },
  PackageUpdate: {},
  Reboot: {},
  Shutdown: {},
};

export function vmPage({ user, live }, vmId, initialTab) {
  const cleanups = [];
  const head = h('div', { class: 'vm-head' }, h('p', { class: 'muted' }, 'Loading…'));
  const tabNav = h('nav', { class: 'tabs', role: 'tablist' });
  const body = h('div', { class: 'tab-body' });
  let tabCleanup = null;
  let vm = null;
  let tab = null;

  async function loadVm() {
    try {
      const data = await gql(Q.vm, { id: vmId });
      vm = data.vm;
      if (!vm) {
        replace(head, h('h1', null, 'VM not found'), h('p', { class: 'error' }, 'This VM does not exist or is not yours.'));
        replace(body);
        tabNav.hidden = true;
        return false;
      }
      renderHead();
      return true;
    } catch (e) {
      if (e.code === 'NOT_FOUND' || e.code === 'FORBIDDEN') {
        replace(head, h('h1', null, 'VM not found'), h('p', { class: 'error' }, 'This VM does not exist or is not yours.'));
        tabNav.hidden = true;
      } else {
        replace(head, h('p', { class: 'error', role: 'alert' }, `Cannot load the VM: ${e.message}`));
      }
      return false;
    }
  }

  function renderHead() {
    const m = vm.latestMetrics;
    const a = vm.agent;
    document.title = `${vm.name} · infinibay`;
    replace(head,
      h('div', { class: 'page-head' },
        h('a', { href: '#/vms', class: 'back' }, '← VMs'),
        h('h1', { dataset: { testid: 'vm-name' } }, vm.name || vm.id),
        badge(vm.status)),
      h('dl', { class: 'facts' },
        fact('Owner', vm.owner?.username ?? 'unassigned'),
        fact('Department', vm.department ?? '—'),
        fact('IP addresses', (vm.ipAddresses ?? []).join(', ') || '—'),
        fact('Last seen', fmt.ago(vm.lastSeen)),
        fact('OS', a ? `${a.os} ${a.osVersion}` : '—'),
        fact('Kernel', a?.kernel ?? '—'),
        fact('Hostname', a?.hostname ?? '—'),
        fact('Agent', a ? `${a.agentVersion} (protocol ${a.protocolVersion})` : '—'),
        fact('CPU', m ? `${m.coresUsage.length} cores · ${fmt.percent(m.cpuPercent)}` : '—'),
        fact('Memory', m ? `${fmt.kb(m.memUsedKb)} / ${fmt.kb(m.memTotalKb)}` : '—'),
        fact('Load', m ? `${m.load1.toFixed(2)} ${m.load5.toFixed(2)} ${m.load15.toFixed(2)}` : '—'),
        fact('Uptime', m ? fmt.duration(m.uptimeSeconds) : '—'),
        fact('Id', vm.id)));
  }

  function setTab(next) {
    const key = TABS.some((t) => t.key === next) ? next : 'charts';
    if (key === tab) return;
    tab = key;
    tabCleanup?.();
    tabCleanup = null;
    replace(tabNav, TABS.map((t) =>
      h('a', { href: `#/vm/${encodeURIComponent(vmId)}/${t.key}`, role: 'tab', class: t.key === key ? 'active' : null, 'aria-selected': t.key === key ? 'true' : 'false' }, t.label)));
    if (!vm) return;
    const view = {
      charts: chartsTab,
      processes: processesTab,
      ports: portsTab,
      applications: applicationsTab,
      services: servicesTab,
      command: commandTab,
      console: consoleTab,
      health: healthTab,
    }[key]({ vmId, vm, user, live, onRenamed: (name) => { vm.name = name; renderHead(); } });
    tabCleanup = view.destroy ?? null;
    replace(body, view.el);
  }

  // Live status for the header (the tabs follow their own data).
  cleanups.push(
    live.on('vm:online', (e) => e?.vmId === vmId && vm && ((vm.status = 'ONLINE'), renderHead())),
    live.on('vm:offline', (e) => e?.vmId === vmId && vm && ((vm.status = 'OFFLINE'), renderHead())),
  );
  live.subscribe(vmId).then((ack) => {
    if (!ack.ok) console.warn(`live updates refused for ${vmId}: ${ack.error}`);
  });
  cleanups.push(() => live.unsubscribe(vmId));
  const headRefresh = setInterval(async () => {
    try {
      const data = await gql(Q.vm, { id: vmId });
      if (data.vm) {
        vm = data.vm;
        renderHead();
      }
    } catch {
      // The next round retries; the tabs show their own errors.
    }
  }, 30000);
  cleanups.push(() => clearInterval(headRefresh));

  loadVm().then((ok) => {
    if (ok) {
      const wanted = tab ?? initialTab;
      tab = null;
      setTab(wanted);
    }
  });
  setTab(initialTab);

  return {
    el: h('main', { class: 'page vm-page' }, head, tabNav, body),
    vmId,
    setTab,
    destroy() {
      tabCleanup?.();
      cleanups.forEach((fn) => fn());
    },
  };
}

function fact(label, value) {
  return h('div', null, h('dt', null, label), h('dd', null, value));
}

// ---- charts --------------------------------------------------------------------------------

function chartsTab({ vmId, vm, live }) {
  let range = RANGES[0];
  const now = () => Date.now() / 1000;
  const timeWindow = () => [now() - range.seconds, now()];
  const coreWindow = () => [now() - Math.min(range.seconds, PER_CORE_WINDOW), now()];
  const status = h('span', { class: 'muted', dataset: { testid: 'history-status' } });

  const cpu = createChart({ name: 'cpu', title: 'CPU', unit: 'percent', yMax: 100, range: timeWindow,
    series: [{ label: 'average', fill: true }, { label: 'max', dash: [4, 4], color: '#e5484d' }] });
  const memory = createChart({ name: 'memory', title: 'Memory', unit: 'bytes', range: timeWindow,
    series: [{ label: 'used', fill: true, color: PALETTE[2] }, { label: 'total', dash: [4, 4], color: '#8b95a7' }] });
  const disk = createChart({ name: 'disk', title: 'Disk I/O', unit: 'rate', range: timeWindow,
    series: [{ label: 'read', color: PALETTE[0] }, { label: 'write', color: PALETTE[1] }] });
  const network = createChart({ name: 'network', title: 'Network', unit: 'rate', range: timeWindow,
    series: [{ label: 'received', color: PALETTE[5] }, { label: 'sent', color: PALETTE[4] }] });
  let cores = null;
  const coresHost = h('div', { class: 'core-slot' });

  function coresChart(count) {
    if (cores && cores.count === count) return cores;
    cores?.destroy();
    const chart = createChart({ name: 'cores', title: `CPU per core (live, ${count} cores)`, unit: 'percent', yMax: 100, range: coreWindow,
      series: Array.from({ length: count }, (_, i) => ({ label: `cpu${i}` })) });
    chart.count = count;
    replace(coresHost, chart.el);
    cores = chart;
    return chart;
  }
  if (vm.latestMetrics?.coresUsage?.length) {
    const c = coresChart(vm.latestMetrics.coresUsage.length);
    c.set([epochSeconds(vm.latestMetrics.at)], ...vm.latestMetrics.coresUsage.map((v) => [v]));
  }

  let loadSeq = 0;
  async function loadHistory() {
    const seq = ++loadSeq;
    const to = new Date();
    const from = new Date(to.getTime() - range.seconds * 1000);
    status.textContent = 'loading history…';
    try {
      const { vmMetrics } = await gql(Q.vmMetrics, { vmId, from: from.toISOString(), to: to.toISOString(), maxPoints: MAX_POINTS });
      if (seq !== loadSeq) return;
      const pts = vmMetrics.points;
      const xs = pts.map((p) => epochSeconds(p.at));
      cpu.set(xs, pts.map((p) => p.cpuAvg), pts.map((p) => p.cpuMax));
      memory.set(xs, pts.map((p) => p.memUsedKb * 1024), pts.map((p) => p.memTotalKb * 1024));
      disk.set(xs, pts.map((p) => p.diskReadBps), pts.map((p) => p.diskWriteBps));
      network.set(xs, pts.map((p) => p.netRxBps), pts.map((p) => p.netTxBps));
      status.textContent = `${pts.length} ${pts.length === 1 ? 'point' : 'points'} of history · ${vmMetrics.resolution.toLowerCase()} resolution`;
    } catch (e) {
      if (seq === loadSeq) status.textContent = `history unavailable: ${e.message}`;
    }
  }

  let previous = null;
  const off = live.on('metricsUpdate', (payload) => {
    if (payload?.vmId !== vmId) return;
    const at = epochSeconds(payload.timestamp);
    const m = summarize(payload.metrics, at, previous);
    previous = m;
    const keepFrom = now() - range.seconds;
    if (m.coresUsage.length) coresChart(m.coresUsage.length).push(at, m.coresUsage, now() - PER_CORE_WINDOW);
    // Long ranges hold aggregated points; adding every 1-second sample would distort them.
    if (at - cpu.lastX() < (0.5 * range.seconds) / MAX_POINTS) return;
    cpu.push(at, [m.cpuPercent, m.cpuPercent], keepFrom);
    memory.push(at, [m.memUsedKb * 1024, m.memTotalKb * 1024], keepFrom);
    disk.push(at, [m.diskReadBps, m.diskWriteBps], keepFrom);
    network.push(at, [m.netRxBps, m.netTxBps], keepFrom);
  });

  const rangeButtons = h('div', { class: 'segmented', role: 'group', 'aria-label': 'Time range' });
  function renderRanges() {
    replace(rangeButtons, RANGES.map((r) => h('button', {
      type: 'button',
      class: r === range ? 'active' : null,
      dataset: { range: r.key },
      onClick: () => {
        range = r;
        renderRanges();
        loadHistory();
      },
    }, r.label)));
  }
  renderRanges();
  loadHistory();
  // Slide the window with time; long ranges re-read their aggregated history.
  const slide = setInterval(() => [cpu, memory, disk, network, cores].forEach((c) => c?.redraw()), 5000);
  const reload = setInterval(() => range.seconds > 3600 && loadHistory(), 60000);

  return {
    el: h('div', null,
      h('div', { class: 'toolbar' }, rangeButtons, status),
      h('div', { class: 'charts' }, cpu.el, coresHost, memory.el, disk.el, network.el)),
    destroy() {
      off();
      clearInterval(slide);
      clearInterval(reload);
      [cpu, memory, disk, network, cores].forEach((c) => c?.destroy());
    },
  };
}

// ---- inventory tables ----------------------------------------------------------------------

/** A table tab that re-reads its query every INVENTORY_REFRESH_MS. */
function inventoryTab({ vmId, query, field, table, title, extra }) {
  const error = h('p', { class: 'error', role: 'alert', hidden: true });
  const updated = h('span', { class: 'muted' });
  async function load() {
    try {
      const data = await gql(query, { vmId });
      table.setRows(data[field] ?? []);
      error.hidden = true;
      updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (e) {
      error.textContent = `${title}: ${e.message}`;
      error.hidden = false;
    }
  }
  load();
  const timer = setInterval(load, INVENTORY_REFRESH_MS);
  return {
    el: h('div', null,
      h('div', { class: 'toolbar' }, filterInput(table), h('span', { class: 'muted' }, table.count, ` ${title.toLowerCase()}`), updated),
      extra ?? null,
      error,
      h('div', { class: 'card' }, table.el)),
    reload: load,
    destroy: () => clearInterval(timer),
  };
}

function processesTab({ vmId }) {
  const table = createTable({
    name: 'processes',
    rowKey: (p) => String(p.pid),
    initialSort: { key: 'cpu', desc: true },
    empty: 'No process snapshot from this VM yet.',
    searchText: (p) => `${p.pid} ${p.name} ${p.user ?? ''} ${p.cmdline ?? ''}`,
    columns: [
      { key: 'pid', label: 'PID', numeric: true, value: (p) => p.pid },
      { key: 'name', label: 'Name', value: (p) => p.name, class: 'strong' },
      { key: 'user', label: 'User', value: (p) => p.user ?? '' },
      { key: 'state', label: 'State', value: (p) => p.state ?? '' },
      { key: 'cpu', label: 'CPU', numeric: true, value: (p) => p.cpuPercent, cell: (p) => fmt.percent(p.cpuPercent) },
      { key: 'mem', label: 'Memory', numeric: true, value: (p) => p.memoryKb, cell: (p) => fmt.kb(p.memoryKb) },
      { key: 'start', label: 'Started', value: (p) => p.startTime ?? '', cell: (p) => (p.startTime ? fmt.dateTime(p.startTime) : '—') },
      { key: 'cmd', label: 'Command line', value: (p) => p.cmdline ?? '', class: 'mono wrap' },
    ],
  });
  return inventoryTab({ vmId, query: Q.processes, field: 'vmProcesses', table, title: 'Processes' });
}

function portsTab({ vmId }) {
  const table = createTable({
    name: 'ports',
    rowKey: (p) => `${p.protocol}/${p.localAddress ?? ''}/${p.port}`,
    initialSort: { key: 'port' },
    empty: 'No listening ports reported.',
    searchText: (p) => `${p.port} ${p.protocol} ${p.localAddress ?? ''} ${p.processName ?? ''}`,
    columns: [
      { key: 'port', label: 'Port', numeric: true, value: (p) => p.port },
      { key: 'proto', label: 'Protocol', value: (p) => p.protocol },
      { key: 'addr', label: 'Address', value: (p) => p.localAddress ?? '', class: 'mono' },
      { key: 'state', label: 'State', value: (p) => p.state ?? '' },
      { key: 'pid', label: 'PID', numeric: true, value: (p) => p.processId ?? null, cell: (p) => p.processId ?? '—' },
      { key: 'proc', label: 'Process', value: (p) => p.processName ?? '' },
    ],
  });
  return inventoryTab({ vmId, query: Q.ports, field: 'vmPorts', table, title: 'Ports' });
}

function applicationsTab({ vmId }) {
  const table = createTable({
    name: 'applications',
    rowKey: (a) => `${a.name}/${a.version ?? ''}/${a.architecture ?? ''}`,
    initialSort: { key: 'name' },
    empty: 'No application inventory from this VM yet.',
    searchText: (a) => `${a.name} ${a.version ?? ''}`,
    columns: [
      { key: 'name', label: 'Name', value: (a) => a.name, class: 'strong' },
      { key: 'version', label: 'Version', value: (a) => a.version ?? '', class: 'mono' },
      { key: 'size', label: 'Size', numeric: true, value: (a) => a.sizeKb ?? null, cell: (a) => fmt.kb(a.sizeKb) },
      { key: 'arch', label: 'Architecture', value: (a) => a.architecture ?? '' },
    ],
  });
  return inventoryTab({ vmId, query: Q.applications, field: 'vmApplications', table, title: 'Applications' });
}

/** How a service starts: the OS's own word (systemd's unit-file state, the Windows start type);
 * from agents that predate `startType`, whether it starts at boot. */
function startType(s) {
  if (s.startType) return s.startType;
  if (s.enabled === null || s.enabled === undefined) return '';
  return s.enabled ? 'enabled' : 'disabled';
}

function servicesTab({ vmId }) {
  const result = h('div', { class: 'result-slot' });
  let view = null;
  async function control(service, operation) {
    replace(result, h('p', { class: 'muted' }, `${operation} ${service}…`));
    const outcome = await execute(vmId, { type: 'SAFE', action: 'ServiceControl', params: { service, operation } });
    replace(result, renderOutcome(outcome, `${operation} ${service}`));
    view?.reload();
  }
  const table = createTable({
    name: 'services',
    rowKey: (s) => s.name,
    initialSort: { key: 'name' },
    empty: 'No service inventory from this VM yet.',
    searchText: (s) => `${s.name} ${s.description ?? ''} ${s.activeState ?? ''} ${startType(s)}`,
    columns: [
      { key: 'name', label: 'Service', value: (s) => s.name, class: 'strong' },
      { key: 'desc', label: 'Description', value: (s) => s.description ?? '' },
      { key: 'active', label: 'State', value: (s) => `${s.activeState ?? ''} ${s.subState ?? ''}`.trim(), cell: (s) => h('span', { class: `svc svc-${String(s.activeState ?? 'unknown').replace(/[^a-z]/g, '')}` }, [s.activeState, s.subState].filter(Boolean).join(' / ') || '—') },
      { key: 'start', label: 'Start', value: startType, class: 'mono' },
      {
        key: 'actions', label: 'Actions', value: () => '',
        cell: (s) => h('span', { class: 'actions' },
          h('button', { type: 'button', class: 'small', onClick: () => control(s.name, 'start') }, 'Start'),
          confirmButton('Stop', 'Confirm stop', () => control(s.name, 'stop'), { class: 'small' }),
          confirmButton('Restart', 'Confirm restart', () => control(s.name, 'restart'), { class: 'small' })),
      },
    ],
  });
  view = inventoryTab({ vmId, query: Q.services, field: 'vmServices', table, title: 'Services', extra: result });
  return view;
}

// ---- commands ------------------------------------------------------------------------------

/** executeVmCommand → { response } or { error: ApiError }. */
async function execute(vmId, command) {
  try {
    const { executeVmCommand } = await gql(Q.execute, { vmId, command });
    return { response: executeVmCommand };
  } catch (e) {
    return { error: e instanceof ApiError ? e : new ApiError(String(e.message ?? e), 'INTERNAL') };
  }
}

const ERROR_TEXT = {
  FORBIDDEN: 'Forbidden',
  VM_OFFLINE: 'VM offline',
  TIMEOUT: 'Timed out',
  INVALID: 'Invalid command',
  NOT_FOUND: 'Not found',
};

/** The outcome of a command: output, exit code and duration, or the server's error. */
function renderOutcome({ response, error }, title) {
  if (error) {
    return h('div', { class: 'result failed', dataset: { testid: 'command-result', errorCode: error.code } },
      h('header', null, h('strong', null, title), h('span', { class: 'badge badge-offline' }, ERROR_TEXT[error.code] ?? error.code)),
      h('p', { class: 'error' }, error.message));
  }
  const r = response;
  const block = (label, text, truncated) => text
    ? h('div', { class: 'stream' }, h('h4', null, label, truncated ? h('span', { class: 'muted' }, ' (truncated by the agent)') : null),
      h('pre', { dataset: { stream: label } }, text))
    : null;
  return h('div', { class: `result ${r.success ? 'ok' : 'failed'}`, dataset: { testid: 'command-result' } },
    h('header', null,
      h('strong', null, title),
      h('span', { class: `badge ${r.success ? 'badge-online' : 'badge-offline'}` }, r.success ? 'success' : 'failed'),
      h('span', { dataset: { testid: 'exit-code' } }, `exit code ${r.exitCode ?? '—'}`),
      h('span', { dataset: { testid: 'duration' } }, fmt.millis(r.executionTimeMs))),
    r.error ? h('p', { class: 'error' }, `${r.error.code}: ${r.error.message}`) : null,
    block('stdout', r.stdout, r.stdoutTruncated),
    block('stderr', r.stderr, r.stderrTruncated),
    r.data !== null && r.data !== undefined ? h('div', { class: 'stream' }, h('h4', null, 'data'), h('pre', { dataset: { stream: 'data' } }, JSON.stringify(r.data, null, 2))) : null,
    !r.stdout && !r.stderr && (r.data === null || r.data === undefined) && !r.error ? h('p', { class: 'muted' }, 'No output.') : null);
}

function commandTab({ vmId, user }) {
  const mayRunRaw = hasPermission(user, 'unsafe_commands');
  const result = h('div', { class: 'result-slot', 'aria-live': 'polite' });
  let mode = 'safe';

  const action = h('select', { name: 'action', 'aria-label': 'Safe action', onChange: () => { params.value = JSON.stringify(SAFE_ACTIONS[action.value], null, 0); } },
    Object.keys(SAFE_ACTIONS).map((name) => h('option', { value: name }, name)));
  const params = h('input', { name: 'params', class: 'mono', value: JSON.stringify(SAFE_ACTIONS.SystemInfo), 'aria-label': 'Parameters (JSON)', spellcheck: 'false' });
  const raw = h('input', { name: 'rawCommand', class: 'mono', placeholder: 'e.g. uname -a', 'aria-label': 'Command', spellcheck: 'false', autocomplete: 'off' });
  const timeout = h('input', { name: 'timeout', type: 'number', min: 1, max: 3600, value: '30', class: 'narrow', 'aria-label': 'Timeout (s)' });
  const run = h('button', { type: 'submit', class: 'primary' }, 'Run');

  const safeFields = h('div', { class: 'fields' }, h('label', null, 'Action', action), h('label', { class: 'grow' }, 'Parameters (JSON)', params));
  const rawFields = h('div', { class: 'fields', hidden: true }, h('label', { class: 'grow' }, 'Command (run by the agent\'s shell)', raw));
  const modeSafe = h('button', { type: 'button', class: 'active', dataset: { mode: 'safe' }, onClick: () => setMode('safe') }, 'Safe action');
  const modeRaw = h('button', {
    type: 'button',
    dataset: { mode: 'raw' },
    disabled: !mayRunRaw,
    title: mayRunRaw ? 'Run a raw command' : 'Raw commands need the permission unsafe_commands',
    onClick: () => setMode('raw'),
  }, 'Raw command');
  function setMode(next) {
    mode = next;
    modeSafe.classList.toggle('active', mode === 'safe');
    modeRaw.classList.toggle('active', mode === 'raw');
    safeFields.hidden = mode !== 'safe';
    rawFields.hidden = mode !== 'raw';
  }

  const logTable = createTable({
    name: 'command-log',
    rowKey: (l) => l.id,
    initialSort: { key: 'at', desc: true },
    empty: 'No commands yet.',
    columns: [
      { key: 'at', label: 'When', value: (l) => l.createdAt, cell: (l) => fmt.dateTime(l.createdAt) },
      { key: 'user', label: 'User', value: (l) => l.user?.username ?? '' },
      { key: 'kind', label: 'Kind', value: (l) => l.kind },
      { key: 'cmd', label: 'Command', value: (l) => JSON.stringify(l.command), class: 'mono wrap' },
      { key: 'ok', label: 'Result', value: (l) => (l.success ? 'ok' : 'failed'), cell: (l) => h('span', { class: `badge ${l.success ? 'badge-online' : 'badge-offline'}` }, l.success ? 'ok' : 'failed') },
      { key: 'ms', label: 'Duration', numeric: true, value: (l) => l.durationMs, cell: (l) => fmt.millis(l.durationMs) },
    ],
  });
  async function loadLog() {
    try {
      const { commandLogs } = await gql(Q.commandLogs, { vmId, limit: 20 });
      logTable.setRows(commandLogs);
    } catch (e) {
      logTable.setRows([]);
      console.warn('command log unavailable', e);
    }
  }

  const form = h('form', {
    class: 'card command-box',
    onSubmit: async (e) => {
      e.preventDefault();
      let command;
      let title;
      const seconds = Number(timeout.value) || 30;
      if (mode === 'raw') {
        if (!raw.value.trim()) return;
        command = { type: 'UNSAFE', rawCommand: raw.value, timeout: seconds };
        title = raw.value;
      } else {
        let parsed;
        try {
          parsed = params.value.trim() ? JSON.parse(params.value) : {};
        } catch (err) {
          replace(result, h('p', { class: 'error' }, `Parameters are not valid JSON: ${err.message}`));
          return;
        }
        command = { type: 'SAFE', action: action.value, params: parsed, timeout: seconds };
        title = action.value;
      }
      run.disabled = true;
      replace(result, h('p', { class: 'muted' }, `running ${title}…`));
      const started = performance.now();
      const outcome = await execute(vmId, command);
      run.disabled = false;
      replace(result, renderOutcome(outcome, title));
      if (outcome.error) console.info(`command failed after ${Math.round(performance.now() - started)} ms`);
      loadLog();
    },
  },
  h('div', { class: 'segmented' }, modeSafe, modeRaw),
  mayRunRaw ? null : h('p', { class: 'muted small' }, 'Raw commands need the permission unsafe_commands; safe actions are available.'),
  safeFields,
  rawFields,
  h('div', { class: 'fields' }, h('label', null, 'Timeout (s)', timeout), run));

  loadLog();
  return {
    el: h('div', { class: 'command-tab' }, form, result, h('h2', null, 'Recent commands'), h('div', { class: 'card' }, logTable.el)),
  };
}


// One VM's "Alerts & settings" tab: its alerts (raised and resolved, live from alert:*), the
// errors its agent reported (live from vm:error), what its agent collects and how often
// (vmTelemetry / setVmTelemetry) and its display name (renameVm).
import { gql, Q } from '../api.js';
import { h } from '../dom.js';
import * as fmt from '../format.js';
import { createTable } from '../table.js';

/** The agent's collectors, as setVmTelemetry names them. */
const COLLECTORS = ['system_metrics', 'process_snapshot', 'port_usage', 'application_usage', 'service_inventory'];
const LIST_LIMIT = 50;

export function healthTab({ vmId, vm, live, onRenamed }) {
  const cleanups = [];

  // ---- alerts
  const alertsStatus = h('p', { class: 'muted', dataset: { testid: 'alerts-status' } });
  const alertsTable = createTable({
    name: 'alerts',
    rowKey: (a) => a.id,
    initialSort: { key: 'raised', desc: true },
    empty: 'No alerts.',
    columns: [
      { key: 'raised', label: 'Raised', value: (a) => a.raisedAt, cell: (a) => fmt.dateTime(a.raisedAt) },
      { key: 'state', label: 'State', value: (a) => (a.resolvedAt ? 'resolved' : 'open'),
        cell: (a) => h('span', { class: `badge ${a.resolvedAt ? 'badge-online' : 'badge-offline'}` }, a.resolvedAt ? 'resolved' : 'open') },
      { key: 'kind', label: 'Kind', value: (a) => a.kind },
      { key: 'message', label: 'Message', value: (a) => a.message, class: 'wrap' },
      { key: 'resolved', label: 'Resolved', value: (a) => a.resolvedAt ?? '', cell: (a) => (a.resolvedAt ? fmt.dateTime(a.resolvedAt) : '—') },
    ],
  });
  let alerts = [];
  async function loadAlerts() {
    try {
      const data = await gql(Q.vmAlerts, { vmId, limit: LIST_LIMIT });
      alerts = data.alerts;
      alertsTable.setRows(alerts);
      alertsStatus.textContent = `${alerts.filter((a) => !a.resolvedAt).length} open`;
    } catch (e) {
      alertsStatus.textContent = `alerts unavailable: ${e.message}`;
    }
  }
  // Socket.IO payloads carry the alert as the query does (camelCase, RFC 3339 times).
  function onAlert(payload) {
    if (payload?.vmId !== vmId) return;
    const kind = String(payload.kind ?? '').toUpperCase();
    alerts = [{ ...payload, kind }, ...alerts.filter((a) => a.id !== payload.id)].slice(0, LIST_LIMIT);
    alertsTable.setRows(alerts);
    alertsStatus.textContent = `${alerts.filter((a) => !a.resolvedAt).length} open`;
  }
  cleanups.push(live.on('alert:raised', onAlert), live.on('alert:resolved', onAlert));

  // ---- guest errors
  const errorsTable = createTable({
    name: 'vm-errors',
    rowKey: (e) => `${e.at}|${e.code ?? ''}|${e.message}`,
    initialSort: { key: 'at', desc: true },
    empty: 'The agent reported no errors.',
    columns: [
      { key: 'at', label: 'When', value: (e) => e.at, cell: (e) => fmt.dateTime(e.at) },
      { key: 'code', label: 'Code', value: (e) => e.code ?? '' },
      { key: 'message', label: 'Error', value: (e) => e.message, class: 'wrap' },
      { key: 'details', label: 'Details', value: (e) => e.details ?? '', class: 'mono wrap' },
    ],
  });
  let errors = [];
  async function loadErrors() {
    try {
      const data = await gql(Q.vmErrors, { vmId, limit: LIST_LIMIT });
      errors = data.vmErrors;
      errorsTable.setRows(errors);
    } catch (e) {
      console.warn('VM errors unavailable', e);
    }
  }
  cleanups.push(live.on('vm:error', (payload) => {
    if (payload?.vmId !== vmId) return;
    errors = [{ at: payload.timestamp, code: payload.code, message: payload.error, details: payload.details }, ...errors].slice(0, LIST_LIMIT);
    errorsTable.setRows(errors);
  }));

  // ---- collection settings
  const interval = h('input', { name: 'interval', type: 'number', min: 1, max: 3600, value: '5', class: 'narrow', 'aria-label': 'Interval (s)' });
  const boxes = COLLECTORS.map((name) => h('input', { type: 'checkbox', name: 'collector', value: name, checked: true }));
  const telemetryStatus = h('p', { class: 'muted', 'aria-live': 'polite', dataset: { testid: 'telemetry-status' } });
  function showSettings(settings) {
    if (!settings) {
      telemetryStatus.textContent = 'Not set here: the agent uses its own configuration.';
      return;
    }
    interval.value = String(settings.interval);
    boxes.forEach((b) => { b.checked = settings.collectors.includes(b.value); });
    telemetryStatus.textContent = settings.appliedAt
      ? `Every ${settings.interval} s; the agent confirmed ${fmt.ago(settings.appliedAt)}.`
      : `Every ${settings.interval} s; not confirmed by the agent yet (sent when it connects).`;
  }
  async function loadTelemetry() {
    try {
      const data = await gql(Q.vmTelemetry, { vmId });
      showSettings(data.vmTelemetry);
    } catch (e) {
      telemetryStatus.textContent = `settings unavailable: ${e.message}`;
    }
  }
  const telemetryForm = h('form', {
    class: 'card',
    dataset: { testid: 'telemetry-form' },
    onSubmit: async (e) => {
      e.preventDefault();
      telemetryStatus.textContent = 'sending…';
      try {
        const collectors = boxes.filter((b) => b.checked).map((b) => b.value);
        const { setVmTelemetry: r } = await gql(Q.setTelemetry, { vmId, interval: Number(interval.value), collectors });
        showSettings(r.settings);
        if (!r.applied) telemetryStatus.textContent = `Saved; not applied yet: ${r.pendingReason ?? 'the agent did not answer'}.`;
      } catch (err) {
        telemetryStatus.textContent = `${err.code ?? 'ERROR'}: ${err.message}`;
      }
    },
  },
  h('h2', null, 'Collection'),
  h('div', { class: 'fields' },
    h('label', null, 'Interval (s)', interval),
    ...COLLECTORS.map((name, i) => h('label', { class: 'check' }, boxes[i], name))),
  h('button', { type: 'submit', class: 'primary' }, 'Apply'),
  telemetryStatus);

  // ---- display name
  const name = h('input', { name: 'name', value: vm.name ?? '', maxlength: 64, 'aria-label': 'Display name' });
  const renameStatus = h('p', { class: 'muted', 'aria-live': 'polite', dataset: { testid: 'rename-status' } });
  const renameForm = h('form', {
    class: 'card',
    dataset: { testid: 'rename-form' },
    onSubmit: async (e) => {
      e.preventDefault();
      try {
        const { renameVm } = await gql(Q.renameVm, { vmId, name: name.value });
        renameStatus.textContent = `Renamed to ${renameVm.name}.`;
        onRenamed?.(renameVm.name);
      } catch (err) {
        renameStatus.textContent = `${err.code ?? 'ERROR'}: ${err.message}`;
      }
    },
  },
  h('h2', null, 'Name'),
  h('div', { class: 'fields' }, h('label', { class: 'grow' }, 'Display name (kept when the agent reports its host name)', name)),
  h('button', { type: 'submit', class: 'primary' }, 'Rename'),
  renameStatus);

  loadAlerts();
  loadErrors();
  loadTelemetry();

  const el = h('div', { class: 'health-tab' },
    h('section', { class: 'card' }, h('h2', null, 'Alerts'), alertsStatus, alertsTable.el),
    h('section', { class: 'card' }, h('h2', null, 'Errors reported by the agent'), errorsTable.el),
    telemetryForm,
    renameForm);
  return {
    el,
    destroy() {
      cleanups.forEach((fn) => fn());
    },
  };
}

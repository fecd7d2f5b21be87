// ADMIN: alert rules (createAlertRule / deleteAlertRule). The host evaluates them on ingest;
// each VM's alerts show on its "Alerts & settings" tab.
import { Q, gql } from '../api.js';
import { confirmButton, h, replace } from '../dom.js';
import { createTable } from '../table.js';

const KINDS = [
  { key: 'CPU', label: 'CPU above', threshold: true },
  { key: 'MEMORY', label: 'Memory above', threshold: true },
  { key: 'DISK', label: 'Disk above', threshold: true },
  { key: 'AGENT_OFFLINE', label: 'Agent offline while the VM runs', threshold: false },
  { key: 'GUEST_ERROR', label: 'An error reported by the agent', threshold: false },
];

export function alertRulesPage() {
  const flash = h('div', { class: 'result-slot', 'aria-live': 'polite', dataset: { testid: 'rules-flash' } });
  const say = (text, isError = false) => replace(flash, h('p', { class: isError ? 'error' : 'notice' }, text));
  let vmNames = new Map();

  const table = createTable({
    name: 'alert-rules',
    rowKey: (r) => r.id,
    initialSort: { key: 'created', desc: true },
    empty: 'No alert rules.',
    columns: [
      { key: 'vm', label: 'VM', value: (r) => (r.vmId ? vmNames.get(r.vmId) ?? r.vmId : 'every VM') },
      { key: 'kind', label: 'Condition', value: (r) => r.kind },
      { key: 'threshold', label: 'Threshold', numeric: true, value: (r) => r.threshold ?? -1, cell: (r) => (r.threshold == null ? '—' : `${r.threshold} %`) },
      { key: 'mount', label: 'Mount', value: (r) => r.mountPoint ?? '' },
      { key: 'duration', label: 'For (s)', numeric: true, value: (r) => r.durationSeconds },
      { key: 'hooks', label: 'Webhooks', value: (r) => r.webhookUrls.join(' '), class: 'mono wrap' },
      { key: 'created', label: 'Created', value: (r) => r.createdAt, cell: (r) => new Date(r.createdAt).toLocaleString() },
      { key: 'delete', label: '', value: () => '', cell: (r) => confirmButton('Delete', 'Really delete?', async () => {
        try {
          await gql(Q.deleteAlertRule, { id: r.id });
          say('Rule deleted; its open alerts are resolved.');
          load();
        } catch (err) {
          say(`${err.code ?? 'ERROR'}: ${err.message}`, true);
        }
      }, { class: 'small danger' }) },
    ],
  });

  const vm = h('select', { name: 'vm', 'aria-label': 'VM' }, h('option', { value: '' }, 'every VM'));
  const kind = h('select', { name: 'kind', 'aria-label': 'Condition', onChange: () => showFields() },
    KINDS.map((k) => h('option', { value: k.key }, k.label)));
  const threshold = h('input', { name: 'threshold', type: 'number', step: 'any', value: '90', class: 'narrow', 'aria-label': 'Threshold (%)' });
  const mount = h('input', { name: 'mountPoint', placeholder: 'each mount', class: 'narrow', 'aria-label': 'Mount point' });
  const duration = h('input', { name: 'durationSeconds', type: 'number', value: '300', class: 'narrow', 'aria-label': 'For (seconds)' });
  const hooks = h('input', { name: 'webhookUrls', placeholder: 'https://… (comma-separated, optional)', 'aria-label': 'Webhook URLs' });
  const thresholdField = h('label', null, 'Threshold (%)', threshold);
  const mountField = h('label', null, 'Mount point', mount);
  function showFields() {
    const spec = KINDS.find((k) => k.key === kind.value);
    thresholdField.hidden = !spec?.threshold;
    mountField.hidden = kind.value !== 'DISK';
  }
  showFields();

  const form = h('form', {
    class: 'card',
    dataset: { testid: 'rule-form' },
    onSubmit: async (e) => {
      e.preventDefault();
      const spec = KINDS.find((k) => k.key === kind.value);
      const input = {
        vmId: vm.value || null,
        kind: kind.value,
        threshold: spec?.threshold ? Number(threshold.value) : null,
        mountPoint: kind.value === 'DISK' && mount.value.trim() ? mount.value.trim() : null,
        durationSeconds: Math.trunc(Number(duration.value)),
        webhookUrls: hooks.value.split(',').map((u) => u.trim()).filter(Boolean),
      };
      try {
        await gql(Q.createAlertRule, { input });
        say('Rule created.');
        load();
      } catch (err) {
        say(`${err.code ?? 'ERROR'}: ${err.message}`, true);
      }
    },
  },
  h('h2', null, 'New rule'),
  h('div', { class: 'fields' },
    h('label', null, 'VM', vm),
    h('label', null, 'Condition', kind),
    thresholdField,
    mountField,
    h('label', null, 'For (seconds)', duration),
    h('label', { class: 'grow' }, 'Webhook URLs', hooks)),
  h('button', { type: 'submit', class: 'primary' }, 'Create'));

  async function load() {
    try {
      const [rules, vms] = await Promise.all([gql(Q.alertRules), gql(Q.vms)]);
      vmNames = new Map(vms.vms.map((v) => [v.id, v.name || v.id]));
      const chosen = vm.value;
      replace(vm, h('option', { value: '' }, 'every VM'),
        vms.vms.map((v) => h('option', { value: v.id, selected: v.id === chosen }, v.name || v.id)));
      table.setRows(rules.alertRules);
    } catch (e) {
      say(`Cannot load: ${e.message}`, true);
    }
  }
  load();
  return {
    el: h('main', { class: 'page' },
      h('div', { class: 'page-head' }, h('h1', null, 'Alert rules'), h('span', { class: 'muted' }, table.count, ' rules')),
      h('p', { class: 'muted' }, 'Evaluated by the host as samples and errors arrive; each VM\u2019s alerts are on its "Alerts & settings" tab.'),
      flash,
      form,
      h('div', { class: 'card' }, table.el)),
  };
}

// A VM in the hypervisor: its state as people read it (the power state first, the agent only
// when the VM runs), the power buttons (a second click for the destructive ones), and what the
// API answered.
import { ApiError, Q, gql } from './api.js';
import { confirmButton, h } from './dom.js';

/** Power states in which a silent agent is expected: not "agent offline". */
const QUIET = new Set(['SHUTOFF', 'PAUSED', 'CRASHED']);

const WORDS = {
  RUNNING: 'running',
  PAUSED: 'paused',
  SHUTOFF: 'shut off',
  CRASHED: 'crashed',
  UNKNOWN: 'unknown',
};

/**
 * The state a person cares about: a VM that is shut off, paused or crashed shows that (its
 * agent is silent for a reason); one that runs, or that libvirt does not know, shows its agent.
 * Returns { key, text, title } (key: a CSS class suffix and a filter value).
 */
export function vmState(vm) {
  const power = vm?.powerState ?? 'UNKNOWN';
  const agent = vm?.status ?? 'OFFLINE';
  if (QUIET.has(power)) {
    return { key: power.toLowerCase(), text: WORDS[power], title: `power: ${WORDS[power]} (agent ${agent.toLowerCase()})` };
  }
  const title = power === 'RUNNING' ? `power: running, agent ${agent.toLowerCase()}` : `agent ${agent.toLowerCase()} (power state unknown)`;
  return { key: agent.toLowerCase(), text: agent.toLowerCase(), title };
}

/** The state as a badge (`data-power` carries the raw power state for tests and styles). */
export function stateBadge(vm) {
  const s = vmState(vm);
  return h('span', { class: `badge badge-${s.key}`, title: s.title, dataset: { power: vm?.powerState ?? 'UNKNOWN', agent: vm?.status ?? 'OFFLINE' } }, s.text);
}

/** The power state alone. */
export function powerBadge(state) {
  const s = state ?? 'UNKNOWN';
  return h('span', { class: `badge badge-${s.toLowerCase()}`, dataset: { testid: 'power-state' } }, WORDS[s] ?? s.toLowerCase());
}

/** Which buttons make sense in which state (the server checks again). */
const ACTIONS = [
  { action: 'powerOn', label: 'Start', when: ['SHUTOFF', 'CRASHED'] },
  { action: 'shutdown', label: 'Shut down', confirm: 'Confirm shutdown', when: ['RUNNING'] },
  { action: 'reboot', label: 'Reboot', confirm: 'Confirm reboot', when: ['RUNNING'] },
  { action: 'suspend', label: 'Suspend', when: ['RUNNING'] },
  { action: 'resume', label: 'Resume', when: ['PAUSED'] },
  { action: 'powerOff', label: 'Power off', confirm: 'Confirm power off', when: ['RUNNING', 'PAUSED'] },
];

/**
 * Power buttons for `vm`. `onResult(text, isError)` shows what happened; `onDeleted()` runs
 * after a successful delete.
 */
export function powerControls(vm, { onResult, onDeleted }) {
  const state = vm.powerState ?? 'UNKNOWN';
  const known = state !== 'UNKNOWN';
  let busy = false;
  async function run(action, label) {
    if (busy) return;
    busy = true;
    try {
      const data = await gql(Q.power(action), { vmId: vm.id });
      const done = data[action];
      const how = done.via === 'agent' ? ' through its agent' : done.via === 'acpi' ? ' (ACPI: the guest decides)' : '';
      onResult(`${label}: done${how}; power state ${WORDS[done.powerState] ?? done.powerState}.`, false);
    } catch (e) {
      onResult(errorText(e), true);
    } finally {
      busy = false;
    }
  }
  const buttons = ACTIONS.map(({ action, label, confirm, when }) => {
    // Unknown state (libvirt unreachable, or no domain): let the server say why not.
    const disabled = known && !when.includes(state);
    const props = { class: 'small', disabled, dataset: { action } };
    return confirm
      ? confirmButton(label, confirm, () => run(action, label), props)
      : h('button', { type: 'button', ...props, onClick: () => run(action, label) }, label);
  });
  const remove = confirmButton('Delete VM', 'Confirm delete: domain, disk overlay and data', async () => {
    try {
      await gql(Q.deleteVm, { vmId: vm.id });
      onResult(`${vm.name} deleted.`, false);
      onDeleted();
    } catch (e) {
      onResult(errorText(e), true);
    }
  }, { class: 'small danger', dataset: { action: 'deleteVm' } });
  return h('div', { class: 'power-controls', role: 'group', 'aria-label': 'Power' }, buttons, remove);
}

/** An API error as a sentence with its code. */
export function errorText(e) {
  const code = e instanceof ApiError ? e.code : 'ERROR';
  return `${code}: ${e.message}`;
}

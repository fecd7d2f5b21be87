// ADMIN: who owns which VM (setVmOwner). A USER sees and commands only the VMs they own.
import { Q, gql } from '../api.js';
import { h, replace } from '../dom.js';
import { createTable, filterInput } from '../table.js';
import { stateBadge, vmState } from '../power.js';

export function ownershipPage() {
  const flash = h('div', { class: 'result-slot', 'aria-live': 'polite' });
  const say = (text, isError = false) => replace(flash, h('p', { class: isError ? 'error' : 'notice' }, text));
  let users = [];

  function ownerCell(vm) {
    const select = h('select', { 'aria-label': `Owner of ${vm.name}` },
      h('option', { value: '' }, '— unassigned —'),
      users.map((u) => h('option', { value: u.id, selected: vm.owner?.id === u.id }, `${u.username} (${u.role.toLowerCase()})`)));
    const department = h('input', { value: vm.department ?? '', placeholder: 'department', class: 'narrow', 'aria-label': `Department of ${vm.name}` });
    return h('form', {
      class: 'inline',
      onSubmit: async (e) => {
        e.preventDefault();
        try {
          await gql(Q.setOwner, { vmId: vm.id, userId: select.value || null, department: department.value.trim() || null });
          say(`Owner of ${vm.name} saved.`);
          load();
        } catch (err) {
          say(`${err.code ?? 'ERROR'}: ${err.message}`, true);
        }
      },
    }, select, department, h('button', { type: 'submit', class: 'small' }, 'Save'));
  }

  const table = createTable({
    name: 'ownership',
    rowKey: (vm) => vm.id,
    initialSort: { key: 'name' },
    searchText: (vm) => `${vm.name} ${vm.owner?.username ?? ''} ${vm.department ?? ''}`,
    columns: [
      { key: 'name', label: 'VM', value: (vm) => vm.name, cell: (vm) => h('a', { href: `#/vm/${encodeURIComponent(vm.id)}` }, vm.name || vm.id) },
      { key: 'status', label: 'State', value: (vm) => vmState(vm).text, cell: (vm) => stateBadge(vm) },
      { key: 'owner', label: 'Current owner', value: (vm) => vm.owner?.username ?? '' },
      { key: 'dept', label: 'Department', value: (vm) => vm.department ?? '' },
      { key: 'set', label: 'Assign', value: () => '', cell: ownerCell },
    ],
  });

  async function load() {
    try {
      const [u, v] = await Promise.all([gql(Q.users), gql(Q.vms)]);
      users = u.users;
      table.setRows(v.vms);
    } catch (e) {
      say(`Cannot load: ${e.message}`, true);
    }
  }
  load();
  return {
    el: h('main', { class: 'page' },
      h('div', { class: 'page-head' }, h('h1', null, 'VM ownership'), h('span', { class: 'muted' }, table.count, ' VMs')),
      h('p', { class: 'muted' }, 'A USER sees and commands only the VMs they own; admins see all.'),
      flash,
      h('div', { class: 'toolbar' }, filterInput(table, 'Filter VMs…')),
      h('div', { class: 'card' }, table.el)),
  };
}

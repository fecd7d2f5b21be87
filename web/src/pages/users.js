// ADMIN: users — list, create, delete, grant unsafe_commands, set a password.
import { Q, gql } from '../api.js';
import { confirmButton, h, replace } from '../dom.js';
import * as fmt from '../format.js';
import { createTable, filterInput } from '../table.js';

const UNSAFE = 'unsafe_commands';

export function usersPage({ user: me }) {
  const flash = h('div', { class: 'result-slot', 'aria-live': 'polite' });
  const say = (text, isError = false) => replace(flash, h('p', { class: isError ? 'error' : 'notice' }, text));

  async function act(fn, success) {
    try {
      await fn();
      say(success);
      await load();
    } catch (e) {
      say(`${e.code ?? 'ERROR'}: ${e.message}`, true);
    }
  }

  function passwordCell(u) {
    const input = h('input', { type: 'password', placeholder: 'new password', autocomplete: 'new-password', class: 'narrow', 'aria-label': `New password for ${u.username}` });
    // Changing one's own password needs the current one (the server refuses it otherwise).
    const current = u.id === me.id
      ? h('input', { type: 'password', placeholder: 'current password', autocomplete: 'current-password', class: 'narrow', 'aria-label': 'Your current password' })
      : null;
    return h('form', {
      class: 'inline',
      onSubmit: (e) => {
        e.preventDefault();
        if (!input.value || (current && !current.value)) return;
        const password = input.value;
        const currentPassword = current ? current.value : null;
        input.value = '';
        if (current) current.value = '';
        act(() => gql(Q.setPassword, { id: u.id, password, currentPassword }), `Password of ${u.username} changed; their open sessions end.`);
      },
    }, ...(current ? [current] : []), input, h('button', { type: 'submit', class: 'small' }, 'Set'));
  }

  const table = createTable({
    name: 'users',
    rowKey: (u) => u.id,
    initialSort: { key: 'name' },
    searchText: (u) => `${u.username} ${u.role} ${u.department ?? ''}`,
    columns: [
      { key: 'name', label: 'User', value: (u) => u.username, class: 'strong' },
      { key: 'role', label: 'Role', value: (u) => u.role, cell: (u) => h('span', { class: `role role-${u.role.toLowerCase()}` }, u.role) },
      { key: 'dept', label: 'Department', value: (u) => u.department ?? '' },
      {
        key: 'perm', label: 'Permissions', value: (u) => u.permissions.join(', '),
        cell: (u) => u.role === 'ADMIN'
          ? h('span', { class: 'muted' }, 'all (admin)')
          : u.permissions.includes(UNSAFE)
            ? u.permissions.join(', ')
            : h('button', { type: 'button', class: 'small', onClick: () => act(() => gql(Q.grant, { id: u.id, permission: UNSAFE }), `${u.username} may now run raw commands.`) }, `Grant ${UNSAFE}`),
      },
      { key: 'created', label: 'Created', value: (u) => u.createdAt, cell: (u) => fmt.dateTime(u.createdAt) },
      { key: 'password', label: 'Password', value: () => '', cell: passwordCell },
      {
        key: 'delete', label: '', value: () => '',
        cell: (u) => u.id === me.id
          ? h('span', { class: 'muted' }, 'you')
          : confirmButton('Delete', 'Confirm delete', () => act(() => gql(Q.deleteUser, { id: u.id }), `${u.username} deleted.`), { class: 'small danger' }),
      },
    ],
  });

  async function load() {
    try {
      const { users } = await gql(Q.users);
      table.setRows(users);
    } catch (e) {
      say(`Cannot load users: ${e.message}`, true);
    }
  }

  const username = h('input', { name: 'username', required: true, autocomplete: 'off' });
  const password = h('input', { name: 'password', type: 'password', required: true, autocomplete: 'new-password' });
  const role = h('select', { name: 'role' }, h('option', { value: 'USER' }, 'USER'), h('option', { value: 'ADMIN' }, 'ADMIN'));
  const department = h('input', { name: 'department', autocomplete: 'off' });
  const unsafe = h('input', { type: 'checkbox', name: 'unsafe' });
  const create = h('form', {
    class: 'card create-user',
    onSubmit: (e) => {
      e.preventDefault();
      const input = {
        username: username.value.trim(),
        password: password.value,
        role: role.value,
        department: department.value.trim() || null,
        permissions: unsafe.checked ? [UNSAFE] : [],
      };
      act(async () => {
        await gql(Q.createUser, { input });
        create.reset();
      }, `User ${input.username} created.`);
    },
  },
  h('h2', null, 'New user'),
  h('div', { class: 'fields' },
    h('label', null, 'User name', username),
    h('label', null, 'Password', password),
    h('label', null, 'Role', role),
    h('label', null, 'Department', department),
    h('label', { class: 'check' }, unsafe, `may run raw commands (${UNSAFE})`),
    h('button', { type: 'submit', class: 'primary' }, 'Create')));

  load();
  return {
    el: h('main', { class: 'page' },
      h('div', { class: 'page-head' }, h('h1', null, 'Users'), h('span', { class: 'muted' }, table.count, ' users')),
      flash,
      create,
      h('div', { class: 'toolbar' }, filterInput(table, 'Filter users…')),
      h('div', { class: 'card' }, table.el)),
  };
}

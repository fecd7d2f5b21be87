// The dashboard shell: session, header, hash routes, and the page lifecycle (each page returns
// { el, destroy } and is destroyed when the route changes).
import './style.css';
import { Q, clearSession, gql, onSessionChange, saveSession, session } from './api.js';
import { h, replace } from './dom.js';
import { Live } from './live.js';
import { loginPage } from './pages/login.js';
import { vmListPage } from './pages/vms.js';
import { vmPage } from './pages/vm.js';
import { usersPage } from './pages/users.js';
import { ownershipPage } from './pages/ownership.js';
import { alertRulesPage } from './pages/alert-rules.js';

const root = document.getElementById('app');
let live = null;
let current = null;
let loginNotice = '';
let headerOff = null;

const ROUTES = [
  { pattern: /^#\/vms$/, page: (ctx) => vmListPage(ctx) },
  { pattern: /^#\/vm\/([^/]+)(?:\/([a-z]+))?$/, page: (ctx, m) => vmPage(ctx, decodeURIComponent(m[1]), m[2] ?? 'charts') },
  { pattern: /^#\/admin\/users$/, page: (ctx) => usersPage(ctx), admin: true },
  { pattern: /^#\/admin\/vms$/, page: (ctx) => ownershipPage(ctx), admin: true },
  { pattern: /^#\/admin\/alerts$/, page: (ctx) => alertRulesPage(ctx), admin: true },
];

function header(user) {
  const state = h('span', { class: 'conn', dataset: { state: live?.state ?? 'connecting' }, title: 'real-time connection' }, live?.state ?? 'connecting');
  headerOff = live?.on('state', (s) => {
    state.dataset.state = s;
    state.textContent = s;
  });
  const link = (href, label) => h('a', { href, class: location.hash.startsWith(href) ? 'active' : null }, label);
  return h('header', { class: 'top' },
    h('a', { class: 'brand', href: '#/vms' }, 'infinibay'),
    h('nav', null,
      link('#/vms', 'Virtual machines'),
      user.role === 'ADMIN' ? [link('#/admin/users', 'Users'), link('#/admin/vms', 'Ownership'), link('#/admin/alerts', 'Alert rules')] : null),
    h('div', { class: 'who' },
      state,
      h('span', { class: 'user', dataset: { testid: 'current-user' } }, user.username),
      h('span', { class: `role role-${user.role.toLowerCase()}` }, user.role),
      h('button', { type: 'button', class: 'ghost', onClick: () => clearSession('') }, 'Log out')));
}

function render() {
  current?.destroy?.();
  current = null;
  headerOff?.();
  headerOff = null;
  const s = session();
  if (!s || !s.user) {
    live?.close();
    live = null;
    if (location.hash !== '#/login') history.replaceState(null, '', '#/login');
    current = loginPage({
      notice: loginNotice,
      onLoggedIn: (token, user) => {
        loginNotice = '';
        saveSession(token, user);
        location.hash = '#/vms';
      },
    });
    replace(root, current.el);
    return;
  }
  if (!live) {
    live = new Live(s.token, {
      onAuthError: (message) => clearSession(`The server refused the session: ${message}`),
      // `me` ends the session itself when the token was revoked (UNAUTHENTICATED).
      onServerDisconnect: () => gql(Q.me).then(() => live?.reconnect(), () => {}),
    });
  }
  const hash = location.hash || '#/vms';
  const route = ROUTES.map((r) => ({ r, m: hash.match(r.pattern) })).find((x) => x.m);
  const ctx = { user: s.user, live };
  let page;
  if (!route) {
    history.replaceState(null, '', '#/vms');
    page = vmListPage(ctx);
  } else if (route.r.admin && s.user.role !== 'ADMIN') {
    page = { el: h('main', { class: 'page' }, h('p', { class: 'error' }, 'This page is for administrators.')) };
  } else {
    page = route.r.page(ctx, route.m);
  }
  current = page;
  replace(root, header(s.user), page.el);
}

onSessionChange((s, reason) => {
  if (!s) loginNotice = reason ?? '';
  render();
});
window.addEventListener('hashchange', () => {
  // Tabs of the open VM page switch in place, keeping its charts and subscriptions.
  const m = location.hash.match(/^#\/vm\/([^/]+)(?:\/([a-z]+))?$/);
  if (m && current?.setTab && current.vmId === decodeURIComponent(m[1])) {
    current.setTab(m[2] ?? 'charts');
    return;
  }
  render();
});

// A stored token may be stale (expired, password changed, user deleted): check it once.
async function start() {
  const s = session();
  if (s) {
    try {
      const { me } = await gql(Q.me);
      saveSession(s.token, me);
      return;
    } catch (e) {
      if (e.code !== 'UNAUTHENTICATED') console.warn('cannot check the session', e);
    }
  }
  render();
}
start();

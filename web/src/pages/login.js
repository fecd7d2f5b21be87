import { Q, gql } from '../api.js';
import { h } from '../dom.js';

/** The login form: `login` mutation → token + user kept in localStorage. */
export function loginPage({ notice, onLoggedIn }) {
  const username = h('input', { name: 'username', autocomplete: 'username', required: true, autofocus: true });
  const password = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const message = h('p', { class: notice ? 'notice' : 'error', role: 'alert', hidden: !notice }, notice || '');
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Log in');
  const form = h('form', {
    class: 'login card',
    onSubmit: async (e) => {
      e.preventDefault();
      submit.disabled = true;
      message.hidden = true;
      try {
        const { login } = await gql(Q.login, { username: username.value.trim(), password: password.value });
        onLoggedIn(login.token, login.user);
      } catch (err) {
        message.className = 'error';
        message.textContent = err.code === 'UNAUTHENTICATED' || err.code === 'FORBIDDEN'
          ? 'Wrong user name or password.'
          : err.message;
        message.hidden = false;
        password.select();
      } finally {
        submit.disabled = false;
      }
    },
  },
  h('h1', null, 'infinibay'),
  h('p', { class: 'muted' }, 'Sign in to see your virtual machines.'),
  h('label', null, 'User name', username),
  h('label', null, 'Password', password),
  message,
  submit);
  return { el: h('main', { class: 'login-page' }, form) };
}

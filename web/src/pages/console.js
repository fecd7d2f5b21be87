// The Console tab: the VM's screen through noVNC, over a WebSocket that a single-use ticket
// (GraphQL vmConsoleTicket) opens. Every connection, reconnects included, mints its own
// ticket. When the server closes the console, the tab says why (close code → text) and offers
// what can help: reconnect, take over, or nothing. noVNC is loaded when the tab first opens.
import { Q, gql } from '../api.js';
import { closeText, consoleUrl, retryKind } from '../console.js';
import { h } from '../dom.js';

const SCALE_KEY = 'infinibay.console.scale';
/** Transient closes (lost connection, server restart) are retried this often by themselves. */
const AUTO_RETRIES = 3;

let loadingRfb = null;
/** noVNC's RFB class, from its own chunk. */
function loadRfb() {
  loadingRfb ??= import('@novnc/novnc').then((module) => module.default);
  return loadingRfb;
}

export function consoleTab({ vmId }) {
  const screen = h('div', { class: 'console-screen', dataset: { testid: 'console-screen' } });
  const status = h('span', { class: 'muted', dataset: { testid: 'console-status' } });
  const error = h('p', { class: 'error', role: 'alert', hidden: true, dataset: { testid: 'console-error' } });
  const reconnect = h('button', { type: 'button', dataset: { action: 'reconnect' }, onClick: () => connect(false) }, 'Reconnect');
  const takeover = h('button', {
    type: 'button',
    class: 'primary',
    hidden: true,
    dataset: { action: 'takeover' },
    title: 'Close the console elsewhere and open it here',
    onClick: () => connect(true),
  }, 'Take over here');
  const ctrlAltDel = h('button', { type: 'button', disabled: true, dataset: { action: 'ctrl-alt-del' }, onClick: () => rfb?.sendCtrlAltDel() }, 'Ctrl-Alt-Del');
  const fullscreen = h('button', {
    type: 'button',
    dataset: { action: 'fullscreen' },
    onClick: () => {
      screen.requestFullscreen?.().catch((e) => console.warn('fullscreen refused', e));
      rfb?.focus();
    },
  }, 'Fullscreen');
  const scale = h('input', {
    type: 'checkbox',
    name: 'scale',
    checked: localStorage.getItem(SCALE_KEY) !== 'off',
    onChange: () => {
      localStorage.setItem(SCALE_KEY, scale.checked ? 'on' : 'off');
      if (rfb) rfb.scaleViewport = scale.checked;
    },
  });
  const root = h('div', { class: 'console-tab', dataset: { state: 'connecting', testid: 'console' } },
    h('div', { class: 'toolbar' },
      reconnect, takeover, ctrlAltDel, fullscreen,
      h('label', { class: 'check' }, scale, 'Scale to fit'),
      status),
    error,
    screen);

  let rfb = null;
  let socket = null;
  let attempt = 0;
  let retries = 0;
  let retryTimer = null;
  let destroyed = false;

  function setState(state, text) {
    root.dataset.state = state;
    status.textContent = text;
    ctrlAltDel.disabled = state !== 'connected';
  }

  /** Drop the current connection without reacting to its close. */
  function teardown() {
    socket = null;
    const old = rfb;
    rfb = null;
    old?.disconnect();
  }

  async function connect(takingOver) {
    clearTimeout(retryTimer);
    teardown();
    const mine = ++attempt;
    const current = () => mine === attempt && !destroyed;
    error.hidden = true;
    takeover.hidden = true;
    delete root.dataset.closeCode;
    setState('connecting', 'asking for a console ticket…');
    let ticket;
    let RFB;
    try {
      [{ vmConsoleTicket: ticket }, RFB] = await Promise.all([gql(Q.consoleTicket, { vmId }), loadRfb()]);
    } catch (e) {
      if (current()) fail(`Cannot open the console: ${e.message}`, 'reconnect');
      return;
    }
    if (!current()) return;
    setState('connecting', 'connecting…');
    // Our own WebSocket, handed to noVNC: its close event carries the server's code and
    // reason, which noVNC's disconnect event does not.
    const ws = new WebSocket(consoleUrl(location, ticket.path, takingOver), ['binary']);
    socket = ws;
    ws.addEventListener('close', (e) => {
      if (socket === ws) closed(e.code, e.reason);
    });
    const viewer = new RFB(screen, ws, { shared: true });
    rfb = viewer;
    viewer.scaleViewport = scale.checked;
    viewer.background = 'rgb(11, 15, 20)';
    viewer.addEventListener('connect', () => {
      if (rfb !== viewer) return;
      retries = 0;
      setState('connected', 'connected');
      viewer.focus();
    });
    viewer.addEventListener('desktopname', (e) => {
      status.title = `desktop: ${e.detail.name}`;
    });
    viewer.addEventListener('securityfailure', (e) => {
      if (rfb === viewer) fail(`The VNC server refused the connection: ${e.detail.reason || e.detail.status}`, 'reconnect');
    });
  }

  function closed(code, reason) {
    teardown();
    root.dataset.closeCode = String(code);
    const kind = retryKind(code);
    if (kind === 'auto' && retries < AUTO_RETRIES && !destroyed) {
      retries += 1;
      const seconds = 2 ** (retries - 1);
      setState('reconnecting', `${closeText(code, reason)} Reconnecting in ${seconds} s…`);
      retryTimer = setTimeout(() => connect(false), seconds * 1000);
      return;
    }
    fail(closeText(code, reason), kind);
  }

  function fail(text, kind) {
    setState('disconnected', 'disconnected');
    error.textContent = text;
    error.hidden = false;
    takeover.hidden = kind !== 'takeover';
  }

  connect(false);
  return {
    el: root,
    destroy() {
      destroyed = true;
      clearTimeout(retryTimer);
      teardown();
    },
  };
}

// The only way the dashboard builds DOM. Strings always become Text nodes or attribute values,
// never markup: everything a guest sends (process names, command output, service descriptions)
// passes through here, so there is no HTML parser on the data path at all.

/** Properties set as DOM properties rather than attributes (form state). */
const PROPERTIES = new Set(['value', 'checked', 'disabled', 'selected', 'readOnly', 'title']);

/**
 * Create an element: h('td', { class: 'num' }, '42 %').
 * `on<Event>` props add listeners; `dataset` merges data-* attributes; children are Nodes,
 * strings/numbers (→ Text nodes), arrays, or null/false (skipped).
 */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (PROPERTIES.has(key)) el[key] = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

/** Append children (same rules as `h`). */
export function append(el, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** Replace all children of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/** A button that asks for a second click before running a destructive action. */
export function confirmButton(label, confirmLabel, action, props = {}) {
  let armed = null;
  const button = h('button', {
    type: 'button',
    ...props,
    onClick: async () => {
      if (!armed) {
        button.textContent = confirmLabel;
        button.classList.add('armed');
        armed = setTimeout(() => disarm(), 4000);
        return;
      }
      disarm();
      await action();
    },
  }, label);
  function disarm() {
    clearTimeout(armed);
    armed = null;
    button.textContent = label;
    button.classList.remove('armed');
  }
  return button;
}

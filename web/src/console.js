// The console's pure parts: what a close code means to a person, and the WebSocket URL of a
// ticket. The codes are the server's (crates/console, docs/console.md).

/** Close code → what the Console tab says, and whether trying again can help. */
export const CLOSE_CODES = {
  4401: { text: 'The console ticket was unknown or had expired.', retry: 'reconnect' },
  4410: { text: 'The console ticket was already used.', retry: 'reconnect' },
  4421: { text: 'The console ticket was for another VM.', retry: 'reconnect' },
  4403: { text: 'You are not allowed to open this console.', retry: null },
  4404: { text: 'This VM has no console.', retry: null },
  4409: { text: 'The VM is not running.', retry: 'reconnect' },
  4423: { text: 'This console is already open in another window or tab.', retry: 'takeover' },
  4503: { text: 'The console service is unavailable right now.', retry: 'reconnect' },
  4000: { text: 'The VM closed the console (it stopped or restarted).', retry: 'reconnect' },
  4001: { text: 'The console was taken over in another window or tab.', retry: 'takeover' },
  4002: { text: 'Your access to this console ended.', retry: null },
  4003: { text: 'The connection went quiet and was closed.', retry: 'auto' },
  1000: { text: 'The console was closed.', retry: 'reconnect' },
  1001: { text: 'The server is restarting.', retry: 'auto' },
  1003: { text: 'The console received data it does not understand.', retry: 'reconnect' },
  1006: { text: 'The connection to the server was lost.', retry: 'auto' },
};

/**
 * What to show for a close: the known text (with the server's reason when it adds
 * something), or the reason and code of an unknown one.
 */
export function closeText(code, reason) {
  const known = CLOSE_CODES[code];
  const detail = String(reason ?? '').trim();
  if (known) return detail ? `${known.text} (${detail}, ${code})` : `${known.text} (${code})`;
  return detail ? `Console closed: ${detail} (${code})` : `Console closed (${code})`;
}

/** 'auto' (try again by itself), 'reconnect' (offer a button), 'takeover', or null. */
export function retryKind(code) {
  return code in CLOSE_CODES ? CLOSE_CODES[code].retry : 'reconnect';
}

/** ws(s)://host/console/<vm>?ticket=… for the ticket's `path`, plus `takeover=1` if asked. */
export function consoleUrl(location, path, takeover = false) {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const url = new URL(path, `${scheme}://${location.host}`);
  if (takeover) url.searchParams.set('takeover', '1');
  return url.toString();
}

// The Console tab against a REAL VM: `infinibay serve` already running in front of the e2e QEMU
// guest (its VNC server on `vnc-<uuid>.sock`), driven in headless Debian Chromium by
// playwright-core. The Rust test that boots the guest and the server runs this
// (crates/console/tests/qemu.rs), so that one booted guest serves every console test.
//
//   CONSOLE_TEST_URL=http://127.0.0.1:PORT CONSOLE_TEST_USER=admin CONSOLE_TEST_PASSWORD=… \
//   CONSOLE_TEST_VM=<uuid> node web/tests/console.mjs
//
// Passes when the tab connects, the guest's screen on noVNC's canvas is not blank, and it
// changes after typing into the guest's console (a root shell on tty1). Screenshots go to
// WEB_TEST_OUTPUT (default target/web-test-output/console). Exit 0 passed, 1 failed.
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const need = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is required`);
  return value;
};
const base = need('CONSOLE_TEST_URL');
const user = { username: need('CONSOLE_TEST_USER'), password: need('CONSOLE_TEST_PASSWORD') };
const vmId = need('CONSOLE_TEST_VM');
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const OUT = resolve(process.env.WEB_TEST_OUTPUT ?? join(repo, 'target/web-test-output/console'));
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** What noVNC's canvas shows: how many distinct colours and a fingerprint of its pixels. */
function canvasSummary() {
  const canvas = document.querySelector('[data-testid=console-screen] canvas');
  if (!canvas || canvas.width === 0 || canvas.height === 0) return null;
  const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
  const colours = new Set();
  let hash = 2166136261;
  for (let i = 0; i < data.length; i += 4) {
    const rgb = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2];
    if (colours.size < 64) colours.add(rgb);
    hash = Math.imul(hash ^ rgb, 16777619) >>> 0;
  }
  return { width: canvas.width, height: canvas.height, colours: colours.size, hash };
}

async function until(what, fn, timeoutMs, everyMs = 250) {
  const started = Date.now();
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() - started > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

async function main() {
  rmSync(OUT, { recursive: true, force: true });
  mkdirSync(OUT, { recursive: true });
  const profile = mkdtempSync(join(tmpdir(), 'infinibay-console-test-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1400, height: 1000 },
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.setDefaultTimeout(30000);
  try {
    await page.goto(`${base}/`);
    await page.waitForSelector('form.login');
    await page.fill('input[name=username]', user.username);
    await page.fill('input[name=password]', user.password);
    await page.click('form.login button[type=submit]');
    await page.waitForSelector('table[data-table=vms]');

    await page.goto(`${base}/#/vm/${encodeURIComponent(vmId)}/console`);
    await page.waitForSelector('[data-testid=console][data-state=connected]', { timeout: 60000 });
    // QEMU repaints on its display timer: wait for a screen with text on it.
    const before = await until('the guest\'s screen on the canvas', async () => {
      const s = await page.evaluate(canvasSummary);
      return s && s.colours > 1 ? s : null;
    }, 60000);
    await page.screenshot({ path: join(OUT, '1-console.png') });
    console.log(`screen ${before.width}x${before.height}, ${before.colours} colours`);

    // Type into the guest's console (noVNC has the keyboard focus once connected).
    await page.click('[data-testid=console-screen] canvas');
    await page.keyboard.type('echo typed-through-the-console', { delay: 40 });
    await page.keyboard.press('Enter');
    const after = await until('the screen to change after typing', async () => {
      const s = await page.evaluate(canvasSummary);
      return s && s.hash !== before.hash ? s : null;
    }, 60000);
    await page.screenshot({ path: join(OUT, '2-after-typing.png') });
    console.log(`screen changed after typing (${after.colours} colours)`);
    const state = await page.getAttribute('[data-testid=console]', 'data-state');
    if (state !== 'connected') throw new Error(`console state ${state} after typing`);
    if (errors.length) throw new Error(`page errors: ${errors.join('; ')}`);
    console.log('ok   the Console tab shows the guest\'s screen and it changes after typing');
    return 0;
  } catch (e) {
    await page.screenshot({ path: join(OUT, 'FAIL.png') }).catch(() => {});
    console.log(`FAIL console tab: ${e.message}`);
    return 1;
  } finally {
    await context.close().catch(() => {});
    rmSync(profile, { recursive: true, force: true });
  }
}

process.exitCode = await main();

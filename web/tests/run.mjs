// Browser tests of the dashboard against the REAL server: `infinibay serve` in a temp data dir,
// one real `infiniservice --listen-unix` agent (real numbers, real processes, raw commands
// allowed) and one simulated VM from `infinibay-sim`, driven in headless Debian Chromium by
// playwright-core. Screenshots and the servers' logs go to target/web-test-output/.
//
//   node web/tests/run.mjs        (scripts/test-web builds the binaries and the web first)
//
// Environment: INFINIBAY_BIN, INFINIBAY_SIM_BIN, INFINISERVICE_BIN (default target/debug/…),
// CHROMIUM (default /usr/bin/chromium), WEB_TEST_OUTPUT (default target/web-test-output).
// Exit codes: 0 all passed, 1 a scenario failed, 2 the API is not there yet.
import { spawn } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes, randomUUID } from 'node:crypto';
import { chromium } from 'playwright-core';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const bin = (env, name) => process.env[env] ?? join(repo, 'target/debug', name);
const BINS = {
  host: bin('INFINIBAY_BIN', 'infinibay'),
  sim: bin('INFINIBAY_SIM_BIN', 'infinibay-sim'),
  agent: bin('INFINISERVICE_BIN', 'infiniservice'),
};
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const OUT = resolve(process.env.WEB_TEST_OUTPUT ?? join(repo, 'target/web-test-output'));
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
/** The hostile process name of the XSS scenario. */
const PAYLOAD = '<img src=x onerror=alert(1)>';
const ADMIN = { username: 'admin', password: `pw-${randomBytes(9).toString('base64url')}` };
const ALICE = { username: 'alice', password: `pw-${randomBytes(9).toString('base64url')}` };

const children = [];
const tmp = mkdtempSync(join(tmpdir(), 'infinibay-web-test-'));
let browserContexts = [];

class NotAvailable extends Error {}
/** Thrown inside `until` to stop waiting at once (a child died). */
class Fatal extends Error {}

// ---- processes ---------------------------------------------------------------------------

function start(name, file, args, options = {}) {
  const log = createWriteStream(join(OUT, `${name}.log`));
  const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
  // Both streams share one file: neither may end it for the other.
  child.stdout.pipe(log, { end: false });
  child.stderr.pipe(log, { end: false });
  child.name = name;
  child.exited = new Promise((res) => child.on('exit', (code, signal) => res({ code, signal })));
  child.on('error', (e) => log.write(`spawn failed: ${e.message}\n`));
  children.push(child);
  return child;
}

function stopAll() {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) {
      try {
        child.kill('SIGTERM');
      } catch {
        // already gone
      }
    }
  }
}

async function cleanup() {
  await Promise.all(browserContexts.map((c) => c.close().catch(() => {})));
  stopAll();
  await Promise.race([Promise.all(children.map((c) => c.exited)), sleep(5000)]);
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  rmSync(tmp, { recursive: true, force: true });
}

process.on('exit', () => {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
});
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, async () => {
    await cleanup();
    process.exit(130);
  });
}

function freePort() {
  return new Promise((res, rej) => {
    const server = createServer();
    server.once('error', rej);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => res(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, fn, timeoutMs = 30000, everyMs = 250) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    try {
      const value = await fn();
      if (value) return value;
    } catch (e) {
      if (e instanceof Fatal || e instanceof NotAvailable) throw e;
      last = e;
    }
    await sleep(everyMs);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
}

// ---- the API from node (setup and checks) ---------------------------------------------------

let base;

async function graphql(query, variables = {}, token) {
  const response = await fetch(`${base}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify({ query, variables }),
  });
  const text = await response.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    throw new NotAvailable(`POST /graphql answered HTTP ${response.status}: ${text.slice(0, 200)}`);
  }
  if (body.errors?.length) throw new Error(`GraphQL: ${body.errors.map((e) => `${e.extensions?.code}: ${e.message}`).join('; ')}`);
  return body.data;
}

async function adminToken() {
  const { login } = await graphql(
    'mutation($u: String!, $p: String!) { login(username: $u, password: $p) { token } }',
    { u: ADMIN.username, p: ADMIN.password },
  );
  return login.token;
}

async function vmsAsAdmin(token) {
  return (await graphql('{ vms { id name status owner { username } } }', {}, token)).vms;
}

// ---- the world ----------------------------------------------------------------------------

async function startWorld() {
  for (const [name, path] of Object.entries(BINS)) {
    if (!existsSync(path)) throw new Error(`${name} binary missing: ${path} (run scripts/test-web, which builds it)`);
  }
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  const dataDir = join(tmp, 'data');
  const socketDir = join(tmp, 'sockets');
  mkdirSync(dataDir);
  mkdirSync(socketDir);

  // The first start with an empty database creates the ADMIN `admin` with this password.
  const host = start('infinibay', BINS.host, ['serve', '--listen', `127.0.0.1:${port}`, '--data-dir', dataDir, '--socket-dir', socketDir], {
    // /metrics on a free port of its own (not the default 127.0.0.1:9464, which another host may
    // hold); GraphiQL on, for its scenario.
    env: { ...process.env, INFINIBAY_ADMIN_PASSWORD: ADMIN.password, INFINIBAY_API__METRICS_LISTEN: '127.0.0.1:0', INFINIBAY_API__GRAPHIQL: 'true', RUST_LOG: process.env.RUST_LOG ?? 'info' },
  });
  await until('infinibay serve to answer /healthz', async () => {
    if (host.exitCode !== null) {
      await sleep(300); // let its log reach the file
      const log = readFileSync(join(OUT, 'infinibay.log'), 'utf8');
      if (/unknown field `admin_password`/.test(log)) {
        throw new NotAvailable('`infinibay serve` does not accept INFINIBAY_ADMIN_PASSWORD (the first admin) yet');
      }
      throw new Fatal(`infinibay serve exited with ${host.exitCode}:\n${log.split('\n').slice(-15).join('\n')}`);
    }
    return (await fetch(`${base}/healthz`)).ok;
  }, 60000);

  // The API must be there; without it nothing here can run.
  try {
    await graphql('{ __typename }');
  } catch (e) {
    if (e instanceof NotAvailable) throw e;
  }
  const page = await fetch(`${base}/`);
  const html = await page.text();
  if (page.status === 404) throw new NotAvailable('GET / answers 404: the host does not mount the dashboard yet (infinibay_dashboard::mount(api_router))');
  if (page.status === 503) throw new Error('GET / answers 503: the binary was built without web/dist (scripts/build-web, then cargo build -p infinibay)');
  if (!html.includes('/assets/app-')) throw new Error(`GET / is not the dashboard: ${html.slice(0, 200)}`);

  // A real agent on this machine: its processes include one named PAYLOAD (argv[0]; the
  // kernel's 15-byte comm is the start of it).
  const agentId = randomUUID();
  const agentConfig = join(tmp, 'agent.toml');
  writeFileSync(agentConfig, [
    'collection_interval = 1',
    '[policy]', 'allow_unsafe = true',
    '[limits]', 'process_top_n = 5000', 'inventory_interval = 2', '',
  ].join('\n'));
  const binDir = join(tmp, 'bin');
  mkdirSync(binDir);
  const hostileExe = join(binDir, PAYLOAD);
  symlinkSync('/bin/sleep', hostileExe);
  start('hostile-process', hostileExe, ['3600'], { argv0: PAYLOAD });
  start('infiniservice', BINS.agent, ['--listen-unix', join(socketDir, `vm-${agentId}.sock`), '--config', agentConfig], {
    env: { ...process.env, INFINIBAY_VM_ID: agentId },
  });

  const token = await adminToken();
  const agentVm = await until('the agent VM in `vms`', async () =>
    (await vmsAsAdmin(token)).find((vm) => vm.id.includes(agentId) || vm.name.includes(agentId) || vm.id === agentId), 30000);
  return { token, agentVm, socketDir };
}

/** Start one simulated VM; resolves with its uuid once its socket exists. */
async function startSimulatedVm(socketDir) {
  const before = new Set(readdirSync(socketDir));
  const seed = String(Math.floor(Math.random() * 1e9));
  start('infinibay-sim', BINS.sim, ['--vms', '1', '--interval', '1', '--profile', 'typical', '--seed', seed, '--socket-dir', socketDir, '--stats-every', '0']);
  const file = await until('the simulated VM socket', () => readdirSync(socketDir).find((f) => !before.has(f) && /^vm-.*\.sock$/.test(f)), 20000);
  return file.replace(/^vm-/, '').replace(/\.sock$/, '');
}

// ---- the browser --------------------------------------------------------------------------

async function openBrowser(label) {
  const userDataDir = mkdtempSync(join(tmp, `chromium-${label}-`));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1400, height: 900 },
  });
  browserContexts.push(context);
  const page = context.pages()[0] ?? (await context.newPage());
  const dialogs = [];
  const errors = [];
  page.on('dialog', async (dialog) => {
    dialogs.push(`${dialog.type()}: ${dialog.message()}`);
    await dialog.dismiss().catch(() => {});
  });
  page.on('pageerror', (e) => errors.push(e.message));
  page.setDefaultTimeout(20000);
  return { context, page, dialogs, errors };
}

async function login(page, who) {
  await page.goto(`${base}/`);
  await page.waitForSelector('form.login');
  await page.fill('input[name=username]', who.username);
  await page.fill('input[name=password]', who.password);
  await page.click('form.login button[type=submit]');
  await page.waitForSelector('table[data-table=vms]');
  const shown = await page.textContent('[data-testid=current-user]');
  if (shown !== who.username) throw new Error(`header shows user ${shown}, expected ${who.username}`);
}

let shotNumber = 0;
async function shot(page, name) {
  shotNumber += 1;
  const file = join(OUT, `${String(shotNumber).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

const rowSelector = (table, key) => `table[data-table=${table}] tr[data-key="${key}"]`;

// ---- scenarios ----------------------------------------------------------------------------

const results = [];
async function scenario(name, fn) {
  const started = Date.now();
  try {
    await fn();
    results.push({ name, ok: true, ms: Date.now() - started });
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (e) {
    results.push({ name, ok: false, ms: Date.now() - started, error: e.message });
    console.log(`FAIL ${name}: ${e.message}`);
    for (const ctx of browserContexts) {
      for (const p of ctx.pages()) await p.screenshot({ path: join(OUT, `FAIL-${name.replace(/\W+/g, '-')}.png`), fullPage: true }).catch(() => {});
    }
  }
}

async function main() {
  rmSync(OUT, { recursive: true, force: true });
  mkdirSync(OUT, { recursive: true });
  let world;
  try {
    world = await startWorld();
  } catch (e) {
    if (e instanceof NotAvailable) {
      console.error(`web tests: API not available yet: ${e.message}\n(the dashboard's browser tests need docs/api.md served by \`infinibay serve\`)`);
      return 2;
    }
    throw e;
  }
  const { token, agentVm, socketDir } = world;
  const admin = await openBrowser('admin');
  let simVmId;
  let aliceBrowser;

  await scenario('an admin logs in and sees the VM list', async () => {
    await admin.page.goto(`${base}/`);
    await admin.page.waitForSelector('form.login');
    await shot(admin.page, 'login');
    await login(admin.page, ADMIN);
    await admin.page.waitForSelector(rowSelector('vms', agentVm.id));
    await shot(admin.page, 'vm-list');
  });

  await scenario('a simulated VM comes online in the list', async () => {
    const uuid = await startSimulatedVm(socketDir);
    const vm = await until('the simulated VM in `vms`', async () => (await vmsAsAdmin(token)).find((v) => v.id.includes(uuid) || v.name.includes(uuid)), 30000);
    simVmId = vm.id;
    // The open list learns of it by itself (lifecycle event, vm:online or its periodic refresh).
    await admin.page.waitForSelector(`${rowSelector('vms', simVmId)} .badge-online`, { timeout: 30000 });
    await shot(admin.page, 'vm-list-with-simulated-vm');
    // Filter by its name, then clear; sort by CPU.
    const name = await admin.page.textContent(`${rowSelector('vms', simVmId)} a.vm-link`);
    await admin.page.fill('input.filter', name);
    await until('the filter to leave only the simulated VM', async () => {
      const keys = await admin.page.$$eval('table[data-table=vms] tbody tr[data-key]', (rows) => rows.map((r) => r.dataset.key));
      return keys.length === 1 && keys[0] === simVmId;
    }, 5000);
    await admin.page.fill('input.filter', '');
    await admin.page.click('table[data-table=vms] th:has-text("CPU") button');
    await admin.page.waitForSelector('table[data-table=vms] th[aria-sort=descending]:has-text("CPU")');
  });

  await scenario('the VM page chart gains points live', async () => {
    if (!simVmId) throw new Error('no simulated VM');
    await admin.page.click(`${rowSelector('vms', simVmId)} a.vm-link`);
    const cpu = '[data-chart=cpu]';
    await admin.page.waitForSelector(`${cpu} canvas`);
    const attr = async (name) => admin.page.getAttribute(cpu, name);
    await until('the CPU chart to have points', async () => Number(await attr('data-points')) > 0, 20000);
    // Live samples over Socket.IO (metricsUpdate after subscribe:vm) extend it.
    const live = Number(await attr('data-live-points'));
    const lastAt = await attr('data-last-at');
    await until('the CPU chart to gain two live points', async () => Number(await attr('data-live-points')) >= live + 2, 20000);
    const newest = await attr('data-last-at');
    if (!(Date.parse(newest) > Date.parse(lastAt || 0))) throw new Error(`newest point ${newest} is not newer than ${lastAt}`);
    await admin.page.waitForSelector('[data-chart=cores] canvas');
    await sleep(1500);
    await shot(admin.page, 'vm-charts');
    // Another range reads the history again (vmMetrics with from/to/maxPoints).
    await admin.page.click('button[data-range="24h"]');
    await admin.page.waitForSelector('button[data-range="24h"].active');
    await until('the 24 h history', async () => /of history/.test(await admin.page.textContent('[data-testid=history-status]')), 20000);
  });

  await scenario('every chart on the VM page moves forward with each metricsUpdate', async () => {
    if (!simVmId) throw new Error('no simulated VM');
    // Back to the 15-minute range: its history load is what the live points extend.
    await admin.page.click('button[data-range="15m"]');
    await admin.page.waitForSelector('button[data-range="15m"].active');
    await until('the 15 min history', async () => /of history/.test(await admin.page.textContent('[data-testid=history-status]')), 20000);
    const charts = ['cpu', 'memory', 'disk', 'network', 'cores'];
    const lastAt = (name) => admin.page.getAttribute(`[data-chart=${name}]`, 'data-last-at');
    for (let round = 1; round <= 2; round += 1) {
      const before = {};
      for (const name of charts) before[name] = Date.parse((await lastAt(name)) || 0);
      for (const name of charts) {
        await until(`the ${name} chart's last point to move forward (round ${round})`,
          async () => Date.parse((await lastAt(name)) || 0) > before[name], 20000);
      }
    }
  });

  await scenario("a VM's alerts, agent errors, collection settings and name show and change on its page", async () => {
    if (!simVmId) throw new Error('no simulated VM');
    const token = await adminToken();
    await admin.page.goto(`${base}/#/vm/${encodeURIComponent(simVmId)}/health`);
    await admin.page.waitForSelector('table[data-table=alerts]');
    await admin.page.waitForSelector('table[data-table=vm-errors]');
    // An alert raised now (CPU above a tiny threshold at once) appears live (alert:raised).
    const { createAlertRule: rule } = await graphql(
      'mutation($id: ID) { createAlertRule(input: {vmId: $id, kind: CPU, threshold: 0.01, durationSeconds: 0}) { id } }',
      { id: simVmId }, token);
    try {
      await until('the raised alert in the alerts table', async () =>
        (await admin.page.$$('table[data-table=alerts] tbody tr[data-key]')).length > 0, 15000);
      await until('the alert shown open', async () =>
        /open/.test(await admin.page.textContent('table[data-table=alerts] tbody')), 5000);
    } finally {
      await graphql('mutation($id: ID!) { deleteAlertRule(id: $id) }', { id: rule.id }, token);
    }
    // Deleting the rule resolves its alert, live (alert:resolved).
    await until('the alert shown resolved', async () =>
      /resolved/.test(await admin.page.textContent('table[data-table=alerts] tbody')), 15000);
    // Collection settings: set from the page, stored, read back.
    await admin.page.fill('[data-testid=telemetry-form] input[name=interval]', '3');
    await admin.page.click('[data-testid=telemetry-form] button[type=submit]');
    await until('the settings saved', async () =>
      /3 s|not applied yet/.test(await admin.page.textContent('[data-testid=telemetry-status]')), 15000);
    const { vmTelemetry } = await graphql('query($id: ID!) { vmTelemetry(vmId: $id) { interval collectors } }', { id: simVmId }, token);
    if (vmTelemetry?.interval !== 3) throw new Error(`stored settings: ${JSON.stringify(vmTelemetry)}`);
    // A display name chosen here shows in the header.
    await admin.page.fill('[data-testid=rename-form] input[name=name]', 'browser-named VM');
    await admin.page.click('[data-testid=rename-form] button[type=submit]');
    await until('the new name in the header', async () =>
      (await admin.page.textContent('[data-testid=vm-name]')) === 'browser-named VM', 10000);
    // Back to a 1 s interval: later scenarios count on live samples.
    await graphql('mutation($id: ID!) { setVmTelemetry(vmId: $id, interval: 1, collectors: ["system_metrics", "process_snapshot", "port_usage", "application_usage", "service_inventory"]) { applied } }', { id: simVmId }, token);
    await shot(admin.page, 'vm-health');
  });

  await scenario('an admin creates and deletes an alert rule on the alert rules page; a bad threshold is refused', async () => {
    await admin.page.click('header nav a[href="#/admin/alerts"]');
    await admin.page.waitForSelector('[data-testid=rule-form]');
    const rows = async () => (await admin.page.$$('table[data-table=alert-rules] tbody tr[data-key]')).length;
    const before = await rows();
    await admin.page.selectOption('[data-testid=rule-form] select[name=kind]', 'CPU');
    await admin.page.fill('[data-testid=rule-form] input[name=threshold]', '150');
    await admin.page.click('[data-testid=rule-form] button[type=submit]');
    await until('the refusal', async () => /INVALID/.test(await admin.page.textContent('[data-testid=rules-flash]')), 10000);
    if ((await rows()) !== before) throw new Error('a refused rule appeared in the table');
    await admin.page.selectOption('[data-testid=rule-form] select[name=kind]', 'MEMORY');
    await admin.page.fill('[data-testid=rule-form] input[name=threshold]', '99.5');
    await admin.page.click('[data-testid=rule-form] button[type=submit]');
    await until('the new rule in the table', async () => (await rows()) === before + 1, 10000);
    await shot(admin.page, 'alert-rules');
    const del = 'table[data-table=alert-rules] tbody tr[data-key] button';
    await admin.page.click(del);
    await admin.page.click(del);
    await until('the rule deleted', async () => (await rows()) === before, 10000);
  });

  await scenario('a service restart runs from the services table', async () => {
    if (!simVmId) throw new Error('no simulated VM');
    const page = admin.page;
    await page.goto(`${base}/#/vm/${encodeURIComponent(simVmId)}/services`);
    const firstRow = 'table[data-table=services] tbody tr[data-key]';
    await page.waitForSelector(firstRow, { timeout: 30000 });
    const service = await page.getAttribute(firstRow, 'data-key');
    // The simulator's first service (service-000) is disabled: the Start column shows the
    // agent's startType.
    const start = (await page.textContent(`${firstRow} td[data-col=start]`))?.trim();
    if (start !== 'disabled') throw new Error(`start type of ${service}: ${JSON.stringify(start)}`);
    const restart = `${firstRow} td[data-col=actions] button:has-text("Restart")`;
    await page.click(restart);
    await page.waitForSelector(`${firstRow} td[data-col=actions] button.armed`);
    await page.click(`${firstRow} td[data-col=actions] button.armed`);
    await page.waitForFunction((name) => document.querySelector('[data-testid=command-result] strong')?.textContent === `restart ${name}`, service, { timeout: 40000 });
    await shot(page, 'service-restart');
  });

  await scenario('a command runs and its output, exit code and duration show', async () => {
    const page = admin.page;
    await page.goto(`${base}/#/vm/${encodeURIComponent(agentVm.id)}/command`);
    await page.waitForSelector('form.command-box');
    const marker = `infinibay-web-test-${randomBytes(4).toString('hex')}`;
    await page.click('button[data-mode=raw]');
    await page.fill('input[name=rawCommand]', `echo ${marker}`);
    await page.click('form.command-box button[type=submit]');
    await page.waitForSelector('[data-testid=command-result] [data-stream=stdout]', { timeout: 40000 });
    const stdout = await page.textContent('[data-stream=stdout]');
    if (stdout.trim() !== marker) throw new Error(`stdout is ${JSON.stringify(stdout)}, expected ${marker}`);
    const exit = await page.textContent('[data-testid=exit-code]');
    if (exit !== 'exit code 0') throw new Error(`exit code shows ${exit}`);
    const duration = await page.textContent('[data-testid=duration]');
    if (!/\d+(\.\d+)? m?s$/.test(duration)) throw new Error(`duration shows ${duration}`);
    // A safe action on the same VM: structured data, rendered as text.
    await page.click('button[data-mode=safe]');
    await page.selectOption('select[name=action]', 'OsInfo');
    await page.click('form.command-box button[type=submit]');
    await page.waitForFunction(() => document.querySelector('[data-testid=command-result] strong')?.textContent === 'OsInfo', null, { timeout: 40000 });
    await shot(page, 'command-output');
  });

  await scenario('a process named <img src=x onerror=alert(1)> shows as text and opens no dialog', async () => {
    const page = admin.page;
    await page.goto(`${base}/#/vm/${encodeURIComponent(agentVm.id)}/processes`);
    await page.waitForSelector('table[data-table=processes]');
    await page.fill('input.filter', 'onerror');
    const row = 'table[data-table=processes] tbody tr[data-key]';
    await until('the hostile process in the process table', async () => {
      const texts = await page.$$eval(`${row} td[data-col=cmd]`, (cells) => cells.map((c) => c.textContent));
      return texts.some((t) => t.startsWith(PAYLOAD));
    }, 40000);
    const names = await page.$$eval(`${row} td[data-col=name]`, (cells) => cells.map((c) => c.textContent));
    if (!names.some((n) => PAYLOAD.startsWith(n) && n.length >= 10)) throw new Error(`process names shown: ${JSON.stringify(names)}`);
    const images = await page.$$eval('table[data-table=processes] img', (imgs) => imgs.length);
    if (images) throw new Error(`${images} <img> elements inside the process table: the name was parsed as HTML`);
    await sleep(1000); // an onerror handler would have fired by now
    await shot(page, 'processes-hostile-name');
    if (admin.dialogs.length) throw new Error(`dialogs opened: ${admin.dialogs.join(' | ')}`);
  });

  await scenario('an admin creates a user and gives them a VM', async () => {
    const page = admin.page;
    await page.goto(`${base}/#/admin/users`);
    await page.waitForSelector('form.create-user');
    await page.fill('form.create-user input[name=username]', ALICE.username);
    await page.fill('form.create-user input[name=password]', ALICE.password);
    await page.click('form.create-user button[type=submit]');
    await page.waitForSelector(`table[data-table=users] td[data-col=name]:text-is("${ALICE.username}")`);
    await shot(page, 'admin-users');
    await page.goto(`${base}/#/admin/vms`);
    const row = rowSelector('ownership', agentVm.id);
    await page.waitForSelector(`${row} select option:text-matches("^${ALICE.username} ")`, { state: 'attached' });
    const aliceId = await page.$eval(`${row} select`, (select, name) => [...select.options].find((o) => o.textContent.startsWith(`${name} `))?.value, ALICE.username);
    await page.selectOption(`${row} select`, aliceId);
    await page.click(`${row} button[type=submit]`);
    await page.waitForSelector(`${row} td[data-col=owner]:text-is("${ALICE.username}")`);
    await shot(page, 'admin-ownership');
  });

  await scenario('a USER sees only their own VM', async () => {
    const alice = await openBrowser('alice');
    await login(alice.page, ALICE);
    await alice.page.waitForSelector(rowSelector('vms', agentVm.id));
    await sleep(1500);
    const keys = await alice.page.$$eval('table[data-table=vms] tbody tr[data-key]', (rows) => rows.map((r) => r.dataset.key));
    if (keys.length !== 1 || keys[0] !== agentVm.id) throw new Error(`alice sees ${JSON.stringify(keys)}`);
    if (await alice.page.$('a[href="#/admin/users"]')) throw new Error('a USER sees the admin navigation');
    await shot(alice.page, 'user-vm-list');
    if (simVmId) {
      await alice.page.goto(`${base}/#/vm/${encodeURIComponent(simVmId)}`);
      await alice.page.waitForSelector('.vm-head h1:text-is("VM not found")');
    }
    // Raw commands are hidden from a USER without unsafe_commands.
    await alice.page.goto(`${base}/#/vm/${encodeURIComponent(agentVm.id)}/command`);
    await alice.page.waitForSelector('form.command-box');
    if (!(await alice.page.isDisabled('button[data-mode=raw]'))) throw new Error('raw commands are offered to a USER without unsafe_commands');
    await shot(alice.page, 'user-command-box');
    aliceBrowser = alice;
  });

  await scenario('the server refuses a raw command of a USER without the permission and the page shows FORBIDDEN', async () => {
    if (!aliceBrowser) throw new Error('alice is not logged in');
    const page = aliceBrowser.page;
    // A stale page that believes it has the permission: only the server's answer counts.
    await page.evaluate(() => {
      const user = JSON.parse(localStorage.getItem('infinibay.user'));
      user.permissions = ['unsafe_commands'];
      localStorage.setItem('infinibay.user', JSON.stringify(user));
    });
    await page.evaluate(() => { location.hash = '#/vms'; });
    await page.waitForSelector('table[data-table=vms]');
    await page.evaluate((id) => { location.hash = `#/vm/${encodeURIComponent(id)}/command`; }, agentVm.id);
    await page.waitForSelector('button[data-mode=raw]:not([disabled])');
    await page.click('button[data-mode=raw]');
    await page.fill('input[name=rawCommand]', 'echo should-not-run');
    await page.click('form.command-box button[type=submit]');
    await page.waitForSelector('[data-testid=command-result][data-error-code=FORBIDDEN]', { timeout: 30000 });
    await shot(page, 'user-forbidden');
  });

  await scenario('after an admin grants unsafe_commands the USER runs a raw command', async () => {
    if (!aliceBrowser) throw new Error('alice is not logged in');
    const page = admin.page;
    await page.goto(`${base}/#/admin/users`);
    const aliceRow = `table[data-table=users] tr:has(td[data-col=name]:text-is("${ALICE.username}"))`;
    await page.click(`${aliceRow} td[data-col=perm] button`);
    await page.waitForSelector(`${aliceRow} td[data-col=perm]:text-is("unsafe_commands")`);
    // A reload re-reads `me`, so the page learns of the permission.
    const alice = aliceBrowser.page;
    await alice.reload();
    await alice.waitForSelector('button[data-mode=raw]:not([disabled])');
    const marker = `granted-${randomBytes(4).toString('hex')}`;
    await alice.click('button[data-mode=raw]');
    await alice.fill('input[name=rawCommand]', `echo ${marker}`);
    await alice.click('form.command-box button[type=submit]');
    await alice.waitForSelector('[data-testid=command-result] [data-stream=stdout]', { timeout: 40000 });
    const stdout = await alice.textContent('[data-stream=stdout]');
    if (stdout.trim() !== marker) throw new Error(`stdout is ${JSON.stringify(stdout)}`);
  });

  await scenario("changing a USER's password ends her open session", async () => {
    if (!aliceBrowser) throw new Error('alice is not logged in');
    const alice = aliceBrowser.page;
    await alice.goto(`${base}/#/vms`);
    await alice.waitForSelector(rowSelector('vms', agentVm.id));
    const page = admin.page;
    await page.goto(`${base}/#/admin/users`);
    const aliceRow = `table[data-table=users] tr:has(td[data-col=name]:text-is("${ALICE.username}"))`;
    await page.fill(`${aliceRow} td[data-col=password] input`, `new-${ALICE.password}`);
    await page.click(`${aliceRow} td[data-col=password] button`);
    await page.waitForSelector('.result-slot .notice');
    // The server disconnects her socket / refuses her token; the page returns to the login.
    await alice.waitForSelector('form.login', { timeout: 40000 });
    await shot(alice, 'user-session-ended');
  });

  await scenario('GraphiQL loads only from this server under the dashboard CSP and gets the schema', async () => {
    const { page, errors } = admin;
    const violations = [];
    const elsewhere = [];
    const onConsole = (m) => { if (/Content Security Policy/i.test(m.text())) violations.push(m.text()); };
    const onRequest = (r) => { if (!r.url().startsWith(base) && !r.url().startsWith('data:')) elsewhere.push(r.url()); };
    page.on('console', onConsole);
    page.on('request', onRequest);
    try {
      const errorsBefore = errors.length;
      const schemaAnswer = page.waitForResponse((r) => r.url() === `${base}/graphql` && r.request().method() === 'POST'
        && (r.request().postData() ?? '').includes('IntrospectionQuery'));
      const response = await page.goto(`${base}/graphql`);
      const csp = response.headers()['content-security-policy'] ?? '';
      const dashboardCsp = (await fetch(`${base}/`)).headers.get('content-security-policy');
      if (csp !== dashboardCsp) throw new Error(`GraphiQL's CSP ${JSON.stringify(csp)} is not the dashboard's ${JSON.stringify(dashboardCsp)}`);
      await page.waitForSelector('.graphiql-container');
      // It loads the schema (within the server's depth limit).
      const schema = await (await schemaAnswer).json();
      if (!schema?.data?.__schema) throw new Error(`GraphiQL's schema query was refused: ${JSON.stringify(schema.errors ?? schema).slice(0, 300)}`);
      // Its fonts are files from this origin (the CSP allows no data: fonts).
      const fonts = await page.evaluate(async () => { await document.fonts.ready; return [...document.fonts].filter((f) => f.status === 'loaded').length; });
      await shot(page, 'graphiql');
      if (!fonts) throw new Error('no font of GraphiQL loaded');
      if (violations.length) throw new Error(`CSP violations: ${violations.join(' | ')}`);
      if (elsewhere.length) throw new Error(`requests elsewhere: ${elsewhere.join(', ')}`);
      if (errors.length > errorsBefore) throw new Error(`page errors: ${errors.slice(errorsBefore).join(' | ')}`);
    } finally {
      page.off('console', onConsole);
      page.off('request', onRequest);
    }
  });

  await scenario('a VM that goes away turns offline in the list', async () => {
    if (!simVmId) throw new Error('no simulated VM');
    const sim = children.find((c) => c.name === 'infinibay-sim');
    await admin.page.goto(`${base}/#/vms`);
    await admin.page.waitForSelector(`${rowSelector('vms', simVmId)} .badge-online`);
    sim.kill('SIGTERM');
    await admin.page.waitForSelector(`${rowSelector('vms', simVmId)} .badge-offline`, { timeout: 40000 });
    await shot(admin.page, 'vm-list-offline');
    if (admin.dialogs.length) throw new Error(`dialogs opened: ${admin.dialogs.join(' | ')}`);
  });

  const failed = results.filter((r) => !r.ok);
  writeFileSync(join(OUT, 'results.json'), JSON.stringify(results, null, 2));
  console.log(`web tests: ${results.length - failed.length} passed, ${failed.length} failed (screenshots and logs in ${OUT})`);
  return failed.length ? 1 : 0;
}

let code;
try {
  code = await main();
} catch (e) {
  console.error(`web tests: setup failed: ${e.stack ?? e.message}`);
  code = 1;
} finally {
  await cleanup();
}
process.exit(code);

// GraphQL over fetch (POST /graphql) with the session token, and the session itself.

const TOKEN_KEY = 'infinibay.token';
const USER_KEY = 'infinibay.user';

/** An error of the API, with its `extensions.code` (UNAUTHENTICATED, FORBIDDEN, …). */
export class ApiError extends Error {
  constructor(message, code) {
    super(message);
    this.name = 'ApiError';
    this.code = code;
  }
}

const listeners = new Set();

/** The stored session: { token, user } or null. */
export function session() {
  const token = localStorage.getItem(TOKEN_KEY);
  if (!token) return null;
  try {
    return { token, user: JSON.parse(localStorage.getItem(USER_KEY) ?? 'null') };
  } catch {
    return { token, user: null };
  }
}

/** Keep the token and the user after `login` (or a fresh `me`). */
export function saveSession(token, user) {
  localStorage.setItem(TOKEN_KEY, token);
  localStorage.setItem(USER_KEY, JSON.stringify(user));
  for (const fn of listeners) fn(session());
}

/** Forget the token (logout, or the server refused it). */
export function clearSession(reason) {
  localStorage.removeItem(TOKEN_KEY);
  localStorage.removeItem(USER_KEY);
  for (const fn of listeners) fn(null, reason);
}

/** Called with (session | null, reason) whenever the session changes. */
export function onSessionChange(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

/** ADMIN, or the permission granted explicitly. */
export function hasPermission(user, permission) {
  return !!user && (user.role === 'ADMIN' || (user.permissions ?? []).includes(permission));
}

/**
 * Run a query or mutation; resolves with `data`, rejects with an ApiError. An UNAUTHENTICATED
 * answer ends the session (the token expired, the password changed or the user was deleted).
 */
export async function gql(query, variables = {}) {
  const current = session();
  const headers = { 'content-type': 'application/json', accept: 'application/json' };
  if (current) headers.authorization = `Bearer ${current.token}`;
  let response;
  try {
    response = await fetch('/graphql', {
      method: 'POST',
      headers,
      body: JSON.stringify({ query, variables }),
    });
  } catch (e) {
    throw new ApiError(`cannot reach the server: ${e.message}`, 'NETWORK');
  }
  let body;
  try {
    body = await response.json();
  } catch {
    throw new ApiError(`the server answered HTTP ${response.status} without JSON`, 'HTTP');
  }
  if (Array.isArray(body.errors) && body.errors.length) {
    const first = body.errors[0];
    const code = first.extensions?.code ?? 'INTERNAL';
    if (code === 'UNAUTHENTICATED' && current) clearSession('Your session ended; please log in again.');
    throw new ApiError(String(first.message ?? 'request failed'), code);
  }
  if (!body.data) throw new ApiError(`the server answered HTTP ${response.status} without data`, 'HTTP');
  return body.data;
}

const USER_FIELDS = 'id username role department permissions createdAt';

export const Q = {
  login: `mutation Login($username: String!, $password: String!) {
    login(username: $username, password: $password) { token user { ${USER_FIELDS} } } }`,
  me: `query Me { me { ${USER_FIELDS} } }`,
  vms: `query Vms { vms { id name status lastSeen department ipAddresses
    owner { id username }
    latestMetrics { at cpuPercent memUsedKb memTotalKb disks { mountPoint totalGb usedGb } } } }`,
  vm: `query Vm($id: ID!) { vm(id: $id) { id name status lastSeen department ipAddresses
    owner { id username }
    agent { agentVersion protocolVersion os osVersion kernel hostname architecture capabilities }
    latestMetrics { at cpuPercent coresUsage temperature memUsedKb memTotalKb memAvailableKb
      swapUsedKb swapTotalKb disks { mountPoint filesystem totalGb usedGb availableGb }
      diskReadBps diskWriteBps interfaces { name isUp ipAddresses rxBps txBps }
      netRxBps netTxBps load1 load5 load15 uptimeSeconds } } }`,
  vmMetrics: `query VmMetrics($vmId: ID!, $from: DateTime!, $to: DateTime!, $maxPoints: Int) {
    vmMetrics(vmId: $vmId, from: $from, to: $to, maxPoints: $maxPoints) { resolution
      points { at cpuAvg cpuMin cpuMax memUsedKb memTotalKb diskReadBps diskWriteBps netRxBps netTxBps samples } } }`,
  processes: `query P($vmId: ID!) { vmProcesses(vmId: $vmId) { pid ppid name cmdline user state cpuPercent memoryKb startTime } }`,
  ports: `query Po($vmId: ID!) { vmPorts(vmId: $vmId) { port protocol localAddress state processId processName } }`,
  applications: `query A($vmId: ID!) { vmApplications(vmId: $vmId) { name version sizeKb architecture } }`,
  services: `query S($vmId: ID!) { vmServices(vmId: $vmId) { name description loadState activeState subState enabled startType } }`,
  commandLogs: `query L($vmId: ID!, $limit: Int) { commandLogs(vmId: $vmId, limit: $limit) {
    id kind command success durationMs createdAt user { username } } }`,
  execute: `mutation X($vmId: ID!, $command: CommandInput!) { executeVmCommand(vmId: $vmId, command: $command) {
    id success exitCode stdout stderr stdoutTruncated stderrTruncated data executionTimeMs error { code message } } }`,
  consoleTicket: `mutation CT($vmId: ID!) { vmConsoleTicket(vmId: $vmId) { ticket expiresAt path } }`,
  users: `query U { users { ${USER_FIELDS} } }`,
  createUser: `mutation C($input: CreateUserInput!) { createUser(input: $input) { ${USER_FIELDS} } }`,
  deleteUser: `mutation D($id: ID!) { deleteUser(id: $id) }`,
  setPassword: `mutation SP($id: ID!, $password: String!, $currentPassword: String) { setUserPassword(id: $id, password: $password, currentPassword: $currentPassword) }`,
  grant: `mutation G($id: ID!, $permission: String!) { grantPermission(id: $id, permission: $permission) { ${USER_FIELDS} } }`,
  vmErrors: `query E($vmId: ID!, $limit: Int) { vmErrors(vmId: $vmId, limit: $limit) { at code message details } }`,
  vmAlerts: `query VA($vmId: ID, $limit: Int) { alerts(vmId: $vmId, limit: $limit) {
    id ruleId kind subject message value threshold raisedAt resolvedAt } }`,
  vmTelemetry: `query T($vmId: ID!) { vmTelemetry(vmId: $vmId) { interval collectors updatedAt appliedAt } }`,
  setTelemetry: `mutation ST($vmId: ID!, $interval: Int!, $collectors: [String!]!) {
    setVmTelemetry(vmId: $vmId, interval: $interval, collectors: $collectors) {
      settings { interval collectors updatedAt appliedAt } applied pendingReason } }`,
  alertRules: `query AR { alertRules { id vmId kind threshold mountPoint durationSeconds webhookUrls createdAt } }`,
  createAlertRule: `mutation CAR($input: AlertRuleInput!) { createAlertRule(input: $input) { id } }`,
  deleteAlertRule: `mutation DAR($id: ID!) { deleteAlertRule(id: $id) }`,
  renameVm: `mutation R($vmId: ID!, $name: String!) { renameVm(vmId: $vmId, name: $name) { id name } }`,
  setOwner: `mutation O($vmId: ID!, $userId: ID, $department: String) {
    setVmOwner(vmId: $vmId, userId: $userId, department: $department) { id owner { id username } department } }`,
};

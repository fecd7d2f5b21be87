#!/usr/bin/env bash
# Scale-out benchmark → bench/results/scale.md (docs/scale-out.md)
#
#   bench/scale/run.sh                       # 2 nodes × 2,000 VMs at 1 Hz, 2 APIs, 1,000 clients
#   NODES=4 VMS_PER_NODE=5000 bench/scale/run.sh   # the issue's example (needs more than 2 cores)
#
# One run, one machine: a throwaway PostgreSQL and nats-server, NODES × (simulator +
# `infinibay node`), APIS × `infinibay api`, CLIENTS socket.io-client v4 connections (node, one
# process per API, spread over the APIs), each subscribed to one VM of the whole fleet (so most
# deliveries cross from one node's process to another API's). Measured over MEASURE seconds:
#   - delivery latency guest → browser (the simulator's write timestamp to the client's receipt,
#     same clock), p50 / p99;
#   - CPU and peak memory of every process, per 1,000 VMs where it scales with VMs;
#   - NATS messages per second (nats-server /varz);
#   - the node cost budget: in the same run, the seeds' Node watcher's bare ingest
#     (bench/host/node-watcher.js, storage stubbed) of the same ~1 KB system_metrics messages.
# report.py writes the report with the projection to 100,000 VMs and 100,000 clients.
#
# Parameters (environment): NODES (2), VMS_PER_NODE (2000), APIS (2), CLIENTS (1000),
#   USERS (40: admin accounts the clients log in as; the per-user subscribe limit is 100/min),
#   MEASURE (30 s, with clients), QUIET (15 s, before the clients), WARMUP (5 s), WATCHER_MESSAGES (200000), SKIP_BUILD=1, OUT.
# Non-interactive and bounded: every process it starts is killed on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
NODES=${NODES:-2}
VMS_PER_NODE=${VMS_PER_NODE:-2000}
APIS=${APIS:-2}
CLIENTS=${CLIENTS:-1000}
USERS=${USERS:-40}
MEASURE=${MEASURE:-30}
WARMUP=${WARMUP:-5}
WATCHER_MESSAGES=${WATCHER_MESSAGES:-200000}
OUT=${OUT:-$ROOT/bench/results/scale.md}
BIN=${BIN:-$ROOT/target/release/infinibay}
SIM=${SIM:-$ROOT/target/release/infinibay-sim}
CLK_TCK=$(getconf CLK_TCK)
WORK=$(mktemp -d /tmp/ibscale.XXXX)   # short: AF_UNIX paths are limited to 107 bytes
PIDS=()

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
# shellcheck source=../../scripts/lib/postgres.sh
source "$ROOT/scripts/lib/postgres.sh"
# shellcheck source=../../scripts/lib/nats.sh
source "$ROOT/scripts/lib/nats.sh"
cleanup() {
  for pid in "${PIDS[@]:-}"; do [[ -n $pid ]] && kill "$pid" 2>/dev/null || true; done
  sleep 0.5
  for pid in "${PIDS[@]:-}"; do [[ -n $pid ]] && kill -9 "$pid" 2>/dev/null || true; done
  nats_throwaway_stop || true
  pg_throwaway_stop || true
  rm -f "$ROOT/tests/node/bench-clients.mjs"
  if [[ ${KEEP_WORK:-0} == 1 ]]; then echo "work files kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
pg_pids() { local main; main=$(head -1 "$PG_THROWAWAY_DIR/data/postmaster.pid"); echo "$main" $(pgrep -P "$main"); }
pg_ticks() { local t=0 p; for p in $(pg_pids); do t=$((t + $(ticks "$p"))); done; echo "$t"; }
# Proportional set size: PostgreSQL's shared buffers counted once over its processes.
pss_kb() { awk '/^Pss:/ { print $2 }' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
pg_rss_kb() { local t=0 p; for p in $(pg_pids); do t=$((t + $(pss_kb "$p"))); done; echo "$t"; }
varz() { curl -fs "$NATS_THROWAWAY_MONITOR_URL/varz" | python3 -c 'import json,sys; v=json.load(sys.stdin); print(v["in_msgs"], v["out_msgs"], v["in_bytes"], v["out_bytes"])'; }
health() { curl -fs -m 5 "$1/healthz" 2>/dev/null || echo '{}'; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  log "building infinibay and infinibay-sim (release)"
  cargo build --release -q -p infinibay -p infinibay-sim
fi
[[ -x $BIN && -x $SIM ]] || { echo "no release binaries at $BIN / $SIM" >&2; exit 1; }
[[ -d tests/node/node_modules/socket.io-client ]] || npm ci --prefix tests/node --no-audit --no-fund --loglevel=error >&2
CLIENT_JS=$ROOT/tests/node/bench-clients.mjs
cp "$ROOT/bench/realtime/clients.mjs" "$CLIENT_JS"   # resolves socket.io-client from tests/node
ulimit -n "$(ulimit -Hn)"

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
export PG_THROWAWAY_OPTS="-c fsync=off -c synchronous_commit=off"
pg_throwaway_start >/dev/null
DB=$INFINIBAY_TEST_PG_URL
NATS_THROWAWAY_MONITOR=1 nats_throwaway_start >/dev/null
NATS=$INFINIBAY_TEST_NATS_URL
NATS_PID=$NATS_THROWAWAY_PID
# The roles read INFINIBAY_* as configuration; these two are the scripts' own.
unset INFINIBAY_TEST_PG_URL INFINIBAY_TEST_NATS_URL
export RUST_LOG=warn INFINIBAY_ADMIN_PASSWORD=bench-admin-password

# ---- the fleet ------------------------------------------------------------------------------
NODE_PIDS=() SIM_PIDS=() NODE_URLS=()
for n in $(seq 0 $((NODES - 1))); do
  mkdir -p "$WORK/s$n" "$WORK/d-node$n"
  "$SIM" --vms "$VMS_PER_NODE" --first-index $((n * VMS_PER_NODE)) --seed 11 --interval 1 \
    --socket-dir "$WORK/s$n" --stats-every 0 >"$WORK/sim$n.log" 2>&1 &
  SIM_PIDS+=($!); PIDS+=($!)
done
for n in $(seq 0 $((NODES - 1))); do
  port=$(free_port)
  "$BIN" node --nats "$NATS" --database "$DB" --node-id "node$n" --socket-dir "$WORK/s$n" \
    --data-dir "$WORK/d-node$n" --listen "127.0.0.1:$port" >"$WORK/node$n.log" 2>&1 &
  NODE_PIDS+=($!); PIDS+=($!); NODE_URLS+=("http://127.0.0.1:$port")
done
API_PIDS=() API_URLS=()
for a in $(seq 0 $((APIS - 1))); do
  mkdir -p "$WORK/d-api$a"
  if ((a > 0)); then cp "$WORK/d-api0/jwt-secret" "$WORK/d-api$a/jwt-secret"; fi
  port=$(free_port)
  # Each replica's /metrics listener on a port of its own (the default is one fixed port).
  INFINIBAY_API__METRICS_LISTEN="127.0.0.1:$(free_port)" \
    "$BIN" api --nats "$NATS" --database "$DB" --data-dir "$WORK/d-api$a" \
    --listen "127.0.0.1:$port" >"$WORK/api$a.log" 2>&1 &
  API_PIDS+=($!); PIDS+=($!); API_URLS+=("http://127.0.0.1:$port")
  for _ in $(seq 300); do curl -fs "${API_URLS[$a]}/healthz" >/dev/null 2>&1 && break; sleep 0.2; done
done
TOTAL=$((NODES * VMS_PER_NODE))
log "waiting for $TOTAL VMs online on every API"
for url in "${API_URLS[@]}"; do
  online=0
  for _ in $(seq 240); do
    online=$(health "$url" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("online", 0))' 2>/dev/null || echo 0)
    ((online >= TOTAL)) && break
    sleep 1
  done
  log "$url: $online/$TOTAL online"
done

for i in $(seq 1 "$USERS"); do
  INFINIBAY_NEW_PASSWORD=bench-user-password "$BIN" user --database "$DB" add "bench$i" --role admin >/dev/null
done
TOKENS=""
for i in $(seq 1 "$USERS"); do
  t=$(curl -fs -H 'content-type: application/json' "${API_URLS[0]}/graphql" \
    -d "{\"query\":\"mutation{login(username:\\\"bench$i\\\",password:\\\"bench-user-password\\\"){token}}\"}" | sed -E 's/.*"token":"([^"]+)".*/\1/')
  TOKENS="$TOKENS${TOKENS:+,}$t"
done
# Client i watches VM i of the fleet's list (ordered by id, so the nodes interleave). Only as
# many VMs as clients: the list travels in one environment variable (at most 128 KiB).
VMS=$(curl -fs -H 'content-type: application/json' -H "authorization: Bearer ${TOKENS%%,*}" "${API_URLS[0]}/graphql" \
  -d '{"query":"{ vms { id status } }"}' | python3 -c 'import json,sys; print(",".join([v["id"] for v in json.load(sys.stdin)["data"]["vms"] if v["status"]=="ONLINE"][:'"$CLIENTS"']))')

# ---- measuring --------------------------------------------------------------------------
snapshot() { # → one JSON object of tick counters
  local out="{" p
  for i in "${!NODE_PIDS[@]}"; do out+="\"node$i\": $(ticks "${NODE_PIDS[$i]}"), "; done
  for i in "${!SIM_PIDS[@]}"; do out+="\"sim$i\": $(ticks "${SIM_PIDS[$i]}"), "; done
  for i in "${!API_PIDS[@]}"; do out+="\"api$i\": $(ticks "${API_PIDS[$i]}"), "; done
  for i in "${!CLIENT_PIDS[@]}"; do out+="\"clients$i\": $(ticks "${CLIENT_PIDS[$i]}"), "; done
  out+="\"nats\": $(ticks "$NATS_PID"), \"postgres\": $(pg_ticks), \"wall_ms\": $(date +%s%3N), \"varz\": [$(varz | tr ' ' ',')]}"
  echo "$out"
}
# First without clients: what the VMs alone cost every process (the APIs receive every VM's
# events whether or not anyone watches).
CLIENT_PIDS=()
log "measuring ${QUIET:-15} s without clients"
snapshot >"$WORK/quiet-begin.json"
sleep "${QUIET:-15}"
snapshot >"$WORK/quiet-end.json"
log "starting $CLIENTS clients"
per=$((CLIENTS / APIS))
for a in $(seq 0 $((APIS - 1))); do
  env SERVER="${API_URLS[$a]}" TOKENS="$TOKENS" VMS="$VMS" CLIENTS="$per" SUBS=1 OFFSET=$((a * per)) \
    WARMUP_S="$WARMUP" MEASURE_S="$MEASURE" OUT="$WORK/lat$a.json" node "$CLIENT_JS" >"$WORK/clients$a.out" 2>&1 &
  CLIENT_PIDS+=($!); PIDS+=($!)
done
for _ in $(seq 1200); do [[ -e $WORK/lat0.json.measuring ]] && break; sleep 0.1; done
snapshot >"$WORK/begin.json"
for i in "${!NODE_URLS[@]}"; do health "${NODE_URLS[$i]}" >"$WORK/node$i.begin.json"; done
# Ends 2 s before the clients' own window, while they still run (their CPU and memory count).
sleep $((MEASURE - 2))
snapshot >"$WORK/end.json"
for i in "${!NODE_URLS[@]}"; do health "${NODE_URLS[$i]}" >"$WORK/node$i.end.json"; done
{
  echo "{"
  for i in "${!NODE_PIDS[@]}"; do echo "\"node$i\": $(hwm_kb "${NODE_PIDS[$i]}"),"; done
  for i in "${!SIM_PIDS[@]}"; do echo "\"sim$i\": $(hwm_kb "${SIM_PIDS[$i]}"),"; done
  for i in "${!API_PIDS[@]}"; do echo "\"api$i\": $(hwm_kb "${API_PIDS[$i]}"),"; done
  for i in "${!CLIENT_PIDS[@]}"; do echo "\"clients$i\": $(hwm_kb "${CLIENT_PIDS[$i]}"),"; done
  echo "\"nats\": $(hwm_kb "$NATS_PID"), \"postgres_rss\": $(pg_rss_kb)}"
} >"$WORK/memory.json"
for p in "${CLIENT_PIDS[@]}"; do wait "$p" || { cat "$WORK"/clients*.out >&2; exit 1; }; done
LOAD_DURING=$(cut -d' ' -f1-3 /proc/loadavg)
# Where a node's time goes (PERF=1, the default when perf is installed): a flat profile of
# node0 over PERF_SECS, after the measured windows so that perf's own cost is not in them.
if [[ ${PERF:-1} == 1 ]] && command -v perf >/dev/null; then
  log "profiling node0 for ${PERF_SECS:-10} s"
  perf record -q -F 499 -p "${NODE_PIDS[0]}" -o "$WORK/perf.data" -- sleep "${PERF_SECS:-10}" >/dev/null 2>&1 || true
  perf report -q -i "$WORK/perf.data" --stdio --no-children --sort dso,symbol --percent-limit 1 2>/dev/null \
    | grep '%' | head -40 >"$WORK/perf.txt" || true
fi
for p in "${API_PIDS[@]}" "${NODE_PIDS[@]}" "${SIM_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
sleep 1

# ---- the budget's reference, same run: the seeds' Node watcher, bare ingest ----------------
log "the seeds' Node watcher: bare ingest of $WATCHER_MESSAGES messages"
"$SIM" corpus --out "$WORK/small.jsonl" --messages 2000 --profile small 2>/dev/null
"$SIM" feed --socket "$WORK/feed.sock" --corpus "$WORK/small.jsonl" --repeat $(((WATCHER_MESSAGES + 1999) / 2000)) 2>/dev/null &
PIDS+=($!)
for _ in $(seq 100); do [[ -S $WORK/feed.sock ]] && break; sleep 0.05; done
timeout 300 node "$ROOT/bench/host/node-watcher.js" --socket "$WORK/feed.sock" >"$WORK/watcher.json"

python3 "$ROOT/bench/scale/report.py" "$WORK" "$OUT" <<EOF
{"nodes": $NODES, "vms_per_node": $VMS_PER_NODE, "apis": $APIS, "clients": $CLIENTS, "measure": $MEASURE,
 "clk_tck": $CLK_TCK, "git": "$(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo +changes)",
 "date": "$(date -u '+%Y-%m-%d %H:%M UTC')", "cores": $(nproc),
 "cpu": "$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)",
 "load_before": "$LOAD_BEFORE", "load_during": "$LOAD_DURING"}
EOF
log "wrote $OUT"

#!/usr/bin/env bash
# Real-time fan-out benchmark: latency from the moment a simulated guest writes a sample (its
# `timestamp`) to its arrival as `metricsUpdate` at each of N socket.io-client v4 clients, and
# what one host sustains. Writes bench/results/realtime.md.
#
#   bench/realtime/run.sh              # release build, 1,000 clients
#   CLIENTS=200 PROFILE=debug bench/realtime/run.sh
#
# Phases: A) 1 VM at 1 Hz, every client subscribed to it (N deliveries per sample);
#         B) VMS_B VMs at 1 Hz, each client subscribed to SUBS_B of them (sustained fan-out).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
PROFILE="${PROFILE:-release}"
CLIENTS="${CLIENTS:-1000}"
PROCS="${PROCS:-2}"              # node processes sharing the clients
VMS_B="${VMS_B:-50}"
SUBS_B="${SUBS_B:-5}"
MEASURE_S="${MEASURE_S:-20}"
USERS="${USERS:-60}"             # admin accounts: keeps subscribes under 100/min per user (1000×5/60 ≈ 84)
PORT="${PORT:-18180}"
OUT_MD="${OUT_MD:-$ROOT/bench/results/realtime.md}"

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
if [ "$PROFILE" = release ]; then [ -n "${SKIP_BUILD:-}" ] || cargo build --release -p infinibay >&2; BIN="$TARGET_DIR/release/infinibay";
else [ -n "${SKIP_BUILD:-}" ] || cargo build -p infinibay >&2; BIN="$TARGET_DIR/debug/infinibay"; fi
[ -d tests/node/node_modules/socket.io-client ] || npm ci --prefix tests/node >&2
export NODE_PATH="$ROOT/tests/node/node_modules"
CLIENT_JS="$ROOT/tests/node/bench-clients.mjs"
cp "$ROOT/bench/realtime/clients.mjs" "$CLIENT_JS"   # resolve socket.io-client from tests/node

WORK="$(mktemp -d /tmp/ib-rt-bench.XXXXXX)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK" "$CLIENT_JS"; }
trap cleanup EXIT

run_phase() { # name vms subs
  local name="$1" vms="$2" subs="$3"
  rm -rf "$WORK/$name"; mkdir -p "$WORK/$name/s" "$WORK/$name/d"
  export INFINIBAY_ADMIN_PASSWORD="bench-admin-password"
  "$BIN" sim --vms "$vms" --interval 1 --socket-dir "$WORK/$name/s" --stats-every 0 >"$WORK/$name/sim.log" 2>&1 &
  PIDS+=($!)
  RUST_LOG=warn "$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/$name/d" --socket-dir "$WORK/$name/s" >"$WORK/$name/serve.log" 2>&1 &
  local serve_pid=$!; PIDS+=($serve_pid)
  for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break; sleep 0.2; done
  for i in $(seq 1 "$USERS"); do
    INFINIBAY_NEW_PASSWORD="bench-user-password" "$BIN" user --data-dir "$WORK/$name/d" add "bench$i" --role admin >/dev/null
  done
  local tokens="" ids=""
  for i in $(seq 1 "$USERS"); do
    t=$(curl -fs -H 'content-type: application/json' "http://127.0.0.1:$PORT/graphql" \
      -d "{\"query\":\"mutation{login(username:\\\"bench$i\\\",password:\\\"bench-user-password\\\"){token}}\"}" | sed -E 's/.*"token":"([^"]+)".*/\1/')
    tokens="$tokens${tokens:+,}$t"
  done
  for _ in $(seq 1 100); do
    ids=$(curl -fs -H 'content-type: application/json' -H "authorization: Bearer ${tokens%%,*}" "http://127.0.0.1:$PORT/graphql" \
      -d '{"query":"{ vms { id status } }"}' | grep -o '"id":"[^"]*","status":"ONLINE"' | sed -E 's/"id":"([^"]*)".*/\1/' | paste -sd, -)
    [ "$(echo "$ids" | tr ',' '\n' | grep -c .)" -ge "$vms" ] && break; sleep 0.3
  done
  local per=$(( CLIENTS / PROCS )) results=()
  local cpu0; cpu0=$(awk '{print $14+$15}' /proc/$serve_pid/stat); local w0; w0=$(date +%s.%N)
  for p in $(seq 0 $((PROCS - 1))); do
    SERVER="http://127.0.0.1:$PORT" TOKENS="$tokens" VMS="$ids" CLIENTS="$per" SUBS="$subs" OFFSET=$((p * per)) \
      MEASURE_S="$MEASURE_S" OUT="$WORK/$name/lat$p.json" node "$CLIENT_JS" >"$WORK/$name/clients$p.out" 2>&1 &
    results+=($!)
  done
  for r in "${results[@]}"; do wait "$r" || { cat "$WORK/$name"/clients*.out >&2; exit 1; }; done
  local cpu1; cpu1=$(awk '{print $14+$15}' /proc/$serve_pid/stat); local w1; w1=$(date +%s.%N)
  local rss; rss=$(awk '/VmHWM/ {print $2}' /proc/$serve_pid/status)
  local ticks; ticks=$(getconf CLK_TCK)
  python3 - "$WORK/$name" "$name" "$vms" "$subs" "$(( (cpu1 - cpu0) ))" "$ticks" "$rss" "$(echo "$w1 - $w0" | bc -l)" <<'PY' >>"$WORK/rows.md"
import json, glob, sys
d, name, vms, subs, cpu_ticks, tck, rss, wall = sys.argv[1:]
lat, rec, secs, refused, disc, clients, cms = [], 0, 0.0, 0, 0, 0, 0
for f in glob.glob(d + "/lat*.json"):
    r = json.load(open(f)); lat += r["latencies"]; rec += r["received"]; secs = max(secs, r["seconds"])
    refused += r["refused"]; disc += r["disconnects"]; clients += r["clients"]; cms = max(cms, r["connectMs"])
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")
cpu = int(cpu_ticks) / int(tck) / max(float(wall), 1e-9) * 100
expected = int(vms) * clients * int(subs) / int(vms) if name == "A" else clients * int(subs)
print(f"| {name} | {vms} | {clients} | {subs} | {rec/secs:,.0f} (expected ≈{expected:,.0f}) | {q(0.5):.0f} | {q(0.99):.0f} | {lat[-1] if lat else 'n/a'} | {cpu:.0f}% | {int(rss)//1024} | {refused} | {disc} | {cms/1000:.1f} s |")
PY
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=()
  unset INFINIBAY_ADMIN_PASSWORD
}

: >"$WORK/rows.md"
run_phase A 1 1
run_phase B "$VMS_B" "$SUBS_B"

mkdir -p "$(dirname "$OUT_MD")"
{
  echo "# Real-time fan-out (Socket.IO) benchmark"
  echo
  echo "Generated by \`bench/realtime/run.sh\` on $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), profile \`$PROFILE\`."
  echo
  echo "Latency = arrival of \`metricsUpdate\` in a socket.io-client v4 (node, ${PROCS} processes) − the simulated guest's \`timestamp\` written just before the sample went into its socket (same machine, same clock, ms resolution). It includes the host's read/validate/ingest, the bus, Socket.IO serialisation and fan-out, the WebSocket, and the node clients' own event loop. Samples at 1 Hz per VM; ${MEASURE_S} s measuring window after 3 s warm-up."
  echo
  echo "| phase | VMs | clients | VMs per client | deliveries/s | p50 ms | p99 ms | max ms | host CPU | host peak RSS MB | refused subscribes | disconnects | connect time |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  cat "$WORK/rows.md"
  echo
  echo "Host CPU: the server process's CPU time over the whole phase (connecting, subscribing, warm-up and measuring) divided by its wall time; 100% = one core. The node clients and the simulator run on the same $(nproc) cores."
  echo
  echo "Goal: p99 ≤ 50 ms with 1,000 clients (phase A)."
} >"$OUT_MD"
cat "$OUT_MD"

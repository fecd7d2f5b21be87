#!/usr/bin/env bash
# Real-time fan-out benchmark: latency from the moment a simulated guest writes a sample (its
# `timestamp`) to its arrival as `metricsUpdate` at each of N Socket.IO clients, the host's own
# part of it, and what one host sustains. Writes bench/results/realtime.md.
#
#   bench/realtime/run.sh                         # release build, 1,000 clients, both client kinds
#   CLIENTS=200 PROFILE=debug PHASES="A:node" bench/realtime/run.sh
#   BIN=/path/to/infinibay SKIP_BUILD=1 SWEEP="2000 4000" bench/realtime/run.sh
#
# Phases (PHASES, space separated, each `<phase>:<client kind>`):
#   A) 1 VM at 1 Hz, every client subscribed to it (N deliveries of each sample at one instant);
#   B) VMS_B VMs at 1 Hz, each client subscribed to SUBS_B of them (sustained fan-out).
# Client kinds: `node` = the official socket.io-client v4 (what the seeds' frontend uses), in
# PROCS node processes; `rust` = rust_socketio 0.6 clients in one multi-threaded process
# (bench/realtime/rust-client); `raw` = a minimal Engine.IO v4 / Socket.IO v5 client written
# for this benchmark (bench/realtime/rust-client/src/bin/raw.rs), one process, which only
# finds the timestamp in each frame. SWEEP="2000 4000" adds phase-A rows with more clients.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
PROFILE="${PROFILE:-release}"
CLIENTS="${CLIENTS:-1000}"
PROCS="${PROCS:-2}"              # node processes sharing the clients
PHASES="${PHASES:-A:node A:rust A:raw B:node B:rust B:raw}"
SWEEP="${SWEEP:-}"               # client counts for extra phase-A rows (SWEEP_KIND clients)
SWEEP_KIND="${SWEEP_KIND:-raw}"
VMS_B="${VMS_B:-50}"
SUBS_B="${SUBS_B:-5}"
MEASURE_S="${MEASURE_S:-20}"
USERS="${USERS:-60}"             # admin accounts: keeps subscribes under 100/min per user (1000×5/60 ≈ 84)
PORT="${PORT:-18180}"
# /metrics is served on its own listener (api.metrics_listen), not on the API's port.
METRICS_PORT="${METRICS_PORT:-$((PORT + 1))}"
OUT_MD="${OUT_MD:-$ROOT/bench/results/realtime.md}"

TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
if [ -n "${BIN:-}" ]; then :   # a given binary (e.g. a copy, so parallel builds cannot replace it mid-run)
elif [ "$PROFILE" = release ]; then [ -n "${SKIP_BUILD:-}" ] || cargo build --release -p infinibay -p infinibay-sim >&2; BIN="$TARGET_DIR/release/infinibay";
else [ -n "${SKIP_BUILD:-}" ] || cargo build -p infinibay -p infinibay-sim >&2; BIN="$TARGET_DIR/debug/infinibay"; fi
[ -x "$BIN" ] || { echo "no infinibay binary at $BIN" >&2; exit 1; }
# The simulator is its own binary (it is not part of the production `infinibay`), beside BIN.
SIM_BIN="${SIM_BIN:-$(dirname "$BIN")/infinibay-sim}"
[ -x "$SIM_BIN" ] || { echo "no infinibay-sim binary at $SIM_BIN" >&2; exit 1; }
RUST_CLIENT_DIR="$ROOT/bench/realtime/rust-client"
RUST_CLIENT="$RUST_CLIENT_DIR/target/release/realtime-bench-client"
RAW_CLIENT="$RUST_CLIENT_DIR/target/release/raw"
if [[ " $PHASES " == *rust* || " $PHASES " == *raw* || -n "$SWEEP" ]]; then
  [ -n "${SKIP_BUILD:-}" ] && [ -x "$RUST_CLIENT" ] && [ -x "$RAW_CLIENT" ] || (cd "$RUST_CLIENT_DIR" && CARGO_TARGET_DIR="$RUST_CLIENT_DIR/target" cargo build --release --locked >&2)
fi
[ -d tests/node/node_modules/socket.io-client ] || npm ci --prefix tests/node >&2
export NODE_PATH="$ROOT/tests/node/node_modules"
CLIENT_JS="$ROOT/tests/node/bench-clients.mjs"
cp "$ROOT/bench/realtime/clients.mjs" "$CLIENT_JS"   # resolve socket.io-client from tests/node

WORK="$(mktemp -d /tmp/ib-rt-bench.XXXXXX)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$WORK"; rm -f "$CLIENT_JS"; }
trap cleanup EXIT

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
scrape() { curl -fs "http://127.0.0.1:$METRICS_PORT/metrics" | grep '^infinibay_realtime_publish_seconds_bucket' >"$1" || true; }

run_phase() { # name vms subs kind clients
  local name="$1" vms="$2" subs="$3" kind="$4" clients="$5"
  local dir="$WORK/$name-$kind-$clients"
  rm -rf "$dir"; mkdir -p "$dir/s" "$dir/d"
  export INFINIBAY_ADMIN_PASSWORD="bench-admin-password"
  "$SIM_BIN" --threads "$(nproc)" --vms "$vms" --interval 1 --socket-dir "$dir/s" --stats-every 0 >"$dir/sim.log" 2>&1 &
  PIDS+=($!)
  INFINIBAY_API__METRICS_LISTEN="127.0.0.1:$METRICS_PORT" RUST_LOG=warn "$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$dir/d" --socket-dir "$dir/s" >"$dir/serve.log" 2>&1 &
  local serve_pid=$!; PIDS+=($serve_pid)
  for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break; sleep 0.2; done
  for i in $(seq 1 "$USERS"); do
    INFINIBAY_NEW_PASSWORD="bench-user-password" "$BIN" user --data-dir "$dir/d" add "bench$i" --role admin >/dev/null
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
  local results=() procs=1
  [ "$kind" = node ] && procs="$PROCS"
  local per=$(( clients / procs ))
  local cpu0; cpu0=$(cpu_ticks "$serve_pid"); local w0; w0=$(date +%s.%N)
  for p in $(seq 0 $((procs - 1))); do
    local envs=(SERVER="http://127.0.0.1:$PORT" TOKENS="$tokens" VMS="$ids" CLIENTS="$per" SUBS="$subs" OFFSET=$((p * per)) MEASURE_S="$MEASURE_S" OUT="$dir/lat$p.json")
    case "$kind" in
      node) env "${envs[@]}" node "$CLIENT_JS" >"$dir/clients$p.out" 2>&1 & ;;
      rust) env "${envs[@]}" "$RUST_CLIENT" >"$dir/clients$p.out" 2>&1 & ;;
      raw) env "${envs[@]}" "$RAW_CLIENT" >"$dir/clients$p.out" 2>&1 & ;;
      *) echo "unknown client kind $kind" >&2; exit 2 ;;
    esac
    results+=($!)
  done
  # The measuring window: host CPU, load and the host's publication histogram over it alone.
  for _ in $(seq 1 600); do [ -e "$dir/lat0.json.measuring" ] && break; sleep 0.1; done
  scrape "$dir/pub0.txt"; local mc0; mc0=$(cpu_ticks "$serve_pid"); local mw0; mw0=$(date +%s.%N)
  for r in "${results[@]}"; do wait "$r" || { cat "$dir"/clients*.out >&2; exit 1; }; done
  local mc1; mc1=$(cpu_ticks "$serve_pid"); local mw1; mw1=$(date +%s.%N)
  [ -e "$dir/lat0.json.measuring" ] || mc1="$mc0"
  scrape "$dir/pub1.txt"
  local load; load=$(cut -d' ' -f1 /proc/loadavg)
  local cpu1; cpu1=$(cpu_ticks "$serve_pid"); local w1; w1=$(date +%s.%N)
  local rss; rss=$(awk '/VmHWM/ {print $2}' "/proc/$serve_pid/status")
  local ticks; ticks=$(getconf CLK_TCK)
  python3 - "$dir" "$name" "$vms" "$subs" "$kind" "$((cpu1 - cpu0))" "$(echo "$w1 - $w0" | bc -l)" "$((mc1 - mc0))" "$(echo "$mw1 - $mw0" | bc -l)" "$ticks" "$rss" "$load" <<'PY' >>"$WORK/rows.md"
import json, glob, sys, re
d, name, vms, subs, kind, cpu_t, wall, mcpu_t, mwall, tck, rss, load = sys.argv[1:]
lat, rec, secs, refused, disc, clients, cms = [], 0, 0.0, 0, 0, 0, 0
for f in glob.glob(d + "/lat*.json"):
    r = json.load(open(f)); lat += r["latencies"]; rec += r["received"]; secs = max(secs, r["seconds"])
    refused += r["refused"]; disc += r["disconnects"]; clients += r["clients"]; cms = max(cms, r["connectMs"])
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")
# First delivery of each sample over all client processes (node: per-process minima keyed by the
# guest timestamp; raw: computed by the client). Empty for rust_socketio.
first, first_node = [], {}
for f in glob.glob(d + "/lat*.json"):
    r = json.load(open(f))
    for k, v in (r.get("firstBySample") or {}).items():
        first_node[k] = min(v, first_node.get(k, v))
    if r.get("firstP50") is not None:
        first += [r["firstP50"], r["firstP99"]]
first_txt = "n/a"
if first_node:
    fl = sorted(first_node.values())
    first_txt = f"{fl[len(fl)//2]:.1f} / {fl[min(len(fl)-1, int(0.99*len(fl)))]:.1f}"
elif first:
    first_txt = f"{first[0]:.1f} / {first[1]:.1f}"
def hist(path):
    out = {}
    for line in open(path):
        m = re.match(r'.*from="(\w+)",le="([^"]+)"\} (\d+)', line)
        if m: out[(m[1], m[2])] = int(m[3])
    return out
def host_q(frm, p):
    try: a, b = hist(d + "/pub0.txt"), hist(d + "/pub1.txt")
    except OSError: return "n/a"
    les = sorted({le for (f, le) in b if f == frm and le != "+Inf"}, key=float)
    total = b.get((frm, "+Inf"), 0) - a.get((frm, "+Inf"), 0)
    if total <= 0: return "n/a"
    for le in les:
        if b.get((frm, le), 0) - a.get((frm, le), 0) >= p * total:
            return f"≤{float(le)*1000:g}"
    return ">1000"
cpu = int(cpu_t) / int(tck) / max(float(wall), 1e-9) * 100
mcpu = int(mcpu_t) / int(tck) / max(float(mwall), 1e-9) * 100
expected = clients * int(subs) if name == "B" else clients
label = {"node": "socket.io-client v4 (node)", "rust": "rust_socketio 0.6", "raw": "minimal Rust client (bench-only)"}[kind]
print(f"| {name} | {label} | {vms} | {clients} | {subs} | {rec/secs:,.0f} (≈{expected:,.0f}) | {q(0.5):.1f} | {q(0.99):.1f} | {lat[-1] if lat else float('nan'):.1f} | {first_txt} | {host_q('receipt', 0.5)} / {host_q('receipt', 0.99)} | {host_q('guest', 0.99)} | {mcpu:.0f}% ({cpu:.0f}%) | {int(rss)//1024} | {refused} | {disc} | {cms/1000:.1f} s | {load} |")
PY
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=()
  unset INFINIBAY_ADMIN_PASSWORD
}

: >"$WORK/rows.md"
for spec in $PHASES; do
  phase="${spec%%:*}"; kind="${spec##*:}"
  case "$phase" in
    A) run_phase A 1 1 "$kind" "$CLIENTS" ;;
    B) run_phase B "$VMS_B" "$SUBS_B" "$kind" "$CLIENTS" ;;
    *) echo "unknown phase $phase" >&2; exit 2 ;;
  esac
done
for n in $SWEEP; do run_phase A 1 1 "$SWEEP_KIND" "$n"; done

mkdir -p "$(dirname "$OUT_MD")"
{
  echo "# Real-time fan-out (Socket.IO) benchmark"
  echo
  echo "Generated by \`bench/realtime/run.sh\` on $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), profile \`$PROFILE\`; node clients in ${PROCS} processes, rust clients in one."
  echo
  echo "| phase | client | VMs | clients | VMs per client | deliveries/s | p50 ms | p99 ms | max ms | first delivery of each sample p50 / p99 ms | host p50 / p99 ms (receipt → queued) | host p99 ms (guest write → queued) | host CPU measuring (phase) | host peak RSS MB | refused subscribes | disconnects | connect time | load avg (1 min) |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  cat "$WORK/rows.md"
} >"$OUT_MD.tmp"
mv "$OUT_MD.tmp" "$OUT_MD"
cat "$OUT_MD"

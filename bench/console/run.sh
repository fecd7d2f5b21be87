#!/usr/bin/env bash
# The console relay against websockify, in the same run, on the same VNC servers, with the
# same client → bench/results/console.md
#
#   bench/console/run.sh              # ~6 minutes on 2 cores after the builds
#
# Parameters (environment):
#   SECONDS_PER_RUN  measured seconds per throughput run (default 8, after 1 s of warm-up)
#   ROUNDS           rounds; each runs every path once, in a rotated order (default 3)
#   ROUND_TRIPS      latency round trips per path and round on Xvnc (default 2000)
#   CONSOLES         consoles held open for the memory measurement (default 30: QEMU's VNC
#                    server takes at most 32 connections unless told otherwise)
#   IDLE_SECONDS     how long the held consoles stay quiet before the second measurement
#                    (default 45: past two keepalive ticks, when the relay shrinks its buffers)
#   GEOMETRY         Xvnc's screen (default 1920x1080)
#   PIN              1: the proxies on CPU 0, the VNC servers and the client on CPU 1 (taskset);
#                    0 (default): unpinned. On a machine shared with other work, pinning puts
#                    the proxy behind whatever else runs on CPU 0: every proxy then waits for
#                    its turn on that core after each wake-up, and all of them measure the same
#                    (1.0–1.1× of each other in a pinned trial at load ~9)
#   SKIP_BUILD=1     use the binaries already built
#   OUT              report path (default bench/results/console.md)
#
# VNC servers: the e2e QEMU TCG guest's own (`-vnc unix:…`, VGA text console, 720x400), the
# one the issue names; and TigerVNC's Xvnc (`-rfbunixpath`), a real VNC server that answers an
# update request at once — QEMU sends updates only on its display refresh timer, so through
# it every path measures QEMU, not the proxy. Proxies: websockify (Debian's, `--unix-target`),
# `crates/console/examples/console-relay.rs` (the library's Console, in-memory tickets —
# bench only), and the real `infinibay serve` (release, SQLite, tickets from GraphQL
# `vmConsoleTicket`, its gate and command log: what a user's console goes through). Client: `crates/console/examples/console-bench.rs` for every path, direct
# included. Installs websockify and tigervnc-standalone-server with apt-get when missing.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
SECONDS_PER_RUN=${SECONDS_PER_RUN:-8}
ROUNDS=${ROUNDS:-3}
ROUND_TRIPS=${ROUND_TRIPS:-2000}
CONSOLES=${CONSOLES:-30}
IDLE_SECONDS=${IDLE_SECONDS:-45}
GEOMETRY=${GEOMETRY:-1920x1080}
PIN=${PIN:-0}
OUT=${OUT:-$ROOT/bench/results/console.md}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
RELAY=$TARGET/release/examples/console-relay
CLIENT=$TARGET/release/examples/console-bench
GUEST=$TARGET/release/infinibay-e2e-guest
HOST=$TARGET/release/infinibay
WORK=$(mktemp -d /tmp/ibcb.XXXX) # short: AF_UNIX paths are limited to 107 bytes
RESULTS=$WORK/results.jsonl
PIDS=()

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

cleanup() {
  exec 7>&- 8>&- 2>/dev/null || true # the guest and the relay stop when their stdin closes
  for pid in "${PIDS[@]:-}"; do
    [[ -n $pid ]] && kill "$pid" 2>/dev/null || true
  done
  sleep 1
  for pid in "${PIDS[@]:-}"; do
    [[ -n $pid ]] && kill -9 "$pid" 2>/dev/null || true
  done
  if [[ ${KEEP_WORK:-0} == 1 ]]; then echo "work files kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# ---- tools ----------------------------------------------------------------------------------
need=()
command -v websockify >/dev/null || need+=(websockify)
command -v Xvnc >/dev/null || need+=(tigervnc-standalone-server)
command -v python3 >/dev/null || need+=(python3)
if ((${#need[@]})); then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  log "building (release): the relay, the client, the guest runner"
  cargo build --release --quiet -p infinibay-console --example console-relay --example console-bench
  cargo build --release --quiet -p infinibay-e2e --bin infinibay-e2e-guest
  cargo build --release --quiet -p infinibay --bin infinibay
fi
# taskset prefixes: proxies on CPU 0, VNC servers and the client on CPU 1.
PROXY_CPU=(); PEER_CPU=()
if [[ $PIN == 1 ]] && (($(nproc) >= 2)); then PROXY_CPU=(taskset -c 0); PEER_CPU=(taskset -c 1); fi

# ---- helpers --------------------------------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

descendants() {
  local pid=$1 child
  echo "$pid"
  for child in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do descendants "$child"; done
}

# CPU ticks of a process tree: its own user+system plus its reaped children's, plus what its
# live descendants used so far.
cpu_ticks() {
  local total=0 pid fields
  for pid in $(descendants "$1"); do
    fields=$(awk '{ print $14 + $15 + $16 + $17 }' /proc/"$pid"/stat 2>/dev/null || echo 0)
    total=$((total + fields))
  done
  echo "$total"
}

# Memory of a process tree in KiB: "rss pss", summed (PSS shares copy-on-write pages fairly
# between websockify's forked children).
memory_kib() {
  local rss=0 pss=0 pid r p
  for pid in $(descendants "$1"); do
    r=$(awk '/^Rss:/ { print $2 }' /proc/"$pid"/smaps_rollup 2>/dev/null || echo 0)
    p=$(awk '/^Pss:/ { print $2 }' /proc/"$pid"/smaps_rollup 2>/dev/null || echo 0)
    rss=$((rss + ${r:-0})); pss=$((pss + ${p:-0}))
  done
  echo "$rss $pss"
}

# websockify forks one process per connection; wait until the last one is gone (reaped, so
# that its CPU time is in the parent's children's counters).
wait_children_gone() {
  local pid=$1 tries=0
  while [[ -n $(cat /proc/"$pid"/task/*/children 2>/dev/null) ]] && ((tries < 100)); do
    sleep 0.1; tries=$((tries + 1))
  done
}

load1() { cut -d' ' -f1 /proc/loadavg; }

record() { echo "$1" >>"$RESULTS"; }

# ---- the VNC servers --------------------------------------------------------------------------
log "booting the QEMU guest with VNC (TCG)"
mkfifo "$WORK/guest.in"
"${PEER_CPU[@]}" "$GUEST" --vnc --no-agent --socket-dir "$WORK" <"$WORK/guest.in" >"$WORK/guest.out" 2>"$WORK/guest.err" &
PIDS+=($!)
exec 7>"$WORK/guest.in"
for _ in $(seq 600); do grep -q '^vnc_socket=' "$WORK/guest.out" 2>/dev/null && break; sleep 0.2; done
GUEST_VNC=$(sed -n 's/^vnc_socket=//p' "$WORK/guest.out")
RUN_DIR=$(sed -n 's/^run_dir=//p' "$WORK/guest.out")
[[ -S $GUEST_VNC ]] || { cat "$WORK/guest.err" >&2; log "the guest has no VNC socket"; exit 1; }
for _ in $(seq 600); do grep -q 'init: guest .* up' "$RUN_DIR/console.log" 2>/dev/null && break; sleep 0.2; done
QEMU_PID=$(sed -n 's/^qemu_pid=//p' "$WORK/guest.out")

display=90
while [[ -e /tmp/.X11-unix/X$display || -e /tmp/.X$display-lock ]]; do display=$((display + 1)); done
log "starting Xvnc :$display ($GEOMETRY)"
"${PEER_CPU[@]}" Xvnc ":$display" -rfbunixpath "$WORK/xvnc.sock" -rfbport -1 -SecurityTypes None \
  -geometry "$GEOMETRY" -depth 24 -FrameRate 1000 -nolisten tcp >"$WORK/xvnc.log" 2>&1 &
PIDS+=($!)
XVNC_PID=$!
for _ in $(seq 100); do [[ -S $WORK/xvnc.sock ]] && break; sleep 0.1; done
[[ -S $WORK/xvnc.sock ]] || { cat "$WORK/xvnc.log" >&2; exit 1; }

# ---- the proxies ------------------------------------------------------------------------------
declare -A WS_PORT WS_PID
for server in guest xvnc; do
  sock=$GUEST_VNC; [[ $server == xvnc ]] && sock=$WORK/xvnc.sock
  port=$(free_port)
  "${PROXY_CPU[@]}" websockify "127.0.0.1:$port" "--unix-target=$sock" >"$WORK/websockify-$server.log" 2>&1 &
  PIDS+=($!); WS_PID[$server]=$!; WS_PORT[$server]=$port
done
mkfifo "$WORK/relay.in"
"${PROXY_CPU[@]}" "$RELAY" --listen 127.0.0.1:0 --vnc "guest=$GUEST_VNC" --vnc "xvnc=$WORK/xvnc.sock" \
  <"$WORK/relay.in" >"$WORK/relay.out" 2>"$WORK/relay.err" &
PIDS+=($!)
RELAY_PID=$!
exec 8>"$WORK/relay.in"
for _ in $(seq 100); do grep -q '^listening=' "$WORK/relay.out" 2>/dev/null && break; sleep 0.1; done
RELAY_ADDR=$(sed -n 's/^listening=//p' "$WORK/relay.out")
for server in guest xvnc; do
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/${WS_PORT[$server]}") 2>/dev/null && break; sleep 0.1; done
done

# The real host: its socket directory holds the two VNC sockets under VM ids (links) and, for
# each, a listening `vm-<id>.sock` that never answers, so that the core registers the VM (a
# ticket needs a VM the store knows); the core's connection to it just waits and retries.
declare -A VM_ID=([guest]=00000000-0000-4000-8000-00000000cafe [xvnc]=00000000-0000-4000-8000-00000000beef)
mkdir -p "$WORK/serve-sockets" "$WORK/serve-data"
ln -s "$GUEST_VNC" "$WORK/serve-sockets/vnc-${VM_ID[guest]}.sock"
ln -s "$WORK/xvnc.sock" "$WORK/serve-sockets/vnc-${VM_ID[xvnc]}.sock"
python3 -c '
import socket, sys, time
held = []
for path in sys.argv[1:]:
    s = socket.socket(socket.AF_UNIX); s.bind(path); s.listen(1); held.append(s)
time.sleep(1e9)' "$WORK/serve-sockets/vm-${VM_ID[guest]}.sock" "$WORK/serve-sockets/vm-${VM_ID[xvnc]}.sock" &
PIDS+=($!)
SERVE_PORT=$(free_port)
SERVE_PASSWORD=bench-$RANDOM$RANDOM$RANDOM
INFINIBAY_ADMIN_PASSWORD=$SERVE_PASSWORD RUST_LOG=warn "${PROXY_CPU[@]}" "$HOST" serve \
  --listen "127.0.0.1:$SERVE_PORT" --socket-dir "$WORK/serve-sockets" --data-dir "$WORK/serve-data" \
  >"$WORK/serve.log" 2>&1 &
PIDS+=($!)
SERVE_PID=$!
graphql() { # QUERY [TOKEN]: the answer's JSON
  python3 -c 'import json, sys; print(json.dumps({"query": sys.argv[1]}))' "$1" |
    curl -sf -H 'Content-Type: application/json' ${2:+-H "Authorization: Bearer $2"} \
      --data @- "http://127.0.0.1:$SERVE_PORT/graphql"
}
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$SERVE_PORT/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
export CONSOLE_BENCH_TOKEN
CONSOLE_BENCH_TOKEN=$(graphql "mutation { login(username: \"admin\", password: \"$SERVE_PASSWORD\") { token } }" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["data"]["login"]["token"])')
for server in guest xvnc; do
  for _ in $(seq 100); do
    graphql "{ vm(id: \"${VM_ID[$server]}\") { id } }" "$CONSOLE_BENCH_TOKEN" | grep -q '"id"' && break
    sleep 0.2
  done
done

target_of() { # PATH SERVER
  case $1 in
    direct) if [[ $2 == guest ]]; then echo "unix:$GUEST_VNC"; else echo "unix:$WORK/xvnc.sock"; fi ;;
    websockify) echo "ws:ws://127.0.0.1:${WS_PORT[$2]}/" ;;
    relay) echo "relay:$RELAY_ADDR/$2" ;;
    serve) echo "serve:127.0.0.1:$SERVE_PORT/${VM_ID[$2]}" ;;
  esac
}
proxy_pid_of() { # PATH SERVER
  case $1 in
    websockify) echo "${WS_PID[$2]}" ;;
    relay) echo "$RELAY_PID" ;;
    serve) echo "$SERVE_PID" ;;
    *) echo "" ;;
  esac
}

# ---- throughput and latency -------------------------------------------------------------------
ORDERS=("direct websockify relay serve" "websockify relay serve direct" "relay serve direct websockify" "serve direct websockify relay")
for round in $(seq "$ROUNDS"); do
  order=${ORDERS[$(((round - 1) % 4))]}
  for server in xvnc guest; do
    for path in $order; do
      pid=$(proxy_pid_of "$path" "$server")
      before=0; [[ -n $pid ]] && before=$(cpu_ticks "$pid")
      qemu_before=$(cpu_ticks "$QEMU_PID"); xvnc_before=$(cpu_ticks "$XVNC_PID")
      l0=$(load1)
      out=$("${PEER_CPU[@]}" "$CLIENT" throughput "$(target_of "$path" "$server")" --seconds "$SECONDS_PER_RUN")
      [[ $path == websockify ]] && wait_children_gone "$pid"
      after=0; [[ -n $pid ]] && after=$(cpu_ticks "$pid")
      source_ticks=$(($(cpu_ticks "$XVNC_PID") - xvnc_before))
      [[ $server == guest ]] && source_ticks=$(($(cpu_ticks "$QEMU_PID") - qemu_before))
      record "{\"kind\":\"throughput\",\"round\":$round,\"server\":\"$server\",\"path\":\"$path\",\"proxy_ticks\":$((after - before)),\"source_ticks\":$source_ticks,\"load1_before\":$l0,\"load1_after\":$(load1),\"result\":$out}"
      log "round $round $server $path: $out"
    done
    for path in $order; do
      trips=$ROUND_TRIPS; [[ $server == guest ]] && trips=40
      out=$("${PEER_CPU[@]}" "$CLIENT" latency "$(target_of "$path" "$server")" --count "$trips")
      record "{\"kind\":\"latency\",\"round\":$round,\"server\":\"$server\",\"path\":\"$path\",\"load1\":$(load1),\"result\":$out}"
      log "round $round $server $path latency: $out"
    done
  done
done

# ---- memory per open console ------------------------------------------------------------------
for path in websockify relay; do
  pid=$(proxy_pid_of "$path" guest)
  read -r rss0 pss0 < <(memory_kib "$pid")
  mkfifo "$WORK/hold-$path.in"
  "$CLIENT" hold "$(target_of "$path" guest)" --count "$CONSOLES" <"$WORK/hold-$path.in" >"$WORK/hold-$path.out" &
  hold_pid=$!
  PIDS+=($hold_pid)
  exec 9>"$WORK/hold-$path.in"
  for _ in $(seq 1200); do grep -q '"open"' "$WORK/hold-$path.out" 2>/dev/null && break; sleep 0.1; done
  held=$(cat "$WORK/hold-$path.out"); [[ -n $held ]] || held=null
  sleep 2
  read -r rss1 pss1 < <(memory_kib "$pid")
  processes=$(descendants "$pid" | wc -l)
  sleep "$IDLE_SECONDS"
  read -r rss2 pss2 < <(memory_kib "$pid")
  exec 9>&-
  wait "$hold_pid" || true
  [[ $path == websockify ]] && wait_children_gone "$pid"
  record "{\"kind\":\"memory\",\"path\":\"$path\",\"consoles\":$CONSOLES,\"idle_seconds\":$IDLE_SECONDS,\"processes\":$processes,\"rss_before_kib\":$rss0,\"pss_before_kib\":$pss0,\"rss_open_kib\":$rss1,\"pss_open_kib\":$pss1,\"rss_idle_kib\":$rss2,\"pss_idle_kib\":$pss2,\"held\":$held}"
  log "memory $path: before $rss0/$pss0 KiB, $CONSOLES just opened $rss1/$pss1 KiB, after ${IDLE_SECONDS}s quiet $rss2/$pss2 KiB (rss/pss)"
done

# ---- report -----------------------------------------------------------------------------------
python3 "$ROOT/bench/console/report.py" "$RESULTS" \
  --commit "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates/console bench/console || echo '+changes')" \
  --websockify "$(dpkg-query -W -f='${Version}' websockify 2>/dev/null || echo '?')" \
  --tigervnc "$(dpkg-query -W -f='${Version}' tigervnc-standalone-server 2>/dev/null || echo '?')" \
  --qemu "$(qemu-system-x86_64 --version | head -n1)" \
  --cpu "$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1) × $(nproc)" \
  --seconds "$SECONDS_PER_RUN" --geometry "$GEOMETRY" --pinned "$PIN" >"$OUT"
log "wrote $OUT"

#!/usr/bin/env bash
# Host load benchmarks → bench/results/host.md
#
#   bench/host/run.sh                 # full run (~6–8 minutes on 2 cores)
#   QUICK=1 bench/host/run.sh         # smaller and shorter (~2 minutes), same report shape
#
# Parameters (environment):
#   INGEST_MESSAGES  messages per ingest round (default 400000; QUICK 100000)
#   ROUNDS           ingest rounds per consumer, the median is reported (default 3)
#   DURATION         seconds measured per load scenario (default 30; QUICK 10)
#   VMS              simulated VMs of the "many VMs" scenario (default 10000; QUICK 2000)
#   OTHERS           periodic VMs beside the flooder (default 1000)
#   HOST_BIN         the infinibay binary; default target/release/infinibay when it has `serve`
#   SUSTAIN_VMS, SUSTAIN_RATE, SUSTAIN_TICK_MS  the sustained-storage load (1000, 50000, 100)
#   SKIP_BUILD=1     use the binaries already built
#   OUT              report path (default bench/results/host.md)
#   SECTIONS         which parts to run, space-separated, of: ingest sustain many flood store drain
#                    (default: all; the report then says which were left out)
#
# Non-interactive, bounded: every process it starts is killed on exit, every wait has a limit.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
  INGEST_MESSAGES=${INGEST_MESSAGES:-100000}; DURATION=${DURATION:-10}; VMS=${VMS:-2000}
else
  INGEST_MESSAGES=${INGEST_MESSAGES:-400000}; DURATION=${DURATION:-30}; VMS=${VMS:-10000}
fi
ROUNDS=${ROUNDS:-3}
OTHERS=${OTHERS:-1000}
OUT=${OUT:-$ROOT/bench/results/host.md}
SIM=$ROOT/target/release/infinibay-sim
NODE_WATCHER=$ROOT/bench/host/node-watcher.js
CLK_TCK=$(getconf CLK_TCK)
WORK=$(mktemp -d /tmp/ibh.XXXX)   # short: AF_UNIX paths are limited to 107 bytes
PIDS=()

cleanup() {
  # A PostgreSQL scenario interrupted half-way leaves its throwaway server running.
  if declare -F pg_throwaway_stop >/dev/null; then pg_throwaway_stop; fi
  for pid in "${PIDS[@]:-}"; do
    [[ -n $pid ]] && kill "$pid" 2>/dev/null || true
  done
  sleep 0.5
  for pid in "${PIDS[@]:-}"; do
    [[ -n $pid ]] && kill -9 "$pid" 2>/dev/null || true
  done
  if [[ ${KEEP_WORK:-0} == 1 ]]; then echo "work files kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

SECTIONS=${SECTIONS:-ingest sustain many flood store drain}
want() { [[ " $SECTIONS " == *" $1 "* ]]; }

calc() { awk "BEGIN { printf \"%.2f\", $1 }"; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# CPU seconds (user+system, all threads) of a live process.
# (0 for a process that is gone: the scenario records that the consumer died.)
cpu_secs() { awk -v t="$CLK_TCK" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$1/stat" 2>/dev/null || echo 0; }
# Resident set and its peak, KiB.
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# The machine's CPU counters (jiffies: total, steal). This is a VM: the hypervisor may take
# ("steal") a share of the 2 cores, and every figure of a window with much steal is pessimistic.
cpu_jiffies() { awk '/^cpu / { t = 0; for (i = 2; i <= 9; i++) t += $i; print t, $9; exit }' /proc/stat; }
steal_pct() { # "total steal" at begin, same at end
  awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " "); t = y[1] - x[1]; printf "%.1f", (t > 0 ? 100 * (y[2] - x[2]) / t : 0) }'
}

wait_for_sockets() { # dir count timeout_s
  local deadline=$((SECONDS + $3))
  while (( $(find "$1" -maxdepth 1 -name 'vm-*.sock' 2>/dev/null | wc -l) < $2 )); do
    (( SECONDS < deadline )) || { log "only $(find "$1" -name 'vm-*.sock' | wc -l)/$2 sockets after $3 s"; return 1; }
    sleep 0.2
  done
}

stop_pid() { # pid: SIGTERM, wait up to 15 s, then SIGKILL
  local pid=$1 i
  kill "$pid" 2>/dev/null || return 0
  for i in $(seq 150); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  log "building infinibay-sim (release)"
  cargo build --release -q -p infinibay-sim
fi
HOST_BIN=${HOST_BIN:-$ROOT/target/release/infinibay}
HOST_OK=0
if [[ ${SKIP_BUILD:-0} != 1 && ${SKIP_HOST:-0} != 1 ]]; then
  # `bench` adds the hidden `infinibay bench-ingest` entry point (the simulator's report format);
  # the production build leaves it out.
  log "building infinibay (release, --features bench), if it builds"
  cargo build --release -q -p infinibay --features bench 2>"$WORK/host-build.log" || log "host does not build; host scenarios skipped (see report)"
fi
if [[ ${SKIP_HOST:-0} != 1 && -x $HOST_BIN ]] && "$HOST_BIN" serve --help >/dev/null 2>&1; then
  HOST_OK=1
fi

CONTEXT=$(cat <<EOF
- date: $(date -u '+%Y-%m-%d %H:%M UTC'); git $(git rev-parse --short HEAD 2>/dev/null || echo '?')
- machine: $(nproc) cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), $(awk '/MemTotal/ { printf "%.1f GiB", $2/1048576 }' /proc/meminfo) RAM, Linux $(uname -r)
- load average before the run: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine shares the 2 cores)
- sections run: $SECTIONS
- rustc $(rustc --version | cut -d' ' -f2), node $(node --version), RLIMIT_NOFILE $(ulimit -n)/$(ulimit -Hn)
EOF
)

# ---------------------------------------------------------------------------------------------
# 1. Ingest of ~1 KB system_metrics, storage stubbed: our protocol pipeline vs the seeds' Node
#    watcher, the same bytes over a real UNIX socket, one consumer process each.
log "ingest: corpus"
CORPUS=$WORK/small.jsonl
"$SIM" corpus --out "$CORPUS" --messages 2000 --profile small 2>"$WORK/corpus.log"
CORPUS_BYTES=$(stat -c %s "$CORPUS")
REPEAT=$(( (INGEST_MESSAGES + 1999) / 2000 ))
INGEST_JSON=$WORK/ingest.jsonl
: >"$INGEST_JSON"

feed_to() { # consumer command...
  local sock=$WORK/feed.sock
  "$SIM" feed --socket "$sock" --corpus "$CORPUS" --repeat "$REPEAT" 2>>"$WORK/feed.log" &
  local feeder=$!
  PIDS+=("$feeder")
  local i
  for i in $(seq 100); do [[ -S $sock ]] && break; sleep 0.05; done
  timeout 300 "$@" >>"$INGEST_JSON"
  wait "$feeder"
}

if want ingest; then
for round in $(seq "$ROUNDS"); do
  if [[ $HOST_OK == 1 ]]; then
    log "ingest round $round/$ROUNDS: the host's own ingest (infinibay bench-ingest)"
    feed_to "$HOST_BIN" bench-ingest --socket "$WORK/feed.sock"
  fi
  log "ingest round $round/$ROUNDS: rust protocol pipeline"
  feed_to "$SIM" ingest --socket "$WORK/feed.sock"
  # The floors under any ingest that checks its input (see docs/host.md, "The ingest budget").
  for stage in framing syntax typed; do
    log "ingest round $round/$ROUNDS: floor, $stage only"
    feed_to "$SIM" ingest --stage "$stage" --socket "$WORK/feed.sock"
  done
  log "ingest round $round/$ROUNDS: node watcher"
  feed_to node "$NODE_WATCHER" --socket "$WORK/feed.sock"
done
fi

# ---------------------------------------------------------------------------------------------
# Load scenarios: the simulator (two processes when one would exceed RLIMIT_NOFILE) and one
# consumer: the real host when it is available, else the drain stand-in.
LOADS_JSON=$WORK/loads.jsonl
: >"$LOADS_JSON"

start_sims() { # name vms interval profile flood threads → sets SIM_PIDS, SOCKDIR
  local name=$1 vms=$2 interval=$3 profile=$4 flood=$5 threads=$6
  SOCKDIR=$WORK/s-$name
  mkdir -p "$SOCKDIR"
  SIM_PIDS=()
  local per=$vms parts=1
  if (( vms * 2 + 32 > $(ulimit -Hn) )); then parts=2; per=$(( (vms + 1) / 2 )); fi
  local p first count fl
  for p in $(seq 0 $((parts - 1))); do
    first=$((p * per)); count=$per
    (( first + count > vms )) && count=$((vms - first))
    fl=0; (( p == 0 )) && fl=$flood
    "$SIM" --threads "$threads" --vms "$count" --first-index "$first" --seed 7 \
      --interval "$interval" --profile "$profile" --flood "$fl" --socket-dir "$SOCKDIR" \
      --stats-every 1 --stats-file "$WORK/stats-$name-$p.json" \
      >"$WORK/sim-$name-$p.out" 2>"$WORK/sim-$name-$p.err" &
    SIM_PIDS+=($!); PIDS+=($!)
  done
  wait_for_sockets "$SOCKDIR" "$vms" 120
}

# The consumer: the real host when available (and not overridden), else the drain stand-in.
start_consumer() { # name vms interval flood
  local name=$1 vms=$2 interval=$3 flood=$4
  if [[ $HOST_OK == 1 && ${USE_DRAIN:-0} != 1 ]]; then
    CONSUMER_KIND="infinibay serve"
    local data=$WORK/host-data-$name
    mkdir -p "$data"
    local db_args=()
    [[ -n ${DB_URL:-} ]] && db_args=(--database "$DB_URL")
    # scripts/lib/postgres.sh exports INFINIBAY_TEST_PG_URL, which the host's INFINIBAY_*
    # configuration refuses as an unknown field.
    # /metrics on a free port (the default 127.0.0.1:9464 may be taken; nothing here scrapes it).
    env -u INFINIBAY_TEST_PG_URL INFINIBAY_API__METRICS_LISTEN=127.0.0.1:0 "$HOST_BIN" serve --socket-dir "$SOCKDIR" --data-dir "$data" --listen "127.0.0.1:$HOST_PORT" \
      "${db_args[@]}" >"$WORK/host-$name.out" 2>"$WORK/host-$name.err" &
  else
    CONSUMER_KIND="drain"
    "$SIM" --threads 1 drain --socket-dir "$SOCKDIR" --expect "$vms" --settle "$SETTLE" \
      --duration "$((DURATION + 4))" --interval "$interval" --seed 7 --flood "$flood" \
      >"$WORK/drain-$name.json" 2>"$WORK/drain-$name.err" &
  fi
  CONSUMER_PID=$!; PIDS+=("$CONSUMER_PID")
}

# One scenario: simulators up, consumer up, settle, then CPU/RSS of every process and the
# simulators' counters over a DURATION-second window.
run_load() { # name vms interval profile flood threads
  local name=$1 vms=$2 interval=$3 profile=$4 flood=$5 threads=$6
  log "load $name: $vms VMs at ${interval}s, $profile, flood $flood, sim threads $threads"
  start_sims "$@"
  SETTLE=$(( vms / 1000 + 5 ))
  start_consumer "$name" "$vms" "$interval" "$flood"
  if [[ $CONSUMER_KIND == drain ]]; then
    sleep "$((SETTLE + 2))"
  else
    # Settled when every VM is online (a valid message arrived), then 3 s more.
    local deadline=$((SECONDS + 120)) online=0
    while (( SECONDS < deadline )); do
      online=$(curl -s "http://127.0.0.1:$HOST_PORT/healthz" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("online", 0))' 2>/dev/null || echo 0)
      (( online >= vms )) && break
      sleep 1
    done
    log "host: $online/$vms VMs online"
    # Then wait for the start-up backlog (registering every VM) to clear: until the host's
    # coalesced-samples counter stops growing for 3 s (at most 60 s).
    local previous=-1 now_coalesced
    deadline=$((SECONDS + 60))
    while (( SECONDS < deadline )); do
      now_coalesced=$(curl -s -m 5 "http://127.0.0.1:$HOST_PORT/healthz" | python3 -c 'import json,sys; print(json.load(sys.stdin)["queue"]["samples_coalesced"])' 2>/dev/null || echo -2)
      [[ $now_coalesced == "$previous" ]] && break
      previous=$now_coalesced
      sleep 3
    done
    log "host settled (coalesced during start-up: $previous)"
  fi

  local pid f sims_before=() consumer_before
  consumer_before=$(cpu_secs "$CONSUMER_PID")
  for pid in "${SIM_PIDS[@]}"; do sims_before+=("$(cpu_secs "$pid")"); done
  # Rates use the real elapsed times: an overloaded host answers /healthz late and an
  # overloaded simulator writes its stats file late (its counters carry their own uptime).
  local begin_ms end_ms health_end_ms
  curl -s -m 5 "http://127.0.0.1:$HOST_PORT/healthz" >"$WORK/health-$name.begin" 2>/dev/null || true
  begin_ms=$(date +%s%3N); local jiffies_begin; jiffies_begin=$(cpu_jiffies)
  for f in "$WORK"/stats-"$name"-*.json; do cp "$f" "$f.begin"; done
  sleep "$DURATION"
  for f in "$WORK"/stats-"$name"-*.json; do cp "$f" "$f.end"; done
  end_ms=$(date +%s%3N); local steal; steal=$(steal_pct "$jiffies_begin" "$(cpu_jiffies)")
  local consumer_cpu consumer_rss consumer_hwm sim_cpu=0 sim_rss=0 i=0 consumer_alive=true
  kill -0 "$CONSUMER_PID" 2>/dev/null || { consumer_alive=false; log "consumer of $name died; see its log"; }
  consumer_cpu=$(calc "$(cpu_secs "$CONSUMER_PID") - $consumer_before")
  consumer_rss=$(rss_kb "$CONSUMER_PID"); consumer_hwm=$(hwm_kb "$CONSUMER_PID")
  for pid in "${SIM_PIDS[@]}"; do
    sim_cpu=$(calc "$sim_cpu + $(cpu_secs "$pid") - ${sims_before[$i]}"); i=$((i + 1))
    sim_rss=$(( sim_rss + $(rss_kb "$pid") ))
  done
  curl -s -m 5 "http://127.0.0.1:$HOST_PORT/healthz" >"$WORK/health-$name.end" 2>/dev/null || true
  health_end_ms=$(date +%s%3N)

  local own='{}' health_begin='{}' health_end='{}' db='{}'
  if [[ $CONSUMER_KIND == drain ]]; then
    wait "$CONSUMER_PID" || true
    own=$(cat "$WORK/drain-$name.json" 2>/dev/null || echo '{}')
  else
    stop_pid "$CONSUMER_PID"
    [[ -s $WORK/health-$name.begin ]] && health_begin=$(cat "$WORK/health-$name.begin")
    [[ -s $WORK/health-$name.end ]] && health_end=$(cat "$WORK/health-$name.end")
    if [[ -z ${DB_URL:-} && -f $WORK/host-data-$name/infinibay.db ]]; then
      db=$(python3 "$ROOT/bench/host/db_window.py" "$WORK/host-data-$name/infinibay.db" "$begin_ms" "$end_ms" "$interval" "$flood" || echo '{}')
    fi
  fi
  for pid in "${SIM_PIDS[@]}"; do stop_pid "$pid"; done
  local begin="" end=""
  for f in "$WORK"/stats-"$name"-*.json; do
    begin+="$(cat "$f.begin" 2>/dev/null || echo '{"sim_totals":{}}'),"; end+="$(cat "$f.end" 2>/dev/null || echo '{"sim_totals":{}}'),"
  done
  cat >>"$LOADS_JSON" <<JSON
{"name": "$name", "vms": $vms, "interval": $interval, "profile": "$profile", "flood": $flood, "sim_threads": $threads, "duration": $DURATION, "steal_pct": $steal, "window_secs": $(calc "($end_ms - $begin_ms) / 1000"), "health_secs": $(calc "($health_end_ms - $begin_ms) / 1000"), "consumer_kind": "$CONSUMER_KIND", "consumer_alive": $consumer_alive, "consumer_log_tail": $(tail -n 3 "$WORK/host-$name.err" 2>/dev/null | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()[-600:]))'), "consumer_cpu_secs": $consumer_cpu, "consumer_rss_kb": $consumer_rss, "consumer_hwm_kb": $consumer_hwm, "consumer_own": $own, "sim_cpu_secs": $sim_cpu, "sim_rss_kb": $sim_rss, "sim_processes": ${#SIM_PIDS[@]}, "sim_begin": [${begin%,}], "sim_end": [${end%,}], "store": "${DB_KIND:-sqlite}", "health_begin": $health_begin, "health_end": $health_end, "db": $db}
JSON
  rm -rf "$SOCKDIR"
}

# ---------------------------------------------------------------------------------------------
# Sustained storage: `infinibay serve` with a real store, fed a steady SUSTAIN_RATE samples/s by
# `infinibay-sim paced-feed` (the ingest corpus, pre-rendered, SUSTAIN_VMS sockets each writing
# its share every SUSTAIN_TICK_MS): measured like the ingest budget, with storage on. The
# per-VM token bucket is raised for it (1,000 VMs × 50 samples/s exceed the default 10/s).
SUSTAIN_JSON=$WORK/sustain.jsonl
: >"$SUSTAIN_JSON"
SUSTAIN_VMS=${SUSTAIN_VMS:-1000}
SUSTAIN_RATE=${SUSTAIN_RATE:-50000}
SUSTAIN_TICK_MS=${SUSTAIN_TICK_MS:-100}

# CPU seconds of a PostgreSQL server and its backends (0 without one).
pg_cpu_secs() {
  local pm total=0 pid
  pm=$(head -n 1 "${PG_THROWAWAY_DIR:-/nonexistent}/data/postmaster.pid" 2>/dev/null) || { echo 0; return; }
  for pid in "$pm" $(pgrep -P "$pm"); do total=$(calc "$total + $(cpu_secs "$pid")"); done
  echo "$total"
}

run_sustain() { # name store
  local name=$1 store=$2
  log "sustain $name: $SUSTAIN_VMS VMs, $SUSTAIN_RATE samples/s in all, every ${SUSTAIN_TICK_MS} ms, store $store"
  local dir=$WORK/s-$name data=$WORK/host-data-$name
  mkdir -p "$dir" "$data"
  printf '[ingest]\nrate_per_sec = 1000.0\nburst = 1000\n' >"$WORK/sustain.toml"
  "$SIM" paced-feed --socket-dir "$dir" --corpus "$CORPUS" --vms "$SUSTAIN_VMS" --rate "$SUSTAIN_RATE" \
    --tick-ms "$SUSTAIN_TICK_MS" --stats-file "$WORK/paced-$name.json" \
    >"$WORK/paced-$name.out" 2>"$WORK/paced-$name.err" &
  local feeder=$!; PIDS+=("$feeder")
  wait_for_sockets "$dir" "$SUSTAIN_VMS" 60
  local db_args=()
  [[ $store == postgres ]] && db_args=(--database "$DB_URL")
  env -u INFINIBAY_TEST_PG_URL INFINIBAY_API__METRICS_LISTEN=127.0.0.1:0 "$HOST_BIN" serve --config "$WORK/sustain.toml" --socket-dir "$dir" --data-dir "$data" \
    --listen "127.0.0.1:$HOST_PORT" "${db_args[@]}" >"$WORK/host-$name.out" 2>"$WORK/host-$name.err" &
  local host=$!; PIDS+=("$host")
  local deadline=$((SECONDS + 60)) online=0
  while (( SECONDS < deadline )); do
    online=$(curl -s -m 5 "http://127.0.0.1:$HOST_PORT/healthz" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("online", 0))' 2>/dev/null || echo 0)
    (( online >= SUSTAIN_VMS )) && break
    sleep 1
  done
  log "host: $online/$SUSTAIN_VMS VMs online"
  sleep 5
  local host_before feeder_before pg_before begin_ms end_ms
  curl -s -m 10 "http://127.0.0.1:$HOST_PORT/healthz" >"$WORK/health-$name.begin" || true
  cp "$WORK/paced-$name.json" "$WORK/paced-$name.begin"
  host_before=$(cpu_secs "$host"); feeder_before=$(cpu_secs "$feeder"); pg_before=$(pg_cpu_secs)
  begin_ms=$(date +%s%3N); local jiffies_begin; jiffies_begin=$(cpu_jiffies)
  sleep "$DURATION"
  end_ms=$(date +%s%3N); local steal; steal=$(steal_pct "$jiffies_begin" "$(cpu_jiffies)")
  local host_cpu feeder_cpu pg_cpu rss hwm
  host_cpu=$(calc "$(cpu_secs "$host") - $host_before"); feeder_cpu=$(calc "$(cpu_secs "$feeder") - $feeder_before")
  pg_cpu=$(calc "$(pg_cpu_secs) - $pg_before")
  rss=$(rss_kb "$host"); hwm=$(hwm_kb "$host")
  cp "$WORK/paced-$name.json" "$WORK/paced-$name.end"
  curl -s -m 10 "http://127.0.0.1:$HOST_PORT/healthz" >"$WORK/health-$name.end" || true
  stop_pid "$host"; stop_pid "$feeder"
  local hb='{}' he='{}' fb='{}' fe='{}'
  [[ -s $WORK/health-$name.begin ]] && hb=$(cat "$WORK/health-$name.begin")
  [[ -s $WORK/health-$name.end ]] && he=$(cat "$WORK/health-$name.end")
  [[ -s $WORK/paced-$name.begin ]] && fb=$(cat "$WORK/paced-$name.begin")
  [[ -s $WORK/paced-$name.end ]] && fe=$(cat "$WORK/paced-$name.end")
  cat >>"$SUSTAIN_JSON" <<JSON
{"name": "$name", "store": "$store", "vms": $SUSTAIN_VMS, "rate": $SUSTAIN_RATE, "tick_ms": $SUSTAIN_TICK_MS, "steal_pct": $steal, "window_secs": $(calc "($end_ms - $begin_ms) / 1000"), "host_cpu_secs": $host_cpu, "feeder_cpu_secs": $feeder_cpu, "pg_cpu_secs": $pg_cpu, "host_rss_kb": $rss, "host_hwm_kb": $hwm, "health_begin": $hb, "health_end": $he, "feed_begin": $fb, "feed_end": $fe}
JSON
  rm -rf "$dir"
}

HOST_PORT=${HOST_PORT:-18480}
STORE_VMS=${STORE_VMS:-$VMS}
STORE_INTERVAL=${STORE_INTERVAL:-0.2}
if [[ $HOST_OK == 1 ]]; then
  want many && run_load many "$VMS" 1 small 0 0
  want flood && run_load flood "$((OTHERS + 1))" 1 small 1 0
  want store && DB_KIND=sqlite run_load store-sqlite "$STORE_VMS" "$STORE_INTERVAL" small 0 0
  if want store && [[ ${SKIP_PG:-0} != 1 ]]; then
    # shellcheck source=../../scripts/lib/postgres.sh
    source "$ROOT/scripts/lib/postgres.sh"
    if pg_throwaway_start >"$WORK/pg.log" 2>&1; then
      DB_URL=$INFINIBAY_TEST_PG_URL DB_KIND=postgres run_load store-pg "$STORE_VMS" "$STORE_INTERVAL" small 0 0
      pg_throwaway_stop
    else
      log "PostgreSQL did not start: $(tail -n 3 "$WORK/pg.log")"
    fi
  fi
fi
if [[ $HOST_OK == 1 ]] && want sustain; then
  run_sustain sustain-sqlite sqlite
  if [[ ${SKIP_PG:-0} != 1 ]]; then
    # shellcheck source=../../scripts/lib/postgres.sh
    source "$ROOT/scripts/lib/postgres.sh"
    if pg_throwaway_start >"$WORK/pg-sustain.log" 2>&1; then
      DB_URL=$INFINIBAY_TEST_PG_URL run_sustain sustain-pg postgres
      pg_throwaway_stop
    else
      log "PostgreSQL did not start: $(tail -n 3 "$WORK/pg-sustain.log")"
    fi
  fi
fi
# The stand-in host: the simulator's own cost on both runtimes, and a floor for the host.
if want drain; then
  USE_DRAIN=1 run_load many-drain "$VMS" 1 small 0 0
  if [[ ${COMPARE_SIM_THREADS:-1} == 1 ]]; then
    USE_DRAIN=1 run_load many-drain-mt "$VMS" 1 small 0 2
  fi
  USE_DRAIN=1 run_load flood-drain "$((OTHERS + 1))" 1 small 1 0
fi

# ---------------------------------------------------------------------------------------------
log "writing $OUT"
mkdir -p "$(dirname "$OUT")"
CONTEXT="$CONTEXT" python3 "$ROOT/bench/host/report.py" "$INGEST_JSON" "$LOADS_JSON" "$OUT" "$HOST_OK" "$CORPUS_BYTES" "$INGEST_MESSAGES" "$ROUNDS" "$SUSTAIN_JSON"
log "done: $OUT"
cat "$OUT"

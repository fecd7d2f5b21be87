# shellcheck shell=bash
# A throwaway NATS server for tests and benchmarks (like postgres.sh).
#
#   source scripts/lib/nats.sh
#   nats_throwaway_start            # exports INFINIBAY_TEST_NATS_URL (and prints it)
#   cargo test -p infinibay --test scale_out
#   nats_throwaway_stop
#
# Call nats_throwaway_start directly, not inside $(...): it must export into this shell.
# The server listens on a free 127.0.0.1 port, with `max_payload` at 8 MiB (a node's answers
# come in parts anyway; larger messages mean fewer of them). Its log is in
# $NATS_THROWAWAY_DIR/server.log. Tests that kill NATS start their own server with the same
# binary (INFINIBAY_TEST_NATS_SERVER), never this shared one.
# With NATS_THROWAWAY_MONITOR=1 the server also serves its monitoring endpoint (/varz: message
# counters) on another free port, exported as NATS_THROWAWAY_MONITOR_URL (benchmarks).

nats__free_port() {
    local port tries=0
    while [ $tries -lt 200 ]; do
        port=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
        tries=$((tries + 1))
    done
    echo "nats_throwaway: no free port found" >&2
    return 1
}

nats_throwaway_start() {
    local bin port i
    bin=$(command -v nats-server) || {
        echo "nats_throwaway: nats-server not found (apt-get install nats-server)" >&2
        return 1
    }
    port=$(nats__free_port) || return 1
    NATS_THROWAWAY_DIR=$(mktemp -d "${TMPDIR:-/tmp}/infinibay-nats.XXXXXX") || return 1
    printf 'max_payload: 8MB\n' >"$NATS_THROWAWAY_DIR/nats.conf"
    local monitor=()
    if [ "${NATS_THROWAWAY_MONITOR:-0}" = 1 ]; then
        local mport
        mport=$(nats__free_port) || return 1
        monitor=(-m "$mport")
        export NATS_THROWAWAY_MONITOR_URL="http://127.0.0.1:$mport"
    fi
    "$bin" -a 127.0.0.1 -p "$port" -c "$NATS_THROWAWAY_DIR/nats.conf" "${monitor[@]}" \
        -l "$NATS_THROWAWAY_DIR/server.log" &
    NATS_THROWAWAY_PID=$!
    for i in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            export INFINIBAY_TEST_NATS_URL="nats://127.0.0.1:$port"
            export INFINIBAY_TEST_NATS_SERVER="$bin"
            echo "$INFINIBAY_TEST_NATS_URL"
            return 0
        fi
        if ! kill -0 "$NATS_THROWAWAY_PID" 2>/dev/null; then
            break
        fi
        sleep 0.05
    done
    echo "nats_throwaway: server did not start:" >&2
    cat "$NATS_THROWAWAY_DIR/server.log" >&2 2>/dev/null
    nats_throwaway_stop
    return 1
}

nats_throwaway_stop() {
    if [ -n "${NATS_THROWAWAY_PID:-}" ]; then
        kill "$NATS_THROWAWAY_PID" 2>/dev/null || true
        wait "$NATS_THROWAWAY_PID" 2>/dev/null || true
    fi
    if [ -n "${NATS_THROWAWAY_DIR:-}" ]; then
        rm -rf "$NATS_THROWAWAY_DIR"
    fi
    unset NATS_THROWAWAY_PID NATS_THROWAWAY_DIR INFINIBAY_TEST_NATS_URL INFINIBAY_TEST_NATS_SERVER \
        NATS_THROWAWAY_MONITOR_URL
}

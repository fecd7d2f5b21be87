# shellcheck shell=bash
# A throwaway PostgreSQL server for tests and benchmarks.
#
#   source scripts/lib/postgres.sh
#   pg_throwaway_start            # exports INFINIBAY_TEST_PG_URL (and prints it)
#   cargo test -p infinibay-store
#   pg_throwaway_stop
#
# Call pg_throwaway_start directly, not inside $(...): it must export into this shell.
# The server lives in a fresh temp dir on a free 127.0.0.1 port, with trust auth for user
# `postgres`. initdb refuses to run as root, so as root the server runs as the `postgres`
# user (or `nobody` when that user does not exist). Extra server options:
# PG_THROWAWAY_OPTS (e.g. "-c fsync=off" for tests; the benchmark leaves durability on).

pg__find_bin() {
    local name=$1 dir
    if command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
        return 0
    fi
    for dir in /usr/lib/postgresql/*/bin /usr/local/pgsql/bin; do
        if [ -x "$dir/$name" ]; then
            echo "$dir/$name"
            return 0
        fi
    done
    echo "pg_throwaway: '$name' not found (install postgresql, e.g. apt-get install postgresql)" >&2
    return 1
}

pg__free_port() {
    local port tries=0
    while [ $tries -lt 200 ]; do
        port=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
        tries=$((tries + 1))
    done
    echo "pg_throwaway: no free port found" >&2
    return 1
}

pg_throwaway_start() {
    local initdb pg_ctl port user=""
    initdb=$(pg__find_bin initdb) || return 1
    pg_ctl=$(pg__find_bin pg_ctl) || return 1
    port=$(pg__free_port) || return 1
    PG_THROWAWAY_DIR=$(mktemp -d "${TMPDIR:-/tmp}/infinibay-pg.XXXXXX") || return 1
    PG_THROWAWAY_AS=()
    if [ "$(id -u)" = 0 ]; then
        if id -u postgres >/dev/null 2>&1; then user=postgres; else user=nobody; fi
        chown "$user" "$PG_THROWAWAY_DIR" || return 1
        PG_THROWAWAY_AS=(runuser -u "$user" --)
    fi
    if ! "${PG_THROWAWAY_AS[@]}" "$initdb" -D "$PG_THROWAWAY_DIR/data" -U postgres -A trust \
        -E UTF8 --no-sync >"$PG_THROWAWAY_DIR/initdb.log" 2>&1; then
        echo "pg_throwaway: initdb failed:" >&2
        cat "$PG_THROWAWAY_DIR/initdb.log" >&2
        return 1
    fi
    # shellcheck disable=SC2086 # PG_THROWAWAY_OPTS is a list of options on purpose
    if ! "${PG_THROWAWAY_AS[@]}" "$pg_ctl" -D "$PG_THROWAWAY_DIR/data" \
        -l "$PG_THROWAWAY_DIR/server.log" -w -t 60 \
        -o "-k $PG_THROWAWAY_DIR -h 127.0.0.1 -p $port -c max_connections=200 ${PG_THROWAWAY_OPTS:-}" \
        start >/dev/null; then
        echo "pg_throwaway: server did not start:" >&2
        cat "$PG_THROWAWAY_DIR/server.log" >&2
        return 1
    fi
    PG_THROWAWAY_PG_CTL=$pg_ctl
    export INFINIBAY_TEST_PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
    echo "$INFINIBAY_TEST_PG_URL"
}

pg_throwaway_stop() {
    if [ -z "${PG_THROWAWAY_DIR:-}" ]; then
        return 0
    fi
    "${PG_THROWAWAY_AS[@]}" "$PG_THROWAWAY_PG_CTL" -D "$PG_THROWAWAY_DIR/data" -m fast -w stop \
        >/dev/null 2>&1 || true
    rm -rf "$PG_THROWAWAY_DIR"
    unset PG_THROWAWAY_DIR PG_THROWAWAY_PG_CTL INFINIBAY_TEST_PG_URL
}

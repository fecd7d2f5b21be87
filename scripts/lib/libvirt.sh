# shellcheck shell=bash
# A throwaway libvirtd for tests and benchmarks.
#
#   source scripts/lib/libvirt.sh
#   libvirt_throwaway_start     # exports IB_TEST_LIBVIRT_URI and IB_TEST_LIBVIRT_DIR (prints the URI)
#   cargo test -p infinibay-libvirt
#   libvirt_throwaway_stop      # destroys its domains, stops the daemons, removes the directory
#
# Call libvirt_throwaway_start directly, not inside $(...): it must export into this shell.
#
# The daemon is private: a *session* libvirtd (with its own virtlogd) of an unprivileged user
# (`nobody` when run as root, else the caller; LIBVIRT_THROWAWAY_USER overrides), every one of
# its directories (config, runtime, cache, domain definitions) under a fresh /tmp/ibvirt.XXXXXX.
# It never touches /etc/libvirt, /var/run/libvirt or a system daemon, and several can run side
# by side. Its URI names its socket: `qemu+unix:///session?socket=DIR/run/libvirt/libvirt-sock`.
# Root connects to it like any client. Its QEMU runs as that user under TCG (`type='qemu'`):
# whatever a domain opens (kernel, disk images, socket directory) must be reachable by it.
#
# For tests that need the daemon to go away while domains run (reconnect tests):
#   libvirt_throwaway_daemon_stop [DIR]      # libvirtd only; its QEMU processes keep running
#   libvirt_throwaway_daemon_start [DIR]     # a new libvirtd on the same directory
#   libvirt_throwaway_restart [DIR]          # both
# DIR defaults to $IB_TEST_LIBVIRT_DIR.
#
# (Not INFINIBAY_*: the host reads every such variable as one of its settings.)

# Installs the Debian packages libvirt needs here, when missing: what the `virt` crate builds
# against (pkg-config, libvirt-dev) and, unless called as `libvirt_install_packages build`, the
# daemon and its QEMU driver, virsh, QEMU and qemu-img.
libvirt_install_packages() {
    local need=()
    command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
    pkg-config --exists libvirt 2>/dev/null || need+=(libvirt-dev)
    if [ "${1:-}" != build ]; then
        libvirt__need_runtime_packages
    fi
    if ((${#need[@]} == 0)); then
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        echo "libvirt: missing packages ${need[*]} (run as root, or apt-get install them)" >&2
        return 1
    fi
    echo "libvirt: installing Debian packages: ${need[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${need[@]}" >/dev/null
}

# Adds to the caller's `need` what the throwaway daemon and its domains use.
libvirt__need_runtime_packages() {
    command -v libvirtd >/dev/null 2>&1 || need+=(libvirt-daemon)
    compgen -G '/usr/lib/*/libvirt/connection-driver/libvirt_driver_qemu.so' >/dev/null ||
        need+=(libvirt-daemon-driver-qemu)
    command -v virsh >/dev/null 2>&1 || need+=(libvirt-clients)
    command -v virtlogd >/dev/null 2>&1 || need+=(libvirt-daemon)
    command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
    command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
    command -v runuser >/dev/null 2>&1 || need+=(util-linux)
}

# Runs a command as the daemon's user with the session environment of DIR.
libvirt__as_user() {
    local dir=$1
    shift
    local user
    user=$(cat "$dir/user")
    local env=(env -i "HOME=$dir" "XDG_CONFIG_HOME=$dir/config" "XDG_CACHE_HOME=$dir/cache"
        "XDG_RUNTIME_DIR=$dir/run" "XDG_DATA_HOME=$dir/data" "XDG_STATE_HOME=$dir/state"
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin" "LANG=C")
    if [ "$user" = "$(id -un)" ]; then
        "${env[@]}" "$@"
    else
        runuser -u "$user" -- "${env[@]}" "$@"
    fi
}

libvirt__dir() {
    local dir=${1:-${IB_TEST_LIBVIRT_DIR:-}}
    if [ -z "$dir" ] || [ ! -f "$dir/user" ]; then
        echo "libvirt: no throwaway libvirtd directory (give one or set IB_TEST_LIBVIRT_DIR)" >&2
        return 1
    fi
    echo "$dir"
}

libvirt__uri() {
    echo "qemu+unix:///session?socket=$1/run/libvirt/libvirt-sock"
}

libvirt__pid_alive() {
    local pid_file=$1 pid
    [ -s "$pid_file" ] || return 1
    pid=$(cat "$pid_file")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# Sends TERM to the process in PID_FILE and waits up to 10 s for it to go (then KILL).
libvirt__stop_pid() {
    local pid_file=$1 pid tries=0
    libvirt__pid_alive "$pid_file" || return 0
    pid=$(cat "$pid_file")
    kill -TERM "$pid" 2>/dev/null || return 0
    while kill -0 "$pid" 2>/dev/null; do
        tries=$((tries + 1))
        if [ $tries -ge 100 ]; then
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
    rm -f "$pid_file"
}

libvirt_throwaway_daemon_start() {
    local dir tries=0
    dir=$(libvirt__dir "${1:-}") || return 1
    if ! libvirt__pid_alive "$dir/virtlogd.pid"; then
        libvirt__as_user "$dir" virtlogd --daemon --pid-file "$dir/virtlogd.pid" || {
            echo "libvirt: virtlogd did not start" >&2
            return 1
        }
    fi
    libvirt__pid_alive "$dir/libvirtd.pid" && return 0
    libvirt__as_user "$dir" libvirtd --daemon --timeout 0 --pid-file "$dir/libvirtd.pid" || {
        echo "libvirt: libvirtd did not start:" >&2
        tail -n 20 "$dir/cache/libvirt/libvirtd.log" >&2 2>/dev/null
        return 1
    }
    # The socket exists before the drivers are ready; an answered request means ready.
    until virsh -q -c "$(libvirt__uri "$dir")" version >/dev/null 2>&1; do
        tries=$((tries + 1))
        if [ $tries -ge 300 ]; then
            echo "libvirt: libvirtd did not answer within 30 s:" >&2
            tail -n 20 "$dir/cache/libvirt/libvirtd.log" >&2 2>/dev/null
            return 1
        fi
        sleep 0.1
    done
}

libvirt_throwaway_daemon_stop() {
    local dir
    dir=$(libvirt__dir "${1:-}") || return 1
    libvirt__stop_pid "$dir/libvirtd.pid"
}

libvirt_throwaway_restart() {
    libvirt_throwaway_daemon_stop "${1:-}" && libvirt_throwaway_daemon_start "${1:-}"
}

libvirt_throwaway_start() {
    local dir user
    libvirt_install_packages || return 1
    if [ -n "${LIBVIRT_THROWAWAY_USER:-}" ]; then
        user=$LIBVIRT_THROWAWAY_USER
    elif [ "$(id -u)" = 0 ]; then
        user=nobody
    else
        user=$(id -un)
    fi
    # Short: libvirt's own sockets (and QEMU's monitor) live below it, and AF_UNIX paths
    # stop at 107 bytes.
    dir=$(mktemp -d /tmp/ibvirt.XXXXXX) || return 1
    chmod 0755 "$dir"
    echo "$user" >"$dir/user"
    if [ "$user" != "$(id -un)" ]; then
        chown "$user" "$dir" || return 1
    fi
    if ! libvirt_throwaway_daemon_start "$dir"; then
        libvirt_throwaway_stop "$dir"
        return 1
    fi
    export IB_TEST_LIBVIRT_DIR=$dir
    IB_TEST_LIBVIRT_URI=$(libvirt__uri "$dir")
    export IB_TEST_LIBVIRT_URI
    echo "$IB_TEST_LIBVIRT_URI"
}

libvirt_throwaway_stop() {
    local dir uri name pid_file
    dir=${1:-${IB_TEST_LIBVIRT_DIR:-}}
    if [ -z "$dir" ] || [ ! -f "$dir/user" ]; then
        return 0
    fi
    uri=$(libvirt__uri "$dir")
    if libvirt__pid_alive "$dir/libvirtd.pid"; then
        # Running domains first: their QEMU would outlive the daemon.
        while read -r name; do
            [ -n "$name" ] && virsh -q -c "$uri" destroy "$name" >/dev/null 2>&1
        done < <(virsh -q -c "$uri" list --name 2>/dev/null)
    fi
    libvirt__stop_pid "$dir/libvirtd.pid"
    # QEMU processes the daemon started while it was down (or that it failed to destroy).
    for pid_file in "$dir"/run/libvirt/qemu/run/*.pid; do
        case "$pid_file" in */driver.pid) continue ;; esac
        [ -e "$pid_file" ] && libvirt__stop_pid "$pid_file"
    done
    libvirt__stop_pid "$dir/virtlogd.pid"
    rm -rf "$dir"
    if [ "${IB_TEST_LIBVIRT_DIR:-}" = "$dir" ]; then
        unset IB_TEST_LIBVIRT_DIR IB_TEST_LIBVIRT_URI
    fi
}

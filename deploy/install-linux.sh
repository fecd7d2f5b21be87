#!/usr/bin/env bash
# Install the InfiniService guest agent on a Linux VM (seed 002):
#
#   sudo ./install-linux.sh normal <VM_ID>
#   sudo ./install-linux.sh debug  <VM_ID>     # same, with log_level = "debug"
#
# - the binary: ./infiniservice next to this script, or INFINISERVICE_BINARY=PATH;
#   installed to /opt/infiniservice/infiniservice, linked from /usr/local/bin/infiniservice.
#   Only the size-optimised build ships (`cargo build -p infiniservice --profile agent`,
#   target/agent/infiniservice: `infiniservice --version` says "opt-level s"); any other
#   build is refused unless INFINISERVICE_ALLOW_ANY_BUILD=1 (development only);
# - /etc/infiniservice/config.toml: written with the VM id; an existing file is kept (the
#   operator's policy stays) and only its `vm_id` line is updated;
# - the systemd unit: ./infiniservice.service next to this script (or INFINISERVICE_UNIT=PATH),
#   installed to /etc/systemd/system, enabled and (re)started when systemd runs;
# - everything is logged to /var/log/infiniservice_install.log.
#
# DESTDIR=/some/dir installs under that directory instead of / and skips systemctl (for
# packaging and for testing this script without touching the machine).
set -euo pipefail

usage() {
    echo "usage: $0 normal|debug <VM_ID>" >&2
    exit 2
}

[ $# -eq 2 ] || usage
mode="$1"
vm_id="$2"
case "$mode" in
    normal) log_level="info" ;;
    debug) log_level="debug" ;;
    *) usage ;;
esac
# The id goes into a TOML string: allow only what VM ids are made of (UUIDs, names).
if ! [[ "$vm_id" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$ ]]; then
    echo "install-linux: invalid VM id '$vm_id' (letters, digits, '.', '_', '-')" >&2
    exit 2
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
destdir="${DESTDIR:-}"
binary="${INFINISERVICE_BINARY:-$here/infiniservice}"
unit_src="${INFINISERVICE_UNIT:-$here/infiniservice.service}"
opt_dir="$destdir/opt/infiniservice"
etc_dir="$destdir/etc/infiniservice"
config="$etc_dir/config.toml"
unit_dir="$destdir/etc/systemd/system"
bin_link="$destdir/usr/local/bin/infiniservice"
log_file="$destdir/var/log/infiniservice_install.log"

if [ -z "$destdir" ] && [ "$(id -u)" -ne 0 ]; then
    echo "install-linux: must run as root (sudo $0 $*)" >&2
    exit 1
fi

mkdir -p "$(dirname "$log_file")"
log() {
    local line
    line="$(date -u +%Y-%m-%dT%H:%M:%SZ) $*"
    echo "$line" >>"$log_file"
    echo "install-linux: $*" >&2
}
fail() {
    log "ERROR: $*"
    exit 1
}

log "installing InfiniService (mode $mode, VM $vm_id)"
[ -f "$binary" ] || fail "agent binary not found at $binary (set INFINISERVICE_BINARY)"
[ -f "$unit_src" ] || fail "systemd unit not found at $unit_src (set INFINISERVICE_UNIT)"
# The memory budget (bench/results/agent.md) holds for the size-optimised build only.
build="$("$binary" --version 2>/dev/null || true)"
case "$build" in
    *"(opt-level s)"*) log "build: $build" ;;
    *)
        if [ "${INFINISERVICE_ALLOW_ANY_BUILD:-0}" = 1 ]; then
            log "WARNING: $binary is not the size-optimised agent build (${build:-no --version}); installing it anyway"
        else
            fail "$binary is not the size-optimised agent build (${build:-no --version}): build it with cargo build -p infiniservice --profile agent (target/agent/infiniservice)"
        fi
        ;;
esac

# Stop a running agent first: the port can be opened by one process only.
systemd_running=false
if [ -z "$destdir" ] && [ -d /run/systemd/system ]; then
    systemd_running=true
    if systemctl is-active --quiet infiniservice.service; then
        log "stopping the running agent"
        systemctl stop infiniservice.service
    fi
fi

mkdir -p "$opt_dir" "$etc_dir" "$unit_dir" "$(dirname "$bin_link")"
# Copy then rename: a crash mid-copy never leaves a half-written binary in place.
install -m 0755 "$binary" "$opt_dir/infiniservice.new"
mv -f "$opt_dir/infiniservice.new" "$opt_dir/infiniservice"
ln -sfn /opt/infiniservice/infiniservice "$bin_link"
log "binary installed to /opt/infiniservice/infiniservice ($(wc -c <"$opt_dir/infiniservice") bytes)"

if [ -f "$config" ]; then
    if grep -q '^vm_id[[:space:]]*=' "$config"; then
        sed -i "s/^vm_id[[:space:]]*=.*/vm_id = \"$vm_id\"/" "$config"
    else
        # Top-level keys must come before the first [table].
        sed -i "1i vm_id = \"$vm_id\"" "$config"
    fi
    log "kept the existing $config, vm_id set to $vm_id"
else
    umask 077
    cat >"$config" <<EOF
# InfiniService configuration (see docs/agent.md). Written by install-linux.sh.
vm_id = "$vm_id"
collection_interval = 30
log_level = "$log_level"
service_name = "infiniservice"
virtio_serial_path = ""  # auto-detected if empty

[policy]
# Raw shell commands from the host. Off unless you need them.
allow_unsafe = false
# Empty: every safe action is allowed.
allowed_safe_actions = []
denied_safe_actions = []

[limits]
max_concurrent_commands = 4
max_output_bytes = 1048576
default_timeout_secs = 60
process_top_n = 50
inventory_interval = 300
EOF
    umask 022
    log "wrote $config"
fi

install -m 0644 "$unit_src" "$unit_dir/infiniservice.service"
log "unit installed to /etc/systemd/system/infiniservice.service"

if [ "$systemd_running" = true ]; then
    systemctl daemon-reload
    systemctl enable infiniservice.service >>"$log_file" 2>&1
    systemctl restart infiniservice.service
    sleep 1
    if systemctl is-active --quiet infiniservice.service; then
        log "infiniservice is running"
    else
        log "infiniservice did not stay up; diagnosis follows"
        "$opt_dir/infiniservice" --config /etc/infiniservice/config.toml --diagnose >>"$log_file" 2>&1 || true
        fail "see journalctl -u infiniservice and $log_file"
    fi
elif [ -z "$destdir" ]; then
    log "systemd is not running here: unit installed but not started"
fi
log "done"

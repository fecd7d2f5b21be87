#!/usr/bin/env bash
# Install the InfiniService guest agent on a Linux VM (seed 002):
#
#   sudo ./install-linux.sh normal <VM_ID>
#   sudo ./install-linux.sh debug  <VM_ID>     # same, with log_level = "debug"
#
# It needs nothing but the agent binary beside it, so it works as downloaded from the host
# (inside the VM; TOKEN from GraphQL `vmInstallToken(vmId)`, valid 24 h; docs/api.md):
#
#   curl -fsSo install-linux.sh "$HOST/infiniservice/linux/script?token=$TOKEN"
#   curl -fsSo infiniservice    "$HOST/infiniservice/linux/binary?token=$TOKEN"
#   sudo bash install-linux.sh normal <VM_ID>
#
# - the binary: ./infiniservice next to this script, or INFINISERVICE_BINARY=PATH;
#   installed to /opt/infiniservice/infiniservice, linked from /usr/local/bin/infiniservice.
#   Only the size-optimised build ships (`cargo build -p infiniservice --profile agent`,
#   target/agent/infiniservice: `infiniservice --version` says "opt-level s"); any other
#   build is refused unless INFINISERVICE_ALLOW_ANY_BUILD=1 (development only);
# - /etc/infiniservice/config.toml: written with the VM id; an existing file is kept (the
#   operator's policy stays) and only its `vm_id` line is updated;
# - the systemd unit: deploy/infiniservice.service, embedded in this script (`write_unit`; a
#   test keeps the two identical), or INFINISERVICE_UNIT=PATH; installed to /etc/systemd/system,
#   enabled and (re)started when systemd runs (and systemctl is there);
# - everything is logged to /var/log/infiniservice_install.log.
#
# DESTDIR=/some/dir installs under that directory instead of / and never runs systemctl (for
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
unit_src="${INFINISERVICE_UNIT:-}"
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
staged=""
fail() {
    log "ERROR: $*"
    [ -z "$staged" ] || rm -f "$staged"
    exit 1
}
# The unit, verbatim deploy/infiniservice.service (quoted heredoc: nothing is expanded).
write_unit() {
    cat <<'INFINISERVICE_UNIT'
# InfiniService guest agent (Linux). Installed by deploy/install-linux.sh, which carries this
# file verbatim (`write_unit`, so that the script works alone): change both; the host's test
# crates/host/tests/demo.rs fails when they differ.
#
# Hardening: the agent's job is to act as root on behalf of the host (systemctl, apt-get/dnf,
# kill, power-off, and, when the operator enables them, arbitrary commands). Every command runs
# as a child of this unit and inherits its sandbox, so only settings that break none of those
# actions are applied. The real safety lines are the agent's policy (unsafe commands off by
# default, allow/deny lists of safe actions) and the channel (reachable only from the host).
# Each choice is explained in docs/agent.md ("Hardening"); in short:
#   kept off on purpose: ProtectSystem/ProtectHome (package installs write /usr, /etc, /var;
#   commands may work in /home), ProtectKernelModules (kernel upgrades run depmod and
#   update-initramfs), ProtectKernelTunables/ProtectClock/ProtectHostname (admin commands and
#   package scripts set sysctls, time, hostname), NoNewPrivileges/RestrictSUIDSGID (SELinux
#   transitions of rpm scriptlets; packages install setuid binaries), PrivateTmp (commands
#   share /tmp with the admin), PrivateNetwork/RestrictAddressFamilies (apt/dnf download),
#   MemoryDenyWriteExecute/SystemCallArchitectures (JITs and i386 binaries in commands).
[Unit]
Description=InfiniService guest agent (Infinibay)
# The port appears when virtio_console is loaded; until then the agent exits with a clear
# message and systemd retries (Restart= below), so no hard dependency on the device unit.
After=systemd-modules-load.service local-fs.target
StartLimitIntervalSec=0

[Service]
Type=simple
ExecStart=/opt/infiniservice/infiniservice --config /etc/infiniservice/config.toml
Restart=always
RestartSec=5
# SIGTERM to the agent only: it SIGKILLs the process group of every running command itself;
# whatever escaped its group (setsid) is killed by systemd after the timeout.
KillMode=mixed
TimeoutStopSec=10
User=root
# Harmless for every action the agent offers:
LockPersonality=yes
RestrictRealtime=yes
# Bounds a runaway command (fork bomb) without limiting normal package operations.
TasksMax=512
# Commands (apt upgrade, scans) yield to the guest's workload.
CPUWeight=50
IOWeight=50
# A core dump could hold command output or environment values the agent never logs.
LimitCORE=0
UMask=0022
StandardOutput=journal
StandardError=journal
SyslogIdentifier=infiniservice

[Install]
WantedBy=multi-user.target
INFINISERVICE_UNIT
}

log "installing InfiniService (mode $mode, VM $vm_id)"
[ -f "$binary" ] || fail "agent binary not found at $binary (set INFINISERVICE_BINARY)"
[ -z "$unit_src" ] || [ -f "$unit_src" ] || fail "systemd unit not found at $unit_src (INFINISERVICE_UNIT)"
# Copy first, then check the copy: a downloaded binary has no execute bit. Renamed into place
# only after the running agent stopped, so a crash mid-copy never leaves half a binary there.
mkdir -p "$opt_dir"
staged="$opt_dir/infiniservice.new"
install -m 0755 "$binary" "$staged"
# The memory budget (bench/results/agent.md) holds for the size-optimised build only.
build="$("$staged" --version 2>/dev/null || true)"
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
# Without systemd, or without systemctl, the files are installed and nothing is started.
systemd_running=false
not_started=""
if [ -z "$destdir" ]; then
    if [ ! -d /run/systemd/system ]; then
        not_started="systemd is not running here"
    elif ! command -v systemctl >/dev/null; then
        not_started="WARNING: systemd runs but systemctl is not on PATH ($PATH)"
    else
        systemd_running=true
        if systemctl is-active --quiet infiniservice.service; then
            log "stopping the running agent"
            systemctl stop infiniservice.service
        fi
    fi
fi

mkdir -p "$etc_dir" "$unit_dir" "$(dirname "$bin_link")"
mv -f "$staged" "$opt_dir/infiniservice"
staged=""
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

if [ -n "$unit_src" ]; then
    install -m 0644 "$unit_src" "$unit_dir/infiniservice.service"
    log "unit $unit_src installed to /etc/systemd/system/infiniservice.service"
else
    write_unit >"$unit_dir/infiniservice.service.new"
    chmod 0644 "$unit_dir/infiniservice.service.new"
    mv -f "$unit_dir/infiniservice.service.new" "$unit_dir/infiniservice.service"
    log "unit installed to /etc/systemd/system/infiniservice.service"
fi

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
elif [ -n "$not_started" ]; then
    log "$not_started: unit installed but not started"
fi
log "done"

#!/usr/bin/env bash
# Put the agents where `infinibay serve` offers them for download
# (`GET /infiniservice/{linux,windows}/binary`, `/script`, and `/infiniservice/windows/msi`,
# docs/api.md): the size-optimised builds (the only ones that ship) and the installers, under
# the host's data directory.
#
#   deploy/publish-agents.sh DATA_DIR              the Linux agent and install-linux.sh
#   deploy/publish-agents.sh DATA_DIR --windows    also infiniservice.exe, its MSI and
#                                                  install-windows.ps1 (scripts/build-windows)
#
# Layout written (what crates/api/src/rest.rs reads):
#   DATA_DIR/infiniservice/binaries/linux/infiniservice
#   DATA_DIR/infiniservice/binaries/windows/infiniservice.exe   (+ infiniservice.msi beside it)
#   DATA_DIR/infiniservice/scripts/install-linux.sh, install-windows.ps1
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ $# -ge 1 ] || { echo "usage: $0 DATA_DIR [--windows]" >&2; exit 2; }
data_dir="$1"
windows=0
[ "${2:-}" = "--windows" ] && windows=1
target="${CARGO_TARGET_DIR:-$root/target}"

dest="$data_dir/infiniservice"
mkdir -p "$dest/binaries/linux" "$dest/scripts"
(cd "$root" && cargo build --quiet --profile agent -p infiniservice --bin infiniservice)
# Copy, then rename: a download never sees half a binary.
install -m 0755 "$target/agent/infiniservice" "$dest/binaries/linux/infiniservice.new"
mv -f "$dest/binaries/linux/infiniservice.new" "$dest/binaries/linux/infiniservice"
install -m 0644 "$root/deploy/install-linux.sh" "$dest/scripts/install-linux.sh"
echo "publish-agents: $("$dest/binaries/linux/infiniservice" --version) -> $dest/binaries/linux" >&2

if ((windows)); then
    "$root/scripts/build-windows" --msi
    mkdir -p "$dest/binaries/windows"
    for f in infiniservice.exe infiniservice.msi; do
        install -m 0644 "$target/windows/$f" "$dest/binaries/windows/$f.new"
        mv -f "$dest/binaries/windows/$f.new" "$dest/binaries/windows/$f"
    done
    install -m 0644 "$root/deploy/install-windows.ps1" "$dest/scripts/install-windows.ps1"
    echo "publish-agents: infiniservice.exe and infiniservice.msi -> $dest/binaries/windows" >&2
fi

#!/usr/bin/env bash
# Build the tiny e2e test guest: Debian's cloud kernel + an initramfs holding static busybox
# as /init, the virtio modules, our `infiniservice` and Debian's `qemu-ga` with their libraries.
#
#   e2e/build-guest.sh [--agent PATH/TO/infiniservice] [--out DIR]
#
# Without --agent: target/debug/infiniservice (built with cargo when missing).
# Output (default DIR = e2e/build): DIR/vmlinuz, DIR/initramfs.gz, DIR/guest.env (KVER=...).
# Idempotent: the kernel .deb is downloaded and unpacked once (e2e/build/kernel); the initramfs is
# rebuilt only when one of its inputs changed (agent binary, this script, e2e/guest/*).
# Missing Debian packages are installed with apt-get (CI starts from a fresh machine).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/build"
agent=""
while [ $# -gt 0 ]; do
    case "$1" in
        --agent) agent="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "build-guest: unknown argument $1" >&2; exit 2 ;;
    esac
done
if [ -z "$agent" ]; then
    # Default: the workspace's debug build (scripts/test builds every binary first).
    agent="${CARGO_TARGET_DIR:-$here/../target}/debug/infiniservice"
    if [ ! -x "$agent" ]; then
        (cd "$here/.." && cargo build --quiet -p infiniservice --bin infiniservice)
    fi
fi
[ -x "$agent" ] || { echo "build-guest: agent binary $agent is missing or not executable" >&2; exit 2; }
agent="$(readlink -f "$agent")"

log() { echo "build-guest: $*" >&2; }

# --- host tools -----------------------------------------------------------------------------
need_pkgs=()
command -v qemu-system-x86_64 >/dev/null || need_pkgs+=(qemu-system-x86)
[ -x /usr/sbin/qemu-ga ] || need_pkgs+=(qemu-guest-agent)
# Only busybox-static is static; the dynamic `busybox` package would need its libc too.
if ! file -L /bin/busybox 2>/dev/null | grep -q 'statically linked'; then need_pkgs+=(busybox-static); fi
command -v cpio >/dev/null || need_pkgs+=(cpio)
command -v depmod >/dev/null || need_pkgs+=(kmod)
command -v file >/dev/null || need_pkgs+=(file)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    log "installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
busybox_bin="$(readlink -f /bin/busybox)"

mkdir -p "$out" "$here/build"
lock="$here/build/.lock"
exec 9>"$lock"
# Two test binaries may ask for the image at once; the second waits for the first.
flock 9

# --- kernel: the versioned package behind linux-image-cloud-amd64, unpacked, never installed --
# The kernel is shared by every output directory (the tests' and the benchmark's images).
kdir="$here/build/kernel"
if [ ! -f "$kdir/.done" ]; then
    pkg="$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
        | sed -n 's/^ *Depends: \(linux-image-[0-9.-]*-cloud-amd64\)$/\1/p' | head -n1)"
    if [ -z "$pkg" ]; then
        apt-get update -qq
        pkg="$(apt-cache depends linux-image-cloud-amd64 \
            | sed -n 's/^ *Depends: \(linux-image-[0-9.-]*-cloud-amd64\)$/\1/p' | head -n1)"
    fi
    [ -n "$pkg" ] || { log "cannot resolve linux-image-cloud-amd64 to a versioned kernel"; exit 1; }
    log "downloading $pkg"
    rm -rf "$kdir" && mkdir -p "$kdir/deb"
    # apt-get download writes into the current directory; _apt cannot write there as root's
    # sandbox user, which is only a warning.
    (cd "$kdir/deb" && apt-get download "$pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
    deb="$(ls "$kdir"/deb/*.deb 2>/dev/null | head -n1)"
    [ -n "$deb" ] || { log "download of $pkg failed"; exit 1; }
    dpkg-deb -x "$deb" "$kdir/root"
    kver="$(ls "$kdir/root/lib/modules" | head -n1)"
    # The .deb ships no modules.dep; depmod against the unpacked tree, the host is untouched.
    depmod -b "$kdir/root" "$kver"
    echo "$kver" >"$kdir/kver"
    rm -rf "$kdir/deb"
    touch "$kdir/.done"
fi
kver="$(cat "$kdir/kver")"
cp -f "$kdir/root/boot/vmlinuz-$kver" "$out/vmlinuz.tmp" && mv -f "$out/vmlinuz.tmp" "$out/vmlinuz"

# --- initramfs: rebuild only when an input changed ------------------------------------------
guest_src="$here/guest"
stamp_inputs() {
    {
        echo "kver=$kver"
        sha256sum "$agent" "$here/build-guest.sh" "$busybox_bin" /usr/sbin/qemu-ga
        find "$guest_src" -type f -print0 | sort -z | xargs -0 sha256sum
    } | sha256sum | cut -d' ' -f1
}
stamp="$(stamp_inputs)"
if [ -f "$out/initramfs.gz" ] && [ "$(cat "$out/initramfs.stamp" 2>/dev/null)" = "$stamp" ]; then
    log "up to date ($out/initramfs.gz)"
else
    log "building initramfs (kernel $kver, agent $agent)"
    root="$out/rootfs"
    rm -rf "$root"
    mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,run,root,var/log,lib/modules,usr/bin,usr/sbin,etc/infiniservice}
    ln -s lib "$root/lib64"
    chmod 1777 "$root/tmp"

    cp "$busybox_bin" "$root/bin/busybox"
    # No dpkg/rpm applets: the agent must see a guest without a package manager, not a
    # busybox imitation of one.
    for applet in $("$root/bin/busybox" --list); do
        case "$applet" in dpkg|dpkg-deb|rpm|rpm2cpio) continue ;; esac
        [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
    done
    # The kernel opens /dev/console for init's stdio before /init mounts devtmpfs.
    mknod -m 600 "$root/dev/console" c 5 1

    # Virtio modules in dependency order, as modprobe would load them; then the ACPI power
    # button and evdev, so that busybox acpid sees a host's ACPI shutdown (libvirt's default).
    : >"$root/lib/modules/load-order"
    for m in virtio_pci virtio_console virtio_net button evdev; do
        modprobe -d "$kdir/root" -S "$kver" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
    done | awk '!seen[$0]++' | while read -r ko; do
        cp "$ko" "$root/lib/modules/"
        basename "$ko" >>"$root/lib/modules/load-order"
    done

    # A glibc binary runs with the libraries ldd names; everything goes flat into /lib, and
    # lib64 -> lib makes the interpreter path /lib64/ld-linux-x86-64.so.2 resolve.
    copy_with_libs() {
        local bin="$1" dest="$2"
        cp "$bin" "$root$dest"
        ldd "$bin" | awk '/=>/ {print $3} /^\t\/.*ld-linux/ {print $1}' | while read -r lib; do
            [ -n "$lib" ] && [ -f "$lib" ] || continue
            cp -nL "$lib" "$root/lib/$(basename "$lib")"
        done
    }
    copy_with_libs "$agent" /usr/bin/infiniservice
    copy_with_libs /usr/sbin/qemu-ga /usr/sbin/qemu-ga

    cp "$guest_src/init" "$root/init"
    chmod 755 "$root/init"
    cp "$guest_src/infiniservice.toml" "$root/etc/infiniservice/config.toml"
    cp "$guest_src/infiniservice.args" "$root/etc/infiniservice/args"
    cp "$guest_src/os-release" "$root/etc/os-release"
    install -m 755 "$guest_src/shutdown" "$root/sbin/shutdown"
    install -D -m 755 "$guest_src/acpi-power-button" "$root/etc/acpi/PWRF/00000080"
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
    printf 'root:x:0:\n' >"$root/etc/group"
    echo "$kver" >"$root/etc/kernel-release"

    (cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet --owner=0:0) \
        | gzip -6 >"$out/initramfs.gz.tmp"
    mv -f "$out/initramfs.gz.tmp" "$out/initramfs.gz"
    echo "$stamp" >"$out/initramfs.stamp"
    log "wrote $out/initramfs.gz ($(du -h "$out/initramfs.gz" | cut -f1))"
fi
printf 'KVER=%s\nKERNEL=%s\nINITRD=%s\n' "$kver" "$out/vmlinuz" "$out/initramfs.gz" >"$out/guest.env"

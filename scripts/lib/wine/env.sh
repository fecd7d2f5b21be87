# shellcheck shell=bash
# The wine set-up shared by scripts/build-windows, the target runner (run) and the Windows
# end-to-end tests: where wine64 is, the test prefix, and the bcryptprimitives.dll shim.
# Sourced, not run.

WINE_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
WINE64=/usr/lib/wine/wine64
# Everything Windows lives under target/windows: the cargo target dir of the Windows build
# (with its build-std output), the shim, and the shared test prefix.
WINDOWS_TARGET_DIR="${WINDOWS_TARGET_DIR:-$WINE_REPO_ROOT/target/windows}"
WINE_TEST_PREFIX="$WINDOWS_TARGET_DIR/wineprefix"
WINE_SHIM_DLL="$WINDOWS_TARGET_DIR/wine/bcryptprimitives.dll"
export WINEDEBUG="${WINEDEBUG:--all}"
# No mono or gecko installers when a prefix is created (they would wait for a display).
export WINEDLLOVERRIDES="${WINEDLLOVERRIDES:-mscoree,mshtml=}"
unset DISPLAY WAYLAND_DISPLAY

# Build the shim when it is missing or older than its source (a second, test-only DLL: real
# Windows 10+ has bcryptprimitives.dll; see bcryptprimitives.c).
wine_shim_build() {
    local src="$WINE_REPO_ROOT/scripts/lib/wine/bcryptprimitives.c"
    if [ ! -f "$WINE_SHIM_DLL" ] || [ "$src" -nt "$WINE_SHIM_DLL" ]; then
        mkdir -p "$(dirname "$WINE_SHIM_DLL")"
        x86_64-w64-mingw32-gcc -O2 -shared -s -o "$WINE_SHIM_DLL.tmp" "$src" -ladvapi32
        mv "$WINE_SHIM_DLL.tmp" "$WINE_SHIM_DLL"
    fi
}

# Make PREFIX a ready wine prefix holding the shim. Idempotent, and safe when several test
# processes call it at once (a lock around the creation).
wine_prefix_ready() {
    local prefix="$1"
    local system32="$prefix/drive_c/windows/system32"
    if [ -f "$prefix/.infinibay-ready" ] && [ -f "$system32/bcryptprimitives.dll" ] \
        && ! [ "$WINE_SHIM_DLL" -nt "$system32/bcryptprimitives.dll" ]; then
        return 0
    fi
    mkdir -p "$prefix"
    (
        flock 9
        if [ ! -f "$prefix/.infinibay-ready" ]; then
            WINEPREFIX="$prefix" "$WINE64" wineboot --init >/dev/null 2>&1 || true
            # Wine 8 presents itself as Windows 7 by default; the agent's targets are 10/11.
            # (winecfg /v also writes the registry's CurrentVersion keys, as Windows has them.)
            WINEPREFIX="$prefix" "$WINE64" winecfg /v win10 >/dev/null 2>&1 || true
            WINEPREFIX="$prefix" /usr/lib/wine/wineserver -w || true
        fi
        wine_shim_build
        install -m 0644 "$WINE_SHIM_DLL" "$system32/bcryptprimitives.dll"
        touch "$prefix/.infinibay-ready"
    ) 9>"$prefix.lock"
}

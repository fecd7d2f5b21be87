#!/usr/bin/env bash
# Build the InfiniService MSI with wixl (Debian package `wixl`):
#
#   deploy/windows/build-msi.sh INFINISERVICE.EXE OUT.msi
#
# scripts/build-windows --msi runs it on the exe it built.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[ $# -eq 2 ] || { echo "usage: $0 infiniservice.exe out.msi" >&2; exit 2; }
exe="$(realpath "$1")"
out="$2"
[ -f "$exe" ] || { echo "build-msi: no such file: $exe" >&2; exit 1; }
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/../../Cargo.toml" | head -n 1)"
[ -n "$version" ] || { echo "build-msi: no version in Cargo.toml" >&2; exit 1; }
out="$(realpath -m "$out")"
# wixl resolves Source paths relative to the working directory only.
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
cp "$exe" "$stage/infiniservice.exe"
cp "$here/config.toml" "$stage/config.toml"
(cd "$stage" && wixl --arch x64 -D "Version=$version" -o "$out.tmp" "$here/infiniservice.wxs")
# The config component: msidbComponentAttributes64bit (256) + Permanent (16, an operator's
# config stays after uninstall) + NeverOverwrite (128, and is kept by reinstalls and
# upgrades). wixl cannot write these two flags from the WiX source.
msibuild "$out.tmp" -q "UPDATE \`Component\` SET \`Attributes\` = 400 WHERE \`Component\` = 'Config'"
mv -f "$out.tmp" "$out"
echo "build-msi: $out ($(stat -c %s "$out") bytes, version $version)" >&2

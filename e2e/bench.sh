#!/usr/bin/env bash
# Benchmark infiniservice against qemu-ga in the same QEMU guest and the same run, and write
# bench/results/e2e.md. Takes about 7 minutes (5 of them the idle window) plus release builds.
#
#   e2e/bench.sh [--pings N] [--exec-runs N] [--idle-secs N] [--out FILE] [--skip-agent]
#
# The agent is the size-optimised `agent` profile (the one build that ships); the harness a
# release build (so that its own JSON handling adds as little as possible to both sides'
# round trips). The image goes to e2e/build/bench
# so that the tests' debug image stays cached.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"

cargo build --profile agent -p infiniservice --bin infiniservice
cargo build --release -p infinibay-e2e --bin infinibay-e2e-bench

export IB_E2E_AGENT="$target/agent/infiniservice"
export IB_E2E_IMAGE_DIR="$root/e2e/build/bench"
exec "$target/release/infinibay-e2e-bench" --out "$root/bench/results/e2e.md" "$@"

#!/usr/bin/env bash
# One sitting: ferry-bench, then Ray's ray_bench.py, on this machine, one after the other (never
# both at once on 2 cores), then the side-by-side table. Outputs go to $OUT (default target/sitting).
#
#   VENV=../anchors-venv crates/bench/sitting.sh [GROUP...]
#
# VENV is a virtualenv outside the repository with 'ray[client]==2.60.0' numpy psutil installed
# (see ../shared/anchors/README.md). Without VENV only ferry runs.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-target/sitting}
mkdir -p "$OUT"
cargo build --release -p ferry-bench
./target/release/ferry-bench "$@" | tee "$OUT/ferry.txt"
if [ -n "${VENV:-}" ]; then
    RAY_USAGE_STATS_ENABLED=0 "$VENV/bin/python" ../shared/anchors/ray_bench.py | tee "$OUT/ray.txt"
    # Ray's side of the refs and spill groups (ray_bench.py has neither).
    RAY_USAGE_STATS_ENABLED=0 "$VENV/bin/python" crates/bench/ray_memory.py | tee -a "$OUT/ray.txt"
    python3 crates/bench/compare.py "$OUT/ferry.txt" "$OUT/ray.txt" | tee "$OUT/compare.md"
fi

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
cargo build --release -p ferry-bench -p ferry-cli
./target/release/ferry-bench "$@" | tee "$OUT/ferry.txt"
# The cluster group builds network-namespace hosts: root only, and only in a full sitting.
CLUSTER=""
if [ "$#" -eq 0 ] && [ "$(id -u)" = 0 ]; then
    CLUSTER=1
    ./target/release/ferry-bench cluster | tee -a "$OUT/ferry.txt"
fi
if [ -n "${VENV:-}" ]; then
    RAY_USAGE_STATS_ENABLED=0 "$VENV/bin/python" ../shared/anchors/ray_bench.py | tee "$OUT/ray.txt"
    # Ray's side of the refs and spill groups (ray_bench.py has neither).
    RAY_USAGE_STATS_ENABLED=0 "$VENV/bin/python" crates/bench/ray_memory.py | tee -a "$OUT/ray.txt"
    if [ -n "$CLUSTER" ]; then
        # Ray's multi-node figures: three raylets on this machine (ray.cluster_utils).
        RAY_USAGE_STATS_ENABLED=0 "$VENV/bin/python" crates/bench/ray_cluster.py | grep -v INFO | tee -a "$OUT/ray.txt"
    fi
    python3 crates/bench/compare.py "$OUT/ferry.txt" "$OUT/ray.txt" | tee "$OUT/compare.md"
fi

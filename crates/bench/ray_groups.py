"""Ray's `placement group create/removal` microbenchmark (ray/_private/ray_perf.py), alone:
100 groups of one bundle of {"custom": 0.001} on a node with custom=100, each waited for,
then all removed; groups per second, the median of ROUNDS rounds (as `ferry-bench groups`).

    RAY_USAGE_STATS_ENABLED=0 ../anchors-venv/bin/python crates/bench/ray_groups.py
"""
import statistics
import time

import ray

NUM_PGS = 100
ROUNDS = 20

ray.init(num_cpus=2, resources={"custom": 100})
rates = []
for _ in range(ROUNDS):
    t = time.perf_counter()
    pgs = [ray.util.placement_group(bundles=[{"custom": 0.001}]) for _ in range(NUM_PGS)]
    [pg.wait(timeout_seconds=30) for pg in pgs]
    for pg in pgs:
        ray.util.remove_placement_group(pg)
    rates.append(NUM_PGS / (time.perf_counter() - t))
print(f"placement_group_create_removal_per_s {statistics.median(rates):.1f} groups/s")
print(f"# {ROUNDS} rounds of {NUM_PGS} groups; min {min(rates):.0f}/s")
ray.shutdown()

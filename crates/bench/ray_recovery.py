"""Ray's side of `ferry-bench recovery`: the Ownership paper's chain of 1,000 dependent 10 ms
tasks on one node (small values, then 10 MiB objects), with that node removed halfway
(`ray.cluster_utils.Cluster.remove_node`, which kills its raylet and workers). Same names as
ferry-bench.

    RAY_USAGE_STATS_ENABLED=0 ../anchors-venv/bin/python crates/bench/ray_recovery.py
"""
import time

import numpy as np
import ray
from ray.cluster_utils import Cluster

N = 1000


def emit(name, value, unit):
    print(f"{name} {value:.6g} {unit}", flush=True)


def run(big, fail):
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 2 << 30})
    victim = c.add_node(num_cpus=1, resources={"victim": 1}, object_store_memory=2 << 30)
    c.add_node(num_cpus=1, object_store_memory=2 << 30)
    ray.init(address=c.address)
    c.wait_for_nodes()
    victim_id = victim.node_id

    @ray.remote(max_retries=3)
    def link(prev, ms):
        time.sleep(ms / 1000)
        if big:
            out = np.array(prev, copy=True)
            out[0] += 1
            return out
        return prev + 1

    soft = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(node_id=victim_id, soft=True)
    t = time.perf_counter()
    prev = np.zeros(10 << 20, dtype=np.uint8) if big else 0
    prev = link.options(scheduling_strategy=soft).remote(prev, 10)
    half = None
    for i in range(1, N):
        prev = link.options(scheduling_strategy=soft).remote(prev, 10)
        if i == N // 2:
            half = prev
    if fail:
        ray.wait([half], fetch_local=False)
        c.remove_node(victim)
    del half
    ray.get(prev)
    dt = time.perf_counter() - t
    ray.shutdown()
    c.shutdown()
    return dt


def main():
    emit("recovery_chain_10ms_nofail_s", run(False, False), "s")
    emit("recovery_chain_10ms_fail_s", run(False, True), "s")
    emit("recovery_chain_10MiB_nofail_s", run(True, False), "s")
    emit("recovery_chain_10MiB_fail_s", run(True, True), "s")


if __name__ == "__main__":
    main()

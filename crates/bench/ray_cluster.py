"""Ray's side of `ferry-bench cluster`, same names and method, on Ray's own multi-node setup
for one machine (`ray.cluster_utils.Cluster`: three raylets, 2 CPUs each, talking over
loopback; ferry's nodes are network namespaces on a bridge, which costs a little more per byte).

    RAY_USAGE_STATS_ENABLED=0 ../anchors-venv/bin/python crates/bench/ray_cluster.py

Prints `name value unit` lines like ferry-bench.
"""
import statistics
import time

import numpy as np
import ray
from ray.cluster_utils import Cluster

GIB = 1 << 30
STORE = 3 * GIB


def emit(name, value, unit):
    print(f"{name} {value:.6g} {unit}", flush=True)


def main():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"n0": 1}, "object_store_memory": STORE})
    c.add_node(num_cpus=2, resources={"n1": 1}, object_store_memory=STORE)
    c.add_node(num_cpus=2, resources={"n2": 1}, object_store_memory=STORE)
    ray.init(address=c.address)
    c.wait_for_nodes()

    @ray.remote
    def nothing():
        return None

    @ray.remote(scheduling_strategy="SPREAD")
    def submitter(n):
        ray.get([nothing.remote() for _ in range(n)])
        return n

    cpus = 6
    ray.get([nothing.options(scheduling_strategy="SPREAD").remote() for _ in range(cpus * 4)])
    per = 20_000 // cpus
    rates = []
    for _ in range(3):
        t = time.perf_counter()
        done = sum(ray.get([submitter.remote(per) for _ in range(cpus)]))
        rates.append(done / (time.perf_counter() - t))
    emit("xnode_task_throughput_per_s", statistics.median(rates), "tasks/s")

    rates = []
    for _ in range(3):
        t = time.perf_counter()
        ray.get([nothing.remote() for _ in range(20_000)])
        rates.append(20_000 / (time.perf_counter() - t))
    emit("xnode_driver_task_throughput_per_s", statistics.median(rates), "tasks/s")

    @ray.remote(resources={"n1": 0.01})
    def produce(n):
        return np.ones(n, dtype=np.uint8)

    speeds = []
    for _ in range(5):
        r = produce.remote(GIB)
        ray.wait([r], fetch_local=False)
        t = time.perf_counter()
        a = ray.get(r)
        dt = time.perf_counter() - t
        assert a.nbytes == GIB
        speeds.append(GIB / dt / 1e9)
        del a, r
    print(f"# transfers: {[round(s, 2) for s in speeds]} GB/s")
    emit("xnode_transfer_1GiB_GB_per_s", statistics.median(speeds), "GB/s")

    @ray.remote
    def length(a):
        return a.nbytes

    times = []
    for _ in range(3):
        obj = ray.put(np.ones(GIB, dtype=np.uint8))
        t = time.perf_counter()
        ray.get([length.options(resources={n: 0.01}).remote(obj) for n in ("n1", "n2")])
        times.append(time.perf_counter() - t)
        del obj
    emit("broadcast_1GiB_3nodes_s", statistics.median(times), "s")
    ray.shutdown()
    c.shutdown()


if __name__ == "__main__":
    main()

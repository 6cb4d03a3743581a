#!/usr/bin/env python3
"""Ray's side of ferry-bench's `actors` group, with the same names and the same method.

The shapes are those of Ray's own microbenchmark (ray/_private/ray_perf.py): n_cpu = cores / 2
servers, m = 4 callers, 5000 calls per caller; the timing is ferry-bench's `timeit` (1 s warm-up,
then the mean rate of four 1 s runs), so the two columns are measured alike. Then N actors are
created and each called once (N from ACTORS, default 1000), with the memory of all processes.

usage: RAY_USAGE_STATS_ENABLED=0 $VENV/bin/python ray_actors.py
Needs ray, numpy and psutil in $VENV; never used by ferry's tests.
"""
import asyncio  # noqa: F401  (async actors)
import multiprocessing
import os
import sys
import time

import psutil
import ray

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "anchors"))
from bench_common import emit, info  # noqa: E402
from ray_timing import timeit  # noqa: E402


@ray.remote(num_cpus=0)
class Actor:
    def small_value(self):
        return b"ok"

    def small_value_arg(self, x):
        return b"ok"


@ray.remote
class AsyncActor:
    async def small_value(self):
        return b"ok"

    async def small_value_with_arg(self, x):
        return b"ok"


@ray.remote(num_cpus=0)
class Client:
    def __init__(self, servers):
        self.servers = servers if isinstance(servers, list) else [servers]

    def small_value_batch(self, n):
        results = []
        for s in self.servers:
            results.extend([s.small_value.remote() for _ in range(n)])
        ray.get(results)

    def small_value_batch_arg(self, n):
        x = ray.put(0)
        results = []
        for s in self.servers:
            results.extend([s.small_value_arg.remote(x) for _ in range(n)])
        ray.get(results)


def tree_memory():
    root = psutil.Process()
    rss = pss = n = 0
    for p in root.children(recursive=True):
        try:
            mi = p.memory_full_info()
            rss += mi.rss
            pss += getattr(mi, "pss", 0)
            n += 1
        except (psutil.Error, OSError):
            pass
    return n, rss / 2**20, pss / 2**20


def main():
    ray.init(num_cpus=2, include_dashboard=False)
    info(f"ray={ray.__version__} nproc={os.cpu_count()}")
    n_cpu = max(multiprocessing.cpu_count() // 2, 1)
    m = 4

    a = Actor.remote()
    ray.get(a.small_value.remote())
    timeit("actor_calls_1_1_sync_per_s", lambda: ray.get(a.small_value.remote()))
    a = Actor.remote()
    timeit("actor_calls_1_1_async_per_s", lambda: ray.get([a.small_value.remote() for _ in range(1000)]), 1000)
    c = Actor.options(max_concurrency=16).remote()
    timeit("actor_calls_1_1_concurrent_per_s", lambda: ray.get([c.small_value.remote() for _ in range(1000)]), 1000)
    n = 5000
    servers = [Actor.remote() for _ in range(n_cpu)]
    client = Client.remote(servers)
    timeit("actor_calls_1_n_async_per_s", lambda: ray.get(client.small_value_batch.remote(n)), n * len(servers))

    @ray.remote
    def work(actors):
        ray.get([actors[i % len(actors)].small_value.remote() for i in range(n)])

    timeit("actor_calls_n_n_async_per_s", lambda: ray.get([work.remote(servers) for _ in range(m)]), m * n)
    n2 = 1000
    clients = [Client.remote(Actor.remote()) for _ in range(n_cpu)]
    timeit("actor_calls_n_n_with_arg_async_per_s",
           lambda: ray.get([cl.small_value_batch_arg.remote(n2) for cl in clients]), n2 * len(clients))
    aa = AsyncActor.remote()
    ray.get(aa.small_value.remote())
    timeit("async_actor_calls_1_1_sync_per_s", lambda: ray.get(aa.small_value.remote()))
    timeit("async_actor_calls_1_1_async_per_s", lambda: ray.get([aa.small_value.remote() for _ in range(1000)]), 1000)
    timeit("async_actor_calls_1_1_with_args_async_per_s",
           lambda: ray.get([aa.small_value_with_arg.remote(i) for i in range(1000)]), 1000)
    aservers = [AsyncActor.remote() for _ in range(n_cpu)]

    @ray.remote(num_cpus=0)
    class AsyncClient:
        def __init__(self, servers):
            self.servers = servers

        def small_value_batch(self, n):
            results = []
            for s in self.servers:
                results.extend([s.small_value.remote() for _ in range(n)])
            ray.get(results)

    aclient = AsyncClient.remote(aservers)
    timeit("async_actor_calls_1_n_async_per_s", lambda: ray.get(aclient.small_value_batch.remote(n)),
           n * len(aservers))

    @ray.remote
    def async_work(actors):
        ray.get([actors[i % len(actors)].small_value.remote() for i in range(n)])

    timeit("async_actor_calls_n_n_async_per_s", lambda: ray.get([async_work.remote(aservers) for _ in range(m)]), m * n)
    del a, c, servers, client, clients, aa, aservers, aclient
    time.sleep(2)

    count = int(os.environ.get("ACTORS", "1000"))
    t = time.perf_counter()
    actors = [Actor.remote() for _ in range(count)]
    ray.get([x.small_value.remote() for x in actors])
    dt = time.perf_counter() - t
    suffix = "" if count == 1000 else f"_n{count}"
    emit(f"actor_create_1000_and_call_s{suffix}", dt, "s")
    emit("actor_create_per_s", count / dt, "actors/s")
    nprocs, rss, pss = tree_memory()
    emit(f"actor_create_1000_rss_sum_MiB{suffix}", rss, "MiB")
    emit(f"actor_create_1000_pss_sum_MiB{suffix}", pss, "MiB")
    emit(f"actor_create_1000_nprocs{suffix}", nprocs, "procs")
    ray.shutdown()


if __name__ == "__main__":
    main()

"""Ray's side of `ferry-bench scale`, task part: one driver submits N no-op tasks at once and
gets them all (the shape of Ray's single-node "many queued tasks" release test), and the
driver's memory per task while N wait for an object not ready yet. Same names as
ferry-bench. N is 100,000 by default: a million takes Ray the better part of ten minutes on
two cores (its own release test reports ~185 s on a large machine).

    RAY_USAGE_STATS_ENABLED=0 ../anchors-venv/bin/python crates/bench/ray_scale.py [N...]
"""
import os
import sys
import time

import psutil
import ray


def emit(name, value, unit):
    print(f"{name} {value:.6g} {unit}", flush=True)


def label(n):
    return f"{n // 1_000_000}m" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n // 1000}k"


@ray.remote
def tick():
    return None


@ray.remote
def gate(marker):
    end = time.time() + 600
    while not os.path.exists(marker) and time.time() < end:
        time.sleep(0.005)
    return 1


@ray.remote
def after(_g):
    return None


def main():
    sizes = [int(a) for a in sys.argv[1:]] or [100_000]
    ray.init(num_cpus=2, include_dashboard=False)
    me = psutil.Process()
    ray.get([tick.remote() for _ in range(2000)])
    for n in sizes:
        t = time.perf_counter()
        refs = [tick.remote() for _ in range(n)]
        sub = time.perf_counter() - t
        ray.get(refs)
        total = time.perf_counter() - t
        del refs
        emit(f"tasks_{label(n)}_submit_s", sub, "s")
        emit(f"tasks_{label(n)}_end_to_end_s", total, "s")
        emit(f"tasks_{label(n)}_per_task_us", total / n * 1e6, "us")
    n = sizes[-1]
    marker = f"/tmp/ray-scale-gate-{os.getpid()}"
    if os.path.exists(marker):
        os.remove(marker)
    g = gate.remote(marker)
    time.sleep(0.5)
    before = me.memory_info().rss
    refs = [after.remote(g) for _ in range(n)]
    time.sleep(0.5)
    held = me.memory_info().rss
    emit("owner_bytes_per_pending_task", (held - before) / n, "B")
    open(marker, "w").close()
    t = time.perf_counter()
    ray.get(refs)
    emit(f"pending_{label(n)}_run_s", time.perf_counter() - t, "s")
    os.remove(marker)


if __name__ == "__main__":
    main()

"""Ray's side of `ferry-bench scale`, task part: one driver submits N no-op tasks at once and
gets them all (the shape of Ray's single-node "many queued tasks" release test), and the
driver's memory per task while N wait for an object not ready yet. Same names as
ferry-bench. N is 100,000 by default: a million takes Ray the better part of ten minutes on
two cores (its own release test reports ~185 s on a large machine).

    RAY_USAGE_STATS_ENABLED=0 ../anchors-venv/bin/python crates/bench/ray_scale.py [N...]

`ray_scale.py actors N`: Ray's many_actors shape (0-CPU actors, each created, called once, then
all released), one raylet of 2 CPUs, with the same names as `ferry-bench scale`'s actors group.
A Ray actor is a Python process of ~50 MiB: 10,000 would need ~500 GiB, so N is what fits here.
"""
import os
import sys
import time

import psutil
import ray


def emit(name, value, unit):
    print(f"{name} {value:.6g} {unit}", flush=True)


def label(n):
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    return f"{n // 1000}k" if n >= 1000 else str(n)


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


@ray.remote(num_cpus=0)
class Cell:
    def __init__(self):
        self.n = 0

    def bump(self):
        self.n += 1
        return self.n


def actor_procs():
    """Ray's actor processes of class Cell, and the sum of their PSS."""
    procs, pss = 0, 0
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            if "ray::Cell" in " ".join(p.info["cmdline"] or []) or (p.info["name"] or "").startswith("ray::Cell"):
                procs += 1
                pss += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return procs, pss


def actors(n):
    ray.init(num_cpus=2, include_dashboard=False)
    t = time.perf_counter()
    cells = [Cell.remote() for _ in range(n)]
    calls = [c.bump.remote() for c in cells]
    assert ray.get(calls, timeout=1800) == [1] * n
    created = time.perf_counter() - t
    procs, pss = actor_procs()
    t2 = time.perf_counter()
    del calls, cells
    end = time.time() + 600
    while actor_procs()[0] > 0 and time.time() < end:
        time.sleep(0.05)
    released = time.perf_counter() - t2
    lbl = label(n)
    emit(f"actors_{lbl}_create_and_call_s", created, "s")
    emit(f"actors_{lbl}_release_s", released, "s")
    emit(f"actors_{lbl}_create_call_release_s", created + released, "s")
    emit(f"actors_{lbl}_processes", procs, "procs")
    emit(f"actors_{lbl}_pss_per_actor_MiB", pss / max(procs, 1) / (1 << 20), "MiB")
    ray.shutdown()


if __name__ == "__main__":
    if sys.argv[1:2] == ["actors"]:
        actors(int(sys.argv[2]) if len(sys.argv) > 2 else 200)
    else:
        main()

#!/usr/bin/env python3
"""Ray's side of ferry-bench's `refs` and `spill` groups, with the same names and method.

- get_object_containing_10k_refs_per_s: Ray microbenchmark's "single client get object
  containing 10k refs" (a task puts 10,000 small objects and returns the list, once; each call
  gets it), timed like ferry-bench's `timeit` (1 s warm-up, then the mean rate of four 1 s
  runs). create_and_get_...: a new object each call.
- spill_GB_per_s / restore_GB_per_s: a 256 MiB object store, filled, then 1 GiB of 64 MiB
  arrays put past it (spilled to a directory on the same disk as ferry's), then every spilled
  object read back with every page touched. Spill throughput is Ray's own figure (`ray memory
  --stats-only`, "avg write throughput"); restore is timed here, like ferry-bench's.

usage: RAY_USAGE_STATS_ENABLED=0 $VENV/bin/python ray_memory.py [refs|spill ...]
Needs ray, numpy and psutil in $VENV; never used by ferry's tests.
"""
import os
import re
import shutil
import sys
import tempfile
import time

import numpy as np
import ray

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "anchors"))
from bench_common import emit, info  # noqa: E402
from ray_timing import timeit  # noqa: E402

MIB = 1 << 20


@ray.remote
def create_object_containing_ref():
    return [ray.put(1) for _ in range(10000)]


def refs():
    ray.init(num_cpus=os.cpu_count())
    # As ray_perf.py: the object is made once, each call is a get of it.
    obj = create_object_containing_ref.remote()
    ray.get(obj)
    timeit("get_object_containing_10k_refs_per_s", lambda: ray.get(obj))
    del obj
    timeit("create_and_get_object_containing_10k_refs_per_s", lambda: ray.get(create_object_containing_ref.remote()))
    ray.shutdown()


def spill():
    spill_dir = tempfile.mkdtemp(prefix="ray-spill-")
    import json

    ray.init(
        num_cpus=os.cpu_count(),
        object_store_memory=256 * MIB,
        _system_config={
            "object_spilling_config": json.dumps({"type": "filesystem", "params": {"directory_path": spill_dir}}),
        },
    )
    obj = 64 * MIB
    refs = [ray.put(np.full(obj, i % 256, dtype=np.uint8)) for i in range(4 + 16)]
    time.sleep(2)
    from ray._private.internal_api import memory_summary

    stats = memory_summary(stats_only=True)
    m = re.search(r"Spilled (\d+) MiB, (\d+) objects, avg write throughput (\d+) MiB/s", stats)
    if m:
        info(f"ray spilled {m.group(1)} MiB in {m.group(2)} objects")
        emit("spill_GB_per_s", int(m.group(3)) * MIB / 1e9, "GB/s")
    else:
        info("ray reported no spill: " + stats.replace("\n", " | "))
    n = int(m.group(2)) if m else 0
    # ferry drops its spilled files from the page cache; Ray's stay cached. Read both cold.
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        info("page cache dropped before the restore")
    except OSError as e:
        info(f"could not drop the page cache ({e}): Ray's restore may read from memory")
    t = time.perf_counter()
    total = 0
    for i, r in enumerate(refs[:n]):
        a = ray.get(r)
        assert a[0] == i % 256
        int(a[::4096].sum())
        total += a.nbytes
        del a
    dt = time.perf_counter() - t
    emit("restore_GB_per_s", total / dt / 1e9, "GB/s")
    stats = memory_summary(stats_only=True)
    m = re.search(r"Restored (\d+) MiB, (\d+) objects, avg read throughput (\d+) MiB/s", stats)
    if m:
        info(f"ray's own restore figure: {int(m.group(3)) * MIB / 1e9:.3f} GB/s over {m.group(1)} MiB")
    del refs
    ray.shutdown()
    shutil.rmtree(spill_dir, ignore_errors=True)


if __name__ == "__main__":
    groups = sys.argv[1:] or ["refs", "spill"]
    info(f"ray {ray.__version__} nproc={os.cpu_count()} groups={','.join(groups)}")
    for g in groups:
        {"refs": refs, "spill": spill}[g]()

"""The timing ferry-bench's `timeit` uses, for the Ray scripts beside it: a 1 s warm-up, then
the mean rate of four 1 s runs (the method of Ray's own ray_perf.py)."""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "anchors"))
from bench_common import emit  # noqa: E402


def timeit(name, fn, multiplier=1):
    start = time.perf_counter()
    count = 0
    while time.perf_counter() - start < 1:
        fn()
        count += 1
    step = count // 10 + 1
    rates = []
    for _ in range(4):
        start = time.perf_counter()
        count = 0
        while time.perf_counter() - start < 1:
            for _ in range(step):
                fn()
            count += step
        rates.append(multiplier * count / (time.perf_counter() - start))
    emit(name, sum(rates) / len(rates), "calls/s")

"""Wall-clock medians for the benchmark scripts."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(run: Callable[[], object], warmup: int, repeats: int) -> float:
    """Median duration of `repeats` calls after `warmup` untimed ones (JIT profiling, caches, allocator)."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)

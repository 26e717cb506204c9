"""Wall-clock timing the same way everywhere: warm-up runs excluded, median of the rest."""

import statistics
import time


def median_seconds(fn, repeats: int, *, warmup: int = 3) -> float:
    """Median wall time of `fn()` over `repeats` calls after `warmup` untimed calls (caches,
    allocator and thread pool settle first). `fn` must block until its work is done."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)

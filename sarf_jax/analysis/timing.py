"""Wall-clock timing the same way everywhere: warm-up runs excluded, median of the rest; and what
a timing was measured on."""

import datetime
import os
import platform
import statistics
import time

# malloc replacements a benchmark may run under (LD_PRELOAD), by the library file's name
_ALLOCATORS = ("tcmalloc", "jemalloc", "mimalloc")


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


def allocator() -> str:
    """The malloc this process runs on: a preloaded tcmalloc / jemalloc / mimalloc, or "system".

    On the CPU it matters: XLA allocates its large temporaries anew on every call, and glibc's malloc
    hands them back to the kernel, so each call page-faults them in again (benchmarks/RESULTS.md)."""
    preloaded = os.environ.get("LD_PRELOAD", "")
    return next((name for name in _ALLOCATORS if name in preloaded), "system")


def machine_info() -> dict:
    """What the benchmarks print about the machine: CPU model, cores, JAX, device kind, allocator,
    the XLA options sarf_jax's steps compile with (and XLA_FLAGS), date."""
    import jax

    from sarf_jax.ops import compiler_options

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "jax": jax.__version__,
        "device": jax.devices()[0].device_kind,
        "allocator": allocator(),
        "compiler_options": compiler_options(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "date": datetime.date.today().isoformat(),
    }

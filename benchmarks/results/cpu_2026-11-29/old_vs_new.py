"""How old_vs_new.jsonl was made: the previous `chunked` (commit 0c22f1c, lax.scan over
time-major chunks) against the current one, at benchmarks/scan.py's LAYERS, float32, timed in
alternation (one call of each per round, median of the rounds) because the machine was shared.

    git show 0c22f1c:sarf_jax/ops/scan_chunked.py > /tmp/old_chunked.py
    PYTHONPATH=$PWD:/tmp:benchmarks python benchmarks/results/cpu_2026-11-29/old_vs_new.py [ROUNDS]
"""

import importlib
import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import old_chunked
from scan import LAYERS, scan_inputs

from sarf_jax.ops import selective_scan

core = importlib.import_module("sarf_jax.ops.selective_scan")
core.IMPLEMENTATIONS["old_chunked"] = old_chunked.recurrence
core.IMPLS = (*core.IMPLS, "old_chunked")
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7

for layer, (batch, length, channels, state, groups) in LAYERS.items():
    inputs = scan_inputs(batch, length, channels, state, jnp.float32, groups=groups, gated=groups is None)
    inputs = {k: v for k, v in inputs.items() if v is not None}
    names, args = tuple(inputs), tuple(inputs.values())
    cotangent = jnp.ones((batch, length, channels), jnp.float32)
    fns = {}
    for impl in ("old_chunked", "chunked"):
        fwd = lambda *a, impl=impl: selective_scan(**dict(zip(names, a)), delta_softplus=True, impl=impl)
        grad = jax.grad(lambda *a, fwd=fwd: jnp.sum(fwd(*a) * cotangent), argnums=tuple(range(len(args))))
        for pass_name, fn in (("forward", fwd), ("forward_backward", grad)):
            start = time.perf_counter()
            compiled = jax.jit(fn).lower(*args).compile()
            fns[impl, pass_name] = (compiled, time.perf_counter() - start)
    seconds = {key: [] for key in fns}
    for compiled, _ in fns.values():  # warm-up
        jax.block_until_ready(compiled(*args))
    for _ in range(rounds):
        for key, (compiled, _) in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            seconds[key].append(time.perf_counter() - start)
    ms = {key: 1e3 * statistics.median(v) for key, v in seconds.items()}
    row = {"bench": "old_vs_new", "layer": layer, "shape": [batch, length, channels, state, groups], "rounds": rounds}
    for pass_name in ("forward", "forward_backward"):
        row[f"old_{pass_name}_ms"] = ms["old_chunked", pass_name]
        row[f"new_{pass_name}_ms"] = ms["chunked", pass_name]
        row[f"{pass_name}_speedup"] = ms["old_chunked", pass_name] / ms["chunked", pass_name]
        row[f"old_{pass_name}_compile_s"] = fns["old_chunked", pass_name][1]
        row[f"new_{pass_name}_compile_s"] = fns["chunked", pass_name][1]
    print(json.dumps(row), flush=True)

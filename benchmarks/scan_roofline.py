"""The selective scan against this machine's own floor: know the floor before optimising.

One run measures two ceilings of the device it runs on, then times every scan implementation
there and says how far each is from the floor those ceilings set:

  copy ceiling   bytes/s of `x + 1` over a large float32 array (2 GiB on an accelerator) in a
                 jitted loop: one read and one write of every byte per iteration; a loop of 2n
                 iterations minus one of n, so fixed costs (dispatch, the input's first copy)
                 cancel;
  exp ceiling    exp2/s of one fused call over an array large enough to fill the device with
                 2d exp2 per element (`x = exp2(-x)` in 8 independent chains, so that a CPU core
                 is not bound by one chain's latency) minus one with d (`--exp-depth`): the loads,
                 stores and dispatch cancel, what is left is compute.

For both the fastest of `--repeats` runs counts (a ceiling is the best the device does).

Each scan is timed on the device: a `lax.fori_loop` inside one jit runs >= `--calls` calls over
>= 4 rotating input sets (enough sets that together they exceed `--working-set-mib`, so caches
cannot serve them); call k's delta_bias is perturbed by 1e-30 x an element of call k-1's output,
so that no call can be hoisted or run out of order, and every output stays in the loop carry, so
none is dead. From that loop's time the same loop with each scan replaced by a one-element
update is subtracted; median of `--repeats` runs.

Per row: bytes = the minimal HBM traffic of the scan in the inputs' dtypes (read u, delta, B, C,
z; write y; A, D, delta_bias negligible), exps = batch x length x channels x state, and
    floor = max(bytes / copy ceiling, exps / exp ceiling),   x_floor = time / floor.
x_floor is 1 for a scan that runs at whichever ceiling binds it.

One JSON object per line: {"bench": "machine"}, {"bench": "ceilings"}, then one
{"bench": "scan_roofline"} per (shape, batch, impl).

--gpu-designs blocks registers times both designs of the GPU kernel (sarf_jax.ops.scan_pallas_gpu)
wherever it runs, one row each ("gpu_design"; null for rows that do not run it).

With --ss2d the rows are SS2D's whole four-direction scan (sarf_jax.ops.cross_scan) at VMamba-T's
stage-0 and stage-2 grids, {"bench": "ss2d_roofline"} per (shape, batch, mode, variant): forward,
and forward + backward (all eight gradients), for the GPU kernel fused with the cross-scan, the
same kernel on the cross-scanned copy, and `chunked`. Bytes and exps are those any SS2D scan
needs (`ss2d_minimal`): the fused kernel also reads delta projected outside it, so even it sits
above 1 x floor by that traffic.

    python benchmarks/scan_roofline.py                    # all shapes, batch 32 and 2
    python benchmarks/scan_roofline.py --batch 2 --shapes vim_s
    python benchmarks/scan_roofline.py --small            # tiny shapes (the default on a CPU)
    python benchmarks/scan_roofline.py --ss2d --batch 32  # SS2D, fused vs unfused
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import pathlib
import platform
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from scan_gpu import layer_inputs  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)

from sarf_jax.analysis import machine_info, median_seconds  # noqa: E402
from sarf_jax.ops import scan_pallas_gpu, selective_scan  # noqa: E402
from sarf_jax.ops.cross_scan import cross_selective_scan  # noqa: E402
from sarf_jax.ops.selective_scan import resolve_impl  # noqa: E402

SHAPE_FIELDS = ("length", "channels", "state", "groups", "gated")
SHAPES = {
    # Vim-S: 14x14 patches + class token, d_inner 768, d_state 16, gated by z
    "vim_s": (197, 768, 16, None, True),
    # VMamba-T (vmamba_tiny: dims 96 doubling per stage, ssm_ratio 1.0, forward_type v05_noz):
    # one scan over d_inner x K=4 directions, N=1, B/C grouped by direction, no z.
    "vmamba_t_stage0": (3136, 384, 1, 4, False),  # 56x56 grid, 96 x 4 channels
    "vmamba_t_stage2": (196, 1536, 1, 4, False),  # 14x14 grid, 384 x 4 channels
}
SMALL_SHAPES = {
    "vim_s": (13, 64, 16, None, True),
    "vmamba_t_stage0": (49, 32, 1, 4, False),
    "vmamba_t_stage2": (16, 128, 1, 4, False),
}
# SS2D (--ss2d): VMamba-T's scans as SS2D runs them, (height, width, d_inner, state, dt_rank)
SS2D_FIELDS = ("height", "width", "d_inner", "state", "dt_rank")
SS2D_SHAPES = {"vmamba_t_stage0": (56, 56, 96, 1, 6), "vmamba_t_stage2": (14, 14, 384, 1, 24)}
SMALL_SS2D_SHAPES = {"vmamba_t_stage0": (7, 7, 8, 1, 2), "vmamba_t_stage2": (4, 4, 32, 1, 2)}
SS2D_VARIANTS = {  # name: (impl, fused)
    "fused": ("pallas_gpu", True),  # the GPU kernel reading the grid through index maps
    "unfused": ("pallas_gpu", False),  # the GPU kernel on the cross-scanned copy
    "chunked": ("chunked", None),
    "reference": ("reference", None),
}
SS2D_MAX_SETS = 8  # each set inlines one more forward + backward to compile
SMALL_BATCH = 2
MAX_SETS = 16  # each set is one more inlined scan to compile
EXP_CHAINS = 8
MIN_LOOP_SECONDS = 0.02  # ceilings: long enough that timer and dispatch noise stay small
DEPENDENCE = 1e-30  # scale of the carried output element added to delta_bias: changes no value


def platform_impls(backend: str) -> tuple[str, ...]:
    """selective_scan's implementations worth timing here: no Pallas on a CPU (interpret mode)."""
    xla = ("chunked", "associative", "reference")
    return xla if backend == "cpu" else ("pallas", *xla)


# ------------------------------------------------------------------------------------------------
# Ceilings


def fastest_seconds(fn, repeats: int) -> float:
    """The shortest of `repeats` timed calls of `fn` (after one warm-up): a ceiling is the best
    the device does, and on a shared machine noise only ever adds time."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def loop_seconds(body, init, repeats: int) -> float:
    """Seconds of one iteration of `body`: a loop of 2n iterations minus one of n (one compiled
    loop, the trip count an argument), n doubled until a loop of n takes MIN_LOOP_SECONDS."""
    run = jax.jit(lambda x, trips: lax.fori_loop(0, trips, lambda _, c: body(c), x))
    compiled = run.lower(init, jnp.int32(1)).compile()
    fastest = lambda trips: fastest_seconds(lambda: compiled(init, jnp.int32(trips)), repeats)
    iterations = 1
    while fastest(iterations) < MIN_LOOP_SECONDS and iterations < 2**16:
        iterations *= 2
    return (fastest(2 * iterations) - fastest(iterations)) / iterations


def resolved(measure, ceiling: str, flags: str, attempts: int = 3) -> float:
    """The first positive of up to `attempts` calls of `measure()` (a difference of two timings);
    when every one drowned in noise, no ceiling can come from it."""
    for _ in range(attempts):
        seconds = measure()
        if seconds > 0:
            return seconds
    raise RuntimeError(f"the {ceiling} ceiling was not measurable ({seconds:.3g} s, {attempts} tries): raise {flags}")


def copy_ceiling(mib: int, repeats: int) -> dict:
    """Bytes/s of reading and writing a `mib` MiB float32 array once."""
    x = jnp.zeros((mib * 2**20 // 4,), jnp.float32)
    seconds = resolved(lambda: loop_seconds(lambda c: c + 1.0, x, repeats), "copy", "--copy-mib")
    moved = 2 * x.nbytes
    return {"copy_bytes": moved, "copy_seconds": seconds, "copy_gbps": moved / seconds / 1e9}


def exp_ceiling(elements: int, depth: int, repeats: int) -> dict:
    """exp2/s over `elements` float32 values: one fused call with 2 x `depth` exp2 per element
    minus one with `depth` (in EXP_CHAINS independent chains each)."""
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 1, elements), jnp.float32)

    def chains(c, exps_per_element):
        chains = [c + 0.01 * k for k in range(EXP_CHAINS)]
        for _ in range(exps_per_element // EXP_CHAINS):
            chains = [jnp.exp2(-a) for a in chains]  # stays in [0.5, 1]: no overflow, nothing to fold
        return sum(chains) * (1 / EXP_CHAINS)

    def seconds(exps_per_element):
        compiled = jax.jit(chains, static_argnums=1).lower(x, exps_per_element).compile()
        return fastest_seconds(lambda: compiled(x), repeats)

    exp_seconds = resolved(lambda: seconds(2 * depth) - seconds(depth), "exp", "--exp-elements or --exp-depth")
    exps = elements * depth
    return {"exp_count": exps, "exp_depth": depth, "exp_seconds": exp_seconds, "gexp_per_s": exps / exp_seconds / 1e9}


# ------------------------------------------------------------------------------------------------
# Scans


def scan_inputs(batch, length, channels, state, groups, gated, seed):
    """One input set: scan_gpu.py's layer inputs (bf16 u, delta, B, C, z; fp32 A, D, delta_bias)."""
    return layer_inputs(batch, length, channels, state, groups, gated=gated, seed=seed)


def minimal_bytes(inputs: dict) -> int:
    """Read u, delta, B, C, z and write y (u's shape and dtype), in their dtypes."""
    size = lambda x: 0 if x is None else x.size * x.dtype.itemsize
    return sum(size(inputs[k]) for k in ("u", "delta", "B", "C", "z")) + size(inputs["u"])


def scan_loop(fn, trips: int, empty: bool):
    """jit(sets, ys) -> ys after `trips` iterations of one call of `fn(inputs) -> array` per set;
    call k reads an element of call k-1's output. `empty`: each call only updates that element of
    its own output in place."""

    def call(inputs, own_y, previous_y):
        first = (0,) * previous_y.ndim
        bias = inputs["delta_bias"] + previous_y[first].astype(jnp.float32) * DEPENDENCE
        if empty:
            return own_y.at[first].add(bias[0].astype(own_y.dtype))
        return fn({**inputs, "delta_bias": bias})

    def run(sets, ys):
        def trip(_, ys):
            ys = list(ys)
            for k, inputs in enumerate(sets):
                ys[k] = call(inputs, ys[k], ys[k - 1])  # ys[-1]: the previous trip's last call
            return tuple(ys)

        return lax.fori_loop(0, trips, trip, ys)

    return jax.jit(run)


def time_scan(fn, input_sets: list, calls: int, repeats: int) -> dict:
    """Seconds per call of `fn` (loop minus empty loop) and whether a Pallas kernel fell back."""
    trips = -(-calls // len(input_sets))
    out = jax.eval_shape(fn, input_sets[0])
    ys = tuple(jnp.zeros(out.shape, out.dtype) for _ in input_sets)
    seconds = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for empty in (False, True):
            compiled = scan_loop(fn, trips, empty).lower(input_sets, ys).compile()
            run = lambda: jax.block_until_ready(compiled(input_sets, ys))
            seconds[empty] = median_seconds(run, repeats, warmup=1)
    fell_back = any("using impl='chunked'" in str(w.message) for w in caught)
    total_calls = trips * len(input_sets)
    return {
        "calls": total_calls,
        "sets": len(input_sets),
        "loop_us_per_call": seconds[False] / total_calls * 1e6,
        "empty_loop_us_per_call": seconds[True] / total_calls * 1e6,
        "us_per_call": (seconds[False] - seconds[True]) / total_calls * 1e6,
        "fell_back_to_chunked": fell_back,
        "warnings": sorted({str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)}),
    }


def roofline_fields(bytes_moved: int, exps: int, us_per_call: float, ceilings: dict) -> dict:
    """GB/s, exps/s, their % of the ceilings, the floor and x_floor of one call."""
    seconds = us_per_call * 1e-6
    gbps, gexp = bytes_moved / seconds / 1e9, exps / seconds / 1e9
    memory_s = bytes_moved / (ceilings["copy_gbps"] * 1e9)
    exp_s = exps / (ceilings["gexp_per_s"] * 1e9)
    return {
        "gbps": gbps,
        "gexp_per_s": gexp,
        "pct_of_copy_ceiling": 100 * gbps / ceilings["copy_gbps"],
        "pct_of_exp_ceiling": 100 * gexp / ceilings["gexp_per_s"],
        "floor_us": max(memory_s, exp_s) * 1e6,
        "bound_by": "memory" if memory_s >= exp_s else "exp",
        "x_floor": seconds / max(memory_s, exp_s),
    }


def number_of_sets(set_bytes: int, working_set_mib: float) -> int:
    """At least 4 sets, more until they exceed the working set (at most MAX_SETS: at batch 2 the
    sets of the layers here stay within an H100's 50 MB L2, where the scans are latency-bound)."""
    return min(MAX_SETS, max(4, math.ceil(working_set_mib * 2**20 / set_bytes)))


def with_gpu_designs(names, designs):
    """(impl or SS2D variant, GPU kernel design or None) pairs: every design for what runs the GPU
    kernel (sarf_jax.ops.scan_pallas_gpu.DESIGN), None for the rest."""
    uses_gpu_kernel = lambda name: resolve_impl(SS2D_VARIANTS.get(name, (name,))[0]) == "pallas_gpu"
    return [(name, design) for name in names for design in (designs if uses_gpu_kernel(name) else [None])]


@contextlib.contextmanager
def gpu_design(design):
    """Trace the GPU kernel in this design (None: leave the default)."""
    saved = scan_pallas_gpu.DESIGN
    scan_pallas_gpu.DESIGN = design or saved
    try:
        yield
    finally:
        scan_pallas_gpu.DESIGN = saved


def bench_shape(name, shape, batch, impls, ceilings, args):
    """One row per implementation for one (shape, batch)."""
    first = scan_inputs(batch, *shape, seed=0)
    bytes_moved = minimal_bytes(first)
    sets = [first] + [
        scan_inputs(batch, *shape, seed=k) for k in range(1, number_of_sets(bytes_moved, args.working_set_mib))
    ]
    length, channels, state = shape[:3]
    exps = batch * length * channels * state
    for impl, design in with_gpu_designs(impls, args.gpu_designs):
        scan = lambda inputs, impl=impl: selective_scan(**inputs, delta_softplus=True, impl=impl)
        with gpu_design(design):
            timing = time_scan(scan, sets, args.calls, args.repeats)
        row = {
            "bench": "scan_roofline",
            "shape": name,
            "batch": batch,
            **dict(zip(SHAPE_FIELDS, shape)),
            "dtype": "bfloat16",
            "impl": impl,
            "gpu_design": design,
            "resolved_impl": "chunked" if timing["fell_back_to_chunked"] else resolve_impl(impl),
            "bytes": bytes_moved,
            "exps": exps,
            "working_set_bytes": len(sets) * bytes_moved,
            **timing,
        }
        if timing["us_per_call"] > 0:
            row.update(roofline_fields(bytes_moved, exps, timing["us_per_call"], ceilings))
        else:
            row["note"] = "the loop was not measurably slower than the empty loop: raise --calls"
        print(json.dumps(row), flush=True)


# ------------------------------------------------------------------------------------------------
# SS2D: VMamba's four-direction scan of a grid (sarf_jax.ops.cross_scan), fused or not


def ss2d_inputs(batch, height, width, d_inner, state, dt_rank, seed):
    """bf16 x (the grid), dt, dt_weight, B, C; fp32 A, D, delta_bias (as SS2D passes them)."""
    rng = np.random.default_rng(seed)
    bf16 = lambda *shape, s=1.0: jnp.asarray(s * rng.standard_normal(shape), jnp.bfloat16)
    per_position = (batch, height, width, 4)
    return dict(
        x=bf16(batch, height, width, d_inner),
        dt=bf16(*per_position, dt_rank),
        dt_weight=bf16(4, d_inner, dt_rank, s=dt_rank**-0.5),
        A=-jnp.exp(jnp.asarray(rng.standard_normal((4 * d_inner, state)) * 0.5, jnp.float32)),
        B=bf16(*per_position, state),
        C=bf16(*per_position, state),
        D=jnp.ones((4 * d_inner,), jnp.float32),
        delta_bias=jnp.asarray(rng.uniform(-4, -2, 4 * d_inner), jnp.float32),
    )


def ss2d_function(variant: str, mode: str):
    """inputs -> array: the merged y (forward), or du plus every other gradient folded in at
    DEPENDENCE scale so that none is dead (forward_backward)."""
    impl, fused = SS2D_VARIANTS[variant]

    def forward(inputs):
        return cross_selective_scan(**inputs, impl=impl, fused=fused)

    if mode == "forward":
        return forward

    def forward_backward(inputs):
        names = list(inputs)
        loss = lambda *values: jnp.sum(forward(dict(zip(names, values))))
        grads = jax.grad(loss, argnums=tuple(range(len(names))))(*inputs.values())
        others = sum(jnp.sum(g.astype(jnp.float32)) for name, g in zip(names, grads) if name != "x")
        return grads[0] + (others * DEPENDENCE).astype(grads[0].dtype)

    return forward_backward


def ss2d_minimal(inputs: dict, mode: str) -> tuple[int, int]:
    """(bytes, exps) any SS2D scan must move and compute: forward reads x, dt, B, C and writes the
    merged fp32 y; forward_backward adds reading them and dy and writing their gradients, and
    computes every exp(delta A) twice (once more in the backward pass)."""
    size = lambda x: x.size * x.dtype.itemsize
    grid_inputs = sum(size(inputs[k]) for k in ("x", "dt", "B", "C"))
    y = inputs["x"].size * 4
    exps = inputs["x"].size * inputs["A"].size // inputs["x"].shape[-1]  # batch x L x 4 d_inner x state
    if mode == "forward":
        return grid_inputs + y, exps
    return 2 * (grid_inputs + y) + grid_inputs, 2 * exps


def bench_ss2d(name, shape, batch, variants, ceilings, args):
    """One row per (mode, variant) for one SS2D shape and batch."""
    first = ss2d_inputs(batch, *shape, seed=0)
    set_bytes = sum(x.size * x.dtype.itemsize for x in first.values())
    sets = [first] + [
        ss2d_inputs(batch, *shape, seed=k)
        for k in range(1, min(SS2D_MAX_SETS, number_of_sets(set_bytes, args.working_set_mib)))
    ]
    for mode in ("forward", "forward_backward"):
        bytes_moved, exps = ss2d_minimal(first, mode)
        for variant, design in with_gpu_designs(variants, args.gpu_designs):
            with gpu_design(design):
                timing = time_scan(ss2d_function(variant, mode), sets, args.calls, args.repeats)
            impl, fused = SS2D_VARIANTS[variant]
            row = {
                "bench": "ss2d_roofline",
                "shape": name,
                "batch": batch,
                **dict(zip(SS2D_FIELDS, shape)),
                "dtype": "bfloat16",
                "mode": mode,
                "variant": variant,
                "impl": impl,
                "gpu_design": design,
                "fused": fused,
                "bytes": bytes_moved,
                "exps": exps,
                **timing,
            }
            if timing["us_per_call"] > 0:
                row.update(roofline_fields(bytes_moved, exps, timing["us_per_call"], ceilings))
            else:
                row["note"] = "the loop was not measurably slower than the empty loop: raise --calls"
            print(json.dumps(row), flush=True)


# ------------------------------------------------------------------------------------------------
# Command line


def machine_row(device) -> dict:
    """machine_info() (its "device" is the first device's kind) with the platform, count and host."""
    return {
        "bench": "machine",
        "platform": device.platform,
        "devices": jax.device_count(),
        "host": platform.node(),
        **machine_info(),
    }


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", nargs="+", choices=tuple(SHAPES), default=tuple(SHAPES))
    parser.add_argument("--batch", nargs="+", type=int, default=None, help="batch sizes (default 32 2; small: 2)")
    parser.add_argument("--impls", nargs="+", default=None, help="selective_scan impls (default: the platform's)")
    parser.add_argument(
        "--ss2d", action="store_true", help="time SS2D's four-direction scan (fused or not) instead of selective_scan"
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=tuple(SS2D_VARIANTS),
        default=None,
        help="with --ss2d (default: the platform's)",
    )
    parser.add_argument(
        "--gpu-designs",
        nargs="+",
        choices=scan_pallas_gpu.DESIGNS,
        default=[scan_pallas_gpu.DESIGN],
        help="designs of the GPU kernel to time, one row each (default: the default design)",
    )
    parser.add_argument("--small", action="store_true", help="tiny shapes, batch 2 (the default on a CPU)")
    parser.add_argument("--full", action="store_true", help="the real shapes even on a CPU")
    parser.add_argument("--calls", type=int, default=52, help="scan calls per timed loop (>= 50)")
    parser.add_argument("--repeats", type=int, default=5, help="timed loops per measurement; the median counts")
    parser.add_argument("--copy-mib", type=int, default=None, help="copy array size (default 2048, CPU 64)")
    parser.add_argument("--exp-elements", type=int, default=None, help="exp2 array size (default 2^26, CPU 2^18)")
    parser.add_argument("--exp-depth", type=int, default=128, help="exp2 per element per call")
    parser.add_argument(
        "--working-set-mib", type=float, default=None, help="input sets exceed this (default 256, CPU 0)"
    )
    args = parser.parse_args()
    for flag in ("calls", "repeats"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be a positive int, got {getattr(args, flag)}")
    if args.exp_depth < EXP_CHAINS or args.exp_depth % EXP_CHAINS:
        parser.error(f"--exp-depth must be a positive multiple of {EXP_CHAINS}, got {args.exp_depth}")
    if args.batch and any(b < 1 for b in args.batch):
        parser.error(f"--batch must be positive ints, got {args.batch}")
    return args


def with_platform_defaults(args, backend: str):
    """Sizes by platform: an accelerator gets the real shapes and arrays that fill it."""
    cpu = backend == "cpu"
    args.small = args.small or (cpu and not args.full)
    args.copy_mib = args.copy_mib or (64 if cpu else 2048)
    args.exp_elements = args.exp_elements or (2**18 if cpu else 2**26)
    args.working_set_mib = (0 if cpu else 256) if args.working_set_mib is None else args.working_set_mib
    args.batch = args.batch or ([SMALL_BATCH] if args.small else [32, 2])
    args.impls = args.impls or list(platform_impls(backend))
    args.variants = args.variants or (["chunked", "reference"] if cpu else ["fused", "unfused", "chunked"])
    for impl in args.impls:
        resolve_impl(impl)  # a ValueError naming the valid impls
    return args


def main():
    args = with_platform_defaults(parse_args(), jax.default_backend())
    print(json.dumps(machine_row(jax.devices()[0])), flush=True)
    ceilings = {
        **copy_ceiling(args.copy_mib, args.repeats),
        **exp_ceiling(args.exp_elements, args.exp_depth, args.repeats),
    }
    print(json.dumps({"bench": "ceilings", **ceilings}), flush=True)
    if args.ss2d:
        shapes = SMALL_SS2D_SHAPES if args.small else SS2D_SHAPES
        for batch in args.batch:
            for name in (n for n in args.shapes if n in shapes):
                bench_ss2d(name, shapes[name], batch, args.variants, ceilings, args)
        return
    shapes = SMALL_SHAPES if args.small else SHAPES
    for batch in args.batch:
        for name in args.shapes:
            bench_shape(name, shapes[name], batch, args.impls, ceilings, args)


if __name__ == "__main__":
    main()

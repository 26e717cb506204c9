"""Training and inference throughput of the registered models on this machine, as JSON lines.

For each model: parameters, GFLOPs (papers' convention), compile seconds, and images/s of a
jitted forward pass and of a forward+backward (SGD-free gradient) step, medians after warm-up.

    .venv/bin/python benchmarks/models.py                       # every *_mini at 28x28x1, batch 64
    .venv/bin/python benchmarks/models.py --models vim_tiny --img-size 224 --in-chans 3 --batch 8
    .venv/bin/python benchmarks/models.py --models vmamba_mini --override 'depths=(2,)'   # stage 0 only
    .venv/bin/python benchmarks/models.py --models vmamba_tiny --rate-vs vit_small --img-size 224 --in-chans 3 --batch 8

Every row has the useful compute rate, GFLOPs x images/s, of both passes. With --rate-vs BASELINE
the baseline is benched too, and then each model's forward and the baseline's are timed again,
alternating, for a "rate" row with their ratio (on a shared machine, only such interleaved
timings compare).
"""

from __future__ import annotations

import argparse
import ast
import json
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from sarf_jax import models
from sarf_jax.analysis import machine_info, median_seconds, model_gflops, parameter_count
from sarf_jax.ops import compiler_options


def bench(
    name: str,
    *,
    img_size: int,
    in_chans: int,
    batch: int,
    repeats: int,
    scan_impl=None,
    dtype: str = "float32",
    check_against=None,
    overrides=None,
    forward_timers=None,
) -> dict:
    make = lambda impl: models.create(
        name,
        num_classes=10,
        img_size=img_size,
        in_chans=in_chans,
        rngs=nnx.Rngs(0),
        dtype=jnp.dtype(dtype),
        **({"scan_impl": impl} if impl else {}),
        **(overrides or {}),
    )
    model = make(scan_impl)
    graphdef, state = nnx.split(model)
    images = jax.random.normal(jax.random.key(0), (batch, img_size, img_size, in_chans))
    labels = jnp.arange(batch) % 10

    def forward(state, images):
        return nnx.merge(graphdef, state)(images)

    params, rest = nnx.split(model, nnx.Param, ...)[1:]

    def loss(params, rest, images, labels):  # gradients of the parameters only (not RNG keys)
        fresh_rest = jax.tree.map(lambda x: x, rest)  # Variables of this trace: train mode mutates them
        logits = nnx.merge(graphdef, params, fresh_rest)(images, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    start = time.perf_counter()
    options = compiler_options()  # what sarf_jax's own steps compile with
    forward_c = jax.jit(forward, compiler_options=options).lower(state, images).compile()
    grad_c = jax.jit(jax.grad(loss), compiler_options=options).lower(params, rest, images, labels).compile()
    compile_s = time.perf_counter() - start
    run_forward = lambda: jax.block_until_ready(forward_c(state, images))
    if forward_timers is not None:
        forward_timers[name] = run_forward
    forward_s = median_seconds(run_forward, repeats)
    grad_s = median_seconds(lambda: jax.block_until_ready(grad_c(params, rest, images, labels)), repeats)
    agreement = {}
    if check_against:  # the same weights (same seed) with another scan: largest logit difference
        with jax.default_matmul_precision("highest"):
            ours, theirs = model(images[:8]), make(check_against)(images[:8])
        agreement = {
            f"logits_max_abs_diff_vs_{check_against}": float(jnp.max(jnp.abs(ours - theirs))),
            "logits_max_abs": float(jnp.max(jnp.abs(theirs))),
        }
    gflops = model_gflops(model, img_size, in_chans=in_chans)
    return {
        "bench": "model",
        "model": name,
        "img_size": img_size,
        "in_chans": in_chans,
        "batch": batch,
        "scan_impl": scan_impl or "auto",
        "dtype": dtype,
        "overrides": {key: repr(value) for key, value in (overrides or {}).items()},
        "params": parameter_count(model),
        "gflops": gflops,
        "compile_s": compile_s,
        "forward_images_per_s": batch / forward_s,
        "forward_backward_images_per_s": batch / grad_s,
        "forward_gflops_per_s": gflops * batch / forward_s,
        "forward_backward_gflops_per_s": gflops * batch / grad_s,
        **agreement,
    }


def interleaved_rates(timers, gflops, baseline, batch, rounds):
    """{"bench": "rate"} rows: each model's forward GFLOPs x images/s over the baseline's, the
    forwards timed in alternation (one call each per round) so that load on a shared machine
    hits all of them alike."""
    seconds = {name: [] for name in timers}
    for name in timers:  # warm-up
        timers[name]()
    for _ in range(rounds):
        for name, run in timers.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    rate = {name: gflops[name] * batch / statistics.median(times) for name, times in seconds.items()}
    return [
        {
            "bench": "rate",
            "model": name,
            "baseline": baseline,
            "forward_gflops_per_s": rate[name],
            "baseline_forward_gflops_per_s": rate[baseline],
            "forward_images_per_s": batch / statistics.median(seconds[name]),
            "baseline_forward_images_per_s": batch / statistics.median(seconds[baseline]),
            "rate_ratio": rate[name] / rate[baseline],
            "rounds": rounds,
        }
        for name in timers
        if name != baseline
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=None, help="default: every *_mini")
    parser.add_argument("--img-size", type=int, default=28)
    parser.add_argument("--in-chans", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scan-impl", default=None, help="selective_scan impl of the SSMs (default: auto)")
    parser.add_argument("--dtype", default="float32", help="compute dtype, e.g. bfloat16 on accelerators")
    parser.add_argument("--check-against", default=None, help="also report the logit difference to this impl")
    parser.add_argument("--rate-vs", default=None, metavar="BASELINE", help="e.g. vit_small: interleaved rate ratio")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="constructor argument (Python literal), e.g. 'depths=(2,)'; repeatable",
    )
    args = parser.parse_args()
    overrides = {}
    for text in args.override:
        key, sep, value = text.partition("=")
        if not sep:
            parser.error(f"--override must look like KEY=VALUE, got {text!r}")
        overrides[key] = ast.literal_eval(value)
    names = args.models or [n for n in models.list_models() if n.endswith("_mini")]
    if args.rate_vs and args.rate_vs not in names:
        names = [*names, args.rate_vs]
    timers, gflops = {}, {}
    print(json.dumps({"bench": "machine", **machine_info()}), flush=True)
    for name in names:
        scan_impl = None if name.startswith("vit") else args.scan_impl
        row = bench(
            name,
            img_size=args.img_size,
            in_chans=args.in_chans,
            batch=args.batch,
            repeats=args.repeats,
            scan_impl=scan_impl,
            dtype=args.dtype,
            check_against=None if name.startswith("vit") else args.check_against,
            overrides=overrides,
            forward_timers=timers if args.rate_vs else None,
        )
        gflops[name] = row["gflops"]
        print(json.dumps(row), flush=True)
    if args.rate_vs:
        for row in interleaved_rates(timers, gflops, args.rate_vs, args.batch, max(args.repeats, 3)):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

"""Does SARF's FLOP saving turn into speed? Dense vs sarf_tome on the *_mini models, as JSON lines.

For each model, the generated schedule whose GFLOPs saving is closest to 37.5% (the middle of
the paper's 35-40%) is picked from a fixed grid of `keep=R[,sites=N]` by GFLOPs alone; then dense
and sarf_tome are timed (jitted forward, medians after warm-up) and the measured speedup is
compared with the GFLOPs ratio. The plan's own cost is also timed directly: at every site, the
plan computed from a (B, H, W, C) grid and applied to two tensors (block input and mixer output),
jitted on its own; `plan_fraction` is its sum over sites divided by the reduced forward time.

    .venv/bin/python benchmarks/reduction.py [--models vmamba_mini plainmamba_mini] [--batch 64]
    python benchmarks/reduction.py --models vmamba_tiny --img-size 224 --in-chans 3 --schedule hybrid_2p1
"""

from __future__ import annotations

import argparse
import json

import jax
from flax import nnx

from sarf_jax import models, reduction
from sarf_jax.analysis import machine_info, median_seconds, model_gflops
from sarf_jax.evaluate.sweep import images_per_second
from sarf_jax.ops import compiler_options

KEEPS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25)
SCHEDULES = tuple(f"keep={keep}{sites}" for sites in ("", ",sites=1", ",sites=2") for keep in KEEPS)
TARGET_SAVING = 0.375


def closest_schedule(model, dense_gflops: float, img_size: int, in_chans: int):
    best = None
    for schedule in SCHEDULES:
        spec = reduction.Spec("sarf_tome", schedule)
        try:
            gflops = model_gflops(model, img_size, in_chans=in_chans, reduction=spec)
        except ValueError:
            continue  # not reachable on this model's grids (or more sites than blocks)
        gap = abs((1 - gflops / dense_gflops) - TARGET_SAVING)
        if best is None or gap < best[0]:
            best = (gap, spec, gflops)
    return best[1], best[2]


def site_channels(model, stage: int) -> int:
    """Width of the tokens at a site: VMamba's stage width, or the plain models' embedding width."""
    return model.dims[stage] if hasattr(model, "dims") else model.embed_dim


def plan_milliseconds(model, spec, batch: int, repeats: int) -> float:
    """Time of computing and applying (to two tensors) the plan of every reducing site, summed."""
    family = {"VMamba": "vmamba", "PlainMamba": "plainmamba", "VisionTransformer": "vit"}.get(
        type(model).__name__, "vim"
    )
    reducer = spec.reducer(family)
    total = 0.0
    for site in model.reduction_sites(spec):
        if site.in_hw == site.out_hw:
            continue
        grid = jax.random.normal(jax.random.key(1), (batch, *site.in_hw, site_channels(model, site.stage)))

        def plan_and_apply(x, out_hw=site.out_hw):
            plan = reducer.plan(x, out_hw)
            return plan(x), plan(2.0 * x)

        compiled = jax.jit(plan_and_apply, compiler_options=compiler_options()).lower(grid).compile()
        total += median_seconds(lambda: jax.block_until_ready(compiled(grid)), repeats)
    return 1e3 * total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=["vmamba_mini", "plainmamba_mini"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--img-size", type=int, default=28)
    parser.add_argument("--in-chans", type=int, default=1)
    parser.add_argument("--scan-impl", default=None, help="selective_scan impl (default: auto)")
    parser.add_argument("--schedule", default=None, help="a schedule name or keep=R (default: closest to 37.5%%)")
    args = parser.parse_args()
    print(json.dumps({"bench": "machine", **machine_info()}), flush=True)
    for name in args.models:
        size, chans = args.img_size, args.in_chans
        options = {"scan_impl": args.scan_impl} if args.scan_impl else {}
        model = models.create(name, num_classes=10, img_size=size, in_chans=chans, rngs=nnx.Rngs(0), **options)
        dense_gflops = model_gflops(model, size, in_chans=chans)
        if args.schedule:
            spec = reduction.Spec("sarf_tome", args.schedule)
            gflops = model_gflops(model, size, in_chans=chans, reduction=spec)
        else:
            spec, gflops = closest_schedule(model, dense_gflops, size, chans)
        speed = lambda spec: images_per_second(
            model, spec, batch_size=args.batch, img_size=size, in_chans=chans, repeats=args.repeats
        )
        dense_speed, sarf_speed = speed(None), speed(spec)
        gflops_ratio, speedup = dense_gflops / gflops, sarf_speed / dense_speed
        plan_ms = plan_milliseconds(model, spec, args.batch, args.repeats)
        print(
            json.dumps(
                {
                    "bench": "reduction",
                    "model": name,
                    "img_size": size,
                    "batch": args.batch,
                    "scan_impl": args.scan_impl or "auto",
                    "schedule": getattr(spec.schedule, "name", spec.schedule),
                    "grids": [
                        f"{s.in_hw[0]}->{s.out_hw[0]}" for s in model.reduction_sites(spec) if s.in_hw != s.out_hw
                    ],
                    "dense_gflops": dense_gflops,
                    "sarf_tome_gflops": gflops,
                    "gflops_saving": 1 - gflops / dense_gflops,
                    "dense_images_per_s": dense_speed,
                    "sarf_tome_images_per_s": sarf_speed,
                    "gflops_ratio": gflops_ratio,
                    "measured_speedup": speedup,
                    "speedup_over_gflops_ratio": speedup / gflops_ratio,
                    "plan_ms": plan_ms,
                    "plan_fraction": plan_ms / (1e3 * args.batch / sarf_speed),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()

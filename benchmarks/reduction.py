"""Does SARF's FLOP saving turn into speed? Dense vs sarf_tome on the *_mini models, as JSON lines.

For each model, the generated `keep=R` schedule whose GFLOPs saving is closest to 37.5% (the
middle of the paper's 35-40%) is picked from a grid of R; then dense and sarf_tome are timed
(jitted forward, medians after warm-up) and the measured speedup is compared with the GFLOPs
ratio. The plan's own cost is small when speedup >= 0.8 x GFLOPs ratio.

    .venv/bin/python benchmarks/reduction.py [--models vmamba_mini plainmamba_mini] [--batch 64]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform

import jax
from flax import nnx

from sarf_jax import models, reduction
from sarf_jax.evaluate import model_gflops
from sarf_jax.evaluate.sweep import images_per_second

KEEPS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
TARGET_SAVING = 0.375


def closest_schedule(model, dense_gflops: float):
    best = None
    for keep in KEEPS:
        spec = reduction.Spec("sarf_tome", f"keep={keep}")
        try:
            gflops = model_gflops(model, 28, in_chans=1, reduction=spec)
        except ValueError:
            continue  # not reachable on this model's grids
        gap = abs((1 - gflops / dense_gflops) - TARGET_SAVING)
        if best is None or gap < best[0]:
            best = (gap, spec, gflops)
    return best[1], best[2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=["vmamba_mini", "plainmamba_mini"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print(json.dumps({"bench": "machine", "cpu": platform.processor() or platform.machine(),
                      "cores": os.cpu_count(), "device": jax.devices()[0].device_kind,
                      "jax": jax.__version__, "date": datetime.date.today().isoformat()}), flush=True)
    for name in args.models:
        model = models.create(name, num_classes=10, img_size=28, in_chans=1, rngs=nnx.Rngs(0))
        dense_gflops = model_gflops(model, 28, in_chans=1)
        spec, gflops = closest_schedule(model, dense_gflops)
        speed = lambda spec: images_per_second(model, spec, batch_size=args.batch, img_size=28, in_chans=1,
                                               repeats=args.repeats)
        dense_speed, sarf_speed = speed(None), speed(spec)
        gflops_ratio, speedup = dense_gflops / gflops, sarf_speed / dense_speed
        print(json.dumps({
            "bench": "reduction", "model": name, "batch": args.batch, "schedule": spec.schedule.name,
            "grids": [f"{s.in_hw[0]}->{s.out_hw[0]}" for s in model.reduction_sites(spec) if s.in_hw != s.out_hw],
            "dense_gflops": dense_gflops, "sarf_tome_gflops": gflops, "gflops_saving": 1 - gflops / dense_gflops,
            "dense_images_per_s": dense_speed, "sarf_tome_images_per_s": sarf_speed,
            "gflops_ratio": gflops_ratio, "measured_speedup": speedup,
            "speedup_over_gflops_ratio": speedup / gflops_ratio,
        }), flush=True)


if __name__ == "__main__":
    main()

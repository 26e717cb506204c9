"""Training and inference throughput of the registered models on this machine, as JSON lines.

For each model: parameters, GFLOPs (papers' convention), compile seconds, and images/s of a
jitted forward pass and of a forward+backward (SGD-free gradient) step, medians after warm-up.

    .venv/bin/python benchmarks/models.py                       # every *_mini at 28x28x1, batch 64
    .venv/bin/python benchmarks/models.py --models vim_tiny --img-size 224 --in-chans 3 --batch 8
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from sarf_jax import models
from sarf_jax.evaluate import model_gflops, parameter_count
from sarf_jax.evaluate.timing import median_seconds


def bench(name: str, *, img_size: int, in_chans: int, batch: int, repeats: int) -> dict:
    model = models.create(name, num_classes=10, img_size=img_size, in_chans=in_chans, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    images = jax.random.normal(jax.random.key(0), (batch, img_size, img_size, in_chans))
    labels = jnp.arange(batch) % 10

    def forward(state, images):
        return nnx.merge(graphdef, state)(images)

    def loss(state, images, labels):
        logits = nnx.merge(graphdef, state)(images, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    start = time.perf_counter()
    forward_c = jax.jit(forward).lower(state, images).compile()
    grad_c = jax.jit(jax.grad(loss)).lower(state, images, labels).compile()
    compile_s = time.perf_counter() - start
    forward_s = median_seconds(lambda: jax.block_until_ready(forward_c(state, images)), repeats)
    grad_s = median_seconds(lambda: jax.block_until_ready(grad_c(state, images, labels)), repeats)
    return {
        "bench": "model", "model": name, "img_size": img_size, "in_chans": in_chans, "batch": batch,
        "params": parameter_count(model), "gflops": model_gflops(model, img_size, in_chans=in_chans),
        "compile_s": compile_s, "forward_images_per_s": batch / forward_s,
        "forward_backward_images_per_s": batch / grad_s,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=None, help="default: every *_mini")
    parser.add_argument("--img-size", type=int, default=28)
    parser.add_argument("--in-chans", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    names = args.models or [n for n in models.list_models() if n.endswith("_mini")]
    print(json.dumps({"bench": "machine", "cpu": platform.processor() or platform.machine(),
                      "cores": os.cpu_count(), "device": jax.devices()[0].device_kind,
                      "jax": jax.__version__, "date": datetime.date.today().isoformat()}), flush=True)
    for name in names:
        print(json.dumps(bench(name, img_size=args.img_size, in_chans=args.in_chans, batch=args.batch,
                               repeats=args.repeats)), flush=True)


if __name__ == "__main__":
    main()

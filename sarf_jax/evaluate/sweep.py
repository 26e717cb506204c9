"""A sweep: one model, several reduction specs, each evaluated for accuracy, GFLOPs and images/s.

Entries are written to results.json as they finish (atomically, with `"complete": false` until the
last one), so an interrupted sweep resumes where it stopped and never claims completeness early.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from sarf_jax import reduction as reduction_lib
from sarf_jax.evaluate.flops import model_gflops
from sarf_jax.evaluate.timing import median_seconds

RESULTS_FILE = "results.json"


def accuracy(model, batches: Iterable[dict], spec, *, preprocess=None,
             progress: Callable[[int], None] | None = None) -> dict:
    """Top-1 / top-5 over batches {"image": NHWC, "label", optional "mask" (0 = padding)}.

    `preprocess(images) -> model inputs` (e.g. train.step.normalize with the training statistics)
    runs inside the compiled function; one compiled function per spec.
    """
    graphdef, state = nnx.split(model)

    @jax.jit
    def correct(state, images, labels, mask):
        inputs = images.astype(jnp.float32) if preprocess is None else preprocess(images)
        logits = nnx.merge(graphdef, state)(inputs, reduction=spec)
        top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
        hits = top5 == labels[:, None]
        return (hits[:, 0] * mask).sum(), (hits.any(axis=1) * mask).sum(), mask.sum()

    top1 = top5 = seen = 0
    for batch in batches:
        mask = batch.get("mask", np.ones(len(batch["label"]), np.float32))
        c1, c5, count = correct(state, jnp.asarray(batch["image"]), jnp.asarray(batch["label"]), jnp.asarray(mask))
        top1, top5, seen = top1 + float(c1), top5 + float(c5), seen + int(count)
        if progress:
            progress(int(count))
    if seen == 0:
        raise ValueError("accuracy: the evaluation split produced no examples")
    return {"top1": top1 / seen, "top5": top5 / seen, "examples": seen}


def images_per_second(model, spec, *, batch_size: int, img_size: int, in_chans: int, repeats: int = 5) -> float:
    """Measured forward throughput (compile and warm-up excluded) at `batch_size`."""
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x, reduction=spec))
    images = jnp.zeros((batch_size, img_size, img_size, in_chans), jnp.float32)
    compiled = forward.lower(state, images).compile()
    return batch_size / median_seconds(lambda: jax.block_until_ready(compiled(state, images)), repeats)


@dataclasses.dataclass
class SweepResults:
    """results.json: {"complete": bool, "device": str, "entries": [{"weights", "reduction", ...}]}."""

    path: pathlib.Path
    entries: list = dataclasses.field(default_factory=list)
    meta: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def open(cls, workdir, meta: dict) -> "SweepResults":
        path = pathlib.Path(workdir) / RESULTS_FILE
        if path.is_file():
            stored = json.loads(path.read_text())
            return cls(path, stored.get("entries", []), {**stored.get("meta", {}), **meta})
        return cls(path, [], meta)

    def find(self, weights: str, label: str):
        return next((e for e in self.entries if (e["weights"], e["reduction"]) == (weights, label)), None)

    def add(self, entry: dict, *, complete: bool) -> None:
        self.entries.append(entry)
        self.write(complete=complete)

    def write(self, *, complete: bool) -> None:
        payload = json.dumps({"complete": complete, "meta": self.meta, "entries": self.entries}, indent=2)
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".results.", suffix=".json")
        with os.fdopen(handle, "w") as file:
            file.write(payload + "\n")
        os.replace(temporary, self.path)


def run_sweep(models_by_weights: dict, specs, batches_fn, *, workdir, img_size: int, in_chans: int,
              batch_size: int, preprocess=None, log=print, progress: bool = False) -> SweepResults:
    """Evaluate every (weights, spec); skip entries already in workdir/results.json.

    models_by_weights: {"raw": model, "ema": model}; batches_fn() -> a fresh iterable of batches.
    Every spec is checked (its schedule resolved against each model) before anything runs.
    progress: a tqdm bar over the entries on stderr (log lines are written above it).
    """
    for model in models_by_weights.values():
        for spec in specs:
            model.reduction_sites(spec)  # a bad schedule fails here, before any evaluation
    device = jax.devices()[0]
    results = SweepResults.open(workdir, {"device": f"{device.platform}:{device.device_kind}",
                                          "batch_size": batch_size, "img_size": img_size})
    todo = [(w, s) for w in models_by_weights for s in specs if not results.find(w, reduction_lib.spec_label(s))]
    done = len(models_by_weights) * len(specs) - len(todo)
    if done:
        log(f"resuming: {done} finished entries kept, {len(todo)} to run")
    bar = tqdm(total=len(todo), unit="entry", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    for index, (weights, spec) in enumerate(todo):
        model = models_by_weights[weights]
        label = reduction_lib.spec_label(spec)
        bar.set_description(f"{weights} {label}")
        start = time.perf_counter()
        scores = accuracy(model, batches_fn(), spec, preprocess=preprocess)
        entry = {
            "weights": weights, "reduction": label, "method": "none" if spec is None else spec.method,
            **scores, "gflops": model_gflops(model, img_size, in_chans=in_chans, reduction=spec),
            "images_per_s": images_per_second(model, spec, batch_size=batch_size, img_size=img_size,
                                              in_chans=in_chans),
        }
        results.add(entry, complete=False)
        (bar.write if progress else log)(
            f"[{done + index + 1}/{done + len(todo)}] {weights} {label}: top1 {entry['top1']:.4f} "
            f"top5 {entry['top5']:.4f} {entry['gflops']:.4f} GFLOPs {entry['images_per_s']:.0f} img/s "
            f"({time.perf_counter() - start:.0f} s)")
        bar.update(1)
    bar.close()
    for entry in results.entries:  # drop vs the dense model of the same weights
        dense = results.find(entry["weights"], "none")
        entry["top1_drop"] = None if dense is None else dense["top1"] - entry["top1"]
    results.write(complete=True)
    return results

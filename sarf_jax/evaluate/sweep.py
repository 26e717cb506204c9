"""A sweep: one model, several reduction specs, each evaluated for accuracy (evaluate.sharded, on
the whole mesh), GFLOPs and images/s.

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

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from sarf_jax import parallel
from sarf_jax import reduction as reduction_lib
from sarf_jax.analysis.flops import model_gflops
from sarf_jax.analysis.timing import median_seconds
from sarf_jax.evaluate import sharded
from sarf_jax.ops import compiler_options

RESULTS_FILE = "results.json"


def images_per_second(model, spec, *, batch_size: int, img_size: int, in_chans: int, repeats: int = 5) -> float:
    """Measured forward throughput (compile and warm-up excluded) at `batch_size`."""
    graphdef, state = nnx.split(model)
    forward = jax.jit(
        lambda state, x: nnx.merge(graphdef, state)(x, reduction=spec), compiler_options=compiler_options()
    )
    images = jnp.zeros((batch_size, img_size, img_size, in_chans), jnp.float32)
    compiled = forward.lower(state, images).compile()
    return batch_size / median_seconds(lambda: jax.block_until_ready(compiled(state, images)), repeats)


@dataclasses.dataclass
class SweepResults:
    """results.json: {"complete": bool, "meta": {...}, "entries": [{"weights", "reduction", ...}]}.

    Only the writer (process 0) reads and writes the file; the other processes keep their entries
    in memory.
    """

    path: pathlib.Path
    entries: list = dataclasses.field(default_factory=list)
    meta: dict = dataclasses.field(default_factory=dict)
    writer: bool = True

    @classmethod
    def open(cls, workdir, meta: dict, *, writer: bool = True) -> SweepResults:
        path = pathlib.Path(workdir) / RESULTS_FILE
        if writer and path.is_file():
            stored = json.loads(path.read_text())
            return cls(path, stored.get("entries", []), {**stored.get("meta", {}), **meta}, writer)
        return cls(path, [], meta, writer)

    def find(self, weights: str, label: str):
        return next((e for e in self.entries if (e["weights"], e["reduction"]) == (weights, label)), None)

    def add(self, entry: dict, *, complete: bool) -> None:
        self.entries.append(entry)
        self.write(complete=complete)

    def write(self, *, complete: bool) -> None:
        if not self.writer:
            return
        payload = json.dumps({"complete": complete, "meta": self.meta, "entries": self.entries}, indent=2)
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".results.", suffix=".json")
        with os.fdopen(handle, "w") as file:
            file.write(payload + "\n")
        os.replace(temporary, self.path)


def _from_process_0(flags: list[bool]) -> list[bool]:
    """Process 0's `flags` on every process (only process 0 reads results.json, so it decides
    which entries are left to run; every process must run the same ones)."""
    if jax.process_count() == 1:
        return flags
    from jax.experimental import multihost_utils

    return [bool(f) for f in multihost_utils.broadcast_one_to_all(np.asarray(flags, np.int32))]


def sweep_meta(mesh, *, batch_size: int, img_size: int) -> dict:
    """What ran where: accuracy on the whole mesh, images/s on one device of process 0."""
    device = jax.local_devices()[0]
    return {
        "device": f"{device.platform}:{device.device_kind}",
        "batch_size": batch_size,
        "img_size": img_size,
        "mesh": dict(mesh.shape),
        "devices": mesh.size,
        "processes": jax.process_count(),
        "images_per_s_devices": 1,
    }


def run_sweep(
    models_by_weights: dict,
    specs,
    batches_fn,
    *,
    workdir,
    img_size: int,
    in_chans: int,
    batch_size: int,
    mesh=None,
    preprocess=None,
    log=print,
    progress: bool = False,
) -> SweepResults:
    """Evaluate every (weights, spec); skip entries already in workdir/results.json.

    models_by_weights: {"raw": model, "ema": model}, weights of one model, the same on every process; batches_fn() -> a
    fresh iterable of this host's share of each global batch of `batch_size` (data.eval_iterator).
    mesh: where accuracy runs (default: every device on the data axis); images/s is measured on
    one device. Every process calls this; only process 0 logs and writes results.json.
    Every spec is checked (its schedule resolved against each model) before anything runs.
    progress: a tqdm bar over the entries on stderr (log lines are written above it).
    """
    _check_models(models_by_weights, specs)
    mesh = parallel.make_mesh({"data": -1}) if mesh is None else mesh
    sharded.check_batch_size(mesh, batch_size)
    writer = jax.process_index() == 0
    log = log if writer else (lambda *args: None)
    results = SweepResults.open(workdir, sweep_meta(mesh, batch_size=batch_size, img_size=img_size), writer=writer)
    pairs = [(w, s) for w in models_by_weights for s in specs]
    todo = _entries_left(results, pairs, log)
    done = len(pairs) - len(todo)
    placed = {w: sharded.on_mesh(m, mesh) for w, m in models_by_weights.items()}
    evaluator = sharded.Evaluator(next(iter(placed.values()))[0], mesh, preprocess=preprocess)
    sizes = dict(batch_size=batch_size, img_size=img_size, in_chans=in_chans)
    bar = tqdm(total=len(todo), unit="entry", disable=not (progress and writer), file=sys.stderr, dynamic_ncols=True)
    for index, (weights, spec) in enumerate(todo):
        bar.set_description(f"{weights} {reduction_lib.spec_label(spec)}")
        start = time.perf_counter()
        scores = evaluator(placed[weights][1], batches_fn(), spec)
        entry = _sweep_entry(scores, models_by_weights[weights], weights, spec, measure_speed=writer, **sizes)
        results.add(entry, complete=False)
        if writer:
            (bar.write if progress else log)(
                _entry_line(entry, done + index + 1, len(pairs), seconds=time.perf_counter() - start)
            )
        bar.update(1)
    bar.close()
    _add_top1_drops(results)
    results.write(complete=True)
    return results


def _check_models(models_by_weights: dict, specs) -> None:
    """Every model has one structure and takes every spec, so that a bad schedule fails before any
    evaluation."""
    structure = nnx.graphdef(next(iter(models_by_weights.values())))
    for weights, model in models_by_weights.items():
        if nnx.graphdef(model) != structure:
            raise ValueError(
                f"run_sweep: models_by_weights[{weights!r}] is not the same model as the "
                "others (a sweep evaluates several weights of one model)"
            )
        for spec in specs:
            model.reduction_sites(spec)


def _entries_left(results: SweepResults, pairs: list, log) -> list:
    """The (weights, spec) pairs not yet in results.json as process 0 reads it, so that every
    process runs the same ones."""
    finished = _from_process_0([results.find(w, reduction_lib.spec_label(s)) is not None for w, s in pairs])
    todo = [pair for pair, skip in zip(pairs, finished) if not skip]
    done = len(pairs) - len(todo)
    if done:
        log(f"resuming: {done} finished entries kept, {len(todo)} to run")
    return todo


def _sweep_entry(
    scores: dict, model, weights: str, spec, *, measure_speed: bool, batch_size: int, img_size: int, in_chans: int
) -> dict:
    """One entry of results.json: the accuracy `scores`, images/s (measured by the writer only, on
    one of its devices) and GFLOPs of `model` under `spec`."""
    speed = (
        images_per_second(model, spec, batch_size=batch_size, img_size=img_size, in_chans=in_chans)
        if measure_speed
        else None
    )
    return {
        "weights": weights,
        "reduction": reduction_lib.spec_label(spec),
        "method": "none" if spec is None else spec.method,
        **scores,
        "gflops": model_gflops(model, img_size, in_chans=in_chans, reduction=spec),
        "images_per_s": speed,
    }


def _entry_line(entry: dict, number: int, total: int, *, seconds: float) -> str:
    """The log line of the `number`-th of `total` entries, which took `seconds`."""
    return (
        f"[{number}/{total}] {entry['weights']} {entry['reduction']}: top1 {entry['top1']:.4f} "
        f"top5 {entry['top5']:.4f} {entry['gflops']:.4f} GFLOPs {entry['images_per_s']:.0f} img/s "
        f"({seconds:.0f} s)"
    )


def _add_top1_drops(results: SweepResults) -> None:
    """Each entry's top1_drop: the dense model's top-1 (same weights) minus its own, None without one."""
    for entry in results.entries:
        dense = results.find(entry["weights"], "none")
        entry["top1_drop"] = None if dense is None else dense["top1"] - entry["top1"]

"""One evaluation pass over a split, sharded over a device mesh: the only place that computes
top-1, top-5 and cross-entropy, used by training's evaluations and by eval.py's sweeps.

Every host reads its own slice of each global batch (`data.eval_iterator` with its process
index); the slices become one global batch split over the mesh's batch axes (data x fsdp). The
weights keep the layout they were placed with: training's parameter shardings, or `place` for a
model loaded on the host. The compiled step returns masked sums (correct top-1, correct top-5,
cross-entropy, count), replicated on every device, so each process reads the same global totals.
Padding rows (mask 0) count nowhere: a split that does not fill its last global batch is counted
exactly. An Evaluator holds one model structure and compiles one function per reduction spec,
whatever weights it is then given.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from sarf_jax import parallel
from sarf_jax import reduction as reduction_lib
from sarf_jax.ops import compiler_options


def batch_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> dict:
    """Sums over the rows with mask > 0: correct top-1, correct top-5, cross-entropy, count."""
    valid = mask > 0
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]  # ties: the lower class first, as argmax
    hits = top5 == labels[:, None]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return {
        "correct": jnp.sum(hits[:, 0] & valid, dtype=jnp.int32),
        "correct_top5": jnp.sum(hits.any(axis=-1) & valid, dtype=jnp.int32),
        "loss": jnp.sum(jnp.where(valid, loss, 0.0)),
        "count": jnp.sum(valid, dtype=jnp.int32),
    }


def _eval_sums(graphdef, spec, preprocess, states, batch) -> dict:
    images = batch["image"].astype(jnp.float32) if preprocess is None else preprocess(batch["image"])
    logits = nnx.merge(graphdef, *states)(images, reduction=spec, train=False)
    return batch_sums(logits.astype(jnp.float32), batch["label"], batch["mask"])


def scores(totals: dict) -> dict:
    """{"top1", "top5", "loss" (mean), "examples"} from summed totals."""
    count = int(totals["count"])
    if count == 0:
        raise ValueError("evaluation: the split produced no examples")
    return {
        "top1": int(totals["correct"]) / count,
        "top5": int(totals["correct_top5"]) / count,
        "loss": float(totals["loss"]) / count,
        "examples": count,
    }


def batch_multiple(mesh) -> int:
    """Global batch sizes must be multiples of this: the mesh's data-parallel size (data x fsdp)
    and the number of processes (each host reads an equal share)."""
    return math.lcm(parallel.data_parallel_size(mesh), jax.process_count())


def check_batch_size(mesh, global_batch_size: int, name: str = "batch_size") -> None:
    """A clear error (naming `name`) for a global batch that the mesh and processes cannot split."""
    multiple = batch_multiple(mesh)
    if global_batch_size < 1 or global_batch_size % multiple:
        raise ValueError(
            f"{name}={global_batch_size} must be a positive multiple of {multiple} (the "
            f"data-parallel size mesh.data x mesh.fsdp = {parallel.data_parallel_size(mesh)}, "
            f"and the number of processes, {jax.process_count()})"
        )


def global_batch(batch: dict, sharding) -> dict:
    """This host's numpy batch -> global jax.Arrays split over the mesh's batch axes."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def place(tree, mesh):
    """A tree held by every process (e.g. a loaded model's nnx.state) as global arrays on `mesh`,
    laid out as training lays out parameters (parallel.param_shardings; replicated on data-only meshes)."""

    def put(leaf, sharding):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(leaf), sharding), impl=jax.random.key_impl(leaf))
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree, parallel.param_shardings(tree, mesh))


def on_mesh(model: nnx.Module, mesh) -> tuple:
    """(graphdef, states) of a model held by every process (e.g. from load_pretrained), its state
    placed on `mesh`: an Evaluator's graphdef and the states it evaluates."""
    graphdef, state = nnx.split(model)
    return graphdef, (place(state, mesh),)


class Evaluator:
    """Accuracy, top-5 and loss of one model structure (`graphdef`) over a per-host evaluation
    iterator, on one mesh; one compiled step per reduction spec, shared by all the weights it is
    given (e.g. raw and EMA).

    preprocess(images) -> model inputs runs inside the compiled step (e.g. data.normalize with the
    training statistics); None feeds the images as float32.
    """

    def __init__(self, graphdef, mesh, *, preprocess: Callable | None = None):
        self.graphdef, self.mesh, self.preprocess = graphdef, mesh, preprocess
        self.batch_sharding = parallel.batch_sharding(mesh)
        self._steps = {}  # spec label -> jitted (states, batch) -> sums

    def step(self, spec):
        """The compiled step for `spec` (a Spec is not always hashable; its label names it exactly)."""
        label = reduction_lib.spec_label(spec)
        if label not in self._steps:
            sums = functools.partial(_eval_sums, self.graphdef, spec, self.preprocess)
            self._steps[label] = jax.jit(
                sums, out_shardings=parallel.replicated(self.mesh), compiler_options=compiler_options()
            )
        return self._steps[label]

    def __call__(self, states: tuple, batches: Iterable[dict], spec=None) -> dict:
        """Scores of `nnx.merge(graphdef, *states)` (states already on the mesh) under reduction
        `spec` over `batches`: this host's share of each global batch, {"image", "label", "mask"}
        (mask 0 = padding; all ones when absent). The same on every process."""
        step, totals = self.step(spec), None
        for batch in batches:
            batch = {"mask": np.ones(len(batch["label"]), np.float32), **batch}
            batch["label"] = np.asarray(batch["label"], np.int32)
            sums = step(states, global_batch(batch, self.batch_sharding))
            totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        if totals is None:
            raise ValueError("evaluation: the split produced no batches")
        return scores(jax.device_get(totals))

"""A model directory: which registered variant it is (model.json) plus its weights (Orbax).

Written by the converter (official checkpoints) and readable by eval and by training (as an
initialisation), so a model can be rebuilt from the directory alone:

    DIR/model.json   {"name", "num_classes", "img_size", "in_chans", "overrides", "source": {...}}
    DIR/state/       orbax StandardCheckpointer of nnx.state(model) (Params and BatchStats)

Writes go to a temporary sibling directory renamed into place, so a failed save leaves nothing.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile

import jax
import orbax.checkpoint as ocp
from flax import nnx

from sarf_jax.models.registry import create

MODEL_FILE = "model.json"
STATE_DIR = "state"


def save_pretrained(directory, model: nnx.Module, *, name: str, num_classes: int, img_size: int,
                    in_chans: int = 3, overrides: dict | None = None, source: dict | None = None) -> None:
    """Write `model` (built as `create(name, ...)`) to a new `directory`."""
    directory = pathlib.Path(directory).absolute()
    if directory.exists():
        raise ValueError(f"save_pretrained: {directory} already exists; choose a new directory")
    info = {"name": name, "num_classes": num_classes, "img_size": img_size, "in_chans": in_chans,
            "overrides": overrides or {}, "source": source or {}}
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        (staging / MODEL_FILE).write_text(json.dumps(info, indent=2) + "\n")
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(staging / STATE_DIR, nnx.state(model, (nnx.Param, nnx.BatchStat)))
            checkpointer.wait_until_finished()
        os.rename(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def load_pretrained(directory, *, rngs: nnx.Rngs | None = None, **call_overrides):
    """(model, info) from a directory written by save_pretrained.

    `call_overrides` change constructor arguments that do not affect the weights' shapes
    (e.g. `scan_impl`, `dtype`, `drop_path_rate`).
    """
    directory = pathlib.Path(directory).absolute()
    model_file = directory / MODEL_FILE
    if not model_file.is_file() or not (directory / STATE_DIR).is_dir():
        raise ValueError(f"load_pretrained: {directory} has no {MODEL_FILE} and {STATE_DIR}/ "
                         "(not a directory written by save_pretrained / sarf_jax.convert)")
    info = json.loads(model_file.read_text())
    model = create(info["name"], num_classes=info["num_classes"], img_size=info["img_size"],
                   in_chans=info["in_chans"], rngs=rngs or nnx.Rngs(0),
                   **{**info["overrides"], **call_overrides})
    graphdef, stored, rest = nnx.split(model, (nnx.Param, nnx.BatchStat), ...)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), stored)
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(directory / STATE_DIR, target)
    return nnx.merge(graphdef, restored, rest), info

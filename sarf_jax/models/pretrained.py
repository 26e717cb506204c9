"""A model directory: which registered variant it is (model.json) plus its weights (Orbax).

Written by the converter (official checkpoints) and readable by eval and by training (as an
initialisation), so a model can be rebuilt from the directory alone:

    DIR/model.json   {"name", "num_classes", "img_size", "in_chans", "overrides", "source": {...}}
    DIR/state/       orbax StandardCheckpointer of nnx.state(model) (Params and BatchStats)

A training workdir (train.py) has the same model.json beside DIR/checkpoints/<step>/state (the
whole train state); `load_pretrained` reads its params (or EMA params) from the newest step.

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
TRAINING_CHECKPOINTS = "checkpoints"


def save_pretrained(directory, model: nnx.Module, *, name: str, num_classes: int, img_size: int,
                    in_chans: int = 3, overrides: dict | None = None, source: dict | None = None) -> None:
    """Write `model` (built as `create(name, ...)`) to a new `directory`."""
    directory = pathlib.Path(directory).absolute()
    if directory.exists():
        raise ValueError(f"save_pretrained: {directory} already exists; choose a new directory")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        write_model_info(staging, name=name, num_classes=num_classes, img_size=img_size, in_chans=in_chans,
                         overrides=overrides, source=source)
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(staging / STATE_DIR, nnx.state(model, (nnx.Param, nnx.BatchStat)))
            checkpointer.wait_until_finished()
        os.rename(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_model_info(directory, *, name: str, num_classes: int, img_size: int, in_chans: int = 3,
                     overrides: dict | None = None, source: dict | None = None) -> None:
    """DIR/model.json: how to rebuild the model with `create` (also written by training)."""
    info = {"name": name, "num_classes": num_classes, "img_size": img_size, "in_chans": in_chans,
            "overrides": overrides or {}, "source": source or {}}
    (pathlib.Path(directory) / MODEL_FILE).write_text(json.dumps(info, indent=2) + "\n")


def load_pretrained(directory, *, rngs: nnx.Rngs | None = None, step: int | None = None,
                    weights: str = "params", with_info: bool = False, **call_overrides):
    """The model in a directory written by save_pretrained, or in a training workdir.

    Returns the model, or `(model, info)` (info: the directory's model.json) with `with_info=True`.

    For a training workdir, `step` picks the checkpoint (default: the newest) and
    `weights="ema"` loads the EMA weights instead of the trained ones.
    `call_overrides` change constructor arguments that do not affect the weights' shapes
    (e.g. `scan_impl`, `dtype`, `drop_path_rate`).
    """
    directory = pathlib.Path(directory).absolute()
    model_file = directory / MODEL_FILE
    training = (directory / TRAINING_CHECKPOINTS).is_dir()
    if not model_file.is_file() or not ((directory / STATE_DIR).is_dir() or training):
        raise ValueError(f"load_pretrained: {directory} has no {MODEL_FILE} and {STATE_DIR}/ or "
                         f"{TRAINING_CHECKPOINTS}/ (not written by save_pretrained, sarf_jax.convert or train.py)")
    if weights not in ("params", "ema"):
        raise ValueError(f"load_pretrained: weights must be 'params' or 'ema', got {weights!r}")
    info = json.loads(model_file.read_text())
    model = create(info["name"], num_classes=info["num_classes"], img_size=info["img_size"],
                   in_chans=info["in_chans"], rngs=rngs or nnx.Rngs(0),
                   **{**info["overrides"], **call_overrides})
    if not (directory / STATE_DIR).is_dir():
        model = _load_training_checkpoint(directory, model, step, weights)
        return (model, info) if with_info else model
    graphdef, stored, rest = nnx.split(model, (nnx.Param, nnx.BatchStat), ...)
    target = _local_abstract(stored)
    with ocp.StandardCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(directory / STATE_DIR)
        metadata = getattr(metadata, "item_metadata", metadata)
        _check_fits(getattr(metadata, "tree", metadata), stored, directory)
        restored = checkpointer.restore(directory / STATE_DIR, target)
    model = nnx.merge(graphdef, restored, rest)
    return (model, info) if with_info else model


def _local_abstract(tree):
    """Restore targets on this process's first device: every process of a multi-process run reads
    whole arrays (without a target sharding, Orbax would reuse the saving run's devices)."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), tree)


def _load_training_checkpoint(directory: pathlib.Path, model: nnx.Module, step: int | None, weights: str):
    """`model` with the params / EMA params (and model state) of a train.py checkpoint."""
    graphdef, params, rng_state, model_state = nnx.split(model, nnx.Param, nnx.RngState, ...)
    abstract = _local_abstract
    with ocp.CheckpointManager(directory / TRAINING_CHECKPOINTS, item_handlers={"state": ocp.PyTreeCheckpointHandler()},
                               options=ocp.CheckpointManagerOptions(read_only=True)) as manager:
        step = manager.latest_step() if step is None else step
        if step is None or step not in manager.all_steps():
            raise ValueError(f"load_pretrained: no checkpoint {'' if step is None else step} in "
                             f"{directory / TRAINING_CHECKPOINTS} (steps: {manager.all_steps()})")
        has_ema = "ema" in manager.item_metadata(step).state.tree
        if weights == "ema" and not has_ema:
            raise ValueError(f"load_pretrained: {directory} was trained without EMA (config.ema_decay = 0)")
        _check_fits(manager.item_metadata(step).state.tree[weights], params, directory)
        target = {weights: abstract(params)}
        if jax.tree.leaves(model_state):
            target["model_state"] = abstract(model_state)
        restore_args = ocp.checkpoint_utils.construct_restore_args(target)  # the targets' devices
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(target, restore_args=restore_args, partial_restore=True))).state
    return nnx.merge(graphdef, restored[weights], rng_state, restored.get("model_state", model_state))


def _check_fits(stored_tree, expected_tree, directory) -> None:
    """A clear error when the stored weights are not those of the model that model.json describes."""
    def shapes(tree):
        name = lambda key: str(getattr(key, "key", getattr(key, "idx", getattr(key, "name", key))))
        return {"/".join(map(name, path)): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}

    stored, expected = shapes(stored_tree), shapes(expected_tree)
    if stored == expected:
        return
    missing, extra = sorted(expected.keys() - stored.keys()), sorted(stored.keys() - expected.keys())
    differ = [f"{k}: stored {stored[k]}, expected {expected[k]}" for k in sorted(expected.keys() & stored.keys())
              if stored[k] != expected[k]]
    detail = (differ[:1] or [f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"])[0]
    raise ValueError(f"load_pretrained: the weights in {directory} do not fit the model that its {MODEL_FILE} "
                     f"describes ({len(differ)} shapes differ, {len(missing)} missing, {len(extra)} unexpected; "
                     f"e.g. {detail})")

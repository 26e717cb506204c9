"""The on-disk layouts of model directories and training workdirs, owned here and nowhere else.

    DIR/model.json     {"name", "num_classes", "img_size", "in_chans", "overrides", "source": {...}}
    DIR/state/         a model directory (the converter, save_pretrained): orbax StandardCheckpointer
                       of the model's nnx.Param and nnx.BatchStat
    DIR/config.json    a training workdir (train.py): the resolved training config
    DIR/checkpoints/<step>/state   the whole train state {"step", "params", "model_state",
                                   "opt_state", "ema"} (ema only when trained with EMA)
    DIR/checkpoints/<step>/data    the grain iterator state, one JSON file per host
    DIR/unreadable_checkpoints/    finished checkpoints that could not be read, set aside

This module reads and writes states and model.json; it knows no model. Building a model from a
directory is models.pretrained's job, saving train states (async, preemption) is train.checkpoint's.
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

MODEL_FILE = "model.json"
STATE_DIR = "state"
CONFIG_FILE = "config.json"
TRAINING_CHECKPOINTS = "checkpoints"
TRAIN_STATE_ITEM = "state"
DATA_ITEM = "data"
UNREADABLE_CHECKPOINTS = "unreadable_checkpoints"


def is_model_directory(directory) -> bool:
    """True for a model directory (one set of weights in DIR/state/), False for a training workdir."""
    return (pathlib.Path(directory) / STATE_DIR).is_dir()


def write_model_info(
    directory,
    *,
    name: str,
    num_classes: int,
    img_size: int,
    in_chans: int = 3,
    overrides: dict | None = None,
    source: dict | None = None,
) -> None:
    """DIR/model.json: how to rebuild the model with `models.create` (also written by training)."""
    info = {
        "name": name,
        "num_classes": num_classes,
        "img_size": img_size,
        "in_chans": in_chans,
        "overrides": overrides or {},
        "source": source or {},
    }
    (pathlib.Path(directory) / MODEL_FILE).write_text(json.dumps(info, indent=2) + "\n")


def read_model_info(directory) -> tuple[pathlib.Path, dict]:
    """(absolute directory, its model.json) after checking that it holds a model."""
    directory = pathlib.Path(directory).absolute()
    model_file = directory / MODEL_FILE
    training = (directory / TRAINING_CHECKPOINTS).is_dir()
    if not model_file.is_file() or not (is_model_directory(directory) or training):
        raise ValueError(
            f"load_pretrained: {directory} has no {MODEL_FILE} and {STATE_DIR}/ or "
            f"{TRAINING_CHECKPOINTS}/ (not written by save_pretrained, sarf_jax.convert or train.py)"
        )
    return directory, json.loads(model_file.read_text())


def save_model_directory(directory, state: nnx.State, **info) -> None:
    """Write a new model directory: model.json from `info` (write_model_info's fields) and `state`."""
    directory = pathlib.Path(directory).absolute()
    if directory.exists():
        raise ValueError(f"save_pretrained: {directory} already exists; choose a new directory")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        write_model_info(staging, **info)
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(staging / STATE_DIR, state)
            checkpointer.wait_until_finished()
        os.rename(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def restore_model_directory(directory: pathlib.Path, target: nnx.State) -> nnx.State:
    """DIR/state/ restored as `target` (the Params and BatchStats of the model model.json describes)."""
    target = _abstract(target)
    with ocp.StandardCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(directory / STATE_DIR)
        metadata = getattr(metadata, "item_metadata", metadata)
        check_fits(getattr(metadata, "tree", metadata), target, _not_described(directory))
        return checkpointer.restore(directory / STATE_DIR, target)


def restore_training_weights(
    directory: pathlib.Path, params: nnx.State, model_state: nnx.State, step: int | None, weights: str
) -> nnx.State:
    """The params (weights="params") or EMA params (weights="ema") and the model state of a
    training checkpoint, shaped as `params` and `model_state`; `step` None is the newest."""
    with ocp.CheckpointManager(
        directory / TRAINING_CHECKPOINTS,
        item_handlers={TRAIN_STATE_ITEM: ocp.PyTreeCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(read_only=True),
    ) as manager:
        step = manager.latest_step() if step is None else step
        if step is None or step not in manager.all_steps():
            raise ValueError(
                f"load_pretrained: no checkpoint {'' if step is None else step} in "
                f"{directory / TRAINING_CHECKPOINTS} (steps: {manager.all_steps()})"
            )
        stored = getattr(manager.item_metadata(step), TRAIN_STATE_ITEM).tree
        if weights == "ema" and "ema" not in stored:
            raise ValueError(f"load_pretrained: {directory} was trained without EMA (config.ema_decay = 0)")
        check_fits(stored[weights], params, _not_described(directory))
        target = {weights: _abstract(params)}
        if jax.tree.leaves(model_state):
            target["model_state"] = _abstract(model_state)
        restore = ocp.args.PyTreeRestore(
            target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
        )
        restored = getattr(
            manager.restore(step, args=ocp.args.Composite(**{TRAIN_STATE_ITEM: restore})), TRAIN_STATE_ITEM
        )
    return nnx.merge_state(restored[weights], restored.get("model_state", model_state))


def _abstract(tree):
    """Restore targets on this process's first device (the saved sharding may name other devices)."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), tree)


def _not_described(directory) -> str:
    return f"the weights in {directory} do not fit the model that its {MODEL_FILE} describes"


def check_fits(stored_tree, expected_tree, mismatch: str) -> None:
    """A clear error (`mismatch`, then counts and an example) when the shapes of two trees differ."""

    def shapes(tree):
        name = lambda key: str(getattr(key, "key", getattr(key, "idx", getattr(key, "name", key))))
        return {
            "/".join(map(name, path)).removesuffix("/value"): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
        }

    stored, expected = shapes(stored_tree), shapes(expected_tree)
    if stored == expected:
        return
    missing, extra = sorted(expected.keys() - stored.keys()), sorted(stored.keys() - expected.keys())
    differ = [
        f"{k}: stored {stored[k]}, expected {expected[k]}"
        for k in sorted(expected.keys() & stored.keys())
        if stored[k] != expected[k]
    ]
    detail = (differ[:1] or [f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"])[0]
    raise ValueError(
        f"load_pretrained: {mismatch} ({len(differ)} shapes differ, {len(missing)} missing, "
        f"{len(extra)} unexpected; e.g. {detail})"
    )

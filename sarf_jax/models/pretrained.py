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

import functools
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


def save_pretrained(
    directory,
    model: nnx.Module,
    *,
    name: str,
    num_classes: int,
    img_size: int,
    in_chans: int = 3,
    overrides: dict | None = None,
    source: dict | None = None,
) -> None:
    """Write `model` (built as `create(name, ...)`) to a new `directory`."""
    directory = pathlib.Path(directory).absolute()
    if directory.exists():
        raise ValueError(f"save_pretrained: {directory} already exists; choose a new directory")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        write_model_info(
            staging,
            name=name,
            num_classes=num_classes,
            img_size=img_size,
            in_chans=in_chans,
            overrides=overrides,
            source=source,
        )
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(staging / STATE_DIR, nnx.state(model, (nnx.Param, nnx.BatchStat)))
            checkpointer.wait_until_finished()
        os.rename(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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
    """DIR/model.json: how to rebuild the model with `create` (also written by training)."""
    info = {
        "name": name,
        "num_classes": num_classes,
        "img_size": img_size,
        "in_chans": in_chans,
        "overrides": overrides or {},
        "source": source or {},
    }
    (pathlib.Path(directory) / MODEL_FILE).write_text(json.dumps(info, indent=2) + "\n")


def load_pretrained(
    directory,
    *,
    rngs: nnx.Rngs | None = None,
    step: int | None = None,
    weights: str = "params",
    with_info: bool = False,
    img_size: int | None = None,
    **call_overrides,
):
    """The model in a directory written by save_pretrained, or in a training workdir.

    Returns the model, or `(model, info)` (info: the directory's model.json) with `with_info=True`.

    For a training workdir, `step` picks the checkpoint (default: the newest) and
    `weights="ema"` loads the EMA weights instead of the trained ones.
    `img_size` (default: model.json's) builds the model for another input size; position
    embeddings are resized to its patch grid (each family's `resize_pos_embed`).
    `call_overrides` change constructor arguments that do not affect the weights' shapes
    (e.g. `scan_impl`, `dtype`, `drop_path_rate`).
    """
    directory, info = read_model_info(directory)
    model = _load(directory, info, rngs=rngs, step=step, weights=weights, img_size=img_size, overrides=call_overrides)
    return (model, info) if with_info else model


def create_pretrained(
    name: str,
    directory,
    *,
    num_classes: int | None = None,
    img_size: int | None = None,
    in_chans: int | None = None,
    rngs: nnx.Rngs | None = None,
    **overrides,
) -> nnx.Module:
    """`models.create(name, pretrained=directory, ...)`: the model `name` with the weights of `directory`.

    num_classes and in_chans, when given, must be model.json's (the weights fix them); img_size
    may differ (see load_pretrained). A training workdir gives its newest raw weights; use
    load_pretrained for another step or the EMA weights.
    """
    directory, info = read_model_info(directory)
    where = f"create({name!r}, pretrained={str(directory)!r})"
    if name != info["name"]:
        raise ValueError(
            f"{where}: the directory holds a {info['name']!r} model (its {MODEL_FILE}), "
            f"not {name!r}; ask for {info['name']!r}"
        )
    for field, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if value is not None and value != info[field]:
            raise ValueError(
                f"{where}: {field}={value!r} differs from the {info[field]} of its {MODEL_FILE}; "
                f"its weights fit only {field}={info[field]} (leave {field} out)"
            )
    return _load(directory, info, rngs=rngs, step=None, weights="params", img_size=img_size, overrides=overrides)


def read_model_info(directory) -> tuple[pathlib.Path, dict]:
    """(absolute directory, its model.json) after checking that it holds a model."""
    directory = pathlib.Path(directory).absolute()
    model_file = directory / MODEL_FILE
    training = (directory / TRAINING_CHECKPOINTS).is_dir()
    if not model_file.is_file() or not ((directory / STATE_DIR).is_dir() or training):
        raise ValueError(
            f"load_pretrained: {directory} has no {MODEL_FILE} and {STATE_DIR}/ or "
            f"{TRAINING_CHECKPOINTS}/ (not written by save_pretrained, sarf_jax.convert or train.py)"
        )
    return directory, json.loads(model_file.read_text())


def _load(directory: pathlib.Path, info: dict, *, rngs, step, weights: str, img_size, overrides: dict):
    """Restore the weights at the stored size, fit them to the requested model, merge."""
    if weights not in ("params", "ema"):
        raise ValueError(f"load_pretrained: weights must be 'params' or 'ema', got {weights!r}")
    if weights == "ema" and (directory / STATE_DIR).is_dir():
        raise ValueError(
            f"load_pretrained: {directory} is a model directory, which holds one set of weights, "
            "without EMA (convert an official checkpoint's EMA weights with --ema); use weights='params'"
        )
    build = functools.partial(create, info["name"], num_classes=info["num_classes"], in_chans=info["in_chans"])
    img_size = info["img_size"] if img_size is None else img_size
    model = build(img_size=img_size, rngs=rngs or nnx.Rngs(0), **{**info["overrides"], **overrides})
    stored_model = (
        model
        if img_size == info["img_size"] and not overrides
        else nnx.eval_shape(lambda: build(img_size=info["img_size"], rngs=nnx.Rngs(0), **info["overrides"]))
    )
    if (directory / STATE_DIR).is_dir():
        kept, restored = (nnx.Param, nnx.BatchStat), _restore_model_directory(directory, stored_model)
    else:
        kept, restored = nnx.Not(nnx.RngState), _restore_training_checkpoint(directory, stored_model, step, weights)
    resize = getattr(model, "resize_pos_embed", None)
    if resize is not None:
        restored = resize(restored, stored_model.grid)
    graphdef, expected, rest = nnx.split(model, kept, ...)
    _check_fits(
        restored,
        expected,
        f"the weights in {directory} do not fit the requested model (img_size {img_size}, overrides {overrides})",
    )
    return nnx.merge(graphdef, restored, rest)


def _restore_model_directory(directory: pathlib.Path, stored_model: nnx.Module) -> nnx.State:
    """DIR/state/ as the Params and BatchStats of `stored_model` (the model model.json describes)."""
    target = _abstract(nnx.state(stored_model, (nnx.Param, nnx.BatchStat)))
    with ocp.StandardCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(directory / STATE_DIR)
        metadata = getattr(metadata, "item_metadata", metadata)
        _check_fits(getattr(metadata, "tree", metadata), target, _not_described(directory))
        return checkpointer.restore(directory / STATE_DIR, target)


def _restore_training_checkpoint(
    directory: pathlib.Path, stored_model: nnx.Module, step: int | None, weights: str
) -> nnx.State:
    """The params / EMA params and the model state (BatchStats) of a train.py checkpoint."""
    _, params, _, model_state = nnx.split(stored_model, nnx.Param, nnx.RngState, ...)
    with ocp.CheckpointManager(
        directory / TRAINING_CHECKPOINTS,
        item_handlers={"state": ocp.PyTreeCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(read_only=True),
    ) as manager:
        step = manager.latest_step() if step is None else step
        if step is None or step not in manager.all_steps():
            raise ValueError(
                f"load_pretrained: no checkpoint {'' if step is None else step} in "
                f"{directory / TRAINING_CHECKPOINTS} (steps: {manager.all_steps()})"
            )
        has_ema = "ema" in manager.item_metadata(step).state.tree
        if weights == "ema" and not has_ema:
            raise ValueError(f"load_pretrained: {directory} was trained without EMA (config.ema_decay = 0)")
        _check_fits(manager.item_metadata(step).state.tree[weights], params, _not_described(directory))
        target = {weights: _abstract(params)}
        if jax.tree.leaves(model_state):
            target["model_state"] = _abstract(model_state)
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
                )
            ),
        ).state
    return nnx.merge_state(restored[weights], restored.get("model_state", model_state))


def _abstract(tree):
    """Restore targets on this process's first device (the saved sharding may name other devices)."""
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), tree)


def _not_described(directory) -> str:
    return f"the weights in {directory} do not fit the model that its {MODEL_FILE} describes"


def _check_fits(stored_tree, expected_tree, mismatch: str) -> None:
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

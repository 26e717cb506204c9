"""Models from and to model directories and training workdirs (layouts: sarf_jax.checkpoints).

A model directory (written by the converter or `save_pretrained`) and a training workdir
(train.py) both hold a model.json naming the registered variant, so the model can be rebuilt
from the directory alone; `load_pretrained` builds it and restores the weights (for a workdir:
the params or EMA params of a checkpoint, the newest by default).
"""

from __future__ import annotations

import functools
import pathlib

from flax import nnx

from sarf_jax import checkpoints
from sarf_jax.checkpoints import MODEL_FILE, read_model_info, write_model_info
from sarf_jax.models.registry import create

__all__ = ["create_pretrained", "load_pretrained", "read_model_info", "save_pretrained", "write_model_info"]


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
    checkpoints.save_model_directory(
        directory,
        nnx.state(model, (nnx.Param, nnx.BatchStat)),
        name=name,
        num_classes=num_classes,
        img_size=img_size,
        in_chans=in_chans,
        overrides=overrides,
        source=source,
    )


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


def _load(directory: pathlib.Path, info: dict, *, rngs, step, weights: str, img_size, overrides: dict):
    """Restore the weights at the stored size, fit them to the requested model, merge."""
    if weights not in ("params", "ema"):
        raise ValueError(f"load_pretrained: weights must be 'params' or 'ema', got {weights!r}")
    if weights == "ema" and checkpoints.is_model_directory(directory):
        raise ValueError(
            f"load_pretrained: {directory} is a model directory, which holds one set of weights, "
            "without EMA (convert an official checkpoint's EMA weights with --ema); use weights='params'"
        )
    build = functools.partial(create, info["name"], num_classes=info["num_classes"], in_chans=info["in_chans"])
    img_size = info["img_size"] if img_size is None else img_size
    build_requested = functools.partial(build, img_size=img_size, **{**info["overrides"], **overrides})
    rngs = nnx.Rngs(0) if rngs is None else rngs
    streams = list(nnx.state(rngs))  # the same stream names: a module's stream tag is in the graphdef
    model = nnx.eval_shape(lambda: build_requested(rngs=nnx.Rngs(**dict.fromkeys(streams, 0))))
    stored_model = (
        model
        if img_size == info["img_size"] and not overrides
        else nnx.eval_shape(lambda: build(img_size=info["img_size"], rngs=nnx.Rngs(0), **info["overrides"]))
    )
    if checkpoints.is_model_directory(directory):
        kept = nnx.Any(nnx.Param, nnx.BatchStat)
        restored = checkpoints.restore_model_directory(directory, nnx.state(stored_model, kept))
    else:
        kept = nnx.Not(nnx.RngState)
        _, params, _, model_state = nnx.split(stored_model, nnx.Param, nnx.RngState, ...)
        restored = checkpoints.restore_training_weights(directory, params, model_state, step, weights)
    resize = getattr(model, "resize_pos_embed", None)
    if resize is not None:
        restored = resize(restored, stored_model.grid)
    checkpoints.check_fits(
        restored,
        nnx.state(model, kept),
        f"the weights in {directory} do not fit the requested model (img_size {img_size}, overrides {overrides})",
    )
    return nnx.merge(nnx.graphdef(model), restored, _initial_state(build_requested, rngs, nnx.Not(kept)))


def _initial_state(build, rngs: nnx.Rngs, which) -> nnx.State:
    """The state `which` (RNG streams, ...) of `build(rngs=rngs)`, as building it would leave it
    (rngs advances alike), computed without initialising the weights that the checkpoint replaces.

    Built eagerly, each weight's initialiser compiles once per shape: seconds for a small model. Under
    jit the unused initialisers are dead code, so only the RNG splits are computed."""
    return nnx.jit(lambda rngs: nnx.state(build(rngs=rngs), which))(rngs)

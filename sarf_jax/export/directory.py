"""A training workdir or model directory -> a serving artifact (`export_directory`).

The selective scans are lowered with the `chunked` XLA implementation whatever the host:
`scan_impl="auto"` would pick the Pallas GPU kernel on a GPU host, which lowers for CUDA only and
not with a symbolic batch, while `chunked` lowers for every platform (CPU, CUDA, TPU) and computes
the same function (see sarf_jax.ops.selective_scan). On a CPU host every backbone (Vim, VMamba,
PlainMamba, ViT) lowers this way for all three platforms, dense and under every reduction method.
The price: on a GPU the artifact's scans run slower than the Pallas kernel would.
"""

from __future__ import annotations

import json
import pathlib

import jax
from flax import nnx

from sarf_jax import checkpoints, models
from sarf_jax import reduction as reduction_lib
from sarf_jax.checkpoints import MODEL_FILE
from sarf_jax.export import artifact, serving, stats
from sarf_jax.models.pretrained import load_pretrained

SCAN_FAMILIES = ("vim", "vmamba", "plainmamba")  # the backbones with selective scans (a scan_impl argument)
PORTABLE_SCAN = "chunked"


def export_directory(
    directory,
    out,
    *,
    reduction: str = "none",
    batch: int | None = None,
    weights: str = "params",
    mean=None,
    std=None,
    raw_input: bool = False,
) -> dict:
    """Export the model in `directory` to `out` and out.json; returns the metadata written.

    reduction: spec text (sarf_jax.reduction.parse_spec), checked against the model first.
    batch: a fixed batch size, or None for a symbolic one (any batch >= 1).
    weights: "params" or "ema" (training workdirs only).
    mean, std: per-channel, in [0, 1] units; default the training run's (DIR/config.json), if any.
      With stats the artifact takes [0, 255] pixels; without (or raw_input) the model's raw input.
    Everything is checked and lowered before anything is written; on failure nothing is.
    """
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch: expected a positive int or None (symbolic), got {batch!r}")
    artifact.check_destination(out)
    directory = pathlib.Path(directory)
    if not (directory / MODEL_FILE).is_file():
        raise ValueError(
            f"{directory} has no {MODEL_FILE}: not a training workdir (train.py) or a model "
            "directory (sarf_jax.convert, save_pretrained)"
        )
    if weights == "ema" and checkpoints.is_model_directory(directory):
        raise ValueError(
            f"weights='ema': {directory} is a model directory with one set of weights "
            "(sarf_jax.convert --ema picks the EMA weights when converting)"
        )
    info = json.loads((directory / MODEL_FILE).read_text())
    spec = checked_reduction(info, reduction)
    normalization = stats.input_stats(directory, mean=mean, std=std, raw_input=raw_input, in_chans=info["in_chans"])
    mean, std = normalization or (None, None)
    model, info = load_pretrained(directory, weights=weights, with_info=True, **_portable_scan(info))
    exported = serving.export_model(
        model, img_size=info["img_size"], in_chans=info["in_chans"], reduction=spec, batch=batch, mean=mean, std=std
    )
    metadata = {
        "model": info["name"],
        "num_classes": info["num_classes"],
        "img_size": info["img_size"],
        "in_chans": info["in_chans"],
        "overrides": info["overrides"],
        "reduction": reduction_lib.spec_label(spec),
        "weights": weights,
        "batch": batch,
        "input": artifact.PIXELS if normalization else artifact.NORMALIZED,
        "mean": None if mean is None else list(mean),
        "std": None if std is None else list(std),
        "platforms": list(exported.platforms),
        "scan_impl": _portable_scan(info).get("scan_impl"),
        "source": str(directory.absolute()),
        "jax_version": jax.__version__,
    }
    return artifact.save(out, exported, metadata)


def checked_reduction(info: dict, text: str):
    """The parsed spec, once the model that model.json describes has accepted it (its reduction
    sites); on a shape-only model, so that a bad spec fails before any weights are read."""
    spec = reduction_lib.parse_spec(text)
    abstract = nnx.eval_shape(
        lambda: models.create(
            info["name"],
            num_classes=info["num_classes"],
            img_size=info["img_size"],
            in_chans=info["in_chans"],
            rngs=nnx.Rngs(0),
            **info["overrides"],
        )
    )
    abstract.reduction_sites(spec)  # raises when the spec does not fit the model's depths and grids
    return spec


def _portable_scan(info: dict) -> dict:
    """{"scan_impl": "chunked"} for a model with selective scans, else {}."""
    return {"scan_impl": PORTABLE_SCAN} if info["name"].split("_")[0] in SCAN_FAMILIES else {}

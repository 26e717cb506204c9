"""The per-channel mean / std a training run normalised its images with (train.py, `normalize`).

train.py does not store them: they belong to the data source named in DIR/config.json, which is
opened here (its training split) exactly as training opened it.
"""

from __future__ import annotations

import json
import math
import pathlib

import ml_collections

from sarf_jax.checkpoints import CONFIG_FILE
from sarf_jax.data import make_source


def training_stats(directory) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) of the run in `directory`, or None when it has no config.json (a converted model)."""
    config_file = pathlib.Path(directory) / CONFIG_FILE
    if not config_file.is_file():
        return None
    data = ml_collections.ConfigDict(json.loads(config_file.read_text())["data"])
    try:
        source = make_source(data, data.get("train_split", "train"))
    except ValueError as error:
        raise ValueError(
            f"cannot open the training data named in {config_file} to read its mean/std "
            f"({error}); give them (--mean, --std) or export the raw input (--raw_input)"
        ) from None
    return tuple(map(float, source.mean)), tuple(map(float, source.std))


def check_stats(mean, std, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Both given, one finite value per channel (in [0, 1] units), std > 0."""
    if (mean is None) != (std is None):
        raise ValueError(f"mean and std go together: got mean={mean}, std={std}")
    mean, std = tuple(map(float, mean)), tuple(map(float, std))
    for name, values in (("mean", mean), ("std", std)):
        if len(values) != in_chans or not all(map(math.isfinite, values)):
            raise ValueError(f"{name}: expected {in_chans} finite values (one per input channel), got {list(values)}")
    if min(std) <= 0:
        raise ValueError(f"std: every value must be > 0, got {list(std)}")
    return mean, std


def input_stats(directory, *, mean=None, std=None, raw_input: bool = False, in_chans: int):
    """The (mean, std) an artifact should normalise with, or None for the model's raw input.

    Given ones win; else the training run's (None for a model directory without config.json).
    """
    if raw_input:
        if mean is not None or std is not None:
            raise ValueError("raw_input exports the model's own (already normalised) input: give no mean/std")
        return None
    if mean is None and std is None:
        stats = training_stats(directory)
        if stats is None:
            return None
        mean, std = stats
    return check_stats(mean, std, in_chans)

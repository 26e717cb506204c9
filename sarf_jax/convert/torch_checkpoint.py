"""Read an official PyTorch checkpoint without executing anything stored in it.

`torch.load(weights_only=True)` only rebuilds tensors and plain containers. The official files
also hold a few non-tensor entries: Vim's DeiT-style `args` (argparse.Namespace, allow-listed
here) and VMamba's yacs `config` / mmcv's `meta` config objects. Those config objects cannot be
rebuilt by weights_only (they are dict subclasses), so a second pass unpickles with a restricted
unpickler: torch's own weights_only allow-list, plus the known config classes replaced by an inert
placeholder (their contents are skipped). Anything else is refused with the name of the class.
"""

from __future__ import annotations

import argparse
import pickle
from collections.abc import Mapping

import numpy as np

# Config objects the official checkpoints carry; read as an inert placeholder, never imported.
SKIPPED_CLASSES = {
    ("yacs.config", "CfgNode"),
    ("mmcv.utils.config", "ConfigDict"),
    ("mmcv.utils.config", "Config"),
    ("mmengine.config.config", "ConfigDict"),
    ("mmengine.config.config", "Config"),
}
STATE_DICT_ENTRIES = ("model", "state_dict")  # DeiT-style / Vim / VMamba, and mmcv
EMA_ENTRIES = ("model_ema", "state_dict_ema", "ema_state_dict")


class SkippedObject(dict):
    """Stands in for a skipped config object: accepts whatever the pickle stream gives, runs nothing."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def __setstate__(self, state):
        pass


def _restricted_pickle_module():
    import torch._weights_only_unpickler as weights_only

    allowed = weights_only._get_allowed_globals()  # torch's own weights_only allow-list

    class RestrictedUnpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if f"{module}.{name}" in allowed:
                return allowed[f"{module}.{name}"]
            if (module, name) == ("argparse", "Namespace"):
                return argparse.Namespace
            if (module, name) in SKIPPED_CLASSES:
                return SkippedObject
            raise pickle.UnpicklingError(
                f"checkpoint holds an object of class {module}.{name}, which is neither a tensor "
                "nor a known config entry; refusing to load it (loading never executes code from "
                "the file)"
            )

    class RestrictedPickle:
        Unpickler = RestrictedUnpickler
        load = pickle.load
        __name__ = "restricted_pickle"

    return RestrictedPickle


def read_checkpoint(path: str) -> Mapping:
    """The checkpoint's top-level object, tensors on CPU, nothing from it executed."""
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            "reading an official PyTorch checkpoint needs torch: pip install 'sarf_jax[convert]' (or any torch >= 2.5)"
        ) from error

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # a config object weights_only cannot rebuild: try the restricted unpickler
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle_module())
    except pickle.UnpicklingError as error:
        raise ValueError(f"{path}: {error}") from None


def select_state_dict(checkpoint: Mapping, *, ema: bool, source: str = "checkpoint") -> dict[str, np.ndarray]:
    """The model (or EMA) weights of an official checkpoint, as float NumPy arrays by official key."""
    entries = EMA_ENTRIES if ema else STATE_DICT_ENTRIES
    found = next((checkpoint[k] for k in entries if isinstance(checkpoint.get(k), Mapping)), None)
    if found is None:
        if not ema and checkpoint and all(hasattr(v, "shape") for v in checkpoint.values()):
            found = checkpoint  # a bare state dict
        else:
            raise ValueError(
                f"{source}: no {'EMA ' if ema else ''}weights found; looked for entries {list(entries)}, "
                f"the file has {sorted(checkpoint)}"
            )
    return {
        key: value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        for key, value in found.items()
    }

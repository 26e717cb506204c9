"""Copy a PyTorch state dict into an NNX module whose attribute tree mirrors the official one.

Our modules keep the official attribute names (`layers.0.mixer.in_proj`, ...), so the official
key of every parameter follows from its path and the type of module that holds it:

    module type                  ours -> official leaf        layout change
    nnx.Linear                   kernel -> weight, bias       weight (out, in) -> (in, out)
    nnx.Conv                     kernel -> weight, bias       (O, I/g, *k) -> (*k, I/g, O)
    CausalDepthwiseConv1d        kernel -> weight, bias       (C, 1, K) -> (K, 1, C)
    DepthwiseConv2d              kernel -> weight, bias       as nnx.Conv
    nnx.LayerNorm / nnx.RMSNorm  scale -> weight, bias        -
    nnx.BatchNorm                scale -> weight, bias,       -
                                 mean -> running_mean, var -> running_var
    any other Param / BatchStat  same name                    - (must match exactly)

Family-specific differences (prefixes, renamed blocks) are handled by renaming the official keys
first; keys listed in `ignore` (e.g. BatchNorm's num_batches_tracked) are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from sarf_jax.nn.conv import CausalDepthwiseConv1d, DepthwiseConv2d

# (module type, our leaf) -> (official leaf, transpose from official to ours or None)
_LEAVES = {
    (nnx.Linear, "kernel"): ("weight", lambda w: w.T),
    (nnx.Conv, "kernel"): ("weight", lambda w: np.moveaxis(w, (0, 1), (-1, -2))),
    (CausalDepthwiseConv1d, "kernel"): ("weight", lambda w: w.transpose(2, 1, 0)),
    (DepthwiseConv2d, "kernel"): ("weight", lambda w: np.moveaxis(w, (0, 1), (-1, -2))),
    (nnx.LayerNorm, "scale"): ("weight", None),
    (nnx.RMSNorm, "scale"): ("weight", None),
    (nnx.BatchNorm, "scale"): ("weight", None),
    (nnx.BatchNorm, "mean"): ("running_mean", None),
    (nnx.BatchNorm, "var"): ("running_var", None),
}

DEFAULT_IGNORE = (r".*num_batches_tracked$",)


def official_names(model: nnx.Module) -> dict[str, tuple[nnx.Variable, Callable | None]]:
    """Official key -> (our variable, layout change) for every Param and BatchStat of `model`."""
    names = {}
    for path, node in nnx.iter_graph(model):
        if not isinstance(node, nnx.Module):
            continue
        for leaf, variable in vars(node).items():
            if not isinstance(variable, (nnx.Param, nnx.BatchStat)):
                continue
            official_leaf, layout = leaf, None
            for module_type, our_leaf in _LEAVES:
                if isinstance(node, module_type) and our_leaf == leaf:
                    official_leaf, layout = _LEAVES[module_type, our_leaf]
                    break
            names[".".join([*map(str, path), official_leaf])] = (variable, layout)
    return names


def load_state_dict(
    model: nnx.Module,
    state_dict: Mapping[str, np.ndarray],
    *,
    rename: Callable[[str], str | None] | None = None,
    ignore: Iterable[str] = DEFAULT_IGNORE,
    what: str = "state dict",
) -> None:
    """Copy every tensor of `state_dict` into `model`, all or nothing.

    `rename(official_key)` returns our key (or None to drop it); keys matching a regex in
    `ignore` are dropped. Raises ValueError listing missing and unexpected keys, or naming the
    first key whose shape does not fit (with both shapes); nothing is written in that case.
    """
    ignore = [re.compile(pattern) for pattern in ignore]
    given = {}
    for key, value in state_dict.items():
        if any(pattern.fullmatch(key) for pattern in ignore):
            continue
        new_key = rename(key) if rename else key
        if new_key is not None:
            given[new_key] = (key, value)
    expected = official_names(model)
    missing, unexpected = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
    if missing or unexpected:
        shown = lambda keys: f"{len(keys)} keys {keys[:20]}{' ...' if len(keys) > 20 else ''}"
        raise ValueError(
            f"{what} does not fit the model: missing {shown(missing)}, "
            f"unexpected {shown([given[k][0] for k in unexpected])}"
        )
    converted = []
    for key, (variable, layout) in expected.items():
        source_key, value = given[key]
        value = np.asarray(value, np.float32)
        if layout is not None:
            value = layout(value)
        if value.shape != variable.shape:
            raise ValueError(
                f"{what}: {source_key} has shape {tuple(np.shape(given[key][1]))}, which maps to "
                f"{value.shape}, but the model's {key} has shape {tuple(variable.shape)}"
            )
        converted.append((variable, value))
    for variable, value in converted:  # only once everything fits
        variable[...] = jnp.asarray(value, variable.dtype)

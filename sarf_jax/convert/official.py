"""`from_official(family, constructor_kwargs, state_dict)`: an official model, rebuilt here.

Each family module in this package provides
  build(constructor_kwargs, rngs) -> model      our model for the official constructor's kwargs
  rename(official_key) -> our key or None       key differences left after the generic mapping
  HEAD_WEIGHT                                   the classifier's weight, as rename returns its key
and is listed in FAMILIES.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flax import nnx

from sarf_jax.convert import plainmamba, vim, vmamba
from sarf_jax.convert.state_dict import load_state_dict

FAMILIES = {  # family name -> module with build() and rename()
    "plainmamba": plainmamba,
    "vim": vim,
    "vmamba": vmamba,
}


def from_official(
    family: str, constructor_kwargs: Mapping, state_dict: Mapping[str, np.ndarray], *, rngs: nnx.Rngs | None = None
) -> nnx.Module:
    """Our model equivalent to `OfficialClass(**constructor_kwargs)` loaded with `state_dict`.

    The returned model takes NHWC images. `num_classes` defaults to the rows of the state dict's
    classifier head. Raises ValueError for an unknown family, for constructor arguments we do not
    support, for a num_classes the head contradicts, and for any key or shape that does not fit.
    """
    adapter = _adapter(family)
    kwargs = dict(constructor_kwargs)
    classes = head_classes(family, state_dict)
    if classes is not None:
        given = kwargs.setdefault("num_classes", classes)
        if given != classes:
            raise ValueError(
                f"from_official: constructor_kwargs num_classes={given!r}, but the {family} state "
                f"dict's head ({adapter.HEAD_WEIGHT}) has {classes} rows; leave num_classes out "
                f"to take it from the head"
            )
    model = adapter.build(kwargs, rngs or nnx.Rngs(0))
    load_state_dict(model, state_dict, rename=adapter.rename, what=f"{family} state dict")
    return model


def head_classes(family: str, state_dict: Mapping[str, np.ndarray]) -> int | None:
    """The number of classes of an official state dict: the rows of its classifier head's weight
    (None when it has none)."""
    adapter = _adapter(family)
    rows = [np.shape(value)[0] for key, value in state_dict.items() if adapter.rename(key) == adapter.HEAD_WEIGHT]
    return int(rows[0]) if rows else None


def _adapter(family: str):
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; valid families: {sorted(FAMILIES)}")
    return FAMILIES[family]

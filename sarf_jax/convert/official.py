"""`from_official(family, constructor_kwargs, state_dict)`: an official model, rebuilt here.

Each family module in this package provides
  build(constructor_kwargs, rngs) -> model      our model for the official constructor's kwargs
  rename(official_key) -> our key or None       key differences left after the generic mapping
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


def from_official(family: str, constructor_kwargs: Mapping, state_dict: Mapping[str, np.ndarray],
                  *, rngs: nnx.Rngs | None = None) -> nnx.Module:
    """Our model equivalent to `OfficialClass(**constructor_kwargs)` loaded with `state_dict`.

    The returned model takes NHWC images. Raises ValueError for an unknown family, for
    constructor arguments we do not support, and for any key or shape that does not fit.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; valid families: {sorted(FAMILIES)}")
    adapter = FAMILIES[family]
    model = adapter.build(dict(constructor_kwargs), rngs or nnx.Rngs(0))
    load_state_dict(model, state_dict, rename=adapter.rename, what=f"{family} state dict")
    return model

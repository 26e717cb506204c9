"""Official PyTorch checkpoints -> sarf_jax models."""

from sarf_jax.convert.official import FAMILIES, from_official
from sarf_jax.convert.state_dict import load_state_dict, official_names

__all__ = ["FAMILIES", "from_official", "load_state_dict", "official_names"]

"""Flax NNX layers."""

from sarf_jax.nn.mamba import Mamba, load_official_weights

__all__ = ["Mamba", "load_official_weights"]

"""Flax NNX layers."""

from sarf_jax.nn.common import DropPath, Mlp
from sarf_jax.nn.conv import CausalDepthwiseConv1d
from sarf_jax.nn.mamba import Mamba

__all__ = ["CausalDepthwiseConv1d", "DropPath", "Mamba", "Mlp"]

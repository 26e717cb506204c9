"""Flax NNX layers."""

from sarf_jax.nn import scan_orders
from sarf_jax.nn.common import DropPath, Mlp
from sarf_jax.nn.conv import CausalDepthwiseConv1d, DepthwiseConv2d
from sarf_jax.nn.mamba import Mamba
from sarf_jax.nn.norm import LayerNorm
from sarf_jax.nn.plainmamba2d import PlainMamba2D
from sarf_jax.nn.ss2d import SS2D
from sarf_jax.nn.ssm_config import SSMConfig

__all__ = [
    "CausalDepthwiseConv1d",
    "DepthwiseConv2d",
    "DropPath",
    "LayerNorm",
    "Mamba",
    "Mlp",
    "PlainMamba2D",
    "SS2D",
    "SSMConfig",
    "scan_orders",
]

"""sarf_jax: spatial-aware token reduction for visual state-space models, in JAX / Flax NNX."""

from sarf_jax import nn, ops

__version__ = "0.1.0"
__all__ = ["nn", "ops", "__version__"]

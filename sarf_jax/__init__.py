"""sarf_jax: spatial-aware token reduction for visual state-space models, in JAX / Flax NNX."""

from sarf_jax import convert, models, nn, ops, reduction

__version__ = "0.1.0"
__all__ = ["convert", "models", "nn", "ops", "reduction", "__version__"]

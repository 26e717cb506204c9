"""Initialisers that reproduce PyTorch's defaults, so freshly built models match the official ones."""

import math

import jax
import jax.numpy as jnp


def uniform(bound: float):
    """U(-bound, bound)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_default(fan_in: int):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's Linear and Conv default for weights and biases."""
    return uniform(1.0 / math.sqrt(fan_in))

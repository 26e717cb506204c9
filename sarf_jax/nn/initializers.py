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


def trunc_normal(std: float, bound: float = 2.0):
    """N(0, std²) truncated to [-bound, bound] in absolute units: timm's trunc_normal_(std=std),
    whose default bounds ±2 are absolute (so at std 0.02 it is a plain normal in practice)."""

    def init(key, shape, dtype=jnp.float32):
        return std * jax.random.truncated_normal(key, -bound / std, bound / std, shape, dtype)

    return init

"""Small layers every backbone uses: GELU, the transformer MLP and stochastic depth."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sarf_jax.nn.initializers import torch_default

_SQRT_HALF = 0.7071067811865476


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU in PyTorch's formula, x · ½ · (1 + erf(x / √2)), as torch's nn.GELU computes it.

    Not `jax.nn.gelu(approximate=False)`, which uses erfc for accuracy far in the negative tail
    (where GELU is < 1e-6 anyway): XLA's erfc is two polynomials and a select, ~3x the time of
    erf on the CPU (1.14 vs 0.36 ns per element in cache), and the MLPs of VMamba-T at 224 px apply
    GELU to ~10M values per image (benchmarks/RESULTS.md).
    """
    return x * 0.5 * (1.0 + jax.lax.erf(x * _SQRT_HALF))


class Mlp(nnx.Module):
    """fc1 -> GELU (exact erf, as torch's nn.GELU) -> fc2, on the last axis (timm / VMamba names)."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int | None = None,
        *,
        dtype=None,
        kernel_init=None,
        bias_init=None,
        rngs: nnx.Rngs,
    ):
        """Initialised like torch's Linear unless `kernel_init` / `bias_init` are given."""
        out_features = out_features or in_features

        def linear(fan_in, fan_out):
            return nnx.Linear(
                fan_in,
                fan_out,
                dtype=dtype,
                kernel_init=kernel_init or torch_default(fan_in),
                bias_init=bias_init or torch_default(fan_in),
                rngs=rngs,
            )

        self.fc1 = linear(in_features, hidden_features)
        self.fc2 = linear(hidden_features, out_features)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(gelu(self.fc1(x)))


class DropPath(nnx.Module):
    """Stochastic depth: drop a whole sample's residual branch with probability `rate` in training.

    Draws from the `dropout` stream of the Rngs given at construction; identity when `rate` is 0
    or when called with deterministic=True (evaluation).
    """

    def __init__(self, rate: float, *, rngs: nnx.Rngs | None = None):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"DropPath: rate must be in [0, 1), got {rate}")
        self.rate = rate
        self.rngs = rngs["dropout"].fork() if (rngs is not None and rate > 0) else nnx.data(None)

    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(self.rngs(), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        return jnp.where(mask, x / keep, jnp.zeros_like(x))

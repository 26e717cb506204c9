"""LayerNorm with a hand-written backward pass: the same forward as `nnx.LayerNorm` with
`use_fast_variance=False` (torch's two-pass variance), and the closed-form gradient.

Why: differentiating flax's LayerNorm lets JAX transpose every step of the statistics (mean,
centring, variance, rsqrt, scale). On the 2-core CPU, in vmamba_tiny's forward + backward (224
px, batch 8, benchmarks/profile_cpu.py) the ops charged to the norms took 887 of 3,617 ms per
step; with this backward, 392 of 3,417 ms (benchmarks/RESULTS.md, 2026-11-30; the profiler then
also charged projections fused with a norm to it, so the wall time is the firmer figure). The
closed form needs two row reductions and keeps only the normalised input and 1/std:

    x̂ = (x - mean) / std,   y = x̂ · scale + bias
    dx = (g - mean(g) - x̂ · mean(g · x̂)) / std,   g = dy · scale
    dscale = Σ dy · x̂,   dbias = Σ dy   (sums over every axis but the features)

`LayerNorm` is an `nnx.LayerNorm` (same parameters, names and initialisation, so checkpoints,
converters and sharding rules see no difference) that takes this path when it computes in float32
over the last axis; any other setting (other dtypes, masks, axis names) runs flax's own code.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float) -> jax.Array:
    """LayerNorm over the last axis of a float32 `x`, with (features,) `scale` and `bias`."""
    return _forward(x, scale, bias, epsilon)[0]


def _forward(x, scale, bias, epsilon):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centred = x - mean
    inverse_std = jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + epsilon)
    y = centred * (inverse_std * scale) + bias  # flax's order: (x - mean) * (rsqrt(var + eps) * scale)
    return y, (centred * inverse_std, inverse_std, scale)


def _backward(epsilon, residuals, dy):
    normalised, inverse_std, scale = residuals
    batch_axes = tuple(range(dy.ndim - 1))
    g = dy * scale
    mean_g = jnp.mean(g, axis=-1, keepdims=True)
    mean_g_normalised = jnp.mean(g * normalised, axis=-1, keepdims=True)
    dx = inverse_std * (g - mean_g - normalised * mean_g_normalised)
    return dx, jnp.sum(dy * normalised, axis=batch_axes), jnp.sum(dy, axis=batch_axes)


layer_norm.defvjp(_forward, _backward)


class LayerNorm(nnx.LayerNorm):
    """`nnx.LayerNorm` whose float32, last-axis, affine case differentiates in closed form."""

    def __call__(self, x: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        if mask is not None or not self._closed_form(x):
            return super().__call__(x, mask=mask)
        return layer_norm(x.astype(jnp.float32), self.scale[...], self.bias[...], self.epsilon)

    def _closed_form(self, x: jax.Array) -> bool:
        if self.scale is None or self.bias is None or self.use_fast_variance or self.axis_name is not None:
            return False
        dtype = self.dtype or jnp.result_type(x.dtype, self.scale[...].dtype, self.bias[...].dtype)
        last = lambda axes: (axes,) if isinstance(axes, int) else tuple(axes)
        return dtype == jnp.float32 and {last(self.reduction_axes), last(self.feature_axes)} <= {(-1,), (x.ndim - 1,)}

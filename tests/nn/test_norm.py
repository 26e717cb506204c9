"""nn.LayerNorm: nnx.LayerNorm's parameters and forward, with a closed-form backward that gives
the same gradients; settings it does not cover run flax's own code."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sarf_jax.nn import LayerNorm


def pair(features, **kwargs):
    """(ours, flax's) with the same random scale and bias."""
    ours = LayerNorm(features, rngs=nnx.Rngs(0), **kwargs)
    theirs = nnx.LayerNorm(features, rngs=nnx.Rngs(0), **kwargs)
    rng = np.random.default_rng(features)
    scale, bias = (jnp.asarray(rng.standard_normal(features) + 0.5, jnp.float32) for _ in range(2))
    for layer in (ours, theirs):
        if layer.scale is not None:
            layer.scale[...] = scale
        if layer.bias is not None:
            layer.bias[...] = bias
    return ours, theirs


def value_and_grads(layer, x, cotangent):
    graphdef, state = nnx.split(layer)
    loss = lambda state, x: jnp.vdot(nnx.merge(graphdef, state)(x).astype(jnp.float32), cotangent)
    value = nnx.merge(graphdef, state)(x)
    return value, jax.grad(loss, argnums=(0, 1))(state, x)


@pytest.mark.parametrize(
    "shape, x_dtype", [((4, 5, 7, 24), jnp.float32), ((3, 9, 40), jnp.float32), ((6, 16), jnp.bfloat16)]
)
def test_closed_form_backward_equals_flax_layer_norm(shape, x_dtype):
    ours, theirs = pair(shape[-1], epsilon=1e-5, use_fast_variance=False)
    assert ours._closed_form(jnp.zeros(shape, x_dtype))
    assert jax.tree.structure(nnx.state(ours)) == jax.tree.structure(nnx.state(theirs))
    rng = np.random.default_rng(1)
    x = jnp.asarray(3 * rng.standard_normal(shape) + 2, x_dtype)
    cotangent = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    (y, grads), (y_ref, grads_ref) = value_and_grads(ours, x, cotangent), value_and_grads(theirs, x, cotangent)
    assert y.dtype == y_ref.dtype == jnp.float32
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
        assert a.dtype == b.dtype
        scale = float(jnp.abs(b.astype(jnp.float32)).max())
        np.testing.assert_allclose(a.astype(jnp.float32), b.astype(jnp.float32), rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize(
    "kwargs", [dict(use_fast_variance=True), dict(use_scale=False, use_bias=False), dict(dtype=jnp.bfloat16)]
)
def test_other_settings_run_flax_code_unchanged(kwargs):
    ours, theirs = pair(12, epsilon=1e-6, **kwargs)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((3, 12)), jnp.float32)
    assert not ours._closed_form(x)
    np.testing.assert_array_equal(ours(x), theirs(x))

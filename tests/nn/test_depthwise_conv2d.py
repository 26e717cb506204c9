"""nn.DepthwiseConv2d (shifted sums) equals XLA's grouped convolution in values and gradients,
loads PyTorch's depthwise weights, and is charged k*k MACs per output."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from sarf_jax.convert import load_state_dict
from sarf_jax.evaluate import count_flops
from sarf_jax.nn.conv import DepthwiseConv2d, depthwise_conv2d


def xla_depthwise(x, kernel, bias):
    pad = kernel.shape[0] // 2
    y = jax.lax.conv_general_dilated(
        x,
        kernel,
        (1, 1),
        ((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1],
        precision="highest",
    )
    return y + bias


@pytest.mark.parametrize("size, h, w", [(7, 5, 9), (3, 4, 4), (3, 1, 6), (1, 3, 3)])
def test_values_and_gradients_equal_xla_grouped_convolution(size, h, w):
    rng = np.random.default_rng(size + h)
    x, kernel, bias, cotangent = (
        jnp.asarray(rng.standard_normal(s), jnp.float32) for s in [(2, h, w, 6), (size, size, 1, 6), (6,), (2, h, w, 6)]
    )
    loss = lambda f: lambda *args: jnp.vdot(f(*args), cotangent)
    ours = jax.value_and_grad(loss(depthwise_conv2d), argnums=(0, 1, 2))(x, kernel, bias)
    reference = jax.value_and_grad(loss(xla_depthwise), argnums=(0, 1, 2))(x, kernel, bias)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_loads_torch_depthwise_weights_and_matches_torch():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 6, 7, padding=3, groups=6)
    ours = DepthwiseConv2d(6, 7, rngs=nnx.Rngs(0))
    load_state_dict(ours, {k: v.detach().numpy() for k, v in conv.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((2, 6, 5, 8)).astype(np.float32)
    expected = conv(torch.tensor(x)).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(ours(jnp.asarray(x.transpose(0, 2, 3, 1))), expected, atol=1e-5)


def test_flops_are_k_squared_per_output_element():
    layer = DepthwiseConv2d(6, 7, use_bias=False, rngs=nnx.Rngs(0))
    assert count_flops(layer, jax.ShapeDtypeStruct((2, 5, 9, 6), jnp.float32)) == 2 * 5 * 9 * 6 * 49


def test_even_kernel_is_rejected():
    with pytest.raises(ValueError, match="kernel_size must be a positive odd int, got 4"):
        DepthwiseConv2d(6, 4, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gradients_without_bias_match_xla_in_each_dtype(dtype):
    rng = np.random.default_rng(3)
    x, kernel, cotangent = (
        jnp.asarray(rng.standard_normal(s), dtype) for s in [(2, 13, 11, 4), (3, 3, 1, 4), (2, 13, 11, 4)]
    )
    loss = lambda f: lambda x, k: jnp.vdot(f(x, k).astype(jnp.float32), cotangent.astype(jnp.float32))
    ours = jax.grad(loss(lambda x, k: depthwise_conv2d(x, k, None)), argnums=(0, 1))(x, kernel)
    up = lambda t: t.astype(jnp.float32)
    reference = jax.grad(loss(lambda x, k: xla_depthwise(up(x), up(k), 0.0)), argnums=(0, 1))(x, kernel)
    tolerance = 1e-5 if dtype == jnp.float32 else 3e-2
    for a, b in zip(ours, reference):
        assert a.dtype == dtype
        np.testing.assert_allclose(up(a), b, rtol=tolerance, atol=tolerance * float(jnp.abs(b).max()))

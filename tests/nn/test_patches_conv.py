"""`patches_conv`: a deep strided NHWC convolution as a matmul of its input patches in the forward
pass, lax's convolution in the backward pass; every other convolution is lax's unchanged."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from sarf_jax.nn import conv as conv_module
from sarf_jax.nn.conv import NHWC, patches_conv, torch_conv2d


def arrays(height, channels, out, kernel, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((2, height, height + 1, channels)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((kernel, kernel, channels, out)), jnp.float32)
    return x, w


def conv_with(fn, stride, padding, **kwargs):
    def conv(x, w):
        numbers = lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
        return fn(x, w, (stride, stride), padding, dimension_numbers=numbers, precision="highest", **kwargs)

    return conv


@pytest.mark.parametrize(
    "height, channels, out, kernel, stride, pad",
    [
        (14, 8, 16, 3, 2, 1),  # VMamba's downsampling: 3x3, stride 2, padding 1
        (13, 5, 7, 3, 2, 1),  # odd input
        (16, 3, 8, 4, 4, 0),  # non-overlapping patches (a patch embedding)
        (15, 3, 6, 7, 2, 3),  # PlainMamba's stem
    ],
)
def test_strided_convolutions_match_lax_forward_and_have_lax_s_gradients(
    height, channels, out, kernel, stride, pad, monkeypatch
):
    monkeypatch.setattr(conv_module, "MIN_PATCH_INPUTS", 1)  # small shapes take the patches form too
    x, w = arrays(height, channels, out, kernel)
    padding = ((pad, pad), (pad, pad))
    ours, theirs = conv_with(patches_conv, stride, padding), conv_with(lax.conv_general_dilated, stride, padding)
    y, vjp = jax.vjp(ours, x, w)
    expected, expected_vjp = jax.vjp(theirs, x, w)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5 * float(jnp.abs(expected).max()))
    cotangent = jnp.asarray(np.random.default_rng(1).standard_normal(y.shape), jnp.float32)
    for g, e in zip(vjp(cotangent), expected_vjp(cotangent)):
        np.testing.assert_array_equal(g, e)  # the backward pass is lax's own
    primal = str(jax.make_jaxpr(ours)(x, w))
    assert "dot_general" in primal and "conv_general_dilated" not in primal


@pytest.mark.parametrize(
    "stride, kwargs",
    [
        (1, {}),  # not strided
        (2, dict(feature_group_count=2)),  # grouped
        (2, dict(rhs_dilation=(2, 2))),  # dilated
    ],
)
def test_other_convolutions_stay_lax_convolutions(stride, kwargs, monkeypatch):
    monkeypatch.setattr(conv_module, "MIN_PATCH_INPUTS", 1)
    x, w = arrays(9, 4, 4, 3)
    if "feature_group_count" in kwargs:
        w = w[:, :, :2]
    conv = conv_with(patches_conv, stride, ((1, 1), (1, 1)), **kwargs)
    expected = conv_with(lax.conv_general_dilated, stride, ((1, 1), (1, 1)), **kwargs)
    assert "conv_general_dilated" in str(jax.make_jaxpr(conv)(x, w))
    np.testing.assert_array_equal(jax.jit(conv)(x, w), jax.jit(expected)(x, w))


def test_nchw_and_string_padding_stay_lax_convolutions(monkeypatch):
    monkeypatch.setattr(conv_module, "MIN_PATCH_INPUTS", 1)
    x, w = arrays(9, 4, 4, 3)
    nchw = jnp.moveaxis(x, -1, 1)
    oihw = jnp.transpose(w, (3, 2, 0, 1))
    y = patches_conv(nchw, oihw, (2, 2), ((1, 1), (1, 1)), dimension_numbers=None)
    np.testing.assert_array_equal(y, lax.conv_general_dilated(nchw, oihw, (2, 2), ((1, 1), (1, 1))))
    numbers = lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
    jaxpr = jax.make_jaxpr(lambda x, w: patches_conv(x, w, (2, 2), "SAME", dimension_numbers=numbers))(x, w)
    assert "conv_general_dilated" in str(jaxpr)


def test_torch_conv2d_takes_the_patches_form_from_min_patch_inputs_per_output():
    """3x3 over 128 channels (1,152 inputs per output) is deep enough, over 96 (864, VMamba-T's
    first downsampling) is not; nor is any stride-1 convolution."""
    x = jnp.ones((1, 8, 8, 128))
    deep = torch_conv2d(128, 4, 3, stride=2, padding=1, rngs=nnx.Rngs(0))
    shallow = torch_conv2d(96, 4, 3, stride=2, padding=1, rngs=nnx.Rngs(0))
    plain = torch_conv2d(128, 4, 3, stride=1, padding=1, rngs=nnx.Rngs(0))
    assert "conv_general_dilated" not in str(jax.make_jaxpr(deep)(x))
    assert "conv_general_dilated" in str(jax.make_jaxpr(shallow)(x[..., :96]))
    assert "conv_general_dilated" in str(jax.make_jaxpr(plain)(x))
    assert deep(x).shape == (1, 4, 4, 4)

"""Vim: the converted official fixture reproduces the official logits and features; official
sizes have the official parameter counts; bad input is named."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import official_state_dict, read_fixture
from flax import nnx

from sarf_jax import models
from sarf_jax.convert import from_official
from sarf_jax.evaluate import model_gflops, parameter_count


@functools.cache
def converted_fixture_model():
    arrays, meta = read_fixture("vim")
    return from_official("vim", meta["constructor_kwargs"], official_state_dict(arrays)), arrays, meta


def test_converted_fixture_reproduces_official_logits_and_features():
    model, arrays, _ = converted_fixture_model()
    images = jnp.asarray(arrays["input"].transpose(0, 2, 3, 1))  # NCHW -> NHWC
    np.testing.assert_allclose(model(images), arrays["logits"], atol=1e-4, rtol=0)
    patches = model.patch_embed(images)
    np.testing.assert_allclose(patches.reshape(2, -1, patches.shape[-1]), arrays["feat/patch_embed"], atol=1e-5)
    tokens = model.tokens(images)
    np.testing.assert_allclose(tokens, arrays["feat/block0_residual"], atol=1e-5)
    hidden, _ = model.layers[0](tokens, None, train=False)
    np.testing.assert_allclose(hidden, arrays["feat/block0_hidden"], atol=1e-4)


def test_class_token_sits_in_the_middle_of_the_sequence():
    model, arrays, meta = converted_fixture_model()
    assert model.cls_position == meta["cls_token_position"] == 8


@pytest.mark.parametrize("name, params", [("vim_tiny", 7_148_008), ("vim_small", 25_796_584)])
def test_official_sizes_have_official_parameter_counts(name, params):
    model = nnx.eval_shape(lambda: models.create(name, num_classes=1000, img_size=224, rngs=nnx.Rngs(0)))
    assert parameter_count(model) == params  # docs/official_code.md#vim-variants, measured on the official code


def test_vim_tiny_gflops_follow_the_papers_convention():
    """Counted on the jaxpr; equal to the analytic sum per layer (MACs + 9·L·E·N per scan direction)."""
    model = nnx.eval_shape(lambda: models.create("vim_tiny", num_classes=1000, img_size=224, rngs=nnx.Rngs(0)))
    L, D, E, R, N = 197, 192, 384, 12, 16
    per_direction = L * E * (R + 2 * N) + L * R * E + L * E * 4 + 9 * L * E * N + 2 * L * E
    per_layer = L * D * 2 * E + 2 * per_direction + L * E * D
    expected = 24 * per_layer + 196 * (3 * 16 * 16) * D + D * 1000
    assert model_gflops(model, 224) * 1e9 == pytest.approx(expected, rel=1e-12)


def test_mini_trains_under_jit_and_grad():
    model = models.create("vim_mini", num_classes=10, img_size=28, in_chans=1, rngs=nnx.Rngs(0))
    images = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
    labels = jnp.arange(4)

    @nnx.jit
    def loss_and_grads(model):
        loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(images, train=True), labels).mean()
        return nnx.value_and_grad(loss)(model)

    loss, grads = loss_and_grads(model)
    assert np.isfinite(loss)
    leaves = jax.tree.leaves(nnx.state(grads, nnx.Param))
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert sum(float(jnp.abs(g).sum()) > 0 for g in leaves) == len(leaves)  # every parameter learns


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"unknown model 'vim_huge'; valid names: .*vim_tiny"):
        models.create("vim_huge", num_classes=10, img_size=224, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"img_size - patch_size must be a non-negative multiple of stride"):
        models.create("vim_tiny", num_classes=10, img_size=230, rngs=nnx.Rngs(0))
    model, arrays, meta = converted_fixture_model()
    with pytest.raises(ValueError, match=r"images must have shape \(batch, 32, 32, 3\) \(NHWC\), got \(2, 3, 32, 32\)"):
        model(jnp.asarray(arrays["input"]))
    kwargs = meta["constructor_kwargs"]
    with pytest.raises(ValueError, match=r"unsupported constructor arguments \['if_magic'\]"):
        from_official("vim", {**kwargs, "if_magic": True}, {})
    with pytest.raises(ValueError, match=r"only bimamba_type='v2'"):
        from_official("vim", {**kwargs, "bimamba_type": "v1"}, {})
    state_dict = official_state_dict(arrays)
    with pytest.raises(
        ValueError,
        match=r"patch_embed.proj.weight has shape \(64, 3, 8, 8\), which maps to "
        r"\(8, 8, 3, 64\), but the model's patch_embed.proj.weight has shape \(4, 4, 3, 64\)",
    ):
        from_official("vim", {**kwargs, "patch_size": 4, "stride": 4, "img_size": 16}, state_dict)

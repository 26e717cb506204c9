"""Backbone features of every family: multi-scale NHWC maps for dense heads, dense and under a
reduction, restored onto the dense grids, and a small segmentation head trained on top.

One function per family, compiled by jax.jit with the spec a static argument, gives everything the
tests compare (XLA compiles of the SSM blocks dominate the run time on a CPU).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sarf_jax import models, reduction
from sarf_jax.models.common import default_feature_layers

FAMILIES = ["vmamba_mini", "vim_mini", "vit_mini", "plainmamba_mini"]
# Small models: VMamba 3 stages of one block, the others 2 layers (feature layers (0, 1)); the
# step-by-step scan compiles fastest on a CPU.
OVERRIDES = {
    "vmamba_mini": dict(depths=(1, 1, 1), scan_impl="reference"),
    "vim_mini": dict(depth=2, scan_impl="reference"),
    "plainmamba_mini": dict(depth=2, scan_impl="reference"),
}
# Specs that leave the first stage / layer alone. VMamba: stage 1 7x7 -> 6x6, stage 2 (3x3 after the
# downsample, 4x4 dense) -> 2x2: restoring composes a plan, a stage change and a plan. The
# single-stage models: after layer 1, 14x14 -> 10x10 (tests/reduction/test_restore.py composes more).
SPECS = {"vmamba_mini": reduction.Spec("sarf_tome", ((0,), (13,), (4,)))}
ISOTROPIC_SPEC = reduction.Spec("sarf_tome", {1: 100})
DENSE = {
    "vmamba_mini": [(14, 14, 32), (7, 7, 64), (4, 4, 128)],
    "vim_mini": [(14, 14, 64)] * 2,
    "vit_mini": [(14, 14, 64)] * 2,
    "plainmamba_mini": [(14, 14, 48)] * 2,
}
REDUCED = {"vmamba_mini": [(14, 14), (6, 6), (2, 2)]}
ISOTROPIC_REDUCED = [(14, 14), (10, 10)]


@functools.cache
def model(name):
    return models.create(
        name, num_classes=10, img_size=28, in_chans=1, rngs=nnx.Rngs(0), **OVERRIDES.get(name, dict(depth=2))
    )


@functools.cache
def images():
    return jax.random.normal(jax.random.key(0), (2, 28, 28, 1))


def standardize(x, epsilon):
    """LayerNorm without scale and bias (an out norm as initialised)."""
    mean = jnp.mean(x, axis=-1, keepdims=True)
    return (x - mean) / jnp.sqrt(jnp.mean((x - mean) ** 2, axis=-1, keepdims=True) + epsilon)


def vmamba_by_hand(m, x):
    """Stage outputs through parameter-free out norms, and the logits from the last one."""
    x, maps = m.patch_embed(x), []
    for stage in m.layers:
        for block in stage.blocks:
            x = block(x)
        maps.append(standardize(x, 1e-5))
        if stage.downsample is not None:
            x = stage.downsample(x)
    return maps, m.classifier(x)


def vim_by_hand(m, x):
    hidden, residual, maps, middle = m.tokens(x), None, [], m.cls_position
    for layer in m.layers:
        hidden, residual = layer(hidden, residual, train=False)
        patches = jnp.concatenate([hidden[:, :middle], hidden[:, middle + 1 :]], axis=1)
        maps.append(patches.reshape(x.shape[0], *m.grid, -1))
    return maps, None


def vit_by_hand(m, x):
    tokens = m.patch_embed(x).reshape(x.shape[0], -1, m.cls_token.shape[-1])
    cls = jnp.broadcast_to(m.cls_token[...], (x.shape[0], 1, tokens.shape[-1]))
    tokens, maps = jnp.concatenate([cls, tokens], axis=1) + m.pos_embed[...], []
    for index, block in enumerate(m.blocks):
        tokens = block(tokens, train=False)
        out = m.norm(tokens) if index == len(m.blocks) - 1 else tokens
        maps.append(out[:, 1:].reshape(x.shape[0], *m.grid, -1))
    return maps, None


def plainmamba_by_hand(m, x):
    """Layer outputs through parameter-free out norms (ln1 for the last), and the logits."""
    x, maps = m.embed(x), []
    for index, layer in enumerate(m.layers):
        x = layer(x)
        maps.append(m.ln1(x) if index == len(m.layers) - 1 else standardize(x, 1e-6))
    return maps, m.head(m.pool(x))


BY_HAND = {
    "vmamba_mini": vmamba_by_hand,
    "vim_mini": vim_by_hand,
    "vit_mini": vit_by_hand,
    "plainmamba_mini": plainmamba_by_hand,
}


@functools.cache
def outputs(name):
    """Dense and restored features, the by-hand maps and logits, reduced shapes -> numpy."""
    spec = SPECS.get(name, ISOTROPIC_SPEC)
    graphdef, state = nnx.split(model(name))

    @functools.partial(jax.jit, static_argnums=1)
    def compute(state, spec, x):
        m = nnx.merge(graphdef, state)
        by_hand, logits = BY_HAND[name](m, x)
        return dict(
            dense=m.features(x), restored=m.features(x, reduction=spec, restore=True), by_hand=by_hand, logits=logits
        )

    out = jax.tree.map(np.asarray, compute(state, spec, images()))
    reduced = jax.eval_shape(lambda s: nnx.merge(graphdef, s).features(images(), reduction=spec), state)
    return dict(out, reduced_shapes=[r.shape for r in reduced])


@pytest.mark.parametrize("name", FAMILIES)
def test_dense_features_are_the_backbone_activations(name):
    out = outputs(name)
    assert [f.shape for f in out["dense"]] == [(2, *shape) for shape in DENSE[name]]
    for feature, by_hand in zip(out["dense"], out["by_hand"], strict=True):
        np.testing.assert_allclose(feature, by_hand, atol=2e-5, rtol=1e-5)


def test_vmamba_last_stage_feature_pooled_through_the_classifier_gives_the_logits():
    m, out = model("vmamba_mini"), outputs("vmamba_mini")  # features[-1] is standardised
    norm, head = m.classifier.norm, m.classifier.head
    pooled = np.mean(out["dense"][-1] * np.asarray(norm.scale[...]) + np.asarray(norm.bias[...]), axis=(1, 2))
    logits = pooled @ np.asarray(head.kernel[...]) + np.asarray(head.bias[...])
    np.testing.assert_allclose(logits, out["logits"], atol=1e-4, rtol=1e-4)


def test_plainmamba_last_feature_pooled_through_the_head_gives_the_logits():
    m, out = model("plainmamba_mini"), outputs("plainmamba_mini")
    fc = m.head.fc
    logits = np.mean(out["dense"][-1], axis=(1, 2)) @ np.asarray(fc.kernel[...]) + np.asarray(fc.bias[...])
    np.testing.assert_allclose(logits, out["logits"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_reduced_features_are_on_the_schedule_grids_and_restore_to_the_dense_shapes(name):
    out = outputs(name)
    channels = [shape[-1] for shape in DENSE[name]]
    expected = [(2, *hw, c) for hw, c in zip(REDUCED.get(name, ISOTROPIC_REDUCED), channels)]
    assert out["reduced_shapes"] == expected
    assert [f.shape for f in out["restored"]] == [f.shape for f in out["dense"]]
    assert all(np.all(np.isfinite(f)) for f in out["restored"])


@pytest.mark.parametrize("name", FAMILIES)
def test_restoring_keeps_unreduced_maps_and_copies_reduced_tokens(name):
    out = outputs(name)
    # nothing is reduced before the first map: restored and dense agree exactly
    np.testing.assert_array_equal(out["restored"][0], out["dense"][0])
    for index, (shape, restored) in enumerate(zip(out["reduced_shapes"][1:], out["restored"][1:]), start=1):
        tokens = shape[1] * shape[2]
        for image in restored:
            distinct = len(np.unique(image.reshape(-1, image.shape[-1]), axis=0))
            # positions copy reduced tokens; the first reducing site sees the dense grid, so all of
            # its tokens are restored somewhere (later ones may lose a token to the stride-2 pick)
            assert distinct == tokens if index == 1 else 1 < distinct <= tokens, (index, distinct, tokens)


def test_feature_layers_default_and_choice_and_their_errors():
    assert default_feature_layers(24) == (5, 11, 17, 23)
    assert default_feature_layers(12) == (2, 5, 8, 11)
    assert default_feature_layers(36) == (8, 17, 26, 35)
    assert default_feature_layers(3) == (0, 1, 2) and default_feature_layers(1) == (0,)
    vit = models.create(
        "vit_mini", num_classes=10, img_size=28, in_chans=1, rngs=nnx.Rngs(0), depth=3, feature_layers=(0, 2)
    )
    maps = nnx.jit(lambda m, x: m.features(x))(vit, images())
    assert [f.shape for f in maps] == [(2, 14, 14, 64)] * 2
    for bad in [(3,), (1, 0), (), (0, 0), (True,)]:
        with pytest.raises(ValueError, match=r"feature_layers must be increasing block indices in \[0, 3\)"):
            models.create(
                "vim_mini", num_classes=10, img_size=28, in_chans=1, rngs=nnx.Rngs(0), depth=3, feature_layers=bad
            )


@pytest.mark.parametrize("name, count", [("vmamba_mini", 3), ("plainmamba_mini", 1)])
def test_out_norms_are_trainable_only_when_asked_for(name, count):
    def norm_params(**kwargs):
        m = models.create(
            name,
            num_classes=10,
            img_size=28,
            in_chans=1,
            rngs=nnx.Rngs(0),
            **OVERRIDES.get(name, dict(depth=2)),
            **kwargs,
        )
        params = nnx.to_flat_state(nnx.state(m, nnx.Param))
        return sorted(path for path, _ in params if path[0] in ("outnorms", "out_norms"))

    assert norm_params() == []
    paths = norm_params(out_norms=True)
    assert len(paths) == 2 * count and {path[-1] for path in paths} == {"scale", "bias"}


class Segmenter(nnx.Module):
    """A 1x1 head over the channel-concatenated restored maps of a single-stage backbone; zero
    initialised, so that training starts at the chance loss log(num_classes)."""

    def __init__(self, backbone, num_classes: int, *, rngs: nnx.Rngs):
        self.backbone = backbone
        self.head = nnx.Linear(
            64 * len(backbone.feature_layers), num_classes, kernel_init=nnx.initializers.zeros, rngs=rngs
        )

    def __call__(self, images, spec):
        maps = self.backbone.features(images, reduction=spec, restore=True, train=True)
        return self.head(jnp.concatenate(maps, axis=-1))


def test_a_segmentation_head_trains_on_restored_features():
    backbone = models.create("vit_mini", num_classes=10, img_size=28, in_chans=1, rngs=nnx.Rngs(1), depth=1)
    graphdef, params, rest = nnx.split(Segmenter(backbone, 2, rngs=nnx.Rngs(2)), nnx.Param, ...)
    spec = reduction.Spec("sarf_tome", {0: 100})  # reduced inside the only block
    # synthetic scenes: class 1 right of a random column of patches, the image brighter there
    split = jax.random.randint(jax.random.key(3), (8, 1, 1), 3, 11)
    masks = jnp.broadcast_to(jnp.arange(14)[None, None, :] >= split, (8, 14, 14)).astype(jnp.int32)
    x = (
        2.0 * jnp.repeat(jnp.repeat(masks, 2, axis=1), 2, axis=2)[..., None]
        - 1.0
        + 0.5 * jax.random.normal(jax.random.key(4), (8, 28, 28, 1))
    )
    tx = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state):
        def loss_fn(params):
            logits = nnx.merge(graphdef, params, rest)(x, spec)
            return optax.softmax_cross_entropy_with_integer_labels(logits, masks).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    opt_state, losses = tx.init(params), []
    for _ in range(15):
        params, opt_state, loss, grads = step(params, opt_state)
        losses.append(float(loss))
    assert losses[0] == pytest.approx(np.log(2), abs=1e-4)
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.3 * losses[0], losses
    patch_grad = grads["backbone"]["patch_embed"]["proj"]["kernel"][...]
    assert float(jnp.abs(patch_grad).sum()) > 0  # the loss reaches the backbone through the restore

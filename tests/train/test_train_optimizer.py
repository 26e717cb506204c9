"""Optimizer: the weight-decay exclusions of the official recipes, the schedule, and gradient
accumulation equal to one big batch."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from train_helpers import compilation_cache, quick_compiles, tiny_config, tiny_train_step  # noqa: F401 - fixtures

from sarf_jax import models, parallel
from sarf_jax.train import optimizer


@pytest.mark.parametrize("name", ["vim_mini", "vit_mini"])
def test_weight_decay_skips_norms_biases_ssm_parameters_and_embeddings(name):
    model = nnx.eval_shape(
        lambda: models.create(name, num_classes=10, img_size=28, in_chans=1, rngs=nnx.Rngs(0), depth=1)
    )
    mask = {
        parallel.path_string(p): m
        for p, m in jax.tree_util.tree_flatten_with_path(optimizer.weight_decay_mask(nnx.state(model, nnx.Param)))[0]
    }
    no_decay = {p for p, decayed in mask.items() if not decayed}
    expected_no_decay = {
        p
        for p in mask
        if p.endswith(("bias", "scale", "A_log", "A_b_log", "/D", "/D_b")) or p in ("pos_embed", "cls_token")
    }
    assert no_decay == expected_no_decay
    assert mask["head/kernel"] and mask["patch_embed/proj/kernel"]
    if name == "vim_mini":
        assert {"layers/0/mixer/A_log", "layers/0/mixer/D", "layers/0/mixer/dt_proj/bias"} <= no_decay
        assert mask["layers/0/mixer/in_proj/kernel"] and mask["layers/0/mixer/x_proj_b/kernel"]


def test_schedule_warms_up_linearly_then_decays_to_min_lr():
    config = ml_collections.ConfigDict(dict(lr=1e-3, min_lr=1e-5, warmup_steps=10))
    schedule = optimizer.learning_rate_schedule(config, 100)
    np.testing.assert_allclose([schedule(0), schedule(5), schedule(10)], [0.0, 5e-4, 1e-3], rtol=1e-6)
    np.testing.assert_allclose(schedule(100), 1e-5, rtol=1e-5)
    assert schedule(50) > schedule(80) > schedule(99)


def test_gradient_accumulation_equals_one_big_batch():
    results = []
    for accum in (1, 2):
        config = tiny_config()
        config.grad_accum_steps = accum
        config.model.overrides.drop_path_rate = 0.0  # micro-batches draw their own drop-path masks
        state, step = tiny_train_step(config)
        rng = np.random.default_rng(0)
        batch = {
            "image": jnp.asarray(rng.integers(0, 256, (8, 16, 16, 1)), jnp.uint8),
            "label": jnp.asarray(rng.integers(0, 4, 8), jnp.int32),
        }
        state, metrics = step(state, batch)
        results.append((jax.tree.map(np.asarray, state["params"]), float(metrics["loss"])))
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(results[1][0]), jax.tree.leaves(results[0][0])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_non_finite_step_leaves_the_state_unchanged():
    state, step = tiny_train_step(tiny_config())
    before = jax.tree.map(np.asarray, state)
    batch = {"image": jnp.full((8, 16, 16, 1), jnp.nan), "label": jnp.zeros(8, jnp.int32)}
    state, metrics = step(state, batch)
    assert not np.isfinite(float(metrics["loss"]))
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state), before)

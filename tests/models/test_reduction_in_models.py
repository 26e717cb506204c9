"""Token reduction plugged into every backbone: grids shrink as the schedule says, FLOPs drop,
nothing changes when nothing is reduced, and one jitted function serves each static spec."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sarf_jax import models, reduction
from sarf_jax.evaluate import model_gflops

MINIS = ["vim_mini", "vit_mini"]
METHODS = ["sarf_tome", "sarf_evit", "evit", "tome", "random", "hsa", "quartermap"]


SMALL = {"vmamba_mini": dict(depths=(2, 2, 1))}  # the others: depth 3


@functools.cache
def small_model(name):
    return models.create(
        name, num_classes=10, img_size=28, in_chans=1, rngs=nnx.Rngs(0), **SMALL.get(name, dict(depth=3))
    )


@functools.cache
def images():
    return jax.random.normal(jax.random.key(0), (2, 28, 28, 1))


def spec_for(method, schedule="keep=0.6,sites=2"):
    return reduction.Spec(method, None if method == "quartermap" else schedule)


@pytest.mark.parametrize("name", MINIS)
def test_no_reduction_and_a_keep_everything_schedule_equal_the_dense_model(name):
    model = small_model(name)
    forward = nnx.jit(lambda m, x, spec: m(x, reduction=spec), static_argnums=2)
    dense = forward(model, images(), None)
    np.testing.assert_array_equal(forward(model, images(), reduction.Spec("none")), dense)
    np.testing.assert_allclose(forward(model, images(), spec_for("sarf_tome", "keep=1.0,sites=2")), dense, atol=1e-6)


CASES = [("vim_mini", method) for method in METHODS] + [
    (name, method) for name in ("vit_mini", "vmamba_mini", "plainmamba_mini") for method in ("sarf_tome", "quartermap")
]


@pytest.mark.parametrize("name, method", CASES)
def test_every_method_runs_jitted_and_saves_flops(name, method):
    model = small_model(name)
    spec = spec_for(method)
    logits = nnx.jit(lambda m, x: m(x, reduction=spec))(model, images())
    assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
    dense, reduced = model_gflops(model, 28, in_chans=1), model_gflops(model, 28, in_chans=1, reduction=spec)
    assert reduced < dense
    if method != "quartermap" and name != "vmamba_mini":
        assert [site.out_hw for site in model.reduction_sites(spec)] == [(14, 14), (12, 12), (11, 11)]


@pytest.mark.parametrize("name", MINIS)
def test_reduction_aware_training_has_gradients(name):
    model = small_model(name)
    spec = spec_for("sarf_tome")
    grads = nnx.jit(nnx.grad(lambda m: m(images(), reduction=spec, train=True).sum()))(model)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(nnx.state(grads, nnx.Param)))


def test_unreachable_schedules_and_wrong_spec_types_are_named():
    model = small_model("vim_mini")
    with pytest.raises(ValueError, match=r"layer indices \[7\] do not exist in a backbone of 3 blocks"):
        model(images(), reduction=reduction.Spec("sarf_tome", {7: 49}))
    with pytest.raises(ValueError, match=r"sarf_tome can reduce H=14 to 7 .. 14"):
        model(images(), reduction=reduction.Spec("sarf_tome", {1: 36}))
    with pytest.raises(ValueError, match=r"expected a sarf_jax.reduction.Spec or None"):
        model(images(), reduction="sarf_tome")

"""gelu, Mlp and DropPath behave as their PyTorch counterparts (torch GELU, timm Mlp, timm DropPath)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from sarf_jax.convert import load_state_dict
from sarf_jax.nn import DropPath, Mlp
from sarf_jax.nn.common import gelu


def test_gelu_matches_torch_gelu_and_its_gradient():
    x = np.linspace(-12, 12, 20001, dtype=np.float32)
    xt = torch.tensor(x, requires_grad=True)
    expected = torch.nn.functional.gelu(xt)
    expected.sum().backward()
    ours_grad = jax.grad(lambda v: gelu(v).sum())(jnp.asarray(x))
    np.testing.assert_allclose(gelu(jnp.asarray(x)), expected.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ours_grad, xt.grad.numpy(), rtol=1e-5, atol=1e-6)
    assert gelu(jnp.ones(3, jnp.bfloat16)).dtype == jnp.bfloat16


def test_mlp_matches_torch_linear_gelu_linear():
    torch.manual_seed(0)
    reference = torch.nn.Sequential()
    reference.add_module("fc1", torch.nn.Linear(6, 10))
    reference.add_module("act", torch.nn.GELU())
    reference.add_module("fc2", torch.nn.Linear(10, 6))
    ours = Mlp(6, 10, rngs=nnx.Rngs(0))
    load_state_dict(ours, {k: v.numpy() for k, v in reference.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    np.testing.assert_allclose(ours(jnp.asarray(x)), reference(torch.tensor(x)).detach().numpy(), atol=1e-6)


def test_drop_path_drops_whole_samples_and_keeps_the_mean():
    drop = DropPath(0.25, rngs=nnx.Rngs(0))
    x = jnp.ones((4000, 3, 2))
    y = drop(x, deterministic=False)
    per_sample = np.asarray(y).reshape(4000, -1)
    np.testing.assert_allclose(np.unique(per_sample), [0.0, 1 / 0.75], rtol=1e-6)
    assert np.all(per_sample.min(axis=1) == per_sample.max(axis=1))  # all or nothing per sample
    assert abs(per_sample.mean() - 1.0) < 0.05
    np.testing.assert_array_equal(drop(x, deterministic=True), x)


def test_drop_path_rejects_rates_outside_zero_one():
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\), got 1.0"):
        DropPath(1.0)

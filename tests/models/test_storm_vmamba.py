"""STORM-VMamba end to end: the dense model, SARF and the baselines from the same converted weights
reproduce the official STORM code's logits (fixture storm_vmamba.npz, its own budget table)."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import official_state_dict, read_fixture

from sarf_jax import reduction
from sarf_jax.convert import from_official


@functools.cache
def fixture_model():
    arrays, meta = read_fixture("storm_vmamba")
    model = from_official("vmamba", meta["constructor_kwargs"], official_state_dict(arrays))
    return model, arrays, meta


CASES = {  # fixture key -> Spec arguments besides the table (tests/fixtures/README.md#storm-vmamba)
    "dense": None,
    "storm_tome": dict(method="sarf_tome"),
    "storm_tome_wavg": dict(method="sarf_tome", merge="mean"),
    "storm_evit": dict(method="sarf_evit"),
    "evit": dict(method="evit"),
    "tome": dict(method="tome"),  # VMamba's official ToMe drops
    "tome_mergemode": dict(method="tome", tome_prune=False),
}


@pytest.mark.parametrize("case", CASES)
def test_reproduces_official_storm_vmamba_logits(case):
    model, arrays, meta = fixture_model()
    spec = None if CASES[case] is None else reduction.Spec(schedule=meta["budget_table"], **CASES[case])
    images = jnp.asarray(arrays["input"].transpose(0, 2, 3, 1))
    np.testing.assert_allclose(model(images, reduction=spec), arrays[f"logits_{case}"], atol=1e-4, rtol=0)


def test_fixture_table_reduces_the_first_two_stages():
    model, _, meta = fixture_model()
    sites = model.reduction_sites(reduction.Spec("sarf_tome", meta["budget_table"]))
    assert [(s.in_hw, s.out_hw) for s in sites] == [
        ((16, 16), (13, 13)),
        ((7, 7), (6, 6)),
        ((3, 3), (3, 3)),
        ((3, 3), (3, 3)),
        ((2, 2), (2, 2)),
    ]


def test_describe_vmamba_small_hybrid_2p1_gives_the_papers_grids():
    """The worked example of docs/official_code.md#storm-budgets: 56²→52², 26²→24², 12²→11²→10²→9²→8²
    (small/base)."""
    from flax import nnx

    from sarf_jax import models

    model = nnx.eval_shape(lambda: models.create("vmamba_small", num_classes=1000, img_size=224, rngs=nnx.Rngs(0)))
    text = reduction.describe(model, reduction.Spec("sarf_tome", "hybrid_2p1"), 224)
    grids = [line.split()[2] + "->" + line.split()[4] for line in text.splitlines()[2:-1]]
    assert grids == ["56x56->52x52", "26x26->24x24", "12x12->11x11", "11x11->10x10", "10x10->9x9", "9x9->8x8"]
    saved = float(text.splitlines()[-1].split("(")[1].split("%")[0])
    assert 20 < saved < 60, text

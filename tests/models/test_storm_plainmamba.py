"""STORM-PlainMamba end to end: the dense model, SARF and the baselines from the same converted
weights reproduce the official STORM code's logits (fixture storm_plainmamba.npz)."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import official_state_dict, read_fixture

from sarf_jax import reduction
from sarf_jax.convert import from_official


@functools.cache
def fixture_model():
    arrays, meta = read_fixture("storm_plainmamba")
    state_dict = official_state_dict(arrays)
    kwargs = {**meta["constructor_kwargs"], "num_classes": state_dict["head.fc.weight"].shape[0]}  # head is mmcls's
    model = from_official("plainmamba", kwargs, state_dict)
    schedule = {int(layer): tokens for layer, tokens in meta["schedule"].items()}
    return model, arrays, schedule


CASES = {  # fixture key -> Spec arguments besides the schedule (tests/fixtures/README.md#storm-plainmamba)
    "dense": None,
    "storm_tome": dict(method="sarf_tome"),
    "storm_tome_wavg": dict(method="sarf_tome", merge="mean"),
    "storm_evit": dict(method="sarf_evit", window=20),  # STORM's PlainMamba uses window 20
    "evit": dict(method="evit"),
    "tome": dict(method="tome"),  # PlainMamba's official ToMe merges
    "tome_prunemode": dict(method="tome", tome_prune=True),
}


@pytest.mark.parametrize("case", CASES)
def test_reproduces_official_storm_plainmamba_logits(case):
    model, arrays, schedule = fixture_model()
    spec = None if CASES[case] is None else reduction.Spec(schedule=schedule, **CASES[case])
    images = jnp.asarray(arrays["input"].transpose(0, 2, 3, 1))
    np.testing.assert_allclose(model(images, reduction=spec), arrays[f"logits_{case}"], atol=1e-4, rtol=0)
    if spec is not None:
        assert [s.out_hw for s in model.reduction_sites(spec)] == [(7, 7), (7, 7), (5, 5), (5, 5)]

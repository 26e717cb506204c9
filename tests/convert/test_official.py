"""from_official reads num_classes from the classifier head when the kwargs leave it out, and
refuses a num_classes that the head contradicts (every family, on the official fixtures)."""

import jax
import numpy as np
import pytest
from conftest import official_state_dict, read_fixture
from flax import nnx

from sarf_jax.convert import from_official
from sarf_jax.convert.official import head_classes

HEADS = {"vim": "head.weight", "vmamba": "classifier.head.weight", "plainmamba": "head.fc.weight"}


def fixture_kwargs_and_state_dict(family):
    """The fixture's constructor kwargs without num_classes, its state dict, and its class count (10)."""
    arrays, meta = read_fixture(family)
    kwargs = {k: v for k, v in meta["constructor_kwargs"].items() if k != "num_classes"}
    return kwargs, official_state_dict(arrays), meta.get("num_classes", meta["constructor_kwargs"].get("num_classes"))


@pytest.mark.parametrize("family", sorted(HEADS))
def test_num_classes_defaults_to_the_heads_rows(family):
    kwargs, state_dict, classes = fixture_kwargs_and_state_dict(family)
    assert classes == 10 and head_classes(family, state_dict) == 10
    inferred = from_official(family, kwargs, state_dict)
    given = from_official(family, {**kwargs, "num_classes": classes}, state_dict)
    jax.tree.map(
        np.testing.assert_array_equal,
        nnx.state(inferred, (nnx.Param, nnx.BatchStat)),
        nnx.state(given, (nnx.Param, nnx.BatchStat)),
    )


@pytest.mark.parametrize("family", sorted(HEADS))
def test_num_classes_that_the_head_contradicts_is_refused(family):
    kwargs, state_dict, _ = fixture_kwargs_and_state_dict(family)
    with pytest.raises(
        ValueError,
        match=rf"num_classes=1000, but the {family} state dict's head "
        rf"\({HEADS[family]}\) has 10 rows",
    ):
        from_official(family, {**kwargs, "num_classes": 1000}, state_dict)


def test_vmamba_legacy_head_key_counts_too():
    _, state_dict, _ = fixture_kwargs_and_state_dict("vmamba")
    legacy = {k.removeprefix("classifier."): v for k, v in state_dict.items()}  # head.*, norm.*
    assert head_classes("vmamba", legacy) == 10 and head_classes("vmamba", {}) is None

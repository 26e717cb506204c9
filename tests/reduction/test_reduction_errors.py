"""Bad input fails early with a ValueError that names the field, the value and what is valid."""

import jax
import jax.numpy as jnp
import pytest

from sarf_jax import reduction
from sarf_jax.reduction import schedules

X = jnp.ones((2, 7, 7, 3))


@pytest.mark.parametrize(
    "method, out_hw, match",
    [
        ("sarf_tome", (3, 7), r"sarf_tome can reduce H=7 to 4 \.\. 7.*got H'=3"),  # > one per pair
        ("sarf_tome", (7, 8), r"W=7 to 4 \.\. 7"),
        ("sarf_evit", (8, 7), r"sarf_evit can reduce H=7 to 1 \.\. 7"),
        ("evit", (8, 8), r"evit keeps 1 \.\. 49 of the 7×7 tokens; got 8×8 = 64"),
        ("tome", (4, 6), r"tome keeps 25 \.\. 49 .*L//2.*got 4×6 = 24"),
        ("none", (6, 6), r"method 'none' keeps the grid"),
        ("sarf_evit", (0, 7), r"out_hw: expected \(height, width\), two ints >= 1"),
        ("sarf_evit", (7,), r"out_hw: expected \(height, width\)"),
        ("sarf_evit", (7.0, 7), r"out_hw"),
    ],
)
def test_budget_larger_than_the_grid_or_unreachable(method, out_hw, match):
    with pytest.raises(ValueError, match=match):
        reduction.reduce_grid(X, method=method, out_hw=out_hw)


def test_errors_come_before_tracing_under_jit():
    with pytest.raises(ValueError, match="sarf_tome can reduce"):
        jax.jit(lambda x: reduction.reduce_grid(x, method="sarf_tome", out_hw=(2, 2)))(X)


def test_unknown_method_lists_the_valid_ones():
    valid = "none, sarf_tome, sarf_evit, evit, tome, random, hsa, quartermap"
    for make in (
        lambda: reduction.Spec("storm", "hybrid_2p1"),
        lambda: reduction.Reducer("storm"),
        lambda: reduction.reduce_grid(X, method="storm", out_hw=(5, 5)),
    ):
        with pytest.raises(ValueError, match=f"method: unknown 'storm'; valid: {valid}"):
            make()


def test_unknown_schedule_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown name 'hybrid_9p1'; valid: hybrid_1p1, .*schedual_5"):
        reduction.Spec("sarf_tome", "hybrid_9p1")


@pytest.mark.parametrize("window", [0, -1, 2.5, True])
def test_window_must_be_a_positive_int(window):
    for make in (
        lambda: reduction.Spec("sarf_tome", "hybrid_2p1", window=window),
        lambda: reduction.reduce_grid(X, method="sarf_tome", out_hw=(5, 5), window=window),
    ):
        with pytest.raises(ValueError, match=r"window: expected an int >= 1"):
            make()


def test_other_spec_fields_are_validated():
    with pytest.raises(ValueError, match=r"merge: expected one of sum, mean, got 'avg'"):
        reduction.Spec("sarf_tome", "hybrid_2p1", merge="avg")
    with pytest.raises(ValueError, match=r"tome_prune: expected None, True or False, got 'yes'"):
        reduction.Spec("tome", "hybrid_2p1", tome_prune="yes")
    with pytest.raises(ValueError, match=r"schedule: method 'sarf_tome' needs a schedule"):
        reduction.Spec("sarf_tome")
    with pytest.raises(ValueError, match=r"family: expected one of vmamba, plainmamba, vim, vit"):
        reduction.Spec("tome", "schedual_2").reducer("deit")


def test_non_square_targets_are_rejected_where_squares_are_required():
    with pytest.raises(ValueError, match=r"layer 4 targets 150 tokens, which is not a square grid"):
        reduction.Spec("sarf_tome", {4: 150})
    # A VMamba count whose square does not fit a non-square grid (isqrt(4·16 - 1) = 7 > 4).
    with pytest.raises(ValueError, match=r"side 7\) is not reachable from the 4×16 grid"):
        schedules.trace([[1]], (1,), (4, 16))
    with pytest.raises(ValueError, match=r"no square target is reachable from the 2×9 grid"):
        schedules.trace("keep=0.5,sites=1", (2,), (2, 9))


def test_schedule_budgets_larger_than_the_grid():
    with pytest.raises(ValueError, match=r"num_prune=49 is not smaller than the 7×7 = 49 tokens"):
        schedules.trace([[0, 49]], (2,), (7, 7))
    with pytest.raises(ValueError, match=r"target 64 tokens is more than the 7×7 = 49 tokens"):
        schedules.trace({1: 64}, (2,), (7, 7))
    # Reachable as a grid, but not by SARF-ToMe (one merge per pair): 14² -> 6² needs 8 per row.
    schedules.trace({0: 36}, (24,), (14, 14), method="sarf_evit")
    with pytest.raises(ValueError, match=r"sarf_tome can reduce H=14 to 7 \.\. 14"):
        schedules.trace({0: 36}, (24,), (14, 14), method="sarf_tome")


def test_tables_must_match_the_backbone():
    with pytest.raises(ValueError, match=r"exists for depths \(2, 2, 8, 2\) \(tiny\) and \(2, 2, 15, 2\)"):
        schedules.resolve("hybrid_2p1", (2, 2, 9, 2))
    with pytest.raises(ValueError, match=r"lengths \(1, 1\); got lengths \(2,\)"):
        schedules.resolve([[0, 5]], (1, 1))
    with pytest.raises(ValueError, match=r"layer indices \[30\] do not exist in a backbone of 24 blocks"):
        schedules.resolve({30: 36}, (24,))
    with pytest.raises(ValueError, match=r"VMamba-format counts must be ints >= 0"):
        schedules.parse([[0, -3]])
    with pytest.raises(ValueError, match=r"keep must be in \(0, 1\]"):
        schedules.parse("keep=1.5")


def test_quartermap_is_not_a_plan():
    with pytest.raises(ValueError, match="quartermap_downsample"):
        reduction.reduce_grid(X, method="quartermap", out_hw=(3, 3))


def test_plans_refuse_other_grids():
    plan = jax.jit(lambda x: reduction.Reducer("sarf_tome").plan(x, (5, 5)))(X)
    with pytest.raises(ValueError, match=r"MergePlan: input must be \(B, H, W, C\) = \(2, 7, 7, C\)"):
        plan(jnp.ones((2, 7, 6, 3)))
    with pytest.raises(ValueError, match=r"GatherPlan: input must be .* got shape \(3, 7, 7, 3\)"):
        reduction.Reducer("evit").plan(X, (5, 5))(jnp.ones((3, 7, 7, 3)))
    with pytest.raises(ValueError, match=r"x, metric: expected \(B, H, W, C\) arrays on the same batch"):
        reduction.reduce_grid(X, method="tome", out_hw=(5, 5), metric=jnp.ones((2, 6, 7, 3)))

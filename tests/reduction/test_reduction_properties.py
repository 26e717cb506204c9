"""Properties of every plan on a set of grids (odd, even, non-square; largest budgets; windows
shorter and longer than a row; one-axis reductions).

Which token feeds which is read off `plan.matrix()`, the dense (B, H'·W', H·W) map. For gathers and
SARF-ToMe a token's *anchor* is its last source in raster order: the kept token of a gather, the
surviving token of a SARF-ToMe group (the others are above / left of it).
"""

import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from sarf_jax import reduction
from sarf_jax.reduction import baselines, sarf

PLANNED = ("sarf_tome", "sarf_evit", "evit", "tome", "random", "hsa")


class Problem(NamedTuple):
    method: str
    in_hw: tuple
    out_hw: tuple
    options: dict


PROBLEMS = [
    Problem(*problem)
    for problem in [
        ("sarf_tome", (7, 7), (4, 5), {}),  # the largest budget on an odd grid
        ("sarf_tome", (6, 9), (5, 6), {"window": 2}),
        ("sarf_tome", (8, 3), (8, 2), {"window": 1}),  # row stage only
        ("sarf_tome", (7, 7), (4, 5), {"merge": "mean"}),
        ("sarf_tome", (5, 8), (4, 8), {"merge": "mean"}),  # column stage only
        ("sarf_evit", (7, 7), (2, 5), {"window": 3}),
        ("sarf_evit", (6, 9), (6, 4), {"window": 20}),  # row stage only; a window longer than a row
        ("sarf_evit", (5, 8), (3, 8), {}),  # column stage only
        ("evit", (7, 7), (3, 2), {}),
        ("hsa", (6, 7), (5, 5), {}),
        ("random", (6, 7), (4, 4), {}),
        ("tome", (7, 7), (5, 5), {"tome_prune": False}),  # r = 24 = L//2, the most it can remove
        ("tome", (6, 9), (7, 4), {"tome_prune": True}),  # re-wrapped into a non-square grid
    ]
]
IDS = [f"{m}-{i[0]}x{i[1]}-to-{o[0]}x{o[1]}-{i_}" for i_, (m, i, o, _) in enumerate(PROBLEMS)]


def grid(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@functools.cache
def evaluate(index):
    """Plan problem `index` once (jitted) -> numpy: x, plan(x), plan(constant 0.7), matrix."""
    method, in_hw, out_hw, options = PROBLEMS[index]
    x = grid((2, *in_hw, 3), seed=index)

    @jax.jit
    def run(x):
        plan = reduction.Reducer(method, **options).plan(x, out_hw)
        return plan, plan(x), plan(jnp.full_like(x, 0.7)), plan.matrix()

    plan, out, constant, matrix = run(x)
    return dict(
        plan=plan,
        x=np.asarray(x),
        out=np.asarray(out),
        constant=np.asarray(constant),
        support=np.asarray(matrix) != 0,
        matrix=np.asarray(matrix),
    )


def problems(*methods, where=lambda problem: True):
    chosen = [i for i, problem in enumerate(PROBLEMS) if problem.method in methods and where(problem)]
    return pytest.mark.parametrize("index", chosen, ids=[IDS[i] for i in chosen])


def anchors(support):
    """(B, H'·W') raster index of each output token's last source."""
    assert support.any(axis=-1).all(), "an output token has no source"
    return support.shape[-1] - 1 - np.argmax(support[..., ::-1], axis=-1)


def first(used):
    return np.argmax(used, axis=-1)


def last(used):
    return used.shape[-1] - 1 - np.argmax(used[..., ::-1], axis=-1)


@problems(*PLANNED)
def test_output_is_a_regular_grid_of_the_requested_size(index):
    _, in_hw, out_hw, _ = PROBLEMS[index]
    result = evaluate(index)
    assert result["plan"].out_hw == out_hw
    assert result["out"].shape == (2, *out_hw, 3)
    assert result["plan"](jnp.ones((2, *in_hw, 5))).shape == (2, *out_hw, 5)  # any channel count
    assert np.isfinite(result["out"]).all()


@problems("sarf_tome", "sarf_evit")
def test_sarf_keeps_spatial_order_and_locality(index):
    _, (height, width), (out_h, out_w), _ = PROBLEMS[index]
    support = evaluate(index)["support"].reshape(2, out_h, out_w, height, width)
    rows_used, cols_used = support.any(axis=-1), support.any(axis=-2)  # (B, H', W', H), (B, H', W', W)
    # Down every output column the source rows strictly increase, group after group.
    assert (last(rows_used)[:, :-1, :] < first(rows_used)[:, 1:, :]).all()
    # Every token stays within the budget of its place: rows i .. i + H - H', columns j .. j + W - W'.
    i, j = np.arange(out_h)[:, None], np.arange(out_w)[None, :]
    assert (first(rows_used) >= i).all() and (last(rows_used) <= i + height - out_h).all()
    assert (first(cols_used) >= j).all() and (last(cols_used) <= j + width - out_w).all()
    # Along every output row, tokens anchored in the same source row have increasing columns. (The
    # tokens of one output row need not share a source row: the column stage chooses per column.)
    anchor = anchors(evaluate(index)["support"]).reshape(2, out_h, out_w)
    same_row = (anchor // width)[..., :, None] == (anchor // width)[..., None, :]
    later = np.triu(np.ones((out_w, out_w), bool), 1)
    assert ((anchor % width)[..., :, None] < (anchor % width)[..., None, :])[same_row & later].all()


@problems("sarf_tome", "sarf_evit", where=lambda p: p.in_hw[0] == p.out_hw[0] or p.in_hw[1] == p.out_hw[1])
def test_sarf_one_axis_reductions_keep_lines_whole_and_in_order(index):
    _, (height, width), (out_h, out_w), _ = PROBLEMS[index]
    support = evaluate(index)["support"].reshape(2, out_h, out_w, height, width)
    if out_h == height:  # row stage only: output row i is source row i, its columns in order
        assert (support.any(axis=-1) == np.eye(height, dtype=bool)[None, :, None, :]).all()
        cols_used = support.any(axis=-2)
        assert (last(cols_used)[..., :-1] < first(cols_used)[..., 1:]).all()
    else:  # column stage only: output column j is source column j
        assert (support.any(axis=-2) == np.eye(width, dtype=bool)[None, None, :, :]).all()


@problems("evit", "tome", "random", "hsa")
def test_baselines_keep_raster_order(index):
    method, _, out_hw, options = PROBLEMS[index]
    result = evaluate(index)
    if method == "tome" and not options["tome_prune"]:
        # Merging keeps the tokens pruning keeps (ToMe's matches are not local, so a group's sources
        # may lie anywhere); each merged token sits where its surviving member was.
        keep = np.asarray(baselines.tome_plan(jnp.asarray(result["x"]), out_hw, prune=True).index)
        keep = keep.reshape(2, -1)
        assert np.take_along_axis(result["support"], keep[..., None], axis=-1).all()
    else:
        keep = anchors(result["support"])
    assert (np.diff(keep, axis=-1) > 0).all()


@problems("sarf_tome", "tome", where=lambda p: p.options.get("merge") == "mean" or p.options.get("tome_prune") is False)
def test_mean_merge_of_a_constant_grid_is_that_constant(index):
    np.testing.assert_allclose(evaluate(index)["constant"], 0.7, rtol=1e-6)


@problems("sarf_tome", where=lambda p: p.options.get("merge", "sum") == "sum")
def test_sum_merge_uses_every_token_exactly_once(index):
    result = evaluate(index)
    np.testing.assert_array_equal(result["matrix"].sum(axis=1), 1.0)
    np.testing.assert_allclose(result["out"].sum(axis=(1, 2)), result["x"].sum(axis=(1, 2)), atol=1e-5)


@pytest.mark.parametrize("method", PLANNED)
@pytest.mark.parametrize("in_hw", [(1, 1), (6, 9)])
def test_zero_budget_is_the_identity(method, in_hw):
    x = grid((2, *in_hw, 3))
    np.testing.assert_array_equal(reduction.reduce_grid(x, method=method, out_hw=in_hw), x)


def test_zero_budget_is_the_identity_inside_each_planner():
    """Not only the shortcut: each planner itself leaves the grid alone when asked to keep it."""
    in_hw = (5, 6)
    x = grid((2, *in_hw, 3))
    planners = (
        functools.partial(sarf.sarf_tome_plan, merge="sum"),
        functools.partial(sarf.sarf_tome_plan, merge="mean"),
        sarf.sarf_evit_plan,
        baselines.evit_plan,
        baselines.hsa_plan,
        functools.partial(baselines.tome_plan, prune=False),
        lambda x, out_hw: baselines.random_plan(x, out_hw, jax.random.key(1)),
    )
    for planner in planners:
        np.testing.assert_array_equal(jax.jit(lambda x: planner(x, in_hw)(x))(x), x)


@pytest.mark.parametrize("method", PLANNED)
def test_jit_and_vmap_match_eager(method):
    in_hw, out_hw = (5, 6), (3, 4) if method != "tome" else (5, 4)
    x, metric = grid((2, *in_hw, 4)), grid((2, *in_hw, 4), seed=1)
    run = functools.partial(reduction.reduce_grid, method=method, out_hw=out_hw, window=2)
    eager = run(x, metric=metric)
    reducer = reduction.Reducer(method, window=2)
    jitted, plan = jax.jit(lambda x, m: (run(x, metric=m), reducer.plan(m, out_hw)))(x, metric)
    np.testing.assert_allclose(jitted, eager, rtol=0, atol=1e-6)
    np.testing.assert_allclose(plan(x), eager, rtol=0, atol=1e-6)  # a plan can leave jit
    xs, metrics = jnp.stack([x, 2 * x + 1]), jnp.stack([metric, -metric])
    mapped = jax.jit(jax.vmap(lambda a, m: run(a, metric=m)))(xs, metrics)
    np.testing.assert_allclose(mapped[0], eager, rtol=0, atol=1e-6)
    np.testing.assert_allclose(mapped[1], run(xs[1], metric=metrics[1]), rtol=0, atol=1e-6)


class ReduceGridVariantsTest(chex.TestCase):
    """reduce_grid with and without jit: a (B, H', W', C) grid in the input's dtype, equal to the plan's
    dense linear map (`plan.matrix()`) applied to the input."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*PLANNED)
    def test_output_is_the_plan_matrix_applied_to_the_input(self, method):
        in_hw, out_hw = (5, 6), (3, 4) if method != "tome" else (5, 4)
        x, metric = grid((2, *in_hw, 4), seed=2), grid((2, *in_hw, 4), seed=3)
        run = self.variant(lambda x, m: reduction.reduce_grid(x, method=method, out_hw=out_hw, window=2, metric=m))
        out = run(x, metric)
        chex.assert_shape(out, (2, *out_hw, 4))
        chex.assert_type(out, jnp.float32)
        matrix = reduction.Reducer(method, window=2).plan(metric, out_hw).matrix()
        expected = jnp.einsum("bqp,bpc->bqc", matrix, x.reshape(2, -1, 4)).reshape(2, *out_hw, 4)
        chex.assert_trees_all_close(out, expected, atol=1e-5, rtol=1e-5)


def test_gradients_flow_to_the_reduced_tensor():
    x = grid((2, 5, 5, 3))
    for method in ("sarf_tome", "sarf_evit", "tome"):
        loss = lambda t: jnp.sum(reduction.reduce_grid(t, method=method, out_hw=(4, 4), metric=x) ** 2)
        gradient = np.asarray(jax.jit(jax.grad(loss))(x))
        assert np.isfinite(gradient).all() and np.abs(gradient).sum() > 0


def test_random_plan_is_shared_by_the_batch_and_follows_the_key():
    x = grid((3, 6, 6, 2))
    reducer = reduction.Reducer("random")
    plan = reducer.plan(x, (4, 4), key=jax.random.key(3))
    assert (np.asarray(plan.index) == np.asarray(plan.index[:1])).all()
    assert not np.array_equal(plan.index, reducer.plan(x, (4, 4), key=jax.random.key(4)).index)
    np.testing.assert_array_equal(reducer.plan(x, (4, 4)).index, reducer.plan(x, (4, 4), key=jax.random.key(0)).index)

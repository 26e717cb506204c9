"""Restoring reduced grids onto the full grid: every plan's transpose (`restore_index`), the
nearest-position fill, and `PositionMap` composed over plans and stage changes.

Which token feeds which is read off `plan.matrix()`, the dense (B, H'·W', H·W) map, and the fill
is checked against a brute-force nearest search.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sarf_jax import reduction
from sarf_jax.reduction.plans import fill_nearest
from sarf_jax.reduction.restore import PositionMap, restore_taps

PROBLEMS = [
    ("sarf_tome", (7, 7), (4, 5), {}),
    ("sarf_tome", (6, 9), (5, 6), {"window": 2, "merge": "mean"}),
    ("sarf_evit", (7, 7), (2, 5), {"window": 3}),
    ("sarf_evit", (6, 9), (6, 4), {}),
    ("evit", (7, 7), (3, 2), {}),
    ("hsa", (6, 7), (5, 5), {}),
    ("random", (6, 7), (4, 4), {}),
    ("tome", (7, 7), (5, 5), {"tome_prune": False}),
    ("tome", (6, 9), (7, 4), {"tome_prune": True}),
]
IDS = [f"{m}-{i[0]}x{i[1]}-to-{o[0]}x{o[1]}-{n}" for n, (m, i, o, _) in enumerate(PROBLEMS)]


def grid(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def plan_of(method, x, out_hw, options=()):
    """A plan computed under jit (plans are pytrees), for the tests that compose them."""
    return reduction.Reducer(method, **dict(options)).plan(x, out_hw)


fill = jax.jit(fill_nearest, static_argnums=1)


def brute_force_nearest(index, missing):
    """fill_nearest by exhaustive search: the claimed position of least squared distance, the
    lowest raster index among equals."""
    batch, height, width = index.shape
    rows, cols = np.divmod(np.arange(height * width), width)
    out = index.copy()
    for b in range(batch):
        flat = index[b].reshape(-1)
        claimed = np.flatnonzero(flat != missing)
        for p in np.flatnonzero(flat == missing):
            distance = (rows[claimed] - rows[p]) ** 2 + (cols[claimed] - cols[p]) ** 2
            out[b].reshape(-1)[p] = flat[claimed[np.argmin(distance)]]  # argmin: first = lowest index
    return out


@functools.cache
def evaluate(problem):
    """Plan problem `problem` once (jitted) -> numpy: x, plan(x), matrix, restore_index, restored."""
    method, in_hw, out_hw, options = PROBLEMS[problem]
    x = grid((2, *in_hw, 3), seed=problem)

    @jax.jit
    def run(x):
        plan = reduction.Reducer(method, **options).plan(x, out_hw)
        y = plan(x)
        restored = PositionMap.identity(x, in_hw).then(plan).restore(y)
        return y, plan.matrix(), plan.restore_index(), restored

    return (np.asarray(x), *(np.asarray(a) for a in run(x)))


def test_fill_nearest_is_the_exact_euclidean_nearest_with_lowest_index_ties():
    rng = np.random.default_rng(0)
    for shape, density in [((3, 7, 9), 0.2), ((2, 6, 6), 0.05), ((2, 5, 11), 0.6), ((1, 1, 8), 0.3)]:
        index = np.where(rng.random(shape) < density, rng.integers(0, 50, shape), 99).astype(np.int32)
        index[:, 0, 0] = 7  # at least one claimed position per image
        np.testing.assert_array_equal(np.asarray(fill(jnp.asarray(index), 99)), brute_force_nearest(index, 99))
    # equidistant claims: the lower row wins, then the lower column
    ties = np.full((1, 3, 3), 9, np.int32)
    ties[0, 0, 1], ties[0, 1, 0], ties[0, 1, 2], ties[0, 2, 1] = 1, 2, 3, 4
    assert np.asarray(fill(jnp.asarray(ties), 9))[0, 1, 1] == 1
    ties[0, 0, 1] = 9
    assert np.asarray(fill(jnp.asarray(ties), 9))[0, 1, 1] == 2


@pytest.mark.parametrize("problem", range(len(PROBLEMS)), ids=IDS)
def test_every_position_is_restored_from_a_token_that_draws_on_it_or_on_its_nearest_source(problem):
    _, in_hw, out_hw, _ = PROBLEMS[problem]
    _, _, matrix, restore_index, _ = evaluate(problem)
    assert restore_index.shape == (2, *in_hw) and restore_index.dtype == np.int32
    tokens = out_hw[0] * out_hw[1]
    assert restore_index.min() >= 0 and restore_index.max() < tokens
    for b in range(2):
        sources = matrix[b] != 0  # (L', L)
        drawn = sources.any(axis=0)
        owner = np.where(drawn, np.argmax(sources, axis=0), tokens)  # lowest output drawing on it
        expected = brute_force_nearest(owner.reshape(1, *in_hw).astype(np.int32), tokens)[0]
        np.testing.assert_array_equal(restore_index[b], expected)


@pytest.mark.parametrize("problem", range(len(PROBLEMS)), ids=IDS)
def test_restored_grid_copies_tokens_and_keeps_lone_sources_exact(problem):
    _, in_hw, _, _ = PROBLEMS[problem]
    x, y, matrix, restore_index, restored = evaluate(problem)
    assert restored.shape == x.shape
    for b in range(2):
        tokens = y[b].reshape(-1, 3)
        np.testing.assert_array_equal(restored[b].reshape(-1, 3), tokens[restore_index[b].reshape(-1)])
        # a position that alone makes its token, with weight 1, is restored to exactly its input
        lone = (np.count_nonzero(matrix[b], axis=1) == 1) & (matrix[b].max(axis=1) == 1)
        positions = np.argmax(matrix[b][lone], axis=1)
        assert positions.size > 0
        np.testing.assert_array_equal(restored[b].reshape(-1, 3)[positions], x[b].reshape(-1, 3)[positions])


def test_position_maps_compose_over_plans_and_stage_changes():
    x = grid((2, 8, 8, 4), seed=3)
    first = plan_of("sarf_evit", x, (6, 7))
    second = plan_of("sarf_evit", first(x), (5, 5))

    @jax.jit
    def compose(x, first, second):
        position = PositionMap.identity(x, (8, 8)).then(first).then(second)
        following = position.next_stage((4, 4), (3, 3))
        unreduced = PositionMap.identity(x, (8, 8)).next_stage((4, 4), (4, 4))
        return position, position.restore(second(first(x))), following, unreduced

    position, restored, following, unreduced = compose(x, first, second)
    assert position.grid == (5, 5)
    first_token = np.asarray(first.restore_index()).reshape(2, -1)  # dense position -> 6x7 token
    expected = np.take_along_axis(np.asarray(second.restore_index()).reshape(2, -1), first_token, axis=1)
    np.testing.assert_array_equal(np.asarray(position.index).reshape(2, -1), expected)
    kept = np.asarray(first.index).reshape(2, -1)  # gathers twice: survivors of both hold x exactly
    survivors = np.take_along_axis(kept, np.asarray(second.index).reshape(2, -1), axis=1)
    restored = np.asarray(restored).reshape(2, -1, 4)
    for b in range(2):
        np.testing.assert_array_equal(restored[b, survivors[b]], np.asarray(x).reshape(2, -1, 4)[b, survivors[b]])

    # across a stride-2 stage change: dense (i, j) follows dense (2i, 2j); reduced (a, b) -> (a//2, b//2)
    assert following.grid == (3, 3) and following.dense_hw == (4, 4)
    picked = np.asarray(position.index)[:, ::2, ::2]
    expected = np.minimum(picked // 5 // 2, 2) * 3 + np.minimum(picked % 5 // 2, 2)
    np.testing.assert_array_equal(np.asarray(following.index), expected)
    np.testing.assert_array_equal(np.asarray(unreduced.index), np.broadcast_to(np.arange(16).reshape(4, 4), (2, 4, 4)))


def test_restore_taps_restores_each_map_through_the_plans_up_to_its_block():
    x = grid((2, 6, 6, 4), seed=4)

    @jax.jit
    def run(x):
        plan = reduction.Reducer("sarf_tome").plan(x, (4, 5))
        taps = {0: x, 2: plan(x), 3: plan(x) * 2}
        return restore_taps(taps, {1: plan}, (6, 6)), PositionMap.identity(x, (6, 6)).then(plan).restore(plan(x))

    restored, expected = run(x)
    np.testing.assert_array_equal(np.asarray(restored[0]), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(restored[1]), np.asarray(expected))
    np.testing.assert_array_equal(np.asarray(restored[2]), 2 * np.asarray(expected))
    taps = {0: x, 2: x[:, :4, :5], 3: x[:, :4, :5]}
    assert [a.shape for a in restore_taps(taps, None, (6, 6))] == [(2, 6, 6, 4), (2, 4, 5, 4), (2, 4, 5, 4)]


def test_mismatched_grids_are_named():
    x = grid((2, 6, 6, 4))
    plan = plan_of("sarf_evit", x, (4, 4))
    with pytest.raises(ValueError, match=r"the plan reduces a \(6, 6\) grid, but the tracked grid is \(5, 5\)"):
        PositionMap.identity(x, (5, 5)).then(plan)
    with pytest.raises(ValueError, match=r"expected a \(B, H, W, C\) = \(2, 4, 4, C\) map, got shape \(2, 6, 6, 4\)"):
        jax.jit(lambda x, plan: PositionMap.identity(x, (6, 6)).then(plan).restore(x))(x, plan)

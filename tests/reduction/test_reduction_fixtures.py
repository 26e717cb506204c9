"""Conformance with the official STORM operators (tests/fixtures/reduction_*.npz, described in
tests/fixtures/README.md#reduction-operators).

Each fixture case holds a block input x, a branch output y, the official outputs of the plan on
both, and the official integer plans. Fixtures are NCHW; sarf_jax grids are NHWC.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sarf_jax import reduction
from sarf_jax.reduction import baselines, sarf

TOLERANCE = 1e-5


def nhwc(array):
    return jnp.asarray(np.transpose(array, (0, 2, 3, 1)))


def nchw(array):
    return np.transpose(np.asarray(array), (0, 3, 1, 2))


def cases(load_fixture, name):
    arrays, meta = load_fixture(name)
    for case in meta["cases"]:
        key = case["case"]
        yield case, {k[len(key) + 1 :]: v for k, v in arrays.items() if k.startswith(key + "/")}


# (fixture, method, options, which input is the metric)
OPERATORS = [
    ("reduction_storm_tome", "sarf_tome", {}, "x"),
    ("reduction_storm_tome_wavg", "sarf_tome", {"merge": "mean"}, "x"),
    ("reduction_storm_evit", "sarf_evit", {}, "x"),
    ("reduction_evit", "evit", {}, "x"),
    ("reduction_tome", "tome", {"tome_prune": True}, "y"),
    ("reduction_tome_merge", "tome", {"tome_prune": False}, "y"),
]


@pytest.mark.parametrize("name, method, options, metric", OPERATORS, ids=[o[0] for o in OPERATORS])
def test_plan_reproduces_official_outputs_on_both_tensors(load_fixture, name, method, options, metric):
    for case, data in cases(load_fixture, name):
        assert case["window"] in (None, 5)
        x, y = nhwc(data["x"]), nhwc(data["y"])
        reducer, out_hw = reduction.Reducer(method, **options), tuple(case["out_hw"])
        plan = jax.jit(lambda m: reducer.plan(m, out_hw))(x if metric == "x" else y)
        assert plan.out_hw == tuple(case["out_hw"])
        for tensor, expected in ((x, data["out"]), (y, data["out_y"])):
            out = nchw(plan(tensor))
            assert out.shape == expected.shape
            np.testing.assert_allclose(out, expected, rtol=0, atol=TOLERANCE, err_msg=f"{name} {case['case']}")


def test_reduce_grid_with_the_branch_as_metric_is_the_official_tome_call(load_fixture):
    for case, data in cases(load_fixture, "reduction_tome_merge"):
        run = jax.jit(functools.partial(reduction.reduce_grid, method="tome", out_hw=tuple(case["out_hw"])))
        out = run(nhwc(data["x"]), metric=nhwc(data["y"]))
        np.testing.assert_allclose(nchw(out), data["out"], rtol=0, atol=TOLERANCE)


def test_sarf_tome_selects_the_official_pairs_in_the_official_order(load_fixture):
    for case, data in cases(load_fixture, "reduction_storm_tome"):
        x = nhwc(data["x"])
        (height, width), (out_h, out_w) = case["in_hw"], case["out_hw"]

        @jax.jit
        def stages(x):
            rows = sarf.axis_merge(x, width - out_w, window=5)
            x_after_w = rows.apply_sum(x)
            return rows, x_after_w, sarf.axis_merge(jnp.swapaxes(x_after_w, 1, 2), height - out_h, window=5)

        rows, x_after_w, cols = stages(x)
        np.testing.assert_array_equal(rows.src_idx, data["plan_w/src_idx"])
        np.testing.assert_array_equal(rows.unm_idx, data["plan_w/unm_idx"])
        np.testing.assert_allclose(nchw(x_after_w), data["x_after_w"], rtol=0, atol=TOLERANCE)
        np.testing.assert_array_equal(cols.src_idx, data["plan_h/src_idx"])
        np.testing.assert_array_equal(cols.unm_idx, data["plan_h/unm_idx"])


def test_sarf_tome_window_budgets_match_the_recorded_distribution(load_fixture):
    for case, _ in cases(load_fixture, "reduction_storm_tome"):
        for axis in ("w", "h"):
            size = case["in_hw"][1] if axis == "w" else case["in_hw"][0]
            budget = case[f"r_{axis}"]
            split = sarf.split_budget(size // 2, budget, case["window"])
            assert [[s, e] for s, e, _ in split] == case[f"windows_{axis}"]
            assert [c for _, _, c in split] == case[f"merges_per_window_{axis}"]


def test_sarf_evit_keeps_the_official_indices(load_fixture):
    for case, data in cases(load_fixture, "reduction_storm_evit"):
        x = nhwc(data["x"])
        (height, width), (out_h, out_w) = case["in_hw"], case["out_hw"]
        importance = jnp.mean(jnp.abs(x), axis=-1)
        keep_w = sarf.window_top_tokens(importance, width - out_w, window=5)
        np.testing.assert_array_equal(keep_w, data["plan_w/keep_idx_w"])
        x_after_w = jnp.take_along_axis(x, keep_w[..., None], axis=2)
        np.testing.assert_array_equal(nchw(x_after_w), data["x_after_w"])
        importance_w = jnp.swapaxes(jnp.take_along_axis(importance, keep_w, axis=-1), 1, 2)
        keep_h = sarf.window_top_tokens(importance_w, height - out_h, window=5)
        np.testing.assert_array_equal(keep_h, data["plan_h/keep_idx_h"])
        for axis in ("w", "h"):
            size = width if axis == "w" else height
            split = sarf.split_budget(size, case[f"r_{axis}"], case["window"])
            assert [[s, e] for s, e, _ in split] == case[f"windows_{axis}"]
            assert [c for _, _, c in split] == case[f"prunes_per_window_{axis}"]
        plan = reduction.Reducer("sarf_evit").plan(x, case["out_hw"])
        rows = keep_h.swapaxes(1, 2)
        expected = rows * width + jnp.take_along_axis(keep_w, rows, axis=1)
        np.testing.assert_array_equal(plan.index, expected)


def test_evit_and_tome_keep_the_official_raster_indices(load_fixture):
    for case, data in cases(load_fixture, "reduction_evit"):
        plan = jax.jit(functools.partial(baselines.evit_plan, out_hw=tuple(case["out_hw"])))(nhwc(data["x"]))
        np.testing.assert_array_equal(plan.index.reshape(plan.index.shape[0], -1), data["keep_idx"])
    for name in ("reduction_tome", "reduction_tome_merge"):
        for case, data in cases(load_fixture, name):
            y = nhwc(data["y"])
            height, width = case["in_hw"]
            out_hw = tuple(case["out_hw"])
            r = height * width - out_hw[0] * out_hw[1]
            assert r == case["r"]

            @jax.jit
            def plans(y):
                tokens = y.reshape(y.shape[0], height * width, -1)
                return baselines.bipartite_match(tokens, r), baselines.tome_plan(y, out_hw, prune=True)

            match, plan = plans(y)
            np.testing.assert_array_equal(match.src_idx, data["plan/src_idx"])
            np.testing.assert_array_equal(match.unm_idx, data["plan/unm_idx"])
            np.testing.assert_array_equal(match.dst_idx, data["plan/dst_idx"])
            if "keep_idx" in data:
                np.testing.assert_array_equal(plan.index.reshape(plan.index.shape[0], -1), data["keep_idx"])

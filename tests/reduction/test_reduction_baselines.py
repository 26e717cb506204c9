"""Baseline details that the STORM fixtures do not cover: HSA's clipped score, QuarterMap's
resampling (against torch's F.interpolate), and the re-wrapping of the collapsing baselines."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from sarf_jax import reduction
from sarf_jax.reduction import baselines


def test_hsa_scores_the_clipped_channel_sum():
    # Token 0: sum 1, clipped sum 5. Token 1: sum 2, clipped sum 2. Token 2: sum 3, clipped 3.
    metric = jnp.asarray([[[[5.0, -4.0], [1.0, 1.0], [1.5, 1.5], [-1.0, -1.0]]]])
    plan = baselines.hsa_plan(metric, (1, 2))
    np.testing.assert_array_equal(plan.index, [[[0, 2]]])
    np.testing.assert_array_equal(baselines.evit_plan(metric, (1, 2)).index, [[[1, 2]]])  # signed mean


def test_evit_rewraps_the_kept_raster_sequence_row_major():
    importance = np.arange(16, dtype=np.float32)[::-1].reshape(1, 4, 4, 1)  # keeps the first 9
    out = reduction.reduce_grid(jnp.asarray(importance), method="evit", out_hw=(3, 3))
    np.testing.assert_array_equal(out[0, ..., 0], importance.reshape(-1)[:9].reshape(3, 3))


@pytest.mark.parametrize("size", [2, 3, 7, 13, 14, 56])
def test_quartermap_resampling_matches_torch_nearest(size):
    x = np.random.default_rng(size).standard_normal((2, size, size + 1, 3)).astype(np.float32)
    small = baselines.quartermap_downsample(jnp.asarray(x))
    torch_x = torch.from_numpy(x).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(torch_x, size=[size // 2, (size + 1) // 2], mode="nearest")
    np.testing.assert_array_equal(small, expected.permute(0, 2, 3, 1).numpy())
    back = baselines.quartermap_upsample(small, (size, size + 1))
    expected = torch.nn.functional.interpolate(expected, size=[size, size + 1], mode="nearest")
    np.testing.assert_array_equal(back, expected.permute(0, 2, 3, 1).numpy())


def test_quartermap_needs_a_grid_to_halve():
    with pytest.raises(ValueError, match=r"at least 2×2 to halve, got 1×4"):
        baselines.quartermap_downsample(jnp.ones((1, 1, 4, 2)))

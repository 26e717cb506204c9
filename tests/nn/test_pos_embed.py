"""resize_bicubic reproduces torch's F.interpolate(mode='bicubic', align_corners=False), which
mmcls's resize_pos_embed uses for PlainMamba (jax.image.resize's cubic does not)."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sarf_jax.nn.pos_embed import resize_bicubic


@pytest.mark.parametrize(
    "src, dst",
    [
        ((14, 14), (16, 16)),
        ((14, 14), (7, 9)),
        ((4, 4), (13, 5)),
        ((14, 14), (14, 10)),
        ((1, 3), (2, 5)),
        ((3, 3), (1, 1)),
    ],
)
def test_matches_torch_bicubic(src, dst):
    grid = np.random.default_rng(0).standard_normal((1, *src, 5)).astype(np.float32)
    expected = (
        F.interpolate(torch.tensor(grid).permute(0, 3, 1, 2), size=dst, mode="bicubic", align_corners=False)
        .permute(0, 2, 3, 1)
        .numpy()
    )
    np.testing.assert_allclose(resize_bicubic(jnp.asarray(grid), dst), expected, atol=1e-5, rtol=0)


def test_same_size_is_the_identity():
    grid = jnp.arange(2 * 3 * 4 * 5, dtype=jnp.float32).reshape(2, 3, 4, 5)
    assert resize_bicubic(grid, (3, 4)) is grid

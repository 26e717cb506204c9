"""Resize learned position embeddings exactly as PyTorch's bicubic interpolation does.

mmcls's `resize_pos_embed` (used by PlainMamba, plain_mamba.py `forward`) calls
`F.interpolate(mode="bicubic", align_corners=False)`. PyTorch's bicubic uses Keys' cubic
convolution with a = -0.75, source coordinate (dst + 0.5) * in / out - 0.5, border taps clamped
to the edge, and no antialiasing. `jax.image.resize(method="cubic")` differs on every count that
matters here (a = -0.5, antialiasing when shrinking, different edge handling), so we build
PyTorch's interpolation as two small (out, in) matrices with NumPy from the static sizes and apply
them with matrix products: separable, exact up to float rounding, differentiable.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

TORCH_CUBIC_A = -0.75


def _cubic_weights(t: np.ndarray, a: float = TORCH_CUBIC_A) -> np.ndarray:
    """Weights of the 4 taps at offsets -1, 0, 1, 2 for fractional positions t in [0, 1)."""
    near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # |x| <= 1
    far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # 1 < |x| < 2
    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.cache
def torch_bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) matrix M with M @ v == torch bicubic resize of v (align_corners=False)."""
    source = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    left = np.floor(source)
    weights = _cubic_weights(source - left)
    matrix = np.zeros((out_size, in_size), np.float64)
    for tap in range(4):
        index = np.clip(left.astype(np.int64) - 1 + tap, 0, in_size - 1)
        np.add.at(matrix, (np.arange(out_size), index), weights[:, tap])
    matrix = matrix.astype(np.float32)
    matrix.flags.writeable = False
    return matrix


def resize_bicubic(grid: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    """Resize (..., H, W, C) to (..., H', W', C) like torch's bicubic (align_corners=False)."""
    h, w = grid.shape[-3:-1]
    if (h, w) == tuple(out_hw):
        return grid
    rows = jnp.asarray(torch_bicubic_matrix(h, out_hw[0]))
    cols = jnp.asarray(torch_bicubic_matrix(w, out_hw[1]))
    return jnp.einsum("ph,...hwc,qw->...pqc", rows, grid, cols, precision=jax.lax.Precision.HIGHEST)

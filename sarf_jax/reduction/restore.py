"""Reduced feature maps back on the dense grid: the plans' transposes, composed over a backbone.

Under a reduction spec every stage of a backbone ends on a smaller grid than it has without one.
Dense heads (segmentation, detection) want the dense grid, so `PositionMap` tracks, for every
position of a stage's dense grid, the raster index of the token of the current reduced grid that
stands for it:

- it starts as the identity on the dense grid of the first stage;
- each plan composes with it through `plan.restore_index()`: a merged token stands for all of its
  sources, a kept token for itself, a dropped position for the nearest kept (or grouped) position
  (Euclidean distance on the plan's input grid; ties: lower row, then lower column);
- between stages (stride-2 downsampling), dense position (i, j) of the next stage follows dense
  position (2i, 2j) of this one, and reduced position (a, b) becomes (a // 2, b // 2) of the next
  reduced grid (clipped to it): the token whose 2x2 patch (VMamba v1/v2 downsample) starts there,
  or whose 3x3 stride-2 window (v3) is centred there.

`restore(x)` is then one gather. Where nothing was reduced the map is the identity, and the
restored map equals the dense one bit for bit. Every plan kind (gather, merge, scatter) has a
transpose, so every reducer supports restoring; QuarterMap never shrinks a grid.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from sarf_jax.reduction.plans import Plan


@struct.dataclass
class PositionMap:
    """index: (B, H, W) int32, for every dense position the raster index of its token in `grid`."""

    index: jax.Array
    grid: tuple[int, int] = struct.field(pytree_node=False)

    @property
    def dense_hw(self) -> tuple[int, int]:
        return tuple(self.index.shape[1:3])

    @classmethod
    def identity(cls, like: jax.Array, hw) -> PositionMap:
        """The map of an unreduced (B, *hw, ·) grid; built from `like` (B, ...) so that it carries
        its batch size and sharding."""
        height, width = hw
        raster = jnp.arange(height * width, dtype=jnp.int32).reshape(height, width)
        return cls(index=jnp.zeros_like(like[:, :1, :1, 0], jnp.int32) + raster, grid=(height, width))

    def then(self, plan: Plan) -> PositionMap:
        """The map after `plan`, which must take this map's reduced grid as its input."""
        if tuple(plan.in_hw) != self.grid:
            raise ValueError(
                f"PositionMap.then: the plan reduces a {plan.in_hw} grid, but the tracked grid is {self.grid}"
            )
        batch = self.index.shape[0]
        token_of = plan.restore_index().reshape(batch, -1)
        index = jnp.take_along_axis(token_of, self.index.reshape(batch, -1), axis=1)
        return PositionMap(index=index.reshape(self.index.shape), grid=tuple(plan.out_hw))

    def next_stage(self, dense_hw, grid) -> PositionMap:
        """Across a stride-2 downsampling to the dense grid `dense_hw` and the reduced grid `grid`."""
        height, width = self.dense_hw
        rows = np.minimum(2 * np.arange(dense_hw[0]), height - 1)
        cols = np.minimum(2 * np.arange(dense_hw[1]), width - 1)
        picked = self.index[:, rows][:, :, cols]
        row = jnp.minimum(picked // self.grid[1] // 2, grid[0] - 1)
        col = jnp.minimum(picked % self.grid[1] // 2, grid[1] - 1)
        return PositionMap(index=(row * grid[1] + col).astype(jnp.int32), grid=tuple(grid))

    def restore(self, x: jax.Array) -> jax.Array:
        """(B, *grid, C) reduced map -> (B, *dense_hw, C): every position takes its token's value."""
        if x.ndim != 4 or tuple(x.shape[1:3]) != self.grid or x.shape[0] != self.index.shape[0]:
            raise ValueError(
                f"PositionMap.restore: expected a (B, H, W, C) = ({self.index.shape[0]}, "
                f"{self.grid[0]}, {self.grid[1]}, C) map, got shape {tuple(x.shape)}"
            )
        batch, channels = x.shape[0], x.shape[-1]
        tokens = x.reshape(batch, -1, channels)
        out = jnp.take_along_axis(tokens, self.index.reshape(batch, -1, 1), axis=1)
        return out.reshape(batch, *self.dense_hw, channels)


def restore_taps(taps: dict, plans: dict | None, dense_hw) -> list[jax.Array]:
    """Maps tapped after single-stage backbone blocks, in block order.

    taps: block index -> (B, h, w, C) map on the grid after that block. plans: block index -> the
    plan of every reducing block (None: return the maps as they are); each map is restored onto
    `dense_hw` through the plans of the blocks up to its own.
    """
    order = sorted(taps)
    if not plans:
        return [taps[index] for index in order]
    position = PositionMap.identity(taps[order[0]], dense_hw)
    restored = []
    for index in range(order[-1] + 1):
        if index in plans:
            position = position.then(plans[index])
        if index in taps:
            restored.append(position.restore(taps[index]))
    return restored

"""Plans: what a reducer decides, applicable to any (B, H, W, C) tensor on the same grid.

A reducer looks at a *metric* grid once and returns a plan; the block then applies the same plan
to its residual and to its mixer output (STORM's placement, docs/official_code.md#storm-placement).
Plans are pytrees (flax.struct dataclasses) whose array leaves carry the batch axis and whose grid
sizes are static, so they can be returned from `jax.jit`, vmapped and sharded over the batch like
any activation.

Three kinds, by how many source tokens feed an output token:

- `GatherPlan`: exactly one (pruning: SARF-EViT, EViT, HSA, random, ToMe in drop mode).
- `MergePlan`: a bounded group of at most K sources, gathered and summed with weights (SARF-ToMe:
  a row pair times a column pair, K = 4). Gathers only, no scatter.
- `ScatterPlan`: an unbounded group (the ToMe baseline, where any number of tokens may pick the
  same partner); every source token is added, with a weight, into one output slot or dropped.

Every plan also has `matrix()`, the dense (B, H'·W', H·W) linear map, for tests and inspection,
and `restore_index()`, its transpose as a gather: for every input position, the output token that
stands for it there (used to bring reduced feature maps back onto the full grid, see
`sarf_jax.reduction.restore`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


def _check_input(x, in_hw, batch, name):
    if x.ndim != 4 or tuple(x.shape[1:3]) != tuple(in_hw) or x.shape[0] != batch:
        raise ValueError(
            f"{name}: input must be (B, H, W, C) = ({batch}, {in_hw[0]}, {in_hw[1]}, C), the batch "
            f"and grid the plan was computed on; got shape {tuple(x.shape)}"
        )


def _rows_of(x):
    """(B, H, W, C) -> (B, H·W, C) in raster (row-major) order."""
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], x.shape[3])


def _gather_tokens(tokens, index):
    """tokens (B, L, C), index (B, M) int -> (B, M, C): a batched gather, one index set per image.

    take_along_axis with the index broadcast over channels: on CPU several times faster than a
    vmapped `t[i]`, and it keeps the batch sharding.
    """
    return jnp.take_along_axis(tokens, index[..., None], axis=1)


def _claimed_positions(sources, valid, in_hw, out_tokens):
    """(B, H, W) int32: for every input position, the lowest output index o whose group holds it.

    sources, valid: (B, L', K) source raster indices of each output token and whether slot k is
    used. Positions no output token draws from get `out_tokens` (the "unclaimed" mark).
    """
    batch, length = sources.shape[0], in_hw[0] * in_hw[1]
    owner = jnp.broadcast_to(jnp.arange(out_tokens, dtype=jnp.int32)[:, None], sources.shape[1:])
    claims = jnp.where(valid, owner, out_tokens).reshape(batch, -1)

    def claim(src, who):
        return jnp.full(length, out_tokens, jnp.int32).at[src].min(who)

    claimed = jax.vmap(claim)(sources.reshape(batch, -1), claims)
    return claimed.reshape(batch, *in_hw)


def fill_nearest(index, missing: int):
    """Give every position of (B, H, W) `index` that holds `missing` the value at the nearest
    position that does not, nearest by Euclidean distance on the grid; ties go to the lower row,
    then the lower column (the lowest raster index). Exact, in O(H·W·H) per image: the nearest
    claimed column within every row (two cumulative scans), then the best row per column.
    An image with no claimed position keeps `missing`.
    """
    _, height, width = index.shape
    claimed = index != missing
    far = height + width  # larger than any in-grid distance along one axis
    col = jnp.arange(width, dtype=jnp.int32)
    left = jax.lax.cummax(jnp.where(claimed, col, -1), axis=2)
    right = jax.lax.cummin(jnp.where(claimed, col, width), axis=2, reverse=True)
    left_gap = jnp.where(left >= 0, col - left, far)
    right_gap = jnp.where(right < width, right - col, far)
    take_left = left_gap <= right_gap
    row_gap = jnp.minimum(left_gap, right_gap)  # (B, H, W): distance to the row's nearest claim
    row_value = jnp.take_along_axis(
        index, jnp.where(take_left, jnp.maximum(left, 0), jnp.minimum(right, width - 1)), axis=2
    )
    rows = jnp.arange(height, dtype=jnp.int32)
    cost = (rows[:, None] - rows[None, :])[None, :, :, None] ** 2 + row_gap[:, None, :, :] ** 2
    best_row = jnp.argmin(cost, axis=2).astype(jnp.int32)  # (B, H, W); first minimum: lower row
    filled = jnp.take_along_axis(row_value, best_row, axis=1)
    return jnp.where(claimed, index, filled)


@struct.dataclass
class GatherPlan:
    """Keep one source token per output token: out[b, i, j] = x[b, index[b, i, j]].

    index: (B, H', W') int32 raster indices h·W + w into the source grid `in_hw`.
    """

    index: jax.Array
    in_hw: tuple[int, int] = struct.field(pytree_node=False)

    @property
    def out_hw(self) -> tuple[int, int]:
        return tuple(self.index.shape[-2:])

    def __call__(self, x):
        _check_input(x, self.in_hw, self.index.shape[0], "GatherPlan")
        batch, channels = x.shape[0], x.shape[-1]
        out = _gather_tokens(_rows_of(x), self.index.reshape(batch, -1))
        return out.reshape(batch, *self.out_hw, channels)

    def matrix(self):
        """Dense (B, H'·W', H·W) 0/1 map: row o has a single 1 at the source of output token o."""
        size = self.in_hw[0] * self.in_hw[1]
        return jax.nn.one_hot(self.index.reshape(self.index.shape[0], -1), size, dtype=jnp.float32)

    def restore_index(self):
        """(B, H, W) int32: for every input position, the raster index of the output token that
        keeps it, or for a dropped position that of the nearest kept one (`fill_nearest`)."""
        sources = self.index.reshape(self.index.shape[0], -1, 1)
        out_tokens = sources.shape[1]
        claimed = _claimed_positions(sources, jnp.ones_like(sources, bool), self.in_hw, out_tokens)
        return fill_nearest(claimed, out_tokens)


@struct.dataclass
class MergePlan:
    """Each output token is a weighted sum of up to K gathered source tokens.

    index, weight: (B, H', W', K). Unused slots have weight 0 (their index is any valid one).
    out[b, i, j] = sum_k weight[b, i, j, k] * x[b, index[b, i, j, k]], summed in float32 and cast
    back to x's dtype.
    """

    index: jax.Array
    weight: jax.Array
    in_hw: tuple[int, int] = struct.field(pytree_node=False)

    @property
    def out_hw(self) -> tuple[int, int]:
        return tuple(self.index.shape[-3:-1])

    def __call__(self, x):
        _check_input(x, self.in_hw, self.index.shape[0], "MergePlan")
        batch, channels = x.shape[0], x.shape[-1]
        tokens = _rows_of(x).astype(jnp.float32)
        out = 0.0
        for slot in range(self.index.shape[-1]):  # one gather per slot: no (B, L', K, C) temporary
            gathered = _gather_tokens(tokens, self.index[..., slot].reshape(batch, -1))
            out = out + gathered * self.weight[..., slot].reshape(batch, -1, 1).astype(jnp.float32)
        return out.reshape(batch, *self.out_hw, channels).astype(x.dtype)

    def matrix(self):
        size = self.in_hw[0] * self.in_hw[1]
        batch, slots = self.index.shape[0], self.index.shape[-1]
        one_hot = jax.nn.one_hot(self.index.reshape(batch, -1, slots), size, dtype=jnp.float32)
        return jnp.sum(one_hot * self.weight.reshape(batch, -1, slots, 1), axis=-2)

    def restore_index(self):
        """(B, H, W) int32: for every input position, the output token whose group holds it (a
        merged token stands for all of its sources; a source in several groups goes to the lowest
        output index), or for a position in no group that of the nearest grouped one."""
        batch, slots = self.index.shape[0], self.index.shape[-1]
        sources = self.index.reshape(batch, -1, slots)
        valid = self.weight.reshape(batch, -1, slots) > 0
        claimed = _claimed_positions(sources, valid, self.in_hw, sources.shape[1])
        return fill_nearest(claimed, sources.shape[1])


@struct.dataclass
class ScatterPlan:
    """Every source token is added, times its weight, into one output slot (or dropped).

    dest: (B, H·W) int32 output raster index of each source token; H'·W' means "dropped".
    weight: (B, H·W) float32.
    """

    dest: jax.Array
    weight: jax.Array
    in_hw: tuple[int, int] = struct.field(pytree_node=False)
    out_hw: tuple[int, int] = struct.field(pytree_node=False)

    def __call__(self, x):
        _check_input(x, self.in_hw, self.dest.shape[0], "ScatterPlan")
        batch, channels = x.shape[0], x.shape[-1]
        slots = self.out_hw[0] * self.out_hw[1]
        weighted = _rows_of(x).astype(jnp.float32) * self.weight[..., None]

        def scatter(tokens, dest):
            return jnp.zeros((slots + 1, channels), jnp.float32).at[dest].add(tokens)[:slots]

        out = jax.vmap(scatter)(weighted, self.dest)
        return out.reshape(batch, *self.out_hw, channels).astype(x.dtype)

    def matrix(self):
        slots = self.out_hw[0] * self.out_hw[1]
        one_hot = jax.nn.one_hot(self.dest, slots + 1, dtype=jnp.float32)[..., :slots]  # (B, L, L')
        return jnp.swapaxes(one_hot * self.weight[..., None], 1, 2)

    def restore_index(self):
        """(B, H, W) int32: for every input position, the output slot it is added into, or for a
        dropped position the slot of the nearest kept one."""
        slots = self.out_hw[0] * self.out_hw[1]
        claimed = jnp.where((self.dest < slots) & (self.weight > 0), self.dest, slots).astype(jnp.int32)
        return fill_nearest(claimed.reshape(self.dest.shape[0], *self.in_hw), slots)


Plan = GatherPlan | MergePlan | ScatterPlan


def identity_plan(metric) -> GatherPlan:
    """The plan of a zero budget on metric's (B, H, W, ·) grid: every token kept in place (the
    official code skips the reducer). Built from `metric` so that it carries its sharding."""
    _, height, width = metric.shape[:3]
    raster = jnp.arange(height * width, dtype=jnp.int32).reshape(height, width)
    return GatherPlan(index=jnp.zeros_like(metric[..., 0], jnp.int32) + raster, in_hw=(height, width))

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

Every plan also has `matrix()`, the dense (B, H'·W', H·W) linear map, for tests and inspection.
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


Plan = GatherPlan | MergePlan | ScatterPlan


def identity_plan(metric) -> GatherPlan:
    """The plan of a zero budget on metric's (B, H, W, ·) grid: every token kept in place (the
    official code skips the reducer). Built from `metric` so that it carries its sharding."""
    _, height, width = metric.shape[:3]
    raster = jnp.arange(height * width, dtype=jnp.int32).reshape(height, width)
    return GatherPlan(index=jnp.zeros_like(metric[..., 0], jnp.int32) + raster, in_hw=(height, width))

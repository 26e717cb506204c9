"""Where a model applies its reduction spec: the sites of a schedule and the per-block step.

Every backbone does the same thing inside a block (STORM's placement;
docs/official_code.md#storm-placement):

    y = mixer(norm(x))                               # full grid (QuarterMap: a halved grid)
    x, y = reduce_pair(reducer, site, x, y)          # the same plan on residual and branch
    x = x + drop_path(y)

The grids of every block come from `block_sites`, computed in Python from static shapes, so one
compiled function serves one spec. Backbones with a class token (Vim, ViT) take it out before
planning (`split_class_token`) and put it back after (`join_class_token`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from sarf_jax.reduction import baselines, schedules
from sarf_jax.reduction.spec import Reducer, Spec

NO_REDUCTION = ("none",)


def is_active(spec: Spec | None) -> bool:
    """Whether `spec` changes the model's computation at all."""
    return spec is not None and spec.method not in NO_REDUCTION


def check_spec(spec) -> None:
    if spec is not None and not isinstance(spec, Spec):
        raise ValueError(f"reduction: expected a sarf_jax.reduction.Spec or None, got {spec!r}")


def block_sites(spec: Spec | None, depths: Sequence[int], in_hw, *, next_stage_hw=None):
    """The (stage, block, in_hw, out_hw) of every block, or None when nothing is reduced.

    `next_stage_hw(stage, hw)` is the grid the downsample after `stage` makes of `hw` (default:
    halved, rounding up). QuarterMap never shrinks the residual grid: every block keeps its grid
    (the mixer alone runs on a halved grid), so its sites are all identities.
    """
    check_spec(spec)
    if not is_active(spec):
        return None
    if spec.method == "quartermap":
        sites, hw = [], tuple(in_hw)
        for stage, depth in enumerate(depths):
            if stage > 0:
                hw = schedules.next_stage_grid(stage - 1, hw, next_stage_hw)
            sites += [schedules.Site(stage, block, hw, hw) for block in range(depth)]
        return tuple(sites)
    return schedules.trace(spec.schedule, depths, in_hw, method=spec.method, next_stage_hw=next_stage_hw)


def reduce_pair(
    reducer: Reducer, site: schedules.Site, x: jax.Array, y: jax.Array, *, index: int = 0, plans: dict | None = None
):
    """Plan `site`'s reduction on the reducer's metric and apply it to both x and y (B, H, W, C).

    plans: when given, the plan is also stored as plans[index] (for restoring features, see
    `sarf_jax.reduction.restore`); sites that keep their grid store nothing.
    """
    if site.out_hw == site.in_hw or reducer.method == "quartermap":
        return x, y
    metric = x if reducer.metric_source == "block_input" else y
    key = jax.random.fold_in(jax.random.key(0), index) if reducer.method == "random" else None
    plan = reducer.plan(metric, site.out_hw, key=key)
    if plans is not None:
        plans[index] = plan
    return plan(x), plan(y)


def quartermap_mixer(mixer, x: jax.Array) -> jax.Array:
    """QuarterMap: run `mixer` on the nearest-downsampled (H//2, W//2) grid, upsample its output."""
    return baselines.quartermap_upsample(mixer(baselines.quartermap_downsample(x)), x.shape[1:3])


def split_class_token(tokens: jax.Array, position: int, hw) -> tuple[jax.Array, jax.Array]:
    """(B, H·W + 1, C) with the class token at `position` -> ((B, H, W, C) grid, (B, 1, C) token)."""
    patches = jnp.concatenate([tokens[:, :position], tokens[:, position + 1 :]], axis=1)
    return patches.reshape(tokens.shape[0], *hw, tokens.shape[-1]), tokens[:, position : position + 1]


def join_class_token(grid: jax.Array, cls: jax.Array, position: int) -> jax.Array:
    """Inverse of split_class_token for a grid of any size: the token goes back at `position`."""
    patches = grid.reshape(grid.shape[0], -1, grid.shape[-1])
    return jnp.concatenate([patches[:, :position], cls, patches[:, position:]], axis=1)

"""SARF (STORM in the official code): reduce rows, then columns, inside fixed 1-D windows.

Every row loses the same number of tokens and then every column does, so the result is again a
regular H'×W' grid whose rows and columns keep their spatial order — which is what the 2-D scans of
VMamba and PlainMamba need. Two pipelines, as in the official repository (AOLIAO12312/STORM):

- `sarf_tome_plan` (`FixedWindowToMe2Dv2`, classification/models/token_reduction/): in each row, the
  adjacent pairs (2j, 2j+1) are scored by minus the L1 distance of their channels, the row budget is
  split over windows of `window` pairs, the best-scoring pairs of each window are merged (the even
  token added into the odd one), odd tails stay; then the same per column of the row-reduced grid,
  scored again on it.
- `sarf_evit_plan` (`FixedWindowEViT2D`, localmamba/classification/lib/models/): in each row keep the
  tokens with the largest mean |x| over channels inside windows of `window` tokens, in spatial
  order; then the same per column of the row-pruned grid.

Budgets per window and every tie-break follow the official code (see `split_budget`). Plans are
computed from the metric only; the metric is not differentiated through (the official planning
runs under no_grad / on detached indices).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from sarf_jax.reduction.plans import GatherPlan, MergePlan


def split_budget(length: int, budget: int, window: int) -> tuple[tuple[int, int, int], ...]:
    """Split `budget` removals over consecutive windows of `window` items: ((start, end, count), ...).

    Reproduces the official `_distribute_merges` / `_distribute_pruning_counts`: each window gets
    floor(budget·len/length) computed in Python floats, and the remainder goes one by one to the
    windows with the largest fractional parts; equal fractions go to the earlier window (Python's
    sort is stable). A window at least as long as `length` makes a single global window.
    """
    if length == 0:
        return ()
    size = min(max(int(window), 1), length)
    windows = [(start, min(start + size, length)) for start in range(0, length, size)]
    if budget <= 0:
        return tuple((start, end, 0) for start, end in windows)
    budget = min(budget, length)
    ratio = float(budget) / float(length)
    counts, fractions = [], []
    for start, end in windows:
        share = ratio * (end - start)
        counts.append(int(share))
        fractions.append(share - int(share) if int(share) < end - start else -1.0)
    remaining = budget - sum(counts)
    for i in sorted(range(len(windows)), key=lambda i: fractions[i], reverse=True):
        if remaining <= 0:
            break
        if counts[i] < windows[i][1] - windows[i][0]:
            counts[i] += 1
            remaining -= 1
    return tuple((start, end, count) for (start, end), count in zip(windows, counts))


def _descending(scores):
    """Indices that sort the last axis by decreasing score; ties keep the lower index first."""
    return jnp.argsort(scores, axis=-1, descending=True, stable=True).astype(jnp.int32)


class AxisMerge(NamedTuple):
    """One SARF-ToMe stage along the second-to-last axis of (..., L, C) sequences.

    src_idx (..., r): merged pair indices j (token 2j goes into 2j+1), window by window and, inside a
      window, by decreasing score — the official `src_idx` order.
    unm_idx (..., L//2 - r): the unmerged pair indices, in the same order (official `unm_idx`).
    keep (..., L - r): the surviving positions in increasing order (all odds, unmerged evens, tail).
    absorbs (..., L - r) bool: whether the surviving token at that position also receives its left
      neighbour (keep - 1).
    """

    src_idx: jax.Array
    unm_idx: jax.Array
    keep: jax.Array
    absorbs: jax.Array

    def apply_sum(self, seq):
        """The official merge of this stage on (..., L, C): dst <- dst + src, spatial order kept."""
        take = lambda idx: jnp.take_along_axis(seq, idx[..., None], axis=-2)
        kept = take(self.keep)
        left = take(jnp.maximum(self.keep - 1, 0))
        return jnp.where(self.absorbs[..., None], kept + left, kept)


def axis_merge(seq, budget: int, window: int) -> AxisMerge:
    """Plan one SARF-ToMe stage: merge `budget` adjacent pairs in every sequence of (..., L, C)."""
    length = seq.shape[-2]
    pairs = length // 2
    batch_shape = seq.shape[:-2]
    # Batch-shaped constants are derived from `seq` (`*_like`) so that they carry its sharding.
    if pairs == 0:
        keep = jnp.zeros_like(seq[..., 0], jnp.int32) + jnp.arange(length, dtype=jnp.int32)
        return AxisMerge(keep[..., :0], keep[..., :0], keep, jnp.zeros_like(keep, bool))
    seq = seq.astype(jnp.float32)
    even, odd = seq[..., 0 : 2 * pairs : 2, :], seq[..., 1 : 2 * pairs : 2, :]
    scores = -jnp.sum(jnp.abs(even - odd), axis=-1)  # (..., pairs); the official 'l1' distance
    src_parts, unm_parts = [], []
    for start, end, count in split_budget(pairs, budget, window):
        order = _descending(scores[..., start:end]) + start
        src_parts.append(order[..., :count])
        unm_parts.append(order[..., count:])
    src_idx = jnp.concatenate(src_parts, axis=-1)
    unm_idx = jnp.concatenate(unm_parts, axis=-1)

    merged = jnp.any(src_idx[..., :, None] == jnp.arange(pairs), axis=-2)  # (..., pairs)
    survives = jnp.stack([~merged, jnp.ones_like(merged)], axis=-1).reshape(*batch_shape, 2 * pairs)
    if length % 2:  # the odd tail is never paired
        survives = jnp.concatenate([survives, jnp.ones_like(merged[..., :1])], axis=-1)
    keep = jnp.argsort(~survives, axis=-1, stable=True)[..., : length - budget].astype(jnp.int32)
    pair_of_keep = jnp.minimum(keep // 2, pairs - 1)
    absorbs = (keep % 2 == 1) & jnp.take_along_axis(merged, pair_of_keep, axis=-1)
    return AxisMerge(src_idx, unm_idx, keep, absorbs)


def sarf_tome_plan(metric, out_hw, *, window: int = 5, merge: str = "sum") -> MergePlan:
    """STORM-ToMe plan for (B, H, W, C) -> (B, H', W', C); needs H - H' <= H//2 and W - W' <= W//2.

    merge: "sum" as the official code (a merged token is the plain sum of its originals, up to 4),
    or "mean" (their average — the official, unused `merge_wavg2d`). The choice of pairs is the same
    for both: like the official code, the column stage is always scored on the summed row stage.
    """
    metric = jax.lax.stop_gradient(metric)
    _, height, width, _ = metric.shape
    out_h, out_w = out_hw
    rows = axis_merge(metric, width - out_w, window)  # keep: (B, H, W')
    metric_w = rows.apply_sum(metric.astype(jnp.float32))  # (B, H, W', C)
    cols = axis_merge(jnp.swapaxes(metric_w, 1, 2), height - out_h, window)  # keep: (B, W', H')

    row_keep = jnp.swapaxes(cols.keep, 1, 2)  # (B, H', W'): source row of each output token
    row_absorbs = jnp.swapaxes(cols.absorbs, 1, 2)
    # Slots: (row, col), (row, col - 1), (row - 1, col'), (row - 1, col' - 1), where each row-stage
    # token (row, col) may hold col - 1 too and the column stage may add row - 1 to row.
    index, valid = [], []
    for row, row_valid in ((row_keep, jnp.ones_like(row_absorbs)), (jnp.maximum(row_keep - 1, 0), row_absorbs)):
        col = jnp.take_along_axis(rows.keep, row, axis=1)  # (B, H', W') source column in that row
        col_absorbs = jnp.take_along_axis(rows.absorbs, row, axis=1)
        index += [row * width + col, row * width + jnp.maximum(col - 1, 0)]
        valid += [row_valid, row_valid & col_absorbs]
    index = jnp.stack(index, axis=-1).astype(jnp.int32)
    weight = jnp.stack(valid, axis=-1).astype(jnp.float32)
    if merge == "mean":
        weight = weight / jnp.sum(weight, axis=-1, keepdims=True)
    return MergePlan(index=index, weight=weight, in_hw=(height, width))


def window_top_tokens(importance, prune: int, window: int):
    """Keep the most important tokens of every sequence of (..., L): (..., L - prune) positions.

    The official `FixedWindowEViT2D._plan_1d`: `prune` is split over windows of `window` tokens by
    `split_budget`; each window keeps its top (len - count) tokens by importance (ties: lower
    index), in increasing order, and the windows are concatenated, so the result is increasing.
    """
    length = importance.shape[-1]
    parts = []
    for start, end, count in split_budget(length, prune, window):
        keep = end - start - count
        if keep == 0:
            continue
        if count == 0:  # derived from `importance` so that it carries its sharding
            local = jnp.zeros_like(importance[..., start:end], jnp.int32) + jnp.arange(start, end)
        else:
            _, top = jax.lax.top_k(importance[..., start:end], keep)
            local = jnp.sort(top, axis=-1).astype(jnp.int32) + start
        parts.append(local)
    return jnp.concatenate(parts, axis=-1)


def sarf_evit_plan(metric, out_hw, *, window: int = 5) -> GatherPlan:
    """STORM-EViT plan for (B, H, W, C) -> (B, H', W', C): importance = mean over channels of |x|."""
    metric = jax.lax.stop_gradient(metric)
    _, height, width, _ = metric.shape
    out_h, out_w = out_hw
    importance = jnp.mean(jnp.abs(metric.astype(jnp.float32)), axis=-1)  # (B, H, W)
    keep_w = window_top_tokens(importance, width - out_w, window)  # (B, H, W')
    importance_w = jnp.take_along_axis(importance, keep_w, axis=-1)  # the row-pruned map's scores
    keep_h = window_top_tokens(jnp.swapaxes(importance_w, 1, 2), height - out_h, window)  # (B, W', H')
    rows = jnp.swapaxes(keep_h, 1, 2)  # (B, H', W')
    cols = jnp.take_along_axis(keep_w, rows, axis=1)
    return GatherPlan(index=(rows * width + cols).astype(jnp.int32), in_hw=(height, width))

"""The baselines SARF is compared with, as STORM's repository runs them on Mamba grids.

EViT, HSA, random and ToMe all work on the flattened raster sequence, keep raster order, and then
re-wrap the survivors row-major into a smaller H'×W' grid — the step that scrambles 2-D
neighbourhoods and makes VMamba collapse (docs/official_code.md#baselines,
docs/official_code.md#why-the-baselines-collapse).

- `evit_plan`: importance = signed mean over channels of the metric (the block input);
  `EViTTokenPruning` (plainmamba/.../token_reduction/EViT.py).
- `hsa_plan`: ToP-ViM's importance, the clipped channel sum sum_c max(0, y_c) of the metric, which
  for this method is the mixer output. STORM's own HSA.py sums without clipping, as does
  ToP-ViM's released code (its clamp is commented out); the clipped form is the ToP-ViM paper's,
  which the project's issue asks for.
- `random_plan`: a random subset shared by the whole batch (`random_prune_tokens` in
  classification/models/utils.py, `RandomPrune(share_across_batch=True)` in PlainMamba).
- `tome_plan`: `TokenMerge2Dv4` wrapping R-MeeTo's `RMeeTo_Merge` with a protected dummy class
  token: bipartite matching of even against odd raster positions by cosine similarity, the r best
  edges merged (size-weighted average) or, with `prune=True`, their even token dropped;
  survivors re-sorted into raster order.

QuarterMap is not a plan: its residual keeps the full grid and only the mixer runs on a 2×
nearest-downsampled copy (STORM's "quater" branch in classification/models/reduction.py). The
helpers `quartermap_downsample` / `quartermap_upsample` give the two resamplings, matching
torch's `F.interpolate(mode="nearest")`; the block must compute
`x + drop_path(quartermap_upsample(mixer(norm(quartermap_downsample(x))), (H, W)))`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sarf_jax.reduction.plans import GatherPlan, ScatterPlan


def _top_tokens_in_raster_order(importance, out_hw, in_hw) -> GatherPlan:
    """Global top-k of (B, L) importance (ties: lower index), sorted back to raster order, re-wrapped."""
    _, top = jax.lax.top_k(importance, out_hw[0] * out_hw[1])
    keep = jnp.sort(top, axis=-1).astype(jnp.int32)
    return GatherPlan(index=keep.reshape(keep.shape[0], *out_hw), in_hw=tuple(in_hw))


def evit_plan(metric, out_hw) -> GatherPlan:
    """EViT baseline: keep the H'·W' tokens of largest signed channel mean, re-wrapped row-major."""
    metric = jax.lax.stop_gradient(metric).astype(jnp.float32)
    batch, height, width, _ = metric.shape
    importance = jnp.mean(metric, axis=-1).reshape(batch, height * width)
    return _top_tokens_in_raster_order(importance, out_hw, (height, width))


def hsa_plan(metric, out_hw) -> GatherPlan:
    """HSA baseline (ToP-ViM's importance): keep the tokens of largest sum_c max(0, metric_c)."""
    metric = jax.lax.stop_gradient(metric).astype(jnp.float32)
    batch, height, width, _ = metric.shape
    importance = jnp.sum(jnp.maximum(metric, 0.0), axis=-1).reshape(batch, height * width)
    return _top_tokens_in_raster_order(importance, out_hw, (height, width))


def random_plan(metric, out_hw, key) -> GatherPlan:
    """Random baseline: one random subset of H'·W' raster positions for the whole batch, in order.

    Only metric's shape (and sharding) is used.
    """
    height, width = metric.shape[1:3]
    length, kept = height * width, out_hw[0] * out_hw[1]
    permutation = jax.random.permutation(key, length)
    keep = jnp.sort(permutation[length - kept :]).astype(jnp.int32)  # official: drop perm[:num_prune]
    index = jnp.zeros_like(metric[:, :1, :1, 0], jnp.int32) + keep.reshape(*out_hw)
    return GatherPlan(index=index, in_hw=(height, width))


class Match(NamedTuple):
    """R-MeeTo's bipartite matching of even (a) against odd (b) raster positions, per image."""

    src_idx: jax.Array  # (B, r) matched a-tokens, best edge first (the official src_idx)
    unm_idx: jax.Array  # (B, ceil(L/2) - r) the other a-tokens, same order (official unm_idx)
    dst_idx: jax.Array  # (B, r) the b partner of each matched a-token (official dst_idx)
    partner: jax.Array  # (B, ceil(L/2)) the best b of every a-token


def bipartite_match(tokens, r: int) -> Match:
    """Match (B, L, C) tokens as `RMeeTo_Merge.forward` (merge.py) does once the class token is out.

    Tokens are divided by their L2 norm (no epsilon, as the official code); score = cosine a·bᵀ;
    each a-token takes its best b (`choose="max"`, first on ties); a-tokens are ranked by that best
    score, descending (ties: lower index). The dummy class token TokenMerge2Dv4 prepends is removed
    before matching, so it only caps r at L//2.
    """
    tokens = tokens / jnp.linalg.norm(tokens, axis=-1, keepdims=True)
    a, b = tokens[:, 0::2], tokens[:, 1::2]
    scores = jnp.einsum("bic,bjc->bij", a, b, precision=jax.lax.Precision.HIGHEST)
    partner = jnp.argmax(scores, axis=-1).astype(jnp.int32)
    order = jnp.argsort(jnp.max(scores, axis=-1), axis=-1, descending=True, stable=True)
    order = order.astype(jnp.int32)
    src_idx = order[:, :r]
    return Match(src_idx, order[:, r:], jnp.take_along_axis(partner, src_idx, axis=1), partner)


def tome_plan(metric, out_hw, *, prune: bool):
    """ToMe baseline: merge (or drop) r = H·W - H'·W' tokens of the raster sequence, re-wrap.

    prune=False: each matched even token is averaged into its odd partner with size weights,
    (dst + sum src) / (1 + #src) — `merge_wavg` with scatter "sum" (PlainMamba's setting).
    prune=True: matched even tokens are dropped (VMamba's setting: `if_prune=True`).
    Returns a GatherPlan when pruning, a ScatterPlan when merging.
    """
    metric = jax.lax.stop_gradient(metric).astype(jnp.float32)
    batch, height, width, channels = metric.shape
    length, kept = height * width, out_hw[0] * out_hw[1]
    r = length - kept
    match = bipartite_match(metric.reshape(batch, length, channels), r)
    evens = (length + 1) // 2
    matched = jax.vmap(lambda src: jnp.zeros(evens, bool).at[src].set(True))(match.src_idx)
    survives = jnp.ones_like(metric[..., 0], bool).reshape(batch, length).at[:, 0::2].set(~matched)
    if prune:
        keep = jnp.argsort(~survives, axis=-1, stable=True)[:, :kept].astype(jnp.int32)
        return GatherPlan(index=keep.reshape(batch, *out_hw), in_hw=(height, width))
    rank = (jnp.cumsum(survives, axis=-1) - 1).astype(jnp.int32)  # output slot of each survivor
    partner_slot = jnp.take_along_axis(rank, 2 * match.partner + 1, axis=-1)
    dest = rank.at[:, 0::2].set(jnp.where(matched, partner_slot, rank[:, 0::2]))
    group_size = jax.vmap(lambda d: jnp.zeros(kept, jnp.float32).at[d].add(1.0))(dest)
    weight = 1.0 / jnp.take_along_axis(group_size, dest, axis=-1)
    return ScatterPlan(dest=dest, weight=weight, in_hw=(height, width), out_hw=tuple(out_hw))


def nearest_source_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each output index for torch's `F.interpolate(size=..., mode="nearest")`.

    ATen's nearest_idx: the identity when sizes agree, i >> 1 for exact 2× upsampling, else
    min(floor(i · (in/out as float32)), in - 1), computed in float32.
    """
    out = np.arange(out_size)
    if out_size == in_size:
        return out
    if out_size == 2 * in_size:
        return out >> 1
    scale = np.float32(in_size) / np.float32(out_size)
    return np.minimum(np.floor(out.astype(np.float32) * scale).astype(np.int64), in_size - 1)


def nearest_resize(x, out_hw):
    """(B, H, W, C) -> (B, H', W', C) by torch-compatible nearest-neighbour indexing."""
    rows = nearest_source_indices(x.shape[1], out_hw[0])
    cols = nearest_source_indices(x.shape[2], out_hw[1])
    return x[:, rows][:, :, cols]


def quartermap_downsample(x):
    """QuarterMap's input to the mixer: the (H//2, W//2) nearest-downsampled grid."""
    height, width = x.shape[1:3]
    if height < 2 or width < 2:
        raise ValueError(f"quartermap: the grid must be at least 2×2 to halve, got {height}×{width}")
    return nearest_resize(x, (height // 2, width // 2))


def quartermap_upsample(y, hw):
    """QuarterMap's mixer output brought back to the full (H, W) grid by nearest upsampling."""
    return nearest_resize(y, tuple(hw))

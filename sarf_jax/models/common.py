"""Argument checks and weight fitting shared by the model constructors and forward passes."""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

from sarf_jax.nn.checks import check_positive_ints
from sarf_jax.nn.pos_embed import resize_bicubic
from sarf_jax.reduction import placement

__all__ = ["check_positive_ints", "check_rate", "resize_pos_embed_with_class_token"]


def check_rate(owner: str, name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{owner}: {name} must be in [0, 1), got {value}")


def check_images(owner: str, images: jax.Array, img_size: int, in_chans: int) -> None:
    """Models take NHWC batches of exactly the size they were built for."""
    expected = (img_size, img_size, in_chans)
    if images.ndim != 4 or images.shape[1:] != expected:
        raise ValueError(
            f"{owner}: images must have shape (batch, {img_size}, {img_size}, {in_chans}) (NHWC), got {images.shape}"
        )


def default_feature_layers(depth: int, count: int = 4) -> tuple[int, ...]:
    """`count` block indices spread evenly over `depth` blocks, ending at the last: 24 blocks give
    (5, 11, 17, 23), 12 give (2, 5, 8, 11); fewer blocks than `count` give every block."""
    return tuple(sorted({(k + 1) * depth // count - 1 for k in range(count)} - {-1}))


def check_feature_layers(owner: str, feature_layers, depth: int) -> tuple[int, ...]:
    """The block indices `features` returns, as a tuple: None gives `default_feature_layers`."""
    if feature_layers is None:
        return default_feature_layers(depth)
    layers = tuple(feature_layers)
    valid = all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < depth for i in layers)
    if not layers or not valid or any(a >= b for a, b in zip(layers, layers[1:])):
        raise ValueError(
            f"{owner}: feature_layers must be increasing block indices in [0, {depth}), got {feature_layers!r}"
        )
    return layers


def resize_pos_embed_with_class_token(
    weights: nnx.State, stored_grid, grid, class_position: Callable[[tuple[int, int]], int]
) -> nnx.State:
    """`weights` with its `pos_embed` (1, h·w + 1, D) fitted from `stored_grid` to `grid`: the class
    token's entry (at `class_position(grid)` of each grid) kept as is, the patch entries resized with
    PyTorch's bicubic (align_corners=False), as fine-tuning at another resolution does."""
    stored_grid, grid = tuple(stored_grid), tuple(grid)
    if stored_grid == grid:
        return weights
    stored = weights["pos_embed"][...]
    patches, cls = placement.split_class_token(stored, class_position(stored_grid), stored_grid)
    resized = placement.join_class_token(resize_bicubic(patches, grid), cls, class_position(grid))
    return nnx.State({**weights, "pos_embed": weights["pos_embed"].replace(resized)})

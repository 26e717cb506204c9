"""Argument checks shared by the model constructors and forward passes."""

from __future__ import annotations

import jax


def check_positive_ints(owner: str, **values) -> None:
    """ValueError naming the first argument that is not a positive int."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")


def check_rate(owner: str, name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{owner}: {name} must be in [0, 1), got {value}")


def check_images(owner: str, images: jax.Array, img_size: int, in_chans: int) -> None:
    """Models take NHWC batches of exactly the size they were built for."""
    expected = (img_size, img_size, in_chans)
    if images.ndim != 4 or images.shape[1:] != expected:
        raise ValueError(f"{owner}: images must have shape (batch, {img_size}, {img_size}, {in_chans}) "
                         f"(NHWC), got {images.shape}")
